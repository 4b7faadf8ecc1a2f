//! The S3 output: `s3://bucket/prefix` through `aws-sdk-s3`.
//!
//! Keys are `<prefix>/<key>` in the bucket; [`ObjectOutput::list`] strips the prefix back off, so
//! the keys are exactly those of the local directory output. Keys are validated like
//! [`LocalDir`](super::LocalDir) validates them (no empty, `.` or `..` segments), so both outputs
//! accept and reject the same keys.
//!
//! Contract, S3 side:
//! - `put` is one `PutObject` below the multipart threshold, else a multipart upload (create,
//!   up to 4 concurrent `UploadPart`s of slices of the one input buffer, complete). Either way the
//!   object appears whole or not at all. A failed (or cancelled) multipart upload is aborted so no
//!   orphan parts remain; as a backstop against a crash mid-upload, give the bucket a lifecycle
//!   rule `AbortIncompleteMultipartUpload`.
//! - `delete` is `DeleteObject`; a missing key is `Ok`. In a versioned bucket this adds a delete
//!   marker and keeps the older versions: intended, the version history is the audit trail.
//! - `list` is `ListObjectsV2`, all pages, sorted. `get` of a missing key is `Ok(None)`.
//! - `open` checks the bucket (`HeadBucket`) so a missing or forbidden bucket fails at start-up.
//!
//! Client: the standard AWS chain ([`crate::aws::sdk_config`]), path-style addressing when an
//! endpoint override is set (a local emulator) or `TIDEMARK_S3_FORCE_PATH_STYLE=1`. Retries are
//! the SDK's standard strategy (exponential backoff with full jitter, 8 attempts, 200 ms initial,
//! 20 s cap) on throttling (`SlowDown`, 503, `ThrottlingException`...), 5xx, timeouts and
//! connection errors; each request body is an in-memory slice, so every attempt resends it whole.
//! The error left after the last attempt is classified (see [`ErrorKind`]): throttling, 5xx,
//! timeouts and connection errors are `Transient`; a missing bucket, denied access, bad
//! credentials, a wrong region or an unusable KMS key are `Config` with a message that says what
//! to fix; anything else the service rejects is `Fatal`.
//!
//! Options (environment, read by [`S3Options::from_env`]):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TIDEMARK_S3_SSE_KMS_KEY_ID` | server-side encryption `aws:kms` with this key (id, ARN or alias) on every put | unset: the bucket's default encryption |
//! | `TIDEMARK_S3_MULTIPART_THRESHOLD` | objects of at least this many bytes go multipart | 16 MiB (at most 5 GiB) |
//! | `TIDEMARK_S3_MULTIPART_PART_SIZE` | part size in bytes (raised if the object would need more than 10,000 parts) | 8 MiB (5 MiB to 5 GiB) |
//! | `TIDEMARK_S3_FORCE_PATH_STYLE` | `1`/`true`: path-style requests | on when `AWS_ENDPOINT_URL[_S3]` is set |

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::BoxFuture;
use crate::aws::error::{Cause, Failure};
use crate::error::{Error, ErrorKind, Result};
use crate::output::ObjectOutput;

const MIB: usize = 1 << 20;
/// S3's smallest part (except the last one).
pub const MIN_PART_SIZE: usize = 5 * MIB;
/// S3's largest part, and largest single `PutObject`.
pub const MAX_PART_SIZE: usize = 5 << 30;
/// S3's largest part count.
const MAX_PARTS: usize = 10_000;

