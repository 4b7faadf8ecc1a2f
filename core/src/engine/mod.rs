//! The drive loop and the commit protocol.
//!
//! A batch covers source positions `(from, to]`. For each batch:
//! 1. the objects are encoded (keys derive only from the rows: table, date partition of the
//!    commit time, first and last position);
//! 2. a write intent naming `(from, to, keys)` is saved, conditional on the checkpoint version;
//! 3. the objects are written;
//! 4. the position is committed as `to` and the intent cleared, conditionally;
//! 5. only then is `to` acknowledged to the source.
//!
//! On start, an intent left behind by a crash is resolved first: its objects are deleted (they
//! were never committed) and the source replays `(from, to]`, skipping rows the committed
//! position covers. So the output holds every source row exactly once.

pub mod baseline;
pub mod shard;
#[cfg(feature = "aws")]
pub mod shard_consumer;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod snapshot;
pub mod status;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::failpoint;
use crate::lease;

use crate::config::Config;
use crate::error::Result;
use crate::output::ObjectOutput;
use crate::sink::ChangeSink;
use crate::store::{Checkpoint, PositionStore, SourcePosition, WriteIntent};

pub use status::{PipelineState, StatusFile};

/// Loads the checkpoint (creating it when missing) and resolves a left-over write intent.
pub async fn load_and_recover(
    store: &dyn PositionStore,
    output: &dyn ObjectOutput,
    pipeline: &str,
) -> Result<Checkpoint> {
    let cp = match store.load(pipeline).await? {
        Some(cp) => cp,
        None => {
            let first = Checkpoint::new(pipeline).next();
            store.save(None, &first, None).await?;
            first
        }
    };
    let Some(intent) = cp.intent.clone() else {
        return Ok(cp);
    };
    tracing::warn!(
        keys = intent.keys.len(),
        to = %intent.to,
        "found an unfinished batch from a previous run: deleting its uncommitted objects before replaying it"
    );
    for key in &intent.keys {
        output.delete(key).await?;
    }
    let mut next = cp.next();
    next.intent = None;
    store.save(cp.expected(), &next, None).await?;
    Ok(next)
}

/// Runs the intent → objects → commit protocol for one batch of encoded objects.
/// Returns the new checkpoint. `objects` may be empty (the position still advances).
pub async fn commit_batch(
    store: &dyn PositionStore,
    output: &dyn ObjectOutput,
    cp: &Checkpoint,
    objects: Vec<(String, Vec<u8>)>,
    to: SourcePosition,
    last_commit_ts: Option<i64>,
) -> Result<Checkpoint> {
    let mut cur = cp.clone();
    // A publish intent (from `Pipeline::publish`, maybe from before a restart) survives until
    // the position passes its end: until then a crash may again find its records on the stream.
    let publish = cur.intent.take().filter(WriteIntent::is_publish);
    if !objects.is_empty() {
        let mut with_intent = cur.next();
        with_intent.intent = Some(WriteIntent {
            from: cur.position.clone(),
            to: publish
                .as_ref()
                .map(|p| p.to.later(&to).clone())
                .unwrap_or_else(|| to.clone()),
            keys: objects.iter().map(|(k, _)| k.clone()).collect(),
            started_ms: publish.as_ref().and_then(|p| p.started_ms),
        });
        store.save(cur.expected(), &with_intent, None).await?;
        failpoint::pass(failpoint::INTENT_SAVED);
        cur = with_intent;
        for (key, bytes) in objects {
            output.put(&key, bytes).await?;
            failpoint::pass(failpoint::OBJECT_PUT);
        }
    }
    let mut committed = cur.next();
    committed.intent = publish
        .filter(|i| i.to.partial_cmp_same_source(&to) == Some(std::cmp::Ordering::Greater))
        .map(|i| WriteIntent {
            keys: Vec::new(),
            ..i
        });
    committed.position = Some(to);
    if last_commit_ts.is_some() {
        committed.last_commit_ts = last_commit_ts;
    }
    store.save(cur.expected(), &committed, None).await?;
    failpoint::pass(failpoint::POSITION_SAVED);
    Ok(committed)
}

