//! One Kinesis shard's records → Parquet change objects, dead letters and the shard's position,
//! exactly once.
//!
//! Contract of [`ShardIngest::apply`], for one shard with one writer at a time (Lambda with
//! `ParallelizationFactor: 1`, or the worker holding the shard's lease):
//! - records at or below the shard's committed sequence number are skipped, so a replayed or
//!   bisected batch never writes a row twice;
//! - the batch's objects are named by the shard and the first and last sequence number they
//!   hold, recorded as a write intent before they are written, and the position moves to the
//!   batch's last record only after they are durable ([`crate::engine::commit_batch`]); an
//!   intent left by a crash is resolved first by deleting its objects, so a retry that splits
//!   the batch differently cannot leave the old objects behind;
//! - a record that cannot be decoded or encoded goes to `<root>/_dead_letter/` with the reason
//!   and its original bytes, and the rest of the batch proceeds.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::change::{Column, RowMeta, TableId, TableSchema};
use crate::codec::{self as format, Change, Decoded, RecordFormat};
use crate::engine::{commit_batch, load_and_recover};
use crate::error::{Error, Result};
use crate::output::layout::date_partition;
use crate::output::{Layout, ObjectOutput};
use crate::position::{SeqNo, ShardPosition};
use crate::sink::ChangeBuffer;
use crate::sink::parquet::{Naming, ParquetBatch};
use crate::source::kinesis::source::KinesisSource;
use crate::store::{
    Checkpoint, PositionStore, SourcePosition, baseline_checkpoint, shard_checkpoint,
};

pub use crate::source::kinesis::ShardRecord;

/// What one [`ShardIngest::apply`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Records at or below the committed position (replays).
    pub replayed: usize,
    /// Records holding no change (control records, tombstones).
    pub ignored: usize,
    /// Records of the baseline's table that the baseline already holds
    /// ([`crate::engine::baseline::Covers`]).
    pub covered: usize,
    pub dead_letters: usize,
    pub rows: usize,
    pub objects: usize,
    pub bytes: usize,
    /// The shard's committed position afterwards.
    pub position: Option<ShardPosition>,
    /// Commit time (UNIX µs) of the last row written.
    pub last_commit_ts: Option<i64>,
}

/// Turns shard batches of one pipeline into Parquet.
#[derive(Clone)]
pub struct ShardIngest {
    pub pipeline: String,
    pub format: RecordFormat,
    pub layout: Layout,
    pub store: Arc<dyn PositionStore>,
    pub output: Arc<dyn ObjectOutput>,
    /// EMF lines per committed batch: Rows, Objects, Bytes, DeadLetters, LagSeconds.
    pub metrics: crate::metrics::Metrics,
}

/// A dead letter: why, and the record as it arrived.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub pipeline: String,
    pub shard: String,
    pub sequence_number: String,
    pub partition_key: String,
    pub arrival_ms: i64,
    pub reason: String,
    /// The record's data, base64.
    pub data: String,
}

impl ShardIngest {
    /// The shard's committed position (after resolving a left-over intent).
    pub async fn position(&self, shard: &str) -> Result<(Checkpoint, Option<ShardPosition>)> {
        let name = shard_checkpoint(&self.pipeline, shard);
        let cp = load_and_recover(self.store.as_ref(), self.output.as_ref(), &name).await?;
        let pos = KinesisSource::shard_position(&cp)?;
        Ok((cp, pos))
    }

