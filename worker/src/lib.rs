#![doc = include_str!("../README.md")]

pub mod daemon;
pub mod decode;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod route;
pub mod run;
pub mod scan;
pub mod sink;
pub mod throttle;

/// Test fail points: `REWIND_FAILPOINT=<name>` makes a worker misbehave at one chosen moment so
/// crash tests strike it deterministically. Names: `after-kafka-commit` (abort between a shard's
/// Kafka commit and its shard commit), `hang-before-shard-commit` (a finished attempt never
/// commits; the worker keeps its lease alive until it is killed), `pause-before-shard-commit`
/// (a finished attempt waits 10 s before it commits), `hang-before-file-finish` (a Parquet file
/// is written but never finished: killed there, the attempt leaves an unfinished write).
pub fn failpoint(name: &str) -> bool {
    std::env::var("REWIND_FAILPOINT").is_ok_and(|v| v == name)
}
