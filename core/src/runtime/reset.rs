//! `tidemark reset`: forget a pipeline's position so its next run starts over.

use crate::config::Config;
use crate::error::Result;
use crate::source::postgres::{catalog, connect};
use crate::store;

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
    if drop_slot && !cfg.is_mysql() {
        // The slot the checkpoint recorded, else the configured or default name (no checkpoint
        // at all is fine).
        let (slot, publication) = crate::engine::postgres::slot_names(cfg, cp.as_ref());
        let pg = connect::source_settings(&cfg.source)?;
        let client = connect::sql_connect(&pg, "tidemark-reset").await?;
        let dropped = client
            .execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await?;
        client
            .batch_execute(&format!(
                "drop publication if exists {}",
                catalog::quote_ident(&publication)
            ))
            .await?;
        said.push(format!(
            "replication slot {slot} {}; publication {publication} dropped",
            if dropped > 0 {
                "dropped"
            } else {
                "was not there"
            }
        ));
    }
    if !drop_slot && !cfg.is_mysql() {
        let (slot, _) = crate::engine::postgres::slot_names(cfg, cp.as_ref());
        let (next, _) = crate::engine::postgres::slot_names(cfg, None);
        if slot != next {
            said.push(format!(
                "note: replication slot {slot} is kept, but the next run creates {next} (the default name changed); \
                 drop {slot} or it holds WAL: SELECT pg_drop_replication_slot('{slot}')"
            ));
        }
    }
    said.push(format!("pipeline {} reset", cfg.pipeline));
    Ok(said)
}
