//! The initial snapshot: copies tables inside the replication slot's exported snapshot, so the
//! rows copied are exactly those committed before the slot's consistent point and the stream
//! continues with exactly the changes after it.
//!
//! Memory is bounded: rows stream from COPY into the shared part writer
//! ([`PartWriter`](crate::source::snapshot::PartWriter)). Tables with a single integer primary
//! key are copied in key-ordered chunks of one part each, so the snapshot driver
//! (`engine::snapshot`) records progress per part and resumes after a crash (see
//! `source::postgres::source` for how a resumed range hands over to the stream).

use futures_util::StreamExt;
use indicatif::ProgressBar;
use tokio_postgres::Client;

use crate::change::{SchemaRef, TableId, Value};
use crate::error::{Error, Result};
use crate::source::postgres::{catalog, copy_text, types};
use crate::source::snapshot::{Chunk, Copied, CopyTarget, PartWriter, TableCopier, progress_bar};
pub use crate::source::snapshot::{KeyPlan, SnapshotMeta};

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

/// One table copied inside an imported snapshot ([`import`]), with COPY.
pub struct PgCopier<'c> {
    client: &'c Client,
    schema: SchemaRef,
    /// The source names of `schema`'s columns, in order: what the stream publishes.
    columns: Vec<String>,
    plan: KeyPlan,
}

impl<'c> PgCopier<'c> {
    /// The table's columns as `publication` publishes them, and its chunking plan.
    pub async fn open(client: &'c Client, table: &TableId, publication: &str) -> Result<Self> {
        let (oid, schema, columns) = catalog::published_schema(client, table, publication).await?;
        let plan = KeyPlan::for_copy(&schema, &catalog::primary_key(client, oid).await?);
        Ok(PgCopier {
            client,
            schema,
            columns,
            plan,
        })
    }
}

impl TableCopier for PgCopier<'_> {
    fn plan(&self) -> &KeyPlan {
        &self.plan
    }

    async fn copy<'a>(
        &'a mut self,
        chunk: &'a Chunk,
        target: &'a CopyTarget<'a>,
    ) -> Result<Copied> {
        let schema = &self.schema;
        let table = &schema.id;
        // The published columns by their source names (output names may differ, see
        // TableSchema::with_output_names), in the schema's order.
        let columns = self
            .columns
            .iter()
            .map(|c| catalog::quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!(
            "copy (select {columns} from {}",
            catalog::quote_table(table)
        );
        if let KeyPlan::Integer { column, .. } = &self.plan {
            sql.push_str(&chunk.keyset_clause(&catalog::quote_ident(column)));
        }
        sql.push_str(") to stdout");
        let stream = self.client.copy_out(sql.as_str()).await?;
        futures_util::pin_mut!(stream);

        let mut parts = PartWriter::new(schema, chunk, target)?;
        let mut line = Vec::new();
        let mut fields = Vec::new();
        let mut values = Vec::with_capacity(schema.columns.len());
        while let Some(data) = stream.next().await {
            let data = data?;
            let mut rest: &[u8] = &data;
            while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
                line.extend_from_slice(&rest[..nl]);
                rest = &rest[nl + 1..];
                decode_line(schema, &line, &mut fields, &mut values)?;
                line.clear();
                parts.push(&self.plan, &values).await?;
            }
            line.extend_from_slice(rest);
        }
        if !line.is_empty() {
            return Err(Error::data(format!("COPY of {table} ended inside a row")));
        }
        parts.finish().await
    }

    /// Rows/s and ETA against the planner's row estimate.
    async fn progress(&mut self, done: u64, enabled: bool) -> Result<ProgressBar> {
        if !enabled {
            return Ok(ProgressBar::hidden());
        }
        let table = &self.schema.id;
        let estimate: f32 = self
            .client
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
