//! The worker as a Kinesis consumer (deployments without Lambda, and local runs).
//!
//! Contract:
//! - a shard is read only under its lease (the position store's lease on the shard's
//!   checkpoint: owner, epoch fencing, expiry); every save and object write is fenced by it, so
//!   a worker that lost a shard writes nothing more for it;
//! - each running worker holds a seat (the lease `<pipeline>#seat#<n>`, the lowest free `n`),
//!   so the workers are counted even before they hold a shard; each takes at most its fair
//!   share of the ready shards (ready: not finished, every listed parent finished),
//!   `ceil(ready / seats)`, and one holding more gives the excess back after its current batch,
//!   so a new worker gets shards without waiting for leases to expire;
//! - a closed shard read to its end is marked finished, which makes its children ready:
//!   children never start before all their parents are finished.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::shard::ShardIngest;
use crate::error::{ErrorKind, Result};
use crate::lease::{self, LeaseHolder};
use crate::position::{SeqNo, ShardPosition};
use crate::source::kinesis::{ShardInfo, ShardRead};
use crate::store::{SourcePosition, now_ms, shard_checkpoint};

/// How often shards and leases are looked at again.
const REBALANCE: Duration = Duration::from_secs(2);
/// Pause after an empty read of an open shard.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Reads a stream's shards into Parquet under shard leases.
pub struct Consumer<R: ShardRead> {
    pub ingest: ShardIngest,
    pub stream: R,
    pub owner: String,
    pub lease_ttl: Duration,
    pub batch_size: i32,
    /// Return once every shard is finished, or held by this worker and read to its tip.
    pub until_caught_up: bool,
}

/// A shard being read by this worker.
struct Reader {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
    idle: watch::Receiver<bool>,
}

impl<R: ShardRead> Consumer<R> {
    /// The committed position of each listed shard (read-only: no lease needed).
    pub async fn positions(&self, shards: &[ShardInfo]) -> Result<BTreeMap<String, ShardPosition>> {
        let mut out = BTreeMap::new();
        for s in shards {
            let name = shard_checkpoint(&self.ingest.pipeline, &s.id);
            if let Some(cp) = self.ingest.store.load(&name).await?
                && let Some(SourcePosition::Kinesis(p)) = cp.position
            {
                out.insert(s.id.clone(), p);
            }
        }
        Ok(out)
    }

