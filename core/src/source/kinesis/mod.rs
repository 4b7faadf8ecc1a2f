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

pub use crate::codec::RecordFormat;
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
