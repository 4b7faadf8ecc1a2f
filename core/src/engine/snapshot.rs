//! The one snapshot driver: copies a source's tables inside its consistent read, chunk by
//! chunk through [`TableCopier`], saving progress after every chunk, so a stopped or crashed
//! snapshot resumes from its last durable chunk.
//!
//! Contract: a chunk's parts are written before the checkpoint records them; parts after the
//! last recorded chunk are deleted before a resumed copy writes them again ([`Pipeline::plan_resume`]),
//! and the skip rules it records keep the stream from writing rows the resumed copy holds.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::change::TableId;
use crate::engine::Pipeline;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::output::Layout;
use crate::position::Lsn;
use crate::source::snapshot::{Chunk, CopyTarget, KeyPlan, SnapshotMeta, TableCopier};
use crate::store::{Checkpoint, SkipRule, SnapshotProgress, SourcePosition, TableProgress};

impl Pipeline {
    /// Records the captured set in a checkpoint that has a position and a different set (so a
    /// table removed and added back later is refused, even after a crash in between).
    pub(super) async fn record_captured(
        &self,
        cp: Checkpoint,
        captured: &[TableId],
    ) -> Result<Checkpoint> {
        if cp.position.is_none() || cp.tables.as_deref() == Some(captured) {
            return Ok(cp);
        }
        let mut next = cp.next();
        next.tables = Some(captured.to_vec());
        self.store.save(cp.expected(), &next, None).await?;
        Ok(next)
    }

    /// A run stopped by shutdown during the snapshot: what is durable stays for the next run.
    pub(super) fn stopped_in_snapshot(&mut self) -> Result<()> {
        tracing::info!("stopped during the snapshot; its durable progress resumes on the next run");
        self.set_state(crate::engine::PipelineState::Stopped);
        Ok(())
    }

    /// The tables of `tables` the snapshot has not finished, each with its durable progress.
    pub(super) fn tables_to_copy(
        cp: &Checkpoint,
        tables: &[TableId],
    ) -> Vec<(TableId, Option<TableProgress>)> {
        let Some(s) = cp.snapshot.as_ref() else {
            return tables.iter().map(|t| (t.clone(), None)).collect();
        };
        tables
            .iter()
            .filter(|t| !s.tables_done.contains(t))
            .map(|t| {
                let resume = s.current.clone().filter(|c| c.table == *t);
                (t.clone(), resume)
            })
            .collect()
    }

    /// Copies one table (from its durable progress, if any), saving progress after every part
    /// of a keyset-chunked table and marking the table done at the end. Returns `None` when
    /// `shutdown` turned true: between chunks, or abandoning a copy in progress.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn copy_table<C: TableCopier>(
        &mut self,
        copier: &mut C,
        table: &TableId,
        meta: &SnapshotMeta<'_>,
        layout: &Layout,
        resume: Option<TableProgress>,
        mut cp: Checkpoint,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<Checkpoint>> {
        let mut shutdown = shutdown.clone();
        let part_rows = self.config.batch.snapshot_part_rows;
        let mut progress = resume.unwrap_or(TableProgress {
            table: table.clone(),
            parts_done: 0,
            rows_done: 0,
            last_key: None,
        });
        let bar = copier.progress(progress.rows_done, self.progress).await?;
        let heartbeat = self.copy_heartbeat(&bar);
        let chunked = matches!(copier.plan(), KeyPlan::Integer { .. });
        let output = self.output.clone();
        loop {
            let chunk = Chunk {
                after: progress.last_key,
                limit: chunked.then_some(part_rows),
                part_rows,
                first_part: progress.parts_done,
                first_ord: progress.rows_done,
                write_empty: progress.parts_done == 0,
            };
            if *shutdown.borrow() {
                return Ok(None);
            }
            let target = CopyTarget {
                meta,
                layout,
                output: output.as_ref(),
                bar: &bar,
            };
            let copied = tokio::select! {
                copied = copier.copy(&chunk, &target) => copied?,
                _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
            };
            progress.parts_done += copied.parts;
            progress.rows_done += copied.rows;
            progress.last_key = copied.last_key.or(progress.last_key);
            let finished = !chunked || copied.rows < part_rows as u64;
            cp = self.save_chunk(&cp, &progress, finished).await?;
            if finished {
                break;
            }
        }
        drop(heartbeat);
        self.table_copied(&bar, &progress);
        Ok(Some(cp))
    }

    /// Marks the snapshot done: the position moves to where the stream starts (`start`), and
    /// the captured set is recorded.
    pub(super) async fn finish_snapshot(
        &self,
        cp: Checkpoint,
        start: Option<SourcePosition>,
        taken_at: i64,
        captured: &[TableId],
    ) -> Result<Checkpoint> {
        let mut next = cp.next();
        next.position = start;
        next.last_commit_ts = Some(taken_at);
        next.tables = Some(captured.to_vec());
        if let Some(s) = &mut next.snapshot {
            s.done = true;
            s.current = None;
        }
        self.store.save(cp.expected(), &next, None).await?;
        Ok(next)
    }

