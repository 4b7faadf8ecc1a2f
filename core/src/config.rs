//! Pipeline configuration: a TOML file, overridden by flags and environment variables (the
//! binary applies those), validated here with errors that say what to change.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::table_name::{Dialect, TableName};

/// One pipeline: one source, one output, one checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names the checkpoint, the replication slot and publication (unless set), and the output
    /// folder `<prefix>/<pipeline>/`.
    pub pipeline: String,
    pub source: SourceConfig,
    #[serde(default)]
    pub output: OutputConfig,
    #[serde(default)]
    pub positions: PositionsConfig,
    #[serde(default)]
    pub batch: BatchConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user[:password]@host:port/dbname[?sslmode=...]` or
    /// `mysql://user[:password]@host:port/database[?sslmode=...&sslrootcert=...]` (MySQL/MariaDB). The password may instead
    /// come from `TIDEMARK_SOURCE_PASSWORD` (or `PGPASSWORD` / `MYSQL_PWD`); it is never logged.
    pub url: String,
    /// Tables to capture (`schema.table` or `table` for `public`). Empty: every table of the
    /// publication, which is then created `FOR ALL TABLES` (needs superuser).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Replication slot; default `tidemark_<pipeline>`.
    #[serde(default)]
    pub slot: Option<String>,
    /// Publication; default `tidemark_<pipeline>`.
    #[serde(default)]
    pub publication: Option<String>,
    /// Copy existing rows before streaming (default true).
    #[serde(default = "yes")]
    pub snapshot: bool,
    /// AWS Secrets Manager secret holding the password: a plain string, or JSON with a
    /// `password` key (the RDS format). Read once at start-up; never logged.
    #[serde(default)]
    pub password_secret_arn: Option<String>,
    /// MySQL/MariaDB: the binlog client's server_id, unique among the server's replicas and
    /// binlog readers. Default: derived from the pipeline name (in 1000000..2^31).
    #[serde(default)]
    pub server_id: Option<u32>,
    /// MySQL/MariaDB: resume reading by `gtid` (the default wherever the position has one:
    /// MariaDB, and MySQL with gtid_mode = ON) or by `file` (file:pos of the source server).
    #[serde(default)]
    pub resume: Option<String>,
    /// Kinesis (`kinesis://<stream>`): the records' format, `auto` (detected per record),
    /// `tidemark`, `debezium`, `dms` or `dynamodb`.
    #[serde(default)]
    pub format: Option<String>,
    /// The resolved password (from the secret), if any. Never serialized or printed.
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// A value that must never appear in logs: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// `file:///path` or `s3://bucket/prefix` (default `./tidemark-out`).
    #[serde(default)]
    pub url: Option<String>,
    /// Key prefix inside the output.
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionsConfig {
    /// `file:///dir` or `dynamodb://table`; default the state directory (`$TIDEMARK_STATE_HOME`, ...).
    #[serde(default)]
    pub url: Option<String>,
    /// Seconds a worker's lease on the pipeline lasts without renewal (renewed every third).
    /// A worker that cannot renew in time stops writing; a standby takes over after it.
    #[serde(default)]
    pub lease_ttl_secs: Option<u64>,
    /// Create a missing DynamoDB table (on-demand) instead of failing.
    #[serde(default)]
    pub create_table: bool,
}

impl PositionsConfig {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs.unwrap_or(30).max(1))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Flush when this many rows are buffered (a huge transaction is split at this size).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Flush when the buffered rows hold about this many MiB.
    #[serde(default = "default_max_mib")]
    pub max_mib: usize,
    /// Flush buffered rows at least this often (milliseconds).
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u64,
    /// Rows per snapshot part file.
    #[serde(default = "default_snapshot_part_rows")]
    pub snapshot_part_rows: usize,
    /// Batches encoded at once while the stream goes on (each holds up to `max_mib`); their
    /// commits still run one at a time, in order.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
}

fn yes() -> bool {
    true
}
fn default_max_rows() -> usize {
    200_000
}
fn default_max_mib() -> usize {
    64
}
fn default_flush_ms() -> u64 {
    5_000
}
fn default_in_flight() -> usize {
    2
}
fn default_snapshot_part_rows() -> usize {
    500_000
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: default_max_rows(),
            max_mib: default_max_mib(),
            flush_interval_ms: default_flush_ms(),
            snapshot_part_rows: default_snapshot_part_rows(),
            in_flight: default_in_flight(),
        }
    }
}

