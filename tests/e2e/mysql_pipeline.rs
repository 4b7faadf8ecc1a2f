//! MySQL/MariaDB → Parquet end to end: the real MariaDB of `infra/local/stack` (ROW binlog),
//! the real binary, DuckDB as the reader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tidemark_e2e::both_servers;
use tidemark_e2e::harness::{self, Scenario, assert_exactly_once_against, sigterm, stderr_of};
use tidemark_e2e::mysql::{self as my, Server, exec, versioned_table, versions, workload};

/// A unique server_id per scenario: parallel tests must not share one (ERROR 4052).
fn server_id() -> String {
    fastrand::u32(2_000_000..2_000_000_000).to_string()
}

async fn hand_off(server: Server) {
    let mut c = server.conn().await;
    let s = server.scenario("myhandoff");
    let table = format!("t_{}", s.name);
    server.versioned_table(&mut c, &table, 20_000).await;
    let qualified = format!("app.{table}");
    let sid = server_id();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(server.workload(table.clone(), 20_001, stop_rx));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let args = [
        "--flush-interval-ms",
        "500",
        "--server-id",
        &sid,
        "--snapshot-part-rows",
        "5000",
    ];
    let run = s.spawn_run(&[&qualified], &args);
    tokio::time::sleep(Duration::from_secs(5)).await;
    sigterm(&run);
    let (status, log) = stderr_of(run);
    assert!(
        status.success(),
        "graceful stop must exit 0: {status}\n{log}"
    );
    assert!(log.contains("snapshot complete"), "{log}");

    let run = s.spawn_run(&[&qualified], &args);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sigterm(&run);
    let (status, log) = stderr_of(run);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("\"by\":\"gtid\""),
        "MariaDB, and MySQL with gtid_mode = ON, resume by GTID: {log}"
    );
    stop_tx.send(true).unwrap();
    let ops = writer.await.unwrap();
    s.run_until_caught_up(&[&qualified]);

    let checked = assert_exactly_once_against(&s, &qualified, &versions(&mut c, &table).await);
    assert!(
        ops > 50 && checked > 20_000,
        "ops {ops}, rows checked {checked}"
    );
    eprintln!("hand-off: {ops} concurrent operations, {checked} output rows checked");
    server.drop_tables(&[&table]).await;
}

both_servers!(
    snapshot_hand_off_with_concurrent_writes_then_graceful_restart,
    hand_off
);

/// Restarts (SIGTERM) by file:pos and by GTID, with FLUSH BINARY LOGS between and during runs.
async fn restarts_across_rotation(server: Server) {
    for resume in ["file", "gtid"] {
        let mut c = server.conn().await;
        let mut admin = server.admin().await;
        let s = server.scenario(&format!("myrot{resume}"));
        let table = format!("t_{}", s.name);
        server.versioned_table(&mut c, &table, 2_000).await;
        let qualified = format!("app.{table}");
        let sid = server_id();
        let args = [
            "--flush-interval-ms",
            "200",
            "--server-id",
            &sid,
            "--resume",
            resume,
        ];

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(server.workload(table.clone(), 2_001, stop_rx));
        for _ in 0..4 {
            let run = s.spawn_run(&[&qualified], &args);
            tokio::time::sleep(Duration::from_millis(fastrand::u64(700..1_500))).await;
            exec(&mut admin, "FLUSH BINARY LOGS").await;
            tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1_000))).await;
            sigterm(&run);
            let (status, log) = stderr_of(run);
            assert!(status.success(), "{log}");
            let by = if resume == "gtid" {
                "\"by\":\"gtid\""
            } else {
                "\"by\":\"file:pos\""
            };
            assert!(log.contains(by), "expected {by}: {log}");
            exec(&mut admin, "FLUSH BINARY LOGS").await; // rotated while stopped
        }
        stop_tx.send(true).unwrap();
        let ops = writer.await.unwrap();
        s.run_until_caught_up(&[&qualified]);
        let checked = assert_exactly_once_against(&s, &qualified, &versions(&mut c, &table).await);
        eprintln!("resume by {resume}: {ops} operations, 8 rotations, {checked} rows checked");
        server.drop_tables(&[&table]).await;
    }
}

both_servers!(
    restart_by_file_pos_and_by_gtid_across_binlog_rotation,
    restarts_across_rotation
);

