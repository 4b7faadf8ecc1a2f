//! The one stream loop: a database source's change stream ([`ChangeStream`]) batched into a
//! sink's buffer ([`ChangeBuffer`]: Parquet, or Kinesis envelopes) and committed, for every
//! source alike.
//!
//! Contracts:
//! - Rows are pushed to the batch in stream order; a row the committed position covers (a
//!   replay after a restart) or a snapshot skip rule covers is dropped, by `(tx key, ordinal)`.
//! - A full batch is encoded on a blocking thread while the stream goes on; at most
//!   `batch.in_flight` batches encode at once. Their commits run the protocol of
//!   [`commit_batch`] one at a time, in flush order, so the committed position only ever moves
//!   over rows that are durable.
//! - The source is acked ([`ChangeStream::ack`]) only with a committed position.
//! - Shutdown (and `--until-caught-up`) flushes and commits everything received, acks it, then
//!   stops the stream.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::change::{Op, RowMeta, SchemaRef, Value};
use crate::engine::{Committed, Pipeline, PipelineState, commit_batch, elapsed};
use crate::error::{Error, Result};
use crate::output::Layout;
use crate::position::Lsn;
use crate::sink::ChangeBuffer;
use crate::source::snapshot::KeyPlan;
use crate::source::stream::{ChangeStream, SourceEvent, StreamPosition};
use crate::store::{Checkpoint, SkipRule};

/// How one source's stream is driven.
pub(crate) struct StreamSettings<P: StreamPosition> {
    /// Return `Ok` once every transaction the server had sent through this point is durable
    /// (`--until-caught-up`).
    pub stop_at: Option<P::Progress>,
    /// How long a position that moved with no rows to write (transactions not captured, idle
    /// keepalives) waits before it is saved.
    pub idle_save: Duration,
}

