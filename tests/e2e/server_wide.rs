//! The end-to-end tests that change state every binlog reader of a server sees (PURGE BINARY
//! LOGS, prepared XA transactions, `SET GLOBAL`): a test binary of their own, so they never
//! overlap the tests in `e2e` (cargo runs test binaries one after another).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tidemark_e2e::both_servers;
use tidemark_e2e::harness::{Scenario, assert_exactly_once_against};
use tidemark_e2e::mysql::{self as my, Server, exec, versions};

/// Held by the tests here that purge binlogs or hold a prepared XA transaction, so they never
/// overlap each other.
static MARIADB_SERVER_STATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A unique server_id per scenario: parallel tests must not share one (ERROR 4052).
fn server_id() -> String {
    fastrand::u32(2_000_000..2_000_000_000).to_string()
}

fn run(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// MySQL/MariaDB `check`: settings, grants, retention, server_id and keys, each with its fix;
/// then a position the server purged: `run` stops with the fix and `check` says so.
/// (Here rather than in mysql_pipeline: PURGE BINARY LOGS must not race other binlog readers.)
/// On MySQL the position is a GTID set: `run` refuses it when `gtid_purged` is not in it.
async fn check_and_purged_position(server: Server) {
    use mysql_async::prelude::Queryable;
    use tidemark_e2e::mysql::exec;
    let _server_wide = MARIADB_SERVER_STATE.lock().await;
    let mut c = server.conn().await;
    let mut admin = server.admin().await;
    let s = server.scenario("mycheck");
    let (monitor, own_id, status_sql) = match server {
        Server::MariaDb => ("BINLOG MONITOR granted", "101", "SHOW MASTER STATUS"),
        Server::MySql => (
            "REPLICATION CLIENT granted",
            "201",
            "SHOW BINARY LOG STATUS",
        ),
    };
    let (good, nopk) = (format!("g_{}", s.name), format!("n_{}", s.name));
    exec(
        &mut c,
        &format!("CREATE TABLE {good} (id INT PRIMARY KEY); CREATE TABLE {nopk} (a INT);"),
    )
    .await;
    let tables = [format!("app.{good}"), format!("app.{nopk}")];
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    let (code, out, err) = run(&mut s.command("check", &tables, &["--server-id", "77001"]));
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "ok    binlog_format",
        "ok    binlog_row_image",
        "ok    binlog_row_metadata",
        "REPLICATION SLAVE granted",
        monitor,
        "server_id 77001 is not used",
        "primary key present",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(
        out.contains(&format!("app.{nopk} has no primary key")),
        "{out}"
    );

    // The server's own server_id is refused with the fix.
    let (code, out, _) = run(&mut s.command("check", &tables, &["--server-id", own_id]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("set source.server_id"), "{out}");

    // Stop with a position, let the server purge past it.
    let (code, _, err) = run(&mut s.command(
        "run",
        &tables[..1],
        &["--until-caught-up", "--server-id", "77001"],
    ));
    assert_eq!(code, 0, "{err}");
    exec(&mut admin, "FLUSH BINARY LOGS").await;
    exec(&mut c, &format!("INSERT INTO {good} VALUES (1)")).await;
    exec(&mut admin, "FLUSH BINARY LOGS").await;
    let current: Option<(String, u64)> = admin
        .query_first(status_sql)
        .await
        .unwrap()
        .map(|r: mysql_async::Row| (r.get::<String, _>(0).unwrap(), r.get::<u64, _>(1).unwrap()));
    let (file, _) = current.unwrap();
    // MariaDB keeps a file until its binlog checkpoint has passed: retry until it is gone.
    for _ in 0..100 {
        exec(&mut admin, &format!("PURGE BINARY LOGS TO '{file}'")).await;
        let logs: Vec<mysql_async::Row> = admin.query("SHOW BINARY LOGS").await.unwrap();
        if logs
            .first()
            .is_some_and(|l| l.get::<String, _>(0).as_deref() == Some(file.as_str()))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (code, _, err) = run(&mut s.command(
        "run",
        &tables[..1],
        &[
            "--until-caught-up",
            "--server-id",
            "77001",
            "--max-retries",
            "0",
        ],
    ));
    assert_ne!(code, 0);
    let refused = match server {
        Server::MariaDb => err.contains("1236"),
        Server::MySql => err.contains("gtid_purged") && err.contains("binlog retention hours"),
    };
    assert!(refused && err.contains("tidemark reset"), "{err}");
    let (code, out, _) = run(&mut s.command("check", &tables[..1], &["--server-id", "77001"]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("older than the oldest binlog") && out.contains("tidemark reset"),
        "{out}"
    );
    server.drop_tables(&[&good, &nopk]).await;
}

both_servers!(
    mysql_check_and_a_purged_binlog_position,
    check_and_purged_position
);

/// Issue 11 item 10: a MariaDB XA transaction prepared before the snapshot and committed after
/// it would be lost (the stream never reads its PREPARE, the snapshot cannot see its rows): the
/// snapshot waits for it, then refuses, naming it; once it is committed the run takes its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_snapshot_refuses_while_an_xa_transaction_is_prepared() {
    use tidemark_e2e::mysql::{self as my, exec};
    let _server_wide = MARIADB_SERVER_STATE.lock().await;
    let mut c = my::conn().await;
    let s = Scenario::mysql("myxaprep");
    let t = format!("t_{}", s.name);
    exec(
        &mut c,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY); INSERT INTO {t} VALUES (1);"),
    )
    .await;
    let xid = format!("{}_x", s.name);
    let _rollback = my::XaRollbackGuard(xid.clone());
    exec(
        &mut c,
        &format!(
            "XA START '{xid}'; INSERT INTO {t} VALUES (2); XA END '{xid}'; XA PREPARE '{xid}';"
        ),
    )
    .await;
    let q = format!("app.{t}");
    let args = ["--server-id", "77002", "--flush-interval-ms", "200"];
    let (code, log) = s.run_failing(&[&q], &args);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains(&xid) && log.contains("XA COMMIT"),
        "names it and the fix: {log}"
    );
    assert!(s.output_files().is_empty(), "nothing written");

    exec(&mut c, &format!("XA COMMIT '{xid}'")).await;
    s.run_caught_up_with(&[&q], &args);
    let ids: Vec<i64> = s
        .output_rows(&q, "id::bigint as id")
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);
    my::drop_tables(&[&t]).await;
}

