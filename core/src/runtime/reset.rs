//! `tidemark reset`: forget a pipeline's position so its next run starts over.

use crate::config::Config;
use crate::error::Result;
use crate::source::Source;
use crate::source::contract::{WithSource, with_source};
use crate::store::{self, Checkpoint, PositionStore};

/// Forgets `cfg`'s pipeline position (and the source's other positions: a stream's shards and
/// baseline) and, with `drop_slot`, what the source keeps for it (a PostgreSQL slot and
/// publication): the next run takes a new snapshot. Returns what it did, a line each.
pub async fn reset(cfg: &Config, drop_slot: bool) -> Result<Vec<String>> {
    let store = store::open(cfg.positions.url.as_deref(), cfg.positions.create_table).await?;
    let cp = store.load(&cfg.pipeline).await?;
    store.delete(&cfg.pipeline).await?;
    let mut said = with_source(cfg, Reset(cfg, store.as_ref(), cp.as_ref(), drop_slot)).await?;
    said.push(format!("pipeline {} reset", cfg.pipeline));
    Ok(said)
}

struct Reset<'a>(
    &'a Config,
    &'a dyn PositionStore,
    Option<&'a Checkpoint>,
    bool,
);

impl WithSource for Reset<'_> {
    type Output = Vec<String>;
    async fn run<S: Source>(self) -> Result<Vec<String>> {
        S::reset(self.0, self.1, self.2, self.3).await
    }
}
