//! The PostgreSQL pipeline: publication and slot set-up, the initial snapshot with hand-off, and
//! the streaming loop that batches rows and runs the commit protocol.

use std::time::Duration;

use tokio::sync::watch;

use crate::change::TableId;
use crate::config::{Config, legacy_object_name};
use crate::engine::capture::{self, TableSet};
use crate::engine::stream::StreamSettings;
use crate::engine::{Pipeline, PipelineState};
use crate::error::{Error, Result};
use crate::output::Layout;
use crate::position::{Lsn, PgPosition};
use crate::source::postgres::replication::ReplicationClient;
use crate::source::postgres::snapshot::{self, PgCopier, SnapshotMeta};
use crate::source::postgres::stream::{self, Acked};
use crate::source::postgres::{catalog, check, connect};
use crate::store::{Checkpoint, SlotRecord, SnapshotProgress, SourcePosition};
use crate::table_name::Dialect;

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

/// How often the stream task reports the durable LSN and asks for a keepalive (idle acks, lag).
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// How often, at most, an idle acknowledgement (WAL that held nothing for this pipeline) is
/// saved to the checkpoint and then released to the server.
const IDLE_ACK_INTERVAL: Duration = Duration::from_secs(10);

/// What the snapshot steps share: the SQL session inside the snapshot, key layout, stop signal.
struct SnapshotSession<'a> {
    sql: &'a tokio_postgres::Client,
    layout: &'a Layout,
    shutdown: watch::Receiver<bool>,
    /// The stream's publication: the snapshot copies the columns it publishes.
    publication: String,
}

