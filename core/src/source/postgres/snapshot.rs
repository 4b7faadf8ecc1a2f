//! The initial snapshot: copies tables inside the replication slot's exported snapshot, so the
//! rows copied are exactly those committed before the slot's consistent point and the stream
//! continues with exactly the changes after it.
//!
//! Memory is bounded: rows stream from COPY into Arrow builders, which are encoded into the
//! current part's Parquet every [`ROW_GROUP_ROWS`] rows; a part is written as an object every
//! `part_rows` rows.

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::Client;

use crate::change::{Op, RowMeta, SchemaRef, TableId, Value};
use crate::error::{Error, Result};
use crate::output::{Layout, ObjectOutput};
use crate::parquet::{ParquetFileWriter, TableBatchBuilder};
use crate::source::postgres::{catalog, copy_text, types};

const ROW_GROUP_ROWS: usize = 65_536;

/// Where a table's snapshot rows sit in source order.
pub struct SnapshotMeta<'a> {
    pub snapshot_id: &'a str,
    /// `_pos` of every snapshot row: the consistent point, sortable.
    pub pos: &'a str,
    /// `_commit_ts` of every snapshot row: when the snapshot was taken (UNIX micros).
    pub taken_at: i64,
}

/// Opens the snapshot transaction on `client`. Must run before the replication connection
/// issues its next command.
pub async fn import(client: &Client, snapshot_name: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "begin isolation level repeatable read read only; set transaction snapshot '{}'",
            snapshot_name.replace('\'', "''")
        ))
        .await?;
    Ok(())
}

/// Copies one table; returns the number of rows. The client must be inside [`import`]'s
/// transaction. Objects are `snapshot_id=<id>/part-NNNNN.parquet`; a replay writes the same keys.
pub async fn copy_table(
    client: &Client,
    table: &TableId,
    meta: &SnapshotMeta<'_>,
    part_rows: usize,
    layout: &Layout,
    output: &dyn ObjectOutput,
    progress: bool,
) -> Result<u64> {
    let (oid, schema) = catalog::table_schema(client, table).await?;
    let estimate: f32 = client
        .query_one(
            "select greatest(reltuples, 0)::float4 from pg_class where oid = $1",
            &[&oid],
        )
        .await?
        .get(0);
    let bar = progress_bar(table, estimate as u64, progress);
    let cols = schema
        .columns
        .iter()
        .map(|c| catalog::quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "copy (select {cols} from {}) to stdout",
        catalog::quote_table(table)
    );
    let stream = client.copy_out(sql.as_str()).await?;
    futures_util::pin_mut!(stream);

    let mut part = Part::new(&schema)?;
    let mut part_no = 0u32;
    let mut rows = 0u64;
    let mut line = Vec::new();
    let mut fields = Vec::new();
    let mut values = Vec::with_capacity(schema.columns.len());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let mut rest: &[u8] = &chunk;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            decode_line(&schema, &line, &mut fields, &mut values)?;
            let m = RowMeta {
                op: Op::Snapshot,
                pos: meta.pos,
                ord: rows,
                commit_ts: meta.taken_at,
                xid: None,
            };
            part.push(&m, &values)?;
            line.clear();
            rows += 1;
            if part.rows == part_rows {
                let full = std::mem::replace(&mut part, Part::new(&schema)?);
                output
                    .put(
                        &layout.snapshot_key(table, meta.snapshot_id, part_no),
                        full.finish()?,
                    )
                    .await?;
                part_no += 1;
            }
            if rows.is_multiple_of(4096) {
                bar.set_position(rows);
            }
        }
        line.extend_from_slice(rest);
    }
    if !line.is_empty() {
        return Err(Error::data(format!("COPY of {table} ended inside a row")));
    }
    // Always write the last part, even empty: an empty table still has a snapshot.
    if part.rows > 0 || part_no == 0 {
        output
            .put(
                &layout.snapshot_key(table, meta.snapshot_id, part_no),
                part.finish()?,
            )
            .await?;
    }
    bar.finish_and_clear();
    tracing::info!(table = %table, rows, parts = part_no + 1, "snapshot copied");
    Ok(rows)
}

fn decode_line(
    schema: &SchemaRef,
    line: &[u8],
    fields: &mut Vec<Option<Vec<u8>>>,
    values: &mut Vec<Value>,
) -> Result<()> {
    copy_text::split_copy_line(line, fields)?;
    if fields.len() != schema.columns.len() {
        return Err(Error::data(format!(
            "COPY row of {} has {} fields, expected {}",
            schema.id,
            fields.len(),
            schema.columns.len()
        )));
    }
    values.clear();
    for (f, col) in fields.iter().zip(&schema.columns) {
        values.push(match f {
            None => Value::Null,
            Some(text) => types::parse_text(&col.ty, text)
                .map_err(|e| e.context(format!("{}.{}", schema.id, col.name)))?,
        });
    }
    Ok(())
}

/// One snapshot part file being built.
struct Part {
    builder: TableBatchBuilder,
    writer: ParquetFileWriter<Vec<u8>>,
    rows: usize,
}

impl Part {
    fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(Part {
            builder: TableBatchBuilder::new(schema.clone()),
            writer: ParquetFileWriter::new(Vec::new(), schema)?,
            rows: 0,
        })
    }

    fn push(&mut self, meta: &RowMeta<'_>, values: &[Value]) -> Result<()> {
        self.builder.push(meta, values)?;
        self.rows += 1;
        if self.builder.len() >= ROW_GROUP_ROWS {
            let batch = self.builder.finish()?;
            self.writer.write(&batch)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<u8>> {
        if !self.builder.is_empty() {
            let batch = self.builder.finish()?;
            self.writer.write(&batch)?;
        }
        self.writer.finish()
    }
}

fn progress_bar(table: &TableId, estimate: u64, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(estimate.max(1));
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(s) = style {
        bar.set_style(s);
    }
    bar.set_prefix(table.to_string());
    bar
}
