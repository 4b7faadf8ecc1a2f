//! S3 output against the local AWS emulator (moto) through the real aws-sdk-s3 client.
//!
//! Needs `infra/local/stack up aws` and `eval "$(infra/local/stack env)"` (or `infra/local/test`).
//! Every test writes under its own random prefix of `$TIDEMARK_S3_BUCKET`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tidemark_core::ErrorKind;
use tidemark_core::change::TableId;
use tidemark_core::output::s3::{S3Options, S3Output};
use tidemark_core::output::{Layout, LocalDir, ObjectOutput, conformance};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tidemark_e2e::harness::{STACK_HINT as HINT, aws_endpoint as endpoint, env};

fn bucket() -> String {
    endpoint();
    env("TIDEMARK_S3_BUCKET")
}

fn unique_url(what: &str) -> String {
    format!("s3://{}/e2e-{what}-{:016x}", bucket(), fastrand::u64(..))
}

async fn open(url: &str, opts: S3Options) -> S3Output {
    S3Output::open(url, opts)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {} ({HINT})", e.one_line()))
}

fn env_options() -> S3Options {
    endpoint();
    S3Options::from_env().unwrap()
}

/// Deterministic, incompressible-looking bytes.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

async fn clear(out: &dyn ObjectOutput) {
    for k in out.list("").await.unwrap() {
        out.delete(&k).await.unwrap();
    }
}

/// Multipart uploads still open under the output's prefix (orphan parts).
async fn open_uploads(out: &S3Output) -> Vec<String> {
    let r = out
        .client()
        .list_multipart_uploads()
        .bucket(out.bucket())
        .prefix(format!("{}/", out.prefix()))
        .send()
        .await
        .unwrap();
    r.uploads()
        .iter()
        .filter_map(|u| u.key().map(str::to_string))
        .collect()
}

