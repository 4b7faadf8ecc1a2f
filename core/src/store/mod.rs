//! Position stores: where a pipeline's checkpoint lives.
//!
//! A [`Checkpoint`] is one record per pipeline: the durable source position, an in-progress
//! snapshot, and the write intent of the batch being written. Every save is a compare-and-swap
//! on [`Checkpoint::version`], so a stale writer can never overwrite a newer checkpoint, and a
//! position never moves backwards.
//!
//! Beside the checkpoint each pipeline has a [`Lease`]: one worker writes, others wait. Taking
//! over an expired lease increments its epoch, and a save presenting a lease succeeds only while
//! the stored lease has that owner and epoch, so a worker that lost its lease (paused past its
//! TTL, partitioned) can never commit again.

#[cfg(feature = "aws")]
pub mod dynamodb;
pub mod fenced;
pub mod local;

pub use fenced::FencedStore;

use serde::{Deserialize, Serialize};

use crate::BoxFuture;
use crate::change::TableId;
use crate::error::{Error, Result};
use crate::position::{Lsn, MyPosition, PgPosition, ShardPosition};

pub use local::LocalFileStore;

/// A source position, tagged by source kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum SourcePosition {
    Postgres(PgPosition),
    Mysql(MyPosition),
    /// One Kinesis shard (its checkpoint is named by [`shard_checkpoint`]).
    Kinesis(ShardPosition),
    /// The S3 baseline of a Kinesis pipeline (checkpoint [`baseline_checkpoint`]).
    Baseline(Box<crate::position::BaselinePosition>),
    /// An in-process capture hook (`source::hook`).
    Hook(crate::position::HookPosition),
}

/// The checkpoint name of one Kinesis shard of `pipeline`: `<pipeline>#shard#<shard id>`.
/// Pipeline names never contain `#`, so shard checkpoints never collide with pipelines.
pub fn shard_checkpoint(pipeline: &str, shard: &str) -> String {
    format!("{pipeline}#shard#{shard}")
}

/// The checkpoint name of the S3 baseline of `pipeline`: `<pipeline>#baseline`.
pub fn baseline_checkpoint(pipeline: &str) -> String {
    format!("{pipeline}#baseline")
}

/// Checks a checkpoint name: a pipeline name (letters, digits, `.`, `_`, `-`, not starting with
/// `.`), optionally followed by `#shard#<shard id>` of the same alphabet, `#baseline`, or
/// `#seat#<n>` (a Kinesis consumer's presence, see `engine::shard_consumer`).
pub fn check_name(name: &str) -> Result<()> {
    let word = |w: &str| {
        !w.is_empty()
            && !w.starts_with('.')
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    let ok = match name.split('#').collect::<Vec<_>>().as_slice() {
        [p] => word(p),
        [p, "shard", id] => word(p) && word(id),
        [p, "baseline"] => word(p),
        [p, "seat", n] => word(p) && word(n),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "invalid pipeline name {name:?}: use letters, digits, '.', '_' and '-'"
        )))
    }
}

impl SourcePosition {
    /// `Some(ordering)` when both positions come from the same kind of source.
    pub fn partial_cmp_same_source(&self, other: &SourcePosition) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (SourcePosition::Postgres(a), SourcePosition::Postgres(b)) => Some(a.cmp(b)),
            (SourcePosition::Mysql(a), SourcePosition::Mysql(b)) => Some(a.cmp(b)),
            (SourcePosition::Kinesis(a), SourcePosition::Kinesis(b)) => a.partial_cmp(b),
            (SourcePosition::Baseline(a), SourcePosition::Baseline(b)) => a.partial_cmp(b),
            (SourcePosition::Hook(a), SourcePosition::Hook(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// The further of `self` and `other` (`other` when they cannot be compared).
    pub fn later<'a>(&'a self, other: &'a SourcePosition) -> &'a SourcePosition {
        match self.partial_cmp_same_source(other) {
            Some(std::cmp::Ordering::Greater) => self,
            _ => other,
        }
    }
}

impl std::fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourcePosition::Postgres(p) => write!(f, "postgres {p}"),
            SourcePosition::Mysql(p) => write!(f, "mysql {p}"),
            SourcePosition::Kinesis(p) => write!(f, "kinesis {p}"),
            SourcePosition::Baseline(p) => write!(f, "baseline {p}"),
            SourcePosition::Hook(p) => write!(f, "hook {p}"),
        }
    }
}

