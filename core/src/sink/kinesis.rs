//! The worker as a Kinesis publisher: a database pipeline's changes as tidemark envelopes on a
//! stream, so that Lambda functions per shard write the Parquet.
//!
//! Contract:
//! - partition key = table + primary key ([`partition_key`]): one key's
//!   changes land on one shard, in source order; a PutRecords request never holds two records
//!   of one key, and failed records are retried (in order, with backoff) before any later
//!   record is sent, so a retry never reorders a key's changes;
//! - the source position is committed only after every record up to it was accepted: before
//!   publishing a batch the pipeline saves a write intent (no objects), and commits after;
//! - after a crash between publishing and the commit, the records of the unfinished batch are
//!   found on the stream ([`Publisher::recover`]: every shard read from the intent's time on)
//!   and not published again when the source replays them, so each change is on the stream
//!   once;
//! - every PutRecords request (retries included) is sent only while the pipeline's lease is
//!   live ([`Publisher::fence`]), so a worker that lost its lease publishes nothing more;
//! - a record over Kinesis' 1 MiB limit is refused with an error naming the row (a row that
//!   large belongs in the Parquet output: capture that table without publishing).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::BoxFuture;
use crate::change::{RowMeta, SchemaRef, Value};
use crate::codec::envelope;
use crate::codec::envelope::Envelope;
use crate::error::{Error, Result};
use crate::lease::LeaseHolder;
use crate::output::{Layout, ObjectOutput};
use crate::sink::{BufferStats, ChangeBuffer, ChangeSink};
use crate::source::kinesis::client::{KinesisStream, Put};
use crate::store::{Checkpoint, PositionStore, SourcePosition, WriteIntent};

/// Kinesis' limit for one record: data plus partition key.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// PutRecords limits: records and bytes per request.
const MAX_REQUEST_RECORDS: usize = 500;
const MAX_REQUEST_BYTES: usize = 5 << 20;
/// Attempts for records Kinesis refuses (throttling) before the batch fails as transient.
const MAX_ATTEMPTS: u32 = 12;
/// How far before an intent's time the recovery scan starts (clock skew, arrival delay).
const RECOVERY_MARGIN_MS: i64 = 5 * 60 * 1000;

/// Publishes one pipeline's envelopes to one stream.
pub struct Publisher {
    pub stream: KinesisStream,
    pipeline: String,
    /// `(pos, ord)` of records already on the stream from an unfinished batch.
    published: Mutex<HashSet<(String, u64)>>,
    /// The pipeline's lease, checked before every request.
    lease: Mutex<Option<LeaseHolder>>,
}

/// What [`Publisher::publish`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub records: usize,
    /// Records found on the stream by [`Publisher::recover`] and not sent again.
    pub already_there: usize,
    pub requests: usize,
    pub retried: usize,
}

impl Publisher {
    pub async fn open(stream: &str, pipeline: &str) -> Result<Publisher> {
        let stream = KinesisStream::open(stream).await?;
        // Fails early with a clear message when the stream is missing or not allowed.
        stream.shards().await?;
        Ok(Publisher {
            stream,
            pipeline: pipeline.to_string(),
            published: Mutex::new(HashSet::new()),
            lease: Mutex::new(None),
        })
    }

