//! PostgreSQL → Parquet end to end: the real server, the real binary, DuckDB as the reader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tidemark_e2e::harness::{
    self, Scenario, assert_exactly_once, sigterm, stderr_of, versioned_table, workload,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_hand_off_with_concurrent_writes_then_graceful_restart() {
    let c = harness::sql().await;
    let s = Scenario::new("handoff");
    let table = format!("t_{}", s.name);
    versioned_table(&c, &table, 20_000).await;
    let qualified = format!("public.{table}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(workload(table.clone(), 20_001, stop_rx));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Snapshot while writes go on; SIGTERM mid-stream must flush, commit and exit 0.
    let run = s.spawn_run(&[&qualified], &["--flush-interval-ms", "500"]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    sigterm(&run);
    let (status, log) = stderr_of(run);
    assert!(
        status.success(),
        "graceful stop must exit 0: {status}\n{log}"
    );
    assert!(log.contains("snapshot complete"), "{log}");

    // Restart while writes continue, then drain.
    let run = s.spawn_run(&[&qualified], &["--flush-interval-ms", "500"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sigterm(&run);
    assert!(stderr_of(run).0.success());
    stop_tx.send(true).unwrap();
    let ops = writer.await.unwrap();
    s.run_until_caught_up(&[&qualified]);

    let checked = assert_exactly_once(&s, &c, &table).await;
    assert!(
        ops > 50 && checked > 20_000,
        "ops {ops}, rows checked {checked}"
    );
    eprintln!("hand-off: {ops} concurrent operations, {checked} output rows checked");
    s.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_at_random_instants_then_exactly_once() {
    let c = harness::sql().await;
    let s = Scenario::new("kill9");
    let table = format!("t_{}", s.name);
    versioned_table(&c, &table, 5_000).await;
    let qualified = format!("public.{table}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(workload(table.clone(), 5_001, stop_rx));
    let kills = 12;
    for i in 0..kills {
        // Small batches and frequent flushes put kills between intent, objects and commit.
        let mut run = s.spawn_run(
            &[&qualified],
            &["--flush-interval-ms", "100", "--max-batch-rows", "500"],
        );
        let wait = if i == 0 {
            fastrand::u64(200..800)
        } else {
            fastrand::u64(300..2_500)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        run.kill().unwrap(); // SIGKILL
        let _ = run.wait();
    }
    stop_tx.send(true).unwrap();
    let ops = writer.await.unwrap();
    s.run_until_caught_up(&[&qualified]);

    let checked = assert_exactly_once(&s, &c, &table).await;
    eprintln!("kill -9 x{kills}: {ops} operations, {checked} output rows checked");
    s.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_key_change_delete_truncate_and_add_column() {
    let c = harness::sql().await;
    let s = Scenario::new("semantics");
    let (d, f) = (format!("d_{}", s.name), format!("f_{}", s.name));
    // Incompressible values over 2 kB are stored out of line (TOAST).
    let big = "(select string_agg(md5(random()::text), '') from generate_series(1, 200))";
    for (t, ident) in [(&d, "default"), (&f, "full")] {
        c.batch_execute(&format!(
            "drop table if exists {t}; create table {t} (id int primary key, n int, big text); \
             alter table {t} replica identity {ident}; \
             insert into {t} values (1, 0, {big}), (2, 0, {big}), (3, 0, 'small');"
        ))
        .await
        .unwrap();
    }
    let tables = [format!("public.{d}"), format!("public.{f}")];
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    s.run_until_caught_up(&tables);

    for t in [&d, &f] {
        c.batch_execute(&format!(
            "update {t} set n = 1 where id = 1; \
             update {t} set id = 20 where id = 2; \
             delete from {t} where id = 3; \
             alter table {t} add column extra text; \
             insert into {t} values (4, 0, 'x', 'new column');"
        ))
        .await
        .unwrap();
    }
    c.batch_execute(&format!("truncate {d}")).await.unwrap();
    s.run_until_caught_up(&tables);

    let cols =
        "id, n, big is null as big_null, length(big) as big_len, _unavailable_cols, _op, extra";
    let rows_d = s.output_rows(&format!("public.{d}"), cols);
    let rows_f = s.output_rows(&format!("public.{f}"), cols);
    let ops = |rows: &[serde_json::Value]| {
        rows.iter()
            .map(|r| r["_op"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ops(&rows_d),
        ["R", "R", "R", "U", "D", "U", "D", "I", "T"],
        "{rows_d:#?}"
    );
    assert_eq!(
        ops(&rows_f),
        ["R", "R", "R", "U", "D", "U", "D", "I"],
        "{rows_f:#?}"
    );

    // Unchanged TOAST: DEFAULT marks it unavailable (NULL, listed); FULL fills it from the old image.
    assert_eq!(rows_d[3]["big_null"], true);
    assert_eq!(rows_d[3]["_unavailable_cols"], serde_json::json!(["big"]));
    assert_eq!(rows_f[3]["big_null"], false);
    assert_eq!(rows_f[3]["big_len"], 6400);
    assert_eq!(rows_f[3]["_unavailable_cols"], serde_json::Value::Null);
    // Key change: delete of the old key, then the new row.
    assert_eq!(
        (rows_d[4]["id"].as_i64(), rows_d[5]["id"].as_i64()),
        (Some(2), Some(20))
    );
    assert_eq!(
        rows_d[4]["_unavailable_cols"],
        serde_json::json!(["n", "big"]),
        "old key image under DEFAULT"
    );
    assert_eq!(
        rows_f[4]["_unavailable_cols"],
        serde_json::Value::Null,
        "FULL old image is complete"
    );
    // DELETE under DEFAULT carries the key only.
    assert_eq!(rows_d[6]["id"], 3);
    assert_eq!(
        rows_d[6]["_unavailable_cols"],
        serde_json::json!(["n", "big"])
    );
    assert_eq!(rows_f[6]["n"], 0);
    // ADD COLUMN mid-stream: later rows carry it.
    assert_eq!(rows_d[7]["extra"], "new column");
    assert_eq!(rows_d[3]["extra"], serde_json::Value::Null);
    s.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_transaction_streams_in_bounded_memory() {
    let c = harness::sql().await;
    let s = Scenario::new("bigtx");
    let table = format!("t_{}", s.name);
    c.batch_execute(&format!(
        "drop table if exists {table}; create table {table} (id bigint primary key, a int, b text, c timestamptz, d numeric(12,2));"
    ))
    .await
    .unwrap();
    let qualified = format!("public.{table}");
    s.run_until_caught_up(&[&qualified]); // creates the slot (empty snapshot)

    c.batch_execute(&format!(
        "insert into {table} select g, g % 1000, md5(g::text), now(), g / 100.0 from generate_series(1, 1000000) g"
    ))
    .await
    .unwrap();
    let started = Instant::now();
    let out = s.run_until_caught_up(&[&qualified]);
    let log = String::from_utf8_lossy(&out.stderr);
    let peak = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["peak_rss_mib"].as_u64())
        .expect("peak_rss_mib in the exit log line");
    let rows = harness::duckdb(&format!(
        "select count(*) as n, count(distinct id) as k, min(_ord) as lo, max(_ord) as hi from read_parquet('{}/{}/{qualified}/changes/**/*.parquet')",
        s.out().display(),
        s.name
    ));
    assert_eq!(rows[0]["n"], 1_000_000);
    assert_eq!(rows[0]["k"], 1_000_000);
    assert_eq!(
        (rows[0]["lo"].as_i64(), rows[0]["hi"].as_i64()),
        (Some(0), Some(999_999))
    );
    eprintln!(
        "1M-row transaction: {:.1}s, peak RSS {peak} MiB",
        started.elapsed().as_secs_f64()
    );
    assert!(peak < 300, "peak RSS {peak} MiB >= 300 MiB");
    s.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_resumes_after_kill_nine_without_gap_or_duplicate() {
    let c = harness::sql().await;
    let s = Scenario::new("resume");
    // Integer key: resumed per chunk. uuid key: its copy restarts whole in the new snapshot.
    let (ints, uuids) = (format!("i_{}", s.name), format!("u_{}", s.name));
    versioned_table(&c, &ints, 200_000).await;
    c.batch_execute(&format!(
        "drop table if exists {uuids}; \
         create table {uuids} (k uuid primary key default gen_random_uuid(), id bigint not null unique, v int not null, payload text); \
         alter table {uuids} replica identity full; \
         insert into {uuids} (id, v, payload) select g, 0, md5(g::text) from generate_series(1, 50000) g;"
    ))
    .await
    .unwrap();
    let tables = [format!("public.{ints}"), format!("public.{uuids}")];
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let w1 = tokio::spawn(workload(ints.clone(), 200_001, stop_rx.clone()));
    let w2 = tokio::spawn(workload(uuids.clone(), 50_001, stop_rx));
    let checkpoint = s.state().join(format!("{}.json", s.name));
    let progress = || {
        std::fs::read_to_string(&checkpoint)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|cp| {
                let sn = &cp["snapshot"];
                serde_json::json!([sn["current"], sn["tables_done"], sn["done"]])
            })
            .unwrap_or_default()
    };
    let mut kills_in_snapshot = 0;
    let mut resumed = false;
    while progress()[2] != true {
        // Kill at a random instant shortly after the snapshot's durable progress moves.
        let before = progress();
        let mut run = s.spawn_run(
            &tables,
            &["--snapshot-part-rows", "1000", "--flush-interval-ms", "200"],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while progress() == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..120))).await;
        let in_snapshot = progress()[2] == false;
        run.kill().unwrap();
        let (_, log) = stderr_of(run);
        resumed |= log.contains("resuming the interrupted snapshot");
        kills_in_snapshot += usize::from(in_snapshot);
        assert!(kills_in_snapshot < 200, "the snapshot never finishes");
    }
    stop_tx.send(true).unwrap();
    let ops = w1.await.unwrap() + w2.await.unwrap();
    s.run_until_caught_up(&tables);
    assert!(
        kills_in_snapshot >= 3,
        "only {kills_in_snapshot} kills landed inside the snapshot"
    );
    assert!(resumed, "no run resumed the interrupted snapshot");

    let a = assert_exactly_once(&s, &c, &ints).await;
    let b = assert_exactly_once(&s, &c, &uuids).await;
    eprintln!(
        "snapshot resume: {kills_in_snapshot} kills inside the snapshot, {ops} operations, {} rows checked",
        a + b
    );
    s.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_and_case_colliding_column_names_are_renamed() {
    let c = harness::sql().await;
    let s = Scenario::new("names");
    let t = format!("r_{}", s.name);
    c.batch_execute(&format!(
        "drop table if exists {t}; create table {t} (id int primary key, dt date, \"_op\" text, \"Id\" int); \
         insert into {t} values (1, '2001-02-03', 'x', 10);"
    ))
    .await
    .unwrap();
    let q = format!("public.{t}");
    s.run_until_caught_up(&[&q]);
    c.batch_execute(&format!(
        "insert into {t} values (2, '2004-05-06', 'y', 20)"
    ))
    .await
    .unwrap();
    s.run_until_caught_up(&[&q]);
    let rows = harness::duckdb(&format!(
        "select id, dt_::varchar as d, \"_op_\" as o, \"Id_\" as i, _op, dt from read_parquet('{}/{}/{q}/changes/**/*.parquet', hive_partitioning = true)",
        s.out().display(),
        s.name
    ));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["d"], "2004-05-06");
    assert_eq!(
        (
            rows[0]["o"].as_str(),
            rows[0]["i"].as_i64(),
            rows[0]["_op"].as_str()
        ),
        (Some("y"), Some(20), Some("I"))
    );
    assert!(
        rows[0]["dt"].as_str().is_some_and(|d| d.len() == 10),
        "dt is the partition: {rows:?}"
    );
    let snap = s.output_rows(&q, "id, dt_::varchar as d, \"Id_\" as i");
    assert_eq!(snap[0]["d"], "2001-02-03");
    s.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_traffic_pins_no_wal() {
    let c = harness::sql().await;
    let s = Scenario::new("idle");
    let (published, other) = (format!("p_{}", s.name), format!("o_{}", s.name));
    c.batch_execute(&format!(
        "create table {published} (id int primary key); create table {other} (id int primary key, b text);"
    ))
    .await
    .unwrap();
    let q = format!("public.{published}");
    s.run_until_caught_up(&[&q]);
    // Only unpublished traffic: nothing for this pipeline, yet its slot must not hold the WAL.
    c.batch_execute(&format!(
        "insert into {other} select g, repeat('x', 500) from generate_series(1, 20000) g"
    ))
    .await
    .unwrap();
    let target: String = c
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    s.run_until_caught_up(&[&q]);
    let slot = format!("tidemark_{}", s.name);
    let row = c
        .query_one(
            "select confirmed_flush_lsn >= $1::text::pg_lsn, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 \
             from pg_replication_slots where slot_name = $2",
            &[&target, &slot],
        )
        .await
        .unwrap();
    let (advanced, behind): (bool, i64) = (row.get(0), row.get(1));
    assert!(
        advanced,
        "confirmed_flush_lsn did not reach {target}: {behind} bytes behind"
    );
    s.cleanup(&c).await;
}
