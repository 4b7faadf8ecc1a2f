//! `tidemark status`: where a pipeline stands, from its checkpoint, lease, status file and the
//! source (slot lag, shard positions).

use std::fmt;
use std::path::PathBuf;

use crate::config::Config;
use crate::engine::{PipelineState, StatusFile};
use crate::error::{Error, Result};
use crate::source::postgres::{catalog, connect};
use crate::store;

/// A pipeline's status: as JSON (`--json`) or as text lines (`Display`).
pub enum Status {
    #[cfg(feature = "aws")]
    Kinesis(crate::source::kinesis::status::Composite),
    Database(serde_json::Value),
}

impl Status {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            #[cfg(feature = "aws")]
            Status::Kinesis(doc) => serde_json::to_value(doc).unwrap_or_default(),
            Status::Database(doc) => doc.clone(),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "aws")]
            Status::Kinesis(doc) => {
                writeln!(f, "pipeline  {}", doc.pipeline)?;
                writeln!(f, "stream    {}", doc.stream)?;
                match &doc.baseline {
                    Some(b) => writeln!(f, "baseline  {b}")?,
                    None => writeln!(f, "baseline  none")?,
                }
                for s in &doc.shards {
                    writeln!(
                        f,
                        "shard     {}  seq {}{}  behind {}  lease {}",
                        s.shard,
                        s.sequence.as_deref().unwrap_or("-"),
                        if s.finished { " (finished)" } else { "" },
                        s.millis_behind_latest
                            .map(|m| format!("{m} ms"))
                            .unwrap_or_else(|| "?".into()),
                        s.lease_owner.as_deref().unwrap_or("-"),
                    )?;
                }
                Ok(())
            }
            Status::Database(doc) => {
                let show = |k: &str| match &doc[k] {
                    serde_json::Value::Null => "-".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                writeln!(f, "pipeline        {}", show("pipeline"))?;
                writeln!(f, "state           {}", show("state"))?;
                writeln!(f, "position        {}", show("position"))?;
                writeln!(
                    f,
                    "lag             {} bytes, {} s",
                    show("lag_bytes"),
                    show("lag_seconds")
                )?;
                writeln!(
                    f,
                    "slot            {} (WAL retained {} bytes, {})",
                    show("slot"),
                    show("slot_wal_retained_bytes"),
                    show("slot_wal_status")
                )?;
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
    #[cfg(feature = "aws")]
    if let Some(stream) = cfg.kinesis_stream() {
        use crate::source::kinesis::{client::KinesisStream, status::composite};
        let stream = KinesisStream::open(stream).await?;
        return Ok(Status::Kinesis(
            composite(store.as_ref(), &stream, &cfg.pipeline).await?,
        ));
    }
    let cp = store.load(&cfg.pipeline).await?;
    let lease = store
        .lease(&cfg.pipeline)
        .await?
        .filter(|l| l.expires_at_ms > store::now_ms());
    let report = StatusFile::read(&state_dir(cfg)?, &cfg.pipeline)?;
    let (pg_slot, _) = crate::source::postgres::source::slot_names(cfg, cp.as_ref());
    let (slot, server_error) = if cfg.is_mysql() {
        (None, None)
    } else {
        let pg = connect::source_settings(&cfg.source)?;
        match connect::sql_connect(&pg, "tidemark-status").await {
            Ok(client) => (catalog::slot_info(&client, &pg_slot).await?, None),
            Err(e) => (None, Some(e.one_line())),
        }
    };
    let now_us = store::now_ms() * 1000;
    let lag_seconds = match (&slot, cp.as_ref().and_then(|c| c.last_commit_ts)) {
        (Some(s), Some(ts)) if s.ack_lag_bytes.unwrap_or(0) > 0 => {
            Some(((now_us - ts).max(0) as f64) / 1e6)
        }
        (Some(_), Some(_)) => Some(0.0),
        _ => None,
    };
    let state = match (&report, &slot) {
        (Some(r), Some(s)) if s.active_pid.is_some() || r.state == PipelineState::Error => {
            format!("{:?}", r.state).to_uppercase()
        }
        (Some(r), _) if r.state == PipelineState::Error => "ERROR".into(),
        // Running on another machine (no local status file): the slot is in use or the lease live.
        (_, Some(s)) if s.active_pid.is_some() || lease.is_some() => "RUNNING".into(),
        // MySQL has no slot: a live lease means a worker is running.
        (_, None) if cfg.is_mysql() && lease.is_some() => "RUNNING".into(),
        (_, _) if cp.as_ref().is_some_and(|c| c.position.is_some()) => "STOPPED".into(),
        _ => "NEW".into(),
    };
    let doc = serde_json::json!({
        "pipeline": cfg.pipeline,
        "state": state,
        "position": cp.as_ref().and_then(|c| c.position.as_ref()).map(|p| p.to_string()),
        "pending_intent": cp.as_ref().and_then(|c| c.intent.as_ref()).map(|i| i.keys.len()),
        "snapshot": cp.as_ref().and_then(|c| c.snapshot.clone()),
        "updated_at": cp.as_ref().map(|c| c.updated_at.clone()),
        "lease_owner": lease.as_ref().map(|l| l.owner.clone()),
        "lease_epoch": lease.as_ref().map(|l| l.epoch),
        "lag_bytes": slot.as_ref().and_then(|s| s.ack_lag_bytes),
        "lag_seconds": lag_seconds,
        "slot": pg_slot,
        "slot_active_pid": slot.as_ref().and_then(|s| s.active_pid),
        "slot_wal_retained_bytes": slot.as_ref().and_then(|s| s.wal_retained_bytes),
        "slot_wal_status": slot.as_ref().and_then(|s| s.wal_status.clone()),
        "rows_written_this_run": report.as_ref().map(|r| r.rows_written),
        "last_error": report.as_ref().and_then(|r| r.last_error.clone()),
        "source_error": server_error,
    });
    Ok(Status::Database(doc))
}
