//! Metrics as CloudWatch Embedded Metric Format (EMF) lines on stdout: CloudWatch Logs turns
//! each line into metrics in namespace `tidemark`, dimension `Pipeline`, with no agent or API call.

use std::io::Write;

use serde_json::{Map, Value, json};

/// Writes EMF lines for one pipeline (a no-op when disabled).
#[derive(Debug, Clone)]
pub struct Metrics {
    pipeline: String,
    enabled: bool,
}

/// What one committed batch contributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchMetrics {
    pub rows: u64,
    pub objects: u64,
    pub bytes: u64,
    /// Encode + write + commit time of the batch.
    pub batch_ms: u64,
    /// Rows per second since the previous batch.
    pub rows_per_sec: f64,
    /// Wall clock minus the commit time of the batch's last row.
    pub lag_seconds: Option<f64>,
    /// Server WAL position minus the committed position.
    pub lag_bytes: Option<u64>,
}

/// What one committed Kinesis shard batch contributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardMetrics {
    pub rows: u64,
    pub objects: u64,
    pub bytes: u64,
    pub dead_letters: u64,
    /// Wall clock minus the arrival time of the batch's last record.
    pub lag_seconds: Option<f64>,
}

impl Metrics {
    pub fn new(pipeline: &str, enabled: bool) -> Self {
        Metrics {
            pipeline: pipeline.to_string(),
            enabled,
        }
    }

    pub fn disabled() -> Self {
        Metrics {
            pipeline: String::new(),
            enabled: false,
        }
    }

    pub fn batch(&self, m: &BatchMetrics) {
        let mut values: Vec<(&str, &str, Value)> = vec![
            ("Rows", "Count", json!(m.rows)),
            ("Objects", "Count", json!(m.objects)),
            ("Bytes", "Bytes", json!(m.bytes)),
            ("BatchLatency", "Milliseconds", json!(m.batch_ms)),
            (
                "RowsPerSecond",
                "Count/Second",
                json!((m.rows_per_sec * 10.0).round() / 10.0),
            ),
        ];
        if let Some(s) = m.lag_seconds {
            values.push((
                "LagSeconds",
                "Seconds",
                json!((s * 1000.0).round() / 1000.0),
            ));
        }
        if let Some(b) = m.lag_bytes {
            values.push(("LagBytes", "Bytes", json!(b)));
        }
        self.emit(&values);
    }

    /// A committed shard batch; `DeadLetters` is always written (alarms sum it).
    pub fn shard_batch(&self, m: &ShardMetrics) {
        let mut values: Vec<(&str, &str, Value)> = vec![
            ("Rows", "Count", json!(m.rows)),
            ("Objects", "Count", json!(m.objects)),
            ("Bytes", "Bytes", json!(m.bytes)),
            ("DeadLetters", "Count", json!(m.dead_letters)),
        ];
        if let Some(s) = m.lag_seconds {
            values.push((
                "LagSeconds",
                "Seconds",
                json!((s * 1000.0).round() / 1000.0),
            ));
        }
        self.emit(&values);
    }

    /// One error of the given kind (`transient`, `conflict`, `fatal`, ...).
    pub fn error(&self, kind: &str) {
        self.emit(&[
            ("Errors", "Count", json!(1)),
            (&format!("Errors.{kind}"), "Count", json!(1)),
        ]);
    }

    fn emit(&self, values: &[(&str, &str, Value)]) {
        if !self.enabled {
            return;
        }
        let line = self.line(values, crate::clock::now_ms());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }

    fn line(&self, values: &[(&str, &str, Value)], now_ms: i64) -> String {
        let defs: Vec<Value> = values
            .iter()
            .map(|(n, u, _)| json!({"Name": n, "Unit": u}))
            .collect();
        let mut doc = Map::new();
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": now_ms,
                "CloudWatchMetrics": [{"Namespace": "tidemark", "Dimensions": [["Pipeline"]], "Metrics": defs}]
            }),
        );
        doc.insert("Pipeline".into(), json!(self.pipeline));
        for (n, _, v) in values {
            doc.insert((*n).to_string(), v.clone());
        }
        Value::Object(doc).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_follow_the_embedded_metric_format() {
        let m = Metrics::new("orders", true);
        let line = m.line(
            &[
                ("Rows", "Count", json!(5)),
                ("LagBytes", "Bytes", json!(1024)),
            ],
            1_700_000_000_000,
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_000i64);
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "tidemark");
        assert_eq!(cw["Dimensions"], json!([["Pipeline"]]));
        assert_eq!(
            cw["Metrics"][1],
            json!({"Name": "LagBytes", "Unit": "Bytes"})
        );
        assert_eq!(
            (
                v["Pipeline"].as_str(),
                v["Rows"].as_i64(),
                v["LagBytes"].as_i64()
            ),
            (Some("orders"), Some(5), Some(1024))
        );
        assert!(!line.contains('\n'));
    }
}
