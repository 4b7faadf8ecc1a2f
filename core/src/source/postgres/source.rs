//! PostgreSQL as a [`Source`]: a logical replication slot and publication per pipeline, the
//! initial snapshot from the slot's exported snapshot, the stream from the slot.
//!
//! Snapshot hand-off: a new snapshot creates the slot exporting its snapshot, so the copy holds
//! exactly the transactions committed before the slot's consistent point and the stream the
//! ones after it. A resumed snapshot (the slot survives, its exported snapshot does not) copies
//! the rest in the snapshot of a temporary slot created at a later point; the engine's skip
//! rules drop the stream's changes to those tables before that point.

use std::collections::HashSet;
use std::time::Duration;

use tokio_postgres::Client;

use crate::change::TableId;
use crate::config::{Config, legacy_object_name};
use crate::error::{Error, ErrorKind, Result};
use crate::position::{Lsn, PgPosition};
use crate::source::capture::{self, TableSet};
use crate::source::contract::{
    Ordering, ResumeMode, SnapshotRead, SnapshotTables, Source, SourceStatus, TotalSource,
    show_value,
};
use crate::source::postgres::connect::{self, PgSource};
use crate::source::postgres::replication::ReplicationClient;
use crate::source::postgres::snapshot::{self, PgCopier};
use crate::source::postgres::stream::{self, Acked, StreamHandle};
use crate::source::postgres::{catalog, check};
use crate::source::{Finding, Level};
use crate::store::{Checkpoint, PositionStore, SlotRecord, SnapshotProgress, SourcePosition};
use crate::table_name::Dialect;

/// How often the stream task reports the durable LSN and asks for a keepalive (idle acks, lag).
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// How often, at most, an idle acknowledgement (WAL that held nothing for this pipeline) is
/// saved to the checkpoint and then released to the server.
const IDLE_ACK_INTERVAL: Duration = Duration::from_secs(10);

/// The slot and publication of a PostgreSQL pipeline: the configured names, else those its
/// checkpoint recorded, else (a checkpoint from before names were recorded) the old default
/// names, else the defaults. `status` and `reset` use it too.
pub fn slot_names(cfg: &Config, cp: Option<&Checkpoint>) -> (String, String) {
    let rec = cp.and_then(|c| c.slot.as_ref());
    let legacy =
        cp.is_some_and(|c| c.slot.is_none() && (c.position.is_some() || c.snapshot.is_some()));
    let pick = |explicit: &Option<String>, recorded: Option<&String>, default: String| {
        explicit
            .clone()
            .or_else(|| recorded.cloned())
            .unwrap_or_else(|| {
                if legacy {
                    legacy_object_name(&cfg.pipeline)
                } else {
                    default
                }
            })
    };
    (
        pick(&cfg.source.slot, rec.map(|r| &r.name), cfg.slot()),
        pick(
            &cfg.source.publication,
            rec.map(|r| &r.publication),
            cfg.publication(),
        ),
    )
}

/// A PostgreSQL pipeline's source: its SQL session, and from [`Source::captured`] on its
/// replication connection.
pub struct PostgresSource {
    config: Config,
    pg: PgSource,
    sql: Client,
    repl: Option<ReplicationClient>,
    slot: String,
    publication: String,
    /// What the publication lists (the configured tables, or the captured set).
    publish: Vec<TableId>,
    /// The captured tables as the stream names them.
    captured: Vec<TableId>,
    /// The slot as `prepare` found it (`None`: there was none); the snapshot steps after it
    /// read this instead of asking again.
    slot_info: Option<catalog::SlotInfo>,
    /// `sql` sat idle while a snapshot copied in its own session (a server's
    /// `idle_session_timeout` or a NAT may have closed it): the stream gets a new one.
    sql_idle: bool,
}

fn not_captured() -> Error {
    Error::fatal("the replication connection is opened by `captured`")
}

impl PostgresSource {
    fn repl(&mut self) -> Result<&mut ReplicationClient> {
        self.repl.as_mut().ok_or_else(not_captured)
    }

