//! Failure tests with output to S3 and positions in DynamoDB (local emulator).
//!
//! The real `tidemark` binary writes to `s3://$TIDEMARK_S3_BUCKET/<unique prefix>` with its
//! positions and lease in `dynamodb://<unique table>` (`--create-table`), while a PostgreSQL
//! workload of mixed inserts, updates and deletes runs. Each test downloads its prefix and checks
//! the exactly-once invariant with DuckDB ([`assert_exactly_once`]).
//!
//! - kill -9 at random instants (snapshot and streaming), then catch up;
//! - a zombie worker (SIGSTOP past its lease TTL, caught inside a batch) while another takes
//!   over: it writes nothing, is fenced and stands by;
//! - injected S3/DynamoDB errors (through a loopback proxy) and source connections terminated.
//!
//! Two tests cover bugs these tests found (now fixed): a zombie paused
//! between two SDK attempts of an S3 put writes an orphan object when it resumes, and a worker
//! waits a whole lease TTL for its own lease after a transient error.
//!
//! Needs `infra/local/stack up` and `eval "$(infra/local/stack env)"` (or `infra/local/test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tidemark_e2e::harness::{self, Scenario, assert_exactly_once, versioned_table, workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::Client;

use harness::{STACK_HINT as HINT, aws_endpoint as endpoint, env};

/// Fails (never skips) when any part of the stack is missing.
fn require_stack() {
    for v in [
        "TIDEMARK_PG_URL",
        "TIDEMARK_PG_ADMIN_URL",
        "TIDEMARK_PYTHON",
        "TIDEMARK_S3_BUCKET",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        env(v);
    }
    endpoint();
    harness::bin();
}

fn python(script: &str, args: &[&str]) -> String {
    let py = env("TIDEMARK_PYTHON");
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint())
        .output()
        .unwrap_or_else(|e| panic!("run {py}: {e} ({HINT})"));
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One test's S3 prefix and DynamoDB table.
pub(crate) struct Aws {
    /// The source URL the workers use.
    pub(crate) source_url: String,
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    pub(crate) table: String,
}

impl Aws {
    pub(crate) fn new(tag: &str) -> Aws {
        require_stack();
        let id = fastrand::u64(..);
        Aws {
            source_url: harness::pg_url(),
            bucket: env("TIDEMARK_S3_BUCKET"),
            prefix: format!("e2e-aws-{tag}-{id:016x}"),
            table: format!("tidemark-e2e-{tag}-{id:016x}"),
        }
    }

    pub(crate) fn output(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    pub(crate) fn positions(&self) -> String {
        format!("dynamodb://{}", self.table)
    }

    /// `tidemark run` for the scenario's pipeline with this output and position store, talking
    /// to AWS through `aws_endpoint`.
    pub(crate) fn run(
        &self,
        s: &Scenario,
        aws_endpoint: &str,
        tables: &[&str],
        extra: &[&str],
    ) -> Command {
        let mut c = Command::new(harness::bin());
        c.arg("run")
            .arg("--pipeline")
            .arg(&s.name)
            .arg("--source-url")
            .arg(&self.source_url)
            .arg("--output")
            .arg(self.output())
            .arg("--positions")
            .arg(self.positions())
            .arg("--create-table")
            .arg("--metrics")
            .arg("off")
            .env("TIDEMARK_STATE_HOME", s.state())
            .env("TIDEMARK_LOG_FORMAT", "json")
            .env("TIDEMARK_LOG", "info")
            .env("AWS_ENDPOINT_URL", aws_endpoint)
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env_remove("AWS_ENDPOINT_URL_DYNAMODB");
        for t in tables {
            c.arg("--table").arg(t);
        }
        c.args(extra);
        c
    }

    /// `--until-caught-up` once, which must succeed; returns its log.
    pub(crate) fn catch_up(&self, s: &Scenario, aws_endpoint: &str, tables: &[&str]) -> String {
        let started = Instant::now();
        let out = self
            .run(
                s,
                aws_endpoint,
                tables,
                &[
                    "--until-caught-up",
                    "--flush-interval-ms",
                    "300",
                    "--lease-ttl-secs",
                    "3",
                ],
            )
            .stdout(Stdio::null())
            .output()
            .expect("spawn tidemark");
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "tidemark run --until-caught-up failed ({}):\n{log}",
            out.status
        );
        eprintln!("caught up in {:.1}s", started.elapsed().as_secs_f64());
        log
    }

    /// Downloads every current object under the prefix into `dest`, laid out as the local output
    /// would be (`dest/<pipeline>/<schema>.<table>/...`). Returns the number of objects.
    pub(crate) fn download(&self, dest: &Path) -> usize {
        let _ = std::fs::remove_dir_all(dest);
        std::fs::create_dir_all(dest).unwrap();
        let script = r#"
import os, sys, boto3
bucket, prefix, dest = sys.argv[1:4]
s3 = boto3.client('s3')
n = 0
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix + '/'):
    for o in page.get('Contents', []):
        path = os.path.join(dest, o['Key'][len(prefix) + 1:])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, o['Key'], path)
        n += 1
