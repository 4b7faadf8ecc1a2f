//! The MySQL/MariaDB initial snapshot: a consistent read whose exact binlog coordinate is known,
//! so the stream continues with exactly the transactions after it.
//!
//! MariaDB: `START TRANSACTION WITH CONSISTENT SNAPSHOT` and `binlog_snapshot_file/position`
//! (no global lock). MySQL lacks those: there a lock is held on a second session just while the
//! snapshot starts and the binlog coordinate and executed GTID set are read ([`LockMethod`]):
//! `FLUSH TABLES WITH READ LOCK` where allowed, else (RDS, Aurora, a user without RELOAD)
//! `LOCK TABLES ... READ` on the tables copied, which holds back every commit that touches them.
//!
//! Memory is bounded: rows stream from the server into part builders (see
//! [`crate::source::snapshot`]); tables with a single integer primary key are read in key-ordered
//! chunks of one part each, so progress survives a restart at chunk granularity.

use futures_util::StreamExt;
use indicatif::ProgressBar;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::change::{Column, SchemaRef, TableId, TableSchema};
use crate::error::{Error, Result};
use crate::position::BinlogCoord;
use crate::source::mysql::connect::{MySource, ServerInfo, quote_ident, sql_connect};
use crate::source::mysql::types;
use crate::source::snapshot::{
    Chunk, Copied, CopyTarget, KeyPlan, PartWriter, TableCopier, progress_bar,
};
use crate::table_name::{Dialect, TableName};

/// A consistent snapshot open on `conn`, at `coord` and `gtid` (MariaDB's GTID state, or
/// MySQL's executed set with gtid_mode = ON).
pub struct Snapshot {
    pub conn: Conn,
    pub coord: BinlogCoord,
    pub gtid: Option<String>,
    pub taken_at: i64,
}

/// How a MySQL snapshot pins its binlog coordinate while its consistent read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMethod {
    /// MariaDB: the consistent read reports its own coordinate; no lock.
    None,
    /// `FLUSH TABLES WITH READ LOCK` (RELOAD; refused on RDS and Aurora).
    Global,
    /// `LOCK TABLES <each copied table> READ` (LOCK TABLES and SELECT on them).
    Tables,
}

impl LockMethod {
    pub fn describe(self) -> &'static str {
        match self {
            LockMethod::None => "no lock (MariaDB reports the consistent read's binlog position)",
            LockMethod::Global => "FLUSH TABLES WITH READ LOCK, held while the snapshot starts",
            LockMethod::Tables => {
                "LOCK TABLES ... READ on the copied tables, held while the snapshot starts"
            }
        }
    }
}

/// How long the snapshot's lock may wait for transactions running on the locked tables.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a snapshot waits for prepared XA transactions to be committed or rolled back.
const XA_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The XA transactions prepared but not committed, as `XA COMMIT` takes their ids; empty when
/// the server does not let this user list them (a warning says what is missing).
async fn prepared_xa(conn: &mut Conn) -> Result<Vec<String>> {
    let (rows, sql_format): (Vec<mysql_async::Row>, bool) = match conn
        .query("XA RECOVER FORMAT='SQL'")
        .await
    {
        Ok(r) => (r, true),
        // MySQL: no FORMAT='SQL', or XA_RECOVER_ADMIN missing.
        Err(_) => match conn.query("XA RECOVER").await {
            Ok(r) => (r, false),
            Err(e) => {
                tracing::warn!(error = %Error::from(e), "cannot list prepared XA transactions (XA RECOVER): one prepared before the snapshot and committed after it would be missing; grant XA_RECOVER_ADMIN (MySQL) to check");
                return Ok(Vec::new());
            }
        },
    };
    // `data` is the id as XA COMMIT takes it with FORMAT='SQL' (MariaDB); otherwise gtrid and
    // bqual run together, split by their lengths.
    Ok(rows
        .iter()
        .map(|r| {
            let data: Vec<u8> = r
                .get_opt::<Option<Vec<u8>>, _>(3)
                .and_then(Result::ok)
                .flatten()
                .unwrap_or_default();
            if sql_format {
                return String::from_utf8_lossy(&data).into_owned();
            }
            let len = |i: usize| r.get_opt::<u64, _>(i).and_then(Result::ok);
            let (g, b) = (len(1), len(2));
            let g = usize::try_from(g.unwrap_or(0)).unwrap_or(0).min(data.len());
            let b = usize::try_from(b.unwrap_or(0))
                .unwrap_or(0)
                .min(data.len() - g);
            let (gtrid, rest) = data.split_at(g);
            let hex = |x: &[u8]| x.iter().map(|b| format!("{b:02X}")).collect::<String>();
            format!("X'{}',X'{}'", hex(gtrid), hex(&rest[..b]))
        })
        .collect())
}

