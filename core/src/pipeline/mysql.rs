//! The MySQL/MariaDB pipeline: preflight, the consistent initial snapshot with hand-off, and
//! the binlog loop that batches rows and runs the commit protocol.
//!
//! Positions: a transaction is identified by where it begins in the binlog
//! ([`MyPosition`]); a restart re-reads from the last whole durable transaction (by GTID on
//! MariaDB, else file:pos) and skips the rows the committed position covers, so a huge
//! transaction flushed in parts is neither lost nor duplicated.
//!
//! DDL statements of captured databases are written to the schema history
//! (`<prefix>/<pipeline>/_schema_history/`) inside the same commit as the rows around them;
//! the new columns take effect with the next TABLE_MAP (a new Parquet schema from that row on).

use std::collections::HashSet;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::sync::watch;

use crate::change::{Op, RowMeta, SchemaRef, TableId, Value};
use crate::error::{Error, Result};
use crate::output::Layout;
use crate::pipeline::capture::{self, TableSet};
use crate::pipeline::{Batch, Pipeline, PipelineState, commit_batch, elapsed};
use crate::position::{BinlogCoord, MyPosition};
use crate::source::mysql::check;
use crate::source::mysql::connect::{self, MySource, ServerInfo};
use crate::source::mysql::snapshot::{self, ChunkRange};
use crate::source::mysql::stream::{self, Capture, MyEvent, StartAt};
use crate::source::snapshot::{KeyPlan, SnapshotMeta};
use crate::source::table_name::Dialect;
use crate::store::{Checkpoint, SkipRule, SnapshotProgress, SourcePosition, TableProgress};

/// The captured tables of a MySQL pipeline: `tables` (resolved from `source.tables`), or, when
/// empty, every table of the URL's database.
pub fn capture_of(tables: &[TableId], database: &str) -> (Capture, Vec<String>, Vec<TableId>) {
    if tables.is_empty() {
        let dbs = vec![database.to_string()];
        (
            Capture::Databases(dbs.iter().cloned().collect()),
            dbs,
            Vec::new(),
        )
    } else {
        (
            Capture::Tables(tables.iter().cloned().collect::<HashSet<_>>()),
            Vec::new(),
            tables.to_vec(),
        )
    }
}

/// What a MySQL pipeline's checkpoint records as its captured set: the tables, or `db.*`.
fn recorded_set(tables: &[TableId], databases: &[String]) -> Vec<TableId> {
    let mut out: Vec<TableId> = databases
        .iter()
        .map(|d| TableId::new(d.as_str(), capture::WHOLE_DATABASE))
        .chain(tables.iter().cloned())
        .collect();
    out.sort();
    out
}

/// The transaction being received.
struct Tx {
    xid: Option<i64>,
    begin: BinlogCoord,
    /// `begin.key()`, computed once: compared for every row.
    key: crate::position::Lsn,
    pos: String,
    commit_ts: i64,
    next_ord: u64,
    ddl: u32,
}