/// Objects about to be written for the batch `(from, to]`. Recorded before the first object is
/// written and cleared by the commit that moves the position to `to`; one left behind names
/// exactly the objects a crash may have left uncommitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteIntent {
    pub from: Option<SourcePosition>,
    pub to: SourcePosition,
    pub keys: Vec<String>,
    /// A publish: when its first record may have been sent (UNIX ms). Kept by later intents
    /// until a commit passes `to`, so recovery knows where to look on the stream; `keys` are
    /// then only the objects written beside the records (schema history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
}

impl WriteIntent {
    /// Whether records may have been published to a stream under this intent.
    pub fn is_publish(&self) -> bool {
        self.started_ms.is_some()
    }
}

/// A consistent initial snapshot in progress (or finished, with `done`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// Names the snapshot's objects: `snapshot_id=<id>`.
    pub snapshot_id: String,
    /// The main slot's consistent point: the stream starts here. (MySQL: the snapshot's binlog
    /// coordinate as [`crate::position::BinlogCoord::key`].)
    pub consistent_point: Lsn,
    /// Where the stream starts once the snapshot is done, when the source needs more than
    /// `consistent_point` to say it (MySQL: file name and GTID state).
    #[serde(default)]
    pub start: Option<SourcePosition>,
    /// Tables whose copy is complete and durable.
    pub tables_done: Vec<TableId>,
    pub done: bool,
    /// The table being copied, as far as it is durable.
    #[serde(default)]
    pub current: Option<TableProgress>,
    /// Ranges copied in a later snapshot than `consistent_point` (after a restart): the stream
    /// drops their changes committed before that snapshot, which the copy already holds.
    #[serde(default)]
    pub skips: Vec<SkipRule>,
}

/// Durable progress of one table's copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableProgress {
    pub table: TableId,
    /// Parts `0..parts_done` are written.
    pub parts_done: u32,
    pub rows_done: u64,
    /// Largest integer key copied (keyset-chunked tables only).
    pub last_key: Option<i64>,
}

/// Changes to `table` committed before `before` (and, with `key_above`, only rows whose integer
/// key is above it) are already in the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkipRule {
    pub table: TableId,
    pub before: Lsn,
    pub key_above: Option<i64>,
}

impl SkipRule {
    /// Whether a change to `table` committed at `commit_lsn` with integer key `key` is covered.
    /// A row without a usable key is covered only by a whole-table rule.
    pub fn covers(&self, table: &TableId, commit_lsn: Lsn, key: Option<i64>) -> bool {
        self.table == *table
            && commit_lsn < self.before
            && match (self.key_above, key) {
                (None, _) => true,
                (Some(k), Some(v)) => v > k,
                (Some(_), None) => false,
            }
    }
}

/// The replication slot a PostgreSQL pipeline created, and the publication it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub name: String,
    pub publication: String,
    /// The consistent point the slot was created at: it never confirms anything before it.
    pub consistent_point: Lsn,
}

/// One pipeline's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub pipeline: String,
    /// Bumped by every save; the compare-and-swap token.
    pub version: u64,
    /// Everything at or before this position is durable in the output.
    pub position: Option<SourcePosition>,
    #[serde(default)]
    pub snapshot: Option<SnapshotProgress>,
    #[serde(default)]
    pub intent: Option<WriteIntent>,
    /// Commit time (UNIX micros) of the last row covered by `position`: the basis of lag in seconds.
    #[serde(default)]
    pub last_commit_ts: Option<i64>,
    /// The tables the snapshot covered and the stream captures (MySQL: `db.*` for a whole
    /// database). A table outside it was never snapshotted: a run refuses to add it.
    /// `None` in checkpoints written before this was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<TableId>>,
    /// PostgreSQL: the replication slot this pipeline streams from. A run refuses any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<SlotRecord>,
    /// Wall-clock time of this save, RFC 3339.
    pub updated_at: String,
}

