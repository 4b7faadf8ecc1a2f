//! Test support for the MySQL/MariaDB source: SQL sessions against the stack's MariaDB, a
//! versioned table and a random workload (the same shapes as the PostgreSQL ones).

use std::collections::BTreeMap;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::harness::env;

/// The stack's MariaDB as the test user (database `app`).
pub fn my_url() -> String {
    env("TIDEMARK_MY_URL")
}

pub async fn conn() -> Conn {
    Conn::new(mysql_async::Opts::from_url(&my_url()).expect("TIDEMARK_MY_URL"))
        .await
        .expect("connect to the local MariaDB (is `infra/local/stack up` running?)")
}

/// Runs statements (`;`-separated, no result sets).
pub async fn exec(c: &mut Conn, sql: &str) {
    c.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{e}\nSQL: {sql}"));
}

/// `table (id bigint primary key, v int, payload varchar(64))` with `rows` rows at v = 0.
pub async fn versioned_table(c: &mut Conn, table: &str, rows: i64) {
    exec(
        c,
        &format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id BIGINT PRIMARY KEY, v INT NOT NULL, payload VARCHAR(64)); \
             INSERT INTO {table} SELECT seq, 0, MD5(seq) FROM seq_1_to_{rows};"
        ),
    )
    .await;
}

/// Random inserts, updates and deletes in transactions of 1-10 statements until `stop`.
/// Returns the number of statements.
pub async fn workload(
    table: String,
    first_new_id: i64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    workload_on(conn().await, table, first_new_id, stop).await
}

async fn workload_on(
    mut c: Conn,
    table: String,
    first_new_id: i64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let mut next = first_new_id;
    let mut ops = 0u64;
    while !*stop.borrow() {
        let mut sql = String::from("START TRANSACTION;");
        for _ in 0..fastrand::usize(1..=10) {
            let id = fastrand::i64(1..next.max(2));
            match fastrand::u8(0..10) {
                0..=2 => {
                    sql.push_str(&format!(
                        "INSERT INTO {table} (id, v, payload) VALUES ({next}, 0, SHA2(RAND(), 256));"
                    ));
                    next += 1;
                }
                3..=7 => sql.push_str(&format!(
                    "UPDATE {table} SET v = v + 1, payload = SHA2(RAND(), 256) WHERE id = {id};"
                )),
                _ => sql.push_str(&format!("DELETE FROM {table} WHERE id = {id};")),
            }
            ops += 1;
        }
        sql.push_str("COMMIT;");
        exec(&mut c, &sql).await;
        tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(0..15))).await;
    }
    ops
}

/// `id -> v` of every row of a versioned table.
pub async fn versions(c: &mut Conn, table: &str) -> BTreeMap<i64, i64> {
    let rows: Vec<(i64, i64)> = c
        .query(format!("SELECT id, v FROM {table}"))
        .await
        .expect("source rows");
    rows.into_iter().collect()
}

/// Drops the tables a test created (best effort).
pub async fn drop_tables(tables: &[&str]) {
    let mut c = conn().await;
    for t in tables {
        let _ = c.query_drop(format!("DROP TABLE IF EXISTS {t}")).await;
    }
}

/// The stack's MariaDB as root over its unix socket (server settings, FLUSH/PURGE BINARY LOGS).
pub async fn admin() -> Conn {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(env("TIDEMARK_MY_SOCKET")))
        .user(Some("root"))
        .db_name(Some("app"));
    Conn::new(opts)
        .await
        .expect("connect to the local MariaDB as root over its socket")
}

/// The stack's Oracle MySQL as the test user (database `app`).
pub async fn oracle() -> Conn {
    Conn::new(mysql_async::Opts::from_url(&env("TIDEMARK_MYSQL_URL")).expect("TIDEMARK_MYSQL_URL"))
        .await
        .expect("connect to the local Oracle MySQL (is `infra/local/stack up mysql` running?)")
}

