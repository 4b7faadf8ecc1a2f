//! Sinks other than object outputs.

#[cfg(feature = "aws")]
pub mod kinesis;
