//! The worker as a Kinesis consumer (shard leases across two workers, resharding) and S3
//! baselines (versions, forward-only position, the coverage rule), against the local emulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tidemark_core::output::s3::{S3Options, S3Output};
use tidemark_core::position::SeqNo;
use tidemark_core::source::kinesis::client::KinesisStream;
use tidemark_e2e::harness::{duckdb, env, sigterm, stderr_of};
use tidemark_e2e::kinesis::{
    History, Lake, assert_exactly_the_stream, kinesis, output_rows, put_all, shard_positions,
    spawn_consumer, split_first_merge_last_two, stream, tidemark_ok, unique,
};

/// The last sequence number of every shard that holds records.
async fn last_sequences(s: &KinesisStream) -> BTreeMap<String, SeqNo> {
    let mut out = BTreeMap::new();
    for shard in s.shards().await.unwrap() {
        let it = s.iterator(&shard.id, None).await.unwrap();
        let got = s.records(&it, 10_000).await.unwrap();
        if let Some(r) = got.records.last() {
            out.insert(shard.id, r.sequence.clone());
        }
    }
    out
}

/// Whether every shard's committed sequence number reached `tails` (finished shards count).
fn caught_up(status: &Json, tails: &BTreeMap<String, SeqNo>) -> bool {
    let shards = status["shards"].as_array().unwrap();
    tails.iter().all(|(shard, tail)| {
        shards.iter().any(|s| {
            s["shard"] == shard.as_str()
                && (s["finished"] == true
                    || s["sequence"]
                        .as_str()
                        .is_some_and(|q| q.parse::<SeqNo>().unwrap() >= *tail))
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_shards_through_a_split_and_a_merge() {
    let k = kinesis().await;
    let name = stream(&k, "e2e-workers", 4).await;
    let s = KinesisStream::open(&name).await.unwrap();
    let lake = Lake::new("workers").await;
    let mut h = History::new();
    put_all(
        &s,
        (0..300).map(|_| h.change(fastrand::i64(1..90))).collect(),
    )
    .await;

    // Reshard before the workers start (moto moves a split parent's records into its
    // children, so a parent read before its split would be read twice): split shard 0, merge
    // shards 2 and 3; then more changes, which land on the children.
    split_first_merge_last_two(&k, &name).await;
    put_all(
        &s,
        (0..300).map(|_| h.change(fastrand::i64(1..90))).collect(),
    )
    .await;
    let tails = last_sequences(&s).await;

    let ttl = ["--lease-ttl-secs", "3"];
    let a = spawn_consumer(&lake, &name, &ttl);
    let b = spawn_consumer(&lake, &name, &ttl);

    // Both workers hold shard leases at some point.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut owners = std::collections::BTreeSet::new();
    while owners.len() < 2 && Instant::now() < deadline {
        let st = shard_positions(&lake, &name);
        for sh in st["shards"].as_array().unwrap() {
            if let Some(o) = sh["lease_owner"].as_str() {
                owners.insert(o.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        owners.len(),
        2,
        "shards spread over both workers: {owners:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut status = shard_positions(&lake, &name);
    while !caught_up(&status, &tails) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        status = shard_positions(&lake, &name);
    }
    assert!(caught_up(&status, &tails), "caught up: {status:#}");
    // Parents finished before their children were read: every parent of a shard with a
    // committed position is finished.
    let all = status["shards"].as_array().unwrap();
    for sh in all.iter().filter(|s| !s["sequence"].is_null()) {
        for p in sh["parents"].as_array().unwrap() {
            if let Some(parent) = all.iter().find(|x| x["shard"] == *p) {
                assert_eq!(
                    parent["finished"], true,
                    "{} read before {p} finished",
                    sh["shard"]
                );
            }
        }
    }

    sigterm(&a);
    sigterm(&b);
    for child in [a, b] {
        let (code, stderr) = stderr_of(child);
        assert!(code.success(), "worker exit {code}: {stderr}");
    }

    // moto copies a parent's records into the children on a split or merge (AWS does not):
    // the output must hold each record of the stream once, and so every change of the history.
    let dir = tempfile::tempdir().unwrap();
    lake.download(dir.path()).await;
    let got = output_rows(dir.path(), &lake.pipeline);
    assert_exactly_the_stream(&s, &got, &h.expected).await;
}

async fn put_version(key: &str, body: &str, meta: &[(&str, String)]) -> String {
    let out = S3Output::open(
        &format!("s3://{}", env("TIDEMARK_S3_BUCKET")),
        S3Options::from_env().unwrap(),
    )
    .await
    .unwrap();
    let mut req = out
        .client()
        .put_object()
        .bucket(out.bucket())
        .key(key)
        .body(body.as_bytes().to_vec().into());
    for (k, v) in meta {
        req = req.metadata(*k, v);
    }
    let resp = req.send().await.unwrap();
    resp.version_id().expect("a versioned bucket").to_string()
}

fn baseline(lake: &Lake, stream: &str, object: &str, version: &str) -> String {
    tidemark_ok(
        lake,
        stream,
        "baseline",
        &[
            "--object",
            object,
            "--version-id",
            version,
            "--target-table",
            "public.items",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baselines_are_snapshots_per_version_forward_only_and_cover_earlier_records() {
    let k = kinesis().await;
    let name = stream(&k, "e2e-baseline", 1).await;
    let s = KinesisStream::open(&name).await.unwrap();
    let lake = Lake::new("baseline").await;
    let bucket = env("TIDEMARK_S3_BUCKET");
    let key = format!("{}/items.jsonl", unique("baseline"));
    let object = format!("s3://{bucket}/{key}");

    // Records 1..=20 are in the baseline (it names the shard's sequence number); 21..=40 not.
    let mut h = History::new();
    let before = put_all(&s, (1..=20).map(|i| h.change(i)).collect()).await;
    let covered: Vec<_> = h.expected.drain(..).collect();
    let (shard, last_covered) = before.into_iter().next().unwrap();
    let v1_body: String = (1..=20)
        .map(|i| format!("{{\"id\": {i}, \"v\": 0}}\n"))
        .collect();
    let v1 = put_version(
        &key,
        &v1_body,
        &[("tidemark-shards", format!("{shard}={last_covered}"))],
    )
    .await;
    put_all(&s, (21..=40).map(|i| h.change(i)).collect()).await;

    let said = baseline(&lake, &name, &object, &v1);
    assert!(said.contains("20 rows"), "{said}");
    lake.lambda_local(&name, &["--batch-size", "100"]);

    let dir = tempfile::tempdir().unwrap();
    lake.download(dir.path()).await;
    let mut got = output_rows(dir.path(), &lake.pipeline);
    let mut want = h.expected.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "only records after the baseline are changes");
    assert!(covered.iter().all(|c| !got.contains(c)));
    let snap = duckdb(&format!(
        "select count(*) as n, min(snapshot_id) as id from read_parquet('{}/{}/public.items/snapshot/**/*.parquet', hive_partitioning = true)",
        dir.path().display(),
        lake.pipeline
    ));
    assert_eq!(snap[0]["n"], 20);

    // v2 (watermark rule), then v1 again: v1 is not newer, so nothing changes.
    let v2 = put_version(
        &key,
        "{\"id\": 1, \"v\": 9}\n",
        &[("tidemark-watermark", "2030-01-01T00:00:00Z".to_string())],
    )
    .await;
    assert!(baseline(&lake, &name, &object, &v2).contains("1 rows"));
    let again = baseline(&lake, &name, &object, &v1);
    assert!(again.contains("not newer"), "{again}");
    let status = shard_positions(&lake, &name);
    assert_eq!(status["baseline"]["version_id"], v2.as_str(), "{status:#}");
    let dir = tempfile::tempdir().unwrap();
    let keys = lake.download(dir.path()).await;
    let snapshots: std::collections::BTreeSet<_> = keys
        .iter()
        .filter(|k| k.contains("/snapshot/"))
        .map(|k| k.split("/part-").next().unwrap().to_string())
        .collect();
    assert_eq!(
        snapshots.len(),
        2,
        "one snapshot per version: {snapshots:?}"
    );

    // Under v2's watermark (2030) every later record is covered: nothing more is written.
    put_all(&s, (41..=45).map(|i| h.change(i)).collect()).await;
    lake.lambda_local(&name, &["--batch-size", "100"]);
    let dir = tempfile::tempdir().unwrap();
    lake.download(dir.path()).await;
    assert_eq!(
        output_rows(dir.path(), &lake.pipeline).len(),
        20,
        "records at or before the watermark are covered"
    );
}

/// `tidemark check`, `status` and `reset` of a Kinesis pipeline go through its source's
/// contract: check lists the shards and reaches the store and output, status shows the
/// composite position (baseline, a line per shard), reset forgets every shard's position and
/// the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_status_and_reset_cover_every_shard_and_the_baseline() {
    let k = kinesis().await;
    let name = stream(&k, "e2e-reset", 2).await;
    let s = KinesisStream::open(&name).await.unwrap();
    let lake = Lake::new("reset").await;
    let bucket = env("TIDEMARK_S3_BUCKET");
    let key = format!("{}/items.jsonl", unique("reset"));
    let mut h = History::new();
    put_all(&s, (1..=30).map(|i| h.change(i)).collect()).await;
    let v1 = put_version(
        &key,
        "{\"id\": 1, \"v\": 0}\n",
        &[("tidemark-watermark", "2000-01-01T00:00:00Z".to_string())],
    )
    .await;
    baseline(&lake, &name, &format!("s3://{bucket}/{key}"), &v1);
    lake.lambda_local(&name, &["--batch-size", "100"]);

    let cli = |cmd: &str, extra: &[&str]| tidemark_ok(&lake, &name, cmd, extra);

    let check = cli("check", &[]);
    assert!(
        check.contains(&format!("{name} has 2 shards (2 open)")),
        "{check}"
    );
    assert!(
        check.contains("positions") && check.contains("output"),
        "{check}"
    );

    let before = shard_positions(&lake, &name);
    assert_eq!(before["pipeline"], lake.pipeline.as_str(), "{before:#}");
    assert_eq!(before["baseline"]["version_id"], v1.as_str(), "{before:#}");
    let shards = before["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2, "{before:#}");
    assert!(
        shards.iter().all(|s| s["sequence"].is_string()),
        "{before:#}"
    );
    let text = cli("status", &[]);
    assert!(
        text.starts_with(&format!(
            "pipeline  {}\nstream    {name}\nbaseline  {{",
            lake.pipeline
        )),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("shard     ")).count(),
        2,
        "{text}"
    );

    let said = cli("reset", &["--yes"]);
    assert!(
        said.contains("2 shard positions and the baseline forgotten"),
        "{said}"
    );
    let after = shard_positions(&lake, &name);
    assert!(after["baseline"].is_null(), "{after:#}");
    assert!(
        after["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["sequence"].is_null()),
        "{after:#}"
    );
}
