//! The source contracts.
//!
//! [`Source`] is what every source answers, however it is driven: its position type, its
//! ordering and resume mode, and `tidemark check`, `reset` and `status`. PostgreSQL,
//! MySQL/MariaDB, the in-process hook and the Kinesis stream with its S3 baseline implement
//! it; [`with_source`] is the one place a config's source is chosen.
//!
//! [`TotalSource`] is what the engine's one driver (`engine::run`) asks of a totally ordered
//! source (PostgreSQL, MySQL/MariaDB, the hook), in the order it asks. The stream itself is
//! [`ChangeStream`] (events, cancel safety, `ack`); the snapshot's table copy is
//! [`TableCopier`].
//!
//! A run is: [`TotalSource::open`] → [`TotalSource::prepare`] → ([`TotalSource::write_position`]
//! for `--until-caught-up`) → the engine records the captured set → [`TotalSource::captured`]
//! → when the checkpoint has no position, a snapshot ([`TotalSource::begin_snapshot`] or, for
//! an unfinished one the source [`can resume`](TotalSource::can_resume),
//! [`TotalSource::resume_snapshot`]; the engine copies every table of
//! [`TotalSource::snapshot_tables`] from the [`SnapshotRead`] and records the snapshot done at
//! [`TotalSource::stream_start`]) → [`TotalSource::stream`] from the durable position. Any step
//! may fail; the engine then drops the source and a later run starts over at `open`, so no step
//! may leave the checkpoint inconsistent: what a step saves, it saves with the store's
//! conditional write before acting on it.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::change::TableId;
use crate::config::Config;
use crate::error::Result;
use crate::position::Lsn;
use crate::source::Finding;
use crate::source::snapshot::TableCopier;
use crate::source::stream::{ChangeStream, StreamPosition};
use crate::store::{Checkpoint, PositionStore, SnapshotProgress, SourcePosition};

/// The order a source delivers transactions in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// One sequence: every transaction in commit order (a PostgreSQL slot, a binlog).
    Total,
    /// One sequence per shard and none across shards (Kinesis).
    PerShard,
}

/// What a restart can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeMode {
    /// The source re-reads from any position it was not told is durable (slot, binlog, shard
    /// retention): a restart replays, and the engine drops what the durable position covers.
    Replay,
    /// The source cannot re-read (a push-only, in-process capture hook): it must hold its
    /// producer until [`ChangeStream::ack`] says the rows are durable.
    Ephemeral,
}

/// How far a source's server has written.
pub type Progress<S> = <<S as Source>::Position as StreamPosition>::Progress;

/// What every source answers: PostgreSQL logical replication, a MySQL/MariaDB binlog, the
/// in-process hook, a Kinesis stream with its S3 baseline.
pub trait Source: Send + Sized {
    /// Where a restart resumes. `PartialOrd`: a later position covers every row an earlier one
    /// covers; two positions of different sequences (two shards) do not compare, so the
    /// minimum across several consumers is taken per sequence.
    type Position: Clone + PartialOrd + fmt::Display + Send + Sync + 'static;

    /// The driver (`engine::run`) takes `Total` sources; it refuses others at compile time.
    const ORDERING: Ordering;
    /// Whether a restart can re-read from the durable position.
    const RESUME: ResumeMode;

    /// This source's position in `cp` (for a per-shard source, a shard's checkpoint); a
    /// checkpoint of another kind of source is an error that says what to do.
    fn position(cp: &Checkpoint) -> Result<Self::Position>;

    /// `tidemark check`: what a run needs from this source, as findings; each finding that
    /// would make a run fail says what to do. `cp` is the pipeline's stored checkpoint, if
    /// any, in `store`. Changes nothing.
    fn check(
        config: &Config,
        store: &dyn PositionStore,
        cp: Option<&Checkpoint>,
    ) -> impl Future<Output = Result<Vec<Finding>>> + Send;

