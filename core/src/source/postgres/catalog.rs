//! Catalog look-ups: table schemas (real primary keys, mapped types), publications and slots.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use crate::change::{Column, SchemaRef, TableId, TableSchema};
use crate::error::{Error, Result};
use crate::source::postgres::types::{self, PgTypeInfo};
use crate::table_name::{Dialect, TableName};

/// OIDs below this are built into PostgreSQL (`FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16384;

/// Resolves non-built-in type OIDs (and the element/base types they refer to) from `pg_type`.
pub async fn resolve_types(
    client: &Client,
    oids: impl IntoIterator<Item = u32>,
) -> Result<HashMap<u32, PgTypeInfo>> {
    let mut known: HashMap<u32, PgTypeInfo> = HashMap::new();
    let mut want: HashSet<u32> = oids
        .into_iter()
        .filter(|o| *o >= FIRST_NORMAL_OID)
        .collect();
    for _ in 0..4 {
        if want.is_empty() {
            break;
        }
        let list: Vec<u32> = want.drain().collect();
        for info in types::lookup_types(client, &list).await? {
            let refs = match &info.kind {
                types::PgTypeKind::Domain { base_oid, .. } => Some(*base_oid),
                types::PgTypeKind::Array { elem_oid } => Some(*elem_oid),
                _ => None,
            };
            if let Some(r) = refs.filter(|r| *r >= FIRST_NORMAL_OID && !known.contains_key(r)) {
                want.insert(r);
            }
            known.insert(info.oid, info);
        }
    }
    Ok(known)
}

