//! The batcher: rows of many tables buffered into per-(table, date partition) Arrow builders,
//! encoded into one object each at flush.
//!
//! Contract: rows are pushed in source order; an object holds the rows of one table, one date
//! partition and one schema version, in push order; its key names its first and last row.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::change::{RowMeta, SchemaRef, TableId, Value};
use crate::error::Result;
use crate::output::Layout;
use crate::output::layout::date_partition;
use crate::parquet::{self, TableBatchBuilder};

struct Open {
    builder: TableBatchBuilder,
    first: (String, u64),
    last: (String, u64),
}

pub use crate::codec::envelope::Envelope;

/// Buffered rows of one batch.
#[derive(Default)]
pub struct Batch {
    /// Publishing (`Some(pipeline)`): rows become envelopes, not Parquet.
    publishing: Option<String>,
    envelopes: Vec<Envelope>,
    open: BTreeMap<(TableId, String), Open>,
    rows: usize,
    bytes: usize,
    started: Option<Instant>,
    last_commit_ts: Option<i64>,
    /// The key of the last push and its schema and day: consecutive rows of one table and day
    /// find their builder without building a key (no allocation per row).
    last_key: Option<(SchemaRef, i64, (TableId, String))>,
}

impl Batch {
    /// A batch of tidemark envelopes published by `pipeline` ([`Batch::take_envelopes`]).
    pub fn publishing(pipeline: &str) -> Batch {
        Batch {
            publishing: Some(pipeline.to_string()),
            ..Batch::default()
        }
    }

    /// The envelopes pushed since the last call, in push order.
    pub fn take_envelopes(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.envelopes)
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }
    /// When the first row of this batch was pushed.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }
    /// Commit time of the last row pushed since the last [`Batch::encode`].
    pub fn last_commit_ts(&self) -> Option<i64> {
        self.last_commit_ts
    }

    /// Whether rows of `schema`'s table are buffered under a different schema version (the
    /// caller flushes first, so one object never mixes schema versions).
    pub fn schema_differs(&self, schema: &SchemaRef) -> bool {
        // Envelopes carry their columns: any mix of schemas may share a batch.
        self.publishing.is_none()
            && self
                .open
                .iter()
                .filter(|((t, _), _)| *t == schema.id)
                // Per row: the same Arc is the common case, compared by pointer first.
                .any(|(_, o)| {
                    !std::sync::Arc::ptr_eq(o.builder.schema(), schema)
                        && **o.builder.schema() != **schema
                })
    }

    pub fn push(&mut self, schema: &SchemaRef, meta: &RowMeta<'_>, values: &[Value]) -> Result<()> {
        if let Some(pipeline) = &self.publishing {
            let data = crate::codec::envelope::encode(schema, meta, values, Some(pipeline));
            self.bytes += data.len();
            self.envelopes.push(Envelope {
                partition_key: partition_key(schema, meta, values),
                data,
                pos: meta.pos.to_string(),
                ord: meta.ord,
            });
            self.rows += 1;
            self.started.get_or_insert_with(Instant::now);
            self.last_commit_ts = Some(meta.commit_ts);
            return Ok(());
        }
        let day = meta.commit_ts.div_euclid(86_400_000_000);
        let cached = matches!(&self.last_key, Some((s, d, _)) if std::sync::Arc::ptr_eq(s, schema) && *d == day);
        if !cached {
            let key = (schema.id.clone(), date_partition(meta.commit_ts));
            self.open.entry(key.clone()).or_insert_with(|| Open {
                builder: TableBatchBuilder::new(schema.clone()),
                first: (meta.pos.to_string(), meta.ord),
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
        open.builder.push(meta, values)?;
        let after = open.builder.approx_bytes();
        if open.last.0 != meta.pos {
            open.last.0.clear();
            open.last.0.push_str(meta.pos);
        }
        open.last.1 = meta.ord;
        self.bytes = self.bytes + after - before.min(after);
        self.rows += 1;
        self.started.get_or_insert_with(Instant::now);
        self.last_commit_ts = Some(meta.commit_ts);
        Ok(())
    }

    /// Encodes every buffered table into one Parquet object each and empties the batch.
    /// Objects come back sorted by key.
    pub fn encode(&mut self, layout: &Layout) -> Result<Vec<(String, Vec<u8>)>> {
        let mut objects = Vec::with_capacity(self.open.len());
        self.last_key = None;
        for ((table, dt), mut open) in std::mem::take(&mut self.open) {
            if open.builder.is_empty() {
                continue;
            }
            let batch = open.builder.finish()?;
            let bytes = parquet::encode(open.builder.schema(), &[batch])?;
            let key = layout.change_key(
                &table,
                &dt,
                (&open.first.0, open.first.1),
                (&open.last.0, open.last.1),
            );
            objects.push((key, bytes));
        }
        objects.sort_by(|a, b| a.0.cmp(&b.0));
        self.rows = 0;
        self.bytes = 0;
        self.started = None;
        self.last_commit_ts = None;
        Ok(objects)
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
