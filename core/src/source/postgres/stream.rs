//! The replication stream task: reads the walsender, decodes pgoutput into typed rows, and keeps
//! the server informed.
//!
//! Contracts:
//! - Events reach the pipeline in WAL order through a bounded channel (backpressure), in
//!   chunks: a chunk goes when it is full or when nothing more is ready to read, so an event
//!   never waits for later WAL.
//! - Standby status updates go out every `status_interval` and on request, also while the
//!   channel is full, so a slow flush never lets `wal_sender_timeout` expire.
//! - The flush LSN reported is only ever what the pipeline stored in [`Acked`]: durable output.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::change::{ColumnType, Op, SchemaRef, TableId, Value};
use crate::error::{Error, Result};
use crate::position::{Lsn, PgPosition};
use crate::source::postgres::catalog;
use crate::source::postgres::pgoutput::{self, OldTuple, PgOutputMessage, TupleValue};
use crate::source::postgres::replication::{ReplicationMessage, ReplicationStream};
use crate::source::postgres::types;
use crate::source::stream::{
    ChangeStream, ChunkedEvents, EventChunks, SourceEvent, StreamPosition, event_chunks,
};
use crate::store::SourcePosition;

/// Quiet time after data before the stream task asks the server for a keepalive.
const IDLE_PROBE: Duration = Duration::from_millis(50);

/// Events per chunk sent to the pipeline, and chunks the channel holds: at most 4,096 events
/// (and one chunk being filled) wait between the reader and the stream loop.
const EVENT_CHUNK: usize = 256;
const EVENT_CHUNKS: usize = 16;

/// What the pipeline receives, in WAL order. A key-changing UPDATE arrives as a `Delete` row
/// of the old key followed by an `Update` row with the new one.
pub type PgEvent = SourceEvent<PgPosition>;

/// A Commit message: the transaction's commit LSN (to match its Begin) and end.
#[derive(Debug, Clone, Copy)]
pub struct PgCommit {
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
}

/// PostgreSQL positions: a transaction is named by its commit LSN; `ack_lsn` is what the slot
/// may confirm, raised by keepalives received while nothing was buffered.
impl StreamPosition for PgPosition {
    type Tx = Lsn;
    type Commit = PgCommit;
    type Progress = Lsn;

    fn tx_key(tx: &Lsn) -> Lsn {
        *tx
    }
    fn key(&self) -> Lsn {
        self.commit_lsn
    }
    fn rows(&self) -> u64 {
        self.rows
    }
    fn partial(&self, tx: &Lsn, rows: u64) -> Self {
        PgPosition {
            commit_lsn: *tx,
            rows,
            ack_lsn: self.ack_lsn,
        }
    }
    fn complete(tx: Lsn, commit: PgCommit) -> Result<Self> {
        if tx != commit.commit_lsn {
            return Err(Error::data(format!(
                "Commit at {} does not match its Begin",
                commit.commit_lsn
            )));
        }
        Ok(PgPosition::complete(commit.commit_lsn, commit.end_lsn))
    }
    fn received(&self) -> Lsn {
        self.ack_lsn
    }
    fn with_idle(mut self, idle: &Lsn) -> Self {
        self.ack_lsn = self.ack_lsn.max(*idle);
        self
    }
    fn lag_bytes(&self, server: &Lsn) -> Option<u64> {
        Some(server.0.saturating_sub(self.ack_lsn.0))
    }
    fn into_source(self) -> SourcePosition {
        SourcePosition::Postgres(self)
    }
}

/// The LSN the pipeline has made durable; read by the stream task for status updates.
#[derive(Debug, Clone, Default)]
pub struct Acked(Arc<AtomicU64>);

impl Acked {
    pub fn new(lsn: Lsn) -> Self {
        Acked(Arc::new(AtomicU64::new(lsn.0)))
    }
    /// Raises the acknowledged LSN; never lowers it.
    pub fn advance(&self, lsn: Lsn) {
        self.0.fetch_max(lsn.0, Ordering::AcqRel);
    }
    pub fn get(&self) -> Lsn {
        Lsn(self.0.load(Ordering::Acquire))
    }
}

/// Handle on a running stream task.
pub struct StreamHandle {
    events: ChunkedEvents<Result<PgEvent>>,
    pub acked: Acked,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

impl StreamHandle {
    /// Stops the task after it sends a final status update with the current acked LSN.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        drop(self.events);
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(Error::fatal(format!("stream task failed: {e}"))),
            Err(_) => Err(Error::transient("stream task did not stop within 10 s")),
        }
    }
}