print(n)
"#;
        python(
            script,
            &[
                &self.bucket,
                &self.prefix,
                dest.to_str().expect("utf-8 path"),
            ],
        )
        .parse()
        .expect("object count")
    }

    /// The pipeline's DynamoDB item: `{"checkpoint": {...}, "lease_owner", "lease_epoch", ...}`
    /// (a binary attribute as its length).
    pub(crate) fn item(&self, pipeline: &str) -> Json {
        let script = r#"
import json, sys, boto3
r = boto3.client('dynamodb').get_item(TableName=sys.argv[1], Key={'pk': {'S': 'pipeline#' + sys.argv[2]}}, ConsistentRead=True)
item = {k: list(v.values())[0] for k, v in r.get('Item', {}).items()}
item = {k: len(v) if isinstance(v, bytes) else v for k, v in item.items()}
if 'checkpoint' in item:
    item['checkpoint'] = json.loads(item['checkpoint'])
print(json.dumps(item))
"#;
        serde_json::from_str(&python(script, &[&self.table, pipeline])).expect("item json")
    }

    pub(crate) fn drop_table(&self) {
        python(
            "import sys, boto3; boto3.client('dynamodb').delete_table(TableName=sys.argv[1])",
            &[&self.table],
        );
    }
}

/// `url` with `param` added to its query string.
fn with_query(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// Downloads the output, checks that no batch is left half-written, and checks exactly-once.
/// Returns the number of output rows checked.
async fn check_output(s: &Scenario, aws: &Aws, c: &Client, table: &str) -> usize {
    let item = aws.item(&s.name);
    assert!(
        !item["checkpoint"]["position"].is_null() && item["checkpoint"]["intent"].is_null(),
        "no committed position, or a write intent left, after catching up: {item}"
    );
    let objects = aws.download(&s.out());
    assert!(objects > 0, "nothing under {}", aws.output());
    let rows = assert_exactly_once(s, c, table).await;
    eprintln!("{objects} objects downloaded from {}", aws.output());
    rows
}

/// Drops the slot and publication (harness), the source table and the DynamoDB table.
async fn clean_up(s: &Scenario, aws: &Aws, c: &Client, table: &str) {
    s.cleanup(c).await;
    c.batch_execute(&format!("drop table if exists {table}"))
        .await
        .unwrap();
    aws.drop_table();
}

/// On a failing test (panic), removes what the test created so that failed runs do not pile up
/// replication slots (retaining WAL) or DynamoDB tables. Workers are killed before (declared later,
/// dropped first).
struct CleanupOnPanic {
    slot: String,
    table: String,
    dynamodb_table: String,
}

impl CleanupOnPanic {
    fn new(s: &Scenario, aws: &Aws, table: &str) -> Self {
        CleanupOnPanic {
            slot: format!("tidemark_{}", s.name),
            table: table.to_string(),
            dynamodb_table: aws.table.clone(),
        }
    }
}

impl Drop for CleanupOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            harness::clean_up_now(
                std::slice::from_ref(&self.slot),
                &format!("drop table if exists {}", self.table),
                Some(&self.dynamodb_table),
            );
        }
    }
}

