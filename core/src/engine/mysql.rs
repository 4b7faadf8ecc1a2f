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

use mysql_async::prelude::Queryable;
use tokio::sync::watch;

use crate::change::TableId;
use crate::engine::capture::{self, TableSet};
use crate::engine::stream::StreamSettings;
use crate::engine::{Pipeline, PipelineState};
use crate::error::{Error, Result};
use crate::output::Layout;
use crate::position::MyPosition;
use crate::source::mysql::check;
use crate::source::mysql::connect::{self, MySource, ServerInfo};
use crate::source::mysql::snapshot::{self, MyCopier};
use crate::source::mysql::stream::{self, Capture, StartAt};
use crate::source::snapshot::SnapshotMeta;
use crate::store::{Checkpoint, SnapshotProgress, SourcePosition};
use crate::table_name::Dialect;

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

impl Pipeline {
    pub(super) async fn run_mysql(&mut self, shutdown: watch::Receiver<bool>) -> Result<()> {
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
        cp = self.record_captured(cp, &set).await?;

        if cp.position.is_none() {
            self.set_state(PipelineState::Snapshotting);
            let listed = snapshot::list_tables(&mut sql, &databases, &tables).await?;
            let snapshot =
                self.mysql_snapshot(&src, &server, &layout, &listed, &set, cp, shutdown.clone());
            let Some(done) = snapshot.await? else {
                return self.stopped_in_snapshot();
            };
            cp = done;
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
        let handle = stream::spawn(
            binlog_conn,
            self.config.server_id(),
            start,
            capture,
            server.mariadb,
        )
        .await?;
        self.set_state(PipelineState::Streaming);
        tracing::info!(pipeline = %self.config.pipeline, position = %durable, by = if use_gtid && durable.gtid.is_some() { "gtid" } else { "file:pos" }, "streaming the binlog");

        let settings = StreamSettings {
            stop_at: self.mysql_stop_at.clone(),
            idle_save: self.config.batch.flush_interval(),
        };
        self.stream_changes(handle, cp, durable, layout, shutdown, settings)
            .await
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
            for (t, resume) in Self::tables_to_copy(&cp, tables) {
                let mut copier = MyCopier::open(&mut snap.conn, &t).await?;
                let copied = self
                    .copy_table(&mut copier, &t, &meta, layout, resume, cp, &shutdown)
                    .await?;
                match copied {
                    Some(next) => cp = next,
                    None => return Ok(None),
                }
            }
        }
        snap.conn.query_drop("COMMIT").await?;
        let next = self
            .finish_snapshot(cp, progress.start.clone(), snap.taken_at, captured)
            .await?;
        tracing::info!(
            tables = tables.len(),
            "snapshot complete; streaming from its binlog position"
        );
        Ok(Some(next))
    }
}