impl Pipeline {
    /// Streams from `durable` (the checkpoint's position) until `shutdown` or `stop_at`, then
    /// flushes, commits, acks and stops the stream. Errors leave the checkpoint consistent.
    pub(crate) async fn stream_changes<P, S>(
        &mut self,
        mut stream: S,
        cp: Checkpoint,
        durable: P,
        layout: Layout,
        mut shutdown: watch::Receiver<bool>,
        settings: StreamSettings<P>,
    ) -> Result<()>
    where
        P: StreamPosition,
        S: ChangeStream<P>,
    {
        let skips = cp
            .snapshot
            .as_ref()
            .map(|s| {
                s.skips
                    .iter()
                    .filter(|r| r.before > durable.key())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut run = StreamRun {
            durable_key: durable.key(),
            durable_rows: durable.rows(),
            last_complete: durable.clone(),
            durable,
            tx: None,
            batch: self.sink.buffer(),
            cp,
            layout,
            server: P::Progress::default(),
            idle: None,
            skips,
            history: Vec::new(),
            inflight: VecDeque::new(),
            last_flush: Instant::now(),
            unacked: false,
        };
        let flush_every = self.config.batch.flush_interval();
        let mut tick = tokio::time::interval(flush_every.min(Duration::from_secs(1)));
        let result = loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    tracing::info!("shutting down: flushing and committing");
                    break run.flush_all(self).await;
                }
                ev = stream.next() => match ev {
                    None => Err(Error::transient("the change stream task ended")),
                    Some(ev) => match async { run.on_event(self, ev?).await }.await {
                        Err(e) => Err(e),
                        Ok(()) => match &settings.stop_at {
                            Some(stop) if run.received_through(stop) => {
                                tracing::info!(%stop, "caught up with the server's position at start-up");
                                break run.flush_all(self).await;
                            }
                            _ => Ok(()),
                        },
                    },
                },
                _ = tick.tick() => {
                    if let Some(st) = &mut self.status {
                        st.heartbeat();
                    }
                    let due = elapsed(run.batch.started(), flush_every)
                        || run.idle_due(settings.idle_save);
                    match if due { run.flush(self).await } else { Ok(()) } {
                        Ok(()) => run.settle_finished(self).await,
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = step {
                break Err(e);
            }
            if std::mem::take(&mut run.unacked) {
                stream.ack(&run.durable);
            }
        };
        if std::mem::take(&mut run.unacked) {
            stream.ack(&run.durable);
        }
        let stopped = stream.stop().await;
        if result.is_ok() {
            self.set_state(PipelineState::Stopped);
        }
        result.and(stopped)
    }
}

/// The transaction being received.
struct Tx<P: StreamPosition> {
    tx: P::Tx,
    /// `P::tx_key(&tx)`, computed once: compared for every row.
    key: Lsn,
    /// `key.sortable()`: every row's `_pos`.
    pos: String,
    commit_ts: i64,
    xid: Option<i64>,
    next_ord: u64,
    /// Schema changes so far (numbers their history records).
    ddl: u32,
}

/// Encoded objects: key and bytes.
type Objects = Vec<(String, Vec<u8>)>;

/// A batch being encoded, and the position its commit moves to.
struct InFlight<P> {
    encode: tokio::task::JoinHandle<Result<Objects>>,
    to: P,
    rows: u64,
    last_ts: Option<i64>,
    started: Instant,
}

/// State of one streaming session.
struct StreamRun<P: StreamPosition> {
    /// Committed: every row it covers is durable.
    durable: P,
    /// `durable.key()` and `durable.rows()` (no key derivation per row).
    durable_key: Lsn,
    durable_rows: u64,
    /// After the last whole transaction received.
    last_complete: P,
    tx: Option<Tx<P>>,
    batch: Box<dyn ChangeBuffer>,
    cp: Checkpoint,
    layout: Layout,
    /// How far the server has sent.
    server: P::Progress,
    /// Server progress received while nothing was buffered: saved (then acked) with the next
    /// commit, or after `idle_save`.
    idle: Option<P::Progress>,
    /// Ranges a resumed snapshot copied at a later point (empty once the stream is past them).
    skips: Vec<SkipRule>,
    /// Schema-history records of the current batch: key and JSON body.
    history: Vec<(String, Vec<u8>)>,
    inflight: VecDeque<InFlight<P>>,
    last_flush: Instant,
    /// A commit happened since the last ack.
    unacked: bool,
}

impl<P: StreamPosition> StreamRun<P> {
    /// Whether every transaction the server sent before `stop` has been received (flushing
    /// then makes it durable).
    fn received_through(&self, stop: &P::Progress) -> bool {
        self.tx.is_none() && (self.last_complete.received() >= *stop || self.server >= *stop)
    }

    /// The position that covers every row received so far.
    fn pending(&self) -> P {
        match &self.tx {
            Some(tx) => self.last_complete.partial(&tx.tx, tx.next_ord),
            None => match &self.idle {
                Some(idle) => self.last_complete.clone().with_idle(idle),
                None => self.last_complete.clone(),
            },
        }
    }

    /// The position of the last flush (committed or in flight).
    fn flushed(&self) -> &P {
        self.inflight.back().map_or(&self.durable, |f| &f.to)
    }

    /// Whether the position moved without rows to write and the last save is a while ago.
    fn idle_due(&self, idle_save: Duration) -> bool {
        self.batch.is_empty()
            && self.last_flush.elapsed() >= idle_save
            && self.pending() > *self.flushed()
    }

    async fn on_event(&mut self, p: &mut Pipeline, ev: SourceEvent<P>) -> Result<()> {
        match ev {
            SourceEvent::Begin { tx, commit_ts, xid } => {
                let key = P::tx_key(&tx);
                self.tx = Some(Tx {
                    tx,
                    key,
                    pos: key.sortable(),
                    commit_ts,
                    xid,
                    next_ord: 0,
                    ddl: 0,
                });
            }
            SourceEvent::Row { schema, op, values } => self.row(p, &schema, op, &values).await?,
            SourceEvent::Rows {
                schema,
                ops,
                values,
            } => {
                let n = schema.columns.len();
                for (i, op) in ops.into_iter().enumerate() {
                    let row = values.get(i * n..(i + 1) * n).ok_or_else(|| {
                        Error::data(format!("rows event for {} is short", schema.id))
                    })?;
                    self.row(p, &schema, op, row).await?;
                }
            }
            SourceEvent::Truncate { schemas } => {
                for schema in schemas {
                    let nulls = vec![Value::Null; schema.columns.len()];
                    self.row(p, &schema, Op::Truncate, &nulls).await?;
                }
            }
            SourceEvent::SchemaChange {
                database,
                statement,
            } => {
                let Some(tx) = self.tx.as_mut() else {
                    return Err(Error::data("DDL outside a transaction"));
                };
                let replayed = tx.key < self.durable_key
                    || (tx.key == self.durable_key && self.durable_rows == u64::MAX);
                if !replayed {
                    let key = self.layout.schema_history_key(&tx.pos, tx.ddl);
                    let body = serde_json::json!({
                        "position": tx.tx,
                        "commit_ts_us": tx.commit_ts,
                        "database": database,
                        "statement": statement,
                    });
                    self.history.push((key, body.to_string().into_bytes()));
                    tracing::info!(database, statement = %statement.chars().take(200).collect::<String>(), "schema change recorded");
                }
                tx.ddl += 1;
            }
            SourceEvent::Commit(commit) => {
                let Some(tx) = self.tx.take() else {
                    return Err(Error::data("COMMIT without a transaction"));
                };
                self.last_complete = P::complete(tx.tx, commit)?;
            }
            SourceEvent::Progress(at) => {
                if at > self.server {
                    self.server = at.clone();
                }
                // Nothing is buffered: everything the server sent is durable, in flight or not
                // captured, so the position may move there (saved before it is acked).
                if self.tx.is_none()
                    && self.batch.is_empty()
                    && self.idle.as_ref().is_none_or(|i| at > *i)
                {
                    self.idle = Some(at);
                }
            }
        }
        Ok(())
    }

    async fn row(
        &mut self,
        p: &mut Pipeline,
        schema: &SchemaRef,
        op: Op,
        values: &[Value],
    ) -> Result<()> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(Error::data(format!(
                "row for {} outside a transaction",
                schema.id
            )));
        };
        let ord = tx.next_ord;
        let key = tx.key;
        let (dk, dr) = (self.durable_key, self.durable_rows);
        if key < dk || (key == dk && (dr == u64::MAX || ord < dr)) {
            tx.next_ord += 1; // replayed after a restart: already durable
            return Ok(());
        }
        if !self.skips.is_empty() && op != Op::Truncate {
            self.skips.retain(|r| r.before > key);
            let row_key = KeyPlan::for_schema(schema).key_of(values);
            if self
                .skips
                .iter()
                .any(|r| r.covers(&schema.id, key, row_key))
            {
                tx.next_ord += 1; // already in a resumed snapshot read after this commit
                return Ok(());
            }
        }
        if self.batch.schema_differs(schema) {
            self.flush(p).await?;
        }
        let Some(tx) = self.tx.as_mut() else {
            return Ok(());
        };
        let meta = RowMeta {
            op,
            pos: &tx.pos,
            ord,
            commit_ts: tx.commit_ts,
            xid: tx.xid,
        };
        self.batch.push(schema, &meta, values)?;
        tx.next_ord += 1;
        let cfg = &p.config.batch;
        if self.batch.rows() >= cfg.max_rows || self.batch.approx_bytes() >= cfg.max_bytes() {
            self.flush(p).await?;
        }
        Ok(())
    }