/// A running `tidemark` whose stderr (JSON log lines) is collected as it comes.
struct Worker {
    name: &'static str,
    child: Child,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn spawn(name: &'static str, mut cmd: Command) -> Worker {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tidemark");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let log = log.clone();
            move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push((Instant::now(), line));
                }
            }
        });
        Worker {
            name,
            child,
            log,
            reader: Some(reader),
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Log lines whose message is `message` (exactly), with their arrival time.
    fn messages(&self, message: &str) -> Vec<(Instant, Json)> {
        let needle = format!("\"message\":{}", serde_json::to_string(message).unwrap());
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(&needle))
            .filter_map(|(t, l)| Some((*t, serde_json::from_str(l).ok()?)))
            .collect()
    }

    fn count(&self, message: &str) -> usize {
        self.messages(message).len()
    }

    fn text(&self) -> String {
        let log = self.log.lock().unwrap();
        let lines: Vec<&str> = log.iter().map(|(_, l)| l.as_str()).collect();
        lines.join("\n")
    }

    /// Panics with the log if the process has exited.
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "worker {} exited unexpectedly ({status}):\n{}",
                self.name,
                self.text()
            );
        }
    }

    /// Waits until at least `n` log lines have message `message`.
    async fn wait_for(&mut self, message: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(message) < n {
            self.assert_alive();
            assert!(
                Instant::now() < deadline,
                "worker {}: no {n} x {message:?} within {timeout:?}:\n{}",
                self.name,
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    fn finish(&mut self) -> ExitStatus {
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        status
    }

    /// SIGKILL, then the whole log.
    fn kill9(mut self) -> String {
        self.child.kill().unwrap();
        self.finish();
        self.text()
    }

    /// SIGTERM, then the exit status (waiting at most `timeout`) and the whole log.
    async fn stop(mut self, timeout: Duration) -> (ExitStatus, String) {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                self.finish();
                panic!(
                    "worker {} did not stop within {timeout:?} of SIGTERM:\n{}",
                    self.name,
                    self.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = self.finish();
        (status, self.text())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").args(["-CONT", &self.pid()]).status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 loop
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_loop_on_s3_and_dynamodb_is_exactly_once() {
    let aws = Aws::new("kill9");
    let c = harness::sql().await;
    let s = Scenario::new("awskill");
    let table = format!("t_{}", s.name);
    let _cleanup = CleanupOnPanic::new(&s, &aws, &table);
    let initial = 80_000;
    versioned_table(&c, &table, initial).await;
    let qualified = format!("public.{table}");
    let tables = [qualified.as_str()];

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(workload(table.clone(), initial + 1, stop_rx));
    // A pass-through proxy shows when a batch's object is being written.
    let proxy = Proxy::start(|_| Action::Forward).await;
    let started = Instant::now();
    let (mut kills, mut in_snapshot, mut anchored) = (0, 0, 0);
    let (mut recovered, mut batches, mut resumed) = (0, 0, 0);
    let mut snapshot_done = false;
    while kills < 20 {
        // Small batches and snapshot parts put kills between intent, objects and commit.
        let mut w = Worker::spawn(
            "kill9",
            aws.run(
                &s,
                &proxy.url(),
                &tables,
                &[
                    "--lease-ttl-secs",
                    "3",
                    "--flush-interval-ms",
                    "100",
                    "--max-batch-rows",
                    "300",
                    "--snapshot-part-rows",
                    "1000",
                ],
            ),
        );
        // The previous worker's lease lapses (up to the TTL) before this one starts work: the
        // random instant is measured from the moment it holds the lease. Three kills land in the
        // snapshot; then it is let finish (each resumed copy starts with a new snapshot).
        w.wait_for("holding the pipeline's lease", 1, Duration::from_secs(30))
            .await;
        if !snapshot_done && in_snapshot >= 3 {
            w.wait_for(
                "snapshot complete; streaming from its consistent point",
                1,
                Duration::from_secs(60),
            )
            .await;
            snapshot_done = true;
        }
        if !snapshot_done && in_snapshot < 3 {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(50..500))).await;
        } else if kills % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(100..1_200))).await;
        } else {
            // Every other kill while streaming: a random instant shortly after a batch's object
            // write starts (in flight, written but not committed, committing, or just after: on
            // the emulator the commit follows the object's PUT by about 10 ms).
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..600))).await;
            let puts = proxy.s3_puts();
            let deadline = Instant::now() + Duration::from_secs(10);
            while proxy.s3_puts() == puts && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..12))).await;
            anchored += 1;
        }
        w.assert_alive();
        snapshot_done |= w.count("snapshot complete; streaming from its consistent point") > 0;
        in_snapshot += usize::from(!snapshot_done);
        batches += w.count("committed batch");
        let log = w.kill9();
        kills += 1;
        recovered += usize::from(log.contains("found an unfinished batch from a previous run"));
        resumed += usize::from(log.contains("resuming the interrupted snapshot"));
    }
    let kill_secs = started.elapsed().as_secs_f64();
    stop_tx.send(true).unwrap();
    let ops = writer.await.unwrap();
    let log = aws.catch_up(&s, &proxy.url(), &tables);
    recovered += usize::from(log.contains("found an unfinished batch from a previous run"));

    let checked = check_output(&s, &aws, &c, &table).await;
    eprintln!(
        "kill -9 x{kills} in {kill_secs:.0}s ({in_snapshot} during the snapshot, {} while streaming, {anchored} of them \
         just after an object write began; {resumed} runs resumed the snapshot, {recovered} found an unfinished batch \
         to clean up; {batches} batches committed between kills): {ops} operations, {checked} output rows checked",
        kills - in_snapshot
    );
    assert!(
        in_snapshot >= 2 && resumed >= 1,
        "{in_snapshot} kills landed inside the snapshot, {resumed} runs resumed it"
    );
    assert!(kills - in_snapshot >= 10, "too few kills while streaming");
    assert!(batches > 0, "no batch was committed between kills");
    assert!(
        recovered >= 2,
        "only {recovered} kills left an unfinished batch behind"
    );
    assert!(checked as i64 > initial, "rows checked {checked}");
    clean_up(&s, &aws, &c, &table).await;
}