impl Pipeline {
    pub(super) async fn run_mysql(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        self.set_state(PipelineState::Connecting);
        let layout = Layout::new(&self.config.output.prefix, &self.config.pipeline);
        let mut cp = self.load_checkpoint().await?;
        let src = connect::source_settings(&self.config.source)?;
        let mut sql = connect::sql_connect(&src).await?;
        let server = connect::server_info(&mut sql).await?;
        check::require_row_binlog(&mut sql).await?;
        if self.until_caught_up && self.mysql_stop_at.is_none() {
            self.mysql_stop_at = Some(check::current_position(&mut sql, &server).await?);
        }
        let names = self.config.table_names()?;
        let resolved = snapshot::resolve_tables(&mut sql, &names, &src.database).await?;
        let (capture, databases, tables) = capture_of(&resolved, &src.database);
        let set = recorded_set(&tables, &databases);
        if cp.position.is_some() && self.config.source.snapshot {
            // The binlog carries every table of a captured database, so a whole database is
            // "listed" too: switching to it (or to another database) adds tables. Checkpoints
            // from before the set was recorded take the current one.
            capture::reconcile(
                &self.config.pipeline,
                cp.tables.as_deref(),
                TableSet::Listed(set.clone()),
                |t| match t.name.as_str() {
                    capture::WHOLE_DATABASE => {
                        format!(
                            "{}.* (every table of the database)",
                            Dialect::Mysql.quote_ident(&t.schema)
                        )
                    }
                    _ => Dialect::Mysql.quote_table(t),
                },
            )?;
        }
        if cp.position.is_some() && cp.tables.as_ref() != Some(&set) {
            let mut next = cp.next();
            next.tables = Some(set.clone());
            self.store.save(cp.expected(), &next, None).await?;
            cp = next;
        }

        if cp.position.is_none() {
            self.set_state(PipelineState::Snapshotting);
            let listed = snapshot::list_tables(&mut sql, &databases, &tables).await?;
            match self
                .mysql_snapshot(&src, &server, &layout, &listed, &set, cp, shutdown.clone())
                .await?
            {
                Some(done) => cp = done,
                None => {
                    tracing::info!(
                        "stopped during the snapshot; its durable progress resumes on the next run"
                    );
                    self.set_state(PipelineState::Stopped);
                    return Ok(());
                }
            }
        }
        drop(sql);
        let Some(SourcePosition::Mysql(durable)) = cp.position.clone() else {
            return Err(Error::config(
                "this pipeline's checkpoint is not from a MySQL/MariaDB source: use another pipeline name, or `tidemark reset`",
            ));
        };
        // By GTID wherever the position has one (MariaDB; MySQL with gtid_mode = ON).
        let use_gtid = self.config.resume_by_gtid().unwrap_or(true);
        let start = StartAt {
            coord: durable.resume.clone(),
            gtid: durable.gtid.clone(),
            use_gtid,
        };
        let binlog_conn = connect::sql_connect(&src).await?;
        let mut handle = stream::spawn(
            binlog_conn,
            self.config.server_id(),
            start,
            capture,
            server.mariadb,
        )
        .await?;
        self.set_state(PipelineState::Streaming);
        tracing::info!(pipeline = %self.config.pipeline, position = %durable, by = if use_gtid && durable.gtid.is_some() { "gtid" } else { "file:pos" }, "streaming the binlog");

        let skips = cp
            .snapshot
            .as_ref()
            .map(|s| {
                s.skips
                    .iter()
                    .filter(|r| r.before > durable.tx.key())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut run = MyRun {
            durable_key: durable.tx.key(),
            last_complete: durable.clone(),
            durable,
            tx: None,
            batch: self.new_batch(),
            cp,
            layout,
            server_pos: BinlogCoord::default(),
            skips,
            history: Vec::new(),
            inflight: None,
            last_flush: std::time::Instant::now(),
        };
        let flush_every = self.config.batch.flush_interval();
        let mut tick = tokio::time::interval(flush_every.min(Duration::from_secs(1)));
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    tracing::info!("shutting down: flushing and committing");
                    break run.flush_all(self).await;
                }
                ev = handle.events.recv() => {
                    let Some(ev) = ev else {
                        break Err(Error::transient("binlog stream task ended"));
                    };
                    if let Err(e) = async { run.on_event(self, ev?).await }.await {
                        break Err(e);
                    }
                    if let Some(stop) = self.mysql_stop_at.as_ref()
                        && run.received_through(stop)
                    {
                        tracing::info!(%stop, "caught up with the binlog position at start-up");
                        break run.flush_all(self).await;
                    }
                }
                _ = tick.tick() => {
                    if let Some(st) = &mut self.status {
                        st.heartbeat();
                    }
                    let due = elapsed(run.batch.started(), flush_every)
                        || (run.batch.is_empty() && run.pending() > run.durable
                            && run.last_flush.elapsed() >= flush_every);
                    if due && let Err(e) = run.flush(self).await {
                        break Err(e);
                    }
                    let encoded = run.inflight.as_ref().is_some_and(|f| f.encode.is_finished());
                    if encoded && let Err(e) = run.settle(self).await {
                        break Err(e);
                    }
                }
            }
        };
        handle.stop().await;
        if result.is_ok() {
            self.set_state(PipelineState::Stopped);
        }
        result
    }

    /// Takes the initial snapshot, or resumes an interrupted one in a new consistent read
    /// (tables done stay; the rest, or the rest of a chunked table above its last durable key,
    /// are copied there, with skip rules for their changes before that read). Returns the
    /// checkpoint positioned at the first snapshot's binlog coordinate; `None` when stopped.
    #[allow(clippy::too_many_arguments)]
    async fn mysql_snapshot(
        &mut self,
        src: &MySource,
        server: &ServerInfo,
        layout: &Layout,
        tables: &[TableId],
        captured: &[TableId],
        cp: Checkpoint,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Option<Checkpoint>> {
        let mut snap = snapshot::open(src, server, tables).await?;
        tracing::info!(coord = %snap.coord, gtid = snap.gtid.as_deref().unwrap_or(""), "consistent snapshot opened");
        let resumable = cp.snapshot.clone().filter(|s| !s.done && s.start.is_some());
        let mut cp = match resumable {
            Some(progress) => {
                tracing::info!(snapshot_id = %progress.snapshot_id, resume_point = %snap.coord, done = progress.tables_done.len(), "resuming the interrupted snapshot in a new consistent read");
                self.plan_resume(cp, progress, tables, snap.coord.key(), layout)
                    .await?
            }
            None => {
                let mut next = cp.next();
                next.snapshot = Some(SnapshotProgress {
                    snapshot_id: snap.coord.key().sortable(),
                    consistent_point: snap.coord.key(),
                    tables_done: vec![],
                    done: false,
                    current: None,
                    skips: vec![],
                    start: Some(SourcePosition::Mysql(MyPosition::before(
                        snap.coord.clone(),
                        snap.gtid.clone(),
                    ))),
                });
                self.store.save(cp.expected(), &next, None).await?;
                next
            }
        };
        let Some(progress) = cp.snapshot.clone() else {
            return Err(Error::fatal("snapshot progress missing"));
        };
        // Just before the snapshot's coordinate: the first transaction after the snapshot may
        // begin exactly there, and every change row must sort after every snapshot row.
        let pos = crate::position::Lsn(progress.consistent_point.0.saturating_sub(1)).sortable();
        let meta = SnapshotMeta {
            snapshot_id: &progress.snapshot_id,
            pos: &pos,
            taken_at: snap.taken_at,
        };
        if self.config.source.snapshot {
            for t in tables.iter().filter(|t| !progress.tables_done.contains(t)) {
                let resume = cp
                    .snapshot
                    .as_ref()
                    .and_then(|s| s.current.clone())
                    .filter(|c| c.table == *t);
                match self
                    .mysql_copy_table(&mut snap.conn, layout, &meta, t, resume, cp, &shutdown)
                    .await?
                {
                    Some(next) => cp = next,
                    None => return Ok(None),
                }
            }
        }
        snap.conn.query_drop("COMMIT").await?;
        let mut next = cp.next();
        next.position = progress.start.clone();
        next.last_commit_ts = Some(snap.taken_at);
        next.tables = Some(captured.to_vec());
        if let Some(s) = &mut next.snapshot {
            s.done = true;
            s.current = None;
        }
        self.store.save(cp.expected(), &next, None).await?;
        tracing::info!(
            tables = tables.len(),
            "snapshot complete; streaming from its binlog position"
        );
        Ok(Some(next))
    }

    #[allow(clippy::too_many_arguments)]
    async fn mysql_copy_table(
        &mut self,
        conn: &mut mysql_async::Conn,
        layout: &Layout,
        meta: &SnapshotMeta<'_>,
        table: &TableId,
        resume: Option<TableProgress>,
        mut cp: Checkpoint,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<Checkpoint>> {
        let mut shutdown = shutdown.clone();
        let (schema, data_types) = snapshot::table_schema(conn, table).await?;
        let source_names = snapshot::source_columns(conn, table).await?;
        let plan = KeyPlan::for_schema(&schema);
        let part_rows = self.config.batch.snapshot_part_rows;
        let mut progress = resume.unwrap_or(TableProgress {
            table: table.clone(),
            parts_done: 0,
            rows_done: 0,
            last_key: None,
        });
        let bar = snapshot::table_progress(conn, table, progress.rows_done, self.progress).await?;
        let heartbeat = self.copy_heartbeat(&bar);
        loop {
            let chunked = matches!(plan, KeyPlan::Integer { .. });
            let range = ChunkRange {
                schema: &schema,
                data_types: &data_types,
                source_names: &source_names,
                plan: &plan,
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
            let output = self.output.clone();
            let copy = snapshot::copy_range(conn, &range, meta, layout, output.as_ref(), &bar);
            let copied = tokio::select! {
                copied = copy => copied?,
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
}

/// State of one binlog streaming session.
struct MyRun {
    /// Committed: every row it covers is durable.
    durable: MyPosition,
    /// `durable.tx.key()`.
    durable_key: crate::position::Lsn,
    /// After the last whole transaction received.
    last_complete: MyPosition,
    tx: Option<Tx>,
    batch: Batch,
    cp: Checkpoint,
    layout: Layout,
    /// How far the server has sent (heartbeats, rotates between transactions).
    server_pos: BinlogCoord,
    skips: Vec<SkipRule>,
    /// Schema-history records of the current batch: key and JSON body.
    history: Vec<(String, Vec<u8>)>,
    inflight: Option<InFlight>,
    last_flush: std::time::Instant,
}

impl MyRun {
    fn received_through(&self, stop: &BinlogCoord) -> bool {
        self.tx.is_none()
            && self
                .last_complete
                .resume
                .clone()
                .max(self.server_pos.clone())
                >= *stop
    }

    /// The position that covers every row received so far.
    fn pending(&self) -> MyPosition {
        match &self.tx {
            Some(tx) => MyPosition {
                tx: tx.begin.clone(),
                rows: tx.next_ord,
                resume: self.last_complete.resume.clone(),
                gtid: self.last_complete.gtid.clone(),
            },
            None => self.last_complete.clone(),
        }
    }

    async fn on_event(&mut self, p: &mut Pipeline, ev: MyEvent) -> Result<()> {
        match ev {
            MyEvent::Begin { tx, commit_ts, xid } => {
                self.tx = Some(Tx {
                    xid,
                    key: tx.key(),
                    pos: tx.key().sortable(),
                    begin: tx,
                    commit_ts,
                    next_ord: 0,
                    ddl: 0,
                });
            }
            MyEvent::Rows {
                schema,
                ops,
                values,
            } => {
                let n = schema.columns.len();
                for (i, op) in ops.into_iter().enumerate() {
                    let row = values.get(i * n..(i + 1) * n).ok_or_else(|| {
                        Error::data(format!("rows event for {} is short", schema.id))
                    })?;
                    self.row(p, &schema, op, row).await?;
                }
            }
            MyEvent::Ddl { database, query } => {
                let Some(tx) = self.tx.as_mut() else {
                    return Err(Error::data("DDL outside a transaction"));
                };
                if !self.durable.covers(&tx.begin, u64::MAX - 1) {
                    let key = self.layout.schema_history_key(&tx.pos, tx.ddl);
                    let body = serde_json::json!({
                        "position": tx.begin,
                        "commit_ts_us": tx.commit_ts,
                        "database": database,
                        "statement": query,
                    });
                    self.history.push((key, body.to_string().into_bytes()));
                    tracing::info!(database, statement = %query.chars().take(200).collect::<String>(), "schema change recorded");
                }
                tx.ddl += 1;
            }
            MyEvent::Commit { resume, gtid } => {
                let Some(tx) = self.tx.take() else {
                    return Err(Error::data("COMMIT without a transaction"));
                };
                self.last_complete = MyPosition {
                    tx: tx.begin,
                    rows: MyPosition::WHOLE,
                    resume,
                    gtid,
                };
            }
            MyEvent::Heartbeat { at } => {
                if at > self.server_pos {
                    self.server_pos = at;
                }
            }
        }
        Ok(())
    }

    async fn row(
        &mut self,
        p: &mut Pipeline,
        schema: &SchemaRef,
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
        // `durable.covers(&tx.begin, ord)` by the precomputed keys (no file-name parsing per row).
        let covered = tx.key < self.durable_key
            || (tx.key == self.durable_key
                && (self.durable.rows == MyPosition::WHOLE || ord < self.durable.rows));
        if covered {
            tx.next_ord += 1; // replayed after a restart: already durable
            return Ok(());
        }
        if !self.skips.is_empty() && op != Op::Truncate {
            let at = tx.key;
            self.skips.retain(|r| r.before > at);
            let key = KeyPlan::for_schema(schema).key_of(values);
            if self.skips.iter().any(|r| r.covers(&schema.id, at, key)) {
                tx.next_ord += 1; // already in a resumed snapshot read after this commit
                return Ok(());
            }
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
            xid: tx.xid,
        };
        self.batch.push(schema, &meta, values)?;
        tx.next_ord += 1;
        let cfg = &p.config.batch;
        if self.batch.rows() >= cfg.max_rows || self.batch.approx_bytes() >= cfg.max_bytes() {
            self.flush(p).await?;
        }
        Ok(())
    }

    /// Starts making everything received durable: the batch is encoded on a blocking thread
    /// while the stream goes on; its commit ([`MyRun::settle`]) happens in order, before the
    /// next batch's. At most two batches are in memory: one encoding, one filling.
    ///
    /// Publishing: the previous batch is committed first, then this batch's envelopes are
    /// published under a write intent (every record accepted before the call returns); the
    /// commit that follows moves the position past them.
    async fn flush(&mut self, p: &mut Pipeline) -> Result<()> {
        let to = self.pending();
        let last = self.inflight.as_ref().map_or(&self.durable, |f| &f.to);
        if to <= *last && self.batch.is_empty() && self.history.is_empty() {
            return Ok(());
        }
        self.settle(p).await?;
        let rows = self.batch.rows() as u64;
        let last_ts = self.batch.last_commit_ts();
        let started = std::time::Instant::now();
        self.cp = p
            .publish(
                &self.cp,
                &mut self.batch,
                &SourcePosition::Mysql(to.clone()),
            )
            .await?;
        let mut batch = std::mem::replace(&mut self.batch, p.new_batch());
        let mut history = std::mem::take(&mut self.history);
        let layout = self.layout.clone();
        let encode = tokio::task::spawn_blocking(move || {
            let mut objects = batch.encode(&layout)?;
            objects.append(&mut history);
            Ok(objects)
        });
        self.inflight = Some(InFlight {
            encode,
            to,
            rows,
            last_ts,
            started,
        });
        Ok(())
    }

    /// Flushes and waits until everything received is committed.
    async fn flush_all(&mut self, p: &mut Pipeline) -> Result<()> {
        self.flush(p).await?;
        self.settle(p).await
    }

    /// Waits for the batch in flight, then runs the commit protocol for it (intent, objects,
    /// position).
    async fn settle(&mut self, p: &mut Pipeline) -> Result<()> {
        let Some(f) = self.inflight.take() else {
            return Ok(());
        };
        let objects = f
            .encode
            .await
            .map_err(|e| Error::fatal(format!("the Parquet encoding task failed: {e}")))??;
        let n_objects = objects.len();
        let bytes: usize = objects.iter().map(|(_, b)| b.len()).sum();
        self.cp = commit_batch(
            p.store.as_ref(),
            p.output.as_ref(),
            &self.cp,
            objects,
            SourcePosition::Mysql(f.to.clone()),
            f.last_ts,
        )
        .await?;
        self.durable_key = f.to.tx.key();
        self.durable = f.to.clone();
        p.report_commit(&super::Committed {
            rows: f.rows,
            objects: n_objects,
            bytes,
            started: f.started,
            since: self.last_flush.elapsed(),
            last_commit_ts: f.last_ts,
            lag_bytes: (self.server_pos.file == f.to.resume.file)
                .then(|| self.server_pos.pos.saturating_sub(f.to.resume.pos)),
            position: &f.to,
        });
        self.last_flush = std::time::Instant::now();
        Ok(())
    }
}

/// Encoded objects: key and bytes.
type Objects = Vec<(String, Vec<u8>)>;

/// A batch being encoded, and the position its commit moves to.
struct InFlight {
    encode: tokio::task::JoinHandle<Result<Objects>>,
    to: MyPosition,
    rows: u64,
    last_ts: Option<i64>,
    started: std::time::Instant,
}
