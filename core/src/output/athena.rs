//! Athena/Glue DDL for a pipeline's output, and the current-state view.
//!
//! Tables are discovered from the output itself, so the DDL describes exactly what was
//! written: every `<root>/<schema>.<table>/` folder, its snapshot ids and its change
//! partitions. Columns come from the `tidemark.schema` footer metadata of the newest objects
//! (the first part of each snapshot, the [`SCHEMA_SAMPLE`] newest change objects), merged by
//! name in order of appearance, the newest type and key flags winning: a column added by an
//! `ALTER TABLE` appears once an object carrying it was written (run `ddl` again after DDL).
//!
//! Per table: `<name>_changes` (partitioned by `dt`, date projection), `<name>_snapshot`
//! (partitioned by `snapshot_id`, enum projection of the snapshots found: run `ddl` again after
//! a re-snapshot) and the view `<name>_current` (see [`current_view`]).

use std::collections::BTreeMap;

use crate::change::{Column, ColumnType, TableSchema};
use crate::error::{Error, Result};
use crate::output::{Layout, ObjectOutput};
use crate::parquet::SCHEMA_METADATA_KEY;

/// How many of a table's newest change objects are read for its columns.
pub const SCHEMA_SAMPLE: usize = 8;
/// How many bytes from an object's end are read first for its footer (the footer of a wide
/// table may need a second, exact read).
const FOOTER_GUESS: usize = 64 * 1024;

/// The SQL dialect of the statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Glue/Athena DDL (Hive) for the tables, Trino SQL for the view.
    Athena,
    /// DuckDB views over `read_parquet` with the same view logic: runs locally over the same
    /// output (the local directory or S3 through httpfs).
    DuckDb,
}

impl std::str::FromStr for Dialect {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "athena" => Ok(Dialect::Athena),
            "duckdb" => Ok(Dialect::DuckDb),
            other => Err(Error::config(format!(
                "unknown SQL dialect {other:?}: use athena or duckdb"
            ))),
        }
    }
}

/// One captured table as found in the output.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundTable {
    /// Columns merged over the objects read (see the module docs).
    pub schema: TableSchema,
    /// `<root>/<schema>.<table>/` (the escaped folder name).
    pub prefix: String,
    /// Snapshot ids as they appear in keys (`snapshot_id=<id>`), sorted.
    pub snapshots: Vec<String>,
    /// The earliest `dt` partition of the changes, when any.
    pub first_dt: Option<String>,
    pub has_changes: bool,
}

