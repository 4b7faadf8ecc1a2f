//! The source conformance suite: the same cases, through the real binary, against every
//! database source (PostgreSQL, MariaDB, Oracle MySQL).
//!
//! The engine's promise: whatever instant a worker dies at, a restart replays from the durable
//! position and the output holds the source's history exactly once. Here the deaths are not
//! left to kill timing: `TIDEMARK_CRASH_AT` aborts the worker at each window of the snapshot
//! (a part written, its progress not; a table done, the snapshot not) and of the commit
//! protocol (intent saved; an object written; the position saved, the source not acknowledged),
//! while a workload writes, so resumed snapshots need their skip rules. Then a run until caught
//! up must end on its own with every row, and a further one must write nothing.
//!
//! A graceful stop (`TIDEMARK_STOP_AT`, the SIGTERM path at a chosen point) during the
//! snapshot and during the stream must exit 0 with what it wrote committed, and `status` must
//! report the source's lag through the contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tidemark_core::failpoint;
use tidemark_e2e::harness::{self, Scenario, assert_exactly_once_against};
use tidemark_e2e::mysql::{self as my, Server};

/// A database source under test.
#[derive(Clone, Copy)]
enum Db {
    Postgres,
    My(Server),
}

impl Db {
    fn scenario(self, prefix: &str) -> Scenario {
        match self {
            Db::Postgres => Scenario::new(&format!("{prefix}pg")),
            Db::My(server) => server.scenario(prefix),
        }
    }

    fn qualified(self, table: &str) -> String {
        match self {
            Db::Postgres => format!("public.{table}"),
            Db::My(_) => format!("app.{table}"),
        }
    }

    /// Flags every run of this source needs (a binlog reader's own server id).
    fn flags(self) -> Vec<String> {
        match self {
            Db::Postgres => vec![],
            Db::My(_) => vec![
                "--server-id".into(),
                fastrand::u32(2_000_000..2_000_000_000).to_string(),
            ],
        }
    }

    /// `table (id, v, payload)` with `rows` rows at version 0.
    async fn versioned_table(self, table: &str, rows: i64) {
        match self {
            Db::Postgres => harness::versioned_table(&harness::sql().await, table, rows).await,
            Db::My(server) => {
                server
                    .versioned_table(&mut server.conn().await, table, rows)
                    .await
            }
        }
    }

