//! Connection settings shared by the SQL client and the replication client.

use std::str::FromStr;

use tokio_postgres::{Client, Config, NoTls};

use crate::error::{Error, ErrorKind, Result};

/// Parses a `postgres://` URL. A password missing from the URL is taken from
/// `TIDEMARK_SOURCE_PASSWORD`, else `PGPASSWORD`. The password never appears in errors.
pub fn parse_url(url: &str) -> Result<Config> {
    let mut cfg = Config::from_str(url).map_err(|e| {
        Error::with_source(
            ErrorKind::Config,
            "source.url is not a valid PostgreSQL URL (postgres://user:password@host:port/dbname)",
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
    if !matches!(
        cfg.get_ssl_mode(),
        tokio_postgres::config::SslMode::Disable | tokio_postgres::config::SslMode::Prefer
    ) {
        return Err(Error::config(
            "sslmode=require is not supported by this build yet: use sslmode=disable on a trusted network",
        ));
    }
    Ok(cfg)
}

/// Where the URL points, without credentials: `host:port/dbname`.
pub fn describe(cfg: &Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", cfg.get_dbname().unwrap_or(""))
}

/// Opens an ordinary SQL session with the same session settings as the walsender
/// (ISO dates, UTC, exact floats), so COPY text matches pgoutput text.
pub async fn sql_connect(cfg: &Config, application_name: &str) -> Result<Client> {
    let mut cfg = cfg.clone();
    cfg.application_name(application_name);
    cfg.options("-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c intervalstyle=iso_8601 -c bytea_output=hex");
    cfg.connect_timeout(std::time::Duration::from_secs(10));
    let (client, conn) = cfg.connect(NoTls).await.map_err(|e| {
        let target = describe(&cfg);
        let err = Error::from(e);
        let kind = if err.to_string().contains("password") {
            ErrorKind::Config
        } else {
            err.kind()
        };
        Error::new(
            kind,
            format!(
                "cannot connect to PostgreSQL at {target}: {}",
                err.one_line()
            ),
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "SQL connection closed");
        }
    });
    Ok(client)
}
