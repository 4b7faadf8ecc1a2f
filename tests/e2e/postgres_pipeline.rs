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

/// Issue 11 item 1: a table without a primary key under REPLICA IDENTITY FULL keeps the old
/// image of every UPDATE (`D` + `U`), so replaying the output rebuilds the table as a multiset,
/// duplicates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_table_updates_keep_the_old_image_and_replay_as_a_multiset() {
    let c = harness::sql().await;
    let s = Scenario::new("keyless");
    let t = format!("k_{}", s.name);
    c.batch_execute(&format!(
        "drop table if exists {t}; create table {t} (a int, b text); \
         alter table {t} replica identity full; \
         insert into {t} values (1, 'x'), (1, 'x'), (2, 'y'), (3, null);"
    ))
    .await
    .unwrap();
    let q = format!("public.{t}");
    s.run_until_caught_up(&[&q]);
    c.batch_execute(&format!(
        "update {t} set b = 'z' where ctid = (select min(ctid) from {t} where a = 1); \
         update {t} set a = a + 10 where a = 2; \
         delete from {t} where ctid = (select max(ctid) from {t} where a = 1); \
         insert into {t} values (3, null); \
         update {t} set b = 'w' where a = 3;"
    ))
    .await
    .unwrap();
    s.run_until_caught_up(&[&q]);

    let rows = s.output_rows(&q, "a, b, _op");
    let ops: Vec<&str> = rows.iter().map(|r| r["_op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "R", "R", "R", "R", "D", "U", "D", "U", "D", "I", "D", "U", "D", "U"
        ],
        "{rows:#?}"
    );
    let source: Vec<String> = c
        .query(&format!("select a, b from {t}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let b: Option<String> = r.get(1);
            format!("{}|{}", r.get::<_, i32>(0), serde_json::json!(b))
        })
        .collect();
    let mut source = source;
    source.sort();
    assert_eq!(harness::replay_multiset(&rows, &["a", "b"]), source);
    s.cleanup(&c).await;
}

/// Issue 11 item 3: `--table` follows SQL's rules: quoted parts exact (`""` escapes, dots
/// inside quotes), unquoted parts folded to lower case; a name that only matches with its case
/// kept fails with the quoted form to write instead, quoting the name as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_names_are_read_as_sql_writes_them() {
    let c = harness::sql().await;
    let s = Scenario::new("names");
    let (billing, dotted) = (format!("Billing_{}", s.name), format!("a.b_{}", s.name));
    c.batch_execute(&format!(
        "create schema \"{billing}\"; create schema \"{dotted}\"; \
         create table \"{billing}\".\"Invoice Items\" (id int primary key, v text); \
         create table \"{dotted}\".\"c\"\"d\" (id int primary key); \
         insert into \"{billing}\".\"Invoice Items\" values (1, 'one'); \
         insert into \"{dotted}\".\"c\"\"d\" values (7);"
    ))
    .await
    .unwrap();
    let quoted_billing = format!("\"{billing}\".\"Invoice Items\"");
    let quoted_dotted = format!("\"{dotted}\".\"c\"\"d\"");

    // Unquoted, case kept: refused before anything is written, with the quoted form.
    let unquoted = format!("{billing}.Invoice Items");
    let (code, log) = s.run_failing(&[&unquoted], &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains(&unquoted), "the name as written: {log}");
    assert!(
        log.contains(&quoted_billing.replace('"', "\\\"")) || log.contains(&quoted_billing),
        "the quoted form: {log}"
    );
    assert!(s.output_files().is_empty());

    s.run_until_caught_up(&[&quoted_billing, &quoted_dotted]);
    c.batch_execute(&format!(
        "insert into \"{billing}\".\"Invoice Items\" values (2, 'two'); \
         insert into \"{dotted}\".\"c\"\"d\" values (8);"
    ))
    .await
    .unwrap();
    s.run_until_caught_up(&[&quoted_billing, &quoted_dotted]);
    let got = s.rows_by_folder();
    let (b_dir, d_dir) = (
        format!("{billing}.Invoice%20Items"),
        format!("a%2Eb_{}.c%22d", s.name),
    );
    assert_eq!(
        got,
        [
            format!("{b_dir} 1 R"),
            format!("{b_dir} 2 I"),
            format!("{d_dir} 7 R"),
            format!("{d_dir} 8 I"),
        ],
        "{got:#?}"
    );
    s.cleanup(&c).await;
    c.batch_execute(&format!(
        "drop schema \"{billing}\" cascade; drop schema \"{dotted}\" cascade"
    ))
    .await
    .unwrap();
}