    /// Records what a resumed snapshot will copy at `point` (skip rules) before copying it.
    pub(super) async fn plan_resume(
        &mut self,
        cp: Checkpoint,
        progress: SnapshotProgress,
        tables: &[TableId],
        point: Lsn,
        layout: &Layout,
    ) -> Result<Checkpoint> {
        let mut next = cp.next();
        let Some(s) = next.snapshot.as_mut() else {
            return Err(Error::fatal("snapshot progress missing"));
        };
        for t in tables.iter().filter(|t| !progress.tables_done.contains(t)) {
            match progress.current.as_ref().filter(|c| c.table == *t) {
                Some(cur) if cur.last_key.is_some() => {
                    // Parts up to the last durable key stay; anything after them is redone.
                    self.delete_parts(layout, t, &progress.snapshot_id, cur.parts_done)
                        .await?;
                    s.skips.push(SkipRule {
                        table: t.clone(),
                        before: point,
                        key_above: cur.last_key,
                    });
                }
                _ => {
                    self.delete_parts(layout, t, &progress.snapshot_id, 0)
                        .await?;
                    s.skips.push(SkipRule {
                        table: t.clone(),
                        before: point,
                        key_above: None,
                    });
                    if s.current.as_ref().is_some_and(|c| c.table == *t) {
                        s.current = None;
                    }
                }
            }
        }
        self.store.save(cp.expected(), &next, None).await?;
        Ok(next)
    }

    /// Deletes a table's snapshot parts numbered `from` and above.
    pub(super) async fn delete_parts(
        &self,
        layout: &Layout,
        table: &TableId,
        snapshot_id: &str,
        from: u32,
    ) -> Result<()> {
        super::delete_snapshot_parts(self.output.as_ref(), layout, table, snapshot_id, from).await
    }

    /// Saves a snapshot chunk's progress: the table is done (`finished`) or copied up to
    /// `progress`. Returns the saved checkpoint.
    async fn save_chunk(
        &self,
        cp: &Checkpoint,
        progress: &crate::store::TableProgress,
        finished: bool,
    ) -> Result<Checkpoint> {
        let mut next = cp.next();
        if let Some(s) = &mut next.snapshot {
            if finished {
                s.tables_done.push(progress.table.clone());
                s.current = None;
            } else {
                s.current = Some(progress.clone());
            }
        }
        self.store.save(cp.expected(), &next, None).await?;
        if finished {
            failpoint::pass(failpoint::TABLE_DONE);
        }
        Ok(next)
    }

    /// Keeps the status file fresh while a table is copied (issue 11 item 8): it is rewritten
    /// every second while rows keep arriving (within [`COPY_STALL`]), so a health check sees a
    /// long copy as alive while a copy that stopped moving goes stale like a hung worker.
    /// Stops on drop.
    fn copy_heartbeat(&self, bar: &indicatif::ProgressBar) -> Option<CopyHeartbeat> {
        let mut status = self.status.clone()?;
        let bar = bar.clone();
        Some(CopyHeartbeat(tokio::spawn(async move {
            let mut tick = tokio::time::interval(COPY_HEARTBEAT);
            let (mut seen, mut moved) = (bar.position(), Instant::now());
            loop {
                tick.tick().await;
                let now = bar.position();
                if now != seen {
                    (seen, moved) = (now, Instant::now());
                }
                if moved.elapsed() < COPY_STALL {
                    status.touch();
                }
            }
        })))
    }

    /// Ends a table's copy: clears its progress bar, logs, updates the status file.
    fn table_copied(
        &mut self,
        bar: &indicatif::ProgressBar,
        progress: &crate::store::TableProgress,
    ) {
        bar.finish_and_clear();
        let table = &progress.table;
        tracing::info!(table = %table, rows = progress.rows_done, parts = progress.parts_done, "snapshot copied");
        if let Some(s) = &mut self.status {
            s.committed(format!("snapshot {table}"), progress.rows_done);
        }
    }
}

/// How often a table copy that is making progress refreshes the status file.
const COPY_HEARTBEAT: Duration = Duration::from_secs(1);
/// A copy whose row count has not moved for this long stops refreshing it (encoding and
/// writing a part pauses the count for a while; a hung copy then goes stale).
const COPY_STALL: Duration = Duration::from_secs(60);

/// The status-file refresher of one table copy; aborted when dropped.
struct CopyHeartbeat(tokio::task::JoinHandle<()>);

impl Drop for CopyHeartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}
