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

/// Runs every check. `tables` empty means every table of the publication (or of the database
/// when the publication does not exist yet).
pub async fn run(
    client: &Client,
    slot: &str,
    publication: &str,
    tables: &[TableId],
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

    let mut tables = tables.to_vec();
    if tables.is_empty() {
        tables = catalog::publication_tables(client, publication).await?;
    }
    if tables.is_empty() {
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
    for t in &tables {
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