/// Finds the captured tables of the pipeline whose keys `layout` builds.
pub async fn discover(output: &dyn ObjectOutput, layout: &Layout) -> Result<Vec<FoundTable>> {
    let root = format!("{}/", layout.root());
    let keys = output.list(&root).await?;
    struct Seen {
        snapshot_parts: BTreeMap<String, String>,
        changes: Vec<String>,
        first_dt: Option<String>,
    }
    let mut by_dir: BTreeMap<String, Seen> = BTreeMap::new();
    for key in &keys {
        let Some(rest) = key.strip_prefix(&root) else {
            continue;
        };
        let mut parts = rest.split('/');
        let (Some(dir), Some(kind), Some(partition), Some(file)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if dir.starts_with('_') || !file.ends_with(".parquet") {
            continue;
        }
        let seen = by_dir.entry(dir.to_string()).or_insert_with(|| Seen {
            snapshot_parts: BTreeMap::new(),
            changes: Vec::new(),
            first_dt: None,
        });
        match (kind, partition.split_once('=')) {
            ("snapshot", Some(("snapshot_id", id))) => {
                // Keys are sorted: the first key of a snapshot is its first part.
                seen.snapshot_parts
                    .entry(id.to_string())
                    .or_insert_with(|| key.clone());
            }
            ("changes", Some(("dt", dt))) => {
                if seen.first_dt.is_none() {
                    seen.first_dt = Some(dt.to_string());
                }
                seen.changes.push(key.clone());
            }
            _ => {}
        }
    }
    let mut found = Vec::with_capacity(by_dir.len());
    for (dir, seen) in by_dir {
        let sample = seen.snapshot_parts.values().chain(
            seen.changes
                .iter()
                .skip(seen.changes.len().saturating_sub(SCHEMA_SAMPLE)),
        );
        let mut merged: Option<TableSchema> = None;
        for key in sample {
            let schema = read_schema(output, key).await?;
            merged = Some(match merged {
                None => schema,
                Some(m) => merge(m, schema),
            });
        }
        let Some(schema) = merged else {
            continue;
        };
        found.push(FoundTable {
            schema,
            prefix: format!("{root}{dir}/"),
            snapshots: seen.snapshot_parts.into_keys().collect(),
            first_dt: seen.first_dt,
            has_changes: !seen.changes.is_empty(),
        });
    }
    Ok(found)
}

/// The [`TableSchema`] a tidemark Parquet object carries in its footer.
async fn read_schema(output: &dyn ObjectOutput, key: &str) -> Result<TableSchema> {
    let not_ours = |why: &str| Error::data(format!("{key}: {why}; is it a tidemark object?"));
    let mut tail = output
        .get_tail(key, FOOTER_GUESS)
        .await?
        .ok_or_else(|| Error::transient(format!("{key} disappeared while listing")))?;
    let footer_len = |tail: &[u8]| -> Result<usize> {
        let n = tail.len();
        if n < 12 || &tail[n - 4..] != b"PAR1" {
            return Err(not_ours("not a Parquet file"));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&tail[n - 8..n - 4]);
        Ok(u32::from_le_bytes(len) as usize)
    };
    let mut len = footer_len(&tail)?;
    if len + 8 > tail.len() {
        tail = output
            .get_tail(key, len + 8)
            .await?
            .ok_or_else(|| Error::transient(format!("{key} disappeared while listing")))?;
        // Read again: the object may have changed between the two reads.
        len = footer_len(&tail)?;
    }
    let end = tail.len() - 8;
    let footer = end
        .checked_sub(len)
        .and_then(|start| tail.get(start..end))
        .ok_or_else(|| not_ours("the footer is longer than the file"))?;
    let md = ::parquet::file::metadata::ParquetMetaDataReader::decode_metadata(footer)?;
    let json = md
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == SCHEMA_METADATA_KEY))
        .and_then(|kv| kv.value.clone())
        .ok_or_else(|| not_ours("no tidemark.schema in the footer"))?;
    serde_json::from_str(&json).map_err(|e| not_ours(&format!("unreadable tidemark.schema: {e}")))
}

/// `older`'s columns, then the columns only `newer` has; a column in both takes `newer`'s
/// type and key flag.
fn merge(older: TableSchema, newer: TableSchema) -> TableSchema {
    let mut columns: Vec<Column> = older
        .columns
        .into_iter()
        .map(|c| {
            newer
                .columns
                .iter()
                .find(|n| n.name == c.name)
                .cloned()
                .unwrap_or(c)
        })
        .collect();
    for c in newer.columns {
        if !columns.iter().any(|o| o.name == c.name) {
            columns.push(c);
        }
    }
    TableSchema {
        id: newer.id,
        columns,
    }
}

/// The Athena (Hive DDL) type of a column type (see docs/types.md).
pub fn athena_type(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Bool => "boolean".into(),
        ColumnType::Int16 => "smallint".into(),
        ColumnType::Int32 => "int".into(),
        ColumnType::Int64 => "bigint".into(),
        ColumnType::Float32 => "float".into(),
        ColumnType::Float64 => "double".into(),
        ColumnType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
        ColumnType::Text => "string".into(),
        ColumnType::Bytes => "binary".into(),
        ColumnType::Date => "date".into(),
        ColumnType::Timestamp | ColumnType::TimestampTz => "timestamp".into(),
        ColumnType::List(inner) => format!("array<{}>", athena_type(inner)),
    }
}

/// The Glue name of a table's objects: `<schema>_<table>`, lower case, anything but
/// `[a-z0-9_]` replaced by `_` (Glue folds case and allows no other characters).
pub fn glue_name(table: &TableSchema) -> String {
    format!("{}_{}", table.id.schema, table.id.name)
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where the statements point: the output's URL (`s3://bucket/prefix` or `file:///dir`).
pub struct Target<'a> {
    pub database: &'a str,
    pub output_url: &'a str,
    pub dialect: Dialect,
}

