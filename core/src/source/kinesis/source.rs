//! A Kinesis stream with its S3 baseline as a [`Source`]: ordered per shard, replayed from each
//! shard's committed sequence number within the stream's retention.
//!
//! Its position is composite: the baseline's checkpoint (`<pipeline>#baseline`: the S3
//! version id and which records it covers) and one checkpoint per shard
//! (`<pipeline>#shard#<id>`: a [`ShardPosition`]). It is not run by the database driver: each
//! shard is applied on its own ([`crate::engine::shard`]), by Lambda or by the worker's shard
//! consumer ([`crate::engine::shard_consumer`]).

use crate::error::{Error, Result};
use crate::position::ShardPosition;
use crate::store::{Checkpoint, SourcePosition};

/// The Kinesis stream and S3 baseline source. It has no instance: every call takes the config
/// and the store.
pub enum KinesisSource {}

impl KinesisSource {
    /// The shard position `cp` holds; `None` before the shard's first commit. A checkpoint of
    /// another kind of source is a configuration error.
    pub fn shard_position(cp: &Checkpoint) -> Result<Option<ShardPosition>> {
        match &cp.position {
            None => Ok(None),
            Some(SourcePosition::Kinesis(p)) => Ok(Some(p.clone())),
            Some(other) => Err(Error::config(format!(
                "checkpoint {:?} holds a {other} position, not a Kinesis shard's: use another pipeline name",
                cp.pipeline
            ))),
        }
    }
}

#[cfg(feature = "aws")]
mod contract {
    use super::KinesisSource;
    use crate::config::Config;
    use crate::error::{Error, Result};
    use crate::position::ShardPosition;
    use crate::source::contract::{Ordering, ResumeMode, Source, SourceStatus};
    use crate::source::kinesis::client::KinesisStream;
    use crate::source::kinesis::status::composite;
    use crate::source::{Finding, Level};
    use crate::store::{self, Checkpoint, PositionStore};

    fn stream_name(config: &Config) -> Result<&str> {
        config.kinesis_stream().ok_or_else(|| {
            Error::config(format!(
                "{} is not a kinesis://<stream> source",
                config.source.url
            ))
        })
    }

    impl Source for KinesisSource {
        type Position = ShardPosition;

        const ORDERING: Ordering = Ordering::PerShard;
        const RESUME: ResumeMode = ResumeMode::Replay;

        /// The position of a shard's checkpoint; an error when the shard has none yet.
        fn position(cp: &Checkpoint) -> Result<ShardPosition> {
            KinesisSource::shard_position(cp)?.ok_or_else(|| {
                Error::config(format!(
                    "checkpoint {:?} holds no position yet",
                    cp.pipeline
                ))
            })
        }

        /// The stream's shards, and that the store and the output are reachable.
        async fn check(
            config: &Config,
            store: &dyn PositionStore,
            _cp: Option<&Checkpoint>,
        ) -> Result<Vec<Finding>> {
            let name = stream_name(config)?;
            let shards = KinesisStream::open(name).await?.shards().await?;
            let open = shards.iter().filter(|s| s.ending.is_none()).count();
            let output = crate::output::open(&config.output_url()).await?;
            Ok(vec![
                Finding::new(
                    "stream",
                    Level::Ok,
                    format!("{name} has {} shards ({open} open)", shards.len()),
                ),
                Finding::new(
                    "positions",
                    Level::Ok,
                    format!("{} is reachable", store.url()),
                ),
                Finding::new(
                    "output",
                    Level::Ok,
                    format!("{} is reachable", output.url()),
                ),
            ])
        }

        /// Deletes every listed shard's position, the workers' seats and the baseline's
        /// checkpoint. Kinesis keeps nothing for a reader, so `release` changes nothing.
        async fn reset(
            config: &Config,
            store: &dyn PositionStore,
            _cp: Option<&Checkpoint>,
            _release: bool,
        ) -> Result<Vec<String>> {
            let pipeline = &config.pipeline;
            let shards = KinesisStream::open(stream_name(config)?)
                .await?
                .shards()
                .await?;
            for s in &shards {
                store
                    .delete(&store::shard_checkpoint(pipeline, &s.id))
                    .await?;
            }
            for n in 0..shards.len().max(1) {
                store.delete(&format!("{pipeline}#seat#{n}")).await?;
            }
            store.delete(&store::baseline_checkpoint(pipeline)).await?;
            Ok(vec![format!(
                "{} shard positions and the baseline forgotten",
                shards.len()
            )])
        }

        /// The composite position: the baseline, and per shard its committed sequence number,
        /// lease and lag (Kinesis' MillisBehindLatest; there is no lag in bytes).
        async fn status(
            config: &Config,
            store: &dyn PositionStore,
            _cp: Option<&Checkpoint>,
        ) -> Result<SourceStatus> {
            let stream = KinesisStream::open(stream_name(config)?).await?;
            let doc = composite(store, &stream, &config.pipeline).await?;
            let mut lines = vec![
                ("stream".to_string(), doc.stream.clone()),
                (
                    "baseline".to_string(),
                    doc.baseline
                        .as_ref()
                        .map_or_else(|| "none".to_string(), |b| b.to_string()),
                ),
            ];
            lines.extend(doc.shards.iter().map(|s| {
                (
                    "shard".to_string(),
                    format!(
                        "{}  seq {}{}  behind {}  lease {}",
                        s.shard,
                        s.sequence.as_deref().unwrap_or("-"),
                        if s.finished { " (finished)" } else { "" },
                        s.millis_behind_latest
                            .map(|m| format!("{m} ms"))
                            .unwrap_or_else(|| "?".into()),
                        s.lease_owner.as_deref().unwrap_or("-"),
                    ),
                )
            }));
            let reading = doc.shards.iter().any(|s| s.lease_owner.is_some());
            let fields = match serde_json::to_value(&doc) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(_) => serde_json::Map::new(),
                Err(e) => return Err(Error::fatal(format!("status document: {e}"))),
            };
            Ok(SourceStatus {
                lag_bytes: None,
                reading: Some(reading),
                fields,
                lines,
                unreachable: None,
            })
        }
    }
}
