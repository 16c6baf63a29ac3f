#![doc = include_str!("../README.md")]

pub mod access;
pub mod commit;
pub mod convert;
pub mod core;
pub mod driver;
pub mod metrics;
pub mod plan;
pub mod retry;
pub mod service;