impl Target<'_> {
    fn location(&self, key_prefix: &str) -> String {
        let base = self.output_url.trim_end_matches('/');
        match self.dialect {
            Dialect::DuckDb => match base.strip_prefix("file://") {
                Some(path) => format!("{path}/{key_prefix}"),
                None => format!("{base}/{key_prefix}"),
            },
            Dialect::Athena => format!("{base}/{key_prefix}"),
        }
    }
    fn name(&self, t: &FoundTable, suffix: &str) -> String {
        let n = format!("{}_{suffix}", glue_name(&t.schema));
        match self.dialect {
            Dialect::Athena => format!("\"{}\".\"{n}\"", self.database),
            Dialect::DuckDb => format!("\"{n}\""),
        }
    }
}

/// Every statement for the found tables, `;`-terminated, in dependency order.
pub fn statements(target: &Target<'_>, tables: &[FoundTable], today: &str) -> Vec<String> {
    let mut out = Vec::new();
    if target.dialect == Dialect::Athena {
        out.push(format!(
            "CREATE DATABASE IF NOT EXISTS `{}`;",
            target.database
        ));
    }
    for t in tables {
        match target.dialect {
            Dialect::Athena => {
                out.push(athena_changes(target, t, today));
                if !t.snapshots.is_empty() {
                    out.push(athena_snapshot(target, t));
                }
            }
            Dialect::DuckDb => out.extend(duckdb_tables(target, t)),
        }
        match current_view(target, t) {
            Some(view) => out.push(view),
            None => out.push(format!(
                "-- {}: no primary key, so no current-state view. {} holds its whole history with the old image of\n\
                 -- every UPDATE: replay rows in (_pos, _ord) order, 'R'/'I'/'U' adding their row and 'D' removing one\n\
                 -- equal row ('T' empties the table), to rebuild it as a multiset (duplicates included).",
                t.schema.id,
                target.name(t, "changes")
            )),
        }
    }
    out
}

fn column_ddl(c: &Column) -> String {
    let mut comment = c.source_type.clone();
    if c.key {
        comment.push_str(", primary key");
    }
    format!(
        "  `{}` {} COMMENT '{}'",
        c.name.to_lowercase().replace('`', "``"),
        athena_type(&c.ty),
        comment_text(&comment)
    )
}

/// Text safe inside a Hive string literal (whose quote escaping differs from SQL's): quotes
/// and backslashes dropped.
fn comment_text(s: &str) -> String {
    s.replace(['\'', '\\'], "")
}

fn meta_columns_ddl() -> [&'static str; 6] {
    [
        "  `_op` string COMMENT 'R snapshot read, I insert, U update, D delete, T truncate'",
        "  `_pos` string COMMENT 'source position of the transaction, sortable as text'",
        "  `_ord` bigint COMMENT 'row ordinal in its transaction; (_pos, _ord) orders every change'",
        "  `_commit_ts` timestamp COMMENT 'commit time (UTC)'",
        "  `_xid` bigint COMMENT 'source transaction id'",
        "  `_unavailable_cols` array<string> COMMENT 'columns whose value is not in this row'",
    ]
}

fn columns_ddl(t: &FoundTable) -> String {
    meta_columns_ddl()
        .into_iter()
        .map(String::from)
        .chain(t.schema.columns.iter().map(column_ddl))
        .collect::<Vec<_>>()
        .join(",\n")
}

fn athena_changes(target: &Target<'_>, t: &FoundTable, today: &str) -> String {
    let start = t.first_dt.as_deref().unwrap_or(today);
    external_table(
        target,
        t,
        ("changes", "dt"),
        &[
            ("type", "date".into()),
            ("format", "yyyy-MM-dd".into()),
            ("range", format!("{start},NOW")),
            ("interval", "1".into()),
            ("interval.unit", "DAYS".into()),
        ],
    )
}

fn athena_snapshot(target: &Target<'_>, t: &FoundTable) -> String {
    external_table(
        target,
        t,
        ("snapshot", "snapshot_id"),
        &[("type", "enum".into()), ("values", t.snapshots.join(","))],
    )
}

