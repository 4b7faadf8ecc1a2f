//! The PostgreSQL pipeline: publication and slot set-up, the initial snapshot with hand-off, and
//! the streaming loop that batches rows and runs the commit protocol.

use std::time::Duration;

use tokio::sync::watch;

use crate::change::{Op, RowMeta, Value};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::output::{Layout, ObjectOutput};
use crate::pipeline::{Batch, PipelineState, StatusFile, commit_batch, elapsed, load_and_recover};
use crate::position::{Lsn, PgPosition};
use crate::source::postgres::replication::ReplicationClient;
use crate::source::postgres::snapshot::{self, SnapshotMeta};
use crate::source::postgres::stream::{self, Acked, PgEvent};
use crate::source::postgres::{catalog, check, connect};
use crate::store::{Checkpoint, PositionStore, SnapshotProgress, SourcePosition};

/// How often the stream task reports the durable LSN and asks for a keepalive (idle acks, lag).
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// One PostgreSQL → Parquet pipeline.
pub struct PgPipeline {
    pub config: Config,
    pub output: Box<dyn ObjectOutput>,
    pub store: Box<dyn PositionStore>,
    /// Draw a progress bar for snapshots (on a terminal).
    pub progress: bool,
    pub status: Option<StatusFile>,
    /// Return `Ok` once everything up to this WAL position is durable (`--until-caught-up`).
    pub stop_at: Option<Lsn>,
}

/// The transaction being received.
struct Tx {
    commit_lsn: Lsn,
    pos: String,
    commit_ts: i64,
    xid: u32,
    next_ord: u64,
}

impl PgPipeline {
    fn set_state(&mut self, state: PipelineState) {
        if let Some(s) = &mut self.status {
            s.set_state(state, None);
        }
    }

    /// Runs until `shutdown` turns true (then flushes, commits, acks and returns `Ok`) or an error.
    /// Retryable errors leave the checkpoint consistent: call `run` again to resume.
    pub async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        self.set_state(PipelineState::Connecting);
        let layout = Layout::new(&self.config.output.prefix, &self.config.pipeline);
        let mut cp = load_and_recover(
            self.store.as_ref(),
            self.output.as_ref(),
            &self.config.pipeline,
        )
        .await?;

        let pg = connect::parse_url(&self.config.source.url)?;
        let sql = connect::sql_connect(&pg, "tidemark").await?;
        check::require_logical_wal(&sql).await?;
        let publication = self.config.publication();
        let slot = self.config.slot();
        catalog::ensure_publication(&sql, &publication, &self.config.tables()).await?;
        let mut repl = ReplicationClient::connect(&pg, "tidemark").await?;

        if cp.position.is_none() {
            self.set_state(PipelineState::Snapshotting);
            cp = self
                .initial_snapshot(&sql, &mut repl, &layout, cp, &slot, &publication)
                .await?;
        } else if catalog::slot_info(&sql, &slot).await?.is_none() {
            return Err(Error::config(format!(
                "replication slot {slot} is gone but pipeline {} has a committed position: changes since then are lost. \
                 Run `tidemark reset` to take a new snapshot",
                self.config.pipeline
            )));
        }
        let Some(SourcePosition::Postgres(durable)) = cp.position else {
            return Err(Error::config(
                "this pipeline's checkpoint is not from a PostgreSQL source",
            ));
        };

        let stream = repl
            .start_replication(&slot, durable.ack_lsn, &publication, 1)
            .await?;
        let acked = Acked::new(durable.ack_lsn);
        let mut handle = stream::spawn(stream, sql, acked.clone(), STATUS_INTERVAL);
        self.set_state(PipelineState::Streaming);
        tracing::info!(pipeline = %self.config.pipeline, position = %durable, slot, "streaming");

