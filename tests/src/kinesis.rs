//! Kinesis helpers for end-to-end tests: streams on the local emulator, a versioned source
//! history published as tidemark envelopes, and the pipeline's output read back by DuckDB.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use aws_sdk_kinesis::Client;
use serde_json::Value as Json;
use tidemark_core::change::{Column, ColumnType, Op, RowMeta, TableId, TableSchema, Value};
use tidemark_core::codec::envelope;
use tidemark_core::source::kinesis::client::KinesisStream;

use crate::harness::{aws_endpoint, bin, duckdb, env, function_bin};

pub async fn kinesis() -> Client {
    aws_endpoint();
    Client::new(&tidemark_core::aws::sdk_config().await)
}

/// A fresh stream with `shards` shards, ACTIVE.
pub async fn stream(k: &Client, prefix: &str, shards: i32) -> String {
    let name = format!("{prefix}-{:012x}", fastrand::u64(..1 << 48));
    k.create_stream()
        .stream_name(&name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    for _ in 0..100 {
        let d = k
            .describe_stream_summary()
            .stream_name(&name)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary()
            .is_some_and(|s| s.stream_status().as_str() == "ACTIVE")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    name
}

pub fn items() -> TableSchema {
    let col = |name: &str, ty: ColumnType, key| Column {
        name: name.into(),
        ty,
        source_type: "x".into(),
        key,
    };
    TableSchema {
        id: TableId::new("public", "items"),
        columns: vec![
            col("id", ColumnType::Int64, true),
            col("v", ColumnType::Int64, false),
            col("note", ColumnType::Text, false),
        ],
    }
}

/// A source history: per key an insert, updates with v = 1, 2, ... and sometimes a delete.
/// Returns the envelope records (partition key = table/key) and the (id, v, op) rows expected.
pub struct History {
    next_pos: u64,
    versions: BTreeMap<i64, i64>,
    pub expected: Vec<(i64, i64, String)>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        History {
            next_pos: 0x10_0000,
            versions: BTreeMap::new(),
            expected: Vec::new(),
        }
    }

    pub fn change(&mut self, id: i64) -> (String, Vec<u8>) {
        let s = items();
        let (op, v) = match self.versions.get(&id).copied() {
            None => (Op::Insert, 0),
            Some(v) if fastrand::u8(..10) == 0 => (Op::Delete, v),
            Some(v) => (Op::Update, v + 1),
        };
        match op {
            Op::Delete => self.versions.remove(&id),
            _ => self.versions.insert(id, v),
        };
        self.next_pos += 0x40;
        let pos = format!("{:016X}", self.next_pos);
        let meta = RowMeta {
            op,
            pos: &pos,
            ord: 0,
            commit_ts: 1_795_000_000_000_000 + self.next_pos as i64,
            xid: Some(self.next_pos as i64),
        };
        let note = "x".repeat(fastrand::usize(0..200));
        self.expected.push((id, v, op.code().to_string()));
        (
            format!("public.items/{id}"),
            envelope::encode(
                &s,
                &meta,
                &[Value::I64(id), Value::I64(v), Value::Text(note)],
                None,
            ),
        )
    }
}

/// Publishes `records` in order; returns the last accepted sequence number per shard.
pub async fn put_all(
    stream: &KinesisStream,
    records: Vec<(String, Vec<u8>)>,
) -> BTreeMap<String, tidemark_core::position::SeqNo> {
    use tidemark_core::source::kinesis::client::Put;
    let mut last = BTreeMap::new();
    for chunk in records.chunks(200) {
        for r in stream.put(chunk).await.unwrap() {
            match r {
                Put::Accepted { shard, sequence } => {
                    let e = last.entry(shard).or_insert_with(|| sequence.clone());
                    if sequence > *e {
                        *e = sequence;
                    }
                }
                Put::Failed { code, message } => panic!("put failed: {code} {message}"),
            }
        }
    }
    last
}

pub struct Lake {
    pub pipeline: String,
    pub output: String,
    pub positions: String,
}

impl Lake {
    pub async fn new(prefix: &str) -> Lake {
        aws_endpoint();
        let id = format!("{prefix}-{:08x}", fastrand::u32(..));
        let positions = format!("dynamodb://tidemark-e2e-{prefix}");
        tidemark_core::store::open(Some(&positions), true)
            .await
            .unwrap();
        Lake {
            output: format!("s3://{}/e2e-{id}", env("TIDEMARK_S3_BUCKET")),
            pipeline: id,
            positions,
        }
    }

    /// `tidemark-lambda-local` over `stream` until drained; returns its summary.
    pub fn lambda_local(&self, stream: &str, extra: &[&str]) -> Json {
        let out = Command::new(function_bin("tidemark-lambda-local"))
            .args(["--stream", stream, "--until-drained"])
            .arg("--function")
            .arg(function_bin("kinesis-ingest"))
            .args(extra)
            .env("TIDEMARK_PIPELINE", &self.pipeline)
            .env("TIDEMARK_OUTPUT", &self.output)
            .env("TIDEMARK_POSITIONS", &self.positions)
            .env("TIDEMARK_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lambda-local failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("summary: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Copies the pipeline's objects out of S3 into `dir` (same keys), for DuckDB.
    pub async fn download(&self, dir: &Path) -> Vec<String> {
        let out = tidemark_core::output::open(&self.output).await.unwrap();
        let keys = out.list("").await.unwrap();
        for k in &keys {
            let bytes = out.get(k).await.unwrap().unwrap();
            let path = dir.join(k);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        keys
    }
}

pub fn output_rows(dir: &Path, pipeline: &str) -> Vec<(i64, i64, String)> {
    let rows = duckdb(&format!(
        "select id, v, _op from read_parquet('{}/{pipeline}/public.items/changes/**/*.parquet', \
         hive_partitioning = true, union_by_name = true) order by _pos, _ord",
        dir.display()
    ));
    rows.iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["v"].as_i64().unwrap(),
                r["_op"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A unique object key prefix in the test bucket.
pub fn unique(what: &str) -> String {
    format!("e2e-{what}-{:012x}", fastrand::u64(..1 << 48))
}

/// `tidemark <command>` on `lake`'s kinesis:// pipeline (source, pipeline, output, positions).
pub fn tidemark(lake: &Lake, stream: &str, command: &str) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args([command, "--source-url"])
        .arg(format!("kinesis://{stream}"))
        .args([
            "--pipeline",
            &lake.pipeline,
            "--output",
            &lake.output,
            "--positions",
            &lake.positions,
        ]);
    cmd
}

/// `tidemark <command> <extra>`: its standard output, after asserting it succeeded.
pub fn tidemark_ok(lake: &Lake, stream: &str, command: &str, extra: &[&str]) -> String {
    let out = tidemark(lake, stream, command)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The committed sequence number of every shard (`tidemark status --json`).
pub fn shard_positions(lake: &Lake, stream: &str) -> Json {
    serde_json::from_str(&tidemark_ok(lake, stream, "status", &["--json"])).unwrap()
}

/// `tidemark run` of a kinesis:// pipeline (the worker as consumer).
pub fn spawn_consumer(lake: &Lake, stream: &str, extra: &[&str]) -> std::process::Child {
    tidemark(lake, stream, "run")
        .args(["--metrics", "off"])
        .args(extra)
        .env("TIDEMARK_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Every change record the stream holds, read from every shard from its oldest record, as
/// (id, v, op). An emulator that copies records on a split or merge (moto does) holds some
/// twice: a consumer must then write them twice, once per record.
pub async fn stream_contents(stream: &KinesisStream) -> Vec<(i64, i64, String)> {
    use tidemark_core::codec::{Decoded, RecordFormat, decode};
    let mut out = Vec::new();
    for shard in stream.shards().await.unwrap() {
        let mut it = stream.iterator(&shard.id, None).await.unwrap();
        loop {
            let got = stream.records(&it, 1000).await.unwrap();
            for r in &got.records {
                if let Ok(Decoded::Change(c)) = decode(RecordFormat::Tidemark, &r.data) {
                    let int = |i: usize| match c.values[i] {
                        Value::I64(v) => v,
                        _ => panic!("not an int"),
                    };
                    out.push((int(0), int(1), c.op.code().to_string()));
                }
            }
            match got.next_iterator {
                Some(n) if !got.records.is_empty() => it = n,
                _ => break,
            }
        }
    }
    out.sort();
    out
}

/// Asserts the output holds every record of the stream exactly once, and with it every change
/// of the history.
pub async fn assert_exactly_the_stream(
    stream: &KinesisStream,
    got: &[(i64, i64, String)],
    history: &[(i64, i64, String)],
) {
    let mut got = got.to_vec();
    got.sort();
    let records = stream_contents(stream).await;
    assert_eq!(got.len(), records.len(), "rows vs stream records");
    assert_eq!(got, records, "every record of the stream exactly once");
    let mut counts: BTreeMap<&(i64, i64, String), i64> = BTreeMap::new();
    for h in history {
        *counts.entry(h).or_default() += 1;
    }
    for g in &got {
        if let Some(c) = counts.get_mut(g) {
            *c -= 1;
        }
    }
    assert!(
        counts.values().all(|c| *c <= 0),
        "a change of the history is missing: {:?}",
        counts.iter().filter(|(_, c)| **c > 0).collect::<Vec<_>>()
    );
}

/// How many records the stream holds (every shard, from its oldest record).
pub async fn stream_len(stream: &KinesisStream) -> usize {
    let mut n = 0;
    for shard in stream.shards().await.unwrap() {
        let mut it = stream.iterator(&shard.id, None).await.unwrap();
        loop {
            let got = stream.records(&it, 10_000).await.unwrap();
            n += got.records.len();
            match got.next_iterator {
                Some(next) if !got.records.is_empty() => it = next,
                _ => break,
            }
        }
    }
    n
}

/// Splits the stream's first shard at the middle of its hash range and merges its third and
/// fourth shards (a 4-shard stream becomes 2 + 1 children and 4 closed parents).
pub async fn split_first_merge_last_two(k: &Client, name: &str) {
    let listed = k.list_shards().stream_name(name).send().await.unwrap();
    let shards = listed.shards();
    let range = shards[0].hash_key_range().unwrap();
    let lo: u128 = range.starting_hash_key().parse().unwrap();
    let hi: u128 = range.ending_hash_key().parse().unwrap();
    k.split_shard()
        .stream_name(name)
        .shard_to_split(shards[0].shard_id())
        .new_starting_hash_key(((lo + hi) / 2).to_string())
        .send()
        .await
        .unwrap();
    k.merge_shards()
        .stream_name(name)
        .shard_to_merge(shards[2].shard_id())
        .adjacent_shard_to_merge(shards[3].shard_id())
        .send()
        .await
        .unwrap();
}
