//! Connecting to MySQL/MariaDB, and what its errors mean for a pipeline.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::config::SourceConfig;
use crate::error::{Error, ErrorKind, Result};

/// Row events can be larger than the server's `max_allowed_packet` for clients; ask for the most.
const MAX_PACKET: usize = 1 << 30;

pub use crate::source::ssl_mode::SslMode;
use crate::source::ssl_mode::split_tls_params;

/// TLS to MySQL/MariaDB, set by the source URL's `sslmode` and `sslrootcert` parameters with
/// PostgreSQL's names and meanings, on the SQL and the binlog connection alike:
///
/// | `sslmode` | TLS | server certificate |
/// |---|---|---|
/// | `disable` | never | — |
/// | `prefer` (default) | when the server offers it; plaintext when it does not or the handshake fails (a warning) | not checked |
/// | `require` | mandatory | not checked, unless `sslrootcert` is given: then as `verify-ca` |
/// | `verify-ca` | mandatory | chain up to `sslrootcert` (else the Mozilla roots); not the host name |
/// | `verify-full` | mandatory | chain and host name (the URL's host in the certificate's subjectAltName) |
///
/// Splits `sslmode` and `sslrootcert` off a mysql:// URL's parameters; the rest is left for
/// the client library.
fn split_tls(url: &str) -> Result<(String, SslMode, Option<String>)> {
    let split = split_tls_params(url)?;
    Ok((split.url, split.mode.unwrap_or_default(), split.root))
}

/// The client library builds its TLS configuration with rustls' process-wide provider: with
/// both *ring* (ours) and aws-lc-rs (the AWS SDK's) compiled in there is none until one is
/// installed. Installs *ring* once; a provider already installed stays.
fn ensure_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A parsed `mysql://` (or `mariadb://`) source URL.
#[derive(Clone)]
pub struct MySource {
    /// With TLS as `sslmode` asks (`prefer`: TLS first).
    pub opts: Opts,
    /// `sslmode=prefer`: the same settings without TLS, for a server that does not offer it.
    plain: Option<Opts>,
    /// The database named in the URL: the default schema of captured tables.
    pub database: String,
}

impl std::fmt::Debug for MySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mysql://{}@{}:{}/{}",
            self.opts.user().unwrap_or(""),
            self.opts.ip_or_hostname(),
            self.opts.tcp_port(),
            self.database
        )
    }
}

/// Whether `url` names a MySQL/MariaDB source.
pub fn is_mysql_url(url: &str) -> bool {
    url.starts_with("mysql://") || url.starts_with("mariadb://")
}

/// The connection settings of a configured source. The password comes from the secret (if
/// configured), else the URL, else `TIDEMARK_SOURCE_PASSWORD`, else `MYSQL_PWD`; it never appears
/// in errors. `?socket=/path` connects over a unix socket.
pub fn source_settings(src: &SourceConfig) -> Result<MySource> {
    let url = src
        .url
        .strip_prefix("mariadb://")
        .map(|rest| format!("mysql://{rest}"))
        .unwrap_or_else(|| src.url.clone());
    let (url, ssl_mode, root) = split_tls(&url)?;
    let opts = Opts::from_url(&url).map_err(|e| {
        Error::config(format!(
            "source.url is not a valid mysql:// URL ({}): expected mysql://user[:password]@host:port/database",
            redact(&e.to_string())
        ))
    })?;
    let database = opts.db_name().map(str::to_string).unwrap_or_default();
    if database.is_empty() {
        return Err(Error::config(
            "source.url names no database: use mysql://user@host:port/database (the default schema of the captured tables)",
        ));
    }
    let mut b = OptsBuilder::from_opts(opts.clone())
        .max_allowed_packet(Some(MAX_PACKET))
        .prefer_socket(false)
        .stmt_cache_size(0);
    let password = src
        .password
        .as_ref()
        .map(|p| p.expose().to_string())
        .or_else(|| opts.pass().map(str::to_string))
        .or_else(|| std::env::var("TIDEMARK_SOURCE_PASSWORD").ok())
        .or_else(|| std::env::var("MYSQL_PWD").ok());
    b = b.pass(password);
    let over_socket = opts.socket().is_some();
    let ssl = match ssl_mode {
        _ if over_socket => None,
        SslMode::Disable => None,
        mode => {
            let verify = match mode {
                SslMode::VerifyFull => (true, true),
                SslMode::VerifyCa => (true, false),
                SslMode::Require if root.is_some() => (true, false),
                _ => (false, false),
            };
            let mut ssl = mysql_async::SslOpts::default()
                .with_danger_accept_invalid_certs(!verify.0)
                .with_danger_skip_domain_validation(!verify.1);
            if let Some(path) = &root {
                if !std::path::Path::new(path).is_file() {
                    return Err(Error::config(format!(
                        "sslrootcert {path} is not a readable file: name the PEM file of the CA that signed the server's certificate"
                    )));
                }
                ssl = ssl
                    .with_root_certs(vec![std::path::PathBuf::from(path).into()])
                    .with_disable_built_in_roots(true);
            }
            Some(ssl)
        }
    };
    if ssl.is_some() {
        ensure_tls_provider();
    }
    let plain = (ssl_mode == SslMode::Prefer && !over_socket).then(|| b.clone().into());
    Ok(MySource {
        opts: b.ssl_opts(ssl).into(),
        plain,
        database,
    })
}

