//! Sinks: where a pipeline's change batches go, behind one contract ([`ChangeSink`]), with the
//! buffer each fills ([`ChangeBuffer`]). The engine drives both: it pushes rows in stream
//! order, hands a full buffer to [`ChangeSink::deliver`] and then encodes it off the async task,
//! and commits the position after (intent → objects → position, `engine::commit_batch`).

use std::time::Instant;

use crate::BoxFuture;
use crate::change::{RowMeta, SchemaRef, Value};
use crate::codec::envelope::Envelope;
use crate::error::Result;
use crate::lease::LeaseHolder;
use crate::output::{Layout, ObjectOutput};
use crate::store::{Checkpoint, PositionStore, SourcePosition};

#[cfg(feature = "aws")]
pub mod kinesis;
pub mod parquet;

/// What every buffer counts of the rows pushed since its last encode.
#[derive(Debug, Default, Clone, Copy)]
pub struct BufferStats {
    pub rows: usize,
    /// Buffered bytes, approximately (the flush threshold `max_mib`).
    pub bytes: usize,
    /// When the first row was pushed.
    pub started: Option<Instant>,
    /// Commit time of the last row pushed.
    pub last_commit_ts: Option<i64>,
}

impl BufferStats {
    /// Counts one row of `bytes` committed at `commit_ts`.
    pub fn row(&mut self, bytes: usize, commit_ts: i64) {
        self.rows += 1;
        self.bytes += bytes;
        self.started.get_or_insert_with(Instant::now);
        self.last_commit_ts = Some(commit_ts);
    }
}

/// The rows of one batch, as a sink will write them.
///
/// Rows are pushed in stream order; [`ChangeBuffer::encode`] runs on a blocking thread.
pub trait ChangeBuffer: Send {
    fn stats(&self) -> &BufferStats;
    fn is_empty(&self) -> bool {
        self.stats().rows == 0
    }
    fn rows(&self) -> usize {
        self.stats().rows
    }
    fn approx_bytes(&self) -> usize {
        self.stats().bytes
    }
    fn started(&self) -> Option<Instant> {
        self.stats().started
    }
    fn last_commit_ts(&self) -> Option<i64> {
        self.stats().last_commit_ts
    }
    /// Whether rows of `schema`'s table are buffered under a different schema version: the
    /// engine flushes first, so one object never mixes schema versions.
    fn schema_differs(&self, schema: &SchemaRef) -> bool;
    fn push(&mut self, schema: &SchemaRef, meta: &RowMeta<'_>, values: &[Value]) -> Result<()>;
    /// The objects for the output (sorted by key), emptying the buffer.
    fn encode(&mut self, layout: &Layout) -> Result<Vec<(String, Vec<u8>)>>;
    /// The records that go beyond the output (a stream's), in push order; none by default.
    fn take_records(&mut self) -> Vec<Envelope> {
        Vec::new()
    }
}

/// Where changes go.
pub trait ChangeSink: Send + Sync {
    /// An empty buffer for the next batch.
    fn buffer(&self) -> Box<dyn ChangeBuffer>;

    /// Whether every earlier batch must be committed before the next is delivered (a sink that
    /// writes outside the commit protocol, so a crash never leaves two batches' deliveries
    /// unresolved).
    fn in_order(&self) -> bool {
        false
    }

    /// Every request from now on is sent only while `lease` is live.
    fn fence(&self, _lease: LeaseHolder) {}

    /// Delivers what `buffer` holds beyond the output's objects (records on a stream), for
    /// the rows up to `to`, before the batch's objects are encoded. A sink that delivers
    /// anything saves a write intent in `cp` first (so a restart finds what it sent) and
    /// returns the checkpoint that holds it; the commit that follows moves the position past
    /// it. Called in commit order. Every record is accepted when it returns.
    fn deliver<'a>(
        &'a self,
        store: &'a dyn PositionStore,
        cp: &'a Checkpoint,
        buffer: &'a mut dyn ChangeBuffer,
        to: &'a SourcePosition,
    ) -> BoxFuture<'a, Result<Checkpoint>>;

    /// At start-up, with the stored checkpoint: resolves a delivery an earlier run left
    /// unfinished and returns the checkpoint to go on from, or `None` when there is nothing of
    /// this sink's to resolve (the engine then recovers the objects of an unfinished batch).
    /// May be called again after an error.
    fn recover<'a>(
        &'a self,
        store: &'a dyn PositionStore,
        output: &'a dyn ObjectOutput,
        cp: &'a Checkpoint,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>>>;
}
