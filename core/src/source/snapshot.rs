//! What every source's initial snapshot shares: how a table is split into chunks, how rows
//! become part objects, and the progress bar.
//!
//! A part is built in memory only up to [`ROW_GROUP_ROWS`] rows of Arrow arrays at a time (then
//! encoded into the part's Parquet), and written as one object every `part_rows` rows.

use indicatif::{ProgressBar, ProgressStyle};

use std::future::Future;

use crate::change::{ColumnType, Op, RowMeta, SchemaRef, TableId, TableSchema, Value};
use crate::error::Result;
use crate::failpoint;
use crate::output::{Layout, ObjectOutput};
use crate::parquet::{ParquetFileWriter, TableBatchBuilder};

const ROW_GROUP_ROWS: usize = 65_536;

/// Where a table's snapshot rows sit in source order.
pub struct SnapshotMeta<'a> {
    pub snapshot_id: &'a str,
    /// `_pos` of every snapshot row: just below the consistent point (every change sorts after
    /// it), sortable.
    pub pos: &'a str,
    /// `_commit_ts` of every snapshot row: when the snapshot was taken (UNIX micros).
    pub taken_at: i64,
}

/// How a table is copied: in keyset chunks when its primary key is one integer column (then
/// progress survives a restart at chunk granularity), else in one COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlan {
    /// Single-column integer primary key: its name in the source and index in the schema.
    Integer {
        column: String,
        index: usize,
    },
    Whole,
}

impl KeyPlan {
    /// The plan for copying a table whose primary key columns are `source_key` (source names).
    pub fn for_copy(schema: &TableSchema, source_key: &[String]) -> KeyPlan {
        match (Self::for_schema(schema), source_key) {
            (KeyPlan::Integer { index, .. }, [column]) => KeyPlan::Integer {
                column: column.clone(),
                index,
            },
            _ => KeyPlan::Whole,
        }
    }

    /// The plan from the schema alone (column name as written in the output).
    pub fn for_schema(schema: &TableSchema) -> KeyPlan {
        let mut keys = schema.columns.iter().enumerate().filter(|(_, c)| c.key);
        match (keys.next(), keys.next()) {
            (Some((index, c)), None)
                if matches!(
                    c.ty,
                    ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64
                ) =>
            {
                KeyPlan::Integer {
                    column: c.name.clone(),
                    index,
                }
            }
            _ => KeyPlan::Whole,
        }
    }

    /// The integer key of a row, for [`KeyPlan::Integer`].
    pub fn key_of(&self, values: &[Value]) -> Option<i64> {
        let KeyPlan::Integer { index, .. } = self else {
            return None;
        };
        match values.get(*index)? {
            Value::I16(v) => Some(i64::from(*v)),
            Value::I32(v) => Some(i64::from(*v)),
            Value::I64(v) => Some(*v),
            _ => None,
        }
    }
}

/// Which rows of a table one copy reads, and how its parts are numbered.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    /// Only rows whose integer key is above this (keyset pagination).
    pub after: Option<i64>,
    /// At most this many rows, in key order (one chunk). `None`: the whole table.
    pub limit: Option<usize>,
    pub part_rows: usize,
    /// Number of the first part written.
    pub first_part: u32,
    /// `_ord` of the first row.
    pub first_ord: u64,
    /// Write a part even when the range is empty (so an empty table has a snapshot file).
    pub write_empty: bool,
}

impl Chunk {
    /// ` WHERE key > after ORDER BY key LIMIT n` for keyset pagination on the quoted column
    /// `key` (the parts that apply).
    pub fn keyset_clause(&self, key: &str) -> String {
        let mut sql = String::new();
        if let Some(after) = self.after {
            sql.push_str(&format!(" WHERE {key} > {after}"));
        }
        sql.push_str(&format!(" ORDER BY {key}"));
        if let Some(limit) = self.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        sql
    }
}

/// What one copy wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Copied {
    pub rows: u64,
    pub parts: u32,
    /// Largest integer key copied.
    pub last_key: Option<i64>,
}

/// Where a copy writes: the snapshot's metadata, the key layout, the output, the progress bar.
pub struct CopyTarget<'a> {
    pub meta: &'a SnapshotMeta<'a>,
    pub layout: &'a Layout,
    pub output: &'a dyn ObjectOutput,
    pub bar: &'a ProgressBar,
}

