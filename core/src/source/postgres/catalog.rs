//! Catalog look-ups: table schemas (real primary keys, mapped types), publications and slots.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use crate::change::{Column, SchemaRef, TableId, TableSchema};
use crate::error::{Error, Result};
use crate::source::postgres::types::{self, PgTypeInfo};

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

/// The table's current columns and OID, for the snapshot copy.
pub async fn table_schema(client: &Client, table: &TableId) -> Result<(u32, SchemaRef)> {
    let rows = client
        .query(
            "select c.oid, a.attname::text, a.atttypid, a.atttypmod from pg_class c \
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
    let cols: Vec<(String, u32, i32)> = rows
        .iter()
        .map(|r| (r.get(1), r.get(2), r.get(3)))
        .collect();
    Ok((oid, build_schema(client, oid, table.clone(), &cols).await?))
}

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_table(t: &TableId) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name))
}

/// Creates the publication when missing, or sets its table list when it differs.
/// `tables` empty: `FOR ALL TABLES`.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[TableId],
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
                 CREATE PUBLICATION {pubq} FOR {}",
                if tables.is_empty() {
                    "ALL TABLES".to_string()
                } else {
                    format!("TABLE {list}")
                }
            ))
        } else {
            base
        }
    };
    match row {
        None => {
            let sql = if tables.is_empty() {
                format!("create publication {pubq} for all tables")
            } else {
                format!("create publication {pubq} for table {list}")
            };
            client.batch_execute(&sql).await.map_err(privilege_hint)?;
            tracing::info!(publication, "created publication");
        }
        Some(r) => {
            let all: bool = r.get(0);
            if tables.is_empty() {
                if !all {
                    return Err(Error::config(format!(
                        "publication {publication} exists without FOR ALL TABLES but no tables are configured: list source.tables"
                    )));
                }
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
        }
    }
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