/// Issue 11 item 4: a table added to a pipeline that already took its snapshot is refused at
/// start-up, before anything is written, naming the table and the ways out; removing a table
/// is fine, and re-adding it later is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_after_the_snapshot_is_refused_before_writing() {
    let c = harness::sql().await;
    let s = Scenario::new("added");
    let (a, b) = (format!("a_{}", s.name), format!("b_{}", s.name));
    c.batch_execute(&format!(
        "create table {a} (id int primary key); create table {b} (id int primary key); \
         insert into {a} select generate_series(1, 10); insert into {b} select generate_series(1, 10);"
    ))
    .await
    .unwrap();
    let (qa, qb) = (format!("public.{a}"), format!("public.{b}"));
    s.run_until_caught_up(&[&qa]);
    c.batch_execute(&format!(
        "insert into {a} values (11); insert into {b} values (11);"
    ))
    .await
    .unwrap();
    let files = s.output_files();
    let position = s.status_json()["position"].clone();

    let (code, log) = s.run_failing(&[&qa, &qb], &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains(&b), "names the table: {log}");
    assert!(log.contains("tidemark reset"), "names the ways out: {log}");
    assert!(log.contains("remove it from source.tables"), "{log}");
    assert_eq!(s.output_files(), files, "nothing written");
    assert_eq!(s.status_json()["position"], position, "position unchanged");

    // Removing nothing and adding nothing still runs; the insert into `a` arrives.
    s.run_until_caught_up(&[&qa]);
    let ids: Vec<i64> = s
        .output_rows(&qa, "id::bigint as id")
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=11).collect::<Vec<_>>());
    assert!(
        !s.out().join(&s.name).join(&qb).exists(),
        "the refused table was never written"
    );
    s.cleanup(&c).await;
}