/// Primary-key column names of a table (by OID), in key order. Empty when it has none.
pub async fn primary_key(client: &Client, rel_oid: u32) -> Result<Vec<String>> {
    let rows = client
        .query(
            "select a.attname::text from pg_index i \
             join lateral unnest(i.indkey) with ordinality k(attnum, n) on true \
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum \
             where i.indrelid = $1 and i.indisprimary order by k.n",
            &[&rel_oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Builds a schema from (name, type oid, typmod) columns, marking the real primary key.
pub async fn build_schema(
    client: &Client,
    rel_oid: u32,
    id: TableId,
    columns: &[(String, u32, i32)],
) -> Result<SchemaRef> {
    let infos = resolve_types(client, columns.iter().map(|c| c.1)).await?;
    let pk = primary_key(client, rel_oid).await?;
    let lookup = |oid: u32| infos.get(&oid).cloned();
    let columns = columns
        .iter()
        .map(|(name, oid, typmod)| {
            let (ty, source_type) = types::map_type(*oid, *typmod, &lookup);
            Column {
                name: name.clone(),
                ty,
                source_type,
                key: pk.iter().any(|k| k == name),
            }
        })
        .collect();
    Ok(Arc::new(TableSchema { id, columns }.with_output_names()))
}

/// The server's `server_version_num` (e.g. 150019, 180006).
pub async fn server_version(client: &Client) -> Result<i32> {
    let v: String = client
        .query_one("show server_version_num", &[])
        .await?
        .get(0);
    v.trim()
        .parse()
        .map_err(|_| Error::data(format!("server_version_num {v:?}")))
}

/// Whether the publication publishes stored generated columns (PostgreSQL 18+:
/// `publish_generated_columns = stored`); never before 18, where pgoutput does not send them.
pub async fn publishes_generated(client: &Client, publication: &str) -> Result<bool> {
    if server_version(client).await? < 180_000 {
        return Ok(false);
    }
    let row = client
        .query_opt(
            "select pubgencols::text = 's' from pg_publication where pubname = $1",
            &[&publication],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// The columns the stream sends for `table` through `publication`, with the table's OID and
/// the columns' source names, for the snapshot copy: the publication's column list (15+), less
/// generated columns unless the publication publishes them (stored, 18+), or a column list
/// names them. So the snapshot and the change files of a table have one column set.
pub async fn published_schema(
    client: &Client,
    table: &TableId,
    publication: &str,
) -> Result<(u32, SchemaRef, Vec<String>)> {
    let rows = client
        .query(
            "select c.oid, a.attname::text, a.atttypid, a.atttypmod, a.attgenerated::text from pg_class c \
             join pg_namespace n on n.oid = c.relnamespace \
             join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped \
             where n.nspname = $1 and c.relname = $2 order by a.attnum",
            &[&table.schema, &table.name],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Err(Error::config(format!(
            "table {table} does not exist (or has no columns)"
        )));
    };
    let oid: u32 = first.get(0);
    let version = server_version(client).await?;
    let listed: Option<Vec<String>> = if version >= 150_000 {
        client
            .query_opt(
                "select attnames::text[] from pg_publication_tables \
                 where pubname = $1 and schemaname = $2 and tablename = $3",
                &[&publication, &table.schema, &table.name],
            )
            .await?
            .and_then(|r| r.get(0))
    } else {
        None
    };
    // A column list given by the user (not every column): published as listed, generated
    // columns included (18+).
    let explicit = version >= 180_000
        && client
            .query_opt(
                "select pr.prattrs is not null from pg_publication_rel pr \
                 join pg_publication p on p.oid = pr.prpubid where p.pubname = $1 and pr.prrelid = $2",
                &[&publication, &oid],
            )
            .await?
            .is_some_and(|r| r.get(0));
    let generated_published = publishes_generated(client, publication).await?;
    let cols: Vec<(String, u32, i32)> = rows
        .iter()
        .filter(|r| {
            let name: String = r.get(1);
            let generated: String = r.get(4);
            let in_list = listed.as_ref().is_none_or(|l| l.contains(&name));
            let published_kind =
                generated.is_empty() || (generated == "s" && (generated_published || explicit));
            in_list && published_kind
        })
        .map(|r| (r.get(1), r.get(2), r.get(3)))
        .collect();
    let names = cols.iter().map(|c| c.0.clone()).collect();
    Ok((
        oid,
        build_schema(client, oid, table.clone(), &cols).await?,
        names,
    ))
}

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_table(t: &TableId) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name))
}

/// Resolves the configured table names against the catalog: each must name an existing table
/// exactly as PostgreSQL reads it (quoted parts exact, unquoted parts folded). A name that only
/// matches with its case kept fails with the quoted form to write instead.
pub async fn resolve_tables(client: &Client, names: &[TableName]) -> Result<Vec<TableId>> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let id = n.id("public");
        let exact = client
            .query_opt(
                "select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                 where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')",
                &[&id.schema, &id.name],
            )
            .await?;
        if exact.is_some() {
            out.push(id);
            continue;
        }
        let near: Vec<TableId> = client
            .query(
                "select n.nspname::text, c.relname::text from pg_class c \
                 join pg_namespace n on n.oid = c.relnamespace \
                 where lower(n.nspname) = lower($1) and lower(c.relname) = lower($2) \
                 and c.relkind in ('r', 'p') order by 1, 2",
                &[&id.schema, &id.name],
            )
            .await?
            .iter()
            .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        let hint = match near.as_slice() {
            [] => "check source.tables (schema.table; a bare name is in schema public)".to_string(),
            found => {
                let quoted: Vec<String> = found
                    .iter()
                    .map(|t| Dialect::Postgres.quote_table(t))
                    .collect();
                format!(
                    "did you mean {}? Unquoted names are folded to lower case, as in SQL: quote the parts whose case matters \
                     (--table '{}')",
                    quoted.join(" or "),
                    quoted[0]
                )
            }
        };
        return Err(Error::config(format!(
            "table {} does not exist (read as {}): {hint}",
            n.written,
            Dialect::Postgres.quote_table(&id)
        )));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The tables whose changes the stream carries for `tables` through `publication`: a
/// partitioned table's leaf partitions (as `pg_publication_tables` and pgoutput name them),
/// unless the publication exists and publishes via the partition root; other tables as they are.
pub async fn streamed_tables(
    client: &Client,
    tables: &[TableId],
    publication: &str,
) -> Result<Vec<TableId>> {
    let via_root = client
        .query_opt(
            "select pubviaroot from pg_publication where pubname = $1",
            &[&publication],
        )
        .await?
        .is_some_and(|r| r.get::<_, bool>(0));
    if via_root {
        return Ok(tables.to_vec());
    }
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let rows = client
            .query(
                "select n.nspname::text, c.relname::text from pg_partition_tree( \
                   (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                    where n.nspname = $1 and c.relname = $2)::regclass) p \
                 join pg_class c on c.oid = p.relid join pg_namespace n on n.oid = c.relnamespace \
                 where p.isleaf and c.relkind = 'r' order by 1, 2",
                &[&t.schema, &t.name],
            )
            .await?;
        if rows.is_empty() {
            out.push(t.clone());
        }
        out.extend(
            rows.iter()
                .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1))),
        );
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Every table a pipeline without a table list captures: permanent tables outside the system
/// schemas (partitions as themselves, as `FOR ALL TABLES` would), split into those with a
/// replica identity (a primary key, `REPLICA IDENTITY FULL` or `USING INDEX`) and the others,
/// each with its fix. Publishing a table without one would make PostgreSQL refuse the
/// application's UPDATE and DELETE on it.
pub async fn capturable_tables(client: &Client) -> Result<(Vec<TableId>, Vec<(TableId, String)>)> {
    let rows = client
        .query(
            "select n.nspname::text, c.relname::text, c.relreplident::text, \
             exists(select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary), \
             exists(select 1 from pg_index i where i.indrelid = c.oid and i.indisreplident) \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind = 'r' and c.relpersistence = 'p' and c.oid >= 16384 \
             and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%' \
             and n.nspname not like 'pg_temp%' order by 1, 2",
            &[],
        )
        .await?;
    let (mut ok, mut not) = (Vec::new(), Vec::new());
    for r in &rows {
        let t = TableId::new(r.get::<_, String>(0), r.get::<_, String>(1));
        let (ident, pk, index): (String, bool, bool) = (r.get(2), r.get(3), r.get(4));
        match (ident.as_str(), pk, index) {
            ("f", _, _) | ("d", true, _) | ("i", _, true) => ok.push(t),
            _ => {
                let q = quote_table(&t);
                not.push((
                    t,
                    format!("to capture it, add a primary key or run ALTER TABLE {q} REPLICA IDENTITY FULL, then `tidemark reset --drop-slot --yes` and run again for a snapshot that includes it"),
                ));
            }
        }
    }
    Ok((ok, not))
}