// ---------------------------------------------------------------------------------------------
// 2. zombie
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_worker_paused_past_its_lease_writes_nothing() {
    zombie(Pause::InsideCommit).await;
}

/// Demonstrates a fencing gap: the lease is checked once before an S3 put, and the SDK's retries
/// of that put run without it. A worker paused between two attempts writes its object when it
/// resumes, after the new owner has cleaned up its batch: an orphan object whose rows the new
/// owner also writes (duplicates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_paused_inside_an_s3_retry_writes_nothing() {
    zombie(Pause::InsideS3Retry).await;
}

/// Where the zombie is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// Inside a batch: its intent is saved and its object written, the response held back.
    InsideCommit,
    /// Inside a batch, between two attempts of its S3 put (the first answered 503 SlowDown).
    InsideS3Retry,
}

/// Worker A streams; it is caught inside a batch (see [`Pause`]) and SIGSTOPped past its lease
/// TTL while the workload goes on; worker B takes over (new epoch), cleans up A's unfinished
/// batch and commits; A is resumed and must write nothing, notice it was fenced and stand by.
async fn zombie(pause: Pause) {
    let mut aws = Aws::new("zombie");
    // The paused worker's replication connection holds the slot until the server gives up on it
    // (wal_sender_timeout, 60 s by default): only then can the new owner stream. A short
    // per-connection timeout keeps the takeover within the test's time.
    aws.source_url = with_query(&aws.source_url, "options=-c%20wal_sender_timeout%3D4s");
    let c = harness::sql().await;
    let s = Scenario::new("awszombie");
    let table = format!("t_{}", s.name);
    let _cleanup = CleanupOnPanic::new(&s, &aws, &table);
    let initial = 5_000;
    versioned_table(&c, &table, initial).await;
    let qualified = format!("public.{table}");
    let tables = [qualified.as_str()];
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(workload(table.clone(), initial + 1, stop_rx));

    // A talks to AWS through a proxy: every request it makes is attributed to it, and the
    // trap catches it inside a batch.
    let trap = Arc::new(AtomicBool::new(false));
    let proxy_a = Proxy::start({
        let trap = trap.clone();
        move |r| {
            if !(trap.load(Ordering::SeqCst) && r.service == Service::S3 && r.method == "PUT") {
                Action::Forward
            } else if pause == Pause::InsideCommit {
                Action::HoldResponse
            } else {
                Action::Fail(Fault::S3SlowDown)
            }
        }
    })
    .await;
    let direct = endpoint();
    let flags = [
        "--lease-ttl-secs",
        "3",
        "--flush-interval-ms",
        "200",
        "--max-batch-rows",
        "300",
    ];
    let mut a = Worker::spawn("A", aws.run(&s, &proxy_a.url(), &tables, &flags));
    a.wait_for("streaming", 1, Duration::from_secs(60)).await;
    a.wait_for("committed batch", 3, Duration::from_secs(30))
        .await;
    let epoch = |w: &Worker| w.messages("holding the pipeline's lease")[0].1["epoch"].as_u64();
    let epoch_a = epoch(&a).expect("A's epoch");

    // Caught inside a batch, then paused past its TTL while the workload goes on.
    trap.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy_a.held() + proxy_a.injected(Service::S3) == 0 {
        a.assert_alive();
        assert!(
            Instant::now() < deadline,
            "A wrote no object:\n{}",
            a.text()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.signal("STOP");
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut b = Worker::spawn("B", aws.run(&s, &direct, &tables, &flags));
    b.wait_for("holding the pipeline's lease", 1, Duration::from_secs(20))
        .await;
    let epoch_b = epoch(&b).expect("B's epoch");
    assert!(
        epoch_b > epoch_a,
        "B took over with epoch {epoch_b} <= A's {epoch_a}"
    );
    b.wait_for("streaming", 1, Duration::from_secs(60)).await;
    assert!(
        b.text()
            .contains("found an unfinished batch from a previous run"),
        "B did not clean up A's unfinished batch:\n{}",
        b.text()
    );
    b.wait_for("committed batch", 3, Duration::from_secs(30))
        .await;
    let takeover_secs = stopped.elapsed().as_secs_f64();

    // A resumes (its held response delivered, its put's retry let through): it must write
    // nothing, notice it lost the lease, and stand by.
    let resumed = Instant::now();
    trap.store(false, Ordering::SeqCst);
    proxy_a.open_gate();
    a.signal("CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    a.assert_alive();
    b.assert_alive();
    let a_log = a.text();
    let after: Vec<Exchange> = proxy_a
        .exchanges()
        .into_iter()
        .filter(|e| e.at >= resumed)
        .collect();
    let written: Vec<&Exchange> = after
        .iter()
        .filter(|e| e.write && e.status.is_some_and(|s| (200..300).contains(&s)))
        .collect();
    if !written.is_empty() {
        eprintln!("A's writes accepted after it resumed (B holds epoch {epoch_b}): {written:#?}");
    }
    let refused = after.iter().filter(|e| e.write).count() - written.len();
    let after_resume = |w: &Worker, message: &str| {
        w.messages(message)
            .iter()
            .filter(|(t, _)| *t > resumed)
            .count()
    };
    for message in [
        "another worker took over this pipeline; standing by",
        "standing by: another worker runs this pipeline",
    ] {
        assert!(
            after_resume(&a, message) >= 1,
            "A logged no {message:?} after resuming:\n{a_log}"
        );
    }
    assert!(
        a_log.contains("this worker stops writing"),
        "A's commit was not fenced:\n{a_log}"
    );
    assert_eq!(
        after_resume(&a, "committed batch"),
        0,
        "A committed after resuming:\n{a_log}"
    );
    let b_batches = b.count("committed batch");

    // Both stop cleanly (A first: B's release would hand A the lease).
    let (status, log) = a.stop(Duration::from_secs(30)).await;
    assert!(status.success(), "A: {status}\n{log}");
    b.wait_for("committed batch", b_batches + 1, Duration::from_secs(30))
        .await;
    let (status, log) = b.stop(Duration::from_secs(30)).await;
    assert!(status.success(), "B: {status}\n{log}");
    stop_tx.send(true).unwrap();
    let ops = writer.await.unwrap();
    aws.catch_up(&s, &direct, &tables);

    let checked = check_output(&s, &aws, &c, &table).await;
    assert!(
        written.is_empty(),
        "A wrote after it resumed although B had taken over (epoch {epoch_b}): {written:#?}"
    );
    eprintln!(
        "zombie ({pause:?}): A (epoch {epoch_a}) paused, B took over (epoch {epoch_b}) within {takeover_secs:.1}s, \
         cleaned up A's batch and had committed {b_batches} batches 4s after A resumed; after resuming, A made {} AWS \
         requests ({refused} writes, all refused) and committed nothing; {ops} operations, {checked} output rows checked",
        after.len()
    );
    clean_up(&s, &aws, &c, &table).await;
}

// ---------------------------------------------------------------------------------------------
// 3. faults
// ---------------------------------------------------------------------------------------------

/// About 15% of S3 and DynamoDB requests fail (500 / 503 SlowDown; ThrottlingException / 500),
/// never reaching the emulator; at least one in 8 of each service's requests, so that both
/// services see faults even in a short run.
fn random_faults() -> impl Fn(&Request) -> Action + Send + Sync + 'static {
    let since_fault = [AtomicUsize::new(0), AtomicUsize::new(0)];
    move |r| {
        let streak = &since_fault[usize::from(r.service == Service::DynamoDb)];
        if fastrand::f64() >= 0.15 && streak.fetch_add(1, Ordering::SeqCst) < 7 {
            return Action::Forward;
        }
        streak.store(0, Ordering::SeqCst);
        Action::Fail(match (r.service, fastrand::bool()) {
            (Service::S3, true) => Fault::S3SlowDown,
            (Service::S3, false) => Fault::S3InternalError,
            (Service::DynamoDb, true) => Fault::DynamoThrottling,
            (Service::DynamoDb, false) => Fault::DynamoInternalError,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_errors_and_dropped_source_connections_are_ridden_out() {
    let aws = Aws::new("faults");
    let c = harness::sql().await;
    let admin = harness::admin_sql().await;
    let s = Scenario::new("awsfault");
    let table = format!("t_{}", s.name);
    let _cleanup = CleanupOnPanic::new(&s, &aws, &table);
    let initial = 5_000;
    versioned_table(&c, &table, initial).await;
    let qualified = format!("public.{table}");
    let tables = [qualified.as_str()];
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(workload(table.clone(), initial + 1, stop_rx));

    let proxy = Proxy::start(random_faults()).await;
    // A short lease TTL: after each dropped connection the worker waits for its own lease to
    // lapse before it streams again (see the ignored test below).
    let flags = [
        "--lease-ttl-secs",
        "3",
        "--flush-interval-ms",
        "200",
        "--max-batch-rows",
        "500",
    ];
    let mut w = Worker::spawn("faults", aws.run(&s, &proxy.url(), &tables, &flags));
    // The replication connection is terminated whenever it has been up for 1.5 s, for 20 s (up
    // to 35 s until it was terminated 3 times: injected errors can stall a reconnect for a while).
    let slot = format!("tidemark_{}", s.name);
    let started = Instant::now();
    let mut terminations = Vec::new();
    let mut up_since: Option<(i32, Instant)> = None;
    while started.elapsed() < Duration::from_secs(20)
        || (terminations.len() < 3 && started.elapsed() < Duration::from_secs(35))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.assert_alive();
        let pid: Option<i32> = admin
            .query_opt(
                "select active_pid from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .and_then(|r| r.get(0));
        up_since = match (pid, up_since) {
            (Some(p), Some((q, since)))
                if p == q && since.elapsed() >= Duration::from_millis(1_500) =>
            {
                let killed: bool = admin
                    .query_one("select pg_terminate_backend($1)", &[&p])
                    .await
                    .unwrap()
                    .get(0);
                if killed {
                    terminations.push(Instant::now());
                }
                None
            }
            (Some(p), Some((q, since))) if p == q => Some((q, since)),
            (Some(p), _) => Some((p, Instant::now())),
            (None, _) => None,
        };
    }
    stop_tx.send(true).unwrap();
    let ops = writer.await.unwrap();
    let first = *terminations
        .first()
        .expect("no source connection was terminated");
    let batches = w.messages("committed batch");
    let after_first = batches.iter().filter(|(t, _)| *t > first).count();
    let reconnects = w.count("connection lost; reconnecting");
    let (status, log) = w.stop(Duration::from_secs(60)).await;
    // 0, or 1 when the last terminated connection's error surfaces during the graceful stop
    // (what was flushed is committed); never a panic, a signal or the stop timeout (3).
    let last = log.lines().last().unwrap_or_default();
    eprintln!("faulted worker stopped on SIGTERM: {status} ({last})");
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "faulted worker on SIGTERM: {status}\n{log}"
    );
    assert!(
        after_first > 0 && reconnects > 0,
        "no progress after the source connection was terminated ({reconnects} reconnects, {after_first} batches after):\n{log}"
    );
    // Catch up through the same faults.
    aws.catch_up(&s, &proxy.url(), &tables);

    let (s3, ddb) = (
        proxy.injected(Service::S3),
        proxy.injected(Service::DynamoDb),
    );
    let total = proxy.exchanges().len();
    let by_op = proxy.injected_by_operation();
    let checked = check_output(&s, &aws, &c, &table).await;
    eprintln!(
        "faults: {s3} S3 and {ddb} DynamoDB errors injected in {total} requests ({by_op:?}), {} source connections terminated, \
         {reconnects} reconnects; {} batches committed ({after_first} after the first termination); \
         {ops} operations, {checked} output rows checked",
        terminations.len(),
        batches.len()
    );
    assert!(
        s3 > 0 && ddb > 0,
        "faults injected: S3 {s3}, DynamoDB {ddb}"
    );
    assert!(
        terminations.len() >= 2,
        "{} source connections terminated",
        terminations.len()
    );
    clean_up(&s, &aws, &c, &table).await;
}

/// Demonstrates that after a transient error (here: its source connection terminated) a worker
/// waits for its own lease to expire before it streams again: `Pipeline::run` leaves the lease
/// unreleased on error and the binary's retry calls `run` again, which takes a new owner id
/// (`lease::owner_id`), so the worker stands by behind itself for up to the lease TTL (30 s by
/// default) instead of the 0.5-1 s backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_a_dropped_source_connection_does_not_wait_for_its_own_lease() {
    let aws = Aws::new("reconnect");
    let c = harness::sql().await;
    let admin = harness::admin_sql().await;
    let s = Scenario::new("awsreconn");
    let table = format!("t_{}", s.name);
    let _cleanup = CleanupOnPanic::new(&s, &aws, &table);
    versioned_table(&c, &table, 1_000).await;
    let qualified = format!("public.{table}");
    let tables = [qualified.as_str()];
    let mut w = Worker::spawn(
        "reconnect",
        aws.run(&s, &endpoint(), &tables, &["--lease-ttl-secs", "30"]),
    );
    w.wait_for("streaming", 1, Duration::from_secs(60)).await;
    let killed: bool = admin
        .query_one(
            "select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1",
            &[&format!("tidemark_{}", s.name)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let t = Instant::now();
    while w.count("streaming") < 2 && t.elapsed() < Duration::from_secs(15) {
        w.assert_alive();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = w.count("streaming") == 2;
    let secs = t.elapsed().as_secs_f64();
    let (_, log) = w.stop(Duration::from_secs(30)).await;
    clean_up(&s, &aws, &c, &table).await;
    assert!(
        resumed,
        "the worker was not streaming again {secs:.0}s after its source connection was terminated:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// A loopback HTTP proxy in front of the emulator
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    S3,
    DynamoDb,
}

/// What the proxy answers instead of forwarding a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// S3 `500 InternalError` (XML body).
    S3InternalError,
    /// S3 `503 SlowDown` (XML body).
    S3SlowDown,
    /// DynamoDB `400 ThrottlingException` (JSON body).
    DynamoThrottling,
    /// DynamoDB `500 InternalServerError` (JSON body).
    DynamoInternalError,
}

/// One request as the rule sees it.
struct Request<'a> {
    service: Service,
    method: &'a str,
    /// DynamoDB: the `x-amz-target` operation (`UpdateItem`); S3: the request line.
    op: &'a str,
}

impl Request<'_> {
    /// Whether the request may change state (a write the lease must fence).
    fn is_write(&self) -> bool {
        match self.service {
            Service::S3 => matches!(self.method, "PUT" | "POST" | "DELETE"),
            Service::DynamoDb => matches!(
                self.op,
                "PutItem"
                    | "UpdateItem"
                    | "DeleteItem"
                    | "BatchWriteItem"
                    | "TransactWriteItems"
                    | "CreateTable"
                    | "DeleteTable"
            ),
        }
    }
}

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Forward,
    /// Answer with an error; the emulator never sees the request.
    Fail(Fault),
    /// Forward, but hold the response back until the proxy's gate opens.
    HoldResponse,
}

/// One request that went through the proxy.
#[derive(Debug, Clone)]
struct Exchange {
    /// When the whole request had arrived.
    at: Instant,
    service: Service,
    op: String,
    write: bool,
    /// The status the client got (`None`: no response, e.g. the upstream connection failed).
    status: Option<u16>,
    injected: Option<Fault>,
}

impl Exchange {
    /// The API operation: DynamoDB's target, S3's `x-id` query parameter, else the method
    /// (`PUT`, `HEAD`, ...; `DELETE` is DeleteObject, `GET` GetObject or ListObjectsV2).
    fn operation(&self) -> String {
        match self.service {
            Service::DynamoDb => self.op.clone(),
            Service::S3 => {
                let target = self.op.split(' ').nth(1).unwrap_or_default();
                let x_id = target
                    .split_once('?')
                    .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("x-id=")));
                match x_id {
                    Some(id) => id.to_string(),
                    None => format!("S3 {}", self.op.split(' ').next().unwrap_or_default()),
                }
            }
        }
    }
}

type Rule = dyn Fn(&Request) -> Action + Send + Sync;

/// Forwards to the emulator, except what `rule` says otherwise: an injected error, or a
/// response held back until [`Proxy::open_gate`]. Every exchange is `Connection: close`, so each
/// request comes through on its own connection and the rule sees all of them; request bodies
/// (Content-Length or chunked) are read whole before anything is answered or forwarded.
struct Proxy {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Exchange>>>,
    gate: tokio::sync::watch::Sender<bool>,
    held: Arc<AtomicUsize>,
    puts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What every exchange of one proxy shares.
struct Shared {
    upstream: String,
    rule: Box<Rule>,
    log: Arc<Mutex<Vec<Exchange>>>,
    gate: tokio::sync::watch::Receiver<bool>,
    held: Arc<AtomicUsize>,
    /// S3 PUT requests received (counted on arrival, before they are forwarded).
    puts: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(rule: impl Fn(&Request) -> Action + Send + Sync + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(AtomicUsize::new(0));
        let puts = Arc::new(AtomicUsize::new(0));
        let (gate, gate_rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            upstream: endpoint().trim_start_matches("http://").to_string(),
            rule: Box::new(rule),
            log: log.clone(),
            gate: gate_rx,
            held: held.clone(),
            puts: puts.clone(),
        });
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = exchange(conn, &shared).await;
                });
            }
        });
        Proxy {
            addr,
            log,
            gate,
            held,
            puts,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }

    /// Injected faults per service.
    fn injected(&self, service: Service) -> usize {
        self.exchanges()
            .iter()
            .filter(|e| e.service == service && e.injected.is_some())
            .count()
    }

    /// Injected faults per operation (`UpdateItem`, `PutObject`, ...).
    fn injected_by_operation(&self) -> BTreeMap<String, usize> {
        let mut by_op = BTreeMap::new();
        for e in self.exchanges().iter().filter(|e| e.injected.is_some()) {
            *by_op.entry(e.operation()).or_default() += 1;
        }
        by_op
    }

    /// S3 PUT requests received so far (objects and parts being written).
    fn s3_puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }

    /// Responses held back so far.
    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Releases the held responses (and lets later ones through).
    fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.open_gate();
        self.task.abort();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads from `r` into `buf` until it holds a complete HTTP head; its length, or `None` at EOF.
