//! The Parquet sink: rows of many tables buffered into per-(table, date partition) Arrow
//! builders, encoded into one object each at flush; the objects are the batch's whole output.
//!
//! Contract: rows are pushed in source order; an object holds the rows of one table, one date
//! partition and one schema version, in push order; its key names its first and last row
//! ([`Naming`]). A row the builder refuses is not buffered and names nothing, so the caller
//! may send it elsewhere (a shard's dead letters) and go on.

use std::collections::BTreeMap;

use crate::change::{RowMeta, SchemaRef, TableId, Value};
use crate::error::Result;
use crate::output::Layout;
use crate::output::layout::date_partition;
use crate::parquet::{self, TableBatchBuilder};
use crate::sink::{BufferStats, ChangeBuffer, ChangeSink};
use crate::store::{Checkpoint, PositionStore, SourcePosition};
use crate::{BoxFuture, Error};

/// How a batch names its objects: by what a replay names the same way, so a batch redone
/// after a crash writes the same keys.
#[derive(Debug, Clone, Default)]
pub enum Naming {
    /// By the first and last row's `(_pos, _ord)` (a database stream).
    #[default]
    Rows,
    /// By the shard and the first and last record's sequence number (a Kinesis shard, whose
    /// rows may carry the `_pos` of another source).
    Shard(String),
}

/// What names an object's first or last row: `(_pos, _ord)`, or a record's sortable
/// sequence number and 0.
type Mark = (String, u64);

struct Open {
    builder: TableBatchBuilder,
    first: Option<Mark>,
    last: Mark,
}

/// Buffered rows of one batch, as Arrow builders.
#[derive(Default)]
pub struct ParquetBatch {
    naming: Naming,
    open: BTreeMap<(TableId, String), Open>,
    stats: BufferStats,
    /// The key of the last push and its schema and day: consecutive rows of one table and day
    /// find their builder without building a key (no allocation per row).
    last_key: Option<(SchemaRef, i64, (TableId, String))>,
}

impl ParquetBatch {
    pub fn named(naming: Naming) -> Self {
        ParquetBatch {
            naming,
            ..ParquetBatch::default()
        }
    }

    /// [`ChangeBuffer::push`], naming the row by `mark` instead of its `(_pos, _ord)`.
    pub fn push_at(
        &mut self,
        schema: &SchemaRef,
        meta: &RowMeta<'_>,
        values: &[Value],
        mark: (&str, u64),
    ) -> Result<()> {
        let day = meta.commit_ts.div_euclid(86_400_000_000);
        let cached = matches!(&self.last_key, Some((s, d, _)) if std::sync::Arc::ptr_eq(s, schema) && *d == day);
        if !cached {
            let key = (schema.id.clone(), date_partition(meta.commit_ts));
            self.open.entry(key.clone()).or_insert_with(|| Open {
                builder: TableBatchBuilder::new(schema.clone()),
                first: None,
                last: (String::new(), 0),
            });
            self.last_key = Some((schema.clone(), day, key));
        }
        let open = match &self.last_key {
            Some((_, _, key)) => self.open.get_mut(key),
            None => None,
        }
        .ok_or_else(|| crate::Error::fatal("batch builder missing for its key"))?;
        let before = open.builder.approx_bytes();
        if let Err(e) = open.builder.push(meta, values) {
            // A builder that holds nothing is not left behind to count as a schema version.
            if open.builder.is_empty()
                && let Some((_, _, key)) = self.last_key.take()
            {
                self.open.remove(&key);
            }
            return Err(e);
        }
        let after = open.builder.approx_bytes();
        open.first
            .get_or_insert_with(|| (mark.0.to_string(), mark.1));
        if open.last.0 != mark.0 {
            open.last.0.clear();
            open.last.0.push_str(mark.0);
        }
        open.last.1 = mark.1;
        self.stats.row(after - before.min(after), meta.commit_ts);
        Ok(())
    }
}

impl ChangeBuffer for ParquetBatch {
    fn stats(&self) -> &BufferStats {
        &self.stats
    }

    /// Whether rows of `schema`'s table are buffered under a different schema version (the
    /// caller flushes first, so one object never mixes schema versions).
    fn schema_differs(&self, schema: &SchemaRef) -> bool {
        self.open
            .iter()
            .filter(|((t, _), _)| *t == schema.id)
            // Per row: the same Arc is the common case, compared by pointer first.
            .any(|(_, o)| {
                !std::sync::Arc::ptr_eq(o.builder.schema(), schema)
                    && **o.builder.schema() != **schema
            })
    }

    fn push(&mut self, schema: &SchemaRef, meta: &RowMeta<'_>, values: &[Value]) -> Result<()> {
        self.push_at(schema, meta, values, (meta.pos, meta.ord))
    }

    /// Encodes every buffered table into one Parquet object each and empties the batch.
    /// Objects come back sorted by key.
    fn encode(&mut self, layout: &Layout) -> Result<Vec<(String, Vec<u8>)>> {
        let mut objects = Vec::with_capacity(self.open.len());
        self.last_key = None;
        for ((table, dt), mut open) in std::mem::take(&mut self.open) {
            let Some(first) = open.first.filter(|_| !open.builder.is_empty()) else {
                continue;
            };
            let batch = open.builder.finish()?;
            let bytes = parquet::encode(open.builder.schema(), &[batch])?;
            let last = (open.last.0.as_str(), open.last.1);
            let key = match &self.naming {
                Naming::Rows => layout.change_key(&table, &dt, (&first.0, first.1), last),
                Naming::Shard(shard) => {
                    layout.shard_change_key(&table, &dt, shard, &first.0, last.0)
                }
            };
            objects.push((key, bytes));
        }
        objects.sort_by(|a, b| a.0.cmp(&b.0));
        self.stats = BufferStats::default();
        Ok(objects)
    }
}

/// Changes as Parquet objects in the output: the batch's objects are all it writes, inside
/// the engine's commit protocol, so delivery has nothing to do.
#[derive(Debug, Default, Clone, Copy)]
pub struct ParquetSink;

impl ChangeSink for ParquetSink {
    fn buffer(&self) -> Box<dyn ChangeBuffer> {
        Box::new(ParquetBatch::default())
    }

    fn deliver<'a>(
        &'a self,
        _store: &'a dyn PositionStore,
        cp: &'a Checkpoint,
        _buffer: &'a mut dyn ChangeBuffer,
        _to: &'a SourcePosition,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        Box::pin(async move { Ok(cp.clone()) })
    }

    /// A publish left unfinished by a run with `--publish` is refused: its records may be on
    /// the stream, and writing the same changes as Parquet would deliver them twice.
    fn recover<'a>(
        &'a self,
        _store: &'a dyn PositionStore,
        _output: &'a dyn crate::output::ObjectOutput,
        cp: &'a Checkpoint,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>>> {
        Box::pin(async move {
            if cp.intent.as_ref().is_some_and(|i| i.is_publish()) {
                return Err(Error::config(
                    "the last run published changes to Kinesis and stopped before committing them: run again with the same --publish \
                     (it finds what it sent instead of writing those changes as Parquet too), or `tidemark reset` to start over",
                ));
            }
            Ok(None)
        })
    }
}