    /// Applies `records` of `shard` (in sequence order) and commits the shard's position to the
    /// last of them. See the module documentation for the guarantees.
    pub async fn apply(&self, shard: &str, records: &[ShardRecord]) -> Result<Applied> {
        let (cp, committed) = self.position(shard).await?;
        let mut applied = Applied {
            position: committed.clone(),
            ..Applied::default()
        };
        // The baseline's table and the records it already holds.
        let baseline = match self
            .store
            .load(&baseline_checkpoint(&self.pipeline))
            .await?
            .and_then(|cp| cp.position)
        {
            Some(SourcePosition::Baseline(b)) => Some((b.table, b.covers)),
            _ => None,
        };
        let mut last = committed.as_ref().map(|p| p.sequence.clone());
        let mut fresh = Vec::with_capacity(records.len());
        let mut tail = None;
        for r in records {
            if last.as_ref().is_some_and(|l| r.sequence <= *l) {
                applied.replayed += 1;
                continue;
            }
            last = Some(r.sequence.clone());
            tail = Some(r);
            fresh.push(r);
        }
        let Some(tail) = tail else {
            return Ok(applied);
        };

        let mut dead = Vec::new();
        let mut changes = Vec::with_capacity(fresh.len());
        for r in &fresh {
            match format::decode(self.format, &r.data) {
                Ok(Decoded::Change(c)) => {
                    if baseline.as_ref().is_some_and(|(table, covers)| {
                        c.table == *table && covers.covers(shard, &r.sequence, r.arrival_ms)
                    }) {
                        applied.covered += 1;
                    } else {
                        changes.push((r.sequence.clone(), r.arrival_ms, c));
                    }
                }
                Ok(Decoded::Skip(_)) => applied.ignored += 1,
                Err(e) => dead.push((*r, e.one_line())),
            }
        }
        let layout = self.layout.clone();
        let shard_owned = shard.to_string();
        let (objects, rows, last_ts, encode_dead) =
            tokio::task::spawn_blocking(move || encode_runs(&layout, &shard_owned, changes))
                .await
                .map_err(|e| Error::fatal(format!("encoding task failed: {e}")))??;
        dead.extend(
            encode_dead.into_iter().filter_map(|(seq, why)| {
                fresh.iter().find(|r| r.sequence == seq).map(|r| (*r, why))
            }),
        );
        let mut objects = objects;
        for (r, reason) in &dead {
            tracing::warn!(shard, sequence = %r.sequence, reason = %reason, "record sent to the dead-letter location");
            let letter = DeadLetter {
                pipeline: self.pipeline.clone(),
                shard: shard.to_string(),
                sequence_number: r.sequence.to_string(),
                partition_key: r.partition_key.clone(),
                arrival_ms: r.arrival_ms,
                reason: reason.clone(),
                data: B64.encode(&r.data),
            };
            // One line: Athena's JSON SerDe reads one object per line.
            let body = serde_json::to_vec(&letter)
                .map_err(|e| Error::fatal(format!("dead letter: {e}")))?;
            objects.push((self.layout.dead_letter_key(shard, &r.sequence), body));
        }
        applied.dead_letters = dead.len();
        applied.rows = rows;
        applied.objects = objects.len();
        applied.bytes = objects.iter().map(|(_, b)| b.len()).sum();
        applied.last_commit_ts = last_ts;
        let to = ShardPosition {
            shard: shard.to_string(),
            sequence: tail.sequence.clone(),
            arrival_ms: Some(tail.arrival_ms),
            finished: false,
        };
        commit_batch(
            self.store.as_ref(),
            self.output.as_ref(),
            &cp,
            objects,
            SourcePosition::Kinesis(to.clone()),
            last_ts,
        )
        .await?;
        applied.position = Some(to);
        self.metrics.shard_batch(&crate::metrics::ShardMetrics {
            rows: applied.rows as u64,
            objects: applied.objects as u64,
            bytes: applied.bytes as u64,
            dead_letters: applied.dead_letters as u64,
            lag_seconds: records
                .last()
                .map(|r| (crate::store::now_ms() - r.arrival_ms).max(0) as f64 / 1000.0),
        });
        Ok(applied)
    }

    /// Lambda's contract for one invocation's batch: `Ok(None)` when every record is durable
    /// (or dead-lettered); `Ok(Some(seq))` after a transient failure or a conflict, naming the
    /// first record that is not durable (the `batchItemFailures` identifier: Lambda retries
    /// from it); `Err` for errors a retry cannot fix (configuration, permissions), which fail
    /// the invocation.
    pub async fn handle(&self, shard: &str, records: &[ShardRecord]) -> Result<Option<SeqNo>> {
        let started = std::time::Instant::now();
        match self.apply(shard, records).await {
            Ok(a) => {
                tracing::info!(
                    shard,
                    records = records.len(),
                    rows = a.rows,
                    objects = a.objects,
                    dead_letters = a.dead_letters,
                    replayed = a.replayed,
                    covered = a.covered,
                    position = %a.position.as_ref().map(|p| p.sequence.to_string()).unwrap_or_default(),
                    ms = started.elapsed().as_millis() as u64,
                    "batch committed"
                );
                Ok(None)
            }
            Err(e) if e.is_retryable() || e.kind() == crate::ErrorKind::Conflict => {
                let committed = match self.position(shard).await {
                    Ok((_, p)) => p.map(|p| p.sequence),
                    Err(_) => None,
                };
                let first = records
                    .iter()
                    .find(|r| committed.as_ref().is_none_or(|c| r.sequence > *c))
                    .map(|r| r.sequence.clone());
                tracing::warn!(shard, error = %e.one_line(), retry_from = ?first.as_ref().map(|s| s.to_string()), "batch failed; reporting the first record that is not durable");
                Ok(first)
            }
            Err(e) => Err(e),
        }
    }