/// XA: rows of a prepared transaction appear once, at its XA COMMIT, also when tidemark restarts
/// between XA PREPARE and XA COMMIT; an XA ROLLBACK leaves nothing; `XA COMMIT ... ONE PHASE`
/// is an ordinary transaction.
async fn xa_once_at_commit(server: Server) {
    let mut c = server.conn().await;
    let mut other = server.conn().await;
    let s = server.scenario("myxa");
    let table = format!("t_{}", s.name);
    exec(
        &mut c,
        &format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, v INT NOT NULL, payload VARCHAR(64))"
        ),
    )
    .await;
    let qualified = format!("app.{table}");
    let sid = server_id();
    let args = [
        "--until-caught-up",
        "--server-id",
        sid.as_str(),
        "--flush-interval-ms",
        "200",
    ];
    let run = |s: &Scenario| {
        let out = s.command("run", &[&qualified], &args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&s);
    let mut third = server.conn().await;
    let (x1, x2) = (format!("{}_1", s.name), format!("{}_2", s.name));
    exec(
        &mut c,
        &format!("XA START '{x1}'; INSERT INTO {table} VALUES (1, 0, 'xa'), (2, 0, 'xa'); XA END '{x1}'; XA PREPARE '{x1}';"),
    )
    .await;
    exec(
        &mut third,
        &format!("XA START '{x2}'; INSERT INTO {table} VALUES (9, 0, 'rolled back'); XA END '{x2}'; XA PREPARE '{x2}';"),
    )
    .await;
    exec(
        &mut other,
        &format!("INSERT INTO {table} VALUES (3, 0, 'plain')"),
    )
    .await;
    run(&s); // sees the prepared groups and the plain insert; commits past them
    exec(&mut c, &format!("XA COMMIT '{x1}'")).await;
    exec(&mut third, &format!("XA ROLLBACK '{x2}'")).await;
    exec(&mut c, &format!("UPDATE {table} SET v = 1 WHERE id = 1")).await;
    let (x3, x4) = (format!("{}_3", s.name), format!("{}_4", s.name));
    exec(
        &mut other,
        &format!("XA START '{x3}'; INSERT INTO {table} VALUES (4, 0, 'one phase'); XA END '{x3}'; XA COMMIT '{x3}' ONE PHASE;"),
    )
    .await;
    // A one-phase XA transaction on a table not captured, then a captured insert (regression:
    // MySQL's group stayed marked prepared and its commit came without a begin).
    exec(
        &mut other,
        &format!(
            "CREATE TABLE {table}_other (id INT PRIMARY KEY); \
             XA START '{x4}'; INSERT INTO {table}_other VALUES (1); XA END '{x4}'; XA COMMIT '{x4}' ONE PHASE; \
             INSERT INTO {table} VALUES (5, 0, 'after');"
        ),
    )
    .await;
    run(&s);
    let got: Vec<String> = s
        .output_rows(&qualified, "_op, id, v")
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["_op"].as_str().unwrap_or("?"),
                r["id"],
                r["v"]
            )
        })
        .collect();
    assert_eq!(
        got,
        ["I 3 0", "I 1 0", "I 2 0", "U 1 1", "I 4 0", "I 5 0"],
        "{got:?}"
    );
    // `_xid`: the GTID sequence number, one per transaction.
    let xids: Vec<i64> = s
        .output_rows(&qualified, "_xid")
        .iter()
        .map(|r| r["_xid"].as_i64().expect("_xid set"))
        .collect();
    assert!(
        xids[1] == xids[2]
            && xids[0] < xids[1]
            && xids[2] < xids[3]
            && xids[3] < xids[4]
            && xids[4] < xids[5],
        "{xids:?}"
    );
    let checked = assert_exactly_once_against(&s, &qualified, &versions(&mut c, &table).await);
    assert_eq!(checked, 6);
    server
        .drop_tables(&[&table, &format!("{table}_other")])
        .await;
}