async fn kill_nine(server: Server) {
    let mut c = server.conn().await;
    let s = server.scenario("mykill9");
    let table = format!("t_{}", s.name);
    server.versioned_table(&mut c, &table, 5_000).await;
    let qualified = format!("app.{table}");
    let sid = server_id();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(server.workload(table.clone(), 5_001, stop_rx));
    let kills = 12;
    for i in 0..kills {
        let mut run = s.spawn_run(
            &[&qualified],
            &[
                "--flush-interval-ms",
                "100",
                "--max-batch-rows",
                "300",
                "--server-id",
                &sid,
            ],
        );
        let wait = if i == 0 {
            fastrand::u64(100..600)
        } else {
            fastrand::u64(300..2_000)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        run.kill().unwrap(); // SIGKILL
        let _ = run.wait();
    }
    stop_tx.send(true).unwrap();
    let ops = writer.await.unwrap();
    s.run_until_caught_up(&[&qualified]);
    let checked = assert_exactly_once_against(&s, &qualified, &versions(&mut c, &table).await);
    eprintln!("kill -9 x{kills}: {ops} operations, {checked} output rows checked");
    server.drop_tables(&[&table]).await;
}

both_servers!(kill_nine_at_random_instants_then_exactly_once, kill_nine);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_resumes_after_kill_nine_without_gap_or_duplicate() {
    let mut c = my::conn().await;
    let s = Scenario::mysql("myresume");
    let table = format!("t_{}", s.name);
    versioned_table(&mut c, &table, 100_000).await;
    let qualified = format!("app.{table}");
    let sid = server_id();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(workload(table.clone(), 100_001, stop_rx));
    let checkpoint = s.state().join(format!("{}.json", s.name));
    let progress = || {
        std::fs::read_to_string(&checkpoint)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|cp| serde_json::json!([cp["snapshot"]["current"], cp["snapshot"]["done"]]))
            .unwrap_or_default()
    };
    let (mut kills, mut resumed) = (0, false);
    while progress()[1] != true {
        let before = progress();
        let mut run = s.spawn_run(
            &[&qualified],
            &[
                "--snapshot-part-rows",
                "2000",
                "--flush-interval-ms",
                "200",
                "--server-id",
                &sid,
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while progress() == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..80))).await;
        kills += usize::from(progress()[1] == false);
        run.kill().unwrap();
        let (_, log) = stderr_of(run);
        resumed |= log.contains("resuming the interrupted snapshot");
        assert!(kills < 200, "the snapshot never finishes");
    }
    stop_tx.send(true).unwrap();
    let ops = writer.await.unwrap();
    s.run_until_caught_up(&[&qualified]);
    assert!(kills >= 3, "only {kills} kills landed inside the snapshot");
    assert!(resumed, "no run resumed the interrupted snapshot");
    let checked = assert_exactly_once_against(&s, &qualified, &versions(&mut c, &table).await);
    eprintln!(
        "snapshot resume: {kills} kills inside the snapshot, {ops} operations, {checked} rows checked"
    );
    my::drop_tables(&[&table]).await;
}