/// Creates the publication `FOR TABLE tables` when missing, or sets its table list when it
/// differs. Never creates a `FOR ALL TABLES` publication: it would make PostgreSQL refuse the
/// application's UPDATE/DELETE on every table without a replica identity. One made by an earlier
/// version is kept for a pipeline without a table list (`listed` false), with a warning.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[TableId],
    listed: bool,
) -> Result<()> {
    let row = client
        .query_opt(
            "select puballtables from pg_publication where pubname = $1",
            &[&publication],
        )
        .await?;
    let list = tables
        .iter()
        .map(quote_table)
        .collect::<Vec<_>>()
        .join(", ");
    let pubq = quote_ident(publication);
    let privilege_hint = |e: tokio_postgres::Error| {
        let base = Error::from(e);
        let msg = base.to_string();
        if msg.contains("must be owner")
            || msg.contains("superuser")
            || msg.contains("permission denied")
        {
            Error::config(format!(
                "{msg}. Create the publication as the tables' owner or a superuser: \
                 CREATE PUBLICATION {pubq} FOR TABLE {list}"
            ))
        } else {
            base
        }
    };
    match row {
        None => {
            if tables.is_empty() {
                return Err(Error::config("no table to capture: list source.tables"));
            }
            // 18+: stored generated columns are published too, like the snapshot copies them.
            // (Without it, PostgreSQL 18 refuses UPDATEs on a REPLICA IDENTITY FULL table with
            // one: its identity would contain unpublished columns.)
            let with = if server_version(client).await? >= 180_000 {
                " with (publish_generated_columns = stored)"
            } else {
                ""
            };
            let sql = format!("create publication {pubq} for table {list}{with}");
            client.batch_execute(&sql).await.map_err(privilege_hint)?;
            tracing::info!(publication, tables = tables.len(), "created publication");
        }
        Some(r) => {
            let all: bool = r.get(0);
            if all && !listed {
                tracing::warn!(
                    publication,
                    "publication is FOR ALL TABLES (made by an earlier tidemark): PostgreSQL refuses UPDATE and DELETE \
                     on every table without a replica identity while it exists. `tidemark reset --drop-slot --yes` and \
                     run again: the new publication lists only the tables that have one"
                );
                return Ok(());
            }
            let mut have = publication_tables(client, publication).await?;
            have.sort();
            let mut want = tables.to_vec();
            want.sort();
            if all || have != want {
                if all {
                    return Err(Error::config(format!(
                        "publication {publication} is FOR ALL TABLES but source.tables lists tables: drop it or use another publication name"
                    )));
                }
                client
                    .batch_execute(&format!("alter publication {pubq} set table {list}"))
                    .await
                    .map_err(privilege_hint)?;
                tracing::info!(publication, "updated publication tables");
            }
            publish_generated_columns(client, publication)
                .await
                .map_err(|e| Error::config(format!("{e}. Run as the publication's owner: ALTER PUBLICATION {pubq} SET (publish_generated_columns = stored)")))?;
        }
    }
    Ok(())
}

/// PostgreSQL 18+: makes an existing publication publish stored generated columns (made by
/// an earlier tidemark, or by hand), which also lifts 18's refusal of UPDATEs on
/// `REPLICA IDENTITY FULL` tables with such a column. The stream then carries those columns
/// from here on (a new column for the output, as after an ALTER TABLE).
pub async fn publish_generated_columns(client: &Client, publication: &str) -> Result<()> {
    if server_version(client).await? < 180_000 || publishes_generated(client, publication).await? {
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "alter publication {} set (publish_generated_columns = stored)",
            quote_ident(publication)
        ))
        .await?;
    tracing::info!(
        publication,
        "publication now publishes stored generated columns"
    );
    Ok(())
}

/// The tables a publication publishes.
pub async fn publication_tables(client: &Client, publication: &str) -> Result<Vec<TableId>> {
    let rows = client
        .query(
            "select schemaname::text, tablename::text from pg_publication_tables where pubname = $1 order by 1, 2",
            &[&publication],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// Facts about a replication slot, for `status` and start-up.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<String>,
    pub wal_retained_bytes: Option<i64>,
    pub ack_lag_bytes: Option<i64>,
    pub wal_status: Option<String>,
}

pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>> {
    let row = client
        .query_opt(
            "select active_pid, confirmed_flush_lsn::text, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, wal_status \
             from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotInfo {
        active_pid: r.get(0),
        confirmed_flush: r.get(1),
        wal_retained_bytes: r.get(2),
        ack_lag_bytes: r.get(3),
        wal_status: r.get(4),
    }))
}
