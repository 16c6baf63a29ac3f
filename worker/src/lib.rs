#![doc = include_str!("../README.md")]

pub mod daemon;
pub mod decode;
pub mod fair;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod repair;
pub mod route;
pub mod run;
pub mod scan;
pub mod sink;
pub mod streams;
pub mod throttle;

pub use rewind_common::failpoint;