async fn ddl_mid_stream(server: Server) {
    let mut c = server.conn().await;
    let s = server.scenario("myddl");
    let table = format!("t_{}", s.name);
    exec(
        &mut c,
        &format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INT PRIMARY KEY, a VARCHAR(10), b INT); \
             INSERT INTO {table} VALUES (1, 'one', 1);"
        ),
    )
    .await;
    let qualified = format!("app.{table}");
    let sid = server_id();
    let args = ["--server-id", sid.as_str()];
    s.command(
        "run",
        &[&qualified],
        &[&["--until-caught-up"][..], &args].concat(),
    )
    .output()
    .unwrap();
    exec(
        &mut c,
        &format!(
            "INSERT INTO {table} VALUES (2, 'two', 2); \
             ALTER TABLE {table} ADD COLUMN c DECIMAL(6,2); \
             INSERT INTO {table} VALUES (3, 'three', 3, 3.25); \
             ALTER TABLE {table} RENAME COLUMN a TO a2; \
             UPDATE {table} SET a2 = 'uno' WHERE id = 1; \
             ALTER TABLE {table} DROP COLUMN b; \
             INSERT INTO {table} VALUES (4, 'four', 4.5); \
             TRUNCATE TABLE {table}; \
             INSERT INTO {table} VALUES (5, 'five', NULL);"
        ),
    )
    .await;
    let out = s
        .command(
            "run",
            &[&qualified],
            &[
                &["--until-caught-up", "--flush-interval-ms", "200"][..],
                &args,
            ]
            .concat(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A TRUNCATE as the first thing a run reads (no TABLE_MAP of the table seen yet).
    exec(&mut c, &format!("TRUNCATE TABLE {table}")).await;
    let flags = [
        &["--until-caught-up", "--flush-interval-ms", "200"][..],
        &args,
    ]
    .concat();
    let out = s.command("run", &[&qualified], &flags).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = s.output_rows(&qualified, "_op, id, a, a2, b, c");
    let got: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {} {}",
                r["_op"].as_str().unwrap_or("?"),
                r["id"],
                r["a"],
                r["a2"],
                r["b"],
                r["c"]
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "R 1 \"one\" null 1 null",
            "I 2 \"two\" null 2 null",
            "I 3 \"three\" null 3 \"3.25\"",
            "U 1 null \"uno\" 1 null",
            "I 4 null \"four\" null \"4.50\"",
            "T null null null null null",
            "I 5 null \"five\" null null",
            "T null null null null null",
        ],
        "{got:#?}"
    );
    // Every statement is in the schema history, beside the data, in order.
    let dir = s.out().join(&s.name).join("_schema_history");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let stmts: Vec<String> = files
        .iter()
        .map(|f| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            v["statement"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(stmts.len(), 5, "{stmts:?}");
    assert!(
        stmts[0].contains("ADD COLUMN c") && stmts[3].starts_with("TRUNCATE"),
        "{stmts:?}"
    );
    server.drop_tables(&[&table]).await;
}

both_servers!(
    ddl_mid_stream_changes_the_parquet_schema_and_is_recorded,
    ddl_mid_stream
);

async fn million_row_transaction(server: Server) {
    let mut c = server.conn().await;
    let s = server.scenario("mybigtx");
    let table = format!("t_{}", s.name);
    exec(
        &mut c,
        &format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGINT PRIMARY KEY, a INT, b VARCHAR(32), c DATETIME(6), d DECIMAL(12,2));"
        ),
    )
    .await;
    let qualified = format!("app.{table}");
    let sid = server_id();
    let args = ["--until-caught-up", "--server-id", sid.as_str()];
    assert!(
        s.command("run", &[&qualified], &args)
            .output()
            .unwrap()
            .status
            .success()
    );
    server
        .insert_numbers(
            &mut c,
            &table,
            "n, n % 1000, LEFT(SHA2(n, 256), 32), NOW(6), n / 100",
            1_000_000,
        )
        .await;
    let started = Instant::now();
    let out = s.command("run", &[&qualified], &args).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let peak = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["peak_rss_mib"].as_u64())
        .expect("peak_rss_mib in the exit log line");
    let rows = harness::duckdb(&format!(
        "select count(*) as n, count(distinct id) as k, min(_ord) as lo, max(_ord) as hi, count(distinct _pos) as txs \
         from read_parquet('{}/{}/{qualified}/changes/**/*.parquet')",
        s.out().display(),
        s.name
    ));
    assert_eq!(rows[0]["n"], 1_000_000);
    assert_eq!(rows[0]["k"], 1_000_000);
    assert_eq!(rows[0]["txs"], 1);
    assert_eq!(
        (rows[0]["lo"].as_i64(), rows[0]["hi"].as_i64()),
        (Some(0), Some(999_999))
    );
    eprintln!(
        "1M-row transaction: {:.1}s, peak RSS {peak} MiB",
        started.elapsed().as_secs_f64()
    );
    assert!(peak < 300, "peak RSS {peak} MiB >= 300 MiB");
    server.drop_tables(&[&table]).await;
}

