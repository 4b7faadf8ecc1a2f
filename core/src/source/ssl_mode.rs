//! `sslmode`, with libpq's names and meanings, shared by every database source.

use crate::error::{Error, Result};

/// `sslmode` of a source URL (PostgreSQL, MySQL/MariaDB). What each mode does per source:
/// `source::postgres::tls` and `source::mysql::connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// Parses an `sslmode` value.
    pub fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(Error::config(
                    "sslmode=allow is not supported: use sslmode=prefer (TLS when the server offers it) or sslmode=disable",
                ));
            }
            other => {
                return Err(Error::config(format!(
                    "unknown sslmode {other:?} in the source URL: use disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}