fn redact(s: &str) -> String {
    // mysql_async's URL errors can echo the URL; keep only the reason.
    s.split(" in ").next().unwrap_or(s).to_string()
}

/// Opens an SQL session with UTC time, utf8mb4 results and no statement timeout surprises.
pub async fn sql_connect(src: &MySource) -> Result<Conn> {
    let mut conn = match (Conn::new(src.opts.clone()).await, &src.plain) {
        (Ok(c), _) => c,
        // sslmode=prefer: no TLS offered, or the handshake failed.
        (Err(e @ (mysql_async::Error::Driver(_) | mysql_async::Error::Io(_))), Some(plain))
            if tls_failure(&e) =>
        {
            tracing::warn!(error = %e, "TLS to MySQL/MariaDB failed with sslmode=prefer: connecting without TLS");
            Conn::new(plain.clone()).await?
        }
        (Err(e), _) => return Err(tls_error(e)),
    };
    conn.query_drop("SET time_zone = '+00:00', NAMES utf8mb4, SESSION sql_mode = ''")
        .await?;
    Ok(conn)
}

/// Whether a connection failed at TLS: the server offers none, or the handshake failed.
fn tls_failure(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => true,
        mysql_async::Error::Io(mysql_async::IoError::Tls(_)) => true,
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        _ => false,
    }
}

/// A TLS failure with what to change; other errors as they are.
fn tls_error(e: mysql_async::Error) -> Error {
    match &e {
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
            Error::config(
                "the MySQL/MariaDB server does not offer TLS, which sslmode requires: configure ssl_cert/ssl_key on the server, \
             or use sslmode=prefer or sslmode=disable",
            )
        }
        mysql_async::Error::Io(_) if tls_failure(&e) => Error::config(format!(
            "TLS to MySQL/MariaDB failed: {e}. Set sslrootcert=<path to the PEM file of the CA that signed the server's certificate> \
             in the source URL, use sslmode=verify-ca when the certificate does not name the host you connect to, \
             or sslmode=require to encrypt without verifying the server"
        )),
        _ => e.into(),
    }
}

/// MySQL server error codes that change what a pipeline should do.
pub mod codes {
    /// Access denied (wrong password, unknown user, host not allowed).
    pub const ACCESS_DENIED: u16 = 1045;
    /// Access denied without a password where one is needed (or a unix_socket-only user).
    pub const ACCESS_DENIED_NO_PASSWORD: u16 = 1698;
    pub const DB_ACCESS_DENIED: u16 = 1044;
    pub const NO_SUCH_TABLE: u16 = 1146;
    pub const BAD_DB: u16 = 1049;
    /// The binlog dump failed: the requested position or GTID is not in the binlog any more.
    pub const MASTER_FATAL_READING_BINLOG: u16 = 1236;
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    /// MariaDB: another connection with the same server_id replaced this one.
    pub const CONNECTION_KILLED_DUPLICATE_ID: u16 = 4052;
    pub const UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;
    /// Any "access denied": to a database, a table, a privilege, or the login itself.
    pub const ACCESS: [u16; 5] = [1044, 1045, 1142, 1227, 1698];
    /// Server errors worth retrying: the server is busy, restarting or interrupted us. Any
    /// other SQL error is not a lost connection, and retrying the same SQL would fail again.
    pub const TRANSIENT: [u16; 9] = [
        1040, // too many connections
        1053, // server shutdown in progress
        1205, // lock wait timeout
        1213, // deadlock
        1317, // query execution was interrupted
        1927, // MariaDB: connection killed
        3024, // MySQL: max_execution_time exceeded
        4031, // MySQL 8.0.24+: disconnected by the server for inactivity
        1969, // MariaDB: max_statement_time exceeded
    ];
}

