#![doc = include_str!("../README.md")]

pub mod error;
pub mod ids;
pub mod job;
pub mod layout;
pub mod location;
pub mod range;
pub mod request;
pub mod shard_store;
pub mod storage;
#[cfg(any(test, feature = "testkit"))]
pub mod storage_contract;
pub mod trace;

pub use error::RequestError;
pub use ids::{JobId, OrgId, ShardId};
pub use job::{JobSpec, OutputKeys};
pub use layout::Layout;
pub use location::{Location, S3Options};
pub use range::{Hour, HourRange};
pub use request::{JobRecord, JobRequest};
