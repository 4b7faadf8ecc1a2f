//! The status file a running worker keeps beside its checkpoint: what `tidemark status` and a
//! container health check read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::now_rfc3339;

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PipelineState {
    Connecting,
    Snapshotting,
    Streaming,
    Reconnecting,
    Stopped,
    Error,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub pipeline: String,
    pub state: PipelineState,
    pub pid: u32,
    /// The committed position, human-readable.
    pub position: Option<String>,
    pub rows_written: u64,
    pub last_error: Option<String>,
    pub updated_at: String,
}

/// Writes `<dir>/<pipeline>.status.json` atomically. Failures are logged, never fatal: the
/// status file is advisory.
#[derive(Debug, Clone)]
pub struct StatusFile {
    path: PathBuf,
    report: StatusReport,
    written: Option<std::time::Instant>,
}

impl StatusFile {
    pub fn new(dir: &Path, pipeline: &str) -> Self {
        StatusFile {
            path: dir.join(format!("{pipeline}.status.json")),
            report: StatusReport {
                pipeline: pipeline.to_string(),
                state: PipelineState::Connecting,
                pid: std::process::id(),
                position: None,
                rows_written: 0,
                last_error: None,
                updated_at: now_rfc3339(),
            },
            written: None,
        }
    }

    /// Rewrites the file when it is older than 10 s, so a health check can tell a quiet but
    /// live worker from a hung one.
    pub fn heartbeat(&mut self) {
        if self
            .written
            .is_none_or(|w| w.elapsed() >= std::time::Duration::from_secs(10))
        {
            self.write();
        }
    }

    /// Rewrites the file now (a sign of life with nothing else to report).
    pub fn touch(&mut self) {
        self.write();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn set_state(&mut self, state: PipelineState, error: Option<String>) {
        self.report.state = state;
        if error.is_some() {
            self.report.last_error = error;
        }
        self.write();
    }

    pub fn committed(&mut self, position: String, rows: u64) {
        self.report.position = Some(position);
        self.report.rows_written += rows;
        self.write();
    }

    fn write(&mut self) {
        self.report.updated_at = now_rfc3339();
        self.written = Some(std::time::Instant::now());
        let res = serde_json::to_vec_pretty(&self.report)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                // Per write: a copy's heartbeat writes from another task.
                let tmp = self
                    .path
                    .with_extension(format!("json.{:08x}.tmp", fastrand::u32(..)));
                std::fs::write(&tmp, b)?;
                std::fs::rename(&tmp, &self.path)
            });
        if let Err(e) = res {
            tracing::debug!(error = %e, path = %self.path.display(), "cannot write status file");
        }
    }

    pub fn read(dir: &Path, pipeline: &str) -> Result<Option<StatusReport>> {
        let path = dir.join(format!("{pipeline}.status.json"));
        match std::fs::read(&path) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl StatusReport {
    /// Healthy: a live state, written within `max_age`.
    pub fn healthy(&self, max_age: std::time::Duration) -> std::result::Result<(), String> {
        let live = matches!(
            self.state,
            PipelineState::Connecting
                | PipelineState::Snapshotting
                | PipelineState::Streaming
                | PipelineState::Reconnecting
        );
        if !live {
            return Err(format!(
                "state {:?}{}",
                self.state,
                self.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
        let age = chrono::DateTime::parse_from_rfc3339(&self.updated_at)
            .map(|t| chrono::Utc::now().signed_duration_since(t))
            .map_err(|_| "unreadable updated_at".to_string())?;
        if age.num_milliseconds() > max_age.as_millis() as i64 {
            return Err(format!("no heartbeat for {} s", age.num_seconds()));
        }
        Ok(())
    }
}
