//! The initial snapshot: copies tables inside the replication slot's exported snapshot, so the
//! rows copied are exactly those committed before the slot's consistent point and the stream
//! continues with exactly the changes after it.
//!
//! Memory is bounded: rows stream from COPY into Arrow builders, which are encoded into the
//! current part's Parquet every [`ROW_GROUP_ROWS`] rows; a part is written as an object every
//! `part_rows` rows. Tables with a single integer primary key are copied in key-ordered chunks
//! of one part each, so the pipeline can record progress per part and resume after a crash
//! (see `pipeline::postgres` for how a resumed range hands over to the stream).

use futures_util::StreamExt;
use indicatif::ProgressBar;
use tokio_postgres::Client;

use crate::change::{Op, RowMeta, SchemaRef, TableId, Value};
use crate::error::{Error, Result};
use crate::output::{Layout, ObjectOutput};
use crate::source::postgres::{catalog, copy_text, types};
pub use crate::source::snapshot::{KeyPlan, SnapshotMeta};
use crate::source::snapshot::{Part, progress_bar};

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

/// One COPY of a table range into part objects.
pub struct CopyRange<'a> {
    pub schema: &'a SchemaRef,
    /// The source names of `schema`'s columns, in order: what the stream publishes.
    pub columns: &'a [String],
    pub plan: &'a KeyPlan,
    /// Only rows whose integer key is above this (keyset pagination).
    pub after: Option<i64>,
    /// At most this many rows, in key order (one chunk). `None`: the whole range.
    pub limit: Option<usize>,
    pub part_rows: usize,
    /// Number of the first part written.
    pub first_part: u32,
    /// `_ord` of the first row.
    pub first_ord: u64,
    /// Write a part even when the range is empty (so an empty table has a snapshot file).
    pub write_empty: bool,
}

/// What a [`CopyRange`] wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Copied {
    pub rows: u64,
    pub parts: u32,
    /// Largest integer key copied.
    pub last_key: Option<i64>,
}

/// Copies a range of a table into `snapshot_id=<id>/part-NNNNN.parquet` objects. The client
/// must be inside an imported snapshot ([`import`]). Part keys depend only on part numbers, so
/// a replay overwrites the same keys.
pub async fn copy_range(
    client: &Client,
    r: &CopyRange<'_>,
    meta: &SnapshotMeta<'_>,
    layout: &Layout,
    output: &dyn ObjectOutput,
    bar: &ProgressBar,
) -> Result<Copied> {
    let schema = r.schema;
    let table = &schema.id;
    // The published columns by their source names (output names may differ, see
    // TableSchema::with_output_names), in the schema's order.
    let columns = r
        .columns
        .iter()
        .map(|c| catalog::quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "copy (select {columns} from {}",
        catalog::quote_table(table)
    );
    if let KeyPlan::Integer { column, .. } = r.plan {
        let key = catalog::quote_ident(column);
        if let Some(after) = r.after {
            sql.push_str(&format!(" where {key} > {after}"));
        }
        sql.push_str(&format!(" order by {key}"));
        if let Some(limit) = r.limit {
            sql.push_str(&format!(" limit {limit}"));
        }
    }
    sql.push_str(") to stdout");
    let stream = client.copy_out(sql.as_str()).await?;
    futures_util::pin_mut!(stream);

    let mut part = Part::new(schema)?;
    let mut out = Copied::default();
    let mut line = Vec::new();
    let mut fields = Vec::new();
    let mut values = Vec::with_capacity(schema.columns.len());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let mut rest: &[u8] = &chunk;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            decode_line(schema, &line, &mut fields, &mut values)?;
            line.clear();
            let m = RowMeta {
                op: Op::Snapshot,
                pos: meta.pos,
                ord: r.first_ord + out.rows,
                commit_ts: meta.taken_at,
                xid: None,
            };
            part.push(&m, &values)?;
            if let Some(k) = r.plan.key_of(&values) {
                out.last_key = Some(out.last_key.map_or(k, |l: i64| l.max(k)));
            }
            out.rows += 1;
            if part.rows == r.part_rows {
                let full = std::mem::replace(&mut part, Part::new(schema)?);
                let key = layout.snapshot_key(table, meta.snapshot_id, r.first_part + out.parts);
                output.put(&key, full.finish()?).await?;
                out.parts += 1;
            }
            if out.rows.is_multiple_of(4096) {
                bar.inc(4096);
            }
        }
        line.extend_from_slice(rest);
    }
    if !line.is_empty() {
        return Err(Error::data(format!("COPY of {table} ended inside a row")));
    }
    bar.inc(out.rows % 4096);
    if part.rows > 0 || (r.write_empty && out.parts == 0) {
        let key = layout.snapshot_key(table, meta.snapshot_id, r.first_part + out.parts);
        output.put(&key, part.finish()?).await?;
        out.parts += 1;
    }
    Ok(out)
}

/// A progress bar for one table's copy (hidden when `enabled` is false): rows/s and ETA
/// against the planner's row estimate.
pub async fn table_progress(
    client: &Client,
    table: &TableId,
    done: u64,
    enabled: bool,
) -> Result<ProgressBar> {
    if !enabled {
        return Ok(ProgressBar::hidden());
    }
    let estimate: f32 = client
        .query_one(
            "select greatest(reltuples, 0)::float4 from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await?
        .get(0);
    let bar = progress_bar(table, (estimate as u64).max(done), true);
    bar.set_position(done);
    Ok(bar)
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