impl ChangeStream<PgPosition> for StreamHandle {
    async fn next(&mut self) -> Option<Result<PgEvent>> {
        self.events.recv().await
    }
    /// The next status update confirms `durable.ack_lsn` to the slot.
    fn ack(&mut self, durable: &PgPosition) {
        self.acked.advance(durable.ack_lsn);
    }
    async fn stop(self) -> Result<()> {
        StreamHandle::stop(self).await
    }
}

/// Starts the stream task. `client` is an ordinary SQL session used for catalog look-ups when a
/// Relation message arrives.
/// `only`: the captured tables; changes to any other table the publication sends (one made
/// `FOR ALL TABLES` by an earlier version) are dropped here.
pub fn spawn(
    stream: ReplicationStream,
    client: Client,
    acked: Acked,
    status_interval: Duration,
    only: Option<HashSet<TableId>>,
) -> StreamHandle {
    let (tx, rx) = event_chunks(EVENT_CHUNKS, EVENT_CHUNK);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn({
        let acked = acked.clone();
        async move {
            let mut reader = Reader {
                stream,
                client,
                acked,
                relations: HashMap::new(),
                only,
                tx,
                shutdown: shutdown_rx,
                status: tokio::time::interval(status_interval),
                received: Lsn::ZERO,
                in_stream: false,
            };
            let res = reader.run().await;
            if let Err(e) = &res {
                // What was read before the error goes first.
                let mut last = reader.tx.take();
                last.push(Err(Error::new(e.kind(), e.one_line())));
                let _ = reader.tx.tx.send(last).await;
            }
            // Tell the server what is durable before leaving.
            let acked = reader.acked.get();
            let _ = reader
                .stream
                .send_status(reader.received.max(acked), acked, acked, false)
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(5), reader.stream.close()).await;
            res
        }
    });
    StreamHandle {
        events: rx,
        acked,
        shutdown: shutdown_tx,
        task,
    }
}

struct Relation {
    /// Whether its changes are captured (see `spawn`'s `only`).
    captured: bool,
    schema: SchemaRef,
    types: Vec<ColumnType>,
    /// Index of each real primary-key column.
    key_idx: Vec<usize>,
}

struct Reader {
    stream: ReplicationStream,
    client: Client,
    acked: Acked,
    relations: HashMap<u32, Relation>,
    only: Option<HashSet<TableId>>,
    tx: EventChunks<Result<PgEvent>>,
    shutdown: watch::Receiver<bool>,
    status: tokio::time::Interval,
    received: Lsn,
    in_stream: bool,
}

enum Flow {
    Continue,
    Stop,
}

impl Reader {
    async fn run(&mut self) -> Result<()> {
        // After a burst of data goes quiet, ask the server where it is (a keepalive comes
        // back), so the pipeline learns promptly that it has received everything.
        let mut probe_at: Option<tokio::time::Instant> = None;
        loop {
            let probe = async {
                match probe_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return Ok(()),
                _ = self.status.tick() => self.send_status(true).await?,
                msg = self.stream.next() => {
                    let Some(msg) = msg? else {
                        return Err(Error::transient("the server ended the replication stream"));
                    };
                    probe_at = match msg {
                        ReplicationMessage::XLogData { .. } => Some(tokio::time::Instant::now() + IDLE_PROBE),
                        ReplicationMessage::PrimaryKeepalive { .. } => None,
                    };
                    if let Flow::Stop = self.handle(msg).await? {
                        return Ok(());
                    }
                }
                // Nothing more is ready to read: what was read goes to the pipeline now.
                _ = std::future::ready(()), if !self.tx.is_empty() => {
                    if let Flow::Stop = self.send_chunk().await? {
                        return Ok(());
                    }
                }
                _ = probe => {
                    probe_at = None;
                    self.send_status(true).await?;
                }
            }
        }
    }

    async fn send_status(&mut self, reply: bool) -> Result<()> {
        let acked = self.acked.get();
        self.stream
            .send_status(self.received.max(acked), acked, acked, reply)
            .await
    }

    /// Queues an event; a full chunk is sent.
    async fn emit(&mut self, ev: PgEvent) -> Result<Flow> {
        if self.tx.push(Ok(ev)) {
            self.send_chunk().await
        } else {
            Ok(Flow::Continue)
        }
    }

