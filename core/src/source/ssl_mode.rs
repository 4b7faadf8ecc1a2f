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

/// The TLS parameters of a source URL, taken out of its query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTls {
    /// The URL without them: what the client library parses.
    pub url: String,
    pub mode: Option<SslMode>,
    /// `sslrootcert`, percent-decoded; `None` when absent or empty.
    pub root: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL's parameters, for PostgreSQL and MySQL alike:
/// credentials end at the first '@', parameters start at the first '?' after them (as the
/// client libraries split). Client certificates and revocation lists are refused with the fix;
/// every other parameter stays, in order.
pub fn split_tls_params(url: &str) -> Result<UrlTls> {
    let creds_end = url.find('@').map_or(0, |i| i + 1);
    let Some(q) = url[creds_end..].find('?').map(|i| creds_end + i) else {
        return Ok(UrlTls {
            url: url.to_string(),
            mode: None,
            root: None,
        });
    };
    let (head, query) = (&url[..q], &url[q + 1..]);
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match decode_param(k)?.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&decode_param(v)?)?),
            "sslrootcert" => root = Some(decode_param(v)?).filter(|r| !r.is_empty()),
            "sslcert" | "sslkey" | "sslpassword" | "sslcertmode" => {
                return Err(Error::config(
                    "TLS client certificates (sslcert, sslkey) are not supported: authenticate with a password \
                     and remove them from the source URL",
                ));
            }
            "sslcrl" | "sslcrldir" => {
                return Err(Error::config(
                    "certificate revocation lists (sslcrl, sslcrldir) are not supported: remove them from the source URL",
                ));
            }
            _ => kept.push(pair),
        }
    }
    let mut out = head.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok(UrlTls {
        url: out,
        mode,
        root,
    })
}

/// Decodes a URL parameter's `%XX` escapes; a `%` without two hex digits, or bytes that are
/// not UTF-8 once decoded, are a configuration error.
fn decode_param(s: &str) -> Result<String> {
    let bad = || {
        Error::config(format!(
            "invalid percent-encoding in the source URL parameter {s:?}"
        ))
    };
    let b = s.as_bytes();
    for (i, _) in s.match_indices('%') {
        let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_split_off_and_decoded() {
        let t = split_tls_params(
            "mysql://u:p%40w@h/db?a=1&sslmode=verify-ca&sslrootcert=%2Ftmp%2Fca%20x.pem&b",
        )
        .unwrap();
        assert_eq!(t.url, "mysql://u:p%40w@h/db?a=1&b");
        assert_eq!(t.mode, Some(SslMode::VerifyCa));
        assert_eq!(t.root.as_deref(), Some("/tmp/ca x.pem"));
        // A '?' in the password is not the query.
        let t = split_tls_params("postgres://u:a?sslmode=x&b@h/db?sslmode=disable").unwrap();
        assert_eq!(t.url, "postgres://u:a?sslmode=x&b@h/db");
        assert_eq!(t.mode, Some(SslMode::Disable));
        for bad in [
            "x://h/d?sslcert=/c",
            "x://h/d?sslcrl=/c",
            "x://h/d?sslrootcert=%zz",
            "x://h/d?sslrootcert=%4",
        ] {
            assert_eq!(
                split_tls_params(bad).unwrap_err().kind(),
                crate::ErrorKind::Config,
                "{bad}"
            );
        }
    }
}