both_servers!(
    million_row_transaction_streams_in_bounded_memory,
    million_row_transaction
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_format_dml_and_minimal_row_images_are_refused_with_the_fix() {
    let mut c = my::conn().await;
    let mut admin = my::admin().await;
    let s = Scenario::mysql("mystmt");
    let table = format!("t_{}", s.name);
    exec(
        &mut c,
        &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INT PRIMARY KEY);"),
    )
    .await;
    let qualified = format!("app.{table}");
    let sid = server_id();
    let args = [
        "--until-caught-up",
        "--server-id",
        sid.as_str(),
        "--max-retries",
        "0",
    ];
    assert!(
        s.command("run", &[&qualified], &args)
            .output()
            .unwrap()
            .status
            .success()
    );
    // A session that overrides the format (needs a privileged user) writes statement entries.
    exec(
        &mut admin,
        &format!("SET SESSION binlog_format = 'STATEMENT'; INSERT INTO {table} VALUES (1);"),
    )
    .await;
    let out = s.command("run", &[&qualified], &args).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("binlog_format = ROW") && log.contains("statement-based"),
        "{log}"
    );
    // Nothing was committed past the statement: the position stays before it, so every run
    // refuses it again until the operator re-snapshots.
    let out = s.command("run", &[&qualified], &args).output().unwrap();
    assert!(!out.status.success());
    my::drop_tables(&[&table]).await;

    // A MINIMAL row image (another session override) is refused the same way.
    let s = Scenario::mysql("myminimal");
    let table = format!("t_{}", s.name);
    exec(
        &mut c,
        &format!("CREATE TABLE {table} (id INT PRIMARY KEY, a INT, b INT); INSERT INTO {table} VALUES (1, 1, 1);"),
    )
    .await;
    let qualified = format!("app.{table}");
    assert!(
        s.command("run", &[&qualified], &args)
            .output()
            .unwrap()
            .status
            .success()
    );
    exec(
        &mut admin,
        &format!(
            "SET SESSION binlog_format = 'ROW', binlog_row_image = 'MINIMAL'; UPDATE {table} SET a = 2 WHERE id = 1;"
        ),
    )
    .await;
    let out = s.command("run", &[&qualified], &args).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("partial row image") && log.contains("binlog_row_image = FULL"),
        "{log}"
    );
    my::drop_tables(&[&table]).await;
}

