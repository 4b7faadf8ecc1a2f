//! `tidemark reset`: forget a pipeline's position so its next run starts over.

use crate::config::Config;
use crate::error::Result;
use crate::source::Source;
use crate::source::contract::{WithSource, with_source};
use crate::store::{self, Checkpoint};

/// Forgets `cfg`'s pipeline position (and, with `drop_slot`, its PostgreSQL slot and
/// publication): the next run takes a new snapshot. Returns what it did, a line each.
pub async fn reset(cfg: &Config, drop_slot: bool) -> Result<Vec<String>> {
    let mut said = Vec::new();
    let store = store::open(cfg.positions.url.as_deref(), cfg.positions.create_table).await?;
    let cp = store.load(&cfg.pipeline).await?;
    store.delete(&cfg.pipeline).await?;
    #[cfg(feature = "aws")]
    if let Some(stream) = cfg.kinesis_stream() {
        // Every shard's position, the baseline and the seats.
        let shards = crate::source::kinesis::client::KinesisStream::open(stream)
            .await?
            .shards()
            .await?;
        for s in &shards {
            store
                .delete(&store::shard_checkpoint(&cfg.pipeline, &s.id))
                .await?;
        }
        for n in 0..shards.len().max(1) {
            store.delete(&format!("{}#seat#{n}", cfg.pipeline)).await?;
        }
        store
            .delete(&store::baseline_checkpoint(&cfg.pipeline))
            .await?;
        said.push(format!(
            "pipeline {} reset: {} shard positions and the baseline forgotten",
            cfg.pipeline,
            shards.len()
        ));
        return Ok(said);
    }
    said.extend(with_source(cfg, Reset(cfg, cp.as_ref(), drop_slot)).await?);
    said.push(format!("pipeline {} reset", cfg.pipeline));
    Ok(said)
}

struct Reset<'a>(&'a Config, Option<&'a Checkpoint>, bool);

impl WithSource for Reset<'_> {
    type Output = Vec<String>;
    async fn run<S: Source>(self) -> Result<Vec<String>> {
        S::reset(self.0, self.1, self.2).await
    }
}