impl BatchConfig {
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
    pub fn max_bytes(&self) -> usize {
        self.max_mib.saturating_mul(1 << 20)
    }
}

impl Config {
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("{origin}: {}", e.to_string().trim_end()),
            )
        })
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!("cannot read config file {}", path.display()),
                e,
            )
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn slot(&self) -> String {
        self.source
            .slot
            .clone()
            .unwrap_or_else(|| default_object_name(&self.pipeline))
    }

    pub fn publication(&self) -> String {
        self.source
            .publication
            .clone()
            .unwrap_or_else(|| default_object_name(&self.pipeline))
    }

    /// `source.tables` parsed as SQL writes names: PostgreSQL quoting (`"..."`, unquoted parts
    /// folded to lower case) or MySQL's (backticks, case left to the server).
    pub fn table_names(&self) -> Result<Vec<TableName>> {
        let dialect = if self.is_mysql() {
            Dialect::Mysql
        } else {
            Dialect::Postgres
        };
        crate::table_name::parse_all(&self.source.tables, dialect)
    }

    /// Whether the source is MySQL/MariaDB (else PostgreSQL).
    pub fn is_mysql(&self) -> bool {
        self.source.url.starts_with("mysql://") || self.source.url.starts_with("mariadb://")
    }

    /// The stream name of a `kinesis://<stream>` source.
    pub fn kinesis_stream(&self) -> Option<&str> {
        self.source.url.strip_prefix("kinesis://")
    }

    /// The binlog client's server_id: configured, else a stable hash of the pipeline name.
    pub fn server_id(&self) -> u32 {
        self.source.server_id.unwrap_or_else(|| {
            let h = fnv1a(self.pipeline.as_bytes());
            1_000_000 + (h % (i32::MAX as u64 - 1_000_000)) as u32
        })
    }

    /// Whether a MySQL/MariaDB pipeline resumes by GTID (`None`: the server decides).
    pub fn resume_by_gtid(&self) -> Option<bool> {
        self.source.resume.as_deref().map(|r| r == "gtid")
    }

    pub fn output_url(&self) -> String {
        self.output
            .url
            .clone()
            .unwrap_or_else(|| "file://./tidemark-out".to_string())
    }

    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<()> {
        let p = &self.pipeline;
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::config(format!(
                "pipeline name {p:?} is not valid: use letters, digits, '_' and '-'"
            )));
        }
        if !(self.source.url.starts_with("postgres://")
            || self.source.url.starts_with("postgresql://")
            || self.is_mysql()
            || self.kinesis_stream().is_some_and(|s| !s.is_empty()))
        {
            return Err(Error::config(
                "source.url must be a postgres://, mysql:// or kinesis:// URL, e.g. postgres://user@127.0.0.1:5432/dbname, mysql://user@127.0.0.1:3306/app or kinesis://orders-changes",
            ));
        }
        if let Some(f) = &self.source.format {
            f.parse::<crate::codec::RecordFormat>()?;
        }
        if let Some(r) = self.source.resume.as_deref()
            && r != "gtid"
            && r != "file"
        {
            return Err(Error::config(format!(
                "source.resume is {r:?}: use \"gtid\" or \"file\""
            )));
        }
        if self.source.server_id == Some(0) {
            return Err(Error::config(
                "source.server_id must be > 0 (0 is not a valid replica server_id)",
            ));
        }
        let slot = self.slot();
        if self.kinesis_stream().is_none() && !self.is_mysql() && slot.len() > 63
            || self.kinesis_stream().is_none()
                && !slot
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::config(format!(
                "replication slot name {slot:?} is not valid: PostgreSQL allows lower-case letters, digits and '_' (at most 63); set source.slot"
            )));
        }
        if self.kinesis_stream().is_none() {
            self.table_names()?;
        }
        if self.batch.max_rows == 0
            || self.batch.max_mib == 0
            || self.batch.snapshot_part_rows == 0
            || self.batch.in_flight == 0
        {
            return Err(Error::config(
                "batch.max_rows, batch.max_mib, batch.snapshot_part_rows and batch.in_flight must be > 0",
            ));
        }
        Ok(())
    }
}