    /// Checks that the slot is the one this pipeline recorded (issue 11 item 9) and records it
    /// in a checkpoint from before slots were recorded. A slot of another name, or one that
    /// confirmed a position this pipeline never made durable (dropped and created again by
    /// someone else, or advanced by hand), is refused: streaming from it would skip changes.
    async fn bind_slot(&mut self, cp: Checkpoint, store: &dyn PositionStore) -> Result<Checkpoint> {
        let (pipeline, slot) = (&self.config.pipeline, &self.slot);
        if let Some(rec) = &cp.slot
            && rec.name != *slot
        {
            return Err(Error::config(format!(
                "pipeline {pipeline} streams from replication slot {} (recorded in its checkpoint), but source.slot names {slot}: \
                 set source.slot back to {}, or `tidemark reset --drop-slot` to start over with a new snapshot",
                rec.name, rec.name
            )));
        }
        let durable_ack = match &cp.position {
            Some(SourcePosition::Postgres(p)) => Some(p.ack_lsn),
            _ => None,
        };
        let info = catalog::slot_info(&self.sql, slot).await?;
        let confirmed = info
            .as_ref()
            .and_then(|i| i.confirmed_flush.as_deref())
            .and_then(|l| l.parse::<Lsn>().ok());
        let found = info.is_some();
        self.slot_info = info;
        // A slot whose creation point was never saved (a crash right after creating it) is
        // this pipeline's; with no position yet, the snapshot starts over on it.
        let pending = cp
            .slot
            .as_ref()
            .is_some_and(|r| r.consistent_point == Lsn::ZERO)
            && cp.position.is_none();
        if let (Some(rec), Some(confirmed), false) = (&cp.slot, confirmed, pending) {
            // This pipeline only ever confirms what its checkpoint holds (idle acknowledgements
            // are saved first), and the slot confirms nothing before its creation point.
            let limit = durable_ack.unwrap_or(rec.consistent_point);
            if confirmed > limit || confirmed < rec.consistent_point {
                return Err(Error::config(format!(
                    "replication slot {slot} is not the one pipeline {pipeline} created (at {}): it has confirmed {confirmed}, \
                     but this pipeline made only {limit} durable. Another pipeline or a person dropped and re-created it, or \
                     advanced it, and the changes in between are not in this output. Give each pipeline its own slot \
                     (source.slot), then `tidemark reset --pipeline {pipeline} --yes` to take a new snapshot",
                    rec.consistent_point
                )));
            }
        }
        if cp.position.is_some() && !found {
            return Err(Error::config(format!(
                "replication slot {slot} is gone but pipeline {pipeline} has a committed position: changes since then are lost. \
                 Run `tidemark reset` to take a new snapshot"
            )));
        }
        if cp.slot.is_some() || cp.position.is_none() {
            return Ok(cp);
        }
        // A checkpoint from before slots were recorded: adopt the slot it streams from (its
        // idle acknowledgements were not saved then, so take its confirmed point as durable).
        let Some(confirmed) = confirmed else {
            return Ok(cp);
        };
        let mut next = cp.next();
        if let Some(SourcePosition::Postgres(p)) = &mut next.position {
            p.ack_lsn = p.ack_lsn.max(confirmed);
        }
        next.slot = Some(self.slot_record(Lsn::ZERO));
        store.save(cp.expected(), &next, None).await?;
        Ok(next)
    }

    fn slot_record(&self, consistent_point: Lsn) -> SlotRecord {
        SlotRecord {
            name: self.slot.clone(),
            publication: self.publication.clone(),
            consistent_point,
        }
    }

    /// The tables to capture (issue 11 items 3-5): the configured names resolved as SQL reads
    /// them, or without a list every table with a replica identity (the others are named with
    /// their fix and left out, so the application's UPDATE/DELETE on them keep working); then
    /// reconciled with the tables the snapshot covered. Returns what the publication lists and
    /// the captured tables as the stream names them (a listed partitioned table's partitions,
    /// unless the publication publishes via the root).
    async fn capture_set(&mut self, cp: &Checkpoint) -> Result<(Vec<TableId>, Vec<TableId>)> {
        let (sql, publication) = (&self.sql, &self.publication);
        let names = self.config.table_names()?;
        let mut publish = None;
        let now = if names.is_empty() {
            let (ok, without) = catalog::capturable_tables(sql).await?;
            for (t, fix) in &without {
                tracing::warn!(
                    table = %Dialect::Postgres.quote_table(t),
                    "table not captured: it has no replica identity, and publishing it would make PostgreSQL refuse \
                     the application's UPDATE and DELETE on it; {fix}"
                );
            }
            TableSet::Discovered(ok)
        } else {
            let resolved = catalog::resolve_tables(sql, &names).await?;
            let leaves = catalog::streamed_tables(sql, &resolved, publication).await?;
            publish = Some(resolved);
            TableSet::Listed(leaves)
        };
        let recorded = match (&cp.tables, &cp.position) {
            _ if !self.config.source.snapshot => None,
            (Some(t), Some(_)) => Some(t.clone()),
            // Recorded by earlier versions only as the publication's tables.
            (None, Some(_)) => Some(catalog::publication_tables(sql, publication).await?),
            _ => None,
        };
        let tables = capture::reconcile(&self.config.pipeline, recorded.as_deref(), now, |t| {
            Dialect::Postgres.quote_table(t)
        })?;
        if tables.is_empty() {
            return Err(Error::config(
                "no table to capture: list tables in source.tables (--table), or give the tables a primary key or \
                 REPLICA IDENTITY FULL (`tidemark check` lists them)",
            ));
        }
        Ok((publish.unwrap_or_else(|| tables.clone()), tables))
    }

