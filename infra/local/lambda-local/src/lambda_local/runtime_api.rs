//! A Lambda Runtime API emulator: runs a function binary (its real `lambda_runtime` loop) and
//! hands it one invocation at a time over the Runtime API on 127.0.0.1, as Lambda does.
//!
//! Contract: [`LocalFunction::invoke`] starts the process when none runs (a cold start, timed
//! as init), delivers the payload on the function's next `GET /invocation/next`, and returns
//! its response or error; a process that exits or exceeds the timeout mid-invocation is killed
//! and the invocation fails, and the next invocation starts a new process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The function returned this body.
    Response(Vec<u8>),
    /// The function reported an error (its error body).
    Error(String),
    /// The process exited or timed out mid-invocation.
    Crashed(String),
}

struct Job {
    id: String,
    payload: Vec<u8>,
    deadline_ms: i64,
    done: oneshot::Sender<Outcome>,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Outcome>>>>;

/// A function binary behind a local Runtime API.
pub struct LocalFunction {
    binary: PathBuf,
    name: String,
    timeout: Duration,
    addr: SocketAddr,
    jobs: mpsc::Sender<Job>,
    /// Counts the function's `next` calls: the first after a spawn ends its init.
    ready: tokio::sync::watch::Receiver<u64>,
    child: Option<Child>,
    /// Init durations of the cold starts so far (spawn to the first `next`).
    pub inits: Vec<Duration>,
    spawned_at: Option<Instant>,
    seq: u64,
    /// Fraction of invocations in which the process is killed at a random instant (chaos
    /// testing of crash recovery: between object writes, before or after the commit).
    pub chaos_kill_rate: f64,
}

impl LocalFunction {
    pub async fn start(binary: PathBuf, timeout: Duration) -> Result<LocalFunction> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (jobs, jobs_rx) = mpsc::channel::<Job>(1);
        let (next_tx, next_rx) = mpsc::channel::<oneshot::Sender<Job>>(4);
        let pending: Pending = Arc::default();
        let (ready_tx, ready) = tokio::sync::watch::channel(0u64);
        tokio::spawn(dispatch(jobs_rx, next_rx));
        tokio::spawn(serve(listener, next_tx, pending, Arc::new(ready_tx)));
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "function".into());
        Ok(LocalFunction {
            binary,
            name,
            timeout,
            addr,
            jobs,
            ready,
            child: None,
            inits: Vec::new(),
            spawned_at: None,
            seq: 0,
            chaos_kill_rate: 0.0,
        })
    }

    fn spawn(&mut self) -> Result<()> {
        // The function logs to stdout (CloudWatch in AWS); here that goes to our stderr, so
        // this process's stdout carries only its own report.
        let stdout = {
            use std::os::fd::AsFd;
            std::process::Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?)
        };
        let child = Command::new(&self.binary)
            .stdout(stdout)
            .env("AWS_LAMBDA_RUNTIME_API", self.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", self.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the function {}", self.binary.display()))?;
        self.child = Some(child);
        self.ready.borrow_and_update();
        self.spawned_at = Some(Instant::now());
        Ok(())
    }

    /// Invokes the function with `payload` and waits for the outcome.
    pub async fn invoke(&mut self, payload: Vec<u8>) -> Result<Outcome> {
        if self.child.is_none() {
            self.spawn()?;
        }
        self.seq += 1;
        let id = format!("local-{:08}", self.seq);
        let (done, outcome) = oneshot::channel();
        let deadline_ms = chrono::Utc::now().timestamp_millis() + self.timeout.as_millis() as i64;
        self.jobs
            .send(Job {
                id,
                payload,
                deadline_ms,
                done,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the runtime API stopped"))?;
        let Some(child) = self.child.as_mut() else {
            bail!("no function process");
        };
        let ready = &mut self.ready;
        let spawned_at = self.spawned_at;
        let inits = &mut self.inits;
        let mut outcome = std::pin::pin!(outcome);
        let mut init_seen = spawned_at.is_none();
        let timeout = self.timeout;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let chaos = fastrand::f64() < self.chaos_kill_rate;
        let kill = tokio::time::sleep(Duration::from_micros(fastrand::u64(0..15_000)));
        tokio::pin!(kill);
        let result = loop {
            tokio::select! {
                _ = ready.changed(), if !init_seen => {
                    init_seen = true;
                    if let Some(t) = spawned_at {
                        inits.push(t.elapsed());
                    }
                }
                o = &mut outcome => break o.unwrap_or_else(|_| Outcome::Crashed("the invocation was dropped".into())),
                status = child.wait() => {
                    break Outcome::Crashed(format!("the function process exited ({})", status.map(|s| s.to_string()).unwrap_or_default()));
                }
                _ = &mut kill, if chaos => {
                    break Outcome::Crashed("killed at a random instant (--chaos-kill-rate)".into());
                }
                _ = &mut deadline => {
                    break Outcome::Crashed(format!("timed out after {timeout:?}"));
                }
            }
        };
        self.spawned_at = None;
        if matches!(result, Outcome::Crashed(_))
            && let Some(mut c) = self.child.take()
        {
            let _ = c.kill().await;
        }
        Ok(result)
    }

    /// Stops the function process.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

/// Pairs each queued invocation with the function's next `GET /invocation/next`. An invocation
/// whose waiter is gone (the process died) is kept for the next one.
async fn dispatch(mut jobs: mpsc::Receiver<Job>, mut nexts: mpsc::Receiver<oneshot::Sender<Job>>) {
    let mut held: Option<Job> = None;
    while let Some(waiter) = nexts.recv().await {
        let job = match held.take() {
            Some(j) => j,
            None => match jobs.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        if let Err(job) = waiter.send(job) {
            held = Some(job);
        }
    }
}

async fn serve(
    listener: TcpListener,
    next: mpsc::Sender<oneshot::Sender<Job>>,
    pending: Pending,
    ready: Arc<tokio::sync::watch::Sender<u64>>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(connection(
            stream,
            next.clone(),
            pending.clone(),
            ready.clone(),
        ));
    }
}

/// One HTTP/1.1 keep-alive connection of the function's runtime client.
async fn connection(
    stream: TcpStream,
    next: mpsc::Sender<oneshot::Sender<Job>>,
    pending: Pending,
    ready: Arc<tokio::sync::watch::Sender<u64>>,
) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let Some((method, path, body)) = read_request(&mut read).await? else {
            return Ok(());
        };
        let (status, headers, body) = match (method.as_str(), path.as_str()) {
            ("GET", "/2018-06-01/runtime/invocation/next") => {
                ready.send_modify(|n| *n += 1);
                let (tx, rx) = oneshot::channel();
                next.send(tx).await?;
                let job = rx.await?;
                let headers = vec![
                    ("Lambda-Runtime-Aws-Request-Id", job.id.clone()),
                    ("Lambda-Runtime-Deadline-Ms", job.deadline_ms.to_string()),
                    (
                        "Lambda-Runtime-Invoked-Function-Arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:local".to_string(),
                    ),
                    ("Lambda-Runtime-Trace-Id", "Root=1-local".to_string()),
                ];
                if let Ok(mut p) = pending.lock() {
                    p.insert(job.id.clone(), job.done);
                }
                (200, headers, job.payload)
            }
            ("POST", p) if p.starts_with("/2018-06-01/runtime/invocation/") => {
                let rest = &p["/2018-06-01/runtime/invocation/".len()..];
                let (id, kind) = rest.split_once('/').unwrap_or((rest, ""));
                let outcome = match kind {
                    "response" => Outcome::Response(body),
                    _ => Outcome::Error(String::from_utf8_lossy(&body).into_owned()),
                };
                let waiter = pending.lock().ok().and_then(|mut m| m.remove(id));
                if let Some(w) = waiter {
                    let _ = w.send(outcome);
                }
                (202, Vec::new(), b"{}".to_vec())
            }
            ("POST", "/2018-06-01/runtime/init/error") => {
                eprintln!("function init error: {}", String::from_utf8_lossy(&body));
                (202, Vec::new(), b"{}".to_vec())
            }
            _ => (404, Vec::new(), b"{}".to_vec()),
        };
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            if status < 300 { "OK" } else { "Not Found" },
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        write.write_all(head.as_bytes()).await?;
        write.write_all(&body).await?;
        write.flush().await?;
    }
}

/// Reads one request: method, path and body (Content-Length or chunked). `None` at EOF.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<(String, String, Vec<u8>)>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = match (parts.next(), parts.next()) {
        (Some(m), Some(p)) => (m.to_string(), p.to_string()),
        _ => bail!("bad request line {line:?}"),
    };
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse().unwrap_or(0);
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        r.read_exact(&mut body).await?;
    }
    Ok(Some((method, path, body)))
}