impl Pipeline {
    pub(super) async fn run_postgres(&mut self, shutdown: watch::Receiver<bool>) -> Result<()> {
        self.set_state(PipelineState::Connecting);
        let layout = Layout::new(&self.config.output.prefix, &self.config.pipeline);
        let mut cp = self.load_checkpoint().await?;

        let pg = connect::source_settings(&self.config.source)?;
        let sql = connect::sql_connect(&pg, "tidemark").await?;
        check::require_logical_wal(&sql).await?;
        if self.until_caught_up && self.stop_at.is_none() {
            self.stop_at = Some(current_wal_insert_lsn(&sql).await?);
        }
        let (slot, publication) = slot_names(&self.config, Some(&cp));
        cp = self.bind_slot(&sql, cp, &slot, &publication).await?;
        let (publish, captured) = self.capture_set(&sql, &cp, &publication).await?;
        // The captured set is saved before the publication changes: a table removed from it
        // and added back later is then refused, even after a crash in between.
        cp = self.record_captured(cp, &captured).await?;
        let listed = !self.config.source.tables.is_empty();
        catalog::ensure_publication(&sql, &publication, &publish, listed).await?;
        let mut repl = ReplicationClient::connect(&pg, "tidemark").await?;

        if cp.position.is_none() {
            self.set_state(PipelineState::Snapshotting);
            let session = SnapshotSession {
                sql: &sql,
                layout: &layout,
                shutdown: shutdown.clone(),
                publication: publication.clone(),
            };
            let snapshot = self.initial_snapshot(&session, &mut repl, cp, &slot, &publication);
            let Some(done) = snapshot.await? else {
                return self.stopped_in_snapshot();
            };
            cp = done;
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
        let only = cp.tables.clone().unwrap_or(captured).into_iter().collect();
        let handle = stream::spawn(stream, sql, acked, STATUS_INTERVAL, Some(only));
        self.set_state(PipelineState::Streaming);
        tracing::info!(pipeline = %self.config.pipeline, position = %durable, slot, "streaming");
        let settings = StreamSettings {
            stop_at: self.stop_at,
            idle_save: IDLE_ACK_INTERVAL,
        };
        self.stream_changes(handle, cp, durable, layout, shutdown, settings)
            .await
    }

    /// Checks that the slot is the one this pipeline recorded (issue 11 item 9) and records it
    /// in a checkpoint from before slots were recorded. A slot of another name, or one that
    /// confirmed a position this pipeline never made durable (dropped and created again by
    /// someone else, or advanced by hand), is refused: streaming from it would skip changes.
    async fn bind_slot(
        &self,
        sql: &tokio_postgres::Client,
        cp: Checkpoint,
        slot: &str,
        publication: &str,
    ) -> Result<Checkpoint> {
        let pipeline = &self.config.pipeline;
        if let Some(rec) = &cp.slot
            && rec.name != slot
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
        let info = catalog::slot_info(sql, slot).await?;
        let confirmed = info
            .as_ref()
            .and_then(|i| i.confirmed_flush.as_deref())
            .and_then(|l| l.parse::<Lsn>().ok());
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
        next.slot = Some(SlotRecord {
            name: slot.to_string(),
            publication: publication.to_string(),
            consistent_point: Lsn::ZERO,
        });
        self.store.save(cp.expected(), &next, None).await?;
        Ok(next)
    }

    /// The tables to capture (issue 11 items 3-5): the configured names resolved as SQL reads
    /// them, or without a list every table with a replica identity (the others are named with
    /// their fix and left out, so the application's UPDATE/DELETE on them keep working); then
    /// reconciled with the tables the snapshot covered. Returns what the publication lists and
    /// the captured tables as the stream names them (a listed partitioned table's partitions,
    /// unless the publication publishes via the root).
    async fn capture_set(
        &self,
        sql: &tokio_postgres::Client,
        cp: &Checkpoint,
        publication: &str,
    ) -> Result<(Vec<TableId>, Vec<TableId>)> {
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

    /// Takes the initial snapshot, or resumes an interrupted one, and returns the checkpoint
    /// positioned at the main slot's consistent point; `None` when `shutdown` stopped it first
    /// (what is durable stays, and the next run resumes from it).
    ///
    /// Fresh: the slot is created exporting its snapshot, and every table is copied inside it.
    /// Resumed (the slot survives, the exported snapshot does not): a temporary slot exports a
    /// new snapshot at a later point L1; the remaining tables, and the rest of a keyset-chunked
    /// table above its last durable key, are copied there, and a [`SkipRule`] tells the stream
    /// (which still starts at the main slot's point) to drop their changes committed before L1.
    async fn initial_snapshot(
        &mut self,
        session: &SnapshotSession<'_>,
        repl: &mut ReplicationClient,
        cp: Checkpoint,
        slot: &str,
        publication: &str,
    ) -> Result<Option<Checkpoint>> {
        let (sql, layout) = (session.sql, session.layout);
        let tables = catalog::publication_tables(sql, publication).await?;
        let slot_now = catalog::slot_info(sql, slot).await?;
        if let Some(pid) = slot_now.as_ref().and_then(|s| s.active_pid) {
            return Err(Error::transient(format!(
                "replication slot {slot} is still in use by PID {pid}"
            )));
        }
        let resumable = cp
            .snapshot
            .clone()
            .filter(|s| !s.done && slot_now.is_some());
        let (mut cp, point, snapshot_name, temp_conn) = match resumable {
            Some(progress) => {
                let pg = connect::source_settings(&self.config.source)?;
                let mut temp = ReplicationClient::connect(&pg, "tidemark-snapshot").await?;
                let created = create_temporary_slot(&mut temp, slot).await?;
                tracing::info!(
                    snapshot_id = %progress.snapshot_id,
                    resume_point = %created.0,
                    done = progress.tables_done.len(),
                    "resuming the interrupted snapshot in a new snapshot"
                );
                let cp = self
                    .plan_resume(cp, progress, &tables, created.0, layout)
                    .await?;
                (cp, created.0, created.1, Some(temp))
            }
            None => {
                if let Some(old) = cp.snapshot.clone().filter(|s| !s.done) {
                    tracing::warn!(snapshot_id = %old.snapshot_id, "replication slot is gone: restarting the snapshot");
                    for t in &tables {
                        self.delete_parts(layout, t, &old.snapshot_id, 0).await?;
                    }
                }
                // Recorded before the slot exists (its point unknown): after a crash between
                // creating it and saving its point, the next run knows the slot is this
                // pipeline's and starts over here.
                let mut pending = cp.next();
                pending.slot = Some(SlotRecord {
                    name: slot.to_string(),
                    publication: publication.to_string(),
                    consistent_point: Lsn::ZERO,
                });
                pending.snapshot = None;
                self.store.save(cp.expected(), &pending, None).await?;
                let cp = pending;
                if slot_now.is_some() {
                    repl.drop_slot(slot).await?;
                }
                let created = repl.create_slot_exporting(slot).await?;
                let point = created.consistent_point;
                tracing::info!(slot, consistent_point = %point, "created replication slot");
                let mut next = cp.next();
                next.slot = Some(SlotRecord {
                    name: slot.to_string(),
                    publication: publication.to_string(),
                    consistent_point: point,
                });
                next.snapshot = Some(SnapshotProgress {
                    snapshot_id: point.sortable(),
                    consistent_point: point,
                    tables_done: vec![],
                    done: false,
                    current: None,
                    skips: vec![],
                    start: None,
                });
                self.store.save(cp.expected(), &next, None).await?;
                (next, point, created.snapshot_name, None)
            }
        };
        // The exported snapshot lives until its replication connection runs its next command.
        snapshot::import(sql, &snapshot_name).await?;
        drop(temp_conn);
        let taken_at: i64 = sql
            .query_one("select (extract(epoch from now()) * 1000000)::int8", &[])
            .await?
            .get(0);
        // Below every change's commit LSN (a commit may begin exactly at `point`), so
        // `(_pos, _ord)` orders each snapshot row before every change of its table.
        let pos = Lsn(point.0.saturating_sub(1)).sortable();
        let Some(progress) = cp.snapshot.clone() else {
            return Err(Error::fatal("snapshot progress missing"));
        };
        let snapshot_id = progress.snapshot_id.clone();
        let meta = SnapshotMeta {
            snapshot_id: &snapshot_id,
            pos: &pos,
            taken_at,
        };

        if self.config.source.snapshot {
            for (t, resume) in Self::tables_to_copy(&cp, &tables) {
                let mut copier = PgCopier::open(sql, &t, &session.publication).await?;
                let copied = self
                    .copy_table(
                        &mut copier,
                        &t,
                        &meta,
                        layout,
                        resume,
                        cp,
                        &session.shutdown,
                    )
                    .await?;
                match copied {
                    Some(next) => cp = next,
                    None => return Ok(None),
                }
            }
        }
        sql.batch_execute("commit").await?;

        let start = PgPosition::before(progress.consistent_point);
        let next = self
            .finish_snapshot(cp, Some(SourcePosition::Postgres(start)), taken_at, &tables)
            .await?;
        tracing::info!(
            tables = tables.len(),
            consistent_point = %progress.consistent_point,
            "snapshot complete; streaming from its consistent point"
        );
        Ok(Some(next))
    }
}

/// The server's WAL insert position: `--until-caught-up` stops once everything up to it is
/// durable. The insert (not write) position, because with `synchronous_commit = off` a
/// transaction that has returned COMMIT may not be written yet.
async fn current_wal_insert_lsn(sql: &tokio_postgres::Client) -> Result<Lsn> {
    let lsn: String = sql
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    lsn.parse()
}

/// `CREATE_REPLICATION_SLOT <slot>_resume TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')`:
/// a new exported snapshot and its exact WAL point; the slot vanishes with its connection.
async fn create_temporary_slot(conn: &mut ReplicationClient, slot: &str) -> Result<(Lsn, String)> {
    let name = format!(
        "{}_resume_{:x}",
        &slot[..slot.len().min(40)],
        fastrand::u32(..)
    );
    let rows = conn
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT \"{name}\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
        ))
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::fatal("CREATE_REPLICATION_SLOT returned no row"))?;
    let point: Lsn = row.get(1).cloned().flatten().unwrap_or_default().parse()?;
    let snapshot = row.get(2).cloned().flatten().filter(|s| !s.is_empty());
    let snapshot =
        snapshot.ok_or_else(|| Error::fatal("CREATE_REPLICATION_SLOT returned no snapshot"))?;
    Ok((point, snapshot))
}