/// Opens a consistent snapshot and reads its binlog coordinate.
///
/// Never while XA transactions are prepared but not committed (issue 11 item 10): their
/// PREPARE lies before the snapshot's coordinate, where the stream never reads it, and the
/// consistent read cannot see their rows, so their XA COMMIT after it would capture nothing.
/// Waits up to [`XA_WAIT`] for them to finish (checking before and after the snapshot opens,
/// and opening it again when one appeared in between), then refuses, naming them.
/// `tables` are the tables the snapshot copies (locked when only table locks are allowed).
pub async fn open(src: &MySource, server: &ServerInfo, tables: &[TableId]) -> Result<Snapshot> {
    let mut check = sql_connect(src).await?;
    let deadline = std::time::Instant::now() + XA_WAIT;
    let mut warned = false;
    loop {
        let mut prepared = prepared_xa(&mut check).await?;
        if prepared.is_empty() {
            let snapshot = open_consistent(src, server, tables).await?;
            prepared = prepared_xa(&mut check).await?;
            if prepared.is_empty() {
                return Ok(snapshot);
            }
            // One was prepared while the snapshot opened: drop it, wait, open another.
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::config(format!(
                "{} prepared XA transaction(s) not committed ({}): a snapshot now would miss their rows (prepared \
                 before it, invisible to it). Commit or roll them back (XA COMMIT / XA ROLLBACK with these ids), \
                 then run again",
                prepared.len(),
                prepared.join("; ")
            )));
        }
        if !warned {
            tracing::warn!(xa = %prepared.join("; "), "waiting for prepared XA transactions to commit or roll back before the snapshot");
            warned = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn open_consistent(
    src: &MySource,
    server: &ServerInfo,
    tables: &[TableId],
) -> Result<Snapshot> {
    let mariadb = server.mariadb;
    let mut conn = sql_connect(src).await?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let status: Vec<(String, String)> = if mariadb {
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await?;
        conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await?
    } else {
        Vec::new()
    };
    let get = |k: &str| {
        status
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let (coord, gtid) = match (get("binlog_snapshot_file"), get("binlog_snapshot_position")) {
        (Some(f), Some(p)) if !f.is_empty() => {
            let coord = BinlogCoord::new(
                f,
                p.parse()
                    .map_err(|_| Error::data(format!("binlog_snapshot_position {p:?}")))?,
            );
            let gtid: Option<String> = conn
                .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (&coord.file, coord.pos))
                .await?
                .flatten();
            (coord, gtid)
        }
        _ => {
            conn.query_drop("ROLLBACK").await?;
            let mut lock = sql_connect(src).await?;
            let method = lock_for_snapshot(&mut lock, tables).await?;
            tracing::info!(method = method.describe(), "consistent snapshot lock taken");
            let started = conn
                .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await;
            let pinned = match started {
                Ok(()) => pinned_position(&mut lock, server).await,
                Err(e) => Err(e.into()),
            };
            lock.query_drop("UNLOCK TABLES").await?;
            pinned?
        }
    };
    let taken_at: Option<i64> = conn
        .query_first("SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)")
        .await?;
    Ok(Snapshot {
        conn,
        coord,
        gtid,
        taken_at: taken_at.unwrap_or(0),
    })
}

/// Takes the lock that pins a MySQL snapshot's coordinate on `lock`: the global read lock when
/// the server allows it, else read locks on `tables`.
async fn lock_for_snapshot(lock: &mut Conn, tables: &[TableId]) -> Result<LockMethod> {
    // Either lock waits behind transactions still running on the tables; the server's default
    // wait is a year. After this long the lock fails (error 1205, retried by the worker).
    lock.query_drop(format!(
        "SET SESSION lock_wait_timeout = {}",
        LOCK_WAIT.as_secs()
    ))
    .await?;
    let managed = crate::source::mysql::check::managed(lock).await;
    if !managed {
        match lock.query_drop("FLUSH TABLES WITH READ LOCK").await {
            Ok(()) => return Ok(LockMethod::Global),
            Err(mysql_async::Error::Server(e))
                if crate::source::mysql::connect::codes::ACCESS.contains(&e.code) =>
            {
                tracing::info!(error = %e.message, "no global read lock for this user: locking the copied tables instead");
            }
            Err(e) => return Err(e.into()),
        }
    }
    if tables.is_empty() {
        return Ok(LockMethod::Tables);
    }
    let list = tables
        .iter()
        .map(|t| format!("{}.{} READ", quote_ident(&t.schema), quote_ident(&t.name)))
        .collect::<Vec<_>>()
        .join(", ");
    lock.query_drop(format!("LOCK TABLES {list}"))
        .await
        .map_err(|e| {
            let denied = matches!(&e, mysql_async::Error::Server(s)
                if crate::source::mysql::connect::codes::ACCESS.contains(&s.code));
            let e = Error::from(e);
            if !denied {
                return e.context("LOCK TABLES ... READ for the snapshot");
            }
            e.context(format!(
                "the snapshot needs a lock while it starts ({}): grant LOCK TABLES on the captured database \
                 (GRANT LOCK TABLES ON db.* TO user), or RELOAD where FLUSH TABLES WITH READ LOCK is allowed",
                if managed { "RDS/Aurora refuse FLUSH TABLES WITH READ LOCK" } else { "FLUSH TABLES WITH READ LOCK was refused" }
            ))
        })?;
    Ok(LockMethod::Tables)
}

/// The binlog coordinate and, with `gtid_mode = ON`, the executed GTID set, read under the
/// snapshot's lock.
async fn pinned_position(
    lock: &mut Conn,
    server: &ServerInfo,
) -> Result<(BinlogCoord, Option<String>)> {
    let coord = crate::source::mysql::check::current_position(lock, server).await?;
    let gtid = crate::source::mysql::check::mysql_gtid_executed(lock).await?;
    Ok((coord, gtid))
}

/// Resolves configured table names (backticks as MySQL quotes; a bare name is in `database`)
/// with the server's own case rules: with `lower_case_table_names = 0` names are exact, and a
/// name that only matches in another case fails with the backticked form to write instead;
/// otherwise the server's stored name is taken whatever the case written.
pub async fn resolve_tables(
    conn: &mut Conn,
    names: &[TableName],
    database: &str,
) -> Result<Vec<TableId>> {
    let lctn: Option<i64> = conn.query_first("SELECT @@lower_case_table_names").await?;
    let case_sensitive = lctn.unwrap_or(0) == 0;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let want = n.id(database);
        let found: Vec<(String, String)> = conn
            .exec(
                "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
                 WHERE LOWER(TABLE_SCHEMA) = LOWER(?) AND LOWER(TABLE_NAME) = LOWER(?) \
                 AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1, 2",
                (&want.schema, &want.name),
            )
            .await?;
        let found: Vec<TableId> = found.into_iter().map(|(s, t)| TableId::new(s, t)).collect();
        if let Some(exact) = found.iter().find(|t| **t == want) {
            out.push(exact.clone());
            continue;
        }
        match found.as_slice() {
            [one] if !case_sensitive => out.push(one.clone()),
            [] => {
                return Err(Error::config(format!(
                    "table {} does not exist: check source.tables (MySQL tables are database.table; a bare name is in {database})",
                    n.written
                )));
            }
            near => {
                let quoted: Vec<String> =
                    near.iter().map(|t| Dialect::Mysql.quote_table(t)).collect();
                return Err(Error::config(format!(
                    "table {} does not exist: this server compares table names case-sensitively (lower_case_table_names = {}); \
                     did you mean {}?",
                    n.written,
                    lctn.unwrap_or(0),
                    quoted.join(" or ")
                )));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Base tables of `databases` (or exactly `tables`, checked to exist), sorted.
pub async fn list_tables(
    conn: &mut Conn,
    databases: &[String],
    tables: &[TableId],
) -> Result<Vec<TableId>> {
    let mut out = Vec::new();
    for db in databases {
        let rows: Vec<(String, String)> = conn
            .exec(
                "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                (db,),
            )
            .await?;
        out.extend(rows.into_iter().map(|(s, t)| TableId::new(s, t)));
    }
    for t in tables {
        let found: Option<u8> = conn
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&t.schema, &t.name),
            )
            .await?;
        if found.is_none() {
            return Err(Error::config(format!(
                "table {t} does not exist: check source.tables (MySQL tables are database.table)"
            )));
        }
        out.push(t.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A table's schema from `information_schema` (same types as the binlog mapping), with each
/// column's DATA_TYPE (how its text values are parsed).
pub async fn table_schema(conn: &mut Conn, table: &TableId) -> Result<(SchemaRef, Vec<String>)> {
    let rows: Vec<(String, String, String, Option<String>, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, COLUMN_KEY \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (&table.schema, &table.name),
        )
        .await?;
    if rows.is_empty() {
        return Err(Error::config(format!(
            "table {table} has no columns or does not exist"
        )));
    }
    let data_types = rows.iter().map(|r| r.1.clone()).collect();
    let columns = rows
        .into_iter()
        .map(|(name, data_type, column_type, charset, key)| {
            let ty = types::info_schema_type(&data_type, &column_type, charset.as_deref());
            Column {
                name,
                ty,
                source_type: column_type,
                key: key == "PRI",
            }
        })
        .collect();
    let schema = TableSchema {
        id: table.clone(),
        columns,
    }
    .with_output_names();
    Ok((std::sync::Arc::new(schema), data_types))
}

/// One table copied inside the snapshot's consistent read, with a streamed SELECT.
pub struct MyCopier<'c> {
    conn: &'c mut Conn,
    schema: SchemaRef,
    data_types: Vec<String>,
    /// Source column names (the output may rename some).
    source_names: Vec<String>,
    plan: KeyPlan,
}

impl<'c> MyCopier<'c> {
    pub async fn open(conn: &'c mut Conn, table: &TableId) -> Result<Self> {
        let (schema, data_types) = table_schema(conn, table).await?;
        let source_names = source_columns(conn, table).await?;
        let plan = KeyPlan::for_schema(&schema);
        Ok(MyCopier {
            conn,
            schema,
            data_types,
            source_names,
            plan,
        })
    }
}

impl TableCopier for MyCopier<'_> {
    fn plan(&self) -> &KeyPlan {
        &self.plan
    }

    /// Streams rows (never the whole result) from the snapshot session.
    async fn copy<'a>(
        &'a mut self,
        chunk: &'a Chunk,
        target: &'a CopyTarget<'a>,
    ) -> Result<Copied> {
        let schema = &self.schema;
        let table = &schema.id;
        // FLOAT is cast to DOUBLE: the text protocol rounds FLOAT to 6 significant digits, the
        // binlog carries the stored value, and f32 -> f64 -> text -> f32 is exact.
        let cols: Vec<String> = self
            .source_names
            .iter()
            .zip(&self.data_types)
            .map(|(c, t)| {
                if t.eq_ignore_ascii_case("float") {
                    format!("CAST({} AS DOUBLE)", quote_ident(c))
                } else {
                    quote_ident(c)
                }
            })
            .collect();
        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            cols.join(", "),
            quote_ident(&table.schema),
            quote_ident(&table.name)
        );
        if let KeyPlan::Integer { index, .. } = &self.plan {
            let key = self
                .source_names
                .get(*index)
                .map(|c| quote_ident(c))
                .unwrap_or_default();
            sql.push_str(&chunk.keyset_clause(&key));
        }
        let mut result = self.conn.query_iter(sql).await?;
        let mut stream = result
            .stream::<mysql_async::Row>()
            .await?
            .ok_or_else(|| Error::fatal("snapshot query returned no result set"))?;
        let mut parts = PartWriter::new(schema, chunk, target)?;
        let mut values = Vec::with_capacity(schema.columns.len());
        let data_types = &self.data_types;
        while let Some(row) = stream.next().await {
            let mut row = row?;
            values.clear();
            for (i, col) in schema.columns.iter().enumerate() {
                let v = match row.take::<mysql_async::Value, _>(i) {
                    None | Some(mysql_async::Value::NULL) => crate::change::Value::Null,
                    Some(mysql_async::Value::Bytes(b)) => {
                        types::parse_text(&col.ty, &data_types[i], &b)
                            .map_err(|e| e.context(format!("{table}.{}", col.name)))?
                    }
                    Some(other) => {
                        let text = other.as_sql(true);
                        types::parse_text(
                            &col.ty,
                            &data_types[i],
                            text.trim_matches('\'').as_bytes(),
                        )
                        .map_err(|e| e.context(format!("{table}.{}", col.name)))?
                    }
                };
                values.push(v);
            }
            parts.push(&self.plan, &values).await?;
        }
        drop(stream);
        drop(result);
        parts.finish().await
    }

    /// Against the server's row estimate.
    async fn progress(&mut self, done: u64, enabled: bool) -> Result<ProgressBar> {
        if !enabled {
            return Ok(ProgressBar::hidden());
        }
        let table = &self.schema.id;
        let estimate: Option<Option<u64>> = self
            .conn
            .exec_first(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&table.schema, &table.name),
            )
            .await?;
        let bar = progress_bar(table, estimate.flatten().unwrap_or(0).max(done), true);
        bar.set_position(done);
        Ok(bar)
    }
}

/// The source column names of a table (in order), for the SELECT list.
pub async fn source_columns(conn: &mut Conn, table: &TableId) -> Result<Vec<String>> {
    Ok(conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&table.schema, &table.name),
        )
        .await?)
}
