//! Plays Lambda's Kinesis event source mapping against a stream (the local emulator or AWS):
//! reads shard batches, invokes the function through [`LocalFunction`], and applies the
//! mapping's rules as Lambda does:
//! - a batch is checkpointed when the function returns without `batchItemFailures`;
//! - with `batchItemFailures`, records before the lowest reported sequence number count as
//!   done and the rest is retried (a retry);
//! - a function error, crash or timeout retries the batch; with bisect-on-error the failed
//!   batch is split in two first (splits do not count as retries);
//! - after `max_retries` retries the batch's metadata goes to the on-failure directory and the
//!   mapping moves past it;
//! - a child shard is read only after its parents are read to their end.
//!
//! The mapping's own checkpoint lives in memory, as in Lambda it is invisible: every run
//! starts at TRIM_HORIZON and the function skips what it already committed.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::json;
use tidemark_core::engine::shard::ShardRecord;
use tidemark_core::position::SeqNo;
use tidemark_core::source::kinesis::client::KinesisStream;

use super::runtime_api::{LocalFunction, Outcome};

/// The mapping's settings (Lambda's names).
#[derive(Debug, Clone)]
pub struct Mapping {
    pub batch_size: i32,
    pub bisect_on_error: bool,
    pub max_retries: u32,
    pub report_batch_item_failures: bool,
    pub on_failure: Option<PathBuf>,
    /// Stop once every shard has no more records (else poll until Ctrl-C).
    pub until_drained: bool,
}

/// What a run did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub invocations: u64,
    pub records_delivered: u64,
    pub retries: u64,
    pub bisections: u64,
    pub crashes: u64,
    pub failed_batches: u64,
    pub shards_finished: Vec<String>,
    /// Shards in the order their first batch was delivered.
    pub shard_order: Vec<String>,
    pub init_ms: Vec<f64>,
}

pub async fn run(
    stream: &KinesisStream,
    function: &mut LocalFunction,
    mapping: &Mapping,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut checkpoints: BTreeMap<String, SeqNo> = BTreeMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut idle_rounds = 0;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let shards = stream.shards().await?;
        let listed: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        let mut delivered_any = false;
        for shard in &shards {
            if finished.contains(&shard.id) {
                continue;
            }
            // Parents first (a parent no longer listed has expired: nothing left to wait for).
            if shard
                .parents()
                .any(|p| listed.contains(p) && !finished.contains(p))
            {
                continue;
            }
            let iterator = stream
                .iterator(&shard.id, checkpoints.get(&shard.id))
                .await?;
            let got = stream.records(&iterator, mapping.batch_size).await?;
            if got.records.is_empty() {
                // Real Kinesis ends a closed shard with no next iterator; emulators may only
                // list it as closed (its last sequence number) and return empty pages.
                let read = checkpoints
                    .get(&shard.id)
                    .cloned()
                    .unwrap_or_else(SeqNo::zero);
                if got.next_iterator.is_none() || shard.ending.as_ref().is_some_and(|e| read >= *e)
                {
                    finished.insert(shard.id.clone());
                    summary.shards_finished.push(shard.id.clone());
                }
                continue;
            }
            delivered_any = true;
            if !summary.shard_order.contains(&shard.id) {
                summary.shard_order.push(shard.id.clone());
            }
            let last = deliver(
                stream,
                function,
                mapping,
                &shard.id,
                got.records,
                &mut summary,
            )
            .await?;
            checkpoints.insert(shard.id.clone(), last);
        }
        if delivered_any {
            idle_rounds = 0;
            continue;
        }
        if finished.len() == shards.len() && mapping.until_drained {
            break;
        }
        idle_rounds += 1;
        if mapping.until_drained && idle_rounds >= 2 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => break,
        }
    }
    summary.init_ms = function
        .inits
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    Ok(summary)
}

