//! Kinesis change streams: record [`format`]s and the per-shard [`ingest`] that turns a shard's
//! records into Parquet, exactly once per shard.
//!
//! Ordering: per shard only. Rows of one key stay in order when producers use the key as the
//! partition key; a child shard is read only after its parents are finished.

#[cfg(feature = "aws")]
pub mod client;
#[cfg(feature = "aws")]
pub mod consumer;
pub mod format;
pub mod ingest;
#[cfg(feature = "aws")]
pub mod status;

pub use format::RecordFormat;
pub use ingest::{Applied, DeadLetter, ShardIngest, ShardRecord};