    /// `tidemark reset`, after the pipeline's checkpoint `cp` is deleted from `store`: deletes
    /// the source's other checkpoints (a stream's shard positions) and, with `release`, drops
    /// what the source keeps for the pipeline (PostgreSQL: its slot and publication). Returns
    /// what it did, a line each. Idempotent. By default the source keeps nothing (a binlog
    /// reader, the hook) and does nothing.
    fn reset(
        config: &Config,
        store: &dyn PositionStore,
        cp: Option<&Checkpoint>,
        release: bool,
    ) -> impl Future<Output = Result<Vec<String>>> + Send {
        let _ = (config, store, cp, release);
        async { Ok(Vec::new()) }
    }

    /// `tidemark status`: how far the server has written beyond what the pipeline made
    /// durable, and whether a reader holds the source now. Reads only. A source that cannot
    /// be reached says so in [`SourceStatus::unreachable`] (or by an error) and status goes on.
    fn status(
        config: &Config,
        store: &dyn PositionStore,
        cp: Option<&Checkpoint>,
    ) -> impl Future<Output = Result<SourceStatus>> + Send;
}

/// A totally ordered source, run by the engine's one driver: one stream in commit order and a
/// consistent snapshot (PostgreSQL, MySQL/MariaDB, the hook).
pub trait TotalSource: Source<Position: StreamPosition> {
    type Stream: ChangeStream<Self::Position>;
    type Snapshot: SnapshotRead;

    /// Connects and checks what every run needs (PostgreSQL: `wal_level = logical`; binlog:
    /// `binlog_format = ROW`). The error says what to change.
    fn open(config: &Config) -> impl Future<Output = Result<Self>> + Send;

    /// The server's write position now: a run `--until-caught-up` ends once everything the
    /// server wrote before it is durable.
    fn write_position(&mut self) -> impl Future<Output = Result<Progress<Self>>> + Send;

    /// Binds `cp` to this source (PostgreSQL: the replication slot it recorded must be the one
    /// found) and resolves the tables to capture, refusing a table added to a captured set
    /// after its snapshot. May save `cp` to `store` without moving its position. Returns the
    /// checkpoint as saved and the captured set in the stream's names.
    fn prepare(
        &mut self,
        cp: Checkpoint,
        store: &dyn PositionStore,
    ) -> impl Future<Output = Result<(Checkpoint, Vec<TableId>)>> + Send;