/// Retry policy for the binary's run loop: exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    pub max_retries: u32,
}

impl Backoff {
    pub fn new(max_retries: u32) -> Self {
        Backoff {
            attempt: 0,
            max_retries,
        }
    }
    /// The delay before the next retry, or `None` once `max_retries` is exhausted.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.attempt >= self.max_retries {
            return None;
        }
        self.attempt += 1;
        let base = 500u64.saturating_mul(1 << self.attempt.min(6)).min(30_000);
        Some(Duration::from_millis(
            base / 2 + fastrand::u64(0..=base / 2),
        ))
    }
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
mod run;

/// One source → Parquet pipeline (PostgreSQL or MySQL/MariaDB, by `config.source.url`).
pub struct Pipeline {
    pub config: Config,
    pub output: Arc<dyn ObjectOutput>,
    pub store: Arc<dyn PositionStore>,
    /// Draw a progress bar for snapshots (on a terminal).
    pub progress: bool,
    pub status: Option<StatusFile>,
    /// Return `Ok` once everything the server had written when the first run connected is
    /// durable (`--until-caught-up`).
    pub until_caught_up: bool,
    /// The source's write position `until_caught_up` waits for
    /// ([`TotalSource::write_position`], read once and kept across retries).
    ///
    /// [`TotalSource::write_position`]: crate::source::TotalSource::write_position
    pub caught_up_at: Option<Arc<dyn std::any::Any + Send + Sync>>,
    pub metrics: crate::metrics::Metrics,
    /// Batches committed by this pipeline so far (all runs): tells a retry loop whether the
    /// last run made progress.
    pub commits: u64,
    /// Where changes go: Parquet objects in the output (`sink::parquet::ParquetSink`), or a
    /// Kinesis stream (`sink::kinesis::KinesisSink`; snapshots still go to the output).
    pub sink: Arc<dyn ChangeSink>,
}

impl Pipeline {
    pub(crate) fn set_state(&mut self, state: PipelineState) {
        if let Some(s) = &mut self.status {
            s.set_state(state, None);
        }
    }

    /// Runs until `shutdown` turns true (then flushes, commits, acks and returns `Ok`) or an error.
    /// Retryable errors leave the checkpoint consistent: call `run` again to resume.
    ///
    /// First takes the pipeline's lease (waiting while another worker holds it); every write of
    /// the run is fenced by it. A `Conflict` error means the lease was lost: stop writing.
    pub async fn run(&mut self, shutdown: watch::Receiver<bool>) -> Result<()> {
        self.set_state(PipelineState::Connecting);
        let ttl = self.config.positions.lease_ttl();
        let owner = lease::owner_id();
        let Some(holder) = lease::acquire(
            self.store.as_ref(),
            &self.config.pipeline,
            &owner,
            ttl,
            shutdown.clone(),
        )
        .await?
        else {
            self.set_state(PipelineState::Stopped);
            return Ok(());
        };
        let renewal = lease::spawn_renewal(self.store.clone(), holder.clone(), ttl);
        self.sink.fence(holder.clone());
        let (store, output) = (self.store.clone(), self.output.clone());
        self.store = Arc::new(holder.fence_store(store.clone()));
        self.output = Arc::new(holder.fence_output(output.clone()));
        let result = self.run_source(shutdown).await;
        self.store = store;
        self.output = output;
        renewal.abort();
        if result.is_ok() {
            lease::release(self.store.as_ref(), &holder).await;
        }
        result
    }
}

impl Pipeline {
    /// Runs the configured database source (each needs its cargo feature).
    async fn run_source(&mut self, shutdown: watch::Receiver<bool>) -> Result<()> {
        #[cfg(any(feature = "postgres", feature = "mysql"))]
        {
            let config = self.config.clone();
            let work = run::RunDatabase {
                pipeline: self,
                shutdown,
            };
            crate::source::contract::with_total_source(&config, work).await
        }
        #[cfg(not(any(feature = "postgres", feature = "mysql")))]
        {
            let _ = shutdown;
            crate::source::contract::with_total_source(&self.config, NoSource).await
        }
    }
}