    /// Finds this pipeline's records published since `since_ms` (UNIX ms, the unfinished
    /// batch's intent) on every shard; they are skipped when published again.
    pub async fn recover(&self, since_ms: i64) -> Result<usize> {
        let mut found = HashSet::new();
        for shard in self.stream.shards().await? {
            let mut it = self
                .stream
                .iterator_at(&shard.id, since_ms - RECOVERY_MARGIN_MS)
                .await?;
            // A page per call until the shard's tip.
            let mut complete = false;
            for _ in 0..100_000 {
                let got = self.stream.records(&it, 10_000).await?;
                for r in &got.records {
                    if let Some((source, pos, ord)) = envelope::identity(&r.data)
                        && source == self.pipeline
                    {
                        found.insert((pos, ord));
                    }
                }
                let at_tip = got.records.is_empty() && got.millis_behind_latest.unwrap_or(0) == 0;
                match got.next_iterator {
                    Some(next) if !at_tip => it = next,
                    _ => {
                        complete = true;
                        break;
                    }
                }
                if got.records.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if !complete {
                return Err(Error::transient(format!(
                    "could not read shard {} to its tip while recovering an unfinished publish; retrying",
                    shard.id
                )));
            }
        }
        let n = found.len();
        tracing::warn!(
            records = n,
            "recovered an unfinished publish: these records are on the stream already and are not sent again"
        );
        if let Ok(mut p) = self.published.lock() {
            p.extend(found);
        }
        Ok(n)
    }

    /// Sends from now on only while `lease` is live.
    pub fn fence(&self, lease: LeaseHolder) {
        if let Ok(mut l) = self.lease.lock() {
            *l = Some(lease);
        }
    }

    /// Publishes `records` in order (see the module contract). Returns when every record
    /// was accepted.
    pub async fn publish(&self, records: Vec<Envelope>) -> Result<Published> {
        let mut stats = Published::default();
        let mut pending: Vec<Envelope> = Vec::with_capacity(records.len());
        {
            let mut seen = self
                .published
                .lock()
                .map_err(|_| Error::fatal("publisher lock poisoned"))?;
            for r in records {
                if !seen.is_empty() && seen.remove(&(r.pos.clone(), r.ord)) {
                    stats.already_there += 1;
                    continue;
                }
                let size = r.data.len() + r.partition_key.len();
                if size > MAX_RECORD_BYTES {
                    return Err(Error::data(format!(
                        "the change at {}.{} ({}) is {size} bytes as a tidemark envelope, over Kinesis' 1 MiB record limit: \
                         capture that table without --publish (Parquet has no such limit)",
                        r.pos, r.ord, r.partition_key
                    )));
                }
                pending.push(r);
            }
        }
        stats.records = pending.len();
        let mut next = 0;
        while next < pending.len() {
            // One request: distinct partition keys, within the request limits.
            let mut keys = HashSet::new();
            let mut bytes = 0;
            let mut end = next;
            while end < pending.len()
                && end - next < MAX_REQUEST_RECORDS
                && bytes + pending[end].data.len() + pending[end].partition_key.len()
                    <= MAX_REQUEST_BYTES
                && keys.insert(pending[end].partition_key.as_str())
            {
                bytes += pending[end].data.len() + pending[end].partition_key.len();
                end += 1;
            }
            let mut todo: Vec<&Envelope> = pending[next..end].iter().collect();
            let mut attempt = 0;
            while !todo.is_empty() {
                attempt += 1;
                stats.requests += 1;
                let batch: Vec<(String, Vec<u8>)> = todo
                    .iter()
                    .map(|r| (r.partition_key.clone(), r.data.clone()))
                    .collect();
                let lease = self
                    .lease
                    .lock()
                    .map_err(|_| Error::fatal("publisher lock poisoned"))?
                    .clone();
                if let Some(lease) = lease {
                    lease.check()?;
                }
                let results = self.stream.put(&batch).await?;
                if results.len() != todo.len() {
                    return Err(Error::transient(format!(
                        "PutRecords answered {} results for {} records",
                        results.len(),
                        todo.len()
                    )));
                }
                let mut failed = Vec::new();
                let mut why = String::new();
                for (r, res) in todo.iter().zip(results) {
                    if let Put::Failed { code, message } = res {
                        why = format!("{code}: {message}");
                        failed.push(*r);
                    }
                }
                if failed.is_empty() {
                    break;
                }
                stats.retried += failed.len();
                if attempt >= MAX_ATTEMPTS {
                    return Err(Error::transient(format!(
                        "Kinesis refused {} records {MAX_ATTEMPTS} times ({why}): the stream may need more shards",
                        failed.len()
                    )));
                }
                tokio::time::sleep(Duration::from_millis((50u64 << attempt.min(7)).min(5_000)))
                    .await;
                todo = failed;
            }
            next = end;
        }
        Ok(stats)
    }
}

/// `<schema>.<table>/<key values joined by |>`: one key's changes go to one shard, in order.
/// A table without a key spreads by row position. Over Kinesis' 256 characters the key part is
/// replaced by its FNV-1a hash.
pub fn partition_key(
    schema: &crate::change::TableSchema,
    meta: &RowMeta<'_>,
    values: &[Value],
) -> String {
    let mut key = String::new();
    for (c, v) in schema.columns.iter().zip(values) {
        if !c.key {
            continue;
        }
        if !key.is_empty() {
            key.push('|');
        }
        match v {
            Value::I16(i) => key.push_str(&i.to_string()),
            Value::I32(i) => key.push_str(&i.to_string()),
            Value::I64(i) => key.push_str(&i.to_string()),
            Value::Decimal(d) => key.push_str(&d.to_string()),
            Value::Text(t) => key.push_str(t),
            other => key.push_str(&format!("{other:?}")),
        }
    }
    if key.is_empty() {
        key = format!("{}.{}", meta.pos, meta.ord);
    }
    let table = format!("{}.{}", schema.id.schema, schema.id.name);
    if table.len() + 1 + key.len() > 256 {
        key = format!("{:016x}", crate::config::fnv1a(key.as_bytes()));
    }
    let mut out = format!("{table}/{key}");
    while out.len() > 256 {
        out.pop();
    }
    out
}

/// Rows as tidemark envelopes for the stream; no objects.
pub struct EnvelopeBatch {
    pipeline: String,
    envelopes: Vec<Envelope>,
    stats: BufferStats,
}

impl EnvelopeBatch {
    pub fn new(pipeline: &str) -> Self {
        EnvelopeBatch {
            pipeline: pipeline.to_string(),
            envelopes: Vec::new(),
            stats: BufferStats::default(),
        }
    }
}

impl ChangeBuffer for EnvelopeBatch {
    fn stats(&self) -> &BufferStats {
        &self.stats
    }
    /// Envelopes carry their columns: any mix of schemas may share a batch.
    fn schema_differs(&self, _schema: &SchemaRef) -> bool {
        false
    }
    fn push(&mut self, schema: &SchemaRef, meta: &RowMeta<'_>, values: &[Value]) -> Result<()> {
        let data = envelope::encode(schema, meta, values, Some(&self.pipeline));
        let bytes = data.len();
        self.envelopes.push(Envelope {
            partition_key: partition_key(schema, meta, values),
            data,
            pos: meta.pos.to_string(),
            ord: meta.ord,
        });
        self.stats.row(bytes, meta.commit_ts);
        Ok(())
    }
    /// The envelopes were delivered ([`ChangeBuffer::take_records`]): no objects.
    fn encode(&mut self, _layout: &Layout) -> Result<Vec<(String, Vec<u8>)>> {
        self.envelopes.clear();
        self.stats = BufferStats::default();
        Ok(Vec::new())
    }
    fn take_records(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.envelopes)
    }
}

