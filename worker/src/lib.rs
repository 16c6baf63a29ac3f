#![doc = include_str!("../README.md")]

pub mod decode;
pub mod scan;