/// Tuning of an [`S3Output`]. [`Default`] holds the documented defaults; [`S3Options::from_env`]
/// applies the `TIDEMARK_S3_*` variables on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// SSE-KMS key for every put; `None`: the bucket's default encryption.
    pub sse_kms_key_id: Option<String>,
    /// Objects of at least this many bytes are uploaded in parts.
    pub multipart_threshold: usize,
    /// Part size of multipart uploads (at least [`MIN_PART_SIZE`]).
    pub part_size: usize,
    /// Concurrent `UploadPart` requests of one put.
    pub part_concurrency: usize,
    /// Path-style requests (`https://host/bucket/key`); always on with `endpoint_url`.
    pub force_path_style: bool,
    /// Endpoint for this client only (overrides `AWS_ENDPOINT_URL`); for tests and proxies.
    pub endpoint_url: Option<String>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles per retry (full jitter), capped by `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            sse_kms_key_id: None,
            multipart_threshold: 16 * MIB,
            part_size: 8 * MIB,
            part_concurrency: 4,
            force_path_style: false,
            endpoint_url: None,
            max_attempts: 8,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
        }
    }
}

impl S3Options {
    /// The defaults with the `TIDEMARK_S3_*` environment variables applied (see the module doc).
    pub fn from_env() -> Result<Self> {
        let mut opts = Self::from_lookup(|k| std::env::var(k).ok())?;
        opts.force_path_style |= crate::aws::endpoint_overridden();
        Ok(opts)
    }

    /// [`S3Options::from_env`] over any variable lookup (testable without touching the process
    /// environment). Does not look at `AWS_ENDPOINT_URL`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let bytes = |k: &str, default: usize| -> Result<usize> {
            match get(k) {
                None => Ok(default),
                Some(v) => v.parse::<usize>().map_err(|_| {
                    Error::config(format!(
                        "{k}={v:?} is not a number of bytes: set it to e.g. {default}"
                    ))
                }),
            }
        };
        let d = S3Options::default();
        let force_path_style = match get("TIDEMARK_S3_FORCE_PATH_STYLE").as_deref() {
            None => false,
            Some("1" | "true" | "TRUE" | "yes") => true,
            Some("0" | "false" | "FALSE" | "no") => false,
            Some(v) => {
                return Err(Error::config(format!(
                    "TIDEMARK_S3_FORCE_PATH_STYLE={v:?}: set it to 1 or 0"
                )));
            }
        };
        let opts = S3Options {
            sse_kms_key_id: get("TIDEMARK_S3_SSE_KMS_KEY_ID"),
            multipart_threshold: bytes("TIDEMARK_S3_MULTIPART_THRESHOLD", d.multipart_threshold)?,
            part_size: bytes("TIDEMARK_S3_MULTIPART_PART_SIZE", d.part_size)?,
            force_path_style,
            ..d
        };
        opts.validate()?;
        Ok(opts)
    }

    /// Checks the limits S3 imposes; the message names the variable to change.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(Error::config(format!(
                "TIDEMARK_S3_MULTIPART_PART_SIZE={} is outside S3's part sizes: set it between {MIN_PART_SIZE} (5 MiB) and {MAX_PART_SIZE} (5 GiB)",
                self.part_size
            )));
        }
        if self.multipart_threshold > MAX_PART_SIZE {
            return Err(Error::config(format!(
                "TIDEMARK_S3_MULTIPART_THRESHOLD={} exceeds S3's largest single upload: set it to at most {MAX_PART_SIZE} (5 GiB)",
                self.multipart_threshold
            )));
        }
        if self.part_concurrency == 0 || self.max_attempts == 0 {
            return Err(Error::config(
                "S3 part concurrency and max attempts must be at least 1",
            ));
        }
        Ok(())
    }

    /// The per-attempt limit from sending a request to its response headers: generous enough to
    /// upload the largest single request body at 256 KiB/s.
    fn read_timeout(&self) -> Duration {
        let largest = self.multipart_threshold.max(self.part_size) as u64;
        Duration::from_secs(60 + largest / (256 * 1024))
    }
}

/// `bucket` and `prefix` (no leading or trailing slash, may be empty) of `s3://bucket/prefix`.
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        Error::config(format!(
            "invalid S3 output URL {url:?}: {why}; expected s3://bucket or s3://bucket/prefix"
        ))
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("it does not start with s3://"))?;
    if rest.contains(['?', '#']) || rest.chars().any(char::is_whitespace) {
        return Err(bad("no query, fragment or spaces allowed"));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("the bucket is missing"));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(bad(&format!("{bucket:?} is not a bucket name")));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() && !valid_key(prefix) {
        return Err(bad("the prefix has an empty, '.' or '..' segment"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// The same rule as the local directory: non-empty, no empty, `.` or `..` segment.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
}

/// `application/vnd.apache.parquet` for `.parquet` keys, else `application/octet-stream`.
pub fn content_type(key: &str) -> &'static str {
    if key.ends_with(".parquet") {
        "application/vnd.apache.parquet"
    } else {
        "application/octet-stream"
    }
}

/// Byte ranges of the parts of a `len`-byte object: `part_size` each (raised so that there are
/// at most 10,000), the last one shorter.
fn plan_parts(len: usize, part_size: usize) -> Vec<std::ops::Range<usize>> {
    let size = part_size.max(len.div_ceil(MAX_PARTS)).max(1);
    (0..len.div_ceil(size).max(1))
        .map(|i| i * size..((i + 1) * size).min(len))
        .collect()
}

/// An S3 request, for messages and the IAM action it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    HeadBucket,
    PutObject,
    CreateMultipartUpload,
    UploadPart,
    CompleteMultipartUpload,
    DeleteObject,
    ListObjectsV2,
    GetObject,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::HeadBucket => "HeadBucket",
            Op::PutObject => "PutObject",
            Op::CreateMultipartUpload => "CreateMultipartUpload",
            Op::UploadPart => "UploadPart",
            Op::CompleteMultipartUpload => "CompleteMultipartUpload",
            Op::DeleteObject => "DeleteObject",
            Op::ListObjectsV2 => "ListObjectsV2",
            Op::GetObject => "GetObject",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Op::HeadBucket | Op::ListObjectsV2 => "s3:ListBucket",
            Op::PutObject
            | Op::CreateMultipartUpload
            | Op::UploadPart
            | Op::CompleteMultipartUpload => "s3:PutObject",
            Op::DeleteObject => "s3:DeleteObject",
            Op::GetObject => "s3:GetObject (and s3:ListBucket, so that missing keys read as 404)",
        }
    }
}

