#![doc = include_str!("../README.md")]

pub mod commit;
pub mod plan;