    /// A new SQL session inside the exported snapshot `name` (imported before the replication
    /// connection that exported it runs its next command).
    async fn snapshot_session(&mut self, point: Lsn, name: &str) -> Result<PgSnapshot> {
        let sql = connect::sql_connect(&self.pg, "tidemark-snapshot").await?;
        self.sql_idle = true;
        snapshot::import(&sql, name).await?;
        let taken_at: i64 = sql
            .query_one("select (extract(epoch from now()) * 1000000)::int8", &[])
            .await?
            .get(0);
        Ok(PgSnapshot {
            sql,
            publication: self.publication.clone(),
            point,
            taken_at,
        })
    }
}

impl Source for PostgresSource {
    type Position = PgPosition;

    const ORDERING: Ordering = Ordering::Total;

    const RESUME: ResumeMode = ResumeMode::Replay;

    fn position(cp: &Checkpoint) -> Result<PgPosition> {
        match &cp.position {
            Some(SourcePosition::Postgres(p)) => Ok(*p),
            _ => Err(Error::config(
                "this pipeline's checkpoint is not from a PostgreSQL source",
            )),
        }
    }

    /// Server settings, grants, the slot and publication, and each listed table resolved on
    /// its own (one that does not exist is a finding).
    async fn check(
        config: &Config,
        _store: &dyn PositionStore,
        cp: Option<&Checkpoint>,
    ) -> Result<Vec<Finding>> {
        let pg = connect::source_settings(&config.source)?;
        let client = connect::sql_connect(&pg, "tidemark-check").await?;
        let (slot, publication) = slot_names(config, cp);
        let names = config.table_names()?;
        let mut tables = Vec::new();
        let mut missing = Vec::new();
        for n in &names {
            match catalog::resolve_tables(&client, std::slice::from_ref(n)).await {
                Ok(t) => tables.extend(t),
                Err(e) if e.kind() == ErrorKind::Config => {
                    missing.push(Finding::new("table", Level::Error, e.one_line()))
                }
                Err(e) => return Err(e),
            }
        }
        let listed = (!names.is_empty()).then_some(tables.as_slice());
        let mut findings = check::run(&client, &slot, &publication, listed).await?;
        findings.extend(missing);
        Ok(findings)
    }

    /// Drops the slot the checkpoint recorded (else the configured or default name) and the
    /// publication; without `release`, notes a slot the next run will no longer use.
    async fn reset(
        config: &Config,
        _store: &dyn PositionStore,
        cp: Option<&Checkpoint>,
        release: bool,
    ) -> Result<Vec<String>> {
        let (slot, publication) = slot_names(config, cp);
        if !release {
            let (next, _) = slot_names(config, None);
            return Ok(if slot != next {
                vec![format!(
                    "note: replication slot {slot} is kept, but the next run creates {next} (the default name changed); \
                     drop {slot} or it holds WAL: SELECT pg_drop_replication_slot('{slot}')"
                )]
            } else {
                vec![]
            });
        }
        let pg = connect::source_settings(&config.source)?;
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
        Ok(vec![format!(
            "replication slot {slot} {}; publication {publication} dropped",
            if dropped > 0 {
                "dropped"
            } else {
                "was not there"
            }
        )])
    }

