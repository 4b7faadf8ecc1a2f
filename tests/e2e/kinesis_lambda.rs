//! The Lambda path end to end against the local emulator (moto): Kinesis shards → the real
//! `kinesis-ingest` binary run by `tidemark lambda-local` (Runtime API emulator + event source
//! mapping player) → Parquet in S3 and positions in DynamoDB, read back by DuckDB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_json::Value as Json;
use tidemark_core::source::kinesis::client::KinesisStream;
use tidemark_e2e::harness::duckdb;
use tidemark_e2e::kinesis::{
    History, Lake, assert_exactly_the_stream, kinesis, output_rows, put_all,
    split_first_merge_last_two, stream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_replays_and_bisected_retries_leave_exactly_the_history() {
    let k = kinesis().await;
    let name = stream(&k, "e2e-chaos", 2).await;
    let s = KinesisStream::open(&name).await.unwrap();
    let lake = Lake::new("chaos").await;
    let mut h = History::new();
    let records: Vec<_> = (0..600).map(|_| h.change(fastrand::i64(1..80))).collect();
    put_all(&s, records).await;

    // Kill the function at random instants (in its first 15 ms) in half of the invocations: between object writes,
    // between objects and commit, after the commit. Crashes fail whole batches, which the
    // mapping bisects and retries.
    let summary = lake.lambda_local(
        &name,
        &[
            "--batch-size",
            "64",
            "--max-retries",
            "50",
            "--chaos-kill-rate",
            "0.5",
        ],
    );
    assert!(summary["crashes"].as_u64().unwrap() >= 2, "{summary}");
    assert!(summary["bisections"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(summary["failed_batches"], 0, "{summary}");

    // A second mapping replays the stream from TRIM_HORIZON: every record is skipped.
    let again = lake.lambda_local(&name, &["--batch-size", "500"]);
    assert_eq!(again["crashes"], 0);

    let dir = tempfile::tempdir().unwrap();
    lake.download(dir.path()).await;
    let mut got = output_rows(dir.path(), &lake.pipeline);
    let mut want = h.expected.clone();
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "row count: output vs history");
    assert_eq!(got, want, "the output holds the history exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dead_letter_prefix_and_the_rest_is_written() {
    let k = kinesis().await;
    let name = stream(&k, "e2e-poison", 1).await;
    let s = KinesisStream::open(&name).await.unwrap();
    let lake = Lake::new("poison").await;
    let mut h = History::new();
    let mut records: Vec<_> = (0..40).map(|i| h.change(i % 10 + 1)).collect();
    records.insert(
        5,
        ("p1".into(), b"{\"tidemark\": 1, \"table\": 7}".to_vec()),
    );
    records.insert(20, ("p2".into(), vec![0xff, 0x00, 0x13]));
    // Other formats on the same stream are detected per record.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/kinesis");
    for f in [
        "debezium-schema-update.json",
        "dms-update.json",
        "dynamodb-modify.json",
    ] {
        records.push((f.into(), std::fs::read(golden.join(f)).unwrap()));
    }
    put_all(&s, records).await;

    let summary = lake.lambda_local(&name, &["--batch-size", "100"]);
    assert_eq!(
        summary["invocations"], 1,
        "poison never blocks the shard: {summary}"
    );

    let dir = tempfile::tempdir().unwrap();
    let keys = lake.download(dir.path()).await;
    let letters: Vec<_> = keys
        .iter()
        .filter(|k| k.contains("/_dead_letter/"))
        .collect();
    assert_eq!(letters.len(), 2, "{keys:?}");
    let first: Json =
        serde_json::from_slice(&std::fs::read(dir.path().join(letters[0])).unwrap()).unwrap();
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("invalid tidemark envelope"),
        "{first}"
    );
    let second: Json =
        serde_json::from_slice(&std::fs::read(dir.path().join(letters[1])).unwrap()).unwrap();
    assert!(
        second["reason"].as_str().unwrap().contains("not JSON"),
        "{second}"
    );
    assert_eq!(second["data"], "/wAT", "the original bytes, base64");

    let mut got = output_rows(dir.path(), &lake.pipeline);
    let mut want = h.expected.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for table in ["public.orders", "sales.orders", "dynamodb.Orders"] {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("{}/{table}/changes/", lake.pipeline))),
            "{table}: {keys:?}"
        );
    }
    let amount = duckdb(&format!(
        "select amount::varchar as a from read_parquet('{}/{}/public.orders/changes/**/*.parquet')",
        dir.path().display(),
        lake.pipeline
    ));
    assert_eq!(amount[0]["a"], "12.34", "Debezium decimals keep their type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_reads_parents_before_children_and_loses_nothing() {
    let k = kinesis().await;
    let name = stream(&k, "e2e-reshard", 4).await;
    let s = KinesisStream::open(&name).await.unwrap();
    let lake = Lake::new("reshard").await;
    let mut h = History::new();
    put_all(
        &s,
        (0..200).map(|_| h.change(fastrand::i64(1..60))).collect(),
    )
    .await;

    // Split shard 0 at the middle of its range; merge shards 2 and 3.
    split_first_merge_last_two(&k, &name).await;
    put_all(
        &s,
        (0..200).map(|_| h.change(fastrand::i64(1..60))).collect(),
    )
    .await;

    let summary = lake.lambda_local(&name, &["--batch-size", "30"]);
    let order: Vec<String> = summary["shard_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let listed = KinesisStream::open(&name)
        .await
        .unwrap()
        .shards()
        .await
        .unwrap();
    assert!(
        listed.len() >= 7,
        "4 + 2 children of the split + 1 of the merge: {listed:?}"
    );
    for shard in &listed {
        let Some(me) = order.iter().position(|s| *s == shard.id) else {
            continue;
        };
        for parent in shard.parents() {
            let p = order.iter().position(|s| s == parent);
            assert!(
                p.is_some_and(|p| p < me),
                "{} was read before its parent {parent}: {order:?}",
                shard.id
            );
        }
    }

    // moto copies a parent's records into the children on a split or merge (AWS does not):
    // the output must hold each record of the stream once, and so every change of the history.
    let dir = tempfile::tempdir().unwrap();
    lake.download(dir.path()).await;
    let got = output_rows(dir.path(), &lake.pipeline);
    assert_exactly_the_stream(&s, &got, &h.expected).await;
}