/// Delivers one batch with Lambda's retry rules; returns the sequence number the mapping
/// checkpoints (the batch's last record).
async fn deliver(
    stream: &KinesisStream,
    function: &mut LocalFunction,
    mapping: &Mapping,
    shard: &str,
    records: Vec<ShardRecord>,
    summary: &mut Summary,
) -> Result<SeqNo> {
    let last = records
        .last()
        .map(|r| r.sequence.clone())
        .context("empty batch")?;
    // Segments still to deliver, each with the retries it has used.
    let mut queue: VecDeque<(Vec<ShardRecord>, u32)> = VecDeque::from([(records, 0)]);
    while let Some((segment, retries)) = queue.pop_front() {
        let event = event(&stream.name, shard, &segment);
        summary.invocations += 1;
        summary.records_delivered += segment.len() as u64;
        let outcome = function.invoke(serde_json::to_vec(&event)?).await?;
        let failed_from = match &outcome {
            Outcome::Response(body) if mapping.report_batch_item_failures => {
                lowest_failure(body, &segment)
            }
            Outcome::Response(_) => None,
            Outcome::Error(e) | Outcome::Crashed(e) => {
                if matches!(outcome, Outcome::Crashed(_)) {
                    summary.crashes += 1;
                }
                tracing::warn!(shard, records = segment.len(), error = %e, "invocation failed");
                Some(0)
            }
        };
        let Some(from) = failed_from else {
            continue;
        };
        let rest: Vec<ShardRecord> = segment[from..].to_vec();
        let whole_failure = from == 0 && !matches!(outcome, Outcome::Response(_));
        if whole_failure && mapping.bisect_on_error && rest.len() > 1 {
            summary.bisections += 1;
            let half = rest.len() / 2;
            queue.push_front((rest[half..].to_vec(), retries));
            queue.push_front((rest[..half].to_vec(), retries));
            continue;
        }
        if retries >= mapping.max_retries {
            summary.failed_batches += 1;
            on_failure(mapping, &stream.name, shard, &rest, &outcome)?;
            continue;
        }
        summary.retries += 1;
        queue.push_front((rest, retries + 1));
    }
    Ok(last)
}

/// Index of the lowest sequence number in `batchItemFailures`, if any. An identifier that
/// names no record of the batch fails the whole batch, as in Lambda.
fn lowest_failure(body: &[u8], segment: &[ShardRecord]) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let failures = v.get("batchItemFailures")?.as_array()?;
    let ids: Vec<Option<SeqNo>> = failures
        .iter()
        .map(|f| {
            f.get("itemIdentifier")
                .and_then(|i| i.as_str())
                .and_then(|s| s.parse().ok())
        })
        .collect();
    if ids.is_empty() {
        return None;
    }
    if ids.iter().any(Option::is_none) {
        return Some(0);
    }
    let lowest = ids.into_iter().flatten().min()?;
    Some(
        segment
            .iter()
            .position(|r| r.sequence == lowest)
            .unwrap_or(0),
    )
}

/// A Lambda Kinesis event for `records`.
fn event(stream: &str, shard: &str, records: &[ShardRecord]) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "Records": records.iter().map(|r| json!({
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": r.partition_key,
                "sequenceNumber": r.sequence.as_str(),
                "data": b64.encode(&r.data),
                "approximateArrivalTimestamp": r.arrival_ms as f64 / 1000.0,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": format!("{shard}:{}", r.sequence),
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::123456789012:role/tidemark-local",
            "awsRegion": "us-east-1",
            "eventSourceARN": format!("arn:aws:kinesis:us-east-1:123456789012:stream/{stream}"),
        })).collect::<Vec<_>>()
    })
}

/// Writes the metadata of a batch that exhausted its retries (Lambda's on-failure record).
fn on_failure(
    mapping: &Mapping,
    stream: &str,
    shard: &str,
    records: &[ShardRecord],
    outcome: &Outcome,
) -> Result<()> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(());
    };
    tracing::error!(shard, first = %first.sequence, last = %last.sequence, "batch dropped after its retries: sent to the on-failure destination");
    let Some(dir) = &mapping.on_failure else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    let doc = json!({
        "requestContext": {"condition": "RetryAttemptsExhausted", "functionError": format!("{outcome:?}")},
        "KinesisBatchInfo": {
            "shardId": shard,
            "startSequenceNumber": first.sequence.as_str(),
            "endSequenceNumber": last.sequence.as_str(),
            "batchSize": records.len(),
            "streamArn": format!("arn:aws:kinesis:us-east-1:123456789012:stream/{stream}"),
        }
    });
    let path = dir.join(format!("{shard}-{}.json", first.sequence.sortable()));
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}
