//! Support for end-to-end tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod harness;
pub mod kinesis;
pub mod mysql;