/// Without a database source feature, `with_total_source` only reports which feature is
/// missing.
#[cfg(not(any(feature = "postgres", feature = "mysql")))]
struct NoSource;

#[cfg(not(any(feature = "postgres", feature = "mysql")))]
impl crate::source::contract::WithTotalSource for NoSource {
    type Output = ();
    async fn run<S: crate::source::TotalSource>(self) -> Result<()> {
        Ok(())
    }
}

#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
impl Pipeline {
    /// [`load_and_recover`], after the sink resolved a delivery of its own left unfinished
    /// ([`ChangeSink::recover`]).
    pub(crate) async fn load_checkpoint(&self) -> Result<Checkpoint> {
        if let Some(cp) = self.store.load(&self.config.pipeline).await?
            && let Some(cp) = self
                .sink
                .recover(self.store.as_ref(), self.output.as_ref(), &cp)
                .await?
        {
            return Ok(cp);
        }
        load_and_recover(
            self.store.as_ref(),
            self.output.as_ref(),
            &self.config.pipeline,
        )
        .await
    }
}

/// One committed batch, as reported to metrics, logs and the status file.
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub(crate) struct Committed<'a> {
    pub rows: u64,
    pub objects: usize,
    pub bytes: usize,
    pub started: Instant,
    /// Since the previous commit (rows/s).
    pub since: Duration,
    pub last_commit_ts: Option<i64>,
    pub lag_bytes: Option<u64>,
    pub position: &'a dyn std::fmt::Display,
}

#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
impl Pipeline {
    /// Counts a committed batch and reports it (EMF metrics, log line, status file).
    pub(crate) fn report_commit(&mut self, c: &Committed<'_>) {
        self.commits += 1;
        let (bytes, objects) = (c.bytes, c.objects);
        let batch_ms = c.started.elapsed().as_millis() as u64;
        self.metrics.batch(&crate::metrics::BatchMetrics {
            rows: c.rows,
            objects: objects as u64,
            bytes: bytes as u64,
            batch_ms,
            rows_per_sec: c.rows as f64 / c.since.as_secs_f64().max(1e-3),
            lag_seconds: c
                .last_commit_ts
                .map(|ts| ((crate::store::now_ms() * 1000 - ts).max(0) as f64) / 1e6),
            lag_bytes: c.lag_bytes,
        });
        if c.rows > 0 {
            tracing::info!(rows = c.rows, objects, bytes, position = %c.position, batch_ms, "committed batch");
        }
        if let Some(s) = &mut self.status {
            s.committed(c.position.to_string(), c.rows);
        }
    }
}

/// Deletes a table's snapshot parts numbered `from` and above.
#[cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "aws")),
    allow(dead_code)
)]
pub(crate) async fn delete_snapshot_parts(
    output: &dyn ObjectOutput,
    layout: &crate::output::Layout,
    table: &crate::change::TableId,
    snapshot_id: &str,
    from: u32,
) -> Result<()> {
    for key in output
        .list(&layout.snapshot_prefix(table, snapshot_id))
        .await?
    {
        let n = key
            .rsplit("part-")
            .next()
            .and_then(|p| p.strip_suffix(".parquet"))
            .and_then(|p| p.parse::<u32>().ok());
        if n.is_none_or(|n| n >= from) {
            output.delete(&key).await?;
        }
    }
    Ok(())
}

