//! The one error type of `tidemark-core`.
//!
//! Every error carries an [`ErrorKind`] that tells the drive loop what to do with it:
//! retry with backoff ([`ErrorKind::Transient`]) or stop and tell the operator
//! ([`ErrorKind::Config`], [`ErrorKind::Data`], [`ErrorKind::Conflict`], [`ErrorKind::Fatal`]).

use std::fmt;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A connection dropped, a server is busy: retrying the same work may succeed.
    Transient,
    /// The source or the configuration is not usable as set up; the message says what to change.
    Config,
    /// Input that cannot be decoded or represented; retrying will fail the same way.
    Data,
    /// Another writer owns the pipeline or moved its position: this worker must stop writing.
    Conflict,
    /// A bug or an unexpected state; not retried.
    Fatal,
}

impl ErrorKind {
    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient)
    }
}

/// `text` followed by each error of the chain from `first` on, `: `-separated, each once.
pub fn with_causes(mut text: String, first: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut cur = first;
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = e.source();
    }
    text
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Config => "configuration",
            ErrorKind::Data => "data",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Fatal => "fatal",
        })
    }
}

/// An error from tidemark-core: a kind, a one-line message that says what to do, and an
/// optional source error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Data, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The message followed by the chain of causes, on one line.
    pub fn one_line(&self) -> String {
        let source = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        with_causes(self.message.clone(), source)
    }

    /// Prefix the message with context, keeping kind and source.
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.message = format!("{ctx}: {}", self.message);
        self
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound => {
                ErrorKind::Config
            }
            _ => ErrorKind::Transient,
        };
        Error::with_source(kind, "I/O error", e)
    }
}

#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let kind = match e.code() {
            None => ErrorKind::Transient,
            Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => ErrorKind::Config,
            Some(c) if *c == SqlState::INVALID_PASSWORD => ErrorKind::Config,
            Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => ErrorKind::Config,
            Some(c) if *c == SqlState::UNDEFINED_TABLE => ErrorKind::Config,
            Some(c) if *c == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE => ErrorKind::Config,
            Some(c) if c.code().starts_with("08") || c.code().starts_with("57") => {
                ErrorKind::Transient
            }
            Some(c) if *c == SqlState::OBJECT_IN_USE => ErrorKind::Transient,
            Some(_) => ErrorKind::Fatal,
        };
        let msg = match e.as_db_error() {
            Some(db) => format!("PostgreSQL: {}", db.message()),
            None => "PostgreSQL connection error".to_string(),
        };
        Error::with_source(kind, msg, e)
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Error::with_source(ErrorKind::Fatal, "Parquet encoding failed", e)
    }
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::with_source(ErrorKind::Fatal, "Arrow error", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_includes_causes_once() {
        let io = std::io::Error::other("disk full");
        let e = Error::with_source(ErrorKind::Transient, "writing object", io).context("batch 7");
        assert_eq!(e.one_line(), "batch 7: writing object: disk full");
        assert!(e.is_retryable());
    }
}