    /// Starts making everything received durable: the batch goes to a blocking thread to be
    /// encoded, behind the batches already in flight (waiting for the oldest to commit when
    /// `batch.in_flight` are).
    ///
    /// A sink that delivers in order (Kinesis): the batches in flight are committed first,
    /// then this batch is delivered under a write intent (every record accepted before the
    /// call returns); the commit that follows moves the position past it.
    async fn flush(&mut self, p: &mut Pipeline) -> Result<()> {
        let to = self.pending();
        if self.tx.is_none() {
            self.last_complete = to.clone();
        }
        if to <= *self.flushed() && self.batch.is_empty() && self.history.is_empty() {
            return Ok(());
        }
        if p.sink.in_order() {
            self.settle_all(p).await?;
        }
        while self.inflight.len() >= p.config.batch.in_flight.max(1) {
            self.settle_one(p).await?;
        }
        let rows = self.batch.rows() as u64;
        let last_ts = self.batch.last_commit_ts();
        let started = Instant::now();
        self.cp = p
            .sink
            .deliver(
                p.store.as_ref(),
                &self.cp,
                self.batch.as_mut(),
                &to.clone().into_source(),
            )
            .await?;
        let mut batch = std::mem::replace(&mut self.batch, p.sink.buffer());
        let mut history = std::mem::take(&mut self.history);
        let layout = self.layout.clone();
        let encode = tokio::task::spawn_blocking(move || {
            let mut objects = batch.encode(&layout)?;
            objects.append(&mut history);
            Ok(objects)
        });
        self.inflight.push_back(InFlight {
            encode,
            to,
            rows,
            last_ts,
            started,
        });
        Ok(())
    }