    /// Random inserts, updates and deletes until `stop`; returns the statement count.
    async fn workload(
        self,
        table: String,
        first_new_id: i64,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> u64 {
        match self {
            Db::Postgres => harness::workload(table, first_new_id, stop).await,
            Db::My(server) => server.workload(table, first_new_id, stop).await,
        }
    }

    /// `id -> v` of every live row.
    async fn versions(self, table: &str) -> BTreeMap<i64, i64> {
        match self {
            Db::Postgres => harness::sql()
                .await
                .query(&format!("select id::int8, v::int8 from {table}"), &[])
                .await
                .expect("source rows")
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
            Db::My(server) => my::versions(&mut server.conn().await, table).await,
        }
    }

    /// Runs `sql` (one statement) on the source.
    async fn exec(self, sql: &str) {
        match self {
            Db::Postgres => harness::sql()
                .await
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{e}\nSQL: {sql}")),
            Db::My(server) => my::exec(&mut server.conn().await, sql).await,
        }
    }

    async fn cleanup(self, s: &Scenario, table: &str) {
        match self {
            Db::Postgres => {
                let c = harness::sql().await;
                s.cleanup(&c).await;
                let _ = c
                    .batch_execute(&format!("drop table if exists {table}"))
                    .await;
            }
            Db::My(server) => server.drop_tables(&[table]).await,
        }
    }
}

/// Defines `mod $name { postgres, mariadb, mysql }`: the case once per source.
macro_rules! every_source {
    ($name:ident, $case:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $case(Db::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                $case(Db::My(Server::MariaDb)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                $case(Db::My(Server::MySql)).await
            }
        }
    };
}

/// The crash points in the order a pipeline passes them, with the pass to abort at.
const CRASHES: &[(&str, u32)] = &[
    (failpoint::PART_PUT, 2),
    (failpoint::PART_PUT, 3),
    (failpoint::TABLE_DONE, 1),
    (failpoint::INTENT_SAVED, 2),
    (failpoint::OBJECT_PUT, 1),
    (failpoint::OBJECT_PUT, 3),
    (failpoint::POSITION_SAVED, 2),
];

/// Runs the worker with `var=<point>:<n>` (`TIDEMARK_CRASH_AT` or `TIDEMARK_STOP_AT`) until
/// it exits, at most a minute: a point never reached fails the test instead of hanging it.
fn run_armed(
    s: &Scenario,
    tables: &[&str],
    flags: &[&str],
    var: &str,
    (point, n): (&str, u32),
) -> (std::process::ExitStatus, String) {
    let mut child = s
        .command("run", tables, flags)
        .env(var, format!("{point}:{n}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tidemark");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let (_, log) = harness::stderr_of(child);
            panic!("{var}={point}:{n}: no exit within a minute:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    harness::stderr_of(child)
}

/// Runs the worker until it aborts at the `n`th pass of `point`.
fn run_until_crash(s: &Scenario, tables: &[&str], flags: &[&str], point: &str, n: u32) -> String {
    let (status, log) = run_armed(s, tables, flags, "TIDEMARK_CRASH_AT", (point, n));
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "expected the abort at {point}:{n}, got {status}:\n{log}"
    );
    assert!(log.contains(&format!("aborting at {point}")), "{log}");
    log
}

/// A scenario with `table (id, v, payload)` of 3,000 rows, its qualified name, and the flags
/// of a run that snapshots it in parts of `part_rows` and streams in small batches.
async fn case(db: Db, prefix: &str, part_rows: u32) -> (Scenario, String, String, Vec<String>) {
    let s = db.scenario(prefix);
    let table = format!("t_{}", s.name);
    db.versioned_table(&table, 3_000).await;
    let qualified = db.qualified(&table);
    let mut flags: Vec<String> = [
        "--snapshot-part-rows",
        &part_rows.to_string(),
        "--flush-interval-ms",
        "100",
        "--max-batch-rows",
        "200",
    ]
    .map(String::from)
    .to_vec();
    flags.extend(db.flags());
    (s, table, qualified, flags)
}

async fn crash_in_every_window(db: Db) {
    let (s, table, qualified, flags) = case(db, "conf", 500).await;
    let tables = [qualified.as_str()];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(db.workload(table.clone(), 3_001, stop_rx));
    let mut resumed = false;
    for (point, n) in CRASHES {
        let log = tokio::task::block_in_place(|| run_until_crash(&s, &tables, &flags, point, *n));
        resumed |= log.contains("resuming the interrupted snapshot");
    }
    assert!(resumed, "no run resumed the interrupted snapshot");
    stop_tx.send(true).unwrap();
    let ops = writer.await.unwrap();

    tokio::task::block_in_place(|| s.run_caught_up_with(&tables, &flags));
    let checked = assert_exactly_once_against(&s, &qualified, &db.versions(&table).await);
    assert!(checked > 3_000, "only {checked} rows checked");

    // Caught up and restarted with nothing new: the replay writes no object.
    let before = s.output_files();
    tokio::task::block_in_place(|| s.run_caught_up_with(&tables, &flags));
    assert_eq!(
        s.output_files(),
        before,
        "a run with nothing new wrote objects"
    );
    eprintln!(
        "{} crash windows: {ops} operations, {checked} output rows checked",
        CRASHES.len()
    );
    db.cleanup(&s, &table).await;
}

every_source!(
    crash_in_every_window_then_exactly_once,
    crash_in_every_window
);

/// Runs the worker until it stops on its own after a stop requested at the `n`th pass of
/// `point`: exit 0, as after a SIGTERM.
fn run_until_stop(s: &Scenario, tables: &[&str], flags: &[&str], point: &str, n: u32) -> String {
    let (status, log) = run_armed(s, tables, flags, "TIDEMARK_STOP_AT", (point, n));
    assert!(
        status.success(),
        "a stop requested at {point}:{n} must exit 0, got {status}:\n{log}"
    );
    assert!(log.contains(&format!("stop requested at {point}")), "{log}");
    log
}

async fn graceful_stop(db: Db) {
    let (s, table, qualified, flags) = case(db, "stop", 300).await;
    let tables = [qualified.as_str()];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(db.workload(table.clone(), 3_001, stop_rx));

    // During the snapshot: the parts written stay, the next run resumes after them.
    let log =
        tokio::task::block_in_place(|| run_until_stop(&s, &tables, &flags, failpoint::PART_PUT, 2));
    assert!(log.contains("stopped during the snapshot"), "{log}");
    let status = s.status_json();
    assert_eq!(status["snapshot"]["done"], false, "{status}");
    assert!(status["snapshot"]["current"].is_object(), "{status}");

    // While streaming: the batch in hand is committed before the exit.
    let log = tokio::task::block_in_place(|| {
        run_until_stop(&s, &tables, &flags, failpoint::POSITION_SAVED, 3)
    });
    assert!(log.contains("resuming the interrupted snapshot"), "{log}");
    let status = s.status_json();
    assert_eq!(status["state"], "STOPPED", "{status}");
    assert!(status["position"].is_string(), "{status}");
    assert!(
        status["lag_bytes"].is_u64(),
        "lag through the contract: {status}"
    );
    assert!(status["source_error"].is_null(), "{status}");
    assert!(
        status["pending_intent"].is_null(),
        "a graceful stop leaves no intent: {status}"
    );

    stop_tx.send(true).unwrap();
    writer.await.unwrap();
    tokio::task::block_in_place(|| s.run_caught_up_with(&tables, &flags));
    let checked = assert_exactly_once_against(&s, &qualified, &db.versions(&table).await);
    assert!(checked > 3_000, "only {checked} rows checked");
    db.cleanup(&s, &table).await;
}

every_source!(graceful_stop_then_exactly_once, graceful_stop);

/// A column added while the pipeline streams: the rows after it carry the column, the rows
/// before it read as NULL through the same table (Athena's and DuckDB's union by name), and
/// each row is still there once.
async fn added_column(db: Db) {
    let (s, table, qualified, flags) = case(db, "ddl", 500).await;
    let tables = [qualified.as_str()];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| s.run_caught_up_with(&tables, &flags));

    db.exec(&format!("ALTER TABLE {table} ADD COLUMN extra INT"))
        .await;
    db.exec(&format!(
        "INSERT INTO {table} (id, v, payload, extra) VALUES (3001, 0, 'a', 6002), (3002, 0, 'b', 6004)"
    ))
    .await;
    db.exec(&format!(
        "UPDATE {table} SET v = v + 1, extra = 7 WHERE id = 1"
    ))
    .await;
    tokio::task::block_in_place(|| s.run_caught_up_with(&tables, &flags));

    let rows = s.output_rows(&qualified, "id, extra, _op");
    let of = |id: i64| -> Vec<(Option<i64>, String)> {
        rows.iter()
            .filter(|r| r["id"].as_i64() == Some(id))
            .map(|r| {
                (
                    r["extra"].as_i64(),
                    r["_op"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(of(3001), [(Some(6002), "I".to_string())], "{rows:?}");
    assert_eq!(of(3002), [(Some(6004), "I".to_string())], "{rows:?}");
    assert_eq!(
        of(1),
        [(None, "R".to_string()), (Some(7), "U".to_string())],
        "{rows:?}"
    );
    assert_eq!(of(2), [(None, "R".to_string())], "{rows:?}");
    let checked = assert_exactly_once_against(&s, &qualified, &db.versions(&table).await);
    // 3,000 snapshot rows, two inserts and one update.
    assert_eq!(checked, 3_003);
    db.cleanup(&s, &table).await;
}

every_source!(added_column_then_exactly_once, added_column);