impl Checkpoint {
    pub fn new(pipeline: &str) -> Self {
        Checkpoint {
            pipeline: pipeline.to_string(),
            version: 0,
            position: None,
            snapshot: None,
            intent: None,
            last_commit_ts: None,
            tables: None,
            slot: None,
            updated_at: now_rfc3339(),
        }
    }

    /// The next version of this checkpoint, to be saved with `expected = Some(self.version)`
    /// (or `None` when `self` was never saved, i.e. `version == 0`).
    pub fn next(&self) -> Checkpoint {
        let mut n = self.clone();
        n.version = self.version + 1;
        n.updated_at = now_rfc3339();
        n
    }

    /// The `expected` argument of [`PositionStore::save`] for the successor of `self`.
    pub fn expected(&self) -> Option<u64> {
        (self.version > 0).then_some(self.version)
    }
}

/// The exclusive right of `owner` to write `pipeline` until `expires_at_ms` (UNIX ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub pipeline: String,
    pub owner: String,
    /// Fencing token: incremented whenever another owner takes the lease over.
    pub epoch: u64,
    pub expires_at_ms: i64,
}

impl Lease {
    /// Whether the lease is still held at `now_ms`, keeping `margin_ms` in reserve.
    pub fn is_live(&self, now_ms: i64, margin_ms: i64) -> bool {
        now_ms.saturating_add(margin_ms) < self.expires_at_ms
    }
}

pub use crate::clock::now_ms;

/// The lease decision every store makes inside its conditional write: `owner` may take the
/// lease `stored` (none, expired, or already its own). Returns the new lease.
pub fn grant_lease(
    stored: Option<&Lease>,
    pipeline: &str,
    owner: &str,
    ttl_ms: i64,
    now: i64,
) -> Result<Lease> {
    let epoch = match stored {
        None => 1,
        Some(l) if l.owner == owner => l.epoch,
        Some(l) if l.expires_at_ms <= now => l.epoch + 1,
        Some(l) => {
            return Err(Error::conflict(format!(
                "pipeline {pipeline:?} is being run by {} (lease for {} ms more)",
                l.owner,
                l.expires_at_ms - now
            )));
        }
    };
    Ok(Lease {
        pipeline: pipeline.to_string(),
        owner: owner.to_string(),
        epoch,
        expires_at_ms: now + ttl_ms,
    })
}

