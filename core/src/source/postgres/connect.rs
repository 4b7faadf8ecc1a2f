//! Connection settings shared by the SQL client and the replication client.
//!
//! TLS (`sslmode`, `sslrootcert`, channel binding) is described in [`super::tls`].

use std::str::FromStr;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};

use super::tls::{MakeRustlsConnect, SslMode, TlsSettings, tls_error_of};
use crate::error::{Error, ErrorKind, Result};

/// A parsed source URL: the tokio-postgres settings, and the TLS settings tidemark handles
/// itself (tokio-postgres knows neither `sslrootcert` nor `verify-ca` / `verify-full`).
#[derive(Debug, Clone)]
pub struct PgSource {
    /// Everything but TLS; its `ssl_mode` mirrors `tls.mode` as closely as tokio-postgres can.
    pub config: Config,
    pub tls: TlsSettings,
}

/// What the SQL client ([`sql_connect`]) and the replication client connect with: a
/// [`PgSource`] from [`parse_url`] (all TLS settings), or a bare `tokio_postgres::Config` (TLS
/// per its `ssl_mode` — disable, prefer, require — without certificate verification).
pub trait ConnectSettings {
    fn pg_config(&self) -> &Config;
    fn tls_settings(&self) -> TlsSettings;
}

impl ConnectSettings for PgSource {
    fn pg_config(&self) -> &Config {
        &self.config
    }
    fn tls_settings(&self) -> TlsSettings {
        self.tls.clone()
    }
}

impl ConnectSettings for Config {
    fn pg_config(&self) -> &Config {
        self
    }
    fn tls_settings(&self) -> TlsSettings {
        TlsSettings::from_pg_config(self)
    }
}

/// The connection settings of a configured source: its URL, with the password resolved from a
/// secret (if configured) taking precedence over the URL and the environment.
pub fn source_settings(src: &crate::config::SourceConfig) -> Result<PgSource> {
    let mut pg = parse_url(&src.url)?;
    if let Some(p) = &src.password {
        pg.config.password(p.expose());
    }
    Ok(pg)
}

/// Parses a `postgres://` URL. A password missing from the URL is taken from
/// `TIDEMARK_SOURCE_PASSWORD`, else `PGPASSWORD`. The password never appears in errors.
/// TLS parameters: `sslmode` (disable, prefer, require, verify-ca, verify-full), `sslrootcert`,
/// `channel_binding`, `sslnegotiation` (see [`super::tls`]).
pub fn parse_url(url: &str) -> Result<PgSource> {
    let (pg_url, tls) = TlsSettings::split_url(url)?;
    let mut cfg = Config::from_str(&pg_url).map_err(|e| {
        Error::with_source(
            ErrorKind::Config,
            "source.url is not a valid PostgreSQL URL (postgres://user:password@host:port/dbname?sslmode=...)",
            e,
        )
    })?;
    if cfg.get_password().is_none() {
        for var in ["TIDEMARK_SOURCE_PASSWORD", "PGPASSWORD"] {
            if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
                cfg.password(p.as_encoded_bytes());
                break;
            }
        }
    }
    if cfg.get_dbname().is_none() {
        return Err(Error::config(
            "source.url names no database: postgres://user@host:port/<dbname>",
        ));
    }
    let tls = tls.unwrap_or_else(|| TlsSettings::from_pg_config(&cfg));
    cfg.ssl_mode(tls.mode.to_pg());
    Ok(PgSource { config: cfg, tls })
}

/// Where the URL points, without credentials: `host:port/dbname`.
pub fn describe(cfg: &Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => match cfg.get_hostaddrs().first() {
            Some(a) => a.to_string(),
            None => "localhost".to_string(),
        },
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", cfg.get_dbname().unwrap_or(""))
}

/// Whether every host is a Unix-domain socket (no TLS there, as in libpq).
fn unix_sockets_only(cfg: &Config) -> bool {
    #[cfg(unix)]
    {
        cfg.get_hostaddrs().is_empty()
            && !cfg.get_hosts().is_empty()
            && cfg.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)))
    }
    #[cfg(not(unix))]
    {
        let _ = cfg;
        false
    }
}

/// Opens an ordinary SQL session with the same session settings as the walsender
/// (ISO dates, UTC, exact floats), so COPY text matches pgoutput text.
///
/// TLS follows the settings' `sslmode`; with `prefer`, a failed TLS handshake is retried in
/// plaintext (logged as a warning), as libpq does.
pub async fn sql_connect<C: ConnectSettings + ?Sized>(
    source: &C,
    application_name: &str,
) -> Result<Client> {
    let mut cfg = source.pg_config().clone();
    let mut tls = source.tls_settings();
    cfg.application_name(application_name);
    cfg.options("-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c intervalstyle=iso_8601 -c bytea_output=hex");
    cfg.connect_timeout(std::time::Duration::from_secs(10));
    if unix_sockets_only(&cfg) {
        tls.mode = SslMode::Disable;
    }
    // With only `hostaddr`, tokio-postgres has no name for the TLS handshake: use the addresses.
    if cfg.get_hosts().is_empty() {
        for addr in cfg.get_hostaddrs().to_vec() {
            cfg.host(addr.to_string());
        }
    }
    cfg.ssl_mode(tls.mode.to_pg());
    let connector = MakeRustlsConnect::new(tls.connector()?);
    match connect_once(&cfg, connector).await {
        Err((e, true)) if tls.mode == SslMode::Prefer => {
            tracing::warn!(
                target = %describe(&cfg),
                error = %e.one_line(),
                "TLS to PostgreSQL failed with sslmode=prefer: connecting without TLS"
            );
            cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            connect_once(&cfg, MakeRustlsConnect::new(None))
                .await
                .map_err(|(e, _)| e)
        }
        r => r.map_err(|(e, _)| e),
    }
}

/// One connection attempt; on failure also says whether TLS is what failed.
async fn connect_once(cfg: &Config, tls: MakeRustlsConnect) -> Result<Client, (Error, bool)> {
    let (client, conn) = match cfg.connect(tls).await {
        Ok(c) => c,
        Err(e) => {
            let target = describe(cfg);
            if let Some(tls_err) = tls_error_of(&e) {
                let err = Error::new(
                    tls_err.kind(),
                    format!(
                        "cannot connect to PostgreSQL at {target}: {}",
                        tls_err.one_line()
                    ),
                );
                return Err((err, true));
            }
            let err = Error::from(e);
            let text = err.one_line();
            let err = if text.contains("server does not support TLS") {
                Error::config(format!(
                    "cannot connect to PostgreSQL at {target}: the server does not accept TLS connections (ssl = off): \
                     turn ssl on in the server's configuration, or use sslmode=prefer or sslmode=disable"
                ))
            } else if text.contains("channel binding") {
                Error::config(format!(
                    "cannot connect to PostgreSQL at {target}: channel_binding=require, but the server authenticated \
                     without channel binding: it needs TLS (sslmode=require or stronger) and a SCRAM-SHA-256 \
                     password for the user, or use channel_binding=prefer"
                ))
            } else {
                let kind = if err.to_string().contains("password") {
                    ErrorKind::Config
                } else {
                    err.kind()
                };
                Error::new(
                    kind,
                    format!("cannot connect to PostgreSQL at {target}: {text}"),
                )
            };
            return Err((err, false));
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "SQL connection closed");
        }
    });
    Ok(client)
}
