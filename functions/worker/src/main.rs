//! `tidemark`: capture PostgreSQL, MySQL/MariaDB and Kinesis changes into Athena-ready Parquet.
//!
//! The same binary is the local CLI and the ECS task.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tidemark_core::config::Config;
use tidemark_core::engine::StatusFile;
use tidemark_core::metrics::Metrics;
use tidemark_core::runtime;
use tidemark_core::source::Level;
use tidemark_core::store;
use tidemark_core::{ErrorKind, output};

#[derive(Parser)]
#[command(
    name = "tidemark",
    version,
    about = "Change data capture from PostgreSQL, MySQL/MariaDB and Kinesis into Athena-ready Parquet",
    long_about = "Change data capture from PostgreSQL and MySQL/MariaDB into Athena-ready Parquet.\n\n\
        A pipeline copies the captured tables once (a consistent snapshot) and then streams every\n\
        committed change (PostgreSQL: a logical replication slot; MySQL/MariaDB: the row binlog,\n\
        resumed by GTID or file:pos) into Parquet files laid out for Athena\n\
        (hive-style dt= partitions). Its position is committed only after the files it covers are\n\
        durable, so a crash or kill at any moment loses nothing and duplicates nothing.\n\n\
        Settings come from a TOML file (--config), overridden by flags and TIDEMARK_* variables.\n\
        Example:\n  tidemark run --pipeline demo --source-url postgres://user@127.0.0.1:5432/app \\\n      --table public.orders --output file:///tmp/lake\n  tidemark run --pipeline shop --source-url mysql://user@127.0.0.1:3306/shop \\\n      --table shop.orders --output s3://bucket/lake --positions dynamodb://tidemark-positions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text on a terminal, json otherwise (for CloudWatch/ECS).
    #[arg(long, global = true, env = "TIDEMARK_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot (first run) then stream changes until Ctrl-C/SIGTERM, which flushes and commits.
    Run(RunArgs),
    /// Show state, committed position, lag (bytes, seconds) and WAL retained by the slot
    /// (MySQL/MariaDB: the binlog written; Kinesis: the baseline, and per shard the committed
    /// sequence number, lease and lag).
    Status {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Preflight. PostgreSQL: wal_level, free slots and WAL senders, REPLICATION privilege, keys and
    /// replica identity. MySQL/MariaDB: log_bin, binlog_format/row_image/row_metadata, grants,
    /// binlog retention against the stored position, server_id collisions, primary keys; MySQL
    /// also the snapshot's lock method, gtid_mode, PARTIAL_JSON and RDS binlog retention hours.
    /// Kinesis: the stream's shards, the position store and the output.
    #[command(verbatim_doc_comment)]
    Check {
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Container health check: exit 0 while the local worker is live (status file fresh).
    Health {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Unhealthy when the worker has not written its status for this long.
        #[arg(long, default_value_t = 60)]
        max_age_secs: u64,
    },
    /// Forget a pipeline's position (and drop its slot), so the next run takes a new snapshot.
    /// Kinesis: every shard's position, the baseline and the worker seats.
    Reset {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Also drop the replication slot and publication.
        #[arg(long)]
        drop_slot: bool,
        /// Confirm: the next run writes a new snapshot.
        #[arg(long)]
        yes: bool,
    },
    /// Print Athena/Glue DDL for every table in the pipeline's output: external tables
    /// <schema>_<table>_changes (partitioned by dt) and <schema>_<table>_snapshot (by
    /// snapshot_id), both with partition projection, and the view <schema>_<table>_current
    /// (latest snapshot plus later changes, last operation per primary key, deletes removed).
    /// Reads the output's Parquet footers, not the source: run it again after a schema change
    /// or a re-snapshot. --dialect duckdb prints the same view over read_parquet, to query the
    /// output locally.
    #[command(verbatim_doc_comment)]
    Ddl(DdlArgs),
    /// Apply one version of an S3 object as a Kinesis pipeline's baseline: a Parquet snapshot
    /// of that version, and the baseline position (forward only: an older version is a no-op).
    /// The object's metadata (tidemark-shards / tidemark-watermark) or `<key>.manifest.json`
    /// says which Kinesis records it already holds; those are not written as changes.
    Baseline {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// The object: s3://bucket/key (JSON lines, CSV with header, Parquet, DynamoDB export;
        /// gzip or zstd).
        #[arg(long)]
        object: String,
        /// The version to apply (default: the latest).
        #[arg(long)]
        version_id: Option<String>,
        /// The table it fills, schema.table (default: metadata tidemark-table, else
        /// baseline.<file name>).
        #[arg(long)]
        target_table: Option<String>,
    },
}

#[derive(Args)]
struct DdlArgs {
    /// TOML config file (its pipeline and output); flags override it.
    #[arg(short, long, env = "TIDEMARK_CONFIG")]
    config: Option<PathBuf>,
    /// Pipeline name: its folder in the output.
    #[arg(long, env = "TIDEMARK_PIPELINE")]
    pipeline: Option<String>,
    /// Output: file:///path or s3://bucket/prefix (default ./tidemark-out).
    #[arg(long, env = "TIDEMARK_OUTPUT")]
    output: Option<String>,
    /// Glue database (default: the pipeline name, lower case, other characters as _).
    #[arg(long)]
    database: Option<String>,
    /// athena: Glue DDL and a Trino view; duckdb: views over read_parquet.
    #[arg(long, default_value = "athena", value_parser = ["athena", "duckdb"])]
    dialect: String,
}

#[derive(Args, Clone)]
struct PipelineArgs {
    /// TOML config file (see README); flags and environment override it.
    #[arg(short, long, env = "TIDEMARK_CONFIG")]
    config: Option<PathBuf>,
    /// Pipeline name: names the checkpoint, slot, publication and output folder.
    #[arg(long, env = "TIDEMARK_PIPELINE")]
    pipeline: Option<String>,
    /// Source URL: postgres://user[:password]@host:port/db or mysql://user[:password]@host:port/db
    /// (password also from TIDEMARK_SOURCE_PASSWORD).
    #[arg(long, env = "TIDEMARK_SOURCE_URL", hide_env_values = true)]
    source_url: Option<String>,
    /// AWS Secrets Manager ARN of the source password (plain, or JSON with "password").
    #[arg(long, env = "TIDEMARK_SOURCE_PASSWORD_SECRET_ARN")]
    source_password_secret_arn: Option<String>,
    /// Table to capture, as SQL writes it: schema.table (MySQL: database.table); repeat for
    /// more. Unquoted parts are folded to lower case (PostgreSQL); quote a part to keep its
    /// case, spaces or dots: --table '"Billing"."Invoice Items"' (MySQL: backticks, case as the
    /// server compares it). Default: the config's list, else every table with a replica
    /// identity (MySQL: every table of the URL's database). Adding a table to a pipeline that
    /// took its snapshot is refused (reset to re-snapshot).
    #[arg(long = "table", value_name = "TABLE")]
    tables: Vec<String>,
    /// PostgreSQL: the replication slot (default tidemark_<pipeline>, with a short hash when the
    /// pipeline name is not already a valid slot name).
    #[arg(long, env = "TIDEMARK_SLOT")]
    slot: Option<String>,
    /// PostgreSQL: the publication (default as the slot); created or updated when missing. An
    /// existing one's column lists are honoured by the snapshot.
    #[arg(long, env = "TIDEMARK_PUBLICATION")]
    publication: Option<String>,
    /// Output: file:///path or s3://bucket/prefix (default ./tidemark-out).
    #[arg(long, env = "TIDEMARK_OUTPUT")]
    output: Option<String>,
    /// Position store: file:///dir or dynamodb://table (default $TIDEMARK_STATE_HOME,
    /// $XDG_STATE_HOME/tidemark, ~/.local/state/tidemark).
    #[arg(long, env = "TIDEMARK_POSITIONS")]
    positions: Option<String>,
    /// Kinesis sources: the records' format (auto, tidemark, debezium, dms, dynamodb).
    #[arg(long, env = "TIDEMARK_FORMAT")]
    format: Option<String>,
    /// Create the DynamoDB positions table when it does not exist.
    #[arg(long)]
    create_table: bool,
    /// MySQL/MariaDB: resume by `gtid` (the default: MariaDB's GTID state, MySQL's executed
    /// GTID set with gtid_mode=ON) or by binlog `file`:pos.
    #[arg(long, env = "TIDEMARK_RESUME", value_parser = ["gtid", "file"])]
    resume: Option<String>,
    /// MySQL/MariaDB: the binlog client's server_id, unique among replicas (default: derived
    /// from the pipeline name).
    #[arg(long, env = "TIDEMARK_SERVER_ID")]
    server_id: Option<u32>,
    /// Seconds a worker's lease lasts unrenewed (default 30); a standby takes over after it.
    #[arg(long, env = "TIDEMARK_LEASE_TTL_SECS")]
    lease_ttl_secs: Option<u64>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Skip the initial copy: stream only changes made after the slot is created.
    #[arg(long)]
    no_snapshot: bool,
    /// Publish changes as tidemark envelopes to this Kinesis stream (kinesis://<stream>)
    /// instead of writing them as Parquet; the snapshot is still written to --output, and
    /// kinesis-ingest Lambdas (or `tidemark run --source-url kinesis://...`) write the changes.
    /// PostgreSQL and MySQL/MariaDB sources.
    #[arg(long, env = "TIDEMARK_PUBLISH", value_name = "kinesis://STREAM")]
    publish: Option<String>,
    /// Flush buffered rows at least this often, in milliseconds.
    #[arg(long, env = "TIDEMARK_FLUSH_INTERVAL_MS")]
    flush_interval_ms: Option<u64>,
    /// Flush when this many rows are buffered.
    #[arg(long, env = "TIDEMARK_MAX_BATCH_ROWS")]
    max_batch_rows: Option<usize>,
    /// Rows per snapshot part file (and per resumable chunk).
    #[arg(long, env = "TIDEMARK_SNAPSHOT_PART_ROWS")]
    snapshot_part_rows: Option<usize>,
    /// Batches encoded at once while the stream goes on (default 2); commits stay in order.
    #[arg(long, env = "TIDEMARK_IN_FLIGHT")]
    in_flight: Option<usize>,
    /// Retries of a lost connection, in a row without progress, before giving up (state ERROR).
    #[arg(long, default_value_t = 10, env = "TIDEMARK_MAX_RETRIES")]
    max_retries: u32,
    /// After SIGTERM/Ctrl-C, seconds to flush and commit before exiting anyway (keep it below
    /// the container's stop timeout, 30 s by default on ECS).
    #[arg(long, default_value_t = 25, env = "TIDEMARK_STOP_TIMEOUT_SECS")]
    stop_timeout_secs: u64,
    /// Emit CloudWatch Embedded Metric Format lines on stdout: auto = when stdout is not a terminal.
    #[arg(long, default_value = "auto", env = "TIDEMARK_METRICS", value_parser = ["auto", "emf", "off"])]
    metrics: String,
    /// Stop after this many seconds (flush, commit, exit 0). For demos and benchmarks.
    #[arg(long)]
    stop_after_secs: Option<u64>,
    /// Stop once the committed position reaches the server's current WAL position at start-up.
    #[arg(long)]
    until_caught_up: bool,
}

impl PipelineArgs {
    /// The effective configuration, with the password secret (if any) resolved.
    async fn config(&self) -> anyhow::Result<Config> {
        let mut cfg = self.config_sync()?;
        if let Some(arn) = cfg.source.password_secret_arn.clone() {
            cfg.source.password = Some(tidemark_core::aws::secret_password(&arn).await?);
        }
        Ok(cfg)
    }

    fn config_sync(&self) -> anyhow::Result<Config> {
        self.config_with(true)
    }

    /// The config; without `source_required`, a missing source URL is left empty (commands
    /// such as `health` only need the pipeline and its state).
    fn config_with(&self, source_required: bool) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::load(path)?,
            None => {
                let pipeline = self.pipeline.clone().context(
                    "no pipeline given: pass --config FILE, or --pipeline NAME with --source-url URL",
                )?;
                let url = match self.source_url.clone() {
                    Some(url) => url,
                    None if !source_required => String::new(),
                    None => anyhow::bail!(
                        "no source given: pass --source-url postgres://..., mysql://... or kinesis://stream"
                    ),
                };
                Config::from_toml(
                    &format!(
                        "pipeline = {}\n[source]\nurl = {}\n",
                        toml_str(&pipeline),
                        toml_str(&url)
                    ),
                    "flags",
                )?
            }
        };
        if let Some(p) = &self.pipeline {
            cfg.pipeline = p.clone();
        }
        if let Some(u) = &self.source_url {
            cfg.source.url = u.clone();
        }
        if !self.tables.is_empty() {
            cfg.source.tables = self.tables.clone();
        }
        if let Some(slot) = &self.slot {
            cfg.source.slot = Some(slot.clone());
        }
        if let Some(publication) = &self.publication {
            cfg.source.publication = Some(publication.clone());
        }
        if let Some(o) = &self.output {
            cfg.output.url = Some(o.clone());
        }
        if let Some(p) = &self.positions {
            cfg.positions.url = Some(p.clone());
        }
        if self.create_table {
            cfg.positions.create_table = true;
        }
        if let Some(f) = &self.format {
            cfg.source.format = Some(f.clone());
        }
        if let Some(r) = &self.resume {
            cfg.source.resume = Some(r.clone());
        }
        if let Some(id) = self.server_id {
            cfg.source.server_id = Some(id);
        }
        if let Some(t) = self.lease_ttl_secs {
            cfg.positions.lease_ttl_secs = Some(t);
        }
        if let Some(arn) = &self.source_password_secret_arn {
            cfg.source.password_secret_arn = Some(arn.clone());
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn init_logging(format: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TIDEMARK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(f) => f == "json",
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.compact().init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format.as_deref());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(dispatch(cli.command));
    if let Some(peak_rss_mib) = peak_rss_mib() {
        tracing::info!(peak_rss_mib, "exiting");
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            let (msg, config) = match e.downcast_ref::<tidemark_core::Error>() {
                Some(te) => (te.one_line(), te.kind() == ErrorKind::Config),
                None => (format!("{e:#}"), false),
            };
            eprintln!("error: {msg}");
            if config {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `tidemark check`: findings on stdout, a line each; exit status 1 when one failed.
async fn check(cfg: &Config) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for f in runtime::check::check(cfg).await? {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warning => "warn",
            Level::Error => {
                failed = true;
                "FAIL"
            }
        };
        println!("{tag}  {:<22} {}", f.check, f.message);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run(args) => run(args).await,
        Command::Status { pipeline, json } => {
            let status = runtime::status::status(&pipeline.config().await?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status.to_json())?);
            } else {
                print!("{status}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { pipeline } => check(&pipeline.config().await?).await,
        Command::Health {
            pipeline,
            max_age_secs,
        } => {
            let cfg = pipeline.config_with(false)?;
            match StatusFile::read(&runtime::status::state_dir(&cfg)?, &cfg.pipeline)? {
                Some(r) => match r.healthy(Duration::from_secs(max_age_secs)) {
                    Ok(()) => {
                        println!("healthy: {:?}", r.state);
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(why) => {
                        println!("unhealthy: {why}");
                        Ok(ExitCode::FAILURE)
                    }
                },
                None => {
                    println!("unhealthy: no status file (is the worker running?)");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Reset {
            pipeline,
            drop_slot,
            yes,
        } => {
            let cfg = pipeline.config().await?;
            if !yes {
                anyhow::bail!(
                    "reset forgets the position of pipeline {:?}; the next run writes a new snapshot. Pass --yes to confirm",
                    cfg.pipeline
                );
            }
            for line in runtime::reset::reset(&cfg, drop_slot).await? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ddl(args) => ddl(args).await,
        Command::Baseline {
            pipeline,
            object,
            version_id,
            target_table,
        } => {
            let cfg = pipeline.config().await?;
            let (bucket, key) = tidemark_core::output::s3::parse_url(&object)?;
            let output = output::open(&cfg.output_url()).await?;
            let store =
                store::open(cfg.positions.url.as_deref(), cfg.positions.create_table).await?;
            use tidemark_core::engine::baseline;
            let layout = output::Layout::new(&cfg.output.prefix, &cfg.pipeline);
            let target = baseline::Target {
                pipeline: &cfg.pipeline,
                layout: &layout,
                store: store.as_ref(),
                output: output.as_ref(),
                part_rows: cfg.batch.snapshot_part_rows,
            };
            let object_ref = baseline::ObjectRef {
                bucket: &bucket,
                key: &key,
                version: version_id.as_deref(),
                table: target_table.as_deref(),
            };
            let applied = baseline::apply(&target, &object_ref).await?;
            match applied {
                tidemark_core::engine::baseline::Applied::Written(p) => println!(
                    "baseline {} version {}: {} rows into {}",
                    object, p.version_id, p.rows, p.table
                ),
                tidemark_core::engine::baseline::Applied::NotNewer { committed } => println!(
                    "baseline {object}: not newer than the committed version {}; nothing written",
                    committed.version_id
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = args.pipeline.config().await?;
    if args.no_snapshot {
        cfg.source.snapshot = false;
    }
    if let Some(ms) = args.flush_interval_ms {
        cfg.batch.flush_interval_ms = ms;
    }
    if let Some(n) = args.max_batch_rows {
        cfg.batch.max_rows = n;
    }
    if let Some(n) = args.snapshot_part_rows {
        cfg.batch.snapshot_part_rows = n;
    }
    if let Some(n) = args.in_flight {
        cfg.batch.in_flight = n;
    }
    let opts = runtime::run::RunOptions {
        until_caught_up: args.until_caught_up,
        stop_after: args.stop_after_secs.map(Duration::from_secs),
        max_retries: args.max_retries,
        stop_timeout: Duration::from_secs(args.stop_timeout_secs),
        publish: args.publish,
        progress: std::io::stderr().is_terminal(),
        metrics: Metrics::new(
            &cfg.pipeline,
            match args.metrics.as_str() {
                "emf" => true,
                "off" => false,
                _ => !std::io::stdout().is_terminal(),
            },
        ),
    };
    runtime::run::run(cfg, opts).await?;
    Ok(ExitCode::SUCCESS)
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// `tidemark ddl`: statements for the tables found in the output, on stdout.
async fn ddl(args: DdlArgs) -> anyhow::Result<ExitCode> {
    use tidemark_core::output::athena;
    let cfg = match &args.config {
        Some(path) => Some(Config::load(path)?),
        None => None,
    };
    let pipeline = args
        .pipeline
        .or_else(|| cfg.as_ref().map(|c| c.pipeline.clone()))
        .filter(|p| !p.is_empty())
        .context("no pipeline given: pass --pipeline NAME (or --config FILE)")?;
    let url = args
        .output
        .or_else(|| cfg.as_ref().map(|c| c.output_url()))
        .unwrap_or_else(|| "file://./tidemark-out".to_string());
    let prefix = cfg
        .as_ref()
        .map(|c| c.output.prefix.clone())
        .unwrap_or_default();
    let dialect: athena::Dialect = args.dialect.parse()?;
    if dialect == athena::Dialect::Athena && !url.starts_with("s3://") {
        tracing::warn!(
            output = %url,
            "a preview: Athena reads S3, so pass --output s3://bucket/prefix for DDL to run there (--dialect duckdb queries a local output)"
        );
    }
    // A local output is read where it is (never created) and named by its absolute path.
    let url = match url
        .strip_prefix("file://")
        .or((!url.contains("://")).then_some(url.as_str()))
    {
        Some(dir) => {
            let abs = std::fs::canonicalize(dir)
                .with_context(|| format!("no output directory {dir}: run the pipeline first"))?;
            format!("file://{}", abs.display())
        }
        None => url,
    };
    let output = output::open(&url).await?;
    let layout = output::Layout::new(&prefix, &pipeline);
    let tables = athena::discover(output.as_ref(), &layout).await?;
    if tables.is_empty() {
        anyhow::bail!(
            "no tables under {}/{}/: run the pipeline first (its snapshot writes every captured table)",
            output.url(),
            layout.root()
        );
    }
    let database = args.database.unwrap_or_else(|| {
        pipeline
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    });
    let target = athena::Target {
        database: &database,
        output_url: &output.url(),
        dialect,
    };
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    for statement in athena::statements(&target, &tables, &today) {
        println!("{statement}\n");
    }
    Ok(ExitCode::SUCCESS)
}