/// `CREATE EXTERNAL TABLE` for the `kind` folder of a table (`changes`, `snapshot`),
/// partitioned by one string column with partition projection `projection.<partition>.*`.
fn external_table(
    target: &Target<'_>,
    t: &FoundTable,
    (kind, partition): (&str, &str),
    projection: &[(&str, String)],
) -> String {
    let location = target.location(&format!("{}{kind}/", t.prefix));
    let mut props = vec!["  'projection.enabled' = 'true'".to_string()];
    props.extend(
        projection
            .iter()
            .map(|(k, v)| format!("  'projection.{partition}.{k}' = '{v}'")),
    );
    props.push(format!(
        "  'storage.location.template' = '{location}{partition}=${{{partition}}}/'"
    ));
    // Dropped first so that a second run updates columns and projected values: the table is
    // external and projected, so dropping it loses no data and no partitions.
    format!(
        "DROP TABLE IF EXISTS `{db}`.`{name}_{kind}`;\n\n\
         CREATE EXTERNAL TABLE `{db}`.`{name}_{kind}` (\n{cols}\n)\n\
         COMMENT 'tidemark {kind} of {id}'\n\
         PARTITIONED BY (`{partition}` string)\n\
         STORED AS PARQUET\n\
         LOCATION '{location}'\n\
         TBLPROPERTIES (\n{props}\n);",
        db = target.database,
        name = glue_name(&t.schema),
        cols = columns_ddl(t),
        id = comment_text(&t.schema.id.to_string()),
        props = props.join(",\n"),
    )
}

/// The DuckDB type of a column type (the same Parquet types as [`athena_type`]).
fn duckdb_type(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Bool => "BOOLEAN".into(),
        ColumnType::Int16 => "SMALLINT".into(),
        ColumnType::Int32 => "INTEGER".into(),
        ColumnType::Int64 => "BIGINT".into(),
        ColumnType::Float32 => "FLOAT".into(),
        ColumnType::Float64 => "DOUBLE".into(),
        ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
        ColumnType::Text => "VARCHAR".into(),
        ColumnType::Bytes => "BLOB".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Timestamp => "TIMESTAMP".into(),
        ColumnType::TimestampTz => "TIMESTAMPTZ".into(),
        ColumnType::List(inner) => format!("{}[]", duckdb_type(inner)),
    }
}

