//! How many heaps (arenas) glibc's allocator keeps.
//!
//! glibc gives a new thread its own arena, up to eight per core, and an arena keeps what its
//! threads freed: a shard attempt's batches, pages and read buffers are tens of megabytes, and
//! helper threads come and go, so over a long job every arena ends up holding a shard's worth
//! of freed memory. `rewind run --workers 2` over 12 hours of 5 MB objects peaked at 400-460 MB
//! that way (4 hours: 170-200 MB), and the memory freshly taken by each arena was faulted in
//! again and again (page faults were ~13% of the CPU). One arena per four cores keeps one pool
//! that every shard reuses: 157 MB, 14% less CPU (`docs/performance.md`, "Arenas").
//!
//! The number can only be set before the allocator starts, and setting it from the program
//! needs `mallopt` (`unsafe`, which this workspace forbids), so the binary starts itself again
//! once, same process id, with `MALLOC_ARENA_MAX` in its environment. An operator's own
//! `MALLOC_ARENA_MAX` is left as it is (and is how to opt out).

/// The variable glibc reads.
pub const ARENA_VAR: &str = "MALLOC_ARENA_MAX";

/// Arenas for a machine of `cores`: one per four cores, at least one.
pub fn arenas_for(cores: usize) -> usize {
    cores.div_ceil(4).max(1)
}

/// Replaces this process with the same program, arguments and environment plus
/// `MALLOC_ARENA_MAX`, unless it is set already (by an operator, or by this very step). Returns
/// only when that did not happen: not glibc, the variable already set, or the program could not
/// be started again (then the process goes on with glibc's defaults — slower, not wrong).
/// Call it first in `main`, before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(ARENA_VAR).is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut args = std::env::args_os();
        let argv0 = args.next();
        let mut cmd = std::process::Command::new(exe);
        if let Some(argv0) = argv0 {
            cmd.arg0(argv0);
        }
        // `exec` returns only on failure (a binary replaced or deleted under a running job's
        // feet, say): carry on as we are.
        let _ = cmd
            .args(args)
            .env(ARENA_VAR, arenas_for(cores).to_string())
            .exec();
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
}