impl From<mysql_async::Error> for Error {
    fn from(e: mysql_async::Error) -> Self {
        use mysql_async::Error as E;
        match &e {
            E::Server(s) => {
                let (kind, hint) = match s.code {
                    codes::ACCESS_DENIED
                    | codes::ACCESS_DENIED_NO_PASSWORD
                    | codes::DB_ACCESS_DENIED => (
                        ErrorKind::Config,
                        "check the user, password and host in source.url",
                    ),
                    codes::SPECIFIC_ACCESS_DENIED => (
                        ErrorKind::Config,
                        "grant the user REPLICATION SLAVE, BINLOG MONITOR (MySQL: REPLICATION CLIENT) and SELECT",
                    ),
                    codes::MASTER_FATAL_READING_BINLOG => (
                        ErrorKind::Config,
                        "the stored binlog position is no longer on the server (purged, or binlog_expire_logs_seconds passed): \
                         changes since then are lost; run `tidemark reset` to take a new snapshot",
                    ),
                    codes::CONNECTION_KILLED_DUPLICATE_ID => (
                        ErrorKind::Config,
                        "another replica or binlog reader uses the same server_id: set source.server_id to a unique value",
                    ),
                    codes::NO_SUCH_TABLE | codes::BAD_DB => (
                        ErrorKind::Config,
                        "check source.tables and the database in source.url",
                    ),
                    c if codes::TRANSIENT.contains(&c) => (ErrorKind::Transient, ""),
                    _ => (ErrorKind::Fatal, ""),
                };
                let msg = format!("MySQL error {} ({}): {}", s.code, s.state, s.message);
                let msg = if hint.is_empty() {
                    msg
                } else {
                    format!("{msg}; {hint}")
                };
                Error::new(kind, msg)
            }
            E::Io(_) => Error::with_source(ErrorKind::Transient, "MySQL connection failed", e),
            E::Driver(_) => Error::with_source(ErrorKind::Transient, "MySQL client error", e),
            E::Url(_) => Error::config(format!("source.url: {}", redact(&e.to_string()))),
            E::Other(_) => Error::with_source(ErrorKind::Fatal, "MySQL client error", e),
        }
    }
}

/// The server's product and version, detected once per connection set-up from
/// `SELECT VERSION()`. The SQL that differs between flavours and versions is chosen here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// As the server reports it, e.g. `10.11.19-MariaDB-0+deb12u1-log` or `9.7.4`.
    pub version: String,
    pub mariadb: bool,
    /// `(major, minor, patch)`; zeros where the version string does not say.
    pub numeric: (u32, u32, u32),
}

impl ServerInfo {
    /// Parses a `VERSION()` string.
    pub fn from_version(version: &str) -> ServerInfo {
        let mut parts = version
            .split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let numeric = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        ServerInfo {
            mariadb: version.to_ascii_lowercase().contains("mariadb"),
            version: version.to_string(),
            numeric,
        }
    }

    /// Oracle MySQL at least `major.minor.patch` (false on MariaDB).
    pub fn mysql_at_least(&self, major: u32, minor: u32, patch: u32) -> bool {
        !self.mariadb && self.numeric >= (major, minor, patch)
    }

    /// The statement that reports the current binlog file and position: `SHOW MASTER STATUS`
    /// is gone from MySQL 8.4 on, and `SHOW BINARY LOG STATUS` only exists from 8.2 (Aurora
    /// MySQL 3 is 8.0); MariaDB keeps `SHOW MASTER STATUS`.
    pub fn binlog_status_sql(&self) -> &'static str {
        if self.mysql_at_least(8, 2, 0) {
            "SHOW BINARY LOG STATUS"
        } else {
            "SHOW MASTER STATUS"
        }
    }

    /// The statement that lists the replicas registered with the server: `SHOW REPLICAS` from
    /// MySQL 8.0.22 (`SHOW SLAVE HOSTS` is gone in 8.4), `SHOW SLAVE HOSTS` before and on
    /// MariaDB.
    pub fn replicas_sql(&self) -> &'static str {
        if self.mysql_at_least(8, 0, 22) {
            "SHOW REPLICAS"
        } else {
            "SHOW SLAVE HOSTS"
        }
    }

    /// The privilege that lets a user read binlog positions: `BINLOG MONITOR` on MariaDB 10.5+
    /// (which also accepts `REPLICATION CLIENT`), `REPLICATION CLIENT` on MySQL.
    pub fn monitor_privilege(&self) -> &'static str {
        if self.mariadb {
            "BINLOG MONITOR"
        } else {
            "REPLICATION CLIENT"
        }
    }
}

pub async fn server_info(conn: &mut Conn) -> Result<ServerInfo> {
    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
    Ok(ServerInfo::from_version(&version.unwrap_or_default()))
}

