//! The composite position of a Kinesis pipeline as one document: the baseline it started from
//! and, per shard, the committed sequence number, whether the shard is finished, its lease and
//! its lag.

use serde::Serialize;

use super::client::KinesisStream;
use crate::error::Result;
use crate::position::ShardPosition;
use crate::store::{PositionStore, SourcePosition, baseline_checkpoint, now_ms, shard_checkpoint};

/// One shard's part of the composite position.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    pub shard: String,
    pub parents: Vec<String>,
    /// Committed sequence number (`null`: nothing read yet).
    pub sequence: Option<String>,
    pub finished: bool,
    /// Closed by a split or merge (its last sequence number).
    pub ending: Option<String>,
    pub lease_owner: Option<String>,
    /// Kinesis' MillisBehindLatest after the committed record.
    pub millis_behind_latest: Option<i64>,
    /// Now minus the arrival time of the last committed record.
    pub committed_record_age_ms: Option<i64>,
}

/// The whole composite position.
#[derive(Debug, Clone, Serialize)]
pub struct Composite {
    pub pipeline: String,
    pub stream: String,
    /// The baseline version the pipeline's tables start from, if any.
    pub baseline: Option<serde_json::Value>,
    pub shards: Vec<ShardStatus>,
}

pub async fn composite(
    store: &dyn PositionStore,
    stream: &KinesisStream,
    pipeline: &str,
) -> Result<Composite> {
    let baseline = store
        .load(&baseline_checkpoint(pipeline))
        .await?
        .and_then(|cp| cp.position)
        .and_then(|p| serde_json::to_value(p).ok());
    let mut shards = Vec::new();
    let now = now_ms();
    for s in stream.shards().await? {
        let name = shard_checkpoint(pipeline, &s.id);
        let pos: Option<ShardPosition> = match store.load(&name).await?.and_then(|c| c.position) {
            Some(SourcePosition::Kinesis(p)) => Some(p),
            _ => None,
        };
        let lease = store.lease(&name).await?.filter(|l| l.expires_at_ms > now);
        let finished = pos.as_ref().is_some_and(|p| p.finished);
        let behind = if finished {
            Some(0)
        } else {
            let it = stream
                .iterator(&s.id, pos.as_ref().map(|p| &p.sequence))
                .await?;
            stream.records(&it, 1).await?.millis_behind_latest
        };
        shards.push(ShardStatus {
            shard: s.id.clone(),
            parents: s.parents().map(str::to_string).collect(),
            sequence: pos.as_ref().map(|p| p.sequence.to_string()),
            finished,
            ending: s.ending.as_ref().map(|e| e.to_string()),
            lease_owner: lease.map(|l| l.owner),
            millis_behind_latest: behind,
            committed_record_age_ms: pos
                .as_ref()
                .and_then(|p| p.arrival_ms)
                .map(|a| (now - a).max(0)),
        });
    }
    Ok(Composite {
        pipeline: pipeline.to_string(),
        stream: stream.name.clone(),
        baseline,
        shards,
    })
}