/// One table of a source's consistent read, copied chunk by chunk (the snapshot driver in
/// `engine::snapshot` calls it).
pub trait TableCopier: Send {
    /// How the table is chunked: keyset chunks for a single integer key, else one copy.
    fn plan(&self) -> &KeyPlan;
    /// Copies `chunk` inside the consistent read into part objects ([`PartWriter`]). Part keys
    /// depend only on part numbers, so a replay overwrites the same keys. Cancel-safe only in
    /// that a dropped copy leaves parts the driver deletes or overwrites on resume.
    fn copy<'a>(
        &'a mut self,
        chunk: &'a Chunk,
        target: &'a CopyTarget<'a>,
    ) -> impl Future<Output = Result<Copied>> + Send + 'a;
    /// A progress bar for this table's copy (hidden when `enabled` is false), at `done` rows.
    fn progress<'a>(
        &'a mut self,
        done: u64,
        enabled: bool,
    ) -> impl Future<Output = Result<ProgressBar>> + Send + 'a;
}

/// Writes a copy's rows, in order, into `snapshot_id=<id>/part-NNNNN.parquet` objects of
/// `part_rows` rows each; memory holds one part's row groups at most.
pub struct PartWriter<'a> {
    schema: &'a SchemaRef,
    chunk: &'a Chunk,
    target: &'a CopyTarget<'a>,
    part: Part,
    out: Copied,
}

impl<'a> PartWriter<'a> {
    pub fn new(
        schema: &'a SchemaRef,
        chunk: &'a Chunk,
        target: &'a CopyTarget<'a>,
    ) -> Result<Self> {
        Ok(PartWriter {
            schema,
            chunk,
            target,
            part: Part::new(schema)?,
            out: Copied::default(),
        })
    }

    /// Adds one row (key plan `plan` tracks the largest key); writes the part when full.
    pub async fn push(&mut self, plan: &KeyPlan, values: &[Value]) -> Result<()> {
        let m = RowMeta {
            op: Op::Snapshot,
            pos: self.target.meta.pos,
            ord: self.chunk.first_ord + self.out.rows,
            commit_ts: self.target.meta.taken_at,
            xid: None,
        };
        self.part.push(&m, values)?;
        if let Some(k) = plan.key_of(values) {
            self.out.last_key = Some(self.out.last_key.map_or(k, |l: i64| l.max(k)));
        }
        self.out.rows += 1;
        if self.part.rows == self.chunk.part_rows {
            let full = std::mem::replace(&mut self.part, Part::new(self.schema)?);
            self.put(full).await?;
        }
        if self.out.rows.is_multiple_of(4096) {
            self.target.bar.inc(4096);
        }
        Ok(())
    }

    async fn put(&mut self, part: Part) -> Result<()> {
        let t = self.target;
        let key = t.layout.snapshot_key(
            &self.schema.id,
            t.meta.snapshot_id,
            self.chunk.first_part + self.out.parts,
        );
        t.output.put(&key, part.finish()?).await?;
        failpoint::pass(failpoint::PART_PUT);
        self.out.parts += 1;
        Ok(())
    }

    /// Writes the last part (or an empty one when the chunk asks for it).
    pub async fn finish(self) -> Result<Copied> {
        let PartWriter {
            schema,
            chunk,
            target,
            part,
            mut out,
        } = self;
        target.bar.inc(out.rows % 4096);
        if part.rows > 0 || (chunk.write_empty && out.parts == 0) {
            let key = target.layout.snapshot_key(
                &schema.id,
                target.meta.snapshot_id,
                chunk.first_part + out.parts,
            );
            target.output.put(&key, part.finish()?).await?;
            failpoint::pass(failpoint::PART_PUT);
            out.parts += 1;
        }
        Ok(out)
    }
}

/// One snapshot part file being built.
pub struct Part {
    builder: TableBatchBuilder,
    writer: ParquetFileWriter<Vec<u8>>,
    pub rows: usize,
}

impl Part {
    pub fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(Part {
            builder: TableBatchBuilder::new(schema.clone()),
            writer: ParquetFileWriter::new(Vec::new(), schema)?,
            rows: 0,
        })
    }

    pub fn push(&mut self, meta: &RowMeta<'_>, values: &[Value]) -> Result<()> {
        self.builder.push(meta, values)?;
        self.rows += 1;
        if self.builder.len() >= ROW_GROUP_ROWS {
            let batch = self.builder.finish()?;
            self.writer.write(&batch)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Vec<u8>> {
        if !self.builder.is_empty() {
            let batch = self.builder.finish()?;
            self.writer.write(&batch)?;
        }
        self.writer.finish()
    }
}

pub fn progress_bar(table: &TableId, estimate: u64, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(estimate.max(1));
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {human_pos}/{human_len} rows  {rate} rows/s  ETA {eta}",
    )
    .map(|s| {
        s.progress_chars("=> ").with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", indicatif::HumanCount(state.per_sec() as u64));
            },
        )
    });
    if let Ok(s) = style {
        bar.set_style(s);
    }
    bar.set_prefix(table.to_string());
    bar
}
