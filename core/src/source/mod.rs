//! Change sources.

pub mod capture;
pub mod contract;
pub mod hook;
pub mod kinesis;
pub mod memory;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod snapshot;
pub mod ssl_mode;
pub mod stream;

pub use contract::{Ordering, ResumeMode, SnapshotRead, SnapshotTables, Source, TotalSource};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One preflight finding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
}

impl Finding {
    pub fn new(check: &'static str, level: Level, message: impl Into<String>) -> Self {
        Finding {
            check,
            level,
            message: message.into(),
        }
    }
}