    /// Runs until `shutdown` (each shard reader finishes its batch, commits and releases its
    /// lease) or, with `until_caught_up`, until caught up.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut readers: BTreeMap<String, Reader> = BTreeMap::new();
        let mut seat: Option<(LeaseHolder, JoinHandle<()>)> = None;
        let result = loop {
            // Reap finished readers; an error other than a lost lease ends the run.
            let mut failed = None;
            for (id, r) in std::mem::take(&mut readers) {
                if r.task.is_finished() {
                    match r.task.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) if e.kind() == ErrorKind::Conflict => {
                            tracing::warn!(shard = %id, error = %e.one_line(), "shard lease lost")
                        }
                        // Throttling, an unreachable endpoint: the shard's lease was released
                        // and a later round (here or on another worker) reads it again.
                        Ok(Err(e)) if e.is_retryable() => {
                            tracing::warn!(shard = %id, error = %e.one_line(), "shard reader stopped; the shard is taken up again")
                        }
                        Ok(Err(e)) => failed = Some(e),
                        Err(e) => {
                            failed = Some(crate::Error::fatal(format!("shard task failed: {e}")))
                        }
                    }
                } else {
                    readers.insert(id, r);
                }
            }
            if let Some(e) = failed {
                break Err(e);
            }
            match self.rebalance(&mut readers, &mut seat, &shutdown).await {
                Ok(true) if self.until_caught_up => break Ok(()),
                Ok(_) => {}
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e.one_line(), "cannot list shards or leases; retrying")
                }
                Err(e) => break Err(e),
            }
            tokio::select! {
                _ = tokio::time::sleep(REBALANCE) => {}
                _ = shutdown.wait_for(|s| *s) => break Ok(()),
            }
        };
        for r in readers.values() {
            let _ = r.stop.send(true);
        }
        if let Some((holder, renewal)) = seat.take() {
            renewal.abort();
            lease::release(self.ingest.store.as_ref(), &holder).await;
        }
        for (id, r) in readers {
            match r.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(shard = %id, error = %e.one_line(), "shard reader stopped with an error")
                }
                Err(e) => {
                    tracing::warn!(shard = %id, error = %e.to_string(), "shard reader failed")
                }
            }
        }
        result
    }

    /// One round: take or give back shard leases. `Ok(true)` when caught up (every shard
    /// finished, or read by this worker and idle at its tip).
    async fn rebalance(
        &self,
        readers: &mut BTreeMap<String, Reader>,
        seat: &mut Option<(LeaseHolder, JoinHandle<()>)>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<bool> {
        let shards = self.stream.shards().await?;
        let seats = shards.len().max(1);
        let store = &self.ingest.store;
        if seat
            .as_ref()
            .is_none_or(|(h, r)| r.is_finished() || h.check().is_err())
        {
            *seat = None;
            for n in 0..seats {
                let name = format!("{}#seat#{n}", self.ingest.pipeline);
                if let Some(h) =
                    lease::try_acquire(store.as_ref(), &name, &self.owner, self.lease_ttl).await?
                {
                    let renewal = lease::spawn_renewal(store.clone(), h.clone(), self.lease_ttl);
                    *seat = Some((h, renewal));
                    break;
                }
            }
        }
        let now = now_ms();
        let mut workers = 0;
        for n in 0..seats {
            let name = format!("{}#seat#{n}", self.ingest.pipeline);
            if store
                .lease(&name)
                .await?
                .is_some_and(|l| l.expires_at_ms > now)
            {
                workers += 1;
            }
        }
        let positions = self.positions(&shards).await?;
        let finished: BTreeSet<&str> = positions
            .values()
            .filter(|p| p.finished)
            .map(|p| p.shard.as_str())
            .collect();
        let listed: BTreeSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        let ready: Vec<&ShardInfo> = shards
            .iter()
            .filter(|s| !finished.contains(s.id.as_str()))
            .filter(|s| {
                s.parents()
                    .all(|p| !listed.contains(p) || finished.contains(p))
            })
            .collect();
        let mut owners = BTreeSet::from([self.owner.clone()]);
        let mut free = Vec::new();
        for s in &ready {
            if readers.contains_key(&s.id) {
                continue;
            }
            let name = shard_checkpoint(&self.ingest.pipeline, &s.id);
            match self.ingest.store.lease(&name).await? {
                Some(l) if l.owner != self.owner && l.expires_at_ms > now => {
                    owners.insert(l.owner);
                }
                _ => free.push(*s),
            }
        }
        let fair = ready.len().div_ceil(owners.len().max(workers));
        // Give back the excess (the highest shard ids), after their current batch.
        let excess = readers.len().saturating_sub(fair);
        for (id, r) in readers.iter().rev().take(excess) {
            tracing::info!(shard = %id, fair, "giving a shard back to balance the workers");
            let _ = r.stop.send(true);
        }
        for s in free {
            if readers.len() >= fair || *shutdown.borrow() {
                break;
            }
            let name = shard_checkpoint(&self.ingest.pipeline, &s.id);
            let Some(holder) = lease::try_acquire(
                self.ingest.store.as_ref(),
                &name,
                &self.owner,
                self.lease_ttl,
            )
            .await?
            else {
                continue;
            };
            tracing::info!(shard = %s.id, "reading shard");
            readers.insert(s.id.clone(), self.spawn_reader(s.clone(), holder));
        }
        let caught_up = ready.iter().all(|s| {
            readers
                .get(&s.id)
                .is_some_and(|r| *r.idle.borrow() && !r.task.is_finished())
        });
        Ok(caught_up)
    }

    fn spawn_reader(&self, shard: ShardInfo, holder: LeaseHolder) -> Reader {
        let (stop, stop_rx) = watch::channel(false);
        let (idle_tx, idle) = watch::channel(false);
        let store = self.ingest.store.clone();
        let ingest = ShardIngest {
            store: Arc::new(holder.fence_store(store.clone())),
            output: Arc::new(holder.fence_output(self.ingest.output.clone())),
            ..self.ingest.clone()
        };
        let stream = self.stream.clone();
        let (ttl, batch) = (self.lease_ttl, self.batch_size);
        let task = tokio::spawn(async move {
            let renewal = lease::spawn_renewal(store.clone(), holder.clone(), ttl);
            let result = read_shard(&ingest, &stream, shard, batch, stop_rx, idle_tx).await;
            renewal.abort();
            lease::release(store.as_ref(), &holder).await;
            result
        });
        Reader { stop, task, idle }
    }
}