    /// Flushes and waits until everything received is committed.
    async fn flush_all(&mut self, p: &mut Pipeline) -> Result<()> {
        self.flush(p).await?;
        self.settle_all(p).await
    }

    async fn settle_all(&mut self, p: &mut Pipeline) -> Result<()> {
        while !self.inflight.is_empty() {
            self.settle_one(p).await?;
        }
        Ok(())
    }

    /// Commits the batches whose encoding has finished, oldest first.
    async fn settle_finished(&mut self, p: &mut Pipeline) -> Result<()> {
        while self
            .inflight
            .front()
            .is_some_and(|f| f.encode.is_finished())
        {
            self.settle_one(p).await?;
        }
        Ok(())
    }

    /// Waits for the oldest batch in flight, then runs the commit protocol for it (intent,
    /// objects, position).
    async fn settle_one(&mut self, p: &mut Pipeline) -> Result<()> {
        let Some(f) = self.inflight.pop_front() else {
            return Ok(());
        };
        let objects = f
            .encode
            .await
            .map_err(|e| Error::fatal(format!("the Parquet encoding task failed: {e}")))??;
        let n_objects = objects.len();
        let bytes: usize = objects.iter().map(|(_, b)| b.len()).sum();
        self.cp = commit_batch(
            p.store.as_ref(),
            p.output.as_ref(),
            &self.cp,
            objects,
            f.to.clone().into_source(),
            f.last_ts,
        )
        .await?;
        self.durable_key = f.to.key();
        self.durable_rows = f.to.rows();
        self.durable = f.to;
        self.unacked = true;
        p.report_commit(&Committed {
            rows: f.rows,
            objects: n_objects,
            bytes,
            started: f.started,
            since: self.last_flush.elapsed(),
            last_commit_ts: f.last_ts,
            lag_bytes: self.durable.lag_bytes(&self.server),
            position: &self.durable,
        });
        self.last_flush = Instant::now();
        Ok(())
    }
}

