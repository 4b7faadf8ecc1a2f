//! PostgreSQL and MariaDB → `tidemark run --publish kinesis://...` → Kinesis (moto) → the `kinesis-ingest`
//! Lambda (through `tidemark lambda-local`) → Parquet, checked against the source by DuckDB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use tidemark_core::source::kinesis::client::KinesisStream;
use tidemark_e2e::harness::{
    self, Scenario, assert_exactly_once, function_bin, sigterm, stderr_of, versioned_table,
    workload,
};
use tidemark_e2e::kinesis::{kinesis, stream};

/// The Lambda path over the whole stream into the scenario's output directory.
fn lambda_path(s: &Scenario, stream: &str) {
    let out = Command::new(function_bin("tidemark-lambda-local"))
        .args(["--stream", stream, "--until-drained", "--batch-size", "200"])
        .arg("--function")
        .arg(function_bin("kinesis-ingest"))
        .env("TIDEMARK_PIPELINE", &s.name)
        .env("TIDEMARK_OUTPUT", format!("file://{}", s.out().display()))
        .env(
            "TIDEMARK_POSITIONS",
            format!("file://{}", s.dir.path().join("lambda-state").display()),
        )
        .env("TIDEMARK_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lambda-local: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_kinesis_to_lambda_equals_the_source_history() {
    let k = kinesis().await;
    let name = stream(&k, "e2e-publish", 2).await;
    let c = harness::sql().await;
    let s = Scenario::new("publish");
    let table = format!("t_{}", s.name);
    versioned_table(&c, &table, 500).await;
    let qualified = format!("public.{table}");
    let publish = format!("kinesis://{name}");
    let args = [
        "--publish",
        publish.as_str(),
        "--flush-interval-ms",
        "200",
        "--max-batch-rows",
        "300",
    ];

    // Snapshot to the output, then changes published while a workload runs; SIGTERM twice
    // mid-stream (each flushes, publishes and commits), and restarts.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(workload(table.clone(), 501, stop_rx));
    for round in 0..3 {
        let child = s.spawn_run(&[&qualified], &args);
        tokio::time::sleep(Duration::from_millis(1500 + 500 * round)).await;
        sigterm(&child);
        let (code, stderr) = stderr_of(child);
        assert!(code.success(), "run {round}: {code}\n{stderr}");
    }
    stop_tx.send(true).unwrap();
    let ops = load.await.unwrap();
    assert!(ops > 50, "workload ran: {ops}");
    s.run_caught_up_with(&[&qualified], &args);

    // No change was written as Parquet by the worker: only the snapshot.
    let changes = s.out().join(&s.name).join(&qualified).join("changes");
    assert!(
        !changes.exists(),
        "the worker publishes changes instead of writing them"
    );

    lambda_path(&s, &name);
    let checked = assert_exactly_once(&s, &c, &table).await;
    assert!(checked > 500, "rows checked: {checked}");

    // The stream holds each change once: as many records as change rows in the output.
    let records =
        tidemark_e2e::kinesis::stream_len(&KinesisStream::open(&name).await.unwrap()).await;
    let rows = harness::duckdb(&format!(
        "select count(*) as n from read_parquet('{}/changes/**/*.parquet')",
        s.out().join(&s.name).join(&qualified).display()
    ));
    assert_eq!(rows[0]["n"].as_u64().unwrap() as usize, records);
    s.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_publishing_before_the_commit_publishes_nothing_twice() {
    let k = kinesis().await;
    let name = stream(&k, "e2e-publish-crash", 2).await;
    let c = harness::sql().await;
    let s = Scenario::new("pubcrash");
    let table = format!("t_{}", s.name);
    versioned_table(&c, &table, 10).await;
    let qualified = format!("public.{table}");
    let publish = format!("kinesis://{name}");
    // Positions in DynamoDB (moto: ~10 ms a write) widen the window between the last
    // PutRecords and the commit, where a kill leaves published but uncommitted changes.
    let positions = "dynamodb://tidemark-e2e-pubcrash";
    let args = [
        "--publish",
        publish.as_str(),
        "--flush-interval-ms",
        "100",
        "--positions",
        positions,
        "--create-table",
        // A killed worker's lease expires quickly (DynamoDB leases cannot see a dead process).
        "--lease-ttl-secs",
        "2",
    ];
    s.run_caught_up_with(&[&qualified], &args);

    // kill -9 at random instants while changes stream: some kills land between PutRecords
    // and the commit, so the next run replays changes that are already on the stream.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(workload(table.clone(), 11, stop_rx));
    let mut logs = String::new();
    for _ in 0..10 {
        let mut child = s.spawn_run(&[&qualified], &args);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(2600..4000))).await;
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        logs.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    stop_tx.send(true).unwrap();
    load.await.unwrap();
    let out = s.run_caught_up_with(&[&qualified], &args);
    logs.push_str(&String::from_utf8_lossy(&out.stderr));
    let recoveries = logs.matches("recovered an unfinished publish").count();
    eprintln!(
        "runs that found an unfinished publish on the stream: {recoveries}; intents found: {}; killed runs logged {} lines",
        logs.matches("found an unfinished batch").count(),
        logs.lines().count()
    );

    lambda_path(&s, &name);
    assert_exactly_once(&s, &c, &table).await;
    s.cleanup(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_finds_what_an_unfinished_publish_sent_and_skips_it() {
    use tidemark_core::change::{Op, RowMeta};
    use tidemark_core::sink::ChangeBuffer;
    use tidemark_core::sink::kinesis::EnvelopeBatch;
    use tidemark_core::sink::kinesis::Publisher;
    let k = kinesis().await;
    let name = stream(&k, "e2e-publish-recover", 2).await;
    let schema = std::sync::Arc::new(tidemark_e2e::kinesis::items());
    let batch_of = |from: i64, to: i64| {
        let mut b = EnvelopeBatch::new("recov");
        for id in from..to {
            let pos = format!("{:016X}", 0x100 + id);
            let meta = RowMeta {
                op: Op::Insert,
                pos: &pos,
                ord: 0,
                commit_ts: 1_795_000_000_000_000,
                xid: None,
            };
            let values = [
                tidemark_core::change::Value::I64(id),
                tidemark_core::change::Value::I64(0),
                tidemark_core::change::Value::Null,
            ];
            b.push(&schema, &meta, &values).unwrap();
        }
        b.take_records()
    };
    let started = tidemark_core::store::now_ms();
    // A first run published rows 0..60 of a batch 0..100, then died before its commit.
    let first = Publisher::open(&name, "recov").await.unwrap();
    let mut partial = batch_of(0, 100);
    partial.truncate(60);
    first.publish(partial).await.unwrap();
    // Another pipeline's records on the same stream are not ours.
    Publisher::open(&name, "other")
        .await
        .unwrap()
        .publish(batch_of(0, 10))
        .await
        .unwrap();

    let second = Publisher::open(&name, "recov").await.unwrap();
    assert_eq!(second.recover(started).await.unwrap(), 60);
    let stats = second.publish(batch_of(0, 100)).await.unwrap();
    assert_eq!((stats.records, stats.already_there), (40, 60));
    let on_stream =
        tidemark_e2e::kinesis::stream_len(&KinesisStream::open(&name).await.unwrap()).await;
    assert_eq!(
        on_stream,
        100 + 10,
        "each change of the pipeline is on the stream once"
    );
}

/// MariaDB and MySQL → publisher → Kinesis → Lambda path → Parquet: SIGTERM and kill -9 restarts while a
/// workload runs, and a column added mid-stream (its schema-history object is written beside
/// the published records, under the same intent).
async fn binlog_publish(server: tidemark_e2e::mysql::Server) {
    use tidemark_e2e::mysql::{self as my, exec};
    let k = kinesis().await;
    let name = stream(&k, &format!("e2e-publish-{}", server.tag()), 2).await;
    let mut c = server.conn().await;
    let s = server.scenario("mypublish");
    let table = format!("t_{}", s.name);
    server.versioned_table(&mut c, &table, 500).await;
    let qualified = format!("app.{table}");
    let publish = format!("kinesis://{name}");
    let sid = fastrand::u32(2_000_000..2_000_000_000).to_string();
    let args = [
        "--publish",
        publish.as_str(),
        "--server-id",
        &sid,
        "--flush-interval-ms",
        "200",
        "--max-batch-rows",
        "300",
    ];

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(server.workload(table.clone(), 501, stop_rx));
    for round in 0..5 {
        let mut child = s.spawn_run(&[&qualified], &args);
        tokio::time::sleep(Duration::from_millis(1500 + 400 * round)).await;
        if round == 1 {
            exec(
                &mut c,
                &format!("ALTER TABLE {table} ADD COLUMN note VARCHAR(16) DEFAULT 'added'"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        if round >= 3 {
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            sigterm(&child);
            let (code, stderr) = stderr_of(child);
            assert!(code.success(), "run {round}: {code}\n{stderr}");
        }
    }
    stop_tx.send(true).unwrap();
    let ops = load.await.unwrap();
    assert!(ops > 50, "workload ran: {ops}");
    s.run_caught_up_with(&[&qualified], &args);
    let root = s.out().join(&s.name);
    assert!(
        !root.join(&qualified).join("changes").exists(),
        "the worker publishes changes instead of writing them"
    );
    let history = std::fs::read_dir(root.join("_schema_history"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(history, 1, "one ALTER recorded in the schema history");

    lambda_path(&s, &name);
    let source = my::versions(&mut c, &table).await;
    let checked = harness::assert_exactly_once_against(&s, &qualified, &source);
    assert!(checked > 500, "rows checked: {checked}");
    let added = harness::duckdb(&format!(
        "select count(*) as n from read_parquet('{}/changes/**/*.parquet', union_by_name = true) where note = 'added'",
        root.join(&qualified).display()
    ));
    assert!(
        added[0]["n"].as_u64().unwrap() > 0,
        "rows after the ALTER carry the new column"
    );
    let records =
        tidemark_e2e::kinesis::stream_len(&KinesisStream::open(&name).await.unwrap()).await;
    let rows = harness::duckdb(&format!(
        "select count(*) as n from read_parquet('{}/changes/**/*.parquet', union_by_name = true)",
        root.join(&qualified).display()
    ));
    assert_eq!(rows[0]["n"].as_u64().unwrap() as usize, records);
    server.drop_tables(&[&table]).await;
}
tidemark_e2e::both_servers!(
    mariadb_to_kinesis_to_lambda_equals_the_source_history,
    super::binlog_publish
);