async fn read_head(
    r: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The length of a complete chunked body at the start of `data` (trailers included), or `None`
/// while it is incomplete.
fn chunked_len(data: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let line_end = pos + find(&data[pos..], b"\r\n")?;
        let line = std::str::from_utf8(&data[pos..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = pos + find(&data[pos..], b"\r\n")?;
                if end == pos {
                    return Some(pos + 2);
                }
                pos = end + 2;
            }
        }
        if data.len() < pos + size + 2 {
            return None;
        }
        pos += size + 2;
    }
}

/// A header's value (first occurrence, case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The head with `Connection` and `Expect` headers replaced by `connection: close`.
fn connection_close(head: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for line in String::from_utf8_lossy(head).split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if !line.is_empty() && !lower.starts_with("connection:") && !lower.starts_with("expect:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("connection: close\r\n\r\n");
    out.into_bytes()
}

fn fault_response(f: Fault, head_only: bool) -> Vec<u8> {
    let (status, reason, ctype, body) = match f {
        Fault::S3InternalError | Fault::S3SlowDown => {
            let (status, reason, code) = if f == Fault::S3SlowDown {
                (503, "Slow Down", "SlowDown")
            } else {
                (500, "Internal Server Error", "InternalError")
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>proxy</RequestId></Error>"
            );
            (status, reason, "application/xml", body)
        }
        Fault::DynamoThrottling => (
            400,
            "Bad Request",
            "application/x-amz-json-1.0",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate exceeded"}"#.to_string(),
        ),
        Fault::DynamoInternalError => (
            500,
            "Internal Server Error",
            "application/x-amz-json-1.0",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"Internal server error (injected)"}"#.to_string(),
        ),
    };
    let body = if head_only { String::new() } else { body };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nx-amzn-requestid: proxy\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn exchange(mut client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let Some(head_end) = read_head(&mut client, &mut buf).await? else {
        return Ok(());
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let line = head.split("\r\n").next().unwrap_or_default().to_string();
    let method = line.split(' ').next().unwrap_or_default().to_string();
    let target = header(&head, "x-amz-target").map(str::to_string);

    // The whole body, whatever its framing.
    if header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let complete = if chunked {
            chunked_len(&buf[head_end..]).is_some()
        } else {
            buf.len() >= head_end + length
        };
        if complete {
            break;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(()); // the client gave up mid-request
        }
        buf.extend_from_slice(&chunk[..n]);
    }

    let (service, op) = match &target {
        Some(t) => (
            Service::DynamoDb,
            t.rsplit('.').next().unwrap_or(t).to_string(),
        ),
        None => (Service::S3, line.clone()),
    };
    let req = Request {
        service,
        method: &method,
        op: &op,
    };
    if service == Service::S3 && method == "PUT" {
        shared.puts.fetch_add(1, Ordering::SeqCst);
    }
    let action = (shared.rule)(&req);
    let mut record = Exchange {
        at: Instant::now(),
        service,
        op: op.clone(),
        write: req.is_write(),
        status: None,
        injected: None,
    };

    if let Action::Fail(fault) = action {
        let resp = fault_response(fault, method == "HEAD");
        record.status = std::str::from_utf8(&resp[9..12])
            .ok()
            .and_then(|s| s.parse().ok());
        record.injected = Some(fault);
        shared.log.lock().unwrap().push(record);
        client.write_all(&resp).await?;
        client.shutdown().await?;
        return Ok(());
    }

    let result = async {
        let mut up = TcpStream::connect(&shared.upstream).await?;
        up.write_all(&connection_close(&buf[..head_end])).await?;
        up.write_all(&buf[head_end..]).await?;
        let mut resp = Vec::new();
        let Some(resp_end) = read_head(&mut up, &mut resp).await? else {
            return Ok(());
        };
        record.status = String::from_utf8_lossy(&resp[..resp_end])
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok());
        if action == Action::HoldResponse {
            shared.held.fetch_add(1, Ordering::SeqCst);
            let mut gate = shared.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
        client
            .write_all(&connection_close(&resp[..resp_end]))
            .await?;
        client.write_all(&resp[resp_end..]).await?;
        tokio::io::copy(&mut up, &mut client).await?;
        client.shutdown().await
    }
    .await;
    shared.log.lock().unwrap().push(record);
    result
}

#[test]
fn proxy_frames_chunked_bodies() {
    let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nx-amz-checksum-crc32: AAAAAA==\r\n\r\n";
    assert_eq!(chunked_len(body), Some(body.len()));
    let mut more = body.to_vec();
    more.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(chunked_len(&more), Some(body.len()));
    for cut in 0..body.len() {
        assert_eq!(chunked_len(&body[..cut]), None, "{cut}");
    }
    assert_eq!(chunked_len(b"0\r\n\r\n"), Some(5));
    let head = "PUT /b/k HTTP/1.1\r\nHost: x\r\nX-Amz-Target: DynamoDB_20120810.UpdateItem\r\n\r\n";
    assert_eq!(
        header(head, "x-amz-target"),
        Some("DynamoDB_20120810.UpdateItem")
    );
    assert_eq!(header(head, "expect"), None);
}