        let mut run = StreamRun {
            durable,
            last_complete: durable,
            tx: None,
            batch: Batch::default(),
            cp,
            layout,
            acked,
            server_wal_end: Lsn::ZERO,
        };
        let flush_every = self.config.batch.flush_interval();
        let mut tick = tokio::time::interval(flush_every.min(Duration::from_secs(1)));
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    tracing::info!("shutting down: flushing and committing");
                    break run.flush(self).await;
                }
                ev = handle.events.recv() => {
                    let Some(ev) = ev else {
                        break Err(Error::transient("replication stream task ended"));
                    };
                    if let Err(e) = run.on_event(self, ev?).await {
                        break Err(e);
                    }
                    if let Some(stop_at) = self.stop_at
                        && run.received_through(stop_at)
                    {
                        tracing::info!(%stop_at, "caught up with the WAL position at start-up");
                        break run.flush(self).await;
                    }
                }
                _ = tick.tick() => {
                    if elapsed(run.batch.started(), flush_every)
                        && let Err(e) = run.flush(self).await
                    {
                        break Err(e);
                    }
                }
            }
        };
        let stopped = handle.stop().await;
        if result.is_ok() {
            self.set_state(PipelineState::Stopped);
        }
        result.and(stopped)
    }

    async fn initial_snapshot(
        &mut self,
        sql: &tokio_postgres::Client,
        repl: &mut ReplicationClient,
        layout: &Layout,
        mut cp: Checkpoint,
        slot: &str,
        publication: &str,
    ) -> Result<Checkpoint> {
        let tables = catalog::publication_tables(sql, publication).await?;
        // An interrupted snapshot cannot be resumed inside the same exported snapshot: remove its
        // objects and the slot, then start over.
        if let Some(old) = cp.snapshot.clone() {
            tracing::warn!(snapshot_id = %old.snapshot_id, "discarding an unfinished snapshot");
            for t in &tables {
                for key in self
                    .output
                    .list(&layout.snapshot_prefix(t, &old.snapshot_id))
                    .await?
                {
                    self.output.delete(&key).await?;
                }
            }
        }
        if let Some(info) = catalog::slot_info(sql, slot).await? {
            if let Some(pid) = info.active_pid {
                return Err(Error::transient(format!(
                    "replication slot {slot} is still in use by PID {pid}"
                )));
            }
            repl.drop_slot(slot).await?;
        }
        let created = repl.create_slot_exporting(slot).await?;
        let point = created.consistent_point;
        tracing::info!(slot, consistent_point = %point, "created replication slot");
        // The exported snapshot lives until `repl` runs its next command: import it first.
        snapshot::import(sql, &created.snapshot_name).await?;
        let taken_at: i64 = sql
            .query_one("select (extract(epoch from now()) * 1000000)::int8", &[])
            .await?
            .get(0);

        let snapshot_id = point.sortable();
        let mut next = cp.next();
        next.snapshot = Some(SnapshotProgress {
            snapshot_id: snapshot_id.clone(),
            consistent_point: point,
            tables_done: vec![],
            done: false,
        });
        self.store.save(cp.expected(), &next).await?;
        cp = next;

        if self.config.source.snapshot {
            let meta = SnapshotMeta {
                snapshot_id: &snapshot_id,
                pos: &snapshot_id,
                taken_at,
            };
            for t in &tables {
                let rows = snapshot::copy_table(
                    sql,
                    t,
                    &meta,
                    self.config.batch.snapshot_part_rows,
                    layout,
                    self.output.as_ref(),
                    self.progress,
                )
                .await?;
                let mut next = cp.next();
                if let Some(s) = &mut next.snapshot {
                    s.tables_done.push(t.clone());
                }
                self.store.save(cp.expected(), &next).await?;
                cp = next;
                if let Some(s) = &mut self.status {
                    s.committed(format!("snapshot {t}"), rows);
                }
            }
        }
        sql.batch_execute("commit").await?;

        let mut next = cp.next();
        next.position = Some(SourcePosition::Postgres(PgPosition::complete(point, point)));
        next.last_commit_ts = Some(taken_at);
        if let Some(s) = &mut next.snapshot {
            s.done = true;
        }
        self.store.save(cp.expected(), &next).await?;
        tracing::info!(tables = tables.len(), consistent_point = %point, "snapshot complete; streaming from its consistent point");
        Ok(next)
    }
}

/// State of one streaming session.
struct StreamRun {
    /// Committed: every row at or before it is durable.
    durable: PgPosition,
    /// After the last whole transaction received.
    last_complete: PgPosition,
    tx: Option<Tx>,
    batch: Batch,
    cp: Checkpoint,
    layout: Layout,
    acked: Acked,
    /// The server's WAL position from its last keepalive: everything before it was sent.
    server_wal_end: Lsn,
}

