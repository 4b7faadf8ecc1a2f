//! Lambda handler for baselines: an S3 `ObjectCreated` notification (with `versionId`), or a
//! direct invocation `{"bucket": "...", "key": "...", "version_id": "...", "table": "..."}`,
//! applies that version as the pipeline's baseline ([`baseline::apply`]).
//!
//! Environment: `TIDEMARK_PIPELINE`, `TIDEMARK_OUTPUT`, `TIDEMARK_POSITIONS`, optional
//! `TIDEMARK_BASELINE_TABLE` (`schema.table`) and `TIDEMARK_SNAPSHOT_PART_ROWS`.

use aws_lambda_events::event::s3::S3Event;
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
    if event.get("Records").is_some() {
        let event: S3Event = serde_json::from_value(event.clone())
            .map_err(|e| format!("not an S3 event notification: {e}"))?;
        return event
            .records
            .into_iter()
            .map(|r| {
                let bucket = r.s3.bucket.name.ok_or("S3 event without bucket.name")?;
                let key = r.s3.object.key.ok_or("S3 event without object.key")?;
                Ok((bucket, url_decode(&key), r.s3.object.version_id, None))
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
    percent_encoding::percent_decode_str(&key.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
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
#[allow(clippy::unwrap_used)]
mod tests {
    /// An `ObjectCreated:Put` notification as S3 sends it (trimmed), a manifest beside it, and
    /// a direct invocation.
    #[test]
    fn s3_notifications_and_direct_invocations_name_objects() {
        let record = |key: &str, version: &str| {
            serde_json::json!({
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-1",
                "eventTime": "2026-12-07T06:00:00.000Z", "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
                "requestParameters": {"sourceIPAddress": "10.0.0.1"},
                "responseElements": {"x-amz-request-id": "R1", "x-amz-id-2": "I1"},
                "s3": {"s3SchemaVersion": "1.0", "configurationId": "baseline",
                       "bucket": {"name": "exports", "arn": "arn:aws:s3:::exports",
                                  "ownerIdentity": {"principalId": "A1"}},
                       "object": {"key": key, "size": 42, "versionId": version, "sequencer": "0A"}}
            })
        };
        let event = serde_json::json!({"Records": [
            record("orders/2026+12%2F07.jsonl.gz", "v1"),
            record("orders/x.manifest.json", "v2"),
        ]});
        assert_eq!(
            super::objects(&event).unwrap(),
            vec![(
                "exports".to_string(),
                "orders/2026 12/07.jsonl.gz".to_string(),
                Some("v1".to_string()),
                None
            )]
        );
        let direct = serde_json::json!({"bucket": "b", "key": "k.csv", "table": "public.t"});
        assert_eq!(
            super::objects(&direct).unwrap(),
            vec![("b".into(), "k.csv".into(), None, Some("public.t".into()))]
        );
    }

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(super::url_decode("a+b%2Fc%zz%E2%9C%93"), "a b/c%zz\u{2713}");
    }
}