/// An output in an S3 bucket under a key prefix.
#[derive(Debug, Clone)]
pub struct S3Output {
    client: Client,
    bucket: String,
    /// No leading or trailing slash; empty for the whole bucket.
    prefix: String,
    region: String,
    opts: S3Options,
}

/// Opens `s3://bucket/prefix` with [`S3Options::from_env`] and checks the bucket.
pub async fn open(url: &str) -> Result<Arc<dyn ObjectOutput>> {
    Ok(Arc::new(S3Output::open(url, S3Options::from_env()?).await?))
}

/// What [`S3Output::download`] read.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectVersion {
    pub version_id: String,
    pub last_modified_ms: i64,
    /// User metadata (`x-amz-meta-*`), keys lower-case without the prefix.
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl S3Output {
    /// Builds the client from the standard AWS configuration and checks that the bucket exists
    /// and is reachable (`HeadBucket`, needs `s3:ListBucket`): a `Config` error naming the bucket
    /// otherwise.
    pub async fn open(url: &str, opts: S3Options) -> Result<Self> {
        let (bucket, prefix) = parse_url(url)?;
        opts.validate()?;
        let sdk = crate::aws::sdk_config().await;
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .ok_or_else(|| {
                Error::config(format!(
                    "no AWS region configured for the S3 output {url}: set AWS_REGION (or a region in the AWS profile)"
                ))
            })?;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(opts.force_path_style || opts.endpoint_url.is_some())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(opts.max_attempts)
                    .with_initial_backoff(opts.initial_backoff)
                    .with_max_backoff(opts.max_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(opts.read_timeout())
                    .build(),
            );
        if let Some(endpoint) = &opts.endpoint_url {
            conf = conf.endpoint_url(endpoint);
        }
        let out = S3Output {
            client: Client::from_conf(conf.build()),
            bucket,
            prefix,
            region,
            opts,
        };
        out.client
            .head_bucket()
            .bucket(&out.bucket)
            .send()
            .await
            .map_err(|e| out.sdk_error(Op::HeadBucket, "", e))?;
        Ok(out)
    }

    /// Streams one version (the latest when `version` is `None`) of the bucket's object `key`
    /// (a raw key, not under the output prefix) into the file `to`: memory stays bounded.
    /// `None` when there is no such key.
    pub async fn download(
        &self,
        key: &str,
        version: Option<&str>,
        to: &std::path::Path,
    ) -> Result<Option<ObjectVersion>> {
        use tokio::io::AsyncWriteExt;
        let out = match self
            .get_object(key.to_string(), version.map(str::to_string), None)
            .await
        {
            Ok(Some(out)) => out,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.sdk_error(Op::GetObject, key, e)),
        };
        let info = ObjectVersion {
            version_id: out.version_id().or(version).unwrap_or("null").to_string(),
            last_modified_ms: out
                .last_modified()
                .and_then(|t| t.to_millis().ok())
                .unwrap_or(0),
            metadata: out
                .metadata()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let mut file = tokio::fs::File::create(to).await?;
        let mut body = out.body;
        while let Some(chunk) = body.try_next().await.map_err(|e| {
            Error::with_source(
                ErrorKind::Transient,
                format!(
                    "S3 GetObject s3://{}/{key}: reading the body failed",
                    self.bucket
                ),
                e,
            )
        })? {
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        Ok(Some(info))
    }

    /// The SDK client (for tests and tools that inspect objects beyond this trait).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix without slashes; empty for the whole bucket.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn options(&self) -> &S3Options {
        &self.opts
    }

    /// The S3 key of an output key: `<prefix>/<key>`.
    pub fn object_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn checked_key(&self, key: &str) -> Result<String> {
        if !valid_key(key) {
            return Err(Error::fatal(format!("invalid object key {key:?}")));
        }
        Ok(self.object_key(key))
    }

    /// GetObject of a bucket key; `Ok(None)` when it does not exist.
    async fn get_object(
        &self,
        full_key: String,
        version: Option<String>,
        range: Option<String>,
    ) -> std::result::Result<
        Option<aws_sdk_s3::operation::get_object::GetObjectOutput>,
        SdkError<aws_sdk_s3::operation::get_object::GetObjectError, HttpResponse>,
    > {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full_key)
            .set_version_id(version)
            .set_range(range)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e)
                if e.as_service_error().is_some_and(|s| s.is_no_such_key())
                    || e.code() == Some("NoSuchKey") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// GetObject of `key` (a `range` header when given); `None` when the key does not exist.
    async fn read(&self, key: &str, range: Option<String>) -> Result<Option<Vec<u8>>> {
        let full = self.checked_key(key)?;
        let ranged = range.is_some();
        let out = match self.get_object(full, None, range).await {
            Ok(Some(out)) => out,
            Ok(None) => return Ok(None),
            // A range of an empty object is not satisfiable: its tail is empty.
            Err(e) if ranged && e.code() == Some("InvalidRange") => return Ok(Some(Vec::new())),
            Err(e) => return Err(self.sdk_error(Op::GetObject, key, e)),
        };
        let data = out.body.collect().await.map_err(|e| {
            Error::with_source(
                ErrorKind::Transient,
                format!(
                    "S3 GetObject {}: reading the body failed",
                    self.location(key)
                ),
                e,
            )
        })?;
        Ok(Some(Vec::from(data.into_bytes())))
    }

    fn location(&self, key: &str) -> String {
        let path = if key.is_empty() {
            self.prefix.clone()
        } else {
            self.object_key(key)
        };
        if path.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{path}", self.bucket)
        }
    }

    fn sse(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match &self.opts.sse_kms_key_id {
            Some(k) => (Some(ServerSideEncryption::AwsKms), Some(k.clone())),
            None => (None, None),
        }
    }

    /// Turns the error left after the SDK's retries into a classified [`Error`]; `key` is the
    /// output key (empty for bucket-level requests).
    fn sdk_error<E>(&self, op: Op, key: &str, err: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let at = self.location(key);
        let Failure {
            cause,
            detail,
            bucket_region,
            ..
        } = Failure::of(&err);
        let op_name = op.name();
        let message = match cause {
            Cause::Throttled | Cause::Unavailable => format!(
                "S3 {op_name} {at} failed after retries (up to {} attempts): {detail}",
                self.opts.max_attempts
            ),
            Cause::NotFound => format!(
                "S3 bucket {} does not exist or is not reachable in region {}: create it or fix output.url ({op_name}: {detail})",
                self.bucket, self.region
            ),
            Cause::AccessDenied => format!(
                "S3 denied {op_name} on {at}: grant the worker's AWS identity {} on it{}, or fix output.url ({detail})",
                op.action(),
                if self.opts.sse_kms_key_id.is_some() {
                    " and kms:GenerateDataKey/kms:Decrypt on the SSE-KMS key"
                } else {
                    ""
                }
            ),
            Cause::Credentials => format!(
                "S3 rejected the AWS credentials ({op_name} {at}: {detail}): fix the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE or the task/instance role)"
            ),
            Cause::ClockSkew => format!(
                "S3 rejected the request time ({op_name} {at}: {detail}): synchronise this machine's clock"
            ),
            Cause::WrongRegion => match bucket_region.filter(|r| *r != self.region) {
                Some(actual) => format!(
                    "S3 bucket {} is in region {actual}, not {}: set AWS_REGION={actual} ({op_name}: {detail})",
                    self.bucket, self.region
                ),
                None => format!(
                    "S3 bucket {} is not in region {}: set AWS_REGION to the bucket's region ({op_name}: {detail})",
                    self.bucket, self.region
                ),
            },
            Cause::Kms => format!(
                "S3 could not use the SSE-KMS key {} for {op_name} {at} ({detail}): fix TIDEMARK_S3_SSE_KMS_KEY_ID, enable the key, or grant kms:GenerateDataKey/kms:Decrypt on it",
                self.opts
                    .sse_kms_key_id
                    .as_deref()
                    .unwrap_or("(bucket default)")
            ),
            Cause::Invalid => format!(
                "S3 rejected the bucket name {} ({detail}): fix output.url",
                self.bucket
            ),
            Cause::Endpoint => format!(
                "cannot send S3 {op_name} {at} ({detail}): check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3"
            ),
            Cause::ConditionFailed | Cause::Rejected => {
                format!("S3 {op_name} {at} failed: {detail}")
            }
        };
        Error::with_source(cause.kind(), message, err)
    }

    async fn put_single(&self, key: &str, full: &str, body: Bytes) -> Result<()> {
        let (sse, kms) = self.sse();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .content_type(content_type(key))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.sdk_error(Op::PutObject, key, e))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str, full: &str, body: Bytes) -> Result<()> {
        let (sse, kms) = self.sse();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .content_type(content_type(key))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms)
            .send()
            .await
            .map_err(|e| self.sdk_error(Op::CreateMultipartUpload, key, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                Error::fatal(format!(
                    "S3 CreateMultipartUpload {} returned no upload id",
                    self.location(key)
                ))
            })?
            .to_string();
        // Aborts in the background if this future is dropped mid-upload.
        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full.to_string(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        let result = self.upload_and_complete(key, full, &upload_id, body).await;
        if let Err(e) = result {
            // Still armed: a cancellation while aborting leaves the abort to the guard.
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
            guard.armed = false;
            if let Err(abort) = aborted {
                tracing::warn!(
                    key = full,
                    upload_id,
                    error = %aws_sdk_s3::error::DisplayErrorContext(&abort),
                    "could not abort the failed multipart upload: its parts remain until a lifecycle rule removes them"
                );
            }
            return Err(e);
        }
        guard.armed = false;
        Ok(())
    }

    async fn upload_and_complete(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        body: Bytes,
    ) -> Result<()> {
        let ranges = plan_parts(body.len(), self.opts.part_size);
        tracing::debug!(
            key = full,
            bytes = body.len(),
            parts = ranges.len(),
            "multipart upload"
        );
        let mut parts = Vec::with_capacity(ranges.len());
        {
            let mut uploads =
                futures_util::stream::iter(ranges.into_iter().enumerate().map(|(i, range)| {
                    let chunk = body.slice(range);
                    let n = i32::try_from(i + 1).unwrap_or(i32::MAX);
                    async move {
                        let out = self
                            .client
                            .upload_part()
                            .bucket(&self.bucket)
                            .key(full)
                            .upload_id(upload_id)
                            .part_number(n)
                            .checksum_algorithm(ChecksumAlgorithm::Crc32)
                            .body(ByteStream::from(chunk))
                            .send()
                            .await
                            .map_err(|e| {
                                self.sdk_error(Op::UploadPart, key, e)
                                    .context(format!("part {n}"))
                            })?;
                        let etag = out.e_tag().ok_or_else(|| {
                            Error::fatal(format!(
                                "S3 UploadPart {} part {n} returned no ETag",
                                self.location(key)
                            ))
                        })?;
                        Ok::<_, Error>(
                            CompletedPart::builder()
                                .part_number(n)
                                .e_tag(etag)
                                .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                                .build(),
                        )
                    }
                }))
                .buffer_unordered(self.opts.part_concurrency);
            // The first failure drops (cancels) the part uploads still running.
            while let Some(part) = uploads.next().await {
                parts.push(part?);
            }
        }
        parts.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.sdk_error(Op::CompleteMultipartUpload, key, e))?;
        Ok(())
    }
}