/// The default slot and publication name: `tidemark_<pipeline>` when the pipeline name is
/// already a valid slot name (lower-case letters, digits, `_`, at most 63 bytes in all), else the
/// sanitised name plus a short hash of the exact pipeline name, so that two pipelines never
/// share a default (`Orders-EU`, `orders_eu`, `orders-eu` differ).
fn default_object_name(pipeline: &str) -> String {
    let sanitised = legacy_object_name(pipeline);
    if sanitised == format!("tidemark_{pipeline}") {
        return sanitised;
    }
    let hash = fnv1a(pipeline.as_bytes()) as u32;
    let mut s = sanitised;
    s.truncate(63 - 9);
    format!("{s}_{hash:08x}")
}

/// The default name before it was made injective (lower-cased, `_` for anything else, cut at
/// 63): what checkpoints from earlier versions stream from.
pub fn legacy_object_name(pipeline: &str) -> String {
    let mut s: String = pipeline
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.insert_str(0, "tidemark_");
    s.truncate(63);
    s
}

/// 64-bit FNV-1a: a stable hash of names (the same in every build and version).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(
            "pipeline = \"orders-Main\"\n[source]\nurl = \"postgres://u@127.0.0.1/db\"\ntables = [\"orders\", \"sales.items\"]\n",
            "t",
        )
        .unwrap();
        c.validate().unwrap();
        // Sanitising changed the name: a short hash of the exact name keeps it unique.
        assert!(
            c.slot().starts_with("tidemark_orders_main_"),
            "{}",
            c.slot()
        );
        assert_eq!(c.slot().len(), "tidemark_orders_main_".len() + 8);
        let ids: Vec<_> = c
            .table_names()
            .unwrap()
            .iter()
            .map(|n| n.id("public"))
            .collect();
        assert_eq!(
            ids,
            vec![
                crate::change::TableId::new("public", "orders"),
                crate::change::TableId::new("sales", "items")
            ]
        );
        assert!(c.source.snapshot);
        assert_eq!(c.batch.max_rows, 200_000);
    }

    /// Issue 11 item 9: default slot/publication names never collide.
    #[test]
    fn default_object_names_are_injective() {
        let name = |p: &str| {
            Config::from_toml(
                &format!("pipeline = \"{p}\"\n[source]\nurl = \"postgres://u@h/d\"\n"),
                "t",
            )
            .unwrap()
        };
        assert_eq!(name("orders_eu").slot(), "tidemark_orders_eu");
        let all: Vec<String> = ["orders_eu", "Orders-EU", "orders-eu", "ORDERS_EU"]
            .iter()
            .map(|p| name(p).slot())
            .collect();
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "{all:?}");
        let long_a = format!("{}a", "x".repeat(60));
        let long_b = format!("{}b", "x".repeat(60));
        for p in [&long_a, &long_b] {
            let c = name(p);
            assert!(c.slot().len() <= 63, "{}", c.slot());
            c.validate().unwrap();
        }
        assert_ne!(name(&long_a).slot(), name(&long_b).slot());
        assert_eq!(legacy_object_name("Orders-EU"), "tidemark_orders_eu");
        assert_eq!(name("Orders-EU").publication(), name("Orders-EU").slot());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let mut c = Config::from_toml(
            "pipeline = \"p\"\n[source]\nurl = \"postgres://u@h/d\"\n",
            "t",
        )
        .unwrap();
        c.source.password = Some(s);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn unknown_keys_and_bad_names_are_clear_errors() {
        let e = Config::from_toml(
            "pipeline = \"p\"\n[source]\nurl = \"postgres://x\"\ntabels = []\n",
            "cfg.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("tabels"), "{e}");
        let c = Config::from_toml(
            "pipeline = \"a b\"\n[source]\nurl = \"postgres://x\"\n",
            "t",
        )
        .unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("pipeline name")
        );
        let c =
            Config::from_toml("pipeline = \"p\"\n[source]\nurl = \"oracle://x\"\n", "t").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("postgres://")
        );
        let c = Config::from_toml(
            "pipeline = \"p\"\n[source]\nurl = \"mysql://u@h/app\"\nresume = \"lsn\"\n",
            "t",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("gtid"));
        assert!(c.is_mysql());
        assert!(c.server_id() >= 1_000_000);
    }
}