/// Reads one shard from its committed position until stopped or read to its end.
async fn read_shard<R: ShardRead>(
    ingest: &ShardIngest,
    stream: &R,
    shard: ShardInfo,
    batch: i32,
    mut stop: watch::Receiver<bool>,
    idle: watch::Sender<bool>,
) -> Result<()> {
    let mut shard = shard.clone();
    let mut refreshed = std::time::Instant::now();
    let (_, pos) = ingest.position(&shard.id).await?;
    // The last sequence number read (committed or in this run).
    let mut last_seen = pos
        .as_ref()
        .map(|p| p.sequence.clone())
        .unwrap_or_else(SeqNo::zero);
    let mut iterator = stream
        .iterator(&shard.id, pos.as_ref().map(|p| &p.sequence))
        .await?;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let got = match stream.records(&iterator, batch).await {
            Ok(g) => g,
            Err(e) if e.is_retryable() => {
                // Expired iterator, throttling: start again from the committed position.
                tracing::warn!(shard = %shard.id, error = %e.one_line(), "GetRecords failed; retrying");
                tokio::time::sleep(IDLE_POLL).await;
                let (_, pos) = ingest.position(&shard.id).await?;
                iterator = stream
                    .iterator(&shard.id, pos.as_ref().map(|p| &p.sequence))
                    .await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(r) = got.records.last() {
            let _ = idle.send(false);
            match ingest.apply(&shard.id, &got.records).await {
                Ok(_) => last_seen = r.sequence.clone(),
                Err(e) if e.is_retryable() => {
                    // Nothing of the batch counts: read it again from the committed position.
                    tracing::warn!(shard = %shard.id, error = %e.one_line(), "writing a batch failed; retrying it");
                    tokio::time::sleep(IDLE_POLL * 4).await;
                    let (_, pos) = ingest.position(&shard.id).await?;
                    iterator = stream
                        .iterator(&shard.id, pos.as_ref().map(|p| &p.sequence))
                        .await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        // The end: no next iterator (Kinesis), or a closed shard's last sequence number read
        // (emulators that keep returning empty pages for closed shards).
        let at_end =
            got.next_iterator.is_none() || shard.ending.as_ref().is_some_and(|e| last_seen >= *e);
        if at_end {
            ingest.finish(&shard.id).await?;
            tracing::info!(shard = %shard.id, "shard read to its end");
            return Ok(());
        }
        if let Some(next) = got.next_iterator {
            iterator = next;
        }
        if got.records.is_empty() {
            let _ = idle.send(got.millis_behind_latest.is_none_or(|m| m == 0));
            // A shard split or merged while being read: learn its end from ListShards (some
            // emulators never end a closed shard's iterator).
            if shard.ending.is_none() && refreshed.elapsed() >= REBALANCE {
                refreshed = std::time::Instant::now();
                if let Ok(all) = stream.shards().await
                    && let Some(me) = all.into_iter().find(|s| s.id == shard.id)
                {
                    shard = me;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// The consumer against an in-memory stream (`output_rows` is the stream loop tests' reader).
#[cfg(all(test, feature = "postgres"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::engine::shard::tests::{ingest, record};
    use crate::source::kinesis::{Records, ShardRecord};
    use crate::store::{LocalFileStore, PositionStore};

    /// A stream in memory. Iterators are `<shard>/<index>`; every page read is logged.
    #[derive(Clone)]
    struct MemoryShards {
        shards: Arc<Vec<(ShardInfo, Vec<ShardRecord>)>>,
        reads: Arc<Mutex<Vec<String>>>,
    }

    impl MemoryShards {
        fn shard(&self, id: &str) -> Result<&(ShardInfo, Vec<ShardRecord>)> {
            self.shards
                .iter()
                .find(|(s, _)| s.id == id)
                .ok_or_else(|| crate::Error::config(format!("no shard {id}")))
        }
    }

    impl ShardRead for MemoryShards {
        async fn shards(&self) -> Result<Vec<ShardInfo>> {
            Ok(self.shards.iter().map(|(s, _)| s.clone()).collect())
        }

        async fn iterator(&self, shard: &str, after: Option<&SeqNo>) -> Result<String> {
            let records = &self.shard(shard)?.1;
            let i = after.map_or(0, |a| {
                records.iter().take_while(|r| r.sequence <= *a).count()
            });
            Ok(format!("{shard}/{i}"))
        }

        async fn records(&self, iterator: &str, limit: i32) -> Result<Records> {
            let (shard, i) = iterator.rsplit_once('/').unwrap();
            let i: usize = i.parse().unwrap();
            let (info, records) = self.shard(shard)?;
            let end = (i + limit as usize).min(records.len());
            self.reads.lock().unwrap().push(shard.to_string());
            let done = info.ending.is_some() && end == records.len();
            Ok(Records {
                records: records[i..end].to_vec(),
                next_iterator: (!done).then(|| format!("{shard}/{end}")),
                millis_behind_latest: Some(0),
            })
        }
    }

    fn info(id: &str, parent: Option<&str>, ending: Option<u64>) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parent: parent.map(str::to_string),
            adjacent_parent: None,
            ending: ending.map(|e| e.to_string().parse().unwrap()),
        }
    }

    async fn consume(dir: &std::path::Path, stream: &MemoryShards) {
        let consumer = Consumer {
            ingest: ingest(dir),
            stream: stream.clone(),
            owner: "w1".into(),
            lease_ttl: Duration::from_secs(30),
            batch_size: 3,
            until_caught_up: true,
        };
        let (_stop, stop_rx) = watch::channel(false);
        tokio::time::timeout(Duration::from_secs(60), consumer.run(stop_rx))
            .await
            .expect("caught up within a minute")
            .unwrap();
    }

    /// A shard's committed sequence number and whether it is finished.
    async fn position(dir: &std::path::Path, shard: &str) -> (String, bool) {
        let store = LocalFileStore::new(dir.join("state")).unwrap();
        match store
            .load(&shard_checkpoint("k", shard))
            .await
            .unwrap()
            .and_then(|c| c.position)
        {
            Some(SourcePosition::Kinesis(p)) => (p.sequence.to_string(), p.finished),
            other => panic!("{shard}: {other:?}"),
        }
    }

    /// A closed parent is read to its end and marked finished before its child is read; an
    /// open shard is read to its tip; a second run writes nothing again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parents_before_children_and_a_restart_writes_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let stream = MemoryShards {
            shards: Arc::new(vec![
                (
                    info("p", None, Some(5)),
                    (1..=5).map(|i| record(i, i as i64)).collect(),
                ),
                (
                    info("c", Some("p"), None),
                    (6..=10).map(|i| record(i, i as i64)).collect(),
                ),
                (
                    info("o", None, None),
                    (1..=7).map(|i| record(i, 100 + i as i64)).collect(),
                ),
            ]),
            reads: Arc::default(),
        };
        consume(dir.path(), &stream).await;

        let reads = stream.reads.lock().unwrap().clone();
        let last_parent = reads.iter().rposition(|s| s == "p").unwrap();
        let first_child = reads.iter().position(|s| s == "c").unwrap();
        assert!(last_parent < first_child, "{reads:?}");
        assert_eq!(position(dir.path(), "p").await, ("5".into(), true));
        assert_eq!(position(dir.path(), "c").await, ("10".into(), false));
        assert_eq!(position(dir.path(), "o").await, ("7".into(), false));
        let ids = |dir: &std::path::Path| {
            let mut ids: Vec<i64> = crate::engine::stream::tests::output_rows(dir)
                .into_iter()
                .map(|(_, _, id)| id)
                .collect();
            ids.sort();
            ids
        };
        let want: Vec<i64> = (1..=10).chain(101..=107).collect();
        assert_eq!(ids(&dir.path().join("out")), want);

        consume(dir.path(), &stream).await;
        assert_eq!(
            ids(&dir.path().join("out")),
            want,
            "a restart writes nothing again"
        );
    }
}
