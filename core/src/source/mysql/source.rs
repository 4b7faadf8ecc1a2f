//! MySQL/MariaDB as a [`Source`]: the row binlog read as a replica, the initial snapshot from a
//! consistent read at a known binlog coordinate (and GTID state).
//!
//! Positions: a transaction is identified by where it begins in the binlog ([`MyPosition`]);
//! a restart re-reads from the last whole durable transaction (by GTID where the position has
//! one, else file:pos) and the engine skips the rows the committed position covers, so a huge
//! transaction flushed in parts is neither lost nor duplicated.
//!
//! DDL statements of captured databases go to the schema history inside the same commit as
//! the rows around them; the new columns take effect with the next TABLE_MAP.

use std::collections::HashSet;
use std::time::Duration;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::change::TableId;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::position::{BinlogCoord, Lsn, MyPosition};
use crate::source::capture::{self, TableSet};
use crate::source::contract::{
    Ordering, ResumeMode, SnapshotRead, SnapshotTables, Source, SourceStatus, TotalSource,
};
use crate::source::mysql::check;
use crate::source::mysql::connect::{self, MySource, ServerInfo};
use crate::source::mysql::snapshot::{self, MyCopier, Snapshot};
use crate::source::mysql::stream::{self, Capture, StartAt, StreamHandle};
use crate::source::{Finding, Level};
use crate::store::{Checkpoint, PositionStore, SnapshotProgress, SourcePosition};
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

/// A MySQL/MariaDB pipeline's source: its SQL session and what it captures.
pub struct MysqlSource {
    config: Config,
    src: MySource,
    sql: Conn,
    server: ServerInfo,
    capture: Capture,
    databases: Vec<String>,
    tables: Vec<TableId>,
    /// The captured set as the checkpoint records it.
    set: Vec<TableId>,
}

impl MysqlSource {
    async fn open_read(&self, tables: &[TableId]) -> Result<Snapshot> {
        let snap = snapshot::open(&self.src, &self.server, tables).await?;
        tracing::info!(coord = %snap.coord, gtid = snap.gtid.as_deref().unwrap_or(""), "consistent snapshot opened");
        Ok(snap)
    }
}

impl Source for MysqlSource {
    type Position = MyPosition;

    const ORDERING: Ordering = Ordering::Total;

    const RESUME: ResumeMode = ResumeMode::Replay;

    fn position(cp: &Checkpoint) -> Result<MyPosition> {
        match &cp.position {
            Some(SourcePosition::Mysql(p)) => Ok(p.clone()),
            _ => Err(Error::config(
                "this pipeline's checkpoint is not from a MySQL/MariaDB source: use another pipeline name, or `tidemark reset`",
            )),
        }
    }

    /// Server settings, grants, retention against the stored position, server_id, and that
    /// the captured tables exist and have a primary key.
    async fn check(
        config: &Config,
        _store: &dyn PositionStore,
        cp: Option<&Checkpoint>,
    ) -> Result<Vec<Finding>> {
        let src = connect::source_settings(&config.source)?;
        let mut conn = connect::sql_connect(&src).await?;
        let server = connect::server_info(&mut conn).await?;
        let stored = match cp.and_then(|c| c.position.as_ref()) {
            Some(SourcePosition::Mysql(p)) => Some(p.resume.clone()),
            _ => None,
        };
        let mut findings =
            check::run(&mut conn, &server, config.server_id(), stored.as_ref()).await?;
        let listed = match snapshot::resolve_tables(
            &mut conn,
            &config.table_names()?,
            &src.database,
        )
        .await
        {
            Ok(t) => t,
            Err(e) => {
                findings.push(Finding::new("table", Level::Error, e.one_line()));
                return Ok(findings);
            }
        };
        let (_, dbs, tables) = capture_of(&listed, &src.database);
        match snapshot::list_tables(&mut conn, &dbs, &tables).await {
            Ok(list) => {
                for t in list {
                    let (schema, _) = snapshot::table_schema(&mut conn, &t).await?;
                    findings.push(if schema.key_columns().next().is_some() {
                        Finding::new("table", Level::Ok, format!("{t}: primary key present"))
                    } else {
                        Finding::new(
                            "table",
                            Level::Warning,
                            format!("{t} has no primary key: updates and deletes cannot be matched to rows downstream; add one (ALTER TABLE {t} ADD PRIMARY KEY (...))"),
                        )
                    });
                }
            }
            Err(e) => findings.push(Finding::new("table", Level::Error, e.one_line())),
        }
        Ok(findings)
    }

    /// Lag by the sizes of the binlog files after the durable position. A binlog records no
    /// reader, so whether a worker runs is the lease's to say.
    async fn status(
        config: &Config,
        _store: &dyn PositionStore,
        cp: Option<&Checkpoint>,
    ) -> Result<SourceStatus> {
        let src = connect::source_settings(&config.source)?;
        let mut conn = connect::sql_connect(&src).await?;
        let server = connect::server_info(&mut conn).await?;
        let written = check::current_position(&mut conn, &server).await?;
        // Without the privilege to list the binary logs, the lag is unknown, not an error.
        let lag_bytes = match cp.and_then(|c| c.position.as_ref()) {
            Some(SourcePosition::Mysql(p)) => check::binary_logs(&mut conn)
                .await
                .ok()
                .and_then(|logs| check::bytes_after(&logs, &p.resume)),
            _ => None,
        };
        Ok(SourceStatus {
            lag_bytes,
            reading: None,
            fields: serde_json::Map::from_iter([(
                "binlog_written".to_string(),
                written.to_string().into(),
            )]),
            lines: vec![("binlog written".to_string(), written.to_string())],
            unreachable: None,
        })
    }
}

