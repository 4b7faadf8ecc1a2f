//! Kinesis change streams: the source ([`source`]: the stream with its S3 baseline), the shard
//! reader ([`client`]) and shard status. Record formats are in
//! [`crate::codec`]; the per-shard apply that turns a shard's records into Parquet, exactly once
//! per shard, is [`crate::engine::shard`].
//!
//! Ordering: per shard only. Rows of one key stay in order when producers use the key as the
//! partition key; a child shard is read only after its parents are finished.

#[cfg(feature = "aws")]
pub mod client;
pub mod source;
#[cfg(feature = "aws")]
pub mod status;

use std::future::Future;

pub use crate::codec::RecordFormat;
use crate::error::Result;
use crate::position::SeqNo;

/// One record of a shard, as Lambda's event or GetRecords delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRecord {
    pub sequence: SeqNo,
    pub partition_key: String,
    /// ApproximateArrivalTimestamp, UNIX milliseconds.
    pub arrival_ms: i64,
    pub data: Vec<u8>,
}

/// One shard of a stream, with its lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    pub parent: Option<String>,
    pub adjacent_parent: Option<String>,
    /// Set once the shard is closed (split or merged): its last sequence number.
    pub ending: Option<SeqNo>,
}

impl ShardInfo {
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent
            .iter()
            .chain(self.adjacent_parent.iter())
            .map(String::as_str)
    }
}

/// One GetRecords result.
#[derive(Debug, Clone, Default)]
pub struct Records {
    pub records: Vec<ShardRecord>,
    /// `None` when the shard is closed and read to its end.
    pub next_iterator: Option<String>,
    pub millis_behind_latest: Option<i64>,
}

/// The reading side of a sharded stream, as the worker's shard consumer reads it.
///
/// Ordering: per shard; a shard's records come in sequence order. Replay: an iterator can be
/// opened after any sequence number within retention, so a reader restarts from its committed
/// position. A closed shard (split or merged) ends: its last page has no next iterator, or
/// (emulators) its records reach [`ShardInfo::ending`]; its children are listed with it as
/// parent.
pub trait ShardRead: Clone + Send + Sync + 'static {
    /// Every shard the stream lists (open, and closed within retention).
    fn shards(&self) -> impl Future<Output = Result<Vec<ShardInfo>>> + Send;
    /// An iterator just after `after`, or at the shard's oldest record.
    fn iterator(
        &self,
        shard: &str,
        after: Option<&SeqNo>,
    ) -> impl Future<Output = Result<String>> + Send;
    /// Up to `limit` records from `iterator`, and where to go on. Cancel-safe: a dropped call
    /// moves nothing (the same iterator reads the same page again).
    fn records(&self, iterator: &str, limit: i32) -> impl Future<Output = Result<Records>> + Send;
}