#[cfg(all(test, feature = "postgres"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    //! The loop against an in-memory stream, a local directory and the local store: batching,
    //! ordering, acks, and a crash at every write of the commit protocol (by failpoint).
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::BoxFuture;
    use crate::change::{Column, ColumnType, TableId, TableSchema};
    use crate::config::Config;
    use crate::output::{LocalDir, ObjectOutput};
    use crate::position::PgPosition;
    use crate::source::memory::MemoryStream;
    use crate::source::postgres::stream::{PgCommit, PgEvent};
    use crate::store::{Lease, LocalFileStore, PositionStore, SourcePosition};

    fn schema() -> SchemaRef {
        Arc::new(TableSchema {
            id: TableId::new("public", "t"),
            columns: vec![Column {
                name: "id".into(),
                ty: ColumnType::Int64,
                source_type: "int8".into(),
                key: true,
            }],
        })
    }

    /// `txs[i]` rows in transaction `i` (commit LSN `100 * (i + 1)`), then a keepalive at the end.
    fn script(txs: &[u64]) -> (Vec<Result<PgEvent>>, Lsn) {
        let (s, mut ev, mut id) = (schema(), Vec::new(), 0i64);
        for (i, n) in txs.iter().enumerate() {
            let lsn = Lsn(100 * (i as u64 + 1));
            ev.push(Ok(SourceEvent::Begin {
                tx: lsn,
                commit_ts: 1_700_000_000_000_000 + i as i64,
                xid: Some(i as i64),
            }));
            for _ in 0..*n {
                id += 1;
                ev.push(Ok(SourceEvent::Row {
                    schema: s.clone(),
                    op: Op::Insert,
                    values: vec![Value::I64(id)],
                }));
            }
            ev.push(Ok(SourceEvent::Commit(PgCommit {
                commit_lsn: lsn,
                end_lsn: Lsn(lsn.0 + 10),
            })));
        }
        let end = Lsn(100 * (txs.len() as u64 + 1));
        ev.push(Ok(SourceEvent::Progress(end)));
        (ev, end)
    }

    /// Fails the `n`-th call (1-based) of whatever it guards, once.
    #[derive(Clone, Default)]
    struct Failpoint(Arc<AtomicI64>);
    impl Failpoint {
        fn at(n: i64) -> Self {
            Failpoint(Arc::new(AtomicI64::new(n)))
        }
        fn hit(&self, what: &str) -> Result<()> {
            match self.0.fetch_sub(1, Ordering::SeqCst) {
                1 => Err(Error::transient(format!("failpoint: {what}"))),
                _ => Ok(()),
            }
        }
    }

    struct FailingOutput(LocalDir, Failpoint);
    impl ObjectOutput for FailingOutput {
        fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.1.hit("put")?;
                self.0.put(key, bytes).await
            })
        }
        fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
            self.0.delete(key)
        }
        fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
            self.0.list(prefix)
        }
        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
            self.0.get(key)
        }
        fn url(&self) -> String {
            self.0.url()
        }
    }

    struct FailingStore(LocalFileStore, Failpoint);
    impl PositionStore for FailingStore {
        fn load<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<Checkpoint>>> {
            self.0.load(pipeline)
        }
        fn save<'a>(
            &'a self,
            expected: Option<u64>,
            next: &'a Checkpoint,
            lease: Option<&'a Lease>,
        ) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.1.hit("save")?;
                self.0.save(expected, next, lease).await
            })
        }
        fn delete<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<()>> {
            self.0.delete(pipeline)
        }
        fn acquire_lease<'a>(
            &'a self,
            pipeline: &'a str,
            owner: &'a str,
            ttl_ms: i64,
        ) -> BoxFuture<'a, Result<Lease>> {
            self.0.acquire_lease(pipeline, owner, ttl_ms)
        }
        fn renew_lease<'a>(
            &'a self,
            lease: &'a Lease,
            ttl_ms: i64,
        ) -> BoxFuture<'a, Result<Lease>> {
            self.0.renew_lease(lease, ttl_ms)
        }
        fn release_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
            self.0.release_lease(lease)
        }
        fn lease<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<Lease>>> {
            self.0.lease(pipeline)
        }
        fn url(&self) -> String {
            self.0.url()
        }
    }

    fn pipeline(dir: &std::path::Path, put: Failpoint, save: Failpoint) -> Pipeline {
        let mut config = Config::from_toml(
            "pipeline = \"t\"\n[source]\nurl = \"postgres://u@h/d\"\n",
            "t",
        )
        .unwrap();
        config.batch.max_rows = 3;
        config.batch.in_flight = 2;
        Pipeline {
            config,
            output: Arc::new(FailingOutput(LocalDir::new(dir.join("out")).unwrap(), put)),
            store: Arc::new(FailingStore(
                LocalFileStore::new(dir.join("state")).unwrap(),
                save,
            )),
            progress: false,
            status: None,
            caught_up_at: None,
            until_caught_up: false,
            metrics: crate::metrics::Metrics::new("t", false),
            commits: 0,
            sink: Arc::new(crate::sink::parquet::ParquetSink),
        }
    }

    /// One run of the loop over the whole script (the source replays from the start; the loop
    /// skips what is durable), stopping once caught up.
    async fn run(p: &mut Pipeline, txs: &[u64]) -> (Result<()>, Vec<PgPosition>) {
        let (events, end) = script(txs);
        let stream = MemoryStream::new(events);
        let acks = stream.acks();
        let cp = match p.load_checkpoint().await {
            Ok(cp) => cp,
            Err(e) => return (Err(e), Vec::new()),
        };
        let durable = match &cp.position {
            Some(SourcePosition::Postgres(d)) => *d,
            _ => PgPosition::default(),
        };
        let (_tx, shutdown) = watch::channel(false);
        let layout = Layout::new("", "t");
        let settings = StreamSettings {
            stop_at: Some(end),
            idle_save: Duration::from_secs(3600),
        };
        let r = p
            .stream_changes(stream, cp, durable, layout, shutdown, settings)
            .await;
        let acks = acks.lock().unwrap().clone();
        (r, acks)
    }

    /// Every `(_pos, _ord, id)` in the output, sorted.
    /// Every row of the Parquet under `dir`: (`_pos`, `_ord`, `id`), sorted.
    pub(crate) fn output_rows(dir: &std::path::Path) -> Vec<(String, u64, i64)> {
        use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use arrow_array::{Array, Int64Array, StringArray};
        let mut rows = Vec::new();
        for entry in walkdir(dir) {
            if entry.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            let file = std::fs::File::open(&entry).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
            {
                let b = batch.unwrap();
                let col = |n: &str| b.column(b.schema().index_of(n).unwrap()).clone();
                let pos = col("_pos");
                let pos = pos.as_any().downcast_ref::<StringArray>().unwrap();
                let ord = col("_ord");
                let ord = ord.as_any().downcast_ref::<Int64Array>().unwrap();
                let id = col("id");
                let id = id.as_any().downcast_ref::<Int64Array>().unwrap();
                for i in 0..b.num_rows() {
                    rows.push((pos.value(i).to_string(), ord.value(i) as u64, id.value(i)));
                }
            }
        }
        rows.sort();
        rows
    }

    fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out
    }

    fn expected(txs: &[u64]) -> Vec<(String, u64, i64)> {
        let (mut out, mut id) = (Vec::new(), 0);
        for (i, n) in txs.iter().enumerate() {
            for ord in 0..*n {
                id += 1;
                out.push((Lsn(100 * (i as u64 + 1)).sortable(), ord, id));
            }
        }
        out
    }

    /// A mix of small transactions and one split by `max_rows` across several batches.
    const TXS: [u64; 5] = [2, 1, 10, 0, 2];

    #[tokio::test]
    async fn batches_commit_in_order_and_only_durable_positions_are_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pipeline(dir.path(), Failpoint::default(), Failpoint::default());
        let (r, acks) = run(&mut p, &TXS).await;
        r.unwrap();
        assert_eq!(output_rows(dir.path()), expected(&TXS));
        // Acks only move forward and end at the committed position: after the last
        // transaction, raised to the keepalive that followed it.
        assert!(acks.windows(2).all(|w| w[0] <= w[1]), "{acks:?}");
        let cp = p.store.load("t").await.unwrap().unwrap();
        let Some(SourcePosition::Postgres(last)) = cp.position else {
            panic!("{cp:?}")
        };
        assert_eq!(acks.last(), Some(&last));
        assert_eq!(last, PgPosition::complete(Lsn(500), Lsn(600)));
        // 15 rows at 3 per batch: the 10-row transaction was split (5 batches at least).
        assert!(p.commits >= 5, "{} commits", p.commits);
    }

    /// A crash at every write of the protocol (each intent, object and position save, by
    /// failpoint) and a restart: the output holds every row exactly once.
    #[tokio::test]
    async fn a_crash_at_any_write_then_a_replay_writes_each_row_once() {
        let mut windows = 0;
        for (puts, saves) in (1..=12).map(|n| (n, 0)).chain((1..=16).map(|n| (0, n))) {
            let dir = tempfile::tempdir().unwrap();
            let mut p = pipeline(dir.path(), Failpoint::at(puts), Failpoint::at(saves));
            let (first, _) = run(&mut p, &TXS).await;
            if first.is_ok() {
                continue; // the failpoint lies beyond this run's writes
            }
            windows += 1;
            let (second, _) = run(&mut p, &TXS).await;
            second.unwrap_or_else(|e| panic!("put {puts} / save {saves}: {e}"));
            assert_eq!(
                output_rows(dir.path()),
                expected(&TXS),
                "crash at put {puts} / save {saves}"
            );
        }
        assert!(windows >= 15, "only {windows} crash points were hit");
    }

    /// A stop (SIGTERM) in the middle of a transaction: what the loop holds is committed and
    /// acknowledged before it returns, the ack never passes the committed position, and the
    /// replay after it writes every row exactly once.
    #[tokio::test]
    async fn a_stop_inside_a_transaction_commits_and_the_replay_writes_each_row_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pipeline(dir.path(), Failpoint::default(), Failpoint::default());
        let (mut events, _) = script(&TXS);
        events.truncate(events.len() - 2); // the last transaction's Commit and the keepalive
        let stream = MemoryStream::new(events);
        let acks = stream.acks();
        let cp = p.load_checkpoint().await.unwrap();
        let (tx, shutdown) = watch::channel(false);
        // The stop comes once something is committed (the first ack), wherever the loop is.
        let stop = tokio::spawn({
            let acks = acks.clone();
            async move {
                for _ in 0..600 {
                    if !acks.lock().unwrap().is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tx.send(true).unwrap();
                tx
            }
        });
        let settings = StreamSettings {
            stop_at: None,
            idle_save: Duration::from_secs(3600),
        };
        p.stream_changes(
            stream,
            cp,
            PgPosition::default(),
            Layout::new("", "t"),
            shutdown,
            settings,
        )
        .await
        .unwrap();
        drop(stop.await.unwrap());
        let cp = p.store.load("t").await.unwrap().unwrap();
        let Some(SourcePosition::Postgres(committed)) = cp.position else {
            panic!("{cp:?}")
        };
        assert!(cp.intent.is_none(), "{cp:?}");
        let acks = acks.lock().unwrap().clone();
        assert_eq!(acks.last(), Some(&committed), "{acks:?}");
        // The output holds exactly the rows the committed position covers.
        let covered: Vec<_> = expected(&TXS)
            .into_iter()
            .filter(|(pos, ord, _)| {
                let tx = Lsn(u64::from_str_radix(pos, 16).unwrap());
                tx < committed.commit_lsn || (tx == committed.commit_lsn && *ord < committed.rows)
            })
            .collect();
        assert!(!covered.is_empty(), "{committed}");
        assert_eq!(output_rows(dir.path()), covered, "{committed}");

        let (r, _) = run(&mut p, &TXS).await;
        r.unwrap();
        assert_eq!(output_rows(dir.path()), expected(&TXS));
    }

    /// A push-only source through the one driver: the hook holds each transaction until the
    /// engine says it is durable, so when a run fails (the third object write) the next run of
    /// the process is handed the held transactions again and the output still has each row
    /// exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_only_hook_is_replayed_from_what_it_holds_after_a_failed_run() {
        use crate::source::hook::{Hook, HookRow, HookSource};
        let dir = tempfile::tempdir().unwrap();
        let mut p = pipeline(dir.path(), Failpoint::at(3), Failpoint::default());
        p.config.batch.flush_interval_ms = 50;
        let hook = Hook::register("t", 2);
        let producer = tokio::spawn({
            let hook = hook.clone();
            async move {
                let mut id = 0;
                for (i, n) in TXS.iter().enumerate() {
                    let rows = (0..*n)
                        .map(|_| {
                            id += 1;
                            HookRow {
                                schema: schema(),
                                op: Op::Insert,
                                values: vec![Value::I64(id)],
                            }
                        })
                        .collect();
                    hook.commit(1_700_000_000_000_000 + i as i64, rows).await;
                }
            }
        });
        let (_tx, shutdown) = watch::channel(false);
        let first = p.run_database::<HookSource>(shutdown).await;
        assert!(first.is_err(), "the failed write ends the first run");

        let (tx, shutdown) = watch::channel(false);
        let (second, ()) = tokio::join!(p.run_database::<HookSource>(shutdown), async {
            producer.await.unwrap();
            hook.flushed().await;
            tx.send(true).unwrap();
        });
        second.unwrap();
        let mut want = Vec::new();
        let mut id = 0;
        for (i, n) in TXS.iter().enumerate() {
            for ord in 0..*n {
                id += 1;
                want.push((Lsn(i as u64 + 1).sortable(), ord, id));
            }
        }
        assert_eq!(output_rows(dir.path()), want);
        let cp = p.store.load("t").await.unwrap().unwrap();
        assert_eq!(
            cp.position,
            Some(SourcePosition::Hook(crate::position::HookPosition::after(
                5
            )))
        );
    }
}