fn duckdb_tables(target: &Target<'_>, t: &FoundTable) -> Vec<String> {
    // Files written before a column was added (or after one was dropped) lack it: every view
    // gets all the table's columns, NULL where a file has none, as Athena reads them.
    let shape = t
        .schema
        .columns
        .iter()
        .map(|c| {
            format!(
                "NULL::{} AS \"{}\"",
                duckdb_type(&c.ty),
                c.name.replace('"', "\"\"")
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let read = |kind: &str| {
        format!(
            "SELECT * FROM read_parquet('{}*/*.parquet', hive_partitioning = true, hive_types_autocast = false, union_by_name = true) \
             UNION ALL BY NAME SELECT {shape} WHERE false",
            target
                .location(&format!("{}{kind}/", t.prefix))
                .replace('\'', "''")
        )
    };
    let (changes, snapshot) = (target.name(t, "changes"), target.name(t, "snapshot"));
    let mut out = Vec::new();
    match (t.has_changes, t.snapshots.is_empty()) {
        (true, false) => {
            out.push(format!(
                "CREATE OR REPLACE VIEW {changes} AS {};",
                read("changes")
            ));
            out.push(format!(
                "CREATE OR REPLACE VIEW {snapshot} AS {};",
                read("snapshot")
            ));
        }
        // read_parquet refuses a glob without files: an empty view with the other's columns.
        (true, true) => {
            out.push(format!(
                "CREATE OR REPLACE VIEW {changes} AS {};",
                read("changes")
            ));
            out.push(format!(
                "CREATE OR REPLACE VIEW {snapshot} AS SELECT * EXCLUDE (dt), NULL::VARCHAR AS snapshot_id FROM {changes} WHERE false;"
            ));
        }
        (false, _) => {
            out.push(format!(
                "CREATE OR REPLACE VIEW {snapshot} AS {};",
                read("snapshot")
            ));
            out.push(format!(
                "CREATE OR REPLACE VIEW {changes} AS SELECT * EXCLUDE (snapshot_id), NULL::VARCHAR AS dt FROM {snapshot} WHERE false;"
            ));
        }
    }
    out
}

/// The metadata columns the view reads (quoted: Trino identifiers may not start with `_`).
const META: &str = "\"_op\", \"_pos\", \"_ord\", \"_commit_ts\", \"_unavailable_cols\"";
/// The view's sort key `(_pos, _ord)` as one text (a source column of this name would clash).
const K: &str = "\"_tidemark_order\"";

/// The current state of a table with a primary key, as a view over its snapshot and changes:
///
/// 1. the latest snapshot (of the most recent `_commit_ts`) and the changes at or after its
///    position (older changes are already in it);
/// 2. rows at or before the last truncate (`T`) are dropped;
/// 3. per primary key, the last row by `(_pos, _ord)`: keys whose last operation is a delete are
///    left out;
/// 4. a column listed in `_unavailable_cols` of an update (PostgreSQL's unchanged TOAST value)
///    takes the value of the key's latest earlier row that has it, never from before the key's
///    latest insert or snapshot row.
///
/// `None` for a table without a primary key.
pub fn current_view(target: &Target<'_>, t: &FoundTable) -> Option<String> {
    let keys: Vec<&Column> = t.schema.key_columns().collect();
    if keys.is_empty() {
        return None;
    }
    let q = |name: &str| format!("\"{}\"", name.to_lowercase().replace('"', "\"\""));
    let (max_by, contains) = match target.dialect {
        Dialect::Athena => ("max_by", "contains"),
        // arg_max skips rows whose value is NULL; arg_max_null keeps them (as Trino's max_by).
        Dialect::DuckDb => ("arg_max_null", "list_contains"),
    };
    let data: Vec<String> = t.schema.columns.iter().map(|c| q(&c.name)).collect();
    let key_list = keys
        .iter()
        .map(|c| q(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let cols = data.join(", ");
    let picked: Vec<String> = t
        .schema
        .columns
        .iter()
        .map(|c| {
            let name = q(&c.name);
            if c.key {
                name
            } else {
                format!(
                    "{max_by}({name}, CASE WHEN \"_op\" IN ('I', 'R') OR \"_unavailable_cols\" IS NULL \
                     OR NOT {contains}(\"_unavailable_cols\", '{}') THEN {K} END) AS {name}",
                    c.name.replace('\'', "''")
                )
            }
        })
        .collect();
    let (snapshot, changes, view) = (
        target.name(t, "snapshot"),
        target.name(t, "changes"),
        target.name(t, "current"),
    );
    let snapshot_rows = if t.snapshots.is_empty() && target.dialect == Dialect::Athena {
        // No snapshot table: an empty relation with the changes' columns.
        format!("SELECT {cols}, {META} FROM {changes} WHERE false")
    } else {
        format!(
            "SELECT {cols}, {META} FROM {snapshot}\n    \
             WHERE \"snapshot_id\" = (SELECT {max_by}(\"snapshot_id\", \"_commit_ts\") FROM {snapshot})"
        )
    };
    Some(format!(
        "CREATE OR REPLACE VIEW {view} AS\n\
         WITH snap AS (\n    {snapshot_rows}\n),\n\
         history AS (\n    \
           SELECT * FROM snap\n    \
           UNION ALL\n    \
           SELECT {cols}, {META} FROM {changes}\n    \
           WHERE \"_pos\" >= coalesce((SELECT min(\"_pos\") FROM snap), '')\n),\n\
         keyed AS (\n    \
           SELECT *, \"_pos\" || '.' || lpad(CAST(\"_ord\" AS varchar), 20, '0') AS {K} FROM history\n),\n\
         live AS (\n    \
           SELECT * FROM keyed\n    \
           WHERE {K} > coalesce((SELECT max({K}) FROM keyed WHERE \"_op\" = 'T'), '')\n)\n\
         SELECT {picked},\n    \
           {max_by}(\"_op\", {K}) AS \"_op\", max(\"_pos\") AS \"_pos\", max(\"_commit_ts\") AS \"_commit_ts\"\n\
         FROM live\n\
         GROUP BY {key_list}\n\
         HAVING {max_by}(\"_op\", {K}) <> 'D';",
        picked = picked.join(",\n    "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::TableId;

    fn col(name: &str, ty: ColumnType, key: bool) -> Column {
        Column {
            name: name.into(),
            ty,
            source_type: "t".into(),
            key,
        }
    }

    fn table(columns: Vec<Column>) -> FoundTable {
        FoundTable {
            schema: TableSchema {
                id: TableId::new("public", "Orders"),
                columns,
            },
            prefix: "cdc/p/public.Orders/".into(),
            snapshots: vec!["00000000016B3748".into()],
            first_dt: Some("2026-11-20".into()),
            has_changes: true,
        }
    }

    #[test]
    fn types_follow_the_mapping() {
        let list = ColumnType::List(Box::new(ColumnType::Decimal {
            precision: 12,
            scale: 2,
        }));
        assert_eq!(athena_type(&list), "array<decimal(12,2)>");
        assert_eq!(athena_type(&ColumnType::TimestampTz), "timestamp");
        assert_eq!(athena_type(&ColumnType::Int16), "smallint");
    }

    #[test]
    fn athena_ddl_projects_partitions_and_names_the_layout() {
        let t = table(vec![
            col("id", ColumnType::Int64, true),
            col("Note", ColumnType::Text, false),
        ]);
        let target = Target {
            database: "lake",
            output_url: "s3://bucket/cdc",
            dialect: Dialect::Athena,
        };
        let sql = statements(&target, &[t], "2026-11-21").join("\n");
        for needle in [
            "CREATE DATABASE IF NOT EXISTS `lake`;",
            "DROP TABLE IF EXISTS `lake`.`public_orders_changes`;",
            "CREATE EXTERNAL TABLE `lake`.`public_orders_changes`",
            "LOCATION 's3://bucket/cdc/cdc/p/public.Orders/changes/'",
            "'projection.dt.range' = '2026-11-20,NOW'",
            "'storage.location.template' = 's3://bucket/cdc/cdc/p/public.Orders/changes/dt=${dt}/'",
            "'projection.snapshot_id.values' = '00000000016B3748'",
            "`note` string COMMENT 't'",
            "`id` bigint COMMENT 't, primary key'",
            "CREATE OR REPLACE VIEW \"lake\".\"public_orders_current\" AS",
            "max_by(\"note\", CASE WHEN \"_op\" IN ('I', 'R')",
            "GROUP BY \"id\"",
            "HAVING max_by(\"_op\", \"_tidemark_order\") <> 'D';",
        ] {
            assert!(sql.contains(needle), "missing {needle:?} in\n{sql}");
        }
    }

    #[test]
    fn keyless_tables_get_no_view_and_missing_snapshots_no_table() {
        let mut t = table(vec![col("a", ColumnType::Text, false)]);
        t.snapshots.clear();
        let target = Target {
            database: "lake",
            output_url: "s3://b",
            dialect: Dialect::Athena,
        };
        let sql = statements(&target, &[t], "2026-11-21").join("\n");
        assert!(!sql.contains("_snapshot`"));
        assert!(sql.contains("no primary key, so no current-state view"));
    }

    #[test]
    fn merge_keeps_order_and_takes_the_newest_types() {
        let old = table(vec![
            col("id", ColumnType::Int32, true),
            col("a", ColumnType::Text, false),
        ])
        .schema;
        let new = table(vec![
            col("id", ColumnType::Int64, true),
            col("b", ColumnType::Date, false),
        ])
        .schema;
        let m = merge(old, new);
        let names: Vec<_> = m.columns.iter().map(|c| (c.name.as_str(), &c.ty)).collect();
        assert_eq!(
            names,
            vec![
                ("id", &ColumnType::Int64),
                ("a", &ColumnType::Text),
                ("b", &ColumnType::Date)
            ]
        );
    }

    #[tokio::test]
    async fn discovers_tables_from_footers() {
        let dir = tempfile::tempdir().unwrap();
        let out = crate::output::LocalDir::new(dir.path()).unwrap();
        let layout = Layout::new("", "p");
        let schema = std::sync::Arc::new(TableSchema {
            id: TableId::new("public", "t"),
            columns: vec![col("id", ColumnType::Int64, true)],
        });
        use crate::sink::ChangeBuffer;
        let mut batch = crate::sink::parquet::ParquetBatch::default();
        let meta = crate::change::RowMeta {
            op: crate::change::Op::Insert,
            pos: "0000000000000010",
            ord: 0,
            commit_ts: 1_795_000_000_000_000,
            xid: None,
        };
        batch
            .push(&schema, &meta, &[crate::change::Value::I64(1)])
            .unwrap();
        for (key, bytes) in batch.encode(&layout).unwrap() {
            out.put(&key, bytes).await.unwrap();
        }
        out.put("p/_schema_history/x.json", b"{}".to_vec())
            .await
            .unwrap();
        let found = discover(&out, &layout).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].schema, *schema);
        assert_eq!(found[0].first_dt.as_deref(), Some("2026-11-18"));
        assert!(found[0].snapshots.is_empty() && found[0].has_changes);
    }
}
