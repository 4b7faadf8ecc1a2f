//! The one driver of a database source: the steps of the [`Source`] contract in order, the
//! resumable snapshot, then the one stream loop (`engine::stream`).

use std::sync::Arc;

use tokio::sync::watch;

use crate::engine::stream::StreamSettings;
use crate::engine::{Pipeline, PipelineState};
use crate::error::{Error, Result};
use crate::output::Layout;
use crate::position::Lsn;
use crate::source::contract::{Ordering, Progress, SnapshotRead, TotalSource, WithTotalSource};
use crate::source::snapshot::SnapshotMeta;
use crate::store::Checkpoint;

/// [`Pipeline::run_database`] for the source the config names.
pub(super) struct RunDatabase<'a> {
    pub pipeline: &'a mut Pipeline,
    pub shutdown: watch::Receiver<bool>,
}

impl WithTotalSource for RunDatabase<'_> {
    type Output = ();
    async fn run<S: TotalSource>(self) -> Result<()> {
        self.pipeline.run_database::<S>(self.shutdown).await
    }
}

impl Pipeline {
    /// Runs source `S` until `shutdown` (or `--until-caught-up`): prepares it, takes or resumes
    /// the snapshot when the checkpoint has no position, then streams from the durable one.
    pub(super) async fn run_database<S: TotalSource>(
        &mut self,
        shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        // One stream loop, one commit order: a per-shard source would need a loop per shard.
        const { assert!(matches!(S::ORDERING, Ordering::Total)) };
        self.set_state(PipelineState::Connecting);
        let layout = Layout::new(&self.config.output.prefix, &self.config.pipeline);
        let cp = self.load_checkpoint().await?;
        let mut source = S::open(&self.config).await?;
        let (cp, captured) = source.prepare(cp, self.store.as_ref()).await?;
        // Read once, at the first connect: a retry still stops where the run was asked to.
        if self.until_caught_up && self.caught_up_at.is_none() {
            self.caught_up_at = Some(Arc::new(source.write_position().await?));
        }
        let stop_at = self
            .caught_up_at
            .as_ref()
            .and_then(|p| p.downcast_ref::<Progress<S>>())
            .cloned();
        let mut cp = self.record_captured(cp, &captured).await?;
        source.captured().await?;

        if cp.position.is_none() {
            self.set_state(PipelineState::Snapshotting);
            let snapshot = self.snapshot(&mut source, cp, &layout, &shutdown);
            let Some(done) = snapshot.await? else {
                return self.stopped_in_snapshot();
            };
            cp = done;
        }
        let durable = S::position(&cp)?;
        let stream = source.stream(&cp, &durable).await?;
        self.set_state(PipelineState::Streaming);
        tracing::info!(pipeline = %self.config.pipeline, position = %durable, "streaming");
        let settings = StreamSettings {
            stop_at,
            idle_save: S::idle_save(&self.config),
        };
        self.stream_changes(stream, cp, durable, layout, shutdown, settings)
            .await
    }

    /// Takes the initial snapshot, or resumes an interrupted one in a new consistent read
    /// (tables done stay; the rest, or the rest of a chunked table above its last durable key,
    /// are copied there, with skip rules for their changes before that read). Returns the
    /// checkpoint positioned where the stream starts; `None` when `shutdown` stopped it first
    /// (what is durable stays, and the next run resumes from it).
    async fn snapshot<S: TotalSource>(
        &mut self,
        source: &mut S,
        cp: Checkpoint,
        layout: &Layout,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<Checkpoint>> {
        let tables = source.snapshot_tables().await?;
        let unfinished = cp.snapshot.clone().filter(|s| !s.done);
        let resumable = match &unfinished {
            Some(progress) => source.can_resume(progress).await?,
            None => false,
        };
        let (mut cp, mut read) = match unfinished {
            Some(progress) if resumable => {
                let read = source.resume_snapshot(&progress, &tables.copy).await?;
                tracing::info!(
                    snapshot_id = %progress.snapshot_id,
                    resume_point = %read.point(),
                    done = progress.tables_done.len(),
                    "resuming the interrupted snapshot in a new consistent read"
                );
                let cp = self
                    .plan_resume(cp, progress, &tables.copy, read.point(), layout)
                    .await?;
                (cp, read)
            }
            unfinished => {
                if let Some(old) = unfinished {
                    tracing::warn!(snapshot_id = %old.snapshot_id, "the interrupted snapshot cannot resume: starting it over");
                    for t in &tables.copy {
                        self.delete_parts(layout, t, &old.snapshot_id, 0).await?;
                    }
                }
                source
                    .begin_snapshot(cp, self.store.as_ref(), &tables.copy)
                    .await?
            }
        };
        let Some(progress) = cp.snapshot.clone() else {
            return Err(Error::fatal("snapshot progress missing"));
        };
        // Just below the snapshot's first point: a transaction may begin exactly there, and
        // `(_pos, _ord)` orders every snapshot row before every change of its table.
        let pos = Lsn(progress.consistent_point.0.saturating_sub(1)).sortable();
        let taken_at = read.taken_at();
        let meta = SnapshotMeta {
            snapshot_id: &progress.snapshot_id,
            pos: &pos,
            taken_at,
        };
        if self.config.source.snapshot {
            for (t, resume) in Self::tables_to_copy(&cp, &tables.copy) {
                let mut copier = read.copier(&t).await?;
                let copied = self
                    .copy_table(&mut copier, &t, &meta, layout, resume, cp, shutdown)
                    .await?;
                match copied {
                    Some(next) => cp = next,
                    None => return Ok(None),
                }
            }
        }
        read.close().await?;
        let next = self
            .finish_snapshot(cp, S::stream_start(&progress), taken_at, &tables.record)
            .await?;
        tracing::info!(
            tables = tables.copy.len(),
            consistent_point = %progress.consistent_point,
            "snapshot complete; streaming from its consistent point"
        );
        Ok(Some(next))
    }
}
