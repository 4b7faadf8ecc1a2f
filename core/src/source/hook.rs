//! A push-only source: an in-process capture hook. The application hands tidemark whole
//! transactions ([`Hook::commit`]); the engine writes them like any stream. The hook cannot
//! re-read ([`ResumeMode::Ephemeral`]), so it holds every transaction until the engine's
//! [`ChangeStream::ack`] says it is durable, and a run that failed (the supervisor starts
//! another) is handed the held transactions again from its durable position. At most
//! `capacity` transactions wait: [`Hook::commit`] waits for room, so memory stays bounded.
//!
//! A hook is found by pipeline name ([`Hook::register`]); it lives as long as the process.
//! There is no snapshot: the pipeline starts with the first transaction handed over.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::change::{Op, SchemaRef, TableId, Value};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::position::{HookPosition, Lsn};
use crate::source::contract::{
    Ordering, ResumeMode, SnapshotRead, SnapshotTables, Source, SourceStatus, TotalSource,
};
use crate::source::snapshot::{Chunk, Copied, CopyTarget, KeyPlan, TableCopier};
use crate::source::stream::{ChangeStream, SourceEvent, StreamPosition};
use crate::source::{Finding, Level};
use crate::store::{Checkpoint, PositionStore, SnapshotProgress, SourcePosition};

impl StreamPosition for HookPosition {
    type Tx = u64;
    type Commit = ();
    /// The last transaction handed over.
    type Progress = u64;

    fn tx_key(tx: &u64) -> Lsn {
        Lsn(*tx)
    }
    fn key(&self) -> Lsn {
        Lsn(self.tx)
    }
    fn rows(&self) -> u64 {
        self.rows
    }
    fn partial(&self, tx: &u64, rows: u64) -> Self {
        HookPosition {
            tx: *tx,
            rows,
            whole: self.whole,
        }
    }
    fn complete(tx: u64, _commit: ()) -> Result<Self> {
        Ok(HookPosition::after(tx))
    }
    fn received(&self) -> u64 {
        self.whole
    }
    fn lag_bytes(&self, _server: &u64) -> Option<u64> {
        None
    }
    fn into_source(self) -> SourcePosition {
        SourcePosition::Hook(self)
    }
}

/// One row of a transaction handed to a hook.
pub struct HookRow {
    pub schema: SchemaRef,
    pub op: Op,
    pub values: Vec<Value>,
}

struct HeldTx {
    tx: u64,
    commit_ts: i64,
    rows: Arc<Vec<HookRow>>,
}

#[derive(Default)]
struct Held {
    /// The last transaction handed over.
    last: u64,
    /// The last transaction acknowledged durable whole.
    durable: u64,
    /// Transactions after `durable`, in order.
    txs: VecDeque<HeldTx>,
    /// Numbered after the pipeline's durable position (the first run of this process
    /// renumbers what was handed over before it).
    based: bool,
}

struct Shared {
    capacity: usize,
    held: Mutex<Held>,
    /// A transaction was handed over (the stream waits on it).
    handed: Notify,
    /// Transactions became durable (producers wait on it).
    released: Notify,
}

/// The producer's side of a push-only source. Cheap to clone.
#[derive(Clone)]
pub struct Hook(Arc<Shared>);