impl TotalSource for MysqlSource {
    type Stream = StreamHandle;

    type Snapshot = Snapshot;

    async fn open(config: &Config) -> Result<Self> {
        let src = connect::source_settings(&config.source)?;
        let mut sql = connect::sql_connect(&src).await?;
        let server = connect::server_info(&mut sql).await?;
        check::require_row_binlog(&mut sql).await?;
        Ok(MysqlSource {
            config: config.clone(),
            src,
            sql,
            server,
            capture: Capture::Tables(HashSet::new()),
            databases: Vec::new(),
            tables: Vec::new(),
            set: Vec::new(),
        })
    }

    async fn write_position(&mut self) -> Result<BinlogCoord> {
        check::current_position(&mut self.sql, &self.server).await
    }

    /// The binlog carries every table of a captured database, so a whole database is "listed"
    /// too: switching to it (or to another database) adds tables. Checkpoints from before the
    /// set was recorded take the current one.
    async fn prepare(
        &mut self,
        cp: Checkpoint,
        _store: &dyn PositionStore,
    ) -> Result<(Checkpoint, Vec<TableId>)> {
        let names = self.config.table_names()?;
        let resolved = snapshot::resolve_tables(&mut self.sql, &names, &self.src.database).await?;
        (self.capture, self.databases, self.tables) = capture_of(&resolved, &self.src.database);
        self.set = recorded_set(&self.tables, &self.databases);
        if cp.position.is_some() && self.config.source.snapshot {
            capture::reconcile(
                &self.config.pipeline,
                cp.tables.as_deref(),
                TableSet::Listed(self.set.clone()),
                |t| match t.name.as_str() {
                    capture::WHOLE_DATABASE => format!(
                        "{}.* (every table of the database)",
                        Dialect::Mysql.quote_ident(&t.schema)
                    ),
                    _ => Dialect::Mysql.quote_table(t),
                },
            )?;
        }
        Ok((cp, self.set.clone()))
    }

    async fn captured(&mut self) -> Result<()> {
        Ok(())
    }

    async fn snapshot_tables(&mut self) -> Result<SnapshotTables> {
        let copy = snapshot::list_tables(&mut self.sql, &self.databases, &self.tables).await?;
        Ok(SnapshotTables {
            copy,
            record: self.set.clone(),
        })
    }

    /// When the snapshot recorded where its stream starts (every version that resumes does).
    async fn can_resume(&mut self, progress: &SnapshotProgress) -> Result<bool> {
        Ok(progress.start.is_some())
    }

    async fn begin_snapshot(
        &mut self,
        cp: Checkpoint,
        store: &dyn PositionStore,
        tables: &[TableId],
    ) -> Result<(Checkpoint, Snapshot)> {
        let snap = self.open_read(tables).await?;
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
        store.save(cp.expected(), &next, None).await?;
        Ok((next, snap))
    }

    async fn resume_snapshot(
        &mut self,
        _progress: &SnapshotProgress,
        tables: &[TableId],
    ) -> Result<Snapshot> {
        self.open_read(tables).await
    }

    fn stream_start(progress: &SnapshotProgress) -> Option<SourcePosition> {
        progress.start.clone()
    }

    fn idle_save(config: &Config) -> Duration {
        config.batch.flush_interval()
    }

    /// By GTID wherever the position has one (MariaDB; MySQL with gtid_mode = ON), unless
    /// configured otherwise.
    async fn stream(self, _cp: &Checkpoint, from: &MyPosition) -> Result<StreamHandle> {
        drop(self.sql);
        let use_gtid = self.config.resume_by_gtid().unwrap_or(true);
        tracing::info!(
            by = if use_gtid && from.gtid.is_some() {
                "gtid"
            } else {
                "file:pos"
            },
            "reading the binlog"
        );
        let start = StartAt {
            coord: from.resume.clone(),
            gtid: from.gtid.clone(),
            use_gtid,
        };
        let binlog_conn = connect::sql_connect(&self.src).await?;
        stream::spawn(
            binlog_conn,
            self.config.server_id(),
            start,
            self.capture,
            self.server.mariadb,
        )
        .await
    }
}

impl SnapshotRead for Snapshot {
    type Copier<'a> = MyCopier<'a>;

    /// The coordinate's order key.
    fn point(&self) -> Lsn {
        self.coord.key()
    }

    fn taken_at(&self) -> i64 {
        self.taken_at
    }

    async fn copier<'a>(&'a mut self, table: &TableId) -> Result<MyCopier<'a>> {
        MyCopier::open(&mut self.conn, table).await
    }

    async fn close(mut self) -> Result<()> {
        self.conn.query_drop("COMMIT").await?;
        Ok(())
    }
}