/// Changes published to a Kinesis stream (see the module contract); snapshots still go to
/// the output.
pub struct KinesisSink {
    publisher: Publisher,
}

impl KinesisSink {
    pub fn new(publisher: Publisher) -> Self {
        KinesisSink { publisher }
    }
}

impl ChangeSink for KinesisSink {
    fn buffer(&self) -> Box<dyn ChangeBuffer> {
        Box::new(EnvelopeBatch::new(&self.publisher.pipeline))
    }

    fn in_order(&self) -> bool {
        true
    }

    fn fence(&self, lease: LeaseHolder) {
        self.publisher.fence(lease);
    }

    /// Publishes the batch's envelopes under a publish intent for `(cp, to]`. An older publish
    /// intent still open (from before a restart) keeps its start and its end, whichever is
    /// further.
    fn deliver<'a>(
        &'a self,
        store: &'a dyn PositionStore,
        cp: &'a Checkpoint,
        buffer: &'a mut dyn ChangeBuffer,
        to: &'a SourcePosition,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        Box::pin(async move {
            let envelopes = buffer.take_records();
            if envelopes.is_empty() {
                return Ok(cp.clone());
            }
            let old = cp.intent.as_ref().filter(|i| i.is_publish());
            let end = old.map_or(to, |o| o.to.later(to)).clone();
            let mut with_intent = cp.next();
            with_intent.intent = Some(WriteIntent {
                from: cp.position.clone(),
                to: end,
                keys: Vec::new(),
                started_ms: Some(
                    old.and_then(|o| o.started_ms)
                        .unwrap_or_else(crate::store::now_ms),
                ),
            });
            store.save(cp.expected(), &with_intent, None).await?;
            let stats = self.publisher.publish(envelopes).await?;
            tracing::debug!(
                records = stats.records,
                requests = stats.requests,
                retried = stats.retried,
                already_there = stats.already_there,
                "published"
            );
            Ok(with_intent)
        })
    }

    /// An unfinished publish: its records are found on the stream (not published again), and
    /// objects written beside them, never committed, are deleted (the replay writes them
    /// again); the publish part of the intent stays until a commit passes its end.
    fn recover<'a>(
        &'a self,
        store: &'a dyn PositionStore,
        output: &'a dyn ObjectOutput,
        cp: &'a Checkpoint,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>>> {
        Box::pin(async move {
            let Some(intent) = cp.intent.as_ref().filter(|i| i.is_publish()) else {
                return Ok(None);
            };
            self.publisher
                .recover(intent.started_ms.unwrap_or(0))
                .await?;
            if intent.keys.is_empty() {
                return Ok(Some(cp.clone()));
            }
            for key in &intent.keys {
                output.delete(key).await?;
            }
            let mut next = cp.next();
            if let Some(i) = next.intent.as_mut() {
                i.keys.clear();
            }
            store.save(cp.expected(), &next, None).await?;
            Ok(Some(next))
        })
    }
}