    /// Sends the queued events, answering status ticks while the channel is full.
    async fn send_chunk(&mut self) -> Result<Flow> {
        let chunk = self.tx.take();
        let tx = self.tx.tx.clone();
        let permit = match tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return Ok(Flow::Stop), // pipeline gone
            Err(mpsc::error::TrySendError::Full(())) => loop {
                tokio::select! {
                    biased;
                    _ = self.shutdown.changed() => return Ok(Flow::Stop),
                    permit = tx.reserve() => match permit {
                        Ok(p) => break p,
                        Err(_) => return Ok(Flow::Stop),
                    },
                    _ = self.status.tick() => self.send_status(true).await?,
                }
            },
        };
        permit.send(chunk);
        Ok(Flow::Continue)
    }

    async fn handle(&mut self, msg: ReplicationMessage) -> Result<Flow> {
        match msg {
            ReplicationMessage::PrimaryKeepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.received = self.received.max(wal_end);
                if reply_requested {
                    self.send_status(false).await?;
                }
                self.emit(PgEvent::Progress(wal_end)).await
            }
            ReplicationMessage::XLogData { wal_end, data, .. } => {
                self.received = self.received.max(wal_end);
                let msg = pgoutput::decode(data, self.in_stream)?;
                self.on_message(msg).await
            }
        }
    }

    async fn on_message(&mut self, msg: PgOutputMessage) -> Result<Flow> {
        match msg {
            PgOutputMessage::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                self.emit(PgEvent::Begin {
                    tx: final_lsn,
                    commit_ts,
                    xid: Some(i64::from(xid)),
                })
                .await
            }
            PgOutputMessage::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                self.emit(PgEvent::Commit(PgCommit {
                    commit_lsn,
                    end_lsn,
                }))
                .await
            }
            PgOutputMessage::Relation {
                id,
                namespace,
                name,
                columns,
                ..
            } => {
                let cols: Vec<(String, u32, i32)> = columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_oid, c.type_modifier))
                    .collect();
                let schema =
                    catalog::build_schema(&self.client, id, TableId::new(namespace, name), &cols)
                        .await?;
                let types = schema.columns.iter().map(|c| c.ty.clone()).collect();
                let key_idx = schema
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.key)
                    .map(|(i, _)| i)
                    .collect();
                let captured = self.only.as_ref().is_none_or(|o| o.contains(&schema.id));
                self.relations.insert(
                    id,
                    Relation {
                        captured,
                        schema,
                        types,
                        key_idx,
                    },
                );
                Ok(Flow::Continue)
            }
            PgOutputMessage::Insert { relation, new } => {
                let rel = self.relation(relation)?;
                if !rel.captured {
                    return Ok(Flow::Continue);
                }
                let values = decode_tuple(rel, &new, None, TupleRole::New)?;
                let schema = rel.schema.clone();
                self.emit(PgEvent::Row {
                    schema,
                    op: Op::Insert,
                    values,
                })
                .await
            }
            PgOutputMessage::Update { relation, old, new } => {
                let rel = self.relation(relation)?;
                if !rel.captured {
                    return Ok(Flow::Continue);
                }
                let old_full = match &old {
                    Some(OldTuple::Full(t)) => Some(t.as_slice()),
                    _ => None,
                };
                let new_values = decode_tuple(rel, &new, old_full, TupleRole::New)?;
                let old_image = match &old {
                    // 'K': sent only when the key changed.
                    Some(OldTuple::Key(t)) => Some(decode_tuple(rel, t, None, TupleRole::OldKey)?),
                    // A table without a primary key (REPLICA IDENTITY FULL): the old image is
                    // the only way to say which row changed, so every UPDATE writes it as a
                    // `D` before the new image's `U`; replaying the output then rebuilds the
                    // table as a multiset.
                    Some(OldTuple::Full(t))
                        if rel.key_idx.is_empty() || key_changed(rel, t, &new) =>
                    {
                        Some(decode_tuple(rel, t, None, TupleRole::OldFull)?)
                    }
                    _ => None,
                };
                let schema = rel.schema.clone();
                if let Some(values) = old_image {
                    let delete = PgEvent::Row {
                        schema: schema.clone(),
                        op: Op::Delete,
                        values,
                    };
                    if let Flow::Stop = self.emit(delete).await? {
                        return Ok(Flow::Stop);
                    }
                }
                self.emit(PgEvent::Row {
                    schema,
                    op: Op::Update,
                    values: new_values,
                })
                .await
            }
            PgOutputMessage::Delete { relation, old } => {
                let rel = self.relation(relation)?;
                if !rel.captured {
                    return Ok(Flow::Continue);
                }
                let values = match &old {
                    OldTuple::Key(t) => decode_tuple(rel, t, None, TupleRole::OldKey)?,
                    OldTuple::Full(t) => decode_tuple(rel, t, None, TupleRole::OldFull)?,
                };
                let schema = rel.schema.clone();
                self.emit(PgEvent::Row {
                    schema,
                    op: Op::Delete,
                    values,
                })
                .await
            }
            PgOutputMessage::Truncate { relations, .. } => {
                let mut schemas = Vec::with_capacity(relations.len());
                for r in relations {
                    let rel = self.relation(r)?;
                    if rel.captured {
                        schemas.push(rel.schema.clone());
                    }
                }
                if schemas.is_empty() {
                    return Ok(Flow::Continue);
                }
                self.emit(PgEvent::Truncate { schemas }).await
            }
            PgOutputMessage::StreamStart { .. } => {
                self.in_stream = true;
                Ok(Flow::Continue)
            }
            PgOutputMessage::StreamStop => {
                self.in_stream = false;
                Ok(Flow::Continue)
            }
            PgOutputMessage::StreamCommit { .. } | PgOutputMessage::StreamAbort { .. } => {
                Err(Error::fatal(
                    "received a streamed transaction, which this client never requests (streaming is off)",
                ))
            }
            PgOutputMessage::Origin { .. }
            | PgOutputMessage::Type { .. }
            | PgOutputMessage::Message { .. } => Ok(Flow::Continue),
        }
    }

    fn relation(&self, id: u32) -> Result<&Relation> {
        self.relations.get(&id).ok_or_else(|| {
            Error::data(format!(
                "row for relation {id} arrived before its Relation message"
            ))
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
enum TupleRole {
    New,
    /// Old key image ('K'): non-key columns are placeholders, not NULLs.
    OldKey,
    /// Old full image ('O', REPLICA IDENTITY FULL).
    OldFull,
}

fn key_changed(rel: &Relation, old: &[TupleValue], new: &[TupleValue]) -> bool {
    rel.key_idx.iter().any(|&i| match (old.get(i), new.get(i)) {
        (Some(TupleValue::Text(a)), Some(TupleValue::Text(b))) => a != b,
        (Some(TupleValue::Binary(a)), Some(TupleValue::Binary(b))) => a != b,
        (Some(TupleValue::Null), Some(TupleValue::Null)) => false,
        (_, Some(TupleValue::UnchangedToast)) => false,
        _ => true,
    })
}

/// Turns a pgoutput tuple into values aligned with the relation's schema. Unchanged TOAST takes
/// the old full image's value when there is one, else becomes [`Value::Unavailable`].
fn decode_tuple(
    rel: &Relation,
    tuple: &[TupleValue],
    old_full: Option<&[TupleValue]>,
    role: TupleRole,
) -> Result<Vec<Value>> {
    if tuple.len() != rel.types.len() {
        return Err(Error::data(format!(
            "{}: tuple has {} columns but the relation has {}",
            rel.schema.id,
            tuple.len(),
            rel.types.len()
        )));
    }
    let mut out = Vec::with_capacity(tuple.len());
    for (i, (tv, ty)) in tuple.iter().zip(&rel.types).enumerate() {
        let is_key = rel.schema.columns[i].key;
        let v = match tv {
            TupleValue::Null if role == TupleRole::OldKey && !is_key => Value::Unavailable,
            TupleValue::Null => Value::Null,
            TupleValue::UnchangedToast => match old_full.and_then(|o| o.get(i)) {
                Some(TupleValue::Text(t)) => parse(rel, i, ty, t)?,
                _ => Value::Unavailable,
            },
            TupleValue::Text(t) => parse(rel, i, ty, t)?,
            TupleValue::Binary(_) => {
                return Err(Error::data(format!(
                    "{}.{}: binary tuple data was not requested",
                    rel.schema.id, rel.schema.columns[i].name
                )));
            }
        };
        out.push(v);
    }
    Ok(out)
}

fn parse(rel: &Relation, i: usize, ty: &ColumnType, text: &[u8]) -> Result<Value> {
    types::parse_text(ty, text)
        .map_err(|e| e.context(format!("{}.{}", rel.schema.id, rel.schema.columns[i].name)))
}