/// Aborts a multipart upload when dropped armed (a cancelled put), in the background.
struct AbortGuard {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let req = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id);
        rt.spawn(async move {
            let _ = req.send().await;
        });
    }
}

impl ObjectOutput for S3Output {
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let full = self.checked_key(key)?;
            let body = Bytes::from(bytes);
            if body.len() >= self.opts.multipart_threshold && !body.is_empty() {
                self.put_multipart(key, &full, body).await
            } else {
                self.put_single(key, &full, body).await
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let full = self.checked_key(key)?;
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(full)
                .send()
                .await
                .map_err(|e| self.sdk_error(Op::DeleteObject, key, e))?;
            Ok(())
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let root = if self.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", self.prefix)
            };
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(format!("{root}{prefix}"))
                .into_paginator()
                .send();
            let mut keys = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| self.sdk_error(Op::ListObjectsV2, prefix, e))?;
                keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key())
                        .filter_map(|k| k.strip_prefix(root.as_str()))
                        .map(str::to_string),
                );
            }
            keys.sort();
            Ok(keys)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(self.read(key, None))
    }

    fn get_tail<'a>(&'a self, key: &'a str, len: usize) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(self.read(key, Some(format!("bytes=-{len}"))))
    }

    fn url(&self) -> String {
        self.location("")
    }

    fn guarded(&self, guard: crate::output::AttemptGuard) -> Option<Arc<dyn ObjectOutput>> {
        let conf = self
            .client
            .config()
            .to_builder()
            .interceptor(AttemptGuardInterceptor(guard))
            .build();
        Some(Arc::new(S3Output {
            client: Client::from_conf(conf),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            region: self.region.clone(),
            opts: self.opts.clone(),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::head_bucket::HeadBucketError;
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    #[test]
    fn parses_urls() {
        let p = |u: &str| parse_url(u);
        assert_eq!(p("s3://b").unwrap(), ("b".into(), "".into()));
        assert_eq!(p("s3://b/").unwrap(), ("b".into(), "".into()));
        assert_eq!(
            p("s3://my.bucket-1/lake").unwrap(),
            ("my.bucket-1".into(), "lake".into())
        );
        assert_eq!(
            p("s3://b/lake/raw/").unwrap(),
            ("b".into(), "lake/raw".into())
        );
        assert_eq!(p("s3://b//lake/").unwrap(), ("b".into(), "lake".into()));
        for bad in [
            "s3://",
            "s3:///x",
            "file:///x",
            "s3://b/a//c",
            "s3://b/a/../c",
            "s3://b?versionId=1",
            "s3://b/a b",
            "s3://bu:cket/x",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
            assert!(e.to_string().contains("s3://bucket/prefix"), "{e}");
        }
    }

    #[test]
    fn options_from_lookup() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let d = S3Options::from_lookup(env(&[])).unwrap();
        assert_eq!(d, S3Options::default());
        assert_eq!(d.multipart_threshold, 16 << 20);
        assert_eq!(d.part_size, 8 << 20);
        let o = S3Options::from_lookup(env(&[
            ("TIDEMARK_S3_SSE_KMS_KEY_ID", "alias/lake"),
            ("TIDEMARK_S3_MULTIPART_THRESHOLD", "1048576"),
            ("TIDEMARK_S3_MULTIPART_PART_SIZE", " 6291456 "),
            ("TIDEMARK_S3_FORCE_PATH_STYLE", "1"),
        ]))
        .unwrap();
        assert_eq!(o.sse_kms_key_id.as_deref(), Some("alias/lake"));
        assert_eq!((o.multipart_threshold, o.part_size), (1 << 20, 6 << 20));
        assert!(o.force_path_style);
        let blank = S3Options::from_lookup(env(&[("TIDEMARK_S3_SSE_KMS_KEY_ID", "")])).unwrap();
        assert_eq!(blank.sse_kms_key_id, None);

        for (bad, var) in [
            (
                &[("TIDEMARK_S3_MULTIPART_PART_SIZE", "4194304")][..],
                "PART_SIZE",
            ),
            (
                &[("TIDEMARK_S3_MULTIPART_PART_SIZE", "8MiB")][..],
                "PART_SIZE",
            ),
            (
                &[("TIDEMARK_S3_MULTIPART_THRESHOLD", "-1")][..],
                "THRESHOLD",
            ),
            (
                &[("TIDEMARK_S3_MULTIPART_THRESHOLD", "6000000000")][..],
                "THRESHOLD",
            ),
            (
                &[("TIDEMARK_S3_FORCE_PATH_STYLE", "maybe")][..],
                "PATH_STYLE",
            ),
        ] {
            let vars: Vec<(String, String)> = bad
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let e = S3Options::from_lookup(|k| {
                vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            })
            .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn part_plan() {
        let m = MIB;
        assert_eq!(plan_parts(40 * m, 8 * m).len(), 5);
        assert_eq!(plan_parts(41 * m, 8 * m).last().unwrap(), &(40 * m..41 * m));
        assert_eq!(plan_parts(3, 8 * m), vec![0..3]);
        // More than 10,000 parts of the configured size: the parts grow.
        let big = plan_parts(100_000 * m, 5 * m);
        assert!(big.len() <= MAX_PARTS);
        assert_eq!(big.last().unwrap().end, 100_000 * m);
        for w in big.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type("a/b.parquet"),
            "application/vnd.apache.parquet"
        );
        assert_eq!(content_type("a/b.json"), "application/octet-stream");
    }

    /// An `S3Output` whose client is never used to send (error mapping only).
    fn output(kms: Option<&str>) -> S3Output {
        let conf = aws_sdk_s3::Config::builder()
            .region(aws_sdk_s3::config::Region::new("eu-west-1"))
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .build();
        S3Output {
            client: Client::from_conf(conf),
            bucket: "lake-bucket".into(),
            prefix: "raw".into(),
            region: "eu-west-1".into(),
            opts: S3Options {
                sse_kms_key_id: kms.map(str::to_string),
                ..S3Options::default()
            },
        }
    }

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> HttpResponse {
        let mut r = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        for (k, v) in headers {
            r.headers_mut().insert(*k, *v);
        }
        r
    }

    fn put_error(code: &str, message: &str, status: u16) -> SdkError<PutObjectError, HttpResponse> {
        SdkError::service_error(
            PutObjectError::generic(ErrorMetadata::builder().code(code).message(message).build()),
            response(status, &[]),
        )
    }

    #[test]
    fn maps_sdk_errors() {
        let out = output(None);

        let e = out.sdk_error(
            Op::HeadBucket,
            "",
            SdkError::service_error(
                HeadBucketError::generic(ErrorMetadata::builder().build()),
                response(404, &[]),
            ),
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().starts_with(
            "S3 bucket lake-bucket does not exist or is not reachable in region eu-west-1: create it or fix output.url"
        ), "{e}");

        let e = out.sdk_error(
            Op::HeadBucket,
            "",
            SdkError::service_error(
                HeadBucketError::generic(ErrorMetadata::builder().build()),
                response(301, &[("x-amz-bucket-region", "us-west-2")]),
            ),
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.to_string()
                .contains("is in region us-west-2, not eu-west-1: set AWS_REGION=us-west-2"),
            "{e}"
        );

        let e = out.sdk_error(
            Op::PutObject,
            "t/a.parquet",
            put_error("AccessDenied", "Access Denied", 403),
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.to_string().contains("s3://lake-bucket/raw/t/a.parquet"),
            "{e}"
        );
        assert!(e.to_string().contains("s3:PutObject"), "{e}");

        let e = out.sdk_error(
            Op::PutObject,
            "k",
            put_error("InvalidAccessKeyId", "no such key id", 403),
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("fix the credentials"), "{e}");

        let e = output(Some("alias/lake")).sdk_error(
            Op::PutObject,
            "k",
            put_error("KMS.DisabledException", "key disabled", 400),
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("SSE-KMS key alias/lake"), "{e}");
        assert!(e.to_string().contains("TIDEMARK_S3_SSE_KMS_KEY_ID"), "{e}");

        let e = out.sdk_error(
            Op::PutObject,
            "k",
            put_error("SlowDown", "Please reduce your request rate.", 503),
        );
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(e.to_string().contains("HTTP 503 SlowDown"), "{e}");

        let e = out.sdk_error(
            Op::PutObject,
            "k",
            put_error("EntityTooLarge", "too big", 400),
        );
        assert_eq!(e.kind(), ErrorKind::Fatal);

        let timeout: SdkError<PutObjectError, HttpResponse> =
            SdkError::timeout_error(std::io::Error::other("attempt timed out"));
        assert_eq!(
            out.sdk_error(Op::PutObject, "k", timeout).kind(),
            ErrorKind::Transient
        );

        let io: SdkError<PutObjectError, HttpResponse> =
            SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::io(Box::new(
                std::io::Error::other("connection refused"),
            )));
        assert_eq!(
            out.sdk_error(Op::PutObject, "k", io).kind(),
            ErrorKind::Transient
        );

        let creds: SdkError<PutObjectError, HttpResponse> =
            SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::other(
                Box::new(std::io::Error::other(
                    "failed to resolve identity: no providers in chain provided credentials",
                )),
                None,
            ));
        let e = out.sdk_error(Op::PutObject, "k", creds);
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("fix the credentials"), "{e}");
    }

    #[test]
    fn keys_and_urls() {
        let mut out = output(None);
        assert_eq!(out.url(), "s3://lake-bucket/raw");
        assert_eq!(out.object_key("a/b.parquet"), "raw/a/b.parquet");
        assert!(out.checked_key("a//b").is_err());
        assert!(out.checked_key("../b").is_err());
        assert!(out.checked_key("").is_err());
        out.prefix.clear();
        assert_eq!(out.url(), "s3://lake-bucket");
        assert_eq!(out.object_key("a/b.parquet"), "a/b.parquet");
    }
}

/// Runs the output's [`crate::output::AttemptGuard`] right before each request is sent, so no
/// attempt (retries included) goes out once the guard fails — e.g. a worker that lost its lease
/// while paused between two attempts.
#[derive(Clone)]
struct AttemptGuardInterceptor(crate::output::AttemptGuard);

impl std::fmt::Debug for AttemptGuardInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttemptGuardInterceptor")
    }
}

impl aws_sdk_s3::config::Intercept for AttemptGuardInterceptor {
    fn name(&self) -> &'static str {
        "tidemark-attempt-guard"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> std::result::Result<(), aws_sdk_s3::error::BoxError> {
        (self.0)().map_err(|e| Box::new(e) as aws_sdk_s3::error::BoxError)
    }
}