async fn every_type(server: Server) {
    let mut c = server.conn().await;
    let s = server.scenario("mytypes");
    let table = format!("t_{}", s.name);
    let columns = [
        ("ti", "TINYINT"),
        ("tiu", "TINYINT UNSIGNED"),
        ("si", "SMALLINT"),
        ("siu", "SMALLINT UNSIGNED"),
        ("mi", "MEDIUMINT"),
        ("miu", "MEDIUMINT UNSIGNED"),
        ("i", "INT"),
        ("iu", "INT UNSIGNED"),
        ("bi", "BIGINT"),
        ("biu", "BIGINT UNSIGNED"),
        ("dec1", "DECIMAL(10,2)"),
        ("dec2", "DECIMAL(38,10)"),
        ("dec3", "DECIMAL(65,30)"),
        ("f", "FLOAT"),
        ("d", "DOUBLE"),
        ("b1", "BIT(1)"),
        ("b12", "BIT(12)"),
        ("b64", "BIT(64)"),
        ("dt", "DATE"),
        ("tm", "TIME"),
        ("tm6", "TIME(6)"),
        ("tm3", "TIME(3)"),
        ("dtt", "DATETIME"),
        ("dtt3", "DATETIME(3)"),
        ("dtt6", "DATETIME(6)"),
        ("ts", "TIMESTAMP NULL"),
        ("ts6", "TIMESTAMP(6) NULL"),
        ("y", "YEAR"),
        ("c", "CHAR(5)"),
        ("vc", "VARCHAR(300)"),
        ("l1", "VARCHAR(20) CHARACTER SET latin1"),
        ("txt", "TEXT"),
        ("ltxt", "LONGTEXT"),
        ("bin", "BINARY(4)"),
        ("vbin", "VARBINARY(10)"),
        ("blb", "BLOB"),
        ("en", "ENUM('small','medium','large')"),
        ("st", "SET('a','b','c','d')"),
        ("js", "JSON"),
    ];
    let ddl: Vec<String> = columns.iter().map(|(n, t)| format!("{n} {t}")).collect();
    exec(&mut c, "SET time_zone = '+00:00'").await;
    exec(
        &mut c,
        &format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INT PRIMARY KEY, {}) DEFAULT CHARSET = utf8mb4;",
            ddl.join(", ")
        ),
    )
    .await;
    let values = [
        "-128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615, \
         -12345678.91, 1234567890123456789012345678.0123456789, -12345678901234567890123456789012345.123456789012345678901234567890, \
         1234567.75, -2.25e100, b'1', b'101010101010', b'1111111111111111111111111111111111111111111111111111111111111111', \
         '1000-01-01', '-838:59:59', '12:34:56.654321', '-00:00:01.500', '9999-12-31 23:59:59', '2024-02-29 12:00:00.123', '1970-01-01 00:00:00.000001', \
         '1970-01-01 00:00:01', '2038-01-19 03:14:07.999999', 2155, 'ab', REPEAT('é', 300), 'café €“', 'text ✓', REPEAT('x', 70000), \
         X'00010203', X'ff00', X'deadbeef', 'large', 'a,d', '{\"k\": [1, 2.5, \"v\"]}'",
        "0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'0', b'0', b'0', '2024-02-29', '00:00:00', '00:00:00', '00:00:00', \
         '2000-01-01 00:00:00', '2000-01-01 00:00:00', '2000-01-01 00:00:00', '2000-01-01 00:00:00', '2000-01-01 00:00:00', 1901, '', '', '', '', '', \
         X'', X'', X'', 'small', '', '[]'",
    ];
    let nulls = vec!["NULL"; columns.len()].join(", ");
    let insert = |ids: [i32; 3]| {
        format!(
            "INSERT INTO {table} VALUES ({}, {}), ({}, {}), ({}, {nulls});",
            ids[0], values[0], ids[1], values[1], ids[2]
        )
    };
    exec(&mut c, &insert([1, 2, 3])).await; // the snapshot reads these
    let qualified = format!("app.{table}");
    let sid = server_id();
    let args = ["--until-caught-up", "--server-id", sid.as_str()];
    let run = |s: &Scenario| {
        let out = s.command("run", &[&qualified], &args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&s);
    exec(&mut c, &insert([11, 12, 13])).await; // the stream reads these
    run(&s);

    // The server's own rendering, as text, vs DuckDB's reading of the Parquet, as text.
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let casts: Vec<String> = names
        .iter()
        .map(|n| match *n {
            "b1" | "b12" | "b64" => format!("CAST({n} AS UNSIGNED)"),
            "bin" | "vbin" | "blb" => format!("LOWER(HEX({n}))"),
            "f" => format!("CAST({n} AS DOUBLE)"),
            "ts" | "ts6" | "dtt" | "dtt3" | "dtt6" => {
                format!("DATE_FORMAT({n}, '%Y-%m-%d %H:%i:%s.%f')")
            }
            _ => n.to_string(),
        })
        .collect();
    let src: Vec<mysql_async::Row> = c
        .query(format!(
            "SELECT id, {} FROM {table} ORDER BY id",
            casts.join(", ")
        ))
        .await
        .unwrap();
    let text = |v: &mysql_async::Value| match v {
        mysql_async::Value::NULL => "NULL".to_string(),
        mysql_async::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => other.as_sql(true).trim_matches('\'').to_string(),
    };
    let out_cols: Vec<String> = names
        .iter()
        .map(|n| match *n {
            "f" => format!("cast(cast({n} as double) as varchar) as {n}"),
            "ts" | "ts6" | "dtt" | "dtt3" | "dtt6" => {
                format!("strftime({n}, '%Y-%m-%d %H:%M:%S.%f') as {n}")
            }
            "bin" | "vbin" | "blb" => format!("lower(hex({n})) as {n}"),
            // `dt` is the partition key: the column is written as `dt_`.
            "dt" => "cast(dt_ as varchar) as dt".to_string(),
            _ => format!("cast({n} as varchar) as {n}"),
        })
        .collect();
    let got = s.output_rows(&qualified, &format!("id, {}", out_cols.join(", ")));
    assert_eq!(got.len(), 6, "{got:#?}");
    let mut mismatches = Vec::new();
    for (row, out) in src.iter().zip(&got) {
        let id = text(&row.as_ref(0).unwrap().clone());
        assert_eq!(out["id"].to_string(), id);
        for (i, n) in names.iter().enumerate() {
            let want = text(row.as_ref(i + 1).unwrap());
            let have = match &out[*n] {
                serde_json::Value::Null => "NULL".to_string(),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let same = want == have
                || (*n == "f" || *n == "d") && want.parse::<f64>().ok() == have.parse::<f64>().ok()
                || (*n == "js")
                    && serde_json::from_str::<serde_json::Value>(&want).ok()
                        == serde_json::from_str::<serde_json::Value>(&have).ok();
            if !same {
                mismatches.push(format!("id {id} {n}: {server:?} {want:?} parquet {have:?}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    server.drop_tables(&[&table]).await;
}

both_servers!(
    every_type_round_trips_through_snapshot_and_stream,
    every_type
);

/// Statement-format changes to tables tidemark does not capture pass by; the captured
/// transaction right after them, read by the next run, is written (regression: a commit without
/// a visible group once took the next group's begin coordinate and hid it as already durable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_dml_on_other_tables_passes_by() {
    let mut c = my::conn().await;
    let mut admin = my::admin().await;
    let s = Scenario::mysql("myother");
    let (table, other) = (format!("t_{}", s.name), format!("o_{}", s.name));
    exec(
        &mut c,
        &format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY); CREATE TABLE {other} (id INT PRIMARY KEY);"
        ),
    )
    .await;
    let qualified = format!("app.{table}");
    let sid = server_id();
    let args = ["--until-caught-up", "--server-id", sid.as_str()];
    let run = |s: &Scenario| {
        let out = s.command("run", &[&qualified], &args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&s);
    exec(
        &mut admin,
        &format!("SET SESSION binlog_format = 'STATEMENT'; INSERT INTO {other} VALUES (1); SET SESSION binlog_format = 'ROW';"),
    )
    .await;
    run(&s);
    exec(&mut c, &format!("INSERT INTO {table} VALUES (1)")).await;
    run(&s);
    let got: Vec<String> = s
        .output_rows(&qualified, "_op, id")
        .iter()
        .map(|r| format!("{} {}", r["_op"].as_str().unwrap_or("?"), r["id"]))
        .collect();
    assert_eq!(got, ["I 1"]);
    my::drop_tables(&[&table, &other]).await;
}

/// Issue 11 item 1: a table without a primary key (FULL row images carry the before image)
/// keeps the old image of every UPDATE (`D` + `U`), so replaying the output rebuilds the table
/// as a multiset, duplicates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_table_updates_keep_the_old_image_and_replay_as_a_multiset() {
    let mut c = my::conn().await;
    let s = Scenario::mysql("mykeyless");
    let t = format!("k_{}", s.name);
    exec(
        &mut c,
        &format!(
            "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (a INT, b VARCHAR(8)); \
             INSERT INTO {t} VALUES (1, 'x'), (1, 'x'), (2, 'y'), (3, NULL);"
        ),
    )
    .await;
    let q = format!("app.{t}");
    let sid = server_id();
    let args = ["--flush-interval-ms", "300", "--server-id", &sid];
    s.run_caught_up_with(&[&q], &args);
    exec(
        &mut c,
        &format!(
            "UPDATE {t} SET b = 'z' WHERE a = 1 LIMIT 1; \
             UPDATE {t} SET a = a + 10 WHERE a = 2; \
             DELETE FROM {t} WHERE a = 1 LIMIT 1; \
             INSERT INTO {t} VALUES (3, NULL); \
             UPDATE {t} SET b = 'w' WHERE a = 3;"
        ),
    )
    .await;
    s.run_caught_up_with(&[&q], &args);

    let rows = s.output_rows(&q, "a, b, _op");
    let ops: Vec<&str> = rows.iter().map(|r| r["_op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "R", "R", "R", "R", "D", "U", "D", "U", "D", "I", "D", "U", "D", "U"
        ],
        "{rows:#?}"
    );
    let mut source: Vec<String> = c
        .query::<(i32, Option<String>), _>(format!("SELECT a, b FROM {t}"))
        .await
        .unwrap()
        .into_iter()
        .map(|(a, b)| format!("{a}|{}", serde_json::json!(b)))
        .collect();
    source.sort();
    assert_eq!(harness::replay_multiset(&rows, &["a", "b"]), source);
    my::drop_tables(&[&t]).await;
}

/// Issue 11 items 3 and 4 on MariaDB: backticks quote as MySQL does (dots inside, ``` `` ```
/// escapes), names follow the server's case rules (here case-sensitive: a name that only
/// matches in another case is refused with the backticked form), and a table added after the
/// snapshot is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_names_follow_the_server_and_added_tables_are_refused() {
    let mut c = my::conn().await;
    let s = Scenario::mysql("mynames");
    let (mixed, dotted, later) = (
        format!("Orders_{}", s.name),
        format!("we.ird`{}", s.name),
        format!("later_{}", s.name),
    );
    let bq = |t: &str| format!("`{}`", t.replace('`', "``"));
    exec(
        &mut c,
        &format!(
            "CREATE TABLE {} (id INT PRIMARY KEY); CREATE TABLE {} (id INT PRIMARY KEY); \
             CREATE TABLE {} (id INT PRIMARY KEY); \
             INSERT INTO {} VALUES (1); INSERT INTO {} VALUES (2); INSERT INTO {} VALUES (3);",
            bq(&mixed),
            bq(&dotted),
            bq(&later),
            bq(&mixed),
            bq(&dotted),
            bq(&later)
        ),
    )
    .await;
    let sid = server_id();
    let args = ["--flush-interval-ms", "300", "--server-id", &sid];

    let lower = format!("app.{}", mixed.to_lowercase());
    let (code, log) = s.run_failing(&[&lower], &args);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains(&lower), "the name as written: {log}");
    assert!(
        log.contains(&format!("`app`.`{mixed}`")),
        "the backticked form: {log}"
    );
    assert!(s.output_files().is_empty());

    let (qm, qd) = (format!("app.{mixed}"), format!("app.{}", bq(&dotted)));
    s.run_caught_up_with(&[&qm, &qd], &args);
    exec(
        &mut c,
        &format!(
            "INSERT INTO {} VALUES (20); INSERT INTO {} VALUES (30);",
            bq(&dotted),
            bq(&later)
        ),
    )
    .await;
    let files = s.output_files();
    let ql = format!("app.{later}");
    let (code, log) = s.run_failing(&[&qm, &qd, &ql], &args);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains(&later) && log.contains("tidemark reset"),
        "{log}"
    );
    assert_eq!(s.output_files(), files, "nothing written");

    s.run_caught_up_with(&[&qm, &qd], &args);
    let got = s.rows_by_folder();
    let d_dir = format!("app.we%2Eird%60{}", s.name);
    assert_eq!(
        got,
        [
            format!("app.{mixed} 1 R"),
            format!("{d_dir} 2 R"),
            format!("{d_dir} 20 I")
        ],
        "{got:#?}"
    );
    my::drop_tables(&[&bq(&mixed), &bq(&dotted), &bq(&later)]).await;
}

