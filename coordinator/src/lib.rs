#![doc = include_str!("../README.md")]

pub mod commit;
pub mod driver;
pub mod metrics;
pub mod plan;
pub mod service;
pub mod status;
pub mod summary;
