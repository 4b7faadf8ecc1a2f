//! What every source's initial snapshot shares: how a table is split into chunks, how rows
//! become part objects, and the progress bar.
//!
//! A part is built in memory only up to [`ROW_GROUP_ROWS`] rows of Arrow arrays at a time (then
//! encoded into the part's Parquet), and written as one object every `part_rows` rows.

use indicatif::{ProgressBar, ProgressStyle};

use crate::change::{ColumnType, RowMeta, SchemaRef, TableId, TableSchema, Value};
use crate::error::Result;
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
