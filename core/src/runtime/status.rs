//! `tidemark status`: where a pipeline stands, from its checkpoint, lease, status file and the
//! source (slot lag, binlog lag, shard positions).

use std::fmt;
use std::path::PathBuf;

use crate::config::Config;
use crate::engine::{PipelineState, StatusFile};
use crate::error::{Error, Result};
use crate::source::Source;
use crate::source::contract::{Ordering, SourceStatus, WithSource, show_value, with_source};
use crate::store::{self, Checkpoint, PositionStore};

/// A pipeline's status: as JSON (`--json`) or as text lines (`Display`).
pub enum Status {
    /// A source ordered per shard: the source's document and lines alone (positions, leases
    /// and lag are per shard).
    PerShard {
        doc: serde_json::Value,
        lines: Vec<(String, String)>,
    },
    Database {
        doc: serde_json::Value,
        /// The source's own lines (`label`, value), after the position.
        source: Vec<(String, String)>,
    },
}

impl Status {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Status::PerShard { doc, .. } | Status::Database { doc, .. } => doc.clone(),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::PerShard { doc, lines } => {
                writeln!(f, "pipeline  {}", doc["pipeline"].as_str().unwrap_or("-"))?;
                for (label, value) in lines {
                    writeln!(f, "{label:<9} {value}")?;
                }
                Ok(())
            }
            Status::Database { doc, source } => {
                let show = |k: &str| show_value(&doc[k]);
                writeln!(f, "pipeline        {}", show("pipeline"))?;
                writeln!(f, "state           {}", show("state"))?;
                writeln!(f, "position        {}", show("position"))?;
                writeln!(
                    f,
                    "lag             {} bytes, {} s",
                    show("lag_bytes"),
                    show("lag_seconds")
                )?;
                for (label, value) in source {
                    writeln!(f, "{label:<15} {value}")?;
                }
                writeln!(f, "updated         {}", show("updated_at"))?;
                writeln!(
                    f,
                    "lease           {} (epoch {})",
                    show("lease_owner"),
                    show("lease_epoch")
                )?;
                if let Some(e) = doc["last_error"].as_str() {
                    writeln!(f, "last error      {e}")?;
                }
                if let Some(e) = doc["source_error"].as_str() {
                    writeln!(f, "source          unreachable: {e}")?;
                }
                Ok(())
            }
        }
    }
}

/// Where the status file goes: the local position store's directory, else the state directory
/// (created when missing).
pub fn state_dir(cfg: &Config) -> Result<PathBuf> {
    let dir = match cfg.positions.url.as_deref() {
        Some(u) if u.starts_with("file://") => PathBuf::from(&u["file://".len()..]),
        Some(u) if !u.is_empty() && !u.contains("://") => PathBuf::from(u),
        _ => store::local::default_state_dir()?,
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::config(format!(
            "cannot create state directory {}: {e}",
            dir.display()
        ))
    })?;
    Ok(dir)
}

/// The status of `cfg`'s pipeline. A source that cannot be reached is reported in the status
/// (`source_error`), not as an error.
pub async fn status(cfg: &Config) -> Result<Status> {
    let store = store::open(cfg.positions.url.as_deref(), cfg.positions.create_table).await?;
    let cp = store.load(&cfg.pipeline).await?;
    let (ordering, probed) = with_source(cfg, Probe(cfg, store.as_ref(), cp.as_ref())).await?;
    if ordering == Ordering::PerShard {
        let source = probed?;
        let mut doc =
            serde_json::Map::from_iter([("pipeline".to_string(), cfg.pipeline.clone().into())]);
        doc.extend(source.fields);
        return Ok(Status::PerShard {
            doc: doc.into(),
            lines: source.lines,
        });
    }
    let lease = store
        .lease(&cfg.pipeline)
        .await?
        .filter(|l| l.expires_at_ms > store::now_ms());
    let report = StatusFile::read(&state_dir(cfg)?, &cfg.pipeline)?;
    let mut source = match probed {
        Ok(s) => s,
        Err(e) => SourceStatus {
            unreachable: Some(e.one_line()),
            ..SourceStatus::default()
        },
    };
    let source_error = source.unreachable.take();
    let now_us = store::now_ms() * 1000;
    let lag_seconds = match (source.lag_bytes, cp.as_ref().and_then(|c| c.last_commit_ts)) {
        (Some(lag), Some(ts)) if lag > 0 => Some(((now_us - ts).max(0) as f64) / 1e6),
        (Some(_), Some(_)) => Some(0.0),
        _ => None,
    };
    // A worker runs when the source sees its reader, or, where the source cannot tell, when
    // the lease is live; the local status file (unless it is an earlier run's) says what the
    // worker does. A live lease alone still means RUNNING.
    let running = source.reading == Some(true) || (source.reading.is_none() && lease.is_some());
    let state = match &report {
        Some(r) if r.state == PipelineState::Error => "ERROR".into(),
        Some(r) if running && r.state != PipelineState::Stopped => {
            format!("{:?}", r.state).to_uppercase()
        }
        _ if running || lease.is_some() => "RUNNING".into(),
        _ if cp.as_ref().is_some_and(|c| c.position.is_some()) => "STOPPED".into(),
        _ => "NEW".into(),
    };
    let mut doc = serde_json::json!({
        "pipeline": cfg.pipeline,
        "state": state,
        "position": cp.as_ref().and_then(|c| c.position.as_ref()).map(|p| p.to_string()),
        "pending_intent": cp.as_ref().and_then(|c| c.intent.as_ref()).map(|i| i.keys.len()),
        "snapshot": cp.as_ref().and_then(|c| c.snapshot.clone()),
        "updated_at": cp.as_ref().map(|c| c.updated_at.clone()),
        "lease_owner": lease.as_ref().map(|l| l.owner.clone()),
        "lease_epoch": lease.as_ref().map(|l| l.epoch),
        "lag_bytes": source.lag_bytes,
        "lag_seconds": lag_seconds,
        "rows_written_this_run": report.as_ref().map(|r| r.rows_written),
        "last_error": report.as_ref().and_then(|r| r.last_error.clone()),
        "source_error": source_error,
    });
    if let Some(doc) = doc.as_object_mut() {
        doc.extend(source.fields);
    }
    Ok(Status::Database {
        doc,
        source: source.lines,
    })
}

struct Probe<'a>(&'a Config, &'a dyn PositionStore, Option<&'a Checkpoint>);

impl WithSource for Probe<'_> {
    /// The source's ordering, and its status or why it could not be asked.
    type Output = (Ordering, Result<SourceStatus>);
    async fn run<S: Source>(self) -> Result<Self::Output> {
        Ok((S::ORDERING, S::status(self.0, self.1, self.2).await))
    }
}