fn registry() -> MutexGuard<'static, HashMap<String, Hook>> {
    static HOOKS: OnceLock<Mutex<HashMap<String, Hook>>> = OnceLock::new();
    HOOKS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hook {
    /// The hook of `pipeline`, created with room for `capacity` transactions not yet durable
    /// when it has none yet.
    pub fn register(pipeline: &str, capacity: usize) -> Hook {
        registry()
            .entry(pipeline.to_string())
            .or_insert_with(|| {
                Hook(Arc::new(Shared {
                    capacity: capacity.max(1),
                    held: Mutex::default(),
                    handed: Notify::new(),
                    released: Notify::new(),
                }))
            })
            .clone()
    }

    fn find(pipeline: &str) -> Option<Hook> {
        registry().get(pipeline).cloned()
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.0.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands over one transaction, committed at `commit_ts` (UNIX micros), waiting while
    /// `capacity` transactions are not yet durable.
    pub async fn commit(&self, commit_ts: i64, rows: Vec<HookRow>) {
        let rows = Arc::new(rows);
        loop {
            let room = self.0.released.notified();
            {
                let mut held = self.held();
                if held.txs.len() < self.0.capacity {
                    held.last += 1;
                    let tx = held.last;
                    held.txs.push_back(HeldTx {
                        tx,
                        commit_ts,
                        rows,
                    });
                    drop(held);
                    self.0.handed.notify_waiters();
                    return;
                }
            }
            room.await;
        }
    }

    /// Waits until no transaction handed over is held: all are durable.
    pub async fn flushed(&self) {
        loop {
            let released = self.0.released.notified();
            if self.held().txs.is_empty() {
                return;
            }
            released.await;
        }
    }

    /// Numbers the held transactions after `whole`, the pipeline's last durable one, the first
    /// time a run of this process starts; later runs find them numbered.
    fn base(&self, whole: u64) {
        let mut held = self.held();
        if held.based {
            return;
        }
        held.based = true;
        let n = held.txs.len() as u64;
        for (i, t) in held.txs.iter_mut().enumerate() {
            t.tx = whole + 1 + i as u64;
        }
        held.durable = whole;
        held.last = whole + n;
    }

    fn release(&self, through: u64) {
        let mut held = self.held();
        if through <= held.durable {
            return;
        }
        held.durable = through;
        while held.txs.front().is_some_and(|t| t.tx <= through) {
            held.txs.pop_front();
        }
        drop(held);
        self.0.released.notify_waiters();
    }
}

/// A pipeline fed by its [`Hook`].
pub struct HookSource {
    hook: Hook,
}

fn no_hook(pipeline: &str) -> Error {
    Error::config(format!(
        "no capture hook is registered for pipeline {pipeline}: call Hook::register(\"{pipeline}\", capacity) \
         in this process before running it"
    ))
}

impl Source for HookSource {
    type Position = HookPosition;

    const ORDERING: Ordering = Ordering::Total;

    const RESUME: ResumeMode = ResumeMode::Ephemeral;

    fn position(cp: &Checkpoint) -> Result<HookPosition> {
        match &cp.position {
            Some(SourcePosition::Hook(p)) => Ok(*p),
            None => Ok(HookPosition::default()),
            Some(other) => Err(Error::config(format!(
                "pipeline {} holds the position of another source ({other}): `tidemark reset` it first",
                cp.pipeline
            ))),
        }
    }

    async fn check(
        config: &Config,
        _store: &dyn PositionStore,
        _cp: Option<&Checkpoint>,
    ) -> Result<Vec<Finding>> {
        Ok(vec![match Hook::find(&config.pipeline) {
            Some(_) => Finding::new("hook", Level::Ok, "a capture hook is registered"),
            None => Finding::new("hook", Level::Error, no_hook(&config.pipeline).one_line()),
        }])
    }

    async fn status(
        config: &Config,
        _store: &dyn PositionStore,
        _cp: Option<&Checkpoint>,
    ) -> Result<SourceStatus> {
        let hook = Hook::find(&config.pipeline).ok_or_else(|| no_hook(&config.pipeline))?;
        let held = hook.held().txs.len();
        Ok(SourceStatus {
            fields: serde_json::Map::from_iter([("hook_held_transactions".into(), held.into())]),
            lines: vec![(
                "hook".into(),
                format!("{held} transactions not yet durable"),
            )],
            ..SourceStatus::default()
        })
    }
}

impl TotalSource for HookSource {
    type Stream = HookStream;

    type Snapshot = NoSnapshot;

    async fn open(config: &Config) -> Result<Self> {
        let hook = Hook::find(&config.pipeline).ok_or_else(|| no_hook(&config.pipeline))?;
        Ok(HookSource { hook })
    }

    async fn write_position(&mut self) -> Result<u64> {
        Ok(self.hook.held().last)
    }

    async fn prepare(
        &mut self,
        cp: Checkpoint,
        _store: &dyn PositionStore,
    ) -> Result<(Checkpoint, Vec<TableId>)> {
        self.hook.base(Self::position(&cp)?.whole);
        Ok((cp, Vec::new()))
    }

    async fn captured(&mut self) -> Result<()> {
        Ok(())
    }

    async fn snapshot_tables(&mut self) -> Result<SnapshotTables> {
        Ok(SnapshotTables {
            copy: Vec::new(),
            record: Vec::new(),
        })
    }

    async fn can_resume(&mut self, _progress: &SnapshotProgress) -> Result<bool> {
        Ok(false)
    }

    /// Nothing to copy: records where the stream starts, before the first transaction the
    /// hook still holds.
    async fn begin_snapshot(
        &mut self,
        cp: Checkpoint,
        store: &dyn PositionStore,
        _tables: &[TableId],
    ) -> Result<(Checkpoint, NoSnapshot)> {
        let start = self.hook.held().durable;
        let mut next = cp.next();
        next.snapshot = Some(SnapshotProgress {
            snapshot_id: Lsn(start).sortable(),
            consistent_point: Lsn(start + 1),
            start: Some(SourcePosition::Hook(HookPosition::after(start))),
            tables_done: Vec::new(),
            done: false,
            current: None,
            skips: Vec::new(),
        });
        store.save(cp.expected(), &next, None).await?;
        Ok((next, NoSnapshot))
    }

    async fn resume_snapshot(
        &mut self,
        _progress: &SnapshotProgress,
        _tables: &[TableId],
    ) -> Result<NoSnapshot> {
        Err(Error::fatal("a capture hook has no snapshot to resume"))
    }

    fn stream_start(progress: &SnapshotProgress) -> Option<SourcePosition> {
        progress.start.clone()
    }

    fn idle_save(_config: &Config) -> Duration {
        Duration::from_secs(1)
    }

    /// Hands over again every held transaction after `from`'s last whole one; the engine
    /// drops the rows `from` already covers.
    async fn stream(self, _cp: &Checkpoint, from: &HookPosition) -> Result<HookStream> {
        self.hook.release(from.whole);
        Ok(HookStream {
            hook: self.hook,
            next: from.whole + 1,
            pending: VecDeque::new(),
        })
    }
}

/// The engine's side of a hook: its held transactions as events, from a position on.
pub struct HookStream {
    hook: Hook,
    /// The next transaction to hand to the engine.
    next: u64,
    /// The events of the transaction being handed over.
    pending: VecDeque<SourceEvent<HookPosition>>,
}

impl HookStream {
    /// The events of transaction `self.next`, when the hook holds it.
    fn take_next(&mut self) -> bool {
        let held = self.hook.held();
        // Held in commit order, numbered without gaps.
        let found = held.txs.binary_search_by_key(&self.next, |t| t.tx).ok();
        let Some(t) = found.and_then(|i| held.txs.get(i)) else {
            return false;
        };
        self.pending.push_back(SourceEvent::Begin {
            tx: t.tx,
            commit_ts: t.commit_ts,
            xid: None,
        });
        self.pending.extend(t.rows.iter().map(|r| SourceEvent::Row {
            schema: r.schema.clone(),
            op: r.op,
            values: r.values.clone(),
        }));
        self.pending.push_back(SourceEvent::Commit(()));
        self.next += 1;
        true
    }
}

impl ChangeStream<HookPosition> for HookStream {
    /// Cancel-safe: a transaction's events are queued before the first is returned.
    async fn next(&mut self) -> Option<Result<SourceEvent<HookPosition>>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            let shared = self.hook.0.clone();
            let handed = shared.handed.notified();
            if self.take_next() {
                continue;
            }
            handed.await;
        }
    }

    fn ack(&mut self, durable: &HookPosition) {
        self.hook.release(durable.whole);
    }

    async fn stop(self) -> Result<()> {
        Ok(())
    }
}