both_servers!(
    xa_transactions_appear_once_at_commit_across_a_restart,
    xa_once_at_commit
);

/// `--until-caught-up` ends while an XA transaction stays prepared and other tables get steady
/// traffic (no heartbeats then): the resume point stays at the XA transaction, but what the
/// server sent is known from every commit. (Seen hanging when the XA test ran beside a
/// snapshot test's workload.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_caught_up_ends_with_a_prepared_xa_under_steady_traffic() {
    let mut c = my::conn().await;
    let mut xa = my::conn().await;
    let s = Scenario::mysql("myxabusy");
    let (t, other) = (format!("t_{}", s.name), format!("o_{}", s.name));
    exec(
        &mut c,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY); CREATE TABLE {other} (id INT AUTO_INCREMENT PRIMARY KEY, v INT);"),
    )
    .await;
    let q = format!("app.{t}");
    let sid = server_id();
    let args = ["--flush-interval-ms", "200", "--server-id", &sid];
    s.run_caught_up_with(&[&q], &args);

    let xid = format!("{}_x", s.name);
    let rollback = my::XaRollbackGuard(xid.clone());
    exec(
        &mut xa,
        &format!(
            "XA START '{xid}'; INSERT INTO {t} VALUES (1); XA END '{xid}'; XA PREPARE '{xid}';"
        ),
    )
    .await;
    exec(&mut c, &format!("INSERT INTO {t} VALUES (2)")).await;
    // Steady traffic on a table the pipeline does not capture, for longer than the run needs.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn({
        let other = other.clone();
        async move {
            let mut w = my::conn().await;
            while !*stop_rx.borrow_and_update() {
                exec(&mut w, &format!("INSERT INTO {other} (v) VALUES (1)")).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let started = Instant::now();
    let mut cmd = s.command("run", &[&q], &args);
    cmd.arg("--until-caught-up");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    stop_tx.send(true).unwrap();
    writer.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    exec(&mut xa, &format!("XA COMMIT '{xid}'")).await;
    std::mem::forget(rollback);
    s.run_caught_up_with(&[&q], &args);
    let ids: Vec<i64> = s
        .output_rows(&q, "id::bigint as id")
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [2, 1],
        "the plain insert, then the XA transaction at its commit"
    );
    my::drop_tables(&[&t, &other]).await;
}