/// Issue 12 item 2 on the stack's Oracle MySQL 9.7: `check` reads its settings (no
/// information_schema.GLOBAL_VARIABLES there) and passes; `run` snapshots, streams, restarts by
/// file:pos and the output equals the table; `status` and `reset` work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_mysql_check_snapshot_stream_restart_status_reset() {
    let mut c = my::oracle().await;
    let s = Scenario::oracle_mysql("oracle");
    let table = format!("t_{}", s.name);
    my::versioned_table_portable(&mut c, &table, 2_000).await;
    let qualified = format!("app.{table}");
    let sid = server_id();
    let out = s
        .command("check", &[&qualified], &["--server-id", &sid])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "ok    binlog_format",
        "ok    binlog_row_image",
        "ok    binlog_row_metadata",
        "REPLICATION CLIENT granted",
    ] {
        assert!(report.contains(want), "{want}: {report}");
    }

    let args = ["--flush-interval-ms", "200", "--server-id", &sid];
    s.run_caught_up_with(&[&qualified], &args);
    exec(
        &mut c,
        &format!(
            "UPDATE {table} SET v = v + 1 WHERE id <= 10; DELETE FROM {table} WHERE id = 20; \
             INSERT INTO {table} VALUES (5000, 0, 'new');"
        ),
    )
    .await;
    let out = s.run_caught_up_with(&[&qualified], &args);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("\"by\":\"gtid\""),
        "MySQL with gtid_mode = ON resumes by GTID set: {log}"
    );
    exec(
        &mut c,
        &format!("UPDATE {table} SET v = v + 1 WHERE id <= 5"),
    )
    .await;
    s.run_caught_up_with(&[&qualified], &args);
    let checked = assert_exactly_once_against(&s, &qualified, &versions(&mut c, &table).await);
    assert!(checked > 2_000, "{checked}");

    let status = s.status_json();
    assert_eq!(status["state"], "STOPPED", "{status}");
    let out = s.command("reset", &[], &["--yes"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.status_json()["state"], "NEW");
    exec(&mut c, &format!("DROP TABLE {table}")).await;
}