    /// Builds the ingest from the environment: `TIDEMARK_PIPELINE` (required),
    /// `TIDEMARK_OUTPUT` (`s3://bucket/prefix` or a directory), `TIDEMARK_POSITIONS`
    /// (`dynamodb://table` or a directory), `TIDEMARK_FORMAT` (`auto` unless set).
    pub async fn from_env() -> Result<ShardIngest> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let pipeline = var("TIDEMARK_PIPELINE").ok_or_else(|| {
            Error::config("TIDEMARK_PIPELINE is not set: name the pipeline this stream feeds")
        })?;
        crate::store::check_name(&pipeline)?;
        let output_url = var("TIDEMARK_OUTPUT")
            .ok_or_else(|| Error::config("TIDEMARK_OUTPUT is not set: use s3://bucket/prefix"))?;
        let format: RecordFormat = var("TIDEMARK_FORMAT").unwrap_or_default().parse()?;
        if var("AWS_LAMBDA_FUNCTION_NAME").is_some() && var("TIDEMARK_POSITIONS").is_none() {
            return Err(Error::config(
                "TIDEMARK_POSITIONS is not set: a Lambda function keeps positions in DynamoDB (dynamodb://table); a local state directory would not survive the sandbox",
            ));
        }
        let output = crate::output::open(&output_url).await?;
        let store = crate::store::open(var("TIDEMARK_POSITIONS").as_deref(), false).await?;
        // Lambda sends stdout to CloudWatch Logs, which reads EMF lines as metrics.
        let metrics = crate::metrics::Metrics::new(
            &pipeline,
            match var("TIDEMARK_METRICS").as_deref() {
                Some("emf") => true,
                Some("off") => false,
                _ => var("AWS_LAMBDA_FUNCTION_NAME").is_some(),
            },
        );
        Ok(ShardIngest {
            metrics,
            layout: Layout::new("", &pipeline),
            pipeline,
            format,
            store,
            output,
        })
    }

    /// Marks a closed shard as read to its end, so that its children may start.
    pub async fn finish(&self, shard: &str) -> Result<()> {
        let (cp, pos) = self.position(shard).await?;
        if pos.as_ref().is_some_and(|p| p.finished) {
            return Ok(());
        }
        let to = match pos {
            Some(mut p) => {
                p.finished = true;
                p
            }
            None => ShardPosition {
                shard: shard.to_string(),
                sequence: SeqNo::zero(),
                arrival_ms: None,
                finished: true,
            },
        };
        commit_batch(
            self.store.as_ref(),
            self.output.as_ref(),
            &cp,
            Vec::new(),
            SourcePosition::Kinesis(to),
            None,
        )
        .await?;
        Ok(())
    }
}

/// A decoded change with its record's sequence number and arrival time (UNIX ms).
type Decoded1 = (SeqNo, i64, Box<Change>);

/// Rows of one table and date partition whose columns agree: one object.
struct Run {
    table: TableId,
    columns: Vec<Column>,
    rows: Vec<Decoded1>,
}

impl Run {
    /// Whether `c`'s columns fit: no column of the same name with another type.
    fn fits(&self, c: &Change) -> bool {
        c.columns.iter().all(|col| {
            self.columns
                .iter()
                .find(|k| k.name == col.name)
                .is_none_or(|k| k.ty == col.ty)
        })
    }

    fn add_columns(&mut self, c: &Change) {
        for col in &c.columns {
            match self.columns.iter_mut().find(|k| k.name == col.name) {
                Some(k) => k.key |= col.key,
                None => self.columns.push(col.clone()),
            }
        }
    }
}

type Encoded = (
    Vec<(String, Vec<u8>)>,
    usize,
    Option<i64>,
    Vec<(SeqNo, String)>,
);