/// A hook has no consistent read to copy from.
pub struct NoSnapshot;

/// The copier of a read with no tables: never made.
pub enum NoCopier {}

impl TableCopier for NoCopier {
    fn plan(&self) -> &KeyPlan {
        match *self {}
    }
    async fn copy<'a>(
        &'a mut self,
        _chunk: &'a Chunk,
        _target: &'a CopyTarget<'a>,
    ) -> Result<Copied> {
        match *self {}
    }
    async fn progress(&mut self, _done: u64, _enabled: bool) -> Result<indicatif::ProgressBar> {
        match *self {}
    }
}

impl SnapshotRead for NoSnapshot {
    type Copier<'a> = NoCopier;

    fn point(&self) -> Lsn {
        Lsn::ZERO
    }
    fn taken_at(&self) -> i64 {
        crate::store::now_ms() * 1000
    }
    async fn copier(&mut self, table: &TableId) -> Result<NoCopier> {
        Err(Error::fatal(format!(
            "a capture hook has no table {table} to copy"
        )))
    }
    async fn close(self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_hook_makes_the_producer_wait_until_a_transaction_is_durable() {
        let hook = Hook::register("hook-unit", 1);
        hook.base(7);
        hook.commit(1, Vec::new()).await;
        let second = hook.commit(2, Vec::new());
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "room for one transaction only"
        );
        hook.release(8);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .unwrap();
        assert_eq!(
            hook.held().txs.iter().map(|t| t.tx).collect::<Vec<_>>(),
            [9]
        );
    }
}