impl StreamRun {
    /// Whether every transaction committed before `lsn` has been received (flushing then
    /// makes it durable).
    fn received_through(&self, lsn: Lsn) -> bool {
        self.tx.is_none() && self.last_complete.ack_lsn.max(self.server_wal_end) >= lsn
    }

    /// The position that covers every row received so far.
    fn pending(&self) -> PgPosition {
        match &self.tx {
            Some(tx) => PgPosition {
                commit_lsn: tx.commit_lsn,
                rows: tx.next_ord,
                ack_lsn: self.last_complete.ack_lsn,
            },
            None => self.last_complete,
        }
    }

    async fn on_event(&mut self, p: &mut PgPipeline, ev: PgEvent) -> Result<()> {
        match ev {
            PgEvent::Begin {
                commit_lsn,
                commit_ts,
                xid,
            } => {
                self.tx = Some(Tx {
                    commit_lsn,
                    pos: commit_lsn.sortable(),
                    commit_ts,
                    xid,
                    next_ord: 0,
                });
            }
            PgEvent::Row { schema, op, values } => self.row(p, &schema, op, &values).await?,
            PgEvent::Truncate { schemas } => {
                for schema in schemas {
                    let nulls = vec![Value::Null; schema.columns.len()];
                    self.row(p, &schema, Op::Truncate, &nulls).await?;
                }
            }
            PgEvent::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                if self.tx.as_ref().is_some_and(|t| t.commit_lsn != commit_lsn) {
                    return Err(Error::data(format!(
                        "Commit at {commit_lsn} does not match its Begin"
                    )));
                }
                self.tx = None;
                self.last_complete = PgPosition::complete(commit_lsn, end_lsn);
            }
            PgEvent::Keepalive { wal_end } => {
                self.server_wal_end = self.server_wal_end.max(wal_end);
                // Nothing is buffered: everything the server sent is durable or not ours, so its
                // WAL position can be released (no WAL pinned by idle or unpublished traffic).
                if self.tx.is_none() && self.batch.is_empty() {
                    self.acked.advance(wal_end);
                }
            }
        }
        Ok(())
    }

    async fn row(
        &mut self,
        p: &mut PgPipeline,
        schema: &crate::change::SchemaRef,
        op: Op,
        values: &[Value],
    ) -> Result<()> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(Error::data(format!(
                "row for {} outside a transaction",
                schema.id
            )));
        };
        let ord = tx.next_ord;
        if self.durable.covers(tx.commit_lsn, ord) {
            tx.next_ord += 1; // replayed after a restart: already durable
            return Ok(());
        }
        if self.batch.schema_differs(schema) {
            self.flush(p).await?;
        }
        let Some(tx) = self.tx.as_mut() else {
            return Ok(());
        };
        let meta = RowMeta {
            op,
            pos: &tx.pos,
            ord,
            commit_ts: tx.commit_ts,
            xid: Some(i64::from(tx.xid)),
        };
        self.batch.push(schema, &meta, values)?;
        tx.next_ord += 1;
        let cfg = &p.config.batch;
        if self.batch.rows() >= cfg.max_rows || self.batch.approx_bytes() >= cfg.max_bytes() {
            self.flush(p).await?;
        }
        Ok(())
    }

    /// Makes everything received durable and commits the position; then acks it.
    async fn flush(&mut self, p: &mut PgPipeline) -> Result<()> {
        let to = self.pending();
        if to <= self.durable && self.batch.is_empty() {
            return Ok(());
        }
        let rows = self.batch.rows() as u64;
        let last_ts = self.batch.last_commit_ts();
        let started = std::time::Instant::now();
        let objects = self.batch.encode(&self.layout)?;
        let n_objects = objects.len();
        let bytes: usize = objects.iter().map(|(_, b)| b.len()).sum();
        self.cp = commit_batch(
            p.store.as_ref(),
            p.output.as_ref(),
            &self.cp,
            objects,
            SourcePosition::Postgres(to),
            last_ts,
        )
        .await?;
        self.durable = to;
        self.acked.advance(to.ack_lsn);
        if rows > 0 {
            tracing::info!(
                rows,
                objects = n_objects,
                bytes,
                position = %to,
                batch_ms = started.elapsed().as_millis() as u64,
                "committed batch"
            );
        }
        if let Some(s) = &mut p.status {
            s.committed(to.to_string(), rows);
        }
        Ok(())
    }
}