/// Issue 12 items 5 and 7: a MySQL user without RELOAD (as on RDS and Aurora, which refuse
/// FLUSH TABLES WITH READ LOCK) snapshots with table locks, under concurrent writes, exactly
/// once; `check` says which lock a run will take and what is missing; a server with
/// `mysql.rds_configuration` counts as managed and its binlog retention is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_mysql_snapshot_without_reload_takes_table_locks() {
    let server = Server::MySql;
    let mut c = server.conn().await;
    let mut admin = server.admin().await;
    exec(
        &mut admin,
        "CREATE USER IF NOT EXISTS 'tm_norl'@'127.0.0.1' IDENTIFIED BY 'tidemark'; \
         GRANT REPLICATION SLAVE, REPLICATION CLIENT, XA_RECOVER_ADMIN ON *.* TO 'tm_norl'@'127.0.0.1'; \
         GRANT SELECT, LOCK TABLES ON app.* TO 'tm_norl'@'127.0.0.1'; \
         CREATE USER IF NOT EXISTS 'tm_nolock'@'127.0.0.1' IDENTIFIED BY 'tidemark'; \
         GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'tm_nolock'@'127.0.0.1'; \
         GRANT SELECT ON app.* TO 'tm_nolock'@'127.0.0.1'; \
         CREATE USER IF NOT EXISTS 'tm_alldb'@'127.0.0.1' IDENTIFIED BY 'tidemark'; \
         GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'tm_alldb'@'127.0.0.1'; \
         GRANT ALL ON app.* TO 'tm_alldb'@'127.0.0.1';",
    )
    .await;
    let url = |user: &str| server.url().replacen("tidemark:", &format!("{user}:"), 1);
    let mut s = server.scenario("mynorl");
    s.source = Some(url("tm_norl"));
    let table = format!("t_{}", s.name);
    server.versioned_table(&mut c, &table, 20_000).await;
    let qualified = format!("app.{table}");
    let sid = server_id();
    let check = |s: &Scenario| s.check_report(&[&qualified], &["--server-id", &sid]);
    let (ok, report) = check(&s);
    assert!(
        ok && report.contains("LOCK TABLES ... READ") && report.contains("no RELOAD"),
        "{report}"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(server.workload(table.clone(), 20_001, stop_rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let args = [
        "--flush-interval-ms",
        "300",
        "--server-id",
        &sid,
        "--snapshot-part-rows",
        "5000",
    ];
    let run = s.spawn_run(&[&qualified], &args);
    tokio::time::sleep(Duration::from_secs(4)).await;
    sigterm(&run);
    let (status, log) = stderr_of(run);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("LOCK TABLES ... READ on the copied tables"),
        "{log}"
    );
    stop_tx.send(true).unwrap();
    let ops = writer.await.unwrap();
    s.run_caught_up_with(&[&qualified], &args);
    let checked = assert_exactly_once_against(&s, &qualified, &versions(&mut c, &table).await);
    assert!(ops > 20 && checked > 20_000, "ops {ops}, rows {checked}");
    eprintln!("table-lock snapshot: {ops} concurrent operations, {checked} rows checked");

    // Neither RELOAD nor LOCK TABLES: check says what to grant.
    let mut bare = server.scenario("mynolock");
    bare.source = Some(url("tm_nolock"));
    let (ok, report) = check(&bare);
    assert!(!ok && report.contains("GRANT LOCK TABLES"), "{report}");
    // ALL on the database includes LOCK TABLES.
    let mut all_db = server.scenario("myalldb");
    all_db.source = Some(url("tm_alldb"));
    let (ok, report) = check(&all_db);
    assert!(ok && report.contains("LOCK TABLES ... READ"), "{report}");

    // A managed server (RDS): table locks whatever the grants, and binlog retention checked.
    exec(
        &mut admin,
        "CREATE TABLE IF NOT EXISTS mysql.rds_configuration (name VARCHAR(100) PRIMARY KEY, value VARCHAR(100)); \
         REPLACE INTO mysql.rds_configuration VALUES ('binlog retention hours', NULL);",
    )
    .await;
    let plain = server.scenario("myrds");
    let (_, report) = check(&plain);
    exec(
        &mut admin,
        "UPDATE mysql.rds_configuration SET value = '12'",
    )
    .await;
    let (_, report12) = check(&plain);
    exec(&mut admin, "DROP TABLE mysql.rds_configuration").await;
    assert!(
        report.contains("RDS binlog retention hours is NULL")
            && report.contains("RDS/Aurora refuse FLUSH TABLES WITH READ LOCK"),
        "{report}"
    );
    assert!(
        report12.contains("RDS keeps binlogs only 12 h"),
        "{report12}"
    );
    server.drop_tables(&[&table]).await;
}
