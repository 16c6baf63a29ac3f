//! How glibc's allocator is set up: how many heaps (arenas) it keeps, and from which size it
//! maps a block on its own.
//!
//! glibc gives a new thread its own arena, up to eight per core, and an arena keeps what its
//! threads freed: a shard attempt's batches, pages and read buffers are tens of megabytes, and
//! helper threads come and go, so over a long job every arena ends up holding a shard's worth
//! of freed memory. `rewind run --workers 2` over 12 hours of 5 MB objects peaked at 400-460 MB
//! that way (4 hours: 170-200 MB), and the memory freshly taken by each arena was faulted in
//! again and again (page faults were ~13% of the CPU). One arena per four cores keeps one pool
//! that every shard reuses: 157 MB, 14% less CPU (`docs/performance.md`, "glibc arenas").
//!
//! glibc also maps every block above its mmap threshold (128 KiB at start) freshly from the
//! kernel and unmaps it when freed, raising the threshold only as such blocks are freed, up to
//! 32 MiB, with the trim threshold at twice it. A shard's batches hold up to 32 MiB of event text,
//! so a run spent its first batches faulting in fresh pages for every batch and page buffer.
//! Starting in that steady state (mmap threshold 32 MiB, trim threshold 64 MiB) cost 7% (hard
//! profile) to 11% (easy) less CPU on a 4-hour run, peak RSS unchanged there and 203-235 MB with
//! 16 MiB events (188 before; the target is 256); a threshold of 16 MiB bought nothing
//! (`docs/performance.md`, "The thresholds again, with one arena").
//!
//! These can only be set before the allocator starts, and setting them from the program needs
//! `mallopt` (`unsafe`, which this workspace forbids), so the binary starts itself again once,
//! same process id, with the variables in its environment. A variable an operator set is left as
//! it is (and is how to opt out, or to choose another value).

/// The arena count glibc reads.
pub const ARENA_VAR: &str = "MALLOC_ARENA_MAX";
/// The size from which glibc maps a block on its own.
pub const MMAP_THRESHOLD_VAR: &str = "MALLOC_MMAP_THRESHOLD_";
/// How much free memory at the top of the heap glibc keeps before returning it.
pub const TRIM_THRESHOLD_VAR: &str = "MALLOC_TRIM_THRESHOLD_";

/// Arenas for a machine of `cores`: one per four cores, at least one.
pub fn arenas_for(cores: usize) -> usize {
    cores.div_ceil(4).max(1)
}

/// The settings the binary runs with on a machine of `cores`, before an operator's own.
pub fn settings(cores: usize) -> [(&'static str, String); 3] {
    [
        (ARENA_VAR, arenas_for(cores).to_string()),
        // glibc's own ceiling for its adaptive threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit).
        (MMAP_THRESHOLD_VAR, (32usize << 20).to_string()),
        (TRIM_THRESHOLD_VAR, (64usize << 20).to_string()),
    ]
}

/// Replaces this process with the same program, arguments and environment plus the
/// allocator [`settings`] the environment does not set already (by an operator, or by this very
/// step). Returns only when that did not happen: not glibc, every variable already set, or the
/// program could not be started again (then the process goes on with glibc's defaults — slower,
/// not wrong). Call it first in `main`, before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let missing: Vec<_> = settings(cores)
            .into_iter()
            .filter(|(var, _)| std::env::var_os(var).is_none())
            .collect();
        if missing.is_empty() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let argv0 = args.next();
        let mut cmd = std::process::Command::new(exe);
        if let Some(argv0) = argv0 {
            cmd.arg0(argv0);
        }
        // `exec` returns only on failure (a binary replaced or deleted under a running job's
        // feet, say): carry on as we are.
        let _ = cmd.args(args).envs(missing).exec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_arena_per_four_cores_and_never_none() {
        assert_eq!(arenas_for(0), 1);
        assert_eq!(arenas_for(1), 1);
        assert_eq!(arenas_for(2), 1);
        assert_eq!(arenas_for(4), 1);
        assert_eq!(arenas_for(5), 2);
        assert_eq!(arenas_for(16), 4);
    }

    #[test]
    fn thresholds_are_glibcs_own_ceiling_and_trim_twice_it() {
        let s = settings(2);
        assert_eq!(s[1], (MMAP_THRESHOLD_VAR, "33554432".to_string()));
        assert_eq!(s[2], (TRIM_THRESHOLD_VAR, "67108864".to_string()));
    }
}
