//! `tidemark run`: one pipeline, from its config, until stopped: the database driver under the
//! supervisor, or the Kinesis consumer under shard leases.
//!
//! Stops (flush, commit, return `Ok`) on SIGTERM/Ctrl-C, after [`RunOptions::stop_after`], or
//! with `until_caught_up` once caught up. A database run that cannot drain within
//! [`RunOptions::stop_timeout`] after a signal exits the process with status 3; nothing is
//! lost, the next run replays what was not committed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::engine::{Pipeline, StatusFile};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::sink::ChangeSink;
use crate::{output, store};

/// How a run behaves besides its config.
pub struct RunOptions {
    /// Stop once everything the source had written at start-up is durable.
    pub until_caught_up: bool,
    /// Stop after this long (demos, benchmarks).
    pub stop_after: Option<Duration>,
    /// Failed retries in a row, without progress, before giving up.
    pub max_retries: u32,
    /// After a signal, how long the run may take to flush and commit.
    pub stop_timeout: Duration,
    /// `kinesis://<stream>`: publish changes there instead of writing them as Parquet.
    pub publish: Option<String>,
    /// Draw a progress bar for snapshots.
    pub progress: bool,
    pub metrics: Metrics,
}

/// Runs `cfg`'s pipeline until it is stopped (`Ok`) or fails.
pub async fn run(cfg: Config, opts: RunOptions) -> Result<()> {
    cfg.validate()?;
    let output = output::open(&cfg.output_url()).await?;
    let state_dir = crate::runtime::status::state_dir(&cfg)?;
    let store = store::open(cfg.positions.url.as_deref(), cfg.positions.create_table).await?;
    tracing::info!(pipeline = %cfg.pipeline, output = %output.url(), positions = %store.url(), "starting");

    let shutdown = crate::runtime::shutdown_signal();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Fan in: signals, stop_after.
    {
        let stop_tx = stop_tx.clone();
        let mut sig = shutdown.clone();
        tokio::spawn(async move {
            let _ = sig.wait_for(|v| *v).await;
            let _ = stop_tx.send(true);
        });
    }
    if let Some(after) = opts.stop_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = stop_tx.send(true);
        });
    }

    #[cfg(feature = "aws")]
    if let Some(stream) = cfg.kinesis_stream() {
        use crate::engine::shard::ShardIngest;
        use crate::engine::shard_consumer::Consumer;
        use crate::source::kinesis::client::KinesisStream;
        let consumer = Consumer {
            ingest: ShardIngest {
                pipeline: cfg.pipeline.clone(),
                format: cfg.source.format.as_deref().unwrap_or("auto").parse()?,
                layout: output::Layout::new(&cfg.output.prefix, &cfg.pipeline),
                store,
                output,
                metrics: opts.metrics,
            },
            stream: KinesisStream::open(stream).await?,
            owner: crate::lease::owner_id(),
            lease_ttl: cfg.positions.lease_ttl(),
            batch_size: 1000,
            until_caught_up: opts.until_caught_up,
        };
        return consumer.run(stop_rx).await;
    }

    let sink = sink(&cfg, opts.publish.as_deref()).await?;
    let mut pipeline = Pipeline {
        status: Some(StatusFile::new(&state_dir, &cfg.pipeline)),
        config: cfg,
        output,
        store,
        progress: opts.progress,
        caught_up_at: None,
        until_caught_up: opts.until_caught_up,
        metrics: opts.metrics,
        commits: 0,
        sink,
    };
    // SIGTERM drains and commits within the stop timeout; past it, exit non-zero (nothing is
    // lost: what was not committed is replayed by the next run).
    crate::runtime::supervisor::exit_after_stop_timeout(shutdown.clone(), opts.stop_timeout);
    crate::runtime::supervisor::supervise(&mut pipeline, stop_rx, shutdown, opts.max_retries).await
}

/// Where a database pipeline's changes go: Parquet in the output, or a Kinesis stream.
async fn sink(cfg: &Config, publish: Option<&str>) -> Result<Arc<dyn ChangeSink>> {
    let Some(url) = publish else {
        return Ok(Arc::new(crate::sink::parquet::ParquetSink));
    };
    let stream = url
        .strip_prefix("kinesis://")
        .ok_or_else(|| Error::config(format!("--publish takes kinesis://<stream>, not {url}")))?;
    #[cfg(feature = "aws")]
    return Ok(Arc::new(crate::sink::kinesis::KinesisSink::new(
        crate::sink::kinesis::Publisher::open(stream, &cfg.pipeline).await?,
    )));
    #[cfg(not(feature = "aws"))]
    {
        let _ = (cfg, stream);
        Err(Error::config(
            "this build of tidemark cannot publish to Kinesis: build with the aws feature",
        ))
    }
}