/// A global variable's value (`@@GLOBAL.<name>`: every MySQL and MariaDB version has it, unlike
/// `information_schema.GLOBAL_VARIABLES`, gone from MySQL 8), `None` when the server has no
/// such variable.
pub async fn variable(conn: &mut Conn, name: &str) -> Result<Option<String>> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::fatal(format!("not a variable name: {name:?}")));
    }
    match conn
        .query_first::<Option<String>, _>(format!("SELECT @@GLOBAL.{name}"))
        .await
    {
        Ok(v) => Ok(Some(v.flatten().unwrap_or_default())),
        Err(mysql_async::Error::Server(e)) if e.code == codes::UNKNOWN_SYSTEM_VARIABLE => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Quotes an identifier with backticks.
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 item 2: the SQL that differs by flavour and version, per version (only 9.7
    /// and MariaDB 10.11 run here).
    #[test]
    fn sql_is_chosen_by_flavour_and_version() {
        let cases = [
            // (VERSION(), binlog status, replicas, monitor privilege)
            (
                "8.0.28",
                "SHOW MASTER STATUS",
                "SHOW REPLICAS",
                "REPLICATION CLIENT",
            ),
            (
                "8.0.21-log",
                "SHOW MASTER STATUS",
                "SHOW SLAVE HOSTS",
                "REPLICATION CLIENT",
            ),
            (
                "8.0.mysql_aurora.3.05.2",
                "SHOW MASTER STATUS",
                "SHOW SLAVE HOSTS",
                "REPLICATION CLIENT",
            ),
            (
                "8.4.3",
                "SHOW BINARY LOG STATUS",
                "SHOW REPLICAS",
                "REPLICATION CLIENT",
            ),
            (
                "8.2.0",
                "SHOW BINARY LOG STATUS",
                "SHOW REPLICAS",
                "REPLICATION CLIENT",
            ),
            (
                "9.7.4-2",
                "SHOW BINARY LOG STATUS",
                "SHOW REPLICAS",
                "REPLICATION CLIENT",
            ),
            (
                "10.11.19-MariaDB-0+deb12u1-log",
                "SHOW MASTER STATUS",
                "SHOW SLAVE HOSTS",
                "BINLOG MONITOR",
            ),
            (
                "11.8.2-MariaDB",
                "SHOW MASTER STATUS",
                "SHOW SLAVE HOSTS",
                "BINLOG MONITOR",
            ),
        ];
        for (v, status, replicas, monitor) in cases {
            let s = ServerInfo::from_version(v);
            assert_eq!(
                (
                    s.binlog_status_sql(),
                    s.replicas_sql(),
                    s.monitor_privilege()
                ),
                (status, replicas, monitor),
                "{v}"
            );
        }
        assert_eq!(ServerInfo::from_version("9.7.4-2").numeric, (9, 7, 4));
        assert!(ServerInfo::from_version("10.11.19-MariaDB").mariadb);
    }

    /// Issue 12 item 2: an SQL error is not a lost connection (only busy/restarting/interrupted
    /// servers are retried).
    #[test]
    fn sql_errors_are_not_lost_connections() {
        let server = |code: u16| {
            Error::from(mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: "m".into(),
                state: "HY000".into(),
            }))
            .kind()
        };
        assert_eq!(server(1109), ErrorKind::Fatal, "unknown table");
        assert_eq!(server(1064), ErrorKind::Fatal, "syntax error");
        assert_eq!(server(1213), ErrorKind::Transient, "deadlock");
        assert_eq!(server(1040), ErrorKind::Transient, "too many connections");
        assert_eq!(server(1045), ErrorKind::Config, "access denied");
    }

    #[test]
    fn url_needs_a_database_and_keeps_the_password_secret() {
        let src = |url: &str| SourceConfig {
            url: url.into(),
            tables: vec![],
            slot: None,
            publication: None,
            snapshot: true,
            password_secret_arn: None,
            format: None,
            password: None,
            server_id: None,
            resume: None,
        };
        let s = source_settings(&src("mysql://u:hunter2@127.0.0.1:3307/app")).unwrap();
        assert_eq!(s.database, "app");
        assert_eq!(s.opts.tcp_port(), 3307);
        assert!(!format!("{s:?}").contains("hunter2"));
        let s = source_settings(&src("mariadb://u@127.0.0.1/app")).unwrap();
        assert_eq!(s.database, "app");
        let e = source_settings(&src("mysql://u@127.0.0.1:3306")).unwrap_err();
        assert!(e.to_string().contains("names no database"), "{e}");
    }
}