    /// Lag from the slot's confirmed point; the slot's fields (null when the server cannot
    /// be reached or the slot is missing) are always in the document.
    async fn status(
        config: &Config,
        _store: &dyn PositionStore,
        cp: Option<&Checkpoint>,
    ) -> Result<SourceStatus> {
        let (slot, _) = slot_names(config, cp);
        let pg = connect::source_settings(&config.source)?;
        let (info, unreachable) = match connect::sql_connect(&pg, "tidemark-status").await {
            Ok(client) => match catalog::slot_info(&client, &slot).await {
                Ok(info) => (info, None),
                Err(e) => (None, Some(e.one_line())),
            },
            Err(e) => (None, Some(e.one_line())),
        };
        let of = |f: fn(&catalog::SlotInfo) -> serde_json::Value| {
            info.as_ref().map(f).unwrap_or(serde_json::Value::Null)
        };
        let retained = of(|i| i.wal_retained_bytes.into());
        let wal_status = of(|i| i.wal_status.clone().into());
        let line = format!(
            "{slot} (WAL retained {} bytes, {})",
            show_value(&retained),
            show_value(&wal_status)
        );
        let fields = serde_json::Map::from_iter([
            ("slot".to_string(), slot.into()),
            ("slot_active_pid".to_string(), of(|i| i.active_pid.into())),
            ("slot_wal_retained_bytes".to_string(), retained),
            ("slot_wal_status".to_string(), wal_status),
        ]);
        Ok(SourceStatus {
            // A slot that never confirmed anything lags by nothing it was sent.
            lag_bytes: info
                .as_ref()
                .map(|i| i.ack_lag_bytes.unwrap_or(0).max(0) as u64),
            reading: info.as_ref().map(|i| i.active_pid.is_some()),
            fields,
            lines: vec![("slot".to_string(), line)],
            unreachable,
        })
    }
}

impl TotalSource for PostgresSource {
    type Stream = StreamHandle;

    type Snapshot = PgSnapshot;

    async fn open(config: &Config) -> Result<Self> {
        let pg = connect::source_settings(&config.source)?;
        let sql = connect::sql_connect(&pg, "tidemark").await?;
        check::require_logical_wal(&sql).await?;
        Ok(PostgresSource {
            config: config.clone(),
            pg,
            sql,
            repl: None,
            slot: String::new(),
            publication: String::new(),
            publish: Vec::new(),
            captured: Vec::new(),
            slot_info: None,
            sql_idle: false,
        })
    }

