//! `tidemark lambda-local`: the Lambda path without Lambda. A Runtime API emulator runs the
//! real function binary; an event source mapping player feeds it a Kinesis stream's shards.

pub mod esm;
pub mod runtime_api;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

/// What [`invoke_file`] measured.
#[derive(Debug, serde::Serialize)]
pub struct InvokeReport {
    pub records: usize,
    /// Cold-start init (process start to its first `next`), per cold start.
    pub init_ms: Vec<f64>,
    /// Each invocation, from the event's hand-over to the response.
    pub invoke_ms: Vec<f64>,
    /// Records per second of the fastest invocation.
    pub best_records_per_sec: f64,
    pub last_response: serde_json::Value,
}

/// Invokes the function with an event file `repeat` times. A Kinesis event's records are moved
/// to a new shard id per repetition, so no invocation is a replay of another.
pub async fn invoke_file(
    function: &mut runtime_api::LocalFunction,
    event: &Path,
    repeat: u32,
) -> Result<InvokeReport> {
    let mut doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(event).with_context(|| format!("reading {}", event.display()))?,
    )
    .with_context(|| format!("{} is not JSON", event.display()))?;
    let records = doc["Records"].as_array().map(Vec::len).unwrap_or(0);
    let mut invoke_ms = Vec::new();
    let mut last_response = serde_json::Value::Null;
    for n in 0..repeat.max(1) {
        if let Some(rs) = doc["Records"].as_array_mut().filter(|_| repeat > 1) {
            for r in rs {
                let id = r["eventID"].as_str().unwrap_or("").to_string();
                let seq = id
                    .split_once(':')
                    .map(|(_, s)| s)
                    .unwrap_or("0")
                    .to_string();
                r["eventID"] = serde_json::Value::from(format!("shardId-bench{n:07}:{seq}"));
            }
        }
        let payload = serde_json::to_vec(&doc)?;
        let started = Instant::now();
        let outcome = function.invoke(payload).await?;
        invoke_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        last_response = match outcome {
            runtime_api::Outcome::Response(b) => {
                serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null)
            }
            other => anyhow::bail!("invocation failed: {other:?}"),
        };
    }
    let best = invoke_ms.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok(InvokeReport {
        records,
        init_ms: function
            .inits
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect(),
        best_records_per_sec: records as f64 / (best / 1000.0),
        invoke_ms,
        last_response,
    })
}
