#![doc = include_str!("../README.md")]

pub mod change;
pub mod envelope;
pub mod error;
pub mod guard;
pub mod ids;
pub mod job;
pub mod layout;
pub mod lifecycle;
pub mod location;
pub mod malloc;
pub mod output;
pub mod partition;
pub mod range;
pub mod registry;
pub mod request;
pub mod secret;
pub mod shard_store;
pub mod storage;
#[cfg(any(test, feature = "testkit"))]
pub mod storage_contract;
pub mod table;
pub mod trace;

pub use error::RequestError;
pub use ids::{JobId, OrgId, ShardId};
pub use job::{JobSpec, OutputKeys};
pub use layout::Layout;
pub use lifecycle::{JobPhase, JobStatus, Summary};
pub use location::{Location, S3Options};
pub use range::{Hour, HourRange};
pub use registry::JobRegistry;
pub use request::{JobRecord, JobRequest, RetryOf};

/// Test fail points: `REWIND_FAILPOINT=<name>` makes a process misbehave at one chosen moment so
/// crash tests strike it deterministically. Workers: `after-kafka-commit` (abort between a
/// shard's Kafka commit and its shard commit), `hang-before-shard-commit` (a finished attempt
/// never commits; the worker keeps its lease alive until it is killed),
/// `pause-before-shard-commit` (a finished attempt waits 10 s before it commits),
/// `hang-before-file-finish` (a Parquet file is written but never finished: killed there, the
/// attempt leaves an unfinished write). Coordinators: `crash-before-success-marker` (the job
/// manifest is written, `_SUCCESS` is not). Workers also: `lose-commit-reply` (the first shard
/// commit of the process takes effect but answers as lost once the job has ended),
/// `late-file-then-die` (an attempt waits 5 s between its last cancel check and finishing its
/// files, then the process aborts: stopped meanwhile, it writes them after the job's commit).
pub fn failpoint(name: &str) -> bool {
    std::env::var("REWIND_FAILPOINT").is_ok_and(|v| v == name)
}

/// A test hook for multi-step work: with `REWIND_FAILPOINT=<name>`, aborts the process at the
/// Nth call (`REWIND_FAILPOINT_AFTER`, default 1), so a test can stop it after every step in
/// turn. One count per process (only one such fail point is set at a time).
pub fn step_failpoint(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STEPS: AtomicU64 = AtomicU64::new(0);
    if failpoint(name) {
        let after = std::env::var("REWIND_FAILPOINT_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        if STEPS.fetch_add(1, Ordering::Relaxed) + 1 >= after {
            std::process::abort();
        }
    }
}