    /// The WAL insert (not write) position: with `synchronous_commit = off` a transaction that
    /// has returned COMMIT may not be written yet.
    async fn write_position(&mut self) -> Result<Lsn> {
        let lsn: String = self
            .sql
            .query_one("select pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
        lsn.parse()
    }

    async fn prepare(
        &mut self,
        cp: Checkpoint,
        store: &dyn PositionStore,
    ) -> Result<(Checkpoint, Vec<TableId>)> {
        (self.slot, self.publication) = slot_names(&self.config, Some(&cp));
        let cp = self.bind_slot(cp, store).await?;
        (self.publish, self.captured) = self.capture_set(&cp).await?;
        Ok((cp, self.captured.clone()))
    }

    /// The publication changes only once the captured set is saved: a table removed from it
    /// and added back later is then refused, even after a crash in between.
    async fn captured(&mut self) -> Result<()> {
        let listed = !self.config.source.tables.is_empty();
        catalog::ensure_publication(&self.sql, &self.publication, &self.publish, listed).await?;
        if self.repl.is_none() {
            self.repl = Some(ReplicationClient::connect(&self.pg, "tidemark").await?);
        }
        Ok(())
    }

    async fn snapshot_tables(&mut self) -> Result<SnapshotTables> {
        let slot = &self.slot;
        if let Some(pid) = self.slot_info.as_ref().and_then(|s| s.active_pid) {
            return Err(Error::transient(format!(
                "replication slot {slot} is still in use by PID {pid}"
            )));
        }
        let tables = catalog::publication_tables(&self.sql, &self.publication).await?;
        Ok(SnapshotTables {
            copy: tables.clone(),
            record: tables,
        })
    }

    /// While the slot lives (as `prepare` found it): it still holds the changes since the
    /// snapshot's consistent point.
    async fn can_resume(&mut self, _progress: &SnapshotProgress) -> Result<bool> {
        Ok(self.slot_info.is_some())
    }

    async fn begin_snapshot(
        &mut self,
        cp: Checkpoint,
        store: &dyn PositionStore,
        _tables: &[TableId],
    ) -> Result<(Checkpoint, PgSnapshot)> {
        // Recorded before the slot exists (its point unknown): after a crash between creating
        // it and saving its point, the next run knows the slot is this pipeline's and starts
        // over here.
        let mut pending = cp.next();
        pending.slot = Some(self.slot_record(Lsn::ZERO));
        pending.snapshot = None;
        store.save(cp.expected(), &pending, None).await?;
        let cp = pending;
        let slot = self.slot.clone();
        // Read again before dropping: someone may have dropped it since `prepare`.
        let exists = catalog::slot_info(&self.sql, &slot).await?.is_some();
        let repl = self.repl()?;
        if exists {
            repl.drop_slot(&slot).await?;
        }
        let created = repl.create_slot_exporting(&slot).await?;
        let point = created.consistent_point;
        tracing::info!(slot, consistent_point = %point, "created replication slot");
        let mut next = cp.next();
        next.slot = Some(self.slot_record(point));
        next.snapshot = Some(SnapshotProgress {
            snapshot_id: point.sortable(),
            consistent_point: point,
            tables_done: vec![],
            done: false,
            current: None,
            skips: vec![],
            start: None,
        });
        store.save(cp.expected(), &next, None).await?;
        let read = self.snapshot_session(point, &created.snapshot_name).await?;
        Ok((next, read))
    }

    /// `CREATE_REPLICATION_SLOT <slot>_resume_<random> TEMPORARY LOGICAL pgoutput (SNAPSHOT
    /// 'export')` on a connection of its own: a new exported snapshot and its exact WAL point;
    /// the slot vanishes with the connection, once the snapshot is imported.
    async fn resume_snapshot(
        &mut self,
        _progress: &SnapshotProgress,
        _tables: &[TableId],
    ) -> Result<PgSnapshot> {
        let mut temp = ReplicationClient::connect(&self.pg, "tidemark-snapshot").await?;
        let name = format!(
            "{}_resume_{:x}",
            &self.slot[..self.slot.len().min(40)],
            fastrand::u32(..)
        );
        let rows = temp
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT \"{name}\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::fatal("CREATE_REPLICATION_SLOT returned no row"))?;
        let point: Lsn = row.get(1).cloned().flatten().unwrap_or_default().parse()?;
        let exported = row.get(2).cloned().flatten().filter(|s| !s.is_empty());
        let exported =
            exported.ok_or_else(|| Error::fatal("CREATE_REPLICATION_SLOT returned no snapshot"))?;
        let read = self.snapshot_session(point, &exported).await?;
        drop(temp);
        Ok(read)
    }

    fn stream_start(progress: &SnapshotProgress) -> Option<SourcePosition> {
        Some(SourcePosition::Postgres(PgPosition::before(
            progress.consistent_point,
        )))
    }

    fn idle_save(_config: &Config) -> Duration {
        IDLE_ACK_INTERVAL
    }

    async fn stream(mut self, cp: &Checkpoint, from: &PgPosition) -> Result<StreamHandle> {
        let repl = self.repl.take().ok_or_else(not_captured)?;
        let stream = repl
            .start_replication(&self.slot, from.ack_lsn, &self.publication, 1)
            .await?;
        let acked = Acked::new(from.ack_lsn);
        let only: HashSet<TableId> = cp
            .tables
            .clone()
            .unwrap_or(self.captured)
            .into_iter()
            .collect();
        let sql = match self.sql_idle {
            true => connect::sql_connect(&self.pg, "tidemark").await?,
            false => self.sql,
        };
        Ok(stream::spawn(
            stream,
            sql,
            acked,
            STATUS_INTERVAL,
            Some(only),
        ))
    }
}

/// The snapshot's own SQL session, inside an exported snapshot.
pub struct PgSnapshot {
    sql: Client,
    /// The stream's publication: the snapshot copies the columns it publishes.
    publication: String,
    point: Lsn,
    taken_at: i64,
}

impl SnapshotRead for PgSnapshot {
    type Copier<'a> = PgCopier<'a>;

    fn point(&self) -> Lsn {
        self.point
    }

    fn taken_at(&self) -> i64 {
        self.taken_at
    }

    async fn copier<'a>(&'a mut self, table: &TableId) -> Result<PgCopier<'a>> {
        PgCopier::open(&self.sql, table, &self.publication).await
    }

    async fn close(self) -> Result<()> {
        self.sql.batch_execute("commit").await?;
        Ok(())
    }
}