/// Groups changes into runs (table, date, compatible columns) and encodes each as Parquet.
/// Rows the encoder refuses are returned as dead letters instead.
fn encode_runs(layout: &Layout, shard: &str, changes: Vec<Decoded1>) -> Result<Encoded> {
    let mut runs: BTreeMap<(TableId, String), Vec<Run>> = BTreeMap::new();
    let mut last_ts = None;
    let mut dead = Vec::new();
    for (seq, arrival_ms, c) in changes {
        // A record whose own columns cannot be written (an empty name, a duplicate, an
        // impossible decimal) is a dead letter alone: it never joins a run, so the other
        // records of its table in this batch are written.
        let own = TableSchema {
            id: c.table.clone(),
            columns: c.columns.clone(),
        };
        if let Err(e) = crate::parquet::check_schema(&own.with_output_names()) {
            dead.push((seq, e.one_line()));
            continue;
        }
        let ts = c.commit_ts.unwrap_or(arrival_ms.saturating_mul(1000));
        last_ts = Some(ts);
        let list = runs
            .entry((c.table.clone(), date_partition(ts)))
            .or_default();
        if !list.last().is_some_and(|run| run.fits(&c)) {
            list.push(Run {
                table: c.table.clone(),
                columns: Vec::new(),
                rows: Vec::new(),
            });
        }
        if let Some(run) = list.last_mut() {
            run.add_columns(&c);
            run.rows.push((seq, arrival_ms, c));
        }
    }
    let mut objects = Vec::new();
    let mut rows = 0;
    for run in runs.into_values().flatten() {
        let schema = Arc::new(
            TableSchema {
                id: run.table.clone(),
                columns: run.columns.clone(),
            }
            .with_output_names(),
        );
        // One batch per run: the run is one object, named by the shard's sequence numbers.
        let mut batch = ParquetBatch::named(Naming::Shard(shard.to_string()));
        let mut values = Vec::with_capacity(run.columns.len());
        for (seq, arrival_ms, c) in &run.rows {
            values.clear();
            values.extend(run.columns.iter().map(|col| {
                c.columns
                    .iter()
                    .position(|k| k.name == col.name)
                    .and_then(|i| c.values.get(i).cloned())
                    .unwrap_or(crate::change::Value::Null)
            }));
            let pos = c.pos.clone().unwrap_or_else(|| seq.sortable());
            let meta = RowMeta {
                op: c.op,
                pos: &pos,
                ord: c.ord.unwrap_or(0),
                commit_ts: c.commit_ts.unwrap_or(arrival_ms.saturating_mul(1000)),
                xid: c.xid,
            };
            if let Err(e) = batch.push_at(&schema, &meta, &values, (&seq.sortable(), 0)) {
                dead.push((seq.clone(), e.one_line()));
            }
        }
        let n = batch.rows();
        match batch.encode(layout) {
            Ok(encoded) => {
                rows += n;
                objects.extend(encoded);
            }
            // The columns themselves are unusable (an empty name, an impossible type): every
            // row of the run goes to the dead letters, the rest of the batch proceeds.
            Err(e) if e.kind() == crate::ErrorKind::Data => {
                let why = e.one_line();
                dead.extend(
                    run.rows
                        .iter()
                        .map(|(seq, _, _)| (seq.clone(), why.clone())),
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok((objects, rows, last_ts, dead))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::change::{ColumnType, Op, Value};
    use crate::codec::envelope;
    use crate::output::LocalDir;
    use crate::store::LocalFileStore;

    fn schema() -> TableSchema {
        TableSchema {
            id: TableId::new("public", "t"),
            columns: vec![
                Column {
                    name: "id".into(),
                    ty: ColumnType::Int64,
                    source_type: "int8".into(),
                    key: true,
                },
                Column {
                    name: "v".into(),
                    ty: ColumnType::Text,
                    source_type: "text".into(),
                    key: false,
                },
            ],
        }
    }

    /// A tidemark envelope of row `id` of `public.t`, at sequence number `seq`.
    pub(crate) fn record(seq: u64, id: i64) -> ShardRecord {
        let pos = format!("{:016X}", 1000 + seq);
        let meta = RowMeta {
            op: Op::Insert,
            pos: &pos,
            ord: 0,
            commit_ts: 1_795_000_000_000_000,
            xid: None,
        };
        ShardRecord {
            sequence: seq.to_string().parse().unwrap(),
            partition_key: format!("public.t/{id}"),
            arrival_ms: 1_795_000_000_000,
            data: envelope::encode(
                &schema(),
                &meta,
                &[Value::I64(id), Value::Text("x".into())],
                None,
            ),
        }
    }

    /// Pipeline `k`: positions in `<dir>/state`, objects in `<dir>/out`.
    pub(crate) fn ingest(dir: &std::path::Path) -> ShardIngest {
        ShardIngest {
            pipeline: "k".into(),
            format: RecordFormat::Auto,
            layout: Layout::new("", "k"),
            store: Arc::new(LocalFileStore::new(dir.join("state")).unwrap()),
            output: Arc::new(LocalDir::new(dir.join("out")).unwrap()),
            metrics: crate::metrics::Metrics::disabled(),
        }
    }

    #[tokio::test]
    async fn replays_and_bisected_retries_write_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let ing = ingest(dir.path());
        let batch: Vec<_> = (1..=10).map(|i| record(i, i as i64)).collect();
        let a = ing.apply("shardId-0", &batch[..5]).await.unwrap();
        assert_eq!((a.rows, a.objects, a.replayed), (5, 1, 0));
        // The whole batch again (Lambda retried it): only 6..10 are new.
        let b = ing.apply("shardId-0", &batch).await.unwrap();
        assert_eq!((b.rows, b.replayed), (5, 5));
        let c = ing.apply("shardId-0", &batch[2..7]).await.unwrap();
        assert_eq!((c.rows, c.replayed, c.objects), (0, 5, 0));
        let keys = ing.output.list("k/").await.unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys[0].contains("/shardId-0."), "{keys:?}");
        assert_eq!(c.position.unwrap().sequence, "10".parse::<SeqNo>().unwrap());
    }

    #[tokio::test]
    async fn poison_records_go_to_dead_letters_and_the_rest_proceeds() {
        let dir = tempfile::tempdir().unwrap();
        let ing = ingest(dir.path());
        let mut batch: Vec<_> = (1..=4).map(|i| record(i, i as i64)).collect();
        batch[1].data = b"{not json".to_vec();
        let a = ing.apply("s", &batch).await.unwrap();
        assert_eq!((a.rows, a.dead_letters), (3, 1));
        let letters = ing.output.list("k/_dead_letter/").await.unwrap();
        assert_eq!(letters.len(), 1);
        let body = ing.output.get(&letters[0]).await.unwrap().unwrap();
        let letter: DeadLetter = serde_json::from_slice(&body).unwrap();
        assert_eq!(letter.sequence_number, "2");
        assert!(letter.reason.contains("not JSON"), "{}", letter.reason);
        assert_eq!(B64.decode(letter.data).unwrap(), b"{not json");
    }

    /// Issue 11 item 11: a record with an unusable column (here an empty name) is a dead
    /// letter alone; the other records of its table in the same batch are written.
    #[tokio::test]
    async fn a_record_with_an_unusable_column_dead_letters_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ing = ingest(dir.path());
        let mut batch: Vec<_> = (1..=4).map(|i| record(i, i as i64)).collect();
        let mut bad = schema();
        bad.columns[1].name = String::new();
        let meta = RowMeta {
            op: Op::Insert,
            pos: "0000000000000FFF",
            ord: 0,
            commit_ts: 1_795_000_000_000_000,
            xid: None,
        };
        batch[2].data =
            envelope::encode(&bad, &meta, &[Value::I64(3), Value::Text("x".into())], None);
        let a = ing.apply("s", &batch).await.unwrap();
        assert_eq!((a.rows, a.dead_letters), (3, 1));
        let letters = ing.output.list("k/_dead_letter/").await.unwrap();
        assert_eq!(letters.len(), 1);
        let body = ing.output.get(&letters[0]).await.unwrap().unwrap();
        let letter: DeadLetter = serde_json::from_slice(&body).unwrap();
        assert_eq!(letter.sequence_number, "3");
        assert!(
            letter.reason.contains("empty column name"),
            "{}",
            letter.reason
        );
    }

    #[tokio::test]
    async fn a_crash_before_commit_leaves_no_duplicate_after_a_different_split() {
        let dir = tempfile::tempdir().unwrap();
        let ing = ingest(dir.path());
        let batch: Vec<_> = (1..=6).map(|i| record(i, i as i64)).collect();
        // A first attempt wrote its intent and object, then died before the commit.
        let name = shard_checkpoint("k", "s");
        let cp = load_and_recover(ing.store.as_ref(), ing.output.as_ref(), &name)
            .await
            .unwrap();
        let key = "k/public.t/changes/dt=2026-11-18/s.orphan.parquet".to_string();
        let mut with_intent = cp.next();
        with_intent.intent = Some(crate::store::WriteIntent {
            from: None,
            to: SourcePosition::Kinesis(ShardPosition {
                shard: "s".into(),
                sequence: "6".parse().unwrap(),
                arrival_ms: None,
                finished: false,
            }),
            keys: vec![key.clone()],
            started_ms: None,
        });
        ing.store
            .save(cp.expected(), &with_intent, None)
            .await
            .unwrap();
        ing.output.put(&key, b"orphan".to_vec()).await.unwrap();
        // The retry is bisected: first half, then second half.
        ing.apply("s", &batch[..3]).await.unwrap();
        ing.apply("s", &batch[3..]).await.unwrap();
        let keys = ing.output.list("k/public.t/").await.unwrap();
        assert!(!keys.contains(&key), "the orphan was deleted: {keys:?}");
        assert_eq!(keys.len(), 2);
    }

    #[tokio::test]
    async fn schema_changes_inside_a_batch_split_objects() {
        let dir = tempfile::tempdir().unwrap();
        let ing = ingest(dir.path());
        let mut batch: Vec<_> = (1..=4).map(|i| record(i, i as i64)).collect();
        let mut s2 = schema();
        s2.columns[1].ty = ColumnType::Int32;
        let meta = RowMeta {
            op: Op::Update,
            pos: "00000000000009999",
            ord: 0,
            commit_ts: 1_795_000_000_000_000,
            xid: None,
        };
        batch[2].data = envelope::encode(&s2, &meta, &[Value::I64(3), Value::I32(7)], None);
        let a = ing.apply("s", &batch).await.unwrap();
        // 1-2 text, 3 int, 4 text again: three objects, never one mixing types.
        assert_eq!((a.rows, a.objects, a.dead_letters), (4, 3, 0));
    }

    /// An output whose writes fail (as S3 would after its retries) while `down` is set.
    struct Flaky {
        inner: LocalDir,
        down: std::sync::atomic::AtomicBool,
    }

    impl ObjectOutput for Flaky {
        fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> crate::BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(Error::transient(
                        "S3 PutObject failed after retries: HTTP 503",
                    ));
                }
                self.inner.put(key, bytes).await
            })
        }
        fn delete<'a>(&'a self, key: &'a str) -> crate::BoxFuture<'a, Result<()>> {
            self.inner.delete(key)
        }
        fn list<'a>(&'a self, prefix: &'a str) -> crate::BoxFuture<'a, Result<Vec<String>>> {
            self.inner.list(prefix)
        }
        fn get<'a>(&'a self, key: &'a str) -> crate::BoxFuture<'a, Result<Option<Vec<u8>>>> {
            self.inner.get(key)
        }
        fn url(&self) -> String {
            self.inner.url()
        }
    }

    #[tokio::test]
    async fn a_transient_failure_reports_the_first_record_not_durable() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Arc::new(Flaky {
            inner: LocalDir::new(dir.path().join("out")).unwrap(),
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let ing = ShardIngest {
            output: flaky.clone(),
            ..ingest(dir.path())
        };
        let batch: Vec<_> = (1..=6).map(|i| record(i, i as i64)).collect();
        assert_eq!(ing.handle("s", &batch[..2]).await.unwrap(), None);
        flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
        // Lambda retries the whole batch; 1 and 2 are durable, so it reports 3.
        let failed = ing.handle("s", &batch).await.unwrap();
        assert_eq!(failed, Some("3".parse().unwrap()));
        flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
        // Lambda resumes at the reported record: the intent of the failed attempt is resolved.
        assert_eq!(ing.handle("s", &batch[2..]).await.unwrap(), None);
        let (_, pos) = ing.position("s").await.unwrap();
        assert_eq!(pos.unwrap().sequence, "6".parse().unwrap());
        let keys = ing.output.list("k/public.t/").await.unwrap();
        assert_eq!(keys.len(), 2, "one object per successful attempt: {keys:?}");
    }

    #[tokio::test]
    async fn unusable_columns_go_to_dead_letters_instead_of_blocking_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let ing = ingest(dir.path());
        let mut batch: Vec<_> = (1..=3).map(|i| record(i, i as i64)).collect();
        batch[1].data = br#"{"op":"c","source":{"db":"d","table":"t"},"after":{"":1}}"#.to_vec();
        let a = ing.apply("s", &batch).await.unwrap();
        assert_eq!((a.rows, a.dead_letters), (2, 1));
    }

    #[tokio::test]
    async fn finishing_a_shard_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let ing = ingest(dir.path());
        ing.apply("s", &[record(1, 1)]).await.unwrap();
        ing.finish("s").await.unwrap();
        ing.finish("s").await.unwrap();
        let (_, pos) = ing.position("s").await.unwrap();
        let pos = pos.unwrap();
        assert!(pos.finished);
        assert_eq!(pos.sequence, "1".parse::<SeqNo>().unwrap());
    }
}