    /// The captured set is durable in the checkpoint: the source may now change what the
    /// server sends (PostgreSQL: the publication). Idempotent.
    fn captured(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Before a snapshot: the tables it copies and the set it records, once the source has
    /// checked it can take one now.
    fn snapshot_tables(&mut self) -> impl Future<Output = Result<SnapshotTables>> + Send;

    /// Whether the unfinished snapshot `progress` can go on in a new consistent read (its
    /// stream start is still readable), rather than start over.
    fn can_resume(
        &mut self,
        progress: &SnapshotProgress,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Opens the consistent read of a new snapshot and saves, before returning it, the
    /// checkpoint that records it (its [`SnapshotProgress`], no table done): a crash after
    /// this call resumes or restarts that snapshot, never streams past it.
    fn begin_snapshot(
        &mut self,
        cp: Checkpoint,
        store: &dyn PositionStore,
        tables: &[TableId],
    ) -> impl Future<Output = Result<(Checkpoint, Self::Snapshot)>> + Send;

    /// Opens a new consistent read, at a point after `progress`'s, to finish that snapshot;
    /// the engine records skip rules for the changes in between before copying.
    fn resume_snapshot(
        &mut self,
        progress: &SnapshotProgress,
        tables: &[TableId],
    ) -> impl Future<Output = Result<Self::Snapshot>> + Send;

    /// Where the stream starts once `progress`'s snapshot is done.
    fn stream_start(progress: &SnapshotProgress) -> Option<SourcePosition>;

    /// How long a position that moved without rows (idle keepalives, other tables' changes)
    /// waits before it is saved and acknowledged.
    fn idle_save(config: &Config) -> Duration;

    /// Starts the stream at `from`, the durable position of `cp`.
    fn stream(
        self,
        cp: &Checkpoint,
        from: &Self::Position,
    ) -> impl Future<Output = Result<Self::Stream>> + Send;
}

/// What `tidemark status` shows of a source.
#[derive(Debug, Default)]
pub struct SourceStatus {
    /// Bytes the server has written beyond the durable position; `None` when it cannot tell.
    pub lag_bytes: Option<u64>,
    /// A reader holds the source now (PostgreSQL: the slot's active PID); `None` when the
    /// source cannot tell (a binlog has no such record; the lease decides).
    pub reading: Option<bool>,
    /// The source's own fields of the `--json` document (PostgreSQL: the slot's).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The same, as `label  value` lines of the text status.
    pub lines: Vec<(String, String)>,
    /// Why the source could not be asked, when it could not.
    pub unreachable: Option<String>,
}

/// A status field as text: `-` for null, a string without quotes, anything else as JSON.
pub fn show_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Work run against the source a config names ([`with_source`]).
pub trait WithSource {
    type Output;
    fn run<S: Source>(self) -> impl Future<Output = Result<Self::Output>> + Send;
}

/// Work that drives the totally ordered source a config names ([`with_total_source`]).
pub trait WithTotalSource {
    type Output;
    fn run<S: TotalSource>(self) -> impl Future<Output = Result<Self::Output>> + Send;
}

/// Runs `work` with the source type `config` names: `kinesis://` streams, else the database
/// sources of [`with_total_source`]. An error when this build lacks that source's feature.
pub async fn with_source<W: WithSource>(config: &Config, work: W) -> Result<W::Output> {
    #[cfg(feature = "aws")]
    if config.kinesis_stream().is_some() {
        return work
            .run::<crate::source::kinesis::source::KinesisSource>()
            .await;
    }
    with_total_source(config, AnySource(work)).await
}

/// A [`WithSource`] run on a totally ordered source.
struct AnySource<W>(W);

impl<W: WithSource> WithTotalSource for AnySource<W> {
    type Output = W::Output;
    fn run<S: TotalSource>(self) -> impl Future<Output = Result<Self::Output>> + Send {
        self.0.run::<S>()
    }
}

/// Runs `work` with the database source `config` names (MySQL/MariaDB URLs, else
/// PostgreSQL); the one place a database source is chosen. An error for a `kinesis://`
/// stream, which is read per shard, and when this build lacks the source's feature.
pub async fn with_total_source<W: WithTotalSource>(config: &Config, work: W) -> Result<W::Output> {
    if config.kinesis_stream().is_some() {
        drop(work);
        return Err(crate::Error::config(format!(
            "{} is read shard by shard, not as one ordered stream: run the worker's Kinesis consumer or the kinesis-ingest function",
            config.source.url
        )));
    }
    if config.is_mysql() {
        #[cfg(feature = "mysql")]
        return work
            .run::<crate::source::mysql::source::MysqlSource>()
            .await;
    } else {
        #[cfg(feature = "postgres")]
        return work
            .run::<crate::source::postgres::source::PostgresSource>()
            .await;
    }
    #[allow(unreachable_code)]
    {
        drop(work);
        Err(crate::Error::config(format!(
            "this build of tidemark has no support for the source {}: build with the postgres and mysql features",
            config.source.url
        )))
    }
}

/// What a snapshot covers.
pub struct SnapshotTables {
    /// The tables to copy, in copy order.
    pub copy: Vec<TableId>,
    /// The captured set the finished snapshot records.
    pub record: Vec<TableId>,
}

/// A consistent read of the source, open for the snapshot: every table copied from it shows
/// the database at one point, and every change after that point is in the stream.
pub trait SnapshotRead: Send {
    type Copier<'a>: TableCopier
    where
        Self: 'a;

    /// The read's point as an order key: changes at or after it are not in the copy.
    fn point(&self) -> Lsn;
    /// When the read started, UNIX micros.
    fn taken_at(&self) -> i64;
    /// Opens the copy of one table inside the read.
    fn copier<'a>(
        &'a mut self,
        table: &TableId,
    ) -> impl Future<Output = Result<Self::Copier<'a>>> + Send;
    /// Ends the read (its transaction commits; nothing was written).
    fn close(self) -> impl Future<Output = Result<()>> + Send;
}
