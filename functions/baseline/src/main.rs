//! Lambda handler for baselines: an S3 `ObjectCreated` notification (with `versionId`), or a
//! direct invocation `{"bucket": "...", "key": "...", "version_id": "...", "table": "..."}`,
//! applies that version as the pipeline's baseline ([`baseline::apply`]).
//!
//! Environment: `TIDEMARK_PIPELINE`, `TIDEMARK_OUTPUT`, `TIDEMARK_POSITIONS`, optional
//! `TIDEMARK_BASELINE_TABLE` (`schema.table`) and `TIDEMARK_SNAPSHOT_PART_ROWS`.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use tidemark_core::engine::baseline;
use tidemark_core::output::{self, Layout};

struct Setup {
    pipeline: String,
    layout: Layout,
    output: std::sync::Arc<dyn output::ObjectOutput>,
    store: std::sync::Arc<dyn tidemark_core::store::PositionStore>,
    table: Option<String>,
    part_rows: usize,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tidemark_core::telemetry::init_lambda_logging();
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let pipeline = var("TIDEMARK_PIPELINE").ok_or("TIDEMARK_PIPELINE is not set")?;
    tidemark_core::store::check_name(&pipeline)?;
    let output_url =
        var("TIDEMARK_OUTPUT").ok_or("TIDEMARK_OUTPUT is not set (s3://bucket/prefix)")?;
    let setup = std::sync::Arc::new(Setup {
        layout: Layout::new("", &pipeline),
        output: output::open(&output_url).await?,
        store: tidemark_core::store::open(var("TIDEMARK_POSITIONS").as_deref(), false).await?,
        table: var("TIDEMARK_BASELINE_TABLE"),
        part_rows: var("TIDEMARK_SNAPSHOT_PART_ROWS")
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(500_000),
        pipeline,
    });
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let setup = setup.clone();
        async move { handle(&setup, event.payload).await }
    }))
    .await
}

/// `(bucket, key, version, table)` of each object the event names.
type Object = (String, String, Option<String>, Option<String>);

/// The objects an S3 notification or a direct invocation names; manifests
/// (`*.manifest.json`) are skipped: they describe a baseline, they are not one.
fn objects(event: &Value) -> Result<Vec<Object>, Error> {
    let s = |v: &Value| v.as_str().map(str::to_string);
    if let Some(records) = event.get("Records").and_then(Value::as_array) {
        return records
            .iter()
            .map(|r| {
                let s3 = &r["s3"];
                let bucket = s(&s3["bucket"]["name"]).ok_or("S3 event without bucket.name")?;
                let key = s(&s3["object"]["key"]).ok_or("S3 event without object.key")?;
                Ok((
                    bucket,
                    url_decode(&key),
                    s(&s3["object"]["versionId"]),
                    None,
                ))
            })
            .filter(|o: &Result<Object, Error>| {
                o.as_ref()
                    .map_or(true, |(_, k, _, _)| !k.ends_with(".manifest.json"))
            })
            .collect();
    }
    let bucket = s(&event["bucket"])
        .ok_or("expected an S3 event or {\"bucket\", \"key\", \"version_id\"}")?;
    let key = s(&event["key"]).ok_or("missing \"key\"")?;
    Ok(vec![(
        bucket,
        key,
        s(&event["version_id"]),
        s(&event["table"]),
    )])
}

/// S3 notifications URL-encode keys, spaces as `+`.
fn url_decode(key: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(setup: &Setup, event: Value) -> Result<Value, Error> {
    let mut results = Vec::new();
    for (bucket, key, version, table) in objects(&event)? {
        let target = baseline::Target {
            pipeline: &setup.pipeline,
            layout: &setup.layout,
            store: setup.store.as_ref(),
            output: setup.output.as_ref(),
            part_rows: setup.part_rows,
        };
        let object = baseline::ObjectRef {
            bucket: &bucket,
            key: &key,
            version: version.as_deref(),
            table: table.as_deref().or(setup.table.as_deref()),
        };
        let applied = baseline::apply(&target, &object).await?;
        results.push(match applied {
            baseline::Applied::Written(p) => {
                json!({"written": true, "version_id": p.version_id, "rows": p.rows, "table": p.table.to_string()})
            }
            baseline::Applied::NotNewer { committed } => {
                json!({"written": false, "committed_version_id": committed.version_id})
            }
        });
    }
    Ok(json!({ "results": results }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(super::url_decode("a+b%2Fc%zz%E2%9C%93"), "a b/c%zz\u{2713}");
    }
}
