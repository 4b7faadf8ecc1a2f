//! The change-stream contract every database source implements, and the one stream loop
//! (`engine::stream`) consumes.
//!
//! A source streams transactions in commit order: `Begin`, its row events (`Row`, `Rows`,
//! `Truncate`, `SchemaChange`) in source order, `Commit`; `Progress` events between
//! transactions say how far the server has sent. A transaction is named by an order key
//! ([`StreamPosition::tx_key`]) that increases from one transaction to the next; a row is named
//! by that key and its ordinal within the transaction, so a replay after a restart names every
//! row as before and the loop skips what the committed position covers.

use std::fmt;
use std::future::Future;

use crate::change::{Op, SchemaRef, Value};
use crate::error::Result;
use crate::position::Lsn;
use crate::store::SourcePosition;

/// A source's stream position: where a restart resumes and which rows are already durable.
///
/// Ordering (`PartialOrd`): a later position covers every row an earlier one covers.
pub trait StreamPosition: Clone + PartialOrd + fmt::Display + Send + Sync + 'static {
    /// Names a transaction from its `Begin` (PostgreSQL: its commit LSN; binlog: where it begins).
    type Tx: Clone + serde::Serialize + Send + Sync + 'static;
    /// What a `Commit` carries besides the transaction: with it, the position after it.
    type Commit: Send + 'static;
    /// How far the server has sent (keepalives, heartbeats).
    type Progress: Clone + PartialOrd + Default + fmt::Display + Send + Sync + 'static;

    /// The transaction's order key: strictly increasing in stream order; `_pos` is its
    /// [`Lsn::sortable`] form.
    fn tx_key(tx: &Self::Tx) -> Lsn;
    /// The order key of the transaction this position is inside or after.
    fn key(&self) -> Lsn;
    /// How many rows of that transaction the position covers (`u64::MAX`: all of them).
    fn rows(&self) -> u64;
    /// `self` (the last whole transaction) advanced into `tx`, covering its first `rows` rows;
    /// a restart from it still resumes where `self` does.
    fn partial(&self, tx: &Self::Tx, rows: u64) -> Self;
    /// The position after the whole transaction `tx`. An error when the commit contradicts the
    /// transaction (a stream out of step).
    fn complete(tx: Self::Tx, commit: Self::Commit) -> Result<Self>;
    /// How far a whole position says the server's stream was read.
    fn received(&self) -> Self::Progress;
    /// A whole position raised to server progress received while nothing was buffered (all
    /// of it durable or not captured). Sources that cannot resume from such a point keep `self`.
    fn with_idle(self, _idle: &Self::Progress) -> Self {
        self
    }
    /// Bytes the server has sent beyond this position, when the two can be compared.
    fn lag_bytes(&self, server: &Self::Progress) -> Option<u64>;
    fn into_source(self) -> SourcePosition;
}

/// One event of a change stream.
pub enum SourceEvent<P: StreamPosition> {
    Begin {
        tx: P::Tx,
        /// Commit time, UNIX micros.
        commit_ts: i64,
        /// The source's transaction id (`_xid`), when it has one.
        xid: Option<i64>,
    },
    /// One row image.
    Row {
        schema: SchemaRef,
        op: Op,
        values: Vec<Value>,
    },
    /// Rows of one event: `ops[i]` with `values[i*n..(i+1)*n]`, `n` = column count.
    Rows {
        schema: SchemaRef,
        ops: Vec<Op>,
        values: Vec<Value>,
    },
    /// Every table in `schemas` emptied (one `truncate` row each).
    Truncate {
        schemas: Vec<SchemaRef>,
    },
    /// A statement for the schema history (DDL), inside the current transaction.
    SchemaChange {
        database: String,
        statement: String,
    },
    Commit(P::Commit),
    /// The server has sent everything before this point.
    Progress(P::Progress),
}

/// A running change stream, started at a durable position.
pub trait ChangeStream<P: StreamPosition>: Send {
    /// The next event, `None` when the stream ended. Cancel-safe: a call dropped before it
    /// completes loses no event.
    fn next(&mut self) -> impl Future<Output = Option<Result<SourceEvent<P>>>> + Send;
    /// `durable` is committed: the source may release what precedes it (PostgreSQL confirms it
    /// to the slot). Never called with a position that is not durable; may repeat a position.
    fn ack(&mut self, durable: &P);
    /// Stops the reader; after the last `ack`, so the server learns the final durable point.
    fn stop(self) -> impl Future<Output = Result<()>> + Send;
}

/// Events carried from a source's reading task to the stream loop in chunks: one channel
/// operation, and at most one wake-up of the loop's task, per chunk rather than per row.
///
/// Contract: the receiver yields the events in the order they were pushed; the channel holds
/// at most `capacity` chunks (backpressure on the reader); a chunk is only sent by
/// [`EventChunks::take`]'s caller, so the reader decides when a partial chunk goes (when its
/// input has nothing more ready, so no event waits on later input).
#[cfg(feature = "postgres")]
pub(crate) fn event_chunks<T>(capacity: usize, chunk: usize) -> (EventChunks<T>, ChunkedEvents<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    (
        EventChunks {
            tx,
            pending: Vec::with_capacity(chunk),
            chunk,
        },
        ChunkedEvents {
            rx,
            ready: Vec::new().into_iter(),
        },
    )
}

/// The reading task's side of [`event_chunks`]: events gather until taken and sent.
#[cfg(feature = "postgres")]
pub(crate) struct EventChunks<T> {
    pub tx: tokio::sync::mpsc::Sender<Vec<T>>,
    pending: Vec<T>,
    chunk: usize,
}

#[cfg(feature = "postgres")]
impl<T> EventChunks<T> {
    /// Adds an event to the pending chunk; true when the chunk is full (send it now).
    pub fn push(&mut self, ev: T) -> bool {
        self.pending.push(ev);
        self.pending.len() >= self.chunk
    }
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
    /// The pending events, leaving an empty chunk.
    pub fn take(&mut self) -> Vec<T> {
        std::mem::replace(&mut self.pending, Vec::with_capacity(self.chunk))
    }
}

/// The stream loop's side of [`event_chunks`].
#[cfg(feature = "postgres")]
pub(crate) struct ChunkedEvents<T> {
    rx: tokio::sync::mpsc::Receiver<Vec<T>>,
    ready: std::vec::IntoIter<T>,
}

#[cfg(feature = "postgres")]
impl<T> ChunkedEvents<T> {
    /// The next event; `None` once the reader is gone and every event it sent was taken.
    /// Cancel safe: an event is only removed when it is returned.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(ev) = self.ready.next() {
                return Some(ev);
            }
            self.ready = self.rx.recv().await?.into_iter();
        }
    }
}

#[cfg(all(test, feature = "postgres"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_arrive_whole_and_in_order() {
        let (mut tx, mut rx) = event_chunks::<u32>(2, 3);
        assert!(!tx.push(1));
        assert!(!tx.push(2));
        assert!(tx.push(3));
        let chunk = tx.take();
        tx.tx.send(chunk).await.unwrap();
        assert!(tx.is_empty());
        tx.push(4);
        let chunk = tx.take();
        tx.tx.send(chunk).await.unwrap();
        drop(tx);
        let mut got = Vec::new();
        while let Some(ev) = rx.recv().await {
            got.push(ev);
        }
        assert_eq!(got, [1, 2, 3, 4]);
    }
}
