//! Preflight checks for a PostgreSQL source. Each failure says how to fix it.

use tokio_postgres::Client;

use crate::change::TableId;
use crate::error::{Error, Result};
use crate::source::postgres::catalog;

pub use crate::source::{Finding, Level};

/// Fails with a configuration error unless `wal_level = logical`.
pub async fn require_logical_wal(client: &Client) -> Result<()> {
    let level: String = client.query_one("show wal_level", &[]).await?.get(0);
    if level != "logical" {
        return Err(Error::config(wal_level_fix(&level)));
    }
    Ok(())
}

fn wal_level_fix(level: &str) -> String {
    format!(
        "wal_level is '{level}', logical replication needs 'logical': run ALTER SYSTEM SET wal_level = logical \
         (or set it in postgresql.conf) and restart PostgreSQL"
    )
}

/// Runs every check. `tables`: the listed tables (resolved); `None` means every table of the
/// publication (or of the database when the publication does not exist yet).
pub async fn run(
    client: &Client,
    slot: &str,
    publication: &str,
    tables: Option<&[TableId]>,
) -> Result<Vec<Finding>> {
    let mut out = Vec::new();

    let level: String = client.query_one("show wal_level", &[]).await?.get(0);
    out.push(if level == "logical" {
        Finding::new("wal_level", Level::Ok, "wal_level = logical")
    } else {
        Finding::new("wal_level", Level::Error, wal_level_fix(&level))
    });

    let row = client
        .query_one(
            "select current_setting('max_replication_slots')::int, \
                    (select count(*) from pg_replication_slots)::int, \
                    current_setting('max_wal_senders')::int, \
                    (select count(*) from pg_stat_replication)::int, \
                    exists(select 1 from pg_replication_slots where slot_name = $1)",
            &[&slot],
        )
        .await?;
    let (max_slots, used_slots, max_senders, used_senders, have_slot): (i32, i32, i32, i32, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    out.push(if have_slot || used_slots < max_slots {
        Finding::new(
            "replication_slots",
            Level::Ok,
            format!("{used_slots} of {max_slots} replication slots used{}", if have_slot { " (ours exists)" } else { "" }),
        )
    } else {
        Finding::new(
            "replication_slots",
            Level::Error,
            format!(
                "all {max_slots} replication slots are in use: drop an unused one (SELECT pg_drop_replication_slot('name')) \
                 or raise max_replication_slots and restart PostgreSQL"
            ),
        )
    });
    out.push(if used_senders < max_senders {
        Finding::new("wal_senders", Level::Ok, format!("{used_senders} of {max_senders} WAL senders used"))
    } else {
        Finding::new(
            "wal_senders",
            Level::Error,
            format!("all {max_senders} WAL senders are busy: raise max_wal_senders and restart PostgreSQL"),
        )
    });

    let row = client
        .query_one("select rolreplication or rolsuper, current_user::text from pg_roles where rolname = current_user", &[])
        .await?;
    let (can_replicate, user): (bool, String) = (row.get(0), row.get(1));
    out.push(if can_replicate {
        Finding::new(
            "replication_privilege",
            Level::Ok,
            format!("role {user} may replicate"),
        )
    } else {
        Finding::new(
            "replication_privilege",
            Level::Error,
            format!(
                "role {user} lacks the REPLICATION attribute: run ALTER ROLE {user} REPLICATION"
            ),
        )
    });

    let keep: String = client
        .query_one("show max_slot_wal_keep_size", &[])
        .await?
        .get(0);
    if keep == "-1" {
        out.push(Finding::new(
            "max_slot_wal_keep_size",
            Level::Warning,
            "max_slot_wal_keep_size = -1: a stopped pipeline can retain WAL until the disk fills; \
             set it (e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '50GB') and reload",
        ));
    }

    // Without a table list, a table without a replica identity is left out (not an error).
    let listed = tables.is_some();
    let mut tables = tables.map(<[TableId]>::to_vec).unwrap_or_default();
    if !listed {
        tables = catalog::publication_tables(client, publication).await?;
    }
    if !listed && tables.is_empty() {
        let rows = client
            .query(
                "select n.nspname::text, c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                 where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') \
                 and n.nspname not like 'pg_toast%' order by 1, 2",
                &[],
            )
            .await?;
        tables = rows
            .iter()
            .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
    }
    let version = catalog::server_version(client).await?;
    let pub_exists = client
        .query_opt(
            "select 1 from pg_publication where pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    let gencols = catalog::publishes_generated(client, publication).await?;
    for t in &tables {
        if let Some(f) =
            generated_columns_finding(client, t, publication, version, pub_exists, gencols).await?
        {
            out.push(f);
        }
        let row = client
            .query_opt(
                "select c.relreplident::text, exists(select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary), \
                 has_table_privilege(c.oid, 'select') \
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = $1 and c.relname = $2",
                &[&t.schema, &t.name],
            )
            .await?;
        let Some(row) = row else {
            out.push(Finding::new(
                "table",
                Level::Error,
                format!("table {t} does not exist: fix source.tables"),
            ));
            continue;
        };
        let (ident, has_pk, can_select): (String, bool, bool) =
            (row.get(0), row.get(1), row.get(2));
        let q = catalog::quote_table(t);
        if !can_select {
            out.push(Finding::new(
                "table",
                Level::Error,
                format!("{t}: no SELECT privilege: GRANT SELECT ON {q} TO <user>"),
            ));
        }
        match (ident.as_str(), has_pk) {
            ("n", _) | ("d", false) if !listed => out.push(Finding::new(
                "replica_identity",
                Level::Warning,
                format!("{t} has no replica identity, so it is not captured (publishing it would make PostgreSQL refuse the application's UPDATE/DELETE on it); to capture it, add a primary key or run ALTER TABLE {q} REPLICA IDENTITY FULL"),
            )),
            ("n", _) => out.push(Finding::new(
                "replica_identity",
                Level::Error,
                format!("{t} has REPLICA IDENTITY NOTHING: updates and deletes cannot be captured; run ALTER TABLE {q} REPLICA IDENTITY DEFAULT (with a primary key) or FULL"),
            )),
            ("d", false) => out.push(Finding::new(
                "primary_key",
                Level::Error,
                format!("{t} has no primary key: PostgreSQL will reject its UPDATE/DELETE while published; add a primary key or run ALTER TABLE {q} REPLICA IDENTITY FULL"),
            )),
            ("f", false) => out.push(Finding::new(
                "primary_key",
                Level::Warning,
                format!("{t} has no primary key (REPLICA IDENTITY FULL): changes are captured, but a current-state view needs a key"),
            )),
            _ => out.push(Finding::new("table", Level::Ok, format!("{t}: ok"))),
        }
    }
    Ok(out)
}

/// Stored generated columns (issue 11 item 2): before PostgreSQL 18 pgoutput never sends them,
/// so the output leaves them out (snapshot included); on 18 the publication must publish them
/// (`publish_generated_columns = stored`), or PostgreSQL refuses the application's UPDATEs on a
/// `REPLICA IDENTITY FULL` table that has one while it is published.
async fn generated_columns_finding(
    client: &Client,
    t: &TableId,
    publication: &str,
    version: i32,
    pub_exists: bool,
    gencols: bool,
) -> Result<Option<Finding>> {
    let row = client
        .query_opt(
            "select c.relreplident::text, array(select a.attname::text from pg_attribute a \
               where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped and a.attgenerated = 's' order by a.attnum) \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = $1 and c.relname = $2",
            &[&t.schema, &t.name],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (ident, cols): (String, Vec<String>) = (row.get(0), row.get(1));
    if cols.is_empty() {
        return Ok(None);
    }
    let cols = cols.join(", ");
    let q = catalog::quote_ident(publication);
    Ok(Some(if version < 180_000 {
        Finding::new(
            "generated_columns",
            Level::Warning,
            format!(
                "{t}: stored generated column(s) {cols} are not captured: PostgreSQL before 18 never streams them, so the snapshot leaves them out too (PostgreSQL 18 can publish them)"
            ),
        )
    } else if gencols || !pub_exists {
        Finding::new(
            "generated_columns",
            Level::Ok,
            format!(
                "{t}: stored generated column(s) {cols} are captured (publish_generated_columns = stored)"
            ),
        )
    } else if ident == "f" {
        Finding::new(
            "generated_columns",
            Level::Error,
            format!(
                "{t} is REPLICA IDENTITY FULL with stored generated column(s) {cols}, and publication {publication} does not publish them: PostgreSQL 18 refuses UPDATEs on it while it is published. Run ALTER PUBLICATION {q} SET (publish_generated_columns = stored) (tidemark run does it)"
            ),
        )
    } else {
        Finding::new(
            "generated_columns",
            Level::Warning,
            format!(
                "{t}: stored generated column(s) {cols} are not published by {publication}: run ALTER PUBLICATION {q} SET (publish_generated_columns = stored) (tidemark run does it) so that the stream carries them like the snapshot"
            ),
        )
    }))
}