/// Checks that a writer presenting `presented` still holds the stored lease.
pub fn check_lease(stored: Option<&Lease>, presented: Option<&Lease>) -> Result<()> {
    let Some(p) = presented else { return Ok(()) };
    match stored {
        Some(s) if s.owner == p.owner && s.epoch == p.epoch => Ok(()),
        Some(s) => Err(Error::conflict(format!(
            "lost the lease on pipeline {:?}: now held by {} (epoch {}); this worker stops writing",
            p.pipeline, s.owner, s.epoch
        ))),
        None => Err(Error::conflict(format!(
            "the lease on pipeline {:?} is gone; this worker stops writing",
            p.pipeline
        ))),
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Checks that `next` may replace `prev`: versions chain, the pipeline matches, and the position
/// does not move backwards. Every store calls it inside its conditional write.
pub fn check_transition(
    prev: Option<&Checkpoint>,
    expected: Option<u64>,
    next: &Checkpoint,
) -> Result<()> {
    let stored = prev.map(|p| p.version);
    if stored != expected {
        return Err(Error::conflict(format!(
            "checkpoint of pipeline {:?} changed underneath this worker (expected version {:?}, stored {:?}): \
             another worker is running this pipeline",
            next.pipeline, expected, stored
        )));
    }
    if next.version != expected.unwrap_or(0) + 1 {
        return Err(Error::fatal(format!(
            "checkpoint version must advance by one (got {})",
            next.version
        )));
    }
    if let (Some(p), Some(old), Some(new)) = (
        prev,
        prev.and_then(|p| p.position.as_ref()),
        next.position.as_ref(),
    ) {
        match old.partial_cmp_same_source(new) {
            Some(std::cmp::Ordering::Greater) => {
                return Err(Error::fatal(format!(
                    "refusing to move pipeline {:?} back from {old} to {new}",
                    p.pipeline
                )));
            }
            None => {
                return Err(Error::config(format!(
                    "pipeline {:?} has a {old} position but this run uses another source kind: use a new pipeline name",
                    p.pipeline
                )));
            }
            _ => {}
        }
    }
    if prev.is_some_and(|p| p.position.is_some()) && next.position.is_none() {
        return Err(Error::fatal("refusing to clear a committed position"));
    }
    Ok(())
}

/// Durable, conditional storage of checkpoints and leases.
///
/// Contract: `save` stores `next` only if the stored version equals `expected` (`None`: nothing
/// stored yet), [`check_transition`] allows it, and — when `lease` is given — the stored lease
/// has the same owner and epoch ([`check_lease`]); otherwise it fails with
/// [`crate::ErrorKind::Conflict`] and stores nothing. A save that returned `Ok` survives a crash.
/// Lease operations are conditional in the same way ([`grant_lease`]).
pub trait PositionStore: Send + Sync {
    fn load<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<Checkpoint>>>;
    fn save<'a>(
        &'a self,
        expected: Option<u64>,
        next: &'a Checkpoint,
        lease: Option<&'a Lease>,
    ) -> BoxFuture<'a, Result<()>>;
    /// Removes a pipeline's checkpoint and lease (`tidemark reset`).
    fn delete<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Takes the lease for `owner` for `ttl_ms`: when none is held, it expired, or `owner`
    /// holds it. A takeover from another owner increments the epoch.
    fn acquire_lease<'a>(
        &'a self,
        pipeline: &'a str,
        owner: &'a str,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<Lease>>;
    /// Extends `lease` by `ttl_ms` from now, if its owner and epoch still hold it.
    fn renew_lease<'a>(&'a self, lease: &'a Lease, ttl_ms: i64) -> BoxFuture<'a, Result<Lease>>;
    /// Ends `lease` now if it is still held, so a waiting worker can take over at once.
    fn release_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>>;
    /// The current lease, if any (for `status`).
    fn lease<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<Lease>>>;
    fn url(&self) -> String;
}

/// Opens a store from its URL: `file:///dir`, a plain directory, `dynamodb://table`, or empty
/// for the default state directory ([`local::default_state_dir`]). `create_table`: create a
/// missing DynamoDB table instead of failing.
pub async fn open(
    url: Option<&str>,
    create_table: bool,
) -> Result<std::sync::Arc<dyn PositionStore>> {
    match url {
        None | Some("") => Ok(std::sync::Arc::new(LocalFileStore::new(
            local::default_state_dir()?,
        )?)),
        Some(u) if u.starts_with("file://") => Ok(std::sync::Arc::new(LocalFileStore::new(
            &u["file://".len()..],
        )?)),
        #[cfg(feature = "aws")]
        Some(u) if u.starts_with("dynamodb://") => dynamodb::open(u, create_table).await,
        Some(u) if u.contains("://") => Err(Error::config(format!(
            "unsupported position store {u:?}: use file:///dir or dynamodb://table"
        ))),
        Some(u) => {
            let _ = create_table;
            Ok(std::sync::Arc::new(LocalFileStore::new(u)?))
        }
    }
}

/// The conformance suite every [`PositionStore`] implementation must pass.
#[cfg(any(test, feature = "conformance"))]
#[allow(clippy::unwrap_used)]
pub mod conformance {
    use super::*;
    use crate::ErrorKind;

    fn pos(lsn: u64) -> Option<SourcePosition> {
        Some(SourcePosition::Postgres(PgPosition::complete(
            Lsn(lsn),
            Lsn(lsn + 8),
        )))
    }

    pub async fn run(store: &dyn PositionStore) {
        let p = format!("conformance-{:x}", fastrand::u64(..));
        assert_eq!(store.load(&p).await.unwrap(), None);

        let first = Checkpoint::new(&p).next();
        store.save(None, &first, None).await.unwrap();
        assert_eq!(store.load(&p).await.unwrap().as_ref(), Some(&first));
        let again = store.save(None, &first, None).await.unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Conflict, "create is conditional");

        let mut intent = first.next();
        intent.intent = Some(WriteIntent {
            from: None,
            to: pos(100).unwrap(),
            keys: vec!["a/b.parquet".into()],
            started_ms: None,
        });
        store.save(first.expected(), &intent, None).await.unwrap();
        assert_eq!(store.load(&p).await.unwrap().unwrap().intent, intent.intent);

        let mut committed = intent.next();
        committed.position = pos(100);
        committed.intent = None;
        committed.last_commit_ts = Some(1_700_000_000_000_000);
        store
            .save(intent.expected(), &committed, None)
            .await
            .unwrap();

        // A stale writer (still holding `intent`) cannot overwrite.
        let mut stale = intent.next();
        stale.position = pos(200);
        assert_eq!(
            store
                .save(intent.expected(), &stale, None)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Conflict
        );
        assert_eq!(store.load(&p).await.unwrap().as_ref(), Some(&committed));

        // Positions never move backwards.
        let mut back = committed.next();
        back.position = pos(50);
        assert!(store.save(committed.expected(), &back, None).await.is_err());
        let mut fwd = committed.next();
        fwd.position = pos(300);
        store.save(committed.expected(), &fwd, None).await.unwrap();
        assert_eq!(store.load(&p).await.unwrap().unwrap().position, pos(300));

        // Pipelines are independent.
        assert_eq!(store.load(&format!("{p}-other")).await.unwrap(), None);

        store.delete(&p).await.unwrap();
        assert_eq!(store.load(&p).await.unwrap(), None);
        store.delete(&p).await.unwrap();

        leases(store).await;
        large_checkpoints(store).await;
    }

    /// A checkpoint as wide as 3,000 tables (one transaction's intent naming an object per
    /// table, the captured list, a snapshot's finished tables and skip rules), and one of
    /// incompressible keys several times DynamoDB's 400 KB item limit, round-trip exactly;
    /// the compare-and-swap still refuses a stale writer; and a small save after a large one
    /// reads back small.
    pub async fn large_checkpoints(store: &dyn PositionStore) {
        let p = format!("wide-{:x}", fastrand::u64(..));
        let tables: Vec<TableId> = (0..3000)
            .map(|i| TableId::new("sales_archive", format!("orders_by_region_{i:05}")))
            .collect();
        let mut wide = Checkpoint::new(&p).next();
        wide.position = pos(100);
        wide.tables = Some(tables.clone());
        wide.snapshot = Some(SnapshotProgress {
            snapshot_id: "20261207T000000Z".into(),
            consistent_point: Lsn(100),
            start: None,
            tables_done: tables.clone(),
            done: true,
            current: None,
            skips: tables
                .iter()
                .map(|t| SkipRule {
                    table: t.clone(),
                    before: Lsn(200),
                    key_above: Some(1_000_000),
                })
                .collect(),
        });
        wide.intent = Some(WriteIntent {
            from: pos(100),
            to: pos(300).unwrap(),
            keys: tables
                .iter()
                .map(|t| {
                    format!(
                        "{p}/{t}/changes/dt=2026-12-07/00000000012C0000-0000000000000000-{:016x}.parquet",
                        fastrand::u64(..)
                    )
                })
                .collect(),
            started_ms: None,
        });
        store.save(None, &wide, None).await.unwrap();
        assert_eq!(store.load(&p).await.unwrap().as_ref(), Some(&wide));

        // Incompressible: 1.6 MB of random key names.
        let mut huge = wide.next();
        if let Some(i) = huge.intent.as_mut() {
            i.keys = (0..12_000)
                .map(|_| {
                    (0..8)
                        .map(|_| format!("{:016x}", fastrand::u64(..)))
                        .collect::<String>()
                })
                .collect();
        }
        store.save(wide.expected(), &huge, None).await.unwrap();
        assert_eq!(store.load(&p).await.unwrap().as_ref(), Some(&huge));

        // A stale writer of a large checkpoint changes nothing.
        let mut stale = wide.next();
        stale.position = pos(400);
        let e = store.save(wide.expected(), &stale, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert_eq!(store.load(&p).await.unwrap().as_ref(), Some(&huge));

        let mut small = huge.next();
        small.position = pos(300);
        small.intent = None;
        small.snapshot = None;
        small.tables = None;
        store.save(huge.expected(), &small, None).await.unwrap();
        assert_eq!(store.load(&p).await.unwrap().as_ref(), Some(&small));
        store.delete(&p).await.unwrap();
        assert_eq!(store.load(&p).await.unwrap(), None);
    }

    /// Leases: one owner at a time, takeover only after expiry with a new epoch, fenced saves.
    pub async fn leases(store: &dyn PositionStore) {
        let p = format!("lease-{:x}", fastrand::u64(..));
        let a = store.acquire_lease(&p, "worker-a", 60_000).await.unwrap();
        assert_eq!((a.owner.as_str(), a.epoch), ("worker-a", 1));
        assert_eq!(store.lease(&p).await.unwrap().as_ref(), Some(&a));
        let e = store
            .acquire_lease(&p, "worker-b", 60_000)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "a live lease is exclusive");
        assert!(e.to_string().contains("worker-a"), "{e}");
        let again = store.acquire_lease(&p, "worker-a", 60_000).await.unwrap();
        assert_eq!(
            again.epoch, 1,
            "re-acquiring one's own lease keeps the epoch"
        );

        // Fenced saves: the holder may write, also before the first checkpoint exists.
        let first = Checkpoint::new(&p).next();
        store.save(None, &first, Some(&again)).await.unwrap();
        let renewed = store.renew_lease(&again, 60_000).await.unwrap();
        assert!(renewed.expires_at_ms >= again.expires_at_ms);
        assert_eq!(
            store.load(&p).await.unwrap().as_ref(),
            Some(&first),
            "renewal keeps the checkpoint"
        );

        // A short lease expires; another worker takes over with a new epoch.
        let short = store.acquire_lease(&p, "worker-a", 300).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(450)).await;
        let b = store.acquire_lease(&p, "worker-b", 60_000).await.unwrap();
        assert_eq!((b.owner.as_str(), b.epoch), ("worker-b", 2));

        // The old holder is fenced out of saves and renewals.
        let mut next = first.next();
        next.position = pos(10);
        let e = store
            .save(first.expected(), &next, Some(&short))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(
            store.renew_lease(&short, 60_000).await.unwrap_err().kind(),
            ErrorKind::Conflict
        );
        assert_eq!(store.load(&p).await.unwrap().as_ref(), Some(&first));
        store.save(first.expected(), &next, Some(&b)).await.unwrap();

        // Releasing lets the next worker in at once.
        store.release_lease(&b).await.unwrap();
        let c = store.acquire_lease(&p, "worker-c", 60_000).await.unwrap();
        assert_eq!(c.epoch, 3);
        store.release_lease(&b).await.unwrap(); // no longer ours: a no-op
        assert_eq!(
            store.lease(&p).await.unwrap().map(|l| l.owner),
            Some("worker-c".to_string())
        );
        store.delete(&p).await.unwrap();
        assert_eq!(store.lease(&p).await.unwrap(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_rules_cover_ranges_before_their_point() {
        let t = TableId::new("public", "t");
        let whole = SkipRule {
            table: t.clone(),
            before: Lsn(100),
            key_above: None,
        };
        let range = SkipRule {
            table: t.clone(),
            before: Lsn(100),
            key_above: Some(50),
        };
        assert!(whole.covers(&t, Lsn(99), None));
        assert!(
            !whole.covers(&t, Lsn(100), Some(1)),
            "the copy holds only commits before its point"
        );
        assert!(!whole.covers(&TableId::new("public", "u"), Lsn(1), None));
        assert!(range.covers(&t, Lsn(99), Some(51)));
        assert!(
            !range.covers(&t, Lsn(99), Some(50)),
            "keys up to the last copied key came from the older copy"
        );
        assert!(!range.covers(&t, Lsn(99), None));
    }
}