/// Whether `Instant` `since` is older than `d`.
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
fn elapsed(since: Option<Instant>, d: Duration) -> bool {
    since.is_some_and(|s| s.elapsed() >= d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::LocalDir;
    use crate::position::{Lsn, PgPosition};
    use crate::store::LocalFileStore;

    fn pos(l: u64) -> SourcePosition {
        SourcePosition::Postgres(PgPosition::complete(Lsn(l), Lsn(l + 1)))
    }

    #[tokio::test]
    async fn commit_then_recover_leaves_only_committed_objects() {
        let dir = tempfile::tempdir().unwrap();
        let out = LocalDir::new(dir.path().join("out")).unwrap();
        let store = LocalFileStore::new(dir.path().join("state")).unwrap();

        let cp = load_and_recover(&store, &out, "p").await.unwrap();
        let cp = commit_batch(
            &store,
            &out,
            &cp,
            vec![("a/1.parquet".into(), b"1".to_vec())],
            pos(10),
            Some(5),
        )
        .await
        .unwrap();
        assert_eq!(cp.position, Some(pos(10)));
        assert_eq!(cp.last_commit_ts, Some(5));

        // Crash after intent + object write, before commit.
        let mut with_intent = cp.next();
        with_intent.intent = Some(WriteIntent {
            from: cp.position.clone(),
            to: pos(20),
            keys: vec!["a/2.parquet".into()],
            started_ms: None,
        });
        store.save(cp.expected(), &with_intent, None).await.unwrap();
        out.put("a/2.parquet", b"2".to_vec()).await.unwrap();

        let recovered = load_and_recover(&store, &out, "p").await.unwrap();
        assert_eq!(recovered.intent, None);
        assert_eq!(recovered.position, Some(pos(10)));
        assert_eq!(
            out.list("a/").await.unwrap(),
            vec!["a/1.parquet".to_string()]
        );
    }

    #[tokio::test]
    async fn publish_intent_survives_commits_with_objects_until_passed() {
        let dir = tempfile::tempdir().unwrap();
        let out = LocalDir::new(dir.path().join("out")).unwrap();
        let store = LocalFileStore::new(dir.path().join("state")).unwrap();
        let cp = load_and_recover(&store, &out, "p").await.unwrap();
        // Records up to 30 were published before a restart; the replay commits up to 20 with
        // a schema-history object beside it.
        let mut published = cp.next();
        published.intent = Some(WriteIntent {
            from: None,
            to: pos(30),
            keys: vec![],
            started_ms: Some(7),
        });
        store.save(cp.expected(), &published, None).await.unwrap();
        let history = vec![("h/1.json".to_string(), b"{}".to_vec())];
        let cp = commit_batch(&store, &out, &published, history, pos(20), None)
            .await
            .unwrap();
        let kept = cp.intent.clone().unwrap();
        assert!(kept.is_publish() && kept.keys.is_empty());
        assert_eq!((kept.to, kept.started_ms), (pos(30), Some(7)));
        let cp = commit_batch(&store, &out, &cp, vec![], pos(30), None)
            .await
            .unwrap();
        assert_eq!(cp.intent, None);
    }

    #[tokio::test]
    async fn stale_checkpoint_cannot_commit() {
        let dir = tempfile::tempdir().unwrap();
        let out = LocalDir::new(dir.path().join("out")).unwrap();
        let store = LocalFileStore::new(dir.path().join("state")).unwrap();
        let cp = load_and_recover(&store, &out, "p").await.unwrap();
        commit_batch(&store, &out, &cp, vec![], pos(10), None)
            .await
            .unwrap();
        let e = commit_batch(&store, &out, &cp, vec![], pos(20), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Conflict);
    }

    #[test]
    fn backoff_is_bounded_and_gives_up() {
        let mut b = Backoff::new(3);
        for _ in 0..3 {
            let d = b.next_delay().unwrap();
            assert!(d <= Duration::from_secs(30));
        }
        assert!(b.next_delay().is_none());
        b.reset();
        assert!(b.next_delay().is_some());
    }

    #[test]
    fn elapsed_handles_none() {
        assert!(!elapsed(None, Duration::ZERO));
        assert!(elapsed(Some(Instant::now()), Duration::ZERO));
    }
}