/// Issue 11 item 5: without a table list, `run` publishes only the tables that have a replica
/// identity (never `FOR ALL TABLES`), names the others with the fix, and the application's
/// UPDATE/DELETE on a key-less table keep working while the pipeline runs. A table created
/// later is not captured (the set is fixed by the first run), with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_table_list_the_application_keeps_its_updates() {
    let admin = harness::admin_sql().await;
    let mut s = Scenario::new("nolist");
    let db = format!("db_{}", s.name);
    admin
        .batch_execute(&format!("create database {db} owner tidemark"))
        .await
        .unwrap();
    let url = harness::pg_url();
    let url = format!("{}/{db}", &url[..url.rfind('/').unwrap()]);
    s.source = Some(url.clone());
    let (app, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    app.batch_execute(
        "create table keyed (id int primary key, v int); create table keyless (x int); \
         create table full_ident (x int); alter table full_ident replica identity full; \
         insert into keyed values (1, 0); insert into keyless values (1); insert into full_ident values (1);",
    )
    .await
    .unwrap();

    let run = s.spawn_run(&[], &["--flush-interval-ms", "200"]);
    harness::wait_streaming(&s, Duration::from_secs(60));
    // The application's writes on the key-less table succeed while the pipeline runs.
    app.batch_execute(
        "update keyless set x = 2; delete from keyless; update keyed set v = 1; update full_ident set x = 2;",
    )
    .await
    .expect("UPDATE/DELETE on a table without a replica identity must keep working");
    tokio::time::sleep(Duration::from_secs(2)).await;
    sigterm(&run);
    let (status, log) = stderr_of(run);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("\\\"public\\\".\\\"keyless\\\"") && log.contains("no replica identity"),
        "names the left-out table: {log}"
    );
    assert!(log.contains("REPLICA IDENTITY FULL"), "with its fix: {log}");
    let all: bool = app
        .query_one(
            "select puballtables from pg_publication where pubname = $1",
            &[&format!("tidemark_{}", s.name)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!all, "never FOR ALL TABLES");
    let ops = |t: &str| -> Vec<String> {
        s.output_rows(t, "_op")
            .iter()
            .map(|r| r["_op"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ops("public.keyed"), ["R", "U"]);
    assert_eq!(ops("public.full_ident"), ["R", "D", "U"]);
    assert!(ops("public.keyless").is_empty());

    // A table created later is not captured, and the run says so.
    app.batch_execute("create table later (id int primary key); insert into later values (1);")
        .await
        .unwrap();
    let out = s.run_until_caught_up(&[]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("later") && log.contains("appeared after this pipeline's snapshot"),
        "{log}"
    );
    assert!(ops("public.later").is_empty());

    drop(app);
    harness::drop_slot(&admin, &format!("tidemark_{}", s.name), true).await;
    admin
        .batch_execute(&format!("drop database {db} with (force)"))
        .await
        .unwrap();
}

/// Issue 11 item 9: a pipeline refuses a slot that is not the one it recorded (here: dropped
/// and created again under its name while it was stopped, as a colliding pipeline would), and
/// `reset --drop-slot` works with no checkpoint at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_is_not_the_recorded_one_is_refused() {
    let c = harness::sql().await;
    let s = Scenario::new("slotid");
    let t = format!("t_{}", s.name);
    c.batch_execute(&format!(
        "create table {t} (id int primary key); insert into {t} values (1);"
    ))
    .await
    .unwrap();
    let q = format!("public.{t}");
    s.run_until_caught_up(&[&q]);
    let status = s.status_json();
    assert_eq!(status["slot"], format!("tidemark_{}", s.name));

    // Another pipeline (or a person) drops the slot and creates one of the same name later:
    // the insert in between would be lost if the pipeline streamed from it.
    let slot = format!("tidemark_{}", s.name);
    c.execute("select pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    c.batch_execute(&format!("insert into {t} values (2)"))
        .await
        .unwrap();
    c.execute(
        "select pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )
    .await
    .unwrap();
    let (code, log) = s.run_failing(&[&q], &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("is not the one pipeline"), "{log}");

    // reset --drop-slot with no checkpoint at all (another state directory) drops it.
    let fresh = Scenario {
        name: s.name.clone(),
        dir: tempfile::tempdir().unwrap(),
        source: None,
    };
    let out = fresh
        .command("reset", &[], &["--drop-slot", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: i64 = c
        .query_one(
            "select count(*) from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    s.cleanup(&c).await;
}

/// The column names of the Parquet files under `glob`, as DuckDB reads them (metadata
/// columns and hive partitions left out).
fn parquet_columns(glob: &str) -> Vec<String> {
    harness::duckdb(&format!(
        "select column_name from (describe select * from read_parquet('{glob}', union_by_name = true, hive_partitioning = false))"
    ))
    .iter()
    .map(|r| r["column_name"].as_str().unwrap().to_string())
    .filter(|c| !c.starts_with('_'))
    .collect()
}

/// Issue 11 item 2, on one server: the snapshot writes exactly the columns the stream sends.
/// Stored generated columns: left out before PostgreSQL 18 (pgoutput never sends them); on 18
/// published (`publish_generated_columns = stored`) and written by both, and the application's
/// UPDATE on a REPLICA IDENTITY FULL table with one keeps working. A publication column list
/// is honoured by the snapshot. `check` names the situation on every version.
async fn generated_columns_and_column_lists(url: String, admin_url: &str, pg18: bool) {
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut s = Scenario::new(if pg18 { "gen18" } else { "gen15" });
    s.source = Some(url);
    let (g, l) = (format!("g_{}", s.name), format!("l_{}", s.name));
    let publication = format!("p_{}", s.name);
    c.batch_execute(&format!(
        "create table {g} (id int primary key, a int, b int generated always as (a * 2) stored, c text); \
         alter table {g} replica identity full; \
         create table {l} (id int primary key, x int, secret text); \
         insert into {g} (id, a, c) values (1, 1, 'one'); insert into {l} values (1, 10, 'hidden'); \
         create publication {publication} for table {g}, {l} (id, x);"
    ))
    .await
    .unwrap();
    let (qg, ql) = (format!("public.{g}"), format!("public.{l}"));
    let check = s
        .command("check", &[&qg, &ql], &["--publication", &publication])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    if pg18 {
        assert!(
            report.contains("FAIL  generated_columns") && report.contains("refuses UPDATEs"),
            "{report}"
        );
    } else {
        assert!(report.contains("warn  generated_columns"), "{report}");
    }

    s.run_caught_up_with(
        &[&qg, &ql],
        &["--publication", &publication, "--flush-interval-ms", "300"],
    );
    // The application's UPDATE on the REPLICA IDENTITY FULL table with a stored generated
    // column works while it is published (PostgreSQL 18 refuses it without the fix).
    c.batch_execute(&format!(
        "update {g} set a = 5 where id = 1; insert into {g} (id, a, c) values (2, 2, 'two'); \
         insert into {l} values (2, 20, 'hidden');"
    ))
    .await
    .expect("the application's UPDATE must succeed");
    s.run_caught_up_with(
        &[&qg, &ql],
        &["--publication", &publication, "--flush-interval-ms", "300"],
    );

    let root = format!("{}/{}", s.out().display(), s.name);
    let want_g: Vec<&str> = if pg18 {
        vec!["id", "a", "b", "c"]
    } else {
        vec!["id", "a", "c"]
    };
    for kind in ["snapshot", "changes"] {
        assert_eq!(
            parquet_columns(&format!("{root}/{qg}/{kind}/**/*.parquet")),
            want_g,
            "{kind}"
        );
        assert_eq!(
            parquet_columns(&format!("{root}/{ql}/{kind}/**/*.parquet")),
            ["id", "x"],
            "{kind}"
        );
    }
    if pg18 {
        let b: Vec<i64> = s
            .output_rows(&qg, "b::bigint as b")
            .iter()
            .map(|r| r["b"].as_i64().unwrap())
            .collect();
        assert_eq!(
            b,
            [2, 10, 4],
            "R, U, I: the generated values as PostgreSQL computed them"
        );
    }
    let admin = {
        let (a, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        a
    };
    harness::drop_slot(&admin, &format!("tidemark_{}", s.name), true).await;
    c.batch_execute(&format!(
        "drop publication {publication}; drop table {g}, {l};"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_and_column_lists_on_postgres_15() {
    generated_columns_and_column_lists(
        harness::pg_url(),
        &harness::env("TIDEMARK_PG_ADMIN_URL"),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_and_column_lists_on_postgres_18() {
    generated_columns_and_column_lists(
        harness::env("TIDEMARK_PG18_URL"),
        &harness::env("TIDEMARK_PG18_ADMIN_URL"),
        true,
    )
    .await;
}

/// A listed partitioned table is captured through its partitions, and a restart is not taken
/// for an added table (the checkpoint records the partitions the stream names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_partitioned_table_restarts_and_streams() {
    let c = harness::sql().await;
    let s = Scenario::new("parts");
    let t = format!("pt_{}", s.name);
    c.batch_execute(&format!(
        "create table {t} (id int primary key, v text) partition by range (id); \
         create table {t}_a partition of {t} for values from (0) to (100); \
         create table {t}_b partition of {t} for values from (100) to (200); \
         insert into {t} values (1, 'a'), (150, 'b');"
    ))
    .await
    .unwrap();
    let q = format!("public.{t}");
    s.run_until_caught_up(&[&q]);
    c.batch_execute(&format!("insert into {t} values (2, 'a'), (151, 'b')"))
        .await
        .unwrap();
    s.run_until_caught_up(&[&q]);
    let ids = |part: &str| -> Vec<i64> {
        s.output_rows(&format!("public.{t}_{part}"), "id::bigint as id")
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids("a"), [1, 2]);
    assert_eq!(ids("b"), [150, 151]);
    s.cleanup(&c).await;
}