fn python(script: &str, args: &[&str]) -> String {
    let py = env("TIDEMARK_PYTHON");
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {py}: {e} ({HINT})"));
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_open() {
    let url = unique_url("conformance");
    endpoint();
    let out = tidemark_core::output::open(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {} ({HINT})", e.one_line()));
    assert_eq!(out.url(), url);
    conformance::run(out.as_ref()).await;
    assert!(out.list("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_keys_as_local_dir() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalDir::new(dir.path()).unwrap();
    let s3 = open(&unique_url("same-keys"), env_options()).await;
    let outputs: [&dyn ObjectOutput; 2] = [&local, &s3];

    for out in outputs {
        conformance::run(out).await;
    }

    // One pipeline's worth of keys, identifiers that need escaping included.
    let layout = Layout::new("lake/", "pg main");
    let orders = TableId::new("public", "orders");
    let odd = TableId::new("Sales Data", "line-items.v2");
    let mut keys = vec![
        layout.snapshot_key(&orders, "00000000016B3748", 0),
        layout.snapshot_key(&orders, "00000000016B3748", 1),
        layout.snapshot_key(&odd, "00000000016B3748", 0),
        layout.change_key(
            &orders,
            "2026-11-21",
            ("00000000016B3748", 0),
            ("00000000016B3748", 41),
        ),
        layout.change_key(
            &orders,
            "2026-11-22",
            ("00000000016C0000", 3),
            ("00000000016D0000", 0),
        ),
        layout.change_key(
            &odd,
            "2026-11-21",
            ("00000000016B3748", 0),
            ("00000000016B3748", 9),
        ),
        "_tidemark/pg%20main/manifest.json".to_string(),
    ];
    for out in outputs {
        for (i, k) in keys.iter().enumerate() {
            out.put(k, format!("v1 {i}").into_bytes()).await.unwrap();
        }
        // Replace one, delete one, delete a missing one.
        out.put(&keys[3], b"v2".to_vec()).await.unwrap();
        out.delete(&keys[1]).await.unwrap();
        out.delete(&format!("{}.missing", keys[1])).await.unwrap();
    }
    keys.remove(1);
    keys.sort();

    for prefix in [
        "",
        "lake/",
        "lake/pg%20main/public.orders/",
        "lake/pg%20main/public.orders/changes/dt=2026-11-2",
        "lake/pg%20main/Sales%20Data.line-items.v2/snapshot/",
        "_tidemark/",
        "nothing/",
    ] {
        let l = local.list(prefix).await.unwrap();
        let s = s3.list(prefix).await.unwrap();
        assert_eq!(l, s, "list({prefix:?}) differs");
    }
    assert_eq!(s3.list("").await.unwrap(), keys);
    for k in &keys {
        assert_eq!(local.get(k).await.unwrap(), s3.get(k).await.unwrap(), "{k}");
    }
    // The object keys in the bucket are the output keys under the URL's prefix.
    let raw = s3
        .client()
        .list_objects_v2()
        .bucket(s3.bucket())
        .prefix(format!("{}/", s3.prefix()))
        .send()
        .await
        .unwrap();
    let mut raw: Vec<String> = raw
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    raw.sort();
    let want: Vec<String> = keys
        .iter()
        .map(|k| format!("{}/{k}", s3.prefix()))
        .collect();
    assert_eq!(raw, want);
    // Both reject the same malformed keys.
    for bad in ["a//b", "../x", "./x", ""] {
        assert!(local.put(bad, vec![]).await.is_err(), "{bad:?}");
        assert!(s3.put(bad, vec![]).await.is_err(), "{bad:?}");
    }
    clear(&s3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_object_goes_multipart() {
    let out = open(&unique_url("multipart"), env_options()).await;
    let key = "t/changes/dt=2026-01-01/big.parquet";
    let data = bytes(40 << 20, 1);
    out.put(key, data.clone()).await.unwrap();
    let back = out.get(key).await.unwrap().unwrap();
    assert!(back == data, "40 MiB object read back differs");

    let head = out
        .client()
        .head_object()
        .bucket(out.bucket())
        .key(out.object_key(key))
        .send()
        .await
        .unwrap();
    let etag = head.e_tag().unwrap().trim_matches('"').to_string();
    assert!(
        etag.ends_with("-5"),
        "40 MiB in 8 MiB parts: want a 5-part multipart ETag, got {etag}"
    );
    assert_eq!(head.content_length(), Some(40 << 20));
    assert_eq!(head.content_type(), Some("application/vnd.apache.parquet"));

    // Below the threshold: one PutObject (plain ETag).
    out.put("t/small.bin", bytes(1 << 20, 2)).await.unwrap();
    let head = out
        .client()
        .head_object()
        .bucket(out.bucket())
        .key(out.object_key("t/small.bin"))
        .send()
        .await
        .unwrap();
    assert!(!head.e_tag().unwrap().contains('-'), "{:?}", head.e_tag());
    assert_eq!(head.content_type(), Some("application/octet-stream"));

    assert!(open_uploads(&out).await.is_empty());
    clear(&out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_kms_on_every_put() {
    let key_id = python(
        "import boto3; print(boto3.client('kms').create_key(Description='tidemark e2e')['KeyMetadata']['KeyId'])",
        &[],
    );
    assert!(!key_id.is_empty());
    let opts = S3Options {
        sse_kms_key_id: Some(key_id.clone()),
        multipart_threshold: 5 << 20,
        part_size: 5 << 20,
        ..env_options()
    };
    let out = open(&unique_url("sse-kms"), opts).await;
    let small = bytes(1000, 3);
    let large = bytes(6 << 20, 4); // 2 parts: 5 MiB + 1 MiB
    out.put("k/small.parquet", small.clone()).await.unwrap();
    out.put("k/large.parquet", large.clone()).await.unwrap();
    assert_eq!(out.get("k/small.parquet").await.unwrap(), Some(small));
    assert_eq!(out.get("k/large.parquet").await.unwrap(), Some(large));

    // Read back independently (boto3).
    for key in ["k/small.parquet", "k/large.parquet"] {
        let got = python(
            "import sys, boto3\nh = boto3.client('s3').head_object(Bucket=sys.argv[1], Key=sys.argv[2])\nprint(h.get('ServerSideEncryption'), h.get('SSEKMSKeyId'), h['ETag'])",
            &[out.bucket(), &out.object_key(key)],
        );
        let f: Vec<&str> = got.split_whitespace().collect();
        assert_eq!(f.len(), 3, "{got}");
        assert_eq!(f[0], "aws:kms", "{key}: {got}");
        assert!(f[1].ends_with(&key_id), "{key}: {got}");
        if key == "k/large.parquet" {
            assert!(f[2].trim_matches('"').ends_with("-2"), "{got}");
        }
    }
    clear(&out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_a_config_error() {
    let missing = format!("tidemark-missing-{:08x}", fastrand::u32(..));
    for result in [
        S3Output::open(&format!("s3://{missing}/lake"), env_options())
            .await
            .map(|_| ()),
        tidemark_core::output::open(&format!("s3://{missing}"))
            .await
            .map(|_| ()),
    ] {
        let e = result.unwrap_err();
        eprintln!("{}", e.one_line());
        assert_eq!(e.kind(), ErrorKind::Config, "{}", e.one_line());
        let msg = e.to_string();
        assert!(msg.contains(&missing), "{msg}");
        assert!(msg.contains("create it or fix output.url"), "{msg}");
        assert!(msg.contains("us-east-1"), "{msg}");
    }
    let bad = tidemark_core::output::open("s3:///nobucket").await;
    assert_eq!(bad.err().map(|e| e.kind()), Some(ErrorKind::Config));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried() {
    let direct = open(&unique_url("retry"), env_options()).await;
    let single = "t/single.parquet";
    let multi = "t/multi.parquet";
    let single_path = direct.object_key(single);
    let multi_path = direct.object_key(multi);

    // The first 3 PutObjects of `single` and the first 2 attempts at part 2 of `multi`: 503.
    let single_failures = AtomicUsize::new(0);
    let part_failures = AtomicUsize::new(0);
    let (sp, mp) = (single_path.clone(), multi_path.clone());
    let proxy = Proxy::start(move |line| {
        let put = line.starts_with("PUT ");
        if put && line.contains(&format!("/{sp}?")) && part_number(line).is_none() {
            return (single_failures.fetch_add(1, Ordering::SeqCst) < 3)
                .then_some((503, "SlowDown"));
        }
        if put && line.contains(&format!("/{mp}?")) && part_number(line) == Some(2) {
            return (part_failures.fetch_add(1, Ordering::SeqCst) < 2).then_some((503, "SlowDown"));
        }
        None
    })
    .await;
    let opts = S3Options {
        endpoint_url: Some(proxy.url()),
        multipart_threshold: 5 << 20,
        part_size: 5 << 20,
        ..env_options()
    };
    let url = format!("s3://{}/{}", direct.bucket(), direct.prefix());
    let out = open(&url, opts).await;

    let data = bytes(100_000, 5);
    out.put(single, data.clone()).await.unwrap();
    assert_eq!(direct.get(single).await.unwrap(), Some(data));
    let puts = proxy.count(|l| l.starts_with("PUT ") && l.contains(&format!("/{single_path}?")));
    assert_eq!(puts, 4, "3 answered SlowDown, the 4th went through");

    let big = bytes(12 << 20, 6); // 3 parts
    out.put(multi, big.clone()).await.unwrap();
    assert!(direct.get(multi).await.unwrap() == Some(big));
    let part2 =
        proxy.count(|l| l.contains(&format!("/{multi_path}?")) && part_number(l) == Some(2));
    assert_eq!(part2, 3, "part 2: two SlowDowns, then success");
    assert!(open_uploads(&direct).await.is_empty());
    clear(&direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_transient() {
    let proxy = Proxy::start(|line| line.starts_with("PUT ").then_some((503, "SlowDown"))).await;
    let opts = S3Options {
        endpoint_url: Some(proxy.url()),
        max_attempts: 3,
        initial_backoff: std::time::Duration::from_millis(10),
        ..env_options()
    };
    let out = open(&unique_url("exhausted"), opts).await;
    let e = out.put("t/x.parquet", b"x".to_vec()).await.unwrap_err();
    eprintln!("{}", e.one_line());
    assert_eq!(e.kind(), ErrorKind::Transient, "{}", e.one_line());
    assert!(e.to_string().contains("SlowDown"), "{e}");
    assert_eq!(proxy.count(|l| l.starts_with("PUT ")), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_transient() {
    // A port nothing listens on (bound, then released).
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = S3Options {
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        max_attempts: 2,
        initial_backoff: std::time::Duration::from_millis(10),
        ..env_options()
    };
    let e = S3Output::open(&unique_url("unreachable"), opts)
        .await
        .unwrap_err();
    eprintln!("{}", e.one_line());
    assert_eq!(e.kind(), ErrorKind::Transient, "{}", e.one_line());
    assert!(e.to_string().contains("HeadBucket"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_multipart_upload_is_aborted() {
    let direct = open(&unique_url("abort"), env_options()).await;
    // Part 3 is refused (not retryable): the put fails and the upload must be aborted.
    let proxy = Proxy::start(|line| {
        (line.starts_with("PUT ") && part_number(line) == Some(3)).then_some((403, "AccessDenied"))
    })
    .await;
    let opts = S3Options {
        endpoint_url: Some(proxy.url()),
        multipart_threshold: 5 << 20,
        part_size: 5 << 20,
        ..env_options()
    };
    let url = format!("s3://{}/{}", direct.bucket(), direct.prefix());
    let out = open(&url, opts).await;
    let e = out
        .put("t/doomed.parquet", bytes(16 << 20, 7))
        .await
        .unwrap_err();
    eprintln!("{}", e.one_line());
    assert_eq!(e.kind(), ErrorKind::Config, "{}", e.one_line());
    assert!(e.to_string().contains("s3:PutObject"), "{e}");
    assert!(
        proxy.count(|l| l.starts_with("DELETE ") && l.contains("uploadId=")) >= 1,
        "AbortMultipartUpload was sent"
    );
    assert!(open_uploads(&direct).await.is_empty(), "orphan upload left");
    assert_eq!(direct.get("t/doomed.parquet").await.unwrap(), None);
}

/// `partNumber=N` of a request line, if any.
fn part_number(line: &str) -> Option<u32> {
    let rest = &line[line.find("partNumber=")? + "partNumber=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

type Rule = dyn Fn(&str) -> Option<(u16, &'static str)> + Send + Sync;

/// A loopback HTTP proxy in front of the emulator: answers requests the rule picks with an S3
/// XML error, forwards the others. Every exchange is `Connection: close`, so each request comes
/// through here on its own connection and the rule sees all of them.
struct Proxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(
        rule: impl Fn(&str) -> Option<(u16, &'static str)> + Send + Sync + 'static,
    ) -> Proxy {
        let upstream = endpoint()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rule: Arc<Rule> = Arc::new(rule);
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let (upstream, rule, seen) = (upstream.clone(), rule.clone(), seen.clone());
                    tokio::spawn(async move {
                        let _ = exchange(conn, &upstream, &*rule, &seen).await;
                    });
                }
            }
        });
        Proxy { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|l| pred(l)).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
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

/// The head with any `Connection` header replaced by `connection: close`.
fn connection_close(head: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for line in String::from_utf8_lossy(head).split("\r\n") {
        if !line.is_empty() && !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("connection: close\r\n\r\n");
    out.into_bytes()
}

async fn exchange(
    mut client: TcpStream,
    upstream: &str,
    rule: &Rule,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let Some(head_end) = read_head(&mut client, &mut buf).await? else {
        return Ok(());
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let line = head.lines().next().unwrap_or_default().to_string();
    seen.lock().unwrap().push(line.clone());

    if let Some((status, code)) = rule(&line) {
        // Take the whole body first so the client sees a response, not a reset.
        let lower = head.to_ascii_lowercase();
        let len = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if !lower.contains("expect: 100-continue") {
            let mut chunk = vec![0u8; 64 * 1024];
            while buf.len() < head_end + len {
                let n = client.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        let body = if line.starts_with("HEAD ") {
            String::new()
        } else {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>proxy</RequestId></Error>"
            )
        };
        let resp = format!(
            "HTTP/1.1 {status} Injected\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(resp.as_bytes()).await?;
        client.shutdown().await?;
        return Ok(());
    }

    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&connection_close(&buf[..head_end])).await?;
    up.write_all(&buf[head_end..]).await?;
    let (mut client_r, mut client_w) = client.into_split();
    let (mut up_r, mut up_w) = up.into_split();
    let body = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_r, &mut up_w).await;
    });
    let mut resp = Vec::new();
    let result = async {
        let Some(resp_end) = read_head(&mut up_r, &mut resp).await? else {
            return Ok(());
        };
        client_w
            .write_all(&connection_close(&resp[..resp_end]))
            .await?;
        client_w.write_all(&resp[resp_end..]).await?;
        tokio::io::copy(&mut up_r, &mut client_w).await?;
        client_w.shutdown().await
    }
    .await;
    body.abort();
    result
}