/// [`versioned_table`] without MariaDB's sequence engine (a recursive CTE: any MySQL 8+).
pub async fn versioned_table_portable(c: &mut Conn, table: &str, rows: i64) {
    exec(
        c,
        &format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id BIGINT PRIMARY KEY, v INT NOT NULL, payload VARCHAR(64)); \
             SET SESSION cte_max_recursion_depth = {rows}; \
             INSERT INTO {table} WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {rows}) \
             SELECT n, 0, SHA2(n, 256) FROM s;"
        ),
    )
    .await;
}

/// Rolls back the stack MariaDB's prepared XA transaction `0` when dropped: a prepared XA
/// transaction outlives its session, and every later snapshot of the server would wait for it.
pub struct XaRollbackGuard(pub String);

impl Drop for XaRollbackGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("mariadb")
            .args([
                "--defaults-file=/dev/null",
                "-S",
                &env("TIDEMARK_MY_SOCKET"),
                "-uroot",
                "-e",
            ])
            .arg(format!("XA ROLLBACK '{}'", self.0))
            .output();
    }
}

/// The two binlog servers of the stack: MySQL end-to-end tests whose behaviour can differ run
/// against both (see [`crate::both_servers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    MariaDb,
    MySql,
}

impl Server {
    pub fn url(self) -> String {
        match self {
            Server::MariaDb => my_url(),
            Server::MySql => env("TIDEMARK_MYSQL_URL"),
        }
    }

    /// A short tag for scenario names.
    pub fn tag(self) -> &'static str {
        match self {
            Server::MariaDb => "ma",
            Server::MySql => "my",
        }
    }

    pub fn scenario(self, prefix: &str) -> crate::harness::Scenario {
        let prefix = format!("{prefix}{}", self.tag());
        match self {
            Server::MariaDb => crate::harness::Scenario::mysql(&prefix),
            Server::MySql => crate::harness::Scenario::oracle_mysql(&prefix),
        }
    }

    /// The test user (database `app`).
    pub async fn conn(self) -> Conn {
        match self {
            Server::MariaDb => conn().await,
            Server::MySql => oracle().await,
        }
    }

    /// A user that may change server settings and rotate binlogs.
    pub async fn admin(self) -> Conn {
        match self {
            Server::MariaDb => admin().await,
            Server::MySql => Conn::new(
                mysql_async::Opts::from_url(&env("TIDEMARK_MYSQL_ADMIN_URL"))
                    .expect("TIDEMARK_MYSQL_ADMIN_URL"),
            )
            .await
            .expect("connect to the local Oracle MySQL as its admin user"),
        }
    }

    /// [`versioned_table`] on this server.
    pub async fn versioned_table(self, c: &mut Conn, table: &str, rows: i64) {
        match self {
            Server::MariaDb => versioned_table(c, table, rows).await,
            Server::MySql => versioned_table_portable(c, table, rows).await,
        }
    }

    /// [`workload`] on this server.
    pub async fn workload(
        self,
        table: String,
        first_new_id: i64,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> u64 {
        workload_on(self.conn().await, table, first_new_id, stop).await
    }

    /// `INSERT INTO {table} SELECT <select over n = 1..rows>`: `select` names the numbers `n`.
    pub async fn insert_numbers(self, c: &mut Conn, table: &str, select: &str, rows: i64) {
        let sql = match self {
            Server::MariaDb => format!(
                "INSERT INTO {table} SELECT {select} FROM (SELECT seq AS n FROM seq_1_to_{rows}) s"
            ),
            Server::MySql => format!(
                "SET SESSION cte_max_recursion_depth = {rows}; \
                 INSERT INTO {table} WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {rows}) \
                 SELECT {select} FROM s"
            ),
        };
        exec(c, &sql).await;
    }

    pub async fn drop_tables(self, tables: &[&str]) {
        let mut c = self.conn().await;
        for t in tables {
            let _ = c.query_drop(format!("DROP TABLE IF EXISTS {t}")).await;
        }
    }
}

/// Defines `mod $name { fn mariadb(); fn mysql(); }`: the async test `$body(Server)` once
/// per server, so the two run as separate (parallel) tests.
#[macro_export]
macro_rules! both_servers {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                $body($crate::mysql::Server::MariaDb).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                $body($crate::mysql::Server::MySql).await
            }
        }
    };
}