/// Issue 12 item 4 on Oracle MySQL: binary JSON of every kind (objects, arrays, nesting, every
/// scalar, MySQL-typed scalars, a document over 64 KiB) reads back through snapshot and stream
/// equal (as JSON) to what the server prints; transactions written with
/// `binlog_transaction_compression = ON` stream like the others; an INVISIBLE column is
/// captured by both; `caching_sha2_password` works over plain TCP with an empty cache (RSA
/// exchange); PARTIAL_JSON is refused with its fix, by `check` and by `run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_mysql_json_compression_invisible_columns_and_partial_json() {
    let server = Server::MySql;
    let mut c = server.conn().await;
    let mut admin = server.admin().await;
    let s = server.scenario("myfmt");
    let table = format!("t_{}", s.name);
    exec(
        &mut c,
        &format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id INT PRIMARY KEY, j JSON, h INT INVISIBLE); \
             INSERT INTO {table} (id, j, h) VALUES \
             (1, '{{\"a\": 1, \"k\": [1, 2.5, \"v\", true, false, null], \"nested\": {{\"x\": {{\"y\": [{{}}, []]}}}}, \"s\": \"é \\\\\" \\\\\\\\ \\\\n\"}}', 10), \
             (2, '\"just a string\"', 20), (3, '12345678901234', 30), (4, '-5', 40), (5, '1.5e300', 50), \
             (6, 'null', 60), (7, '[]', 70), (8, '{{}}', 80), (9, 'true', 90), (10, NULL, 100), \
             (11, JSON_OBJECT('d', CAST(1.50 AS DECIMAL(6,2)), 'dt', CAST('2024-05-06 07:08:09.123456' AS DATETIME(6)), \
                  'date', CAST('2024-05-06' AS DATE), 't', CAST('07:08:09' AS TIME), 'u', CAST(18446744073709551615 AS UNSIGNED)), 110), \
             (12, CAST(CONCAT('[', REPEAT('\"xxxxxxxxxx\",', 10000), '1]') AS JSON), 120), \
             (13, JSON_OBJECT('big', CAST(CONCAT('[', REPEAT('\"yyyyyyyyyy\",', 7000), '2]') AS JSON), 'k', 1), 130);"
        ),
    )
    .await;
    let qualified = format!("app.{table}");
    let sid = server_id();
    // An empty caching_sha2_password cache: the first login over TCP takes the full exchange.
    exec(&mut admin, "FLUSH PRIVILEGES").await;
    let out = s
        .command("check", &[&qualified], &["--server-id", &sid])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check over plain TCP with an empty auth cache: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let args = ["--flush-interval-ms", "200", "--server-id", &sid];
    s.run_caught_up_with(&[&qualified], &args);
    // The same documents through the stream: plain, then compressed, then an update and a
    // delete in one compressed transaction.
    exec(
        &mut c,
        &format!(
            "INSERT INTO {table} (id, j, h) SELECT id + 100, j, h + 1 FROM {table} WHERE id < 100"
        ),
    )
    .await;
    exec(
        &mut admin,
        &format!(
            "SET SESSION binlog_transaction_compression = ON; \
             INSERT INTO app.{table} (id, j, h) SELECT id + 200, j, h + 2 FROM app.{table} WHERE id < 100; \
             START TRANSACTION; UPDATE app.{table} SET j = JSON_SET(j, '$.a', 2), h = 0 WHERE id = 201; \
             DELETE FROM app.{table} WHERE id = 210; COMMIT;"
        ),
    )
    .await;
    let file: String = admin
        .query_first::<mysql_async::Row, _>("SHOW BINARY LOG STATUS")
        .await
        .unwrap()
        .and_then(|r| r.get(0))
        .unwrap();
    let kinds: Vec<mysql_async::Row> = admin
        .query(format!("SHOW BINLOG EVENTS IN '{file}'"))
        .await
        .unwrap();
    assert!(
        kinds
            .iter()
            .any(|r| r.get::<String, _>(2).as_deref() == Some("Transaction_payload")),
        "the server wrote compressed transactions"
    );
    s.run_caught_up_with(&[&qualified], &args);

    let source: Vec<(i32, Option<String>, Option<i32>)> = c
        .query(format!("SELECT id, CAST(j AS CHAR), h FROM {table}"))
        .await
        .unwrap();
    let as_json = |t: &Option<String>| {
        t.as_ref().map(|t| {
            serde_json::from_str::<serde_json::Value>(t).unwrap_or_else(|e| panic!("{e}: {t}"))
        })
    };
    let rows = s.output_rows(&qualified, "_op, id, j, h, _unavailable_cols");
    let mut latest = std::collections::BTreeMap::new();
    for r in &rows {
        assert!(
            r["_unavailable_cols"].is_null()
                || r["_unavailable_cols"].as_array().is_some_and(Vec::is_empty),
            "no column may be unavailable: {r}"
        );
        let id = r["id"].as_i64().unwrap() as i32;
        if r["_op"] == "D" {
            latest.remove(&id);
        } else {
            latest.insert(
                id,
                (
                    as_json(&r["j"].as_str().map(str::to_string)),
                    r["h"].as_i64(),
                ),
            );
        }
    }
    assert_eq!(latest.len(), source.len(), "{latest:?}");
    for (id, j, h) in &source {
        let got = latest.get(id).unwrap_or_else(|| panic!("id {id} missing"));
        assert_eq!(got.0, as_json(j), "id {id}");
        assert_eq!(got.1, h.map(i64::from), "invisible column h of id {id}");
    }
    assert!(
        rows.iter().any(|r| r["_op"] == "U" && r["id"] == 201),
        "the compressed UPDATE is in the output"
    );
    eprintln!(
        "MySQL formats: {} output rows, {} source rows equal as JSON",
        rows.len(),
        source.len()
    );

    // PARTIAL_JSON: check says what to change; run refuses the event with the fix.
    exec(
        &mut admin,
        "SET GLOBAL binlog_row_value_options = 'PARTIAL_JSON'",
    )
    .await;
    let out = s
        .command("check", &[&qualified], &["--server-id", &sid])
        .output()
        .unwrap();
    exec(&mut admin, "SET GLOBAL binlog_row_value_options = ''").await;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && report.contains("binlog_row_value_options"),
        "{report}"
    );
    exec(
        &mut admin,
        &format!(
            "SET SESSION binlog_row_value_options = 'PARTIAL_JSON'; \
             UPDATE app.{table} SET j = JSON_SET(j, '$.a', 3) WHERE id = 1;"
        ),
    )
    .await;
    let out = s
        .command(
            "run",
            &[&qualified],
            &[&["--until-caught-up"][..], &args].concat(),
        )
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && log.contains("binlog_row_value_options"),
        "{log}"
    );
    server.drop_tables(&[&table]).await;
}
