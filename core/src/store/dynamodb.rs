//! The DynamoDB position store: `dynamodb://<table>`, one item per pipeline, every write
//! conditional.
//!
//! # Item layout
//!
//! One table whose only key is the partition key `pk` (string). Each pipeline is one item:
//!
//! | attribute          | type | content |
//! |--------------------|------|---------|
//! | `pk`               | S    | `pipeline#<name>` (partition key). Reserved for per-shard items: `pipeline#<name>#shard#<id>` |
//! | `version`          | N    | [`Checkpoint::version`]: the compare-and-swap token of saves |
//! | `checkpoint`       | S    | the [`Checkpoint`] as JSON: the source of truth (one of the next two instead when larger) |
//! | `checkpoint_zstd`  | B    | the JSON zstd-compressed, when the JSON is over 64 KiB |
//! | `checkpoint_parts` | S    | `<id> <count> <bytes>`, when even that is over 64 KiB: the compressed JSON is in `count` part items |
//! | `position`         | S    | the committed position, human-readable, for consoles (absent while none) |
//! | `updated_at`       | S    | RFC 3339 time of the last save |
//! | `lease_owner`      | S    | the worker holding the [`Lease`] |
//! | `lease_epoch`      | N    | fencing token: +1 whenever another owner takes the lease over |
//! | `lease_expires_at` | N    | lease expiry, UNIX milliseconds (0 after a release) |
//!
//! A part item, `pipeline#<name>#checkpoint#<id>#<i>`, holds 256 KiB of the compressed JSON in
//! `data` (B). `<id>` is the saved version and a random number, unique to one save: a save
//! writes its parts first and never overwrites parts a stored checkpoint refers to. After its
//! conditional write succeeds it deletes the parts the previous version used (a rejected save
//! deletes its own); a reader that finds a part gone reads the item again. So every item stays
//! far below DynamoDB's 400 KB limit whatever the number of tables a checkpoint names (intent
//! keys, captured and finished tables, skip rules). A worker that dies between its save and
//! that clean-up leaves the previous parts behind, unread.
//!
//! Checkpoint and lease attributes are written independently: saves never touch the lease
//! attributes and lease operations never change `version`. So an item may hold only a lease
//! (acquired before the first save) or only a checkpoint (saved without a lease). Pipeline names
//! use the local store's alphabet (letters, digits, `.`, `_`, `-`), so they never contain `#`
//! and cannot collide with the per-shard keys.
//!
//! # Writes
//!
//! Save and acquire read the item with a consistent read, make the same decision as the local
//! store ([`check_lease`], [`check_transition`], [`grant_lease`]), and write with an
//! `UpdateItem` whose condition is the state they decided on, so a concurrent writer makes the
//! write fail instead of being overwritten. Renew and release are a single conditional write:
//!
//! | operation       | condition |
//! |-----------------|-----------|
//! | save            | `version = :expected` (`attribute_not_exists(version)` for the first save), and with a lease `lease_owner = :owner AND lease_epoch = :epoch` |
//! | acquire lease   | the observed lease: `attribute_not_exists(lease_owner)`, or `lease_owner`, `lease_epoch` and `lease_expires_at` unchanged |
//! | renew / release | `lease_owner = :owner AND lease_epoch = :epoch` (a failed release is a no-op) |
//! | delete          | none: `tidemark reset` removes the item whatever it holds |
//!
//! # Errors
//!
//! A failed condition is [`ErrorKind::Conflict`] (another worker). Throttling, 5xx, timeouts and
//! connection failures are [`ErrorKind::Transient`], after the SDK's own standard retries (8
//! attempts unless configured otherwise). A missing table, access denied (naming the missing
//! `dynamodb:` permission), rejected credentials or no region are [`ErrorKind::Config`].
//!
//! Permissions on the table: `dynamodb:DescribeTable` (open), `GetItem` (load; save and acquire
//! read first), `UpdateItem` (saves and lease operations), `DeleteItem` (replaced checkpoint
//! parts, and `delete` for `tidemark reset`); `CreateTable` only with `--create-table`.
//! Nothing else is called (no `PutItem`, `Query` or `Scan`): the kinesis-ingest and baseline
//! functions' roles allow just the first four (`template.yaml`, `infra/cdk`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
};

use crate::BoxFuture;
use crate::aws::error::{Cause, Failure};
use crate::error::{Error, ErrorKind, Result};
use crate::store::{
    Checkpoint, Lease, PositionStore, check_lease, check_transition, grant_lease, now_ms,
};

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

const PK: &str = "pk";
const VERSION: &str = "version";
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_ZSTD: &str = "checkpoint_zstd";
const CHECKPOINT_PARTS: &str = "checkpoint_parts";
/// The one attribute of a part item.
const PART_DATA: &str = "data";
const POSITION: &str = "position";
const UPDATED_AT: &str = "updated_at";
const LEASE_OWNER: &str = "lease_owner";
const LEASE_EPOCH: &str = "lease_epoch";
const LEASE_EXPIRES_AT: &str = "lease_expires_at";

/// SDK attempts per request (standard retry mode) unless the AWS configuration sets another.
const MAX_ATTEMPTS: u32 = 8;
/// Largest checkpoint body (JSON, or compressed JSON) kept in the pipeline's own item: with
/// the other attributes the item stays far below DynamoDB's 400 KB limit.
const INLINE_MAX: usize = 64 * 1024;
/// Bytes of compressed checkpoint per part item.
const PART_MAX: usize = 256 * 1024;
/// Reads of a checkpoint whose parts a newer save replaced while it was read.
const READ_ATTEMPTS: usize = 5;
/// Most part items one checkpoint may have (1 GiB compressed): a larger count is a damaged item.
const MAX_PARTS: usize = 4096;
/// How long `open` waits for a table to become ACTIVE.
const TABLE_ACTIVE_WAIT: Duration = Duration::from_secs(120);
/// Conditional-write rounds of one `acquire_lease` before giving up on a contended lease.
const ACQUIRE_ROUNDS: usize = 4;

/// Opens `dynamodb://table`: checks that the table exists with the expected key (creating it
/// when `create_table` is set).
pub async fn open(url: &str, create_table: bool) -> Result<Arc<dyn PositionStore>> {
    Ok(Arc::new(DynamoStore::open(url, create_table).await?))
}

/// Checkpoints and leases in one DynamoDB table (layout in the module documentation).
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

/// What one pipeline item holds.
#[derive(Debug, Default, Clone, PartialEq)]
struct Stored {
    checkpoint: Option<Checkpoint>,
    lease: Option<Lease>,
    /// The part items the checkpoint is read from, if it is that large.
    parts: Option<Parts>,
}

/// How a checkpoint's JSON is held: in the item as text, in the item compressed (zstd), or
/// compressed and cut into part items (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
enum Body {
    Json(String),
    Zstd(Vec<u8>),
    /// The parts and the compressed JSON they hold.
    Parts(Parts, Vec<u8>),
}

/// A checkpoint stored in part items: `id` is unique to one save (its version and a random
/// number), so a save never overwrites parts that a stored checkpoint refers to.
#[derive(Debug, Clone, PartialEq)]
struct Parts {
    id: String,
    count: usize,
    bytes: usize,
}

impl Parts {
    /// The `checkpoint_parts` attribute: `<id> <count> <bytes>`.
    fn attribute(&self) -> String {
        format!("{} {} {}", self.id, self.count, self.bytes)
    }

    fn parse(text: &str) -> Option<Parts> {
        let mut it = text.split(' ');
        let id = it.next().filter(|id| !id.is_empty() && !id.contains('#'))?;
        let count: usize = it.next()?.parse().ok()?;
        let bytes: usize = it.next()?.parse().ok()?;
        let consistent = (1..=MAX_PARTS).contains(&count)
            && bytes > (count - 1) * PART_MAX
            && bytes <= count * PART_MAX;
        (consistent && it.next().is_none()).then(|| Parts {
            id: id.to_string(),
            count,
            bytes,
        })
    }

    /// The partition key of part `i`.
    fn key(&self, pipeline: &str, i: usize) -> AttributeValue {
        AttributeValue::S(format!("pipeline#{pipeline}#checkpoint#{}#{i}", self.id))
    }
}

/// A pipeline item as read: the lease, and the checkpoint or the parts it must be read from.
enum Parsed {
    Whole(Box<Stored>),
    InParts {
        parts: Parts,
        version: Option<u64>,
        lease: Option<Lease>,
    },
}

/// The result of a conditional write.
enum Outcome {
    Written,
    /// The condition failed; the item as it is now.
    Rejected(Box<Stored>),
}

impl DynamoStore {
    /// Opens `dynamodb://table` with the standard AWS configuration ([`crate::aws::sdk_config`]).
    /// A missing table is created (on-demand capacity, waiting until ACTIVE) when `create_table`
    /// is set, else it is a [`ErrorKind::Config`] error saying how to create it.
    pub async fn open(url: &str, create_table: bool) -> Result<DynamoStore> {
        let table = parse_url(url)?;
        let sdk = crate::aws::sdk_config().await;
        if sdk.region().is_none() {
            return Err(Error::config(format!(
                "no AWS region for DynamoDB table {table}: set AWS_REGION (or a region in the AWS profile)"
            )));
        }
        let store = DynamoStore::with_client(Client::from_conf(client_config(&sdk)), table);
        store.ensure_table(create_table).await?;
        Ok(store)
    }

    /// A store on an existing client, without checking the table.
    pub fn with_client(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The pipeline's item exactly as stored (consistent read), for diagnostics and tests.
    pub async fn raw_item(&self, pipeline: &str) -> Result<Option<Item>> {
        validate_pipeline(pipeline)?;
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, key(pipeline))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(e, &self.table, "GetItem"))?;
        Ok(out.item)
    }

    async fn read(&self, pipeline: &str) -> Result<Stored> {
        for _ in 0..READ_ATTEMPTS {
            let parsed = match self.raw_item(pipeline).await? {
                Some(item) => parse_item(&self.table, pipeline, &item)?,
                None => return Ok(Stored::default()),
            };
            if let Some(stored) = self.resolve(pipeline, parsed).await? {
                return Ok(stored);
            }
        }
        Err(Error::transient(format!(
            "DynamoDB table {}: the checkpoint of pipeline {pipeline:?} was replaced {READ_ATTEMPTS} times while it was read",
            self.table
        )))
    }

    /// The lease alone (a checkpoint's parts are not read).
    async fn read_lease(&self, pipeline: &str) -> Result<Option<Lease>> {
        Ok(match self.raw_item(pipeline).await? {
            None => None,
            Some(item) => match parse_item(&self.table, pipeline, &item)? {
                Parsed::Whole(stored) => stored.lease,
                Parsed::InParts { lease, .. } => lease,
            },
        })
    }

    /// The stored checkpoint, its parts read; `None` when a part is gone (a newer save
    /// replaced them since the item was read: read the item again).
    async fn resolve(&self, pipeline: &str, parsed: Parsed) -> Result<Option<Stored>> {
        let (parts, version, lease) = match parsed {
            Parsed::Whole(stored) => return Ok(Some(*stored)),
            Parsed::InParts {
                parts,
                version,
                lease,
            } => (parts, version, lease),
        };
        let mut zstd = Vec::with_capacity(parts.bytes.min(16 * PART_MAX));
        for i in 0..parts.count {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .key(PK, parts.key(pipeline, i))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk_error(e, &self.table, "GetItem"))?;
            let Some(item) = out.item else {
                return Ok(None);
            };
            match item.get(PART_DATA).map(AttributeValue::as_b) {
                Some(Ok(data)) => zstd.extend_from_slice(data.as_ref()),
                _ => {
                    return Err(invalid(
                        &self.table,
                        pipeline,
                        &format!("part {i} has no data"),
                    ));
                }
            }
        }
        if zstd.len() != parts.bytes {
            return Err(invalid(
                &self.table,
                pipeline,
                &format!("its parts hold {} bytes, not {}", zstd.len(), parts.bytes),
            ));
        }
        let json = unzstd(&self.table, pipeline, &zstd)?;
        let checkpoint = checkpoint_of(&self.table, pipeline, &json, version)?;
        Ok(Some(Stored {
            checkpoint: Some(checkpoint),
            lease,
            parts: Some(parts),
        }))
    }

    /// How `next` is stored, writing its part items first when it needs them.
    async fn write_body(&self, next: &Checkpoint) -> Result<Body> {
        let body = Body::of(next)?;
        let Body::Parts(parts, zstd) = &body else {
            return Ok(body);
        };
        for (i, chunk) in zstd.chunks(PART_MAX).enumerate() {
            self.client
                .update_item()
                .table_name(&self.table)
                .key(PK, parts.key(&next.pipeline, i))
                .update_expression("SET #data = :data")
                .expression_attribute_names("#data", PART_DATA)
                .expression_attribute_values(":data", AttributeValue::B(Blob::new(chunk)))
                .send()
                .await
                .map_err(|e| sdk_error(e, &self.table, "UpdateItem"))?;
        }
        Ok(body)
    }

    /// Deletes part items no stored checkpoint refers to. Best effort: a part left behind is
    /// never read again.
    async fn delete_parts(&self, pipeline: &str, parts: &Parts) {
        for i in 0..parts.count {
            if let Err(e) = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key(PK, parts.key(pipeline, i))
                .send()
                .await
            {
                let e = sdk_error(e, &self.table, "DeleteItem");
                tracing::warn!(pipeline, parts = %parts.id, error = %e.one_line(), "could not delete a replaced checkpoint part");
                return;
            }
        }
    }

    /// Writes `w` to the pipeline's item if its condition holds. A failed condition yields the
    /// current item (returned by DynamoDB, else read again).
    async fn conditional_update(&self, pipeline: &str, w: Write) -> Result<Outcome> {
        validate_pipeline(pipeline)?;
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, key(pipeline))
            .update_expression(w.update)
            .condition_expression(w.condition)
            .set_expression_attribute_names(Some(w.names))
            .set_expression_attribute_values(Some(w.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(Outcome::Written),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                let returned = match e.err() {
                    UpdateItemError::ConditionalCheckFailedException(c) => c.item().cloned(),
                    _ => None,
                };
                let resolved = match returned {
                    Some(item) => {
                        let parsed = parse_item(&self.table, pipeline, &item)?;
                        self.resolve(pipeline, parsed).await?
                    }
                    None => None,
                };
                let now = match resolved {
                    Some(now) => now,
                    None => self.read(pipeline).await?,
                };
                Ok(Outcome::Rejected(Box::new(now)))
            }
            Err(e) => Err(sdk_error(e, &self.table, "UpdateItem")),
        }
    }

    /// Writes `next` if the stored version is `expected` and `lease` (if any) still holds,
    /// skipping the client-side checks `save` makes first: the server-side condition alone.
    #[cfg(any(test, feature = "conformance"))]
    pub async fn save_condition_only(
        &self,
        expected: Option<u64>,
        next: &Checkpoint,
        lease: Option<&Lease>,
    ) -> Result<()> {
        let body = self.write_body(next).await?;
        match self
            .conditional_update(&next.pipeline, save_write(expected, next, lease, &body))
            .await?
        {
            Outcome::Written => Ok(()),
            Outcome::Rejected(_) => Err(Error::conflict("condition failed")),
        }
    }

    /// Checks the table's key schema and status, creating the table if allowed.
    async fn ensure_table(&self, create_table: bool) -> Result<()> {
        let t = &self.table;
        match self.client.describe_table().table_name(t).send().await {
            Ok(out) => {
                let desc = out.table.ok_or_else(|| {
                    Error::transient(format!("DescribeTable {t} returned no table"))
                })?;
                check_key_schema(t, desc.key_schema(), desc.attribute_definitions())?;
                if desc.table_status() == Some(&TableStatus::Active) {
                    return Ok(());
                }
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                if !create_table {
                    return Err(Error::config(format!(
                        "DynamoDB table {t} does not exist: create it (partition key pk, string) or run with --create-table"
                    )));
                }
                self.create_table().await?;
            }
            Err(e) => return Err(sdk_error(e, t, "DescribeTable")),
        }
        self.wait_active().await
    }

    async fn create_table(&self) -> Result<()> {
        let t = &self.table;
        let build = |e: aws_sdk_dynamodb::error::BuildError| {
            Error::with_source(ErrorKind::Fatal, "building CreateTable", e)
        };
        let res = self
            .client
            .create_table()
            .table_name(t)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(PK)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(PK)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build)?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match res {
            Ok(_) => {
                tracing::info!(table = %t, "created DynamoDB table");
                Ok(())
            }
            // Another worker is creating it at the same time.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_error(e, t, "CreateTable")),
        }
    }

    /// Polls DescribeTable until the table is usable (ACTIVE or UPDATING), for a bounded time.
    async fn wait_active(&self) -> Result<()> {
        let t = &self.table;
        let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_WAIT;
        let mut delay = Duration::from_millis(200);
        loop {
            match self.client.describe_table().table_name(t).send().await {
                Ok(out) => match out.table.as_ref().and_then(|d| d.table_status()) {
                    Some(TableStatus::Active | TableStatus::Updating) => return Ok(()),
                    Some(TableStatus::Creating) | None => {}
                    Some(s) => {
                        return Err(Error::config(format!(
                            "DynamoDB table {t} is {}: use another table",
                            s.as_str()
                        )));
                    }
                },
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) => {}
                Err(e) => return Err(sdk_error(e, t, "DescribeTable")),
            }
            if tokio::time::Instant::now() + delay > deadline {
                return Err(Error::transient(format!(
                    "DynamoDB table {t} is not ACTIVE after {} s",
                    TABLE_ACTIVE_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

impl PositionStore for DynamoStore {
    fn load<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<Checkpoint>>> {
        Box::pin(async move { Ok(self.read(pipeline).await?.checkpoint) })
    }

    fn save<'a>(
        &'a self,
        expected: Option<u64>,
        next: &'a Checkpoint,
        lease: Option<&'a Lease>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let p = next.pipeline.as_str();
            let stored = self.read(p).await?;
            check_lease(stored.lease.as_ref(), lease)?;
            check_transition(stored.checkpoint.as_ref(), expected, next)?;
            let body = self.write_body(next).await?;
            let w = save_write(expected, next, lease, &body);
            // An error here leaves it unknown whether the item now refers to new parts: they
            // are kept.
            match self.conditional_update(p, w).await? {
                Outcome::Written => {
                    if let Some(old) = stored.parts.filter(|old| Some(old) != body.parts()) {
                        self.delete_parts(p, &old).await;
                    }
                    Ok(())
                }
                Outcome::Rejected(now) => {
                    if let Some(parts) = body.parts() {
                        self.delete_parts(p, parts).await;
                    }
                    // Explain with the same checks against the state that won.
                    check_lease(now.lease.as_ref(), lease)?;
                    check_transition(now.checkpoint.as_ref(), expected, next)?;
                    Err(Error::conflict(format!(
                        "checkpoint of pipeline {p:?} changed during the save: another worker is running this pipeline"
                    )))
                }
            }
        })
    }

    fn delete<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_pipeline(pipeline)?;
            if let Some(Parsed::InParts { parts, .. }) = self
                .raw_item(pipeline)
                .await?
                .map(|item| parse_item(&self.table, pipeline, &item))
                .transpose()?
            {
                self.delete_parts(pipeline, &parts).await;
            }
            self.client
                .delete_item()
                .table_name(&self.table)
                .key(PK, key(pipeline))
                .send()
                .await
                .map_err(|e| sdk_error(e, &self.table, "DeleteItem"))?;
            Ok(())
        })
    }

    fn acquire_lease<'a>(
        &'a self,
        pipeline: &'a str,
        owner: &'a str,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<Lease>> {
        Box::pin(async move {
            let mut stored = self.read_lease(pipeline).await?;
            for _ in 0..ACQUIRE_ROUNDS {
                let granted = grant_lease(stored.as_ref(), pipeline, owner, ttl_ms, now_ms())?;
                match self
                    .conditional_update(pipeline, acquire_write(stored.as_ref(), &granted))
                    .await?
                {
                    Outcome::Written => return Ok(granted),
                    // Someone changed the lease since we read it: decide again on what is there now.
                    Outcome::Rejected(now) => stored = now.lease,
                }
            }
            Err(Error::conflict(format!(
                "the lease on pipeline {pipeline:?} keeps changing: other workers are contending for it"
            )))
        })
    }

    fn renew_lease<'a>(&'a self, lease: &'a Lease, ttl_ms: i64) -> BoxFuture<'a, Result<Lease>> {
        Box::pin(async move {
            let renewed = Lease {
                expires_at_ms: now_ms() + ttl_ms,
                ..lease.clone()
            };
            match self
                .conditional_update(&lease.pipeline, holder_write(lease, renewed.expires_at_ms))
                .await?
            {
                Outcome::Written => Ok(renewed),
                Outcome::Rejected(now) => {
                    check_lease(now.lease.as_ref(), Some(lease))?;
                    Err(Error::conflict(format!(
                        "the lease on pipeline {:?} changed during its renewal; this worker stops writing",
                        lease.pipeline
                    )))
                }
            }
        })
    }

    fn release_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Rejected: no longer ours, nothing to release.
            self.conditional_update(&lease.pipeline, holder_write(lease, 0))
                .await?;
            Ok(())
        })
    }

    fn lease<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<Lease>>> {
        Box::pin(async move { self.read_lease(pipeline).await })
    }

    fn url(&self) -> String {
        format!("dynamodb://{}", self.table)
    }
}

/// The table name of `dynamodb://table`.
fn parse_url(url: &str) -> Result<String> {
    let table = url
        .strip_prefix("dynamodb://")
        .unwrap_or(url)
        .trim_end_matches('/');
    let valid = (3..=255).contains(&table.len())
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !valid {
        return Err(Error::config(format!(
            "invalid DynamoDB position store {url:?}: use dynamodb://<table> (3-255 letters, digits, '_', '-', '.')"
        )));
    }
    Ok(table.to_string())
}

/// The same checkpoint names as the local store ([`crate::store::check_name`]).
fn validate_pipeline(pipeline: &str) -> Result<()> {
    crate::store::check_name(pipeline)
}

/// The partition key of a pipeline's item.
fn key(pipeline: &str) -> AttributeValue {
    AttributeValue::S(format!("pipeline#{pipeline}"))
}

fn client_config(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Config {
    use aws_sdk_dynamodb::config::retry::RetryConfig;
    let mut b = aws_sdk_dynamodb::config::Builder::from(sdk);
    // The SDK default is 3 attempts; a position store rides out longer throttling bursts.
    if sdk
        .retry_config()
        .is_none_or(|r| r.max_attempts() == RetryConfig::standard().max_attempts())
    {
        b = b.retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
    }
    b.timeout_config(crate::aws::bounded_timeouts(
        sdk,
        Duration::from_secs(10),
        Duration::from_secs(120),
    ))
    .build()
}

fn check_key_schema(
    table: &str,
    keys: &[KeySchemaElement],
    attrs: &[AttributeDefinition],
) -> Result<()> {
    let pk_is_string = attrs
        .iter()
        .any(|a| a.attribute_name() == PK && *a.attribute_type() == ScalarAttributeType::S);
    let ok = matches!(keys, [k] if k.attribute_name() == PK && *k.key_type() == KeyType::Hash)
        && pk_is_string;
    if ok {
        return Ok(());
    }
    let found: Vec<String> = keys
        .iter()
        .map(|k| format!("{} ({})", k.attribute_name(), k.key_type().as_str()))
        .collect();
    Err(Error::config(format!(
        "DynamoDB table {table} has key [{}]: tidemark needs a table whose only key is the partition key pk (string); use another table",
        found.join(", ")
    )))
}

/// One UpdateItem: update and condition expressions with their placeholders.
#[derive(Debug, Default, Clone, PartialEq)]
struct Write {
    update: String,
    condition: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Write {
    /// `#attr`, registering the name.
    fn name(&mut self, attr: &str) -> String {
        let n = format!("#{attr}");
        self.names.insert(n.clone(), attr.to_string());
        n
    }

    /// `:placeholder`, registering the value.
    fn value(&mut self, placeholder: &str, v: AttributeValue) -> String {
        let p = format!(":{placeholder}");
        self.values.insert(p.clone(), v);
        p
    }

    /// `#attr = :placeholder`.
    fn is(&mut self, attr: &str, placeholder: &str, v: AttributeValue) -> String {
        format!("{} = {}", self.name(attr), self.value(placeholder, v))
    }

    /// `#lease_owner = :owner AND #lease_epoch = :epoch`: the presented lease still holds.
    fn held_by(&mut self, lease: &Lease) -> String {
        format!(
            "{} AND {}",
            self.is(LEASE_OWNER, "owner", s(&lease.owner)),
            self.is(LEASE_EPOCH, "epoch", n(lease.epoch))
        )
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The save of `next`: checkpoint attributes only, conditional on `expected` and `lease`.
/// `body` is how the checkpoint is held ([`Body::of`]); the other two forms are removed.
fn save_write(
    expected: Option<u64>,
    next: &Checkpoint,
    lease: Option<&Lease>,
    body: &Body,
) -> Write {
    let (attr, value) = match body {
        Body::Json(json) => (CHECKPOINT, AttributeValue::S(json.clone())),
        Body::Zstd(z) => (CHECKPOINT_ZSTD, AttributeValue::B(Blob::new(z.clone()))),
        Body::Parts(parts, _) => (CHECKPOINT_PARTS, AttributeValue::S(parts.attribute())),
    };
    let mut w = Write::default();
    let mut set = vec![
        w.is(VERSION, "version", n(next.version)),
        w.is(attr, "checkpoint", value),
        w.is(UPDATED_AT, "updated_at", s(&next.updated_at)),
    ];
    let mut remove: Vec<String> = [CHECKPOINT, CHECKPOINT_ZSTD, CHECKPOINT_PARTS]
        .into_iter()
        .filter(|a| *a != attr)
        .map(|a| w.name(a))
        .collect();
    match &next.position {
        Some(p) => set.push(w.is(POSITION, "position", AttributeValue::S(p.to_string()))),
        None => remove.push(w.name(POSITION)),
    }
    w.update = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
    w.condition = match expected {
        None => format!("attribute_not_exists({})", w.name(VERSION)),
        Some(e) => w.is(VERSION, "expected", n(e)),
    };
    if let Some(l) = lease {
        let held = w.held_by(l);
        w.condition = format!("{} AND {held}", w.condition);
    }
    w
}

impl Body {
    /// The smallest form that keeps the pipeline's item within [`INLINE_MAX`].
    fn of(cp: &Checkpoint) -> Result<Body> {
        let json = serde_json::to_string(cp)
            .map_err(|e| Error::with_source(ErrorKind::Fatal, "serializing checkpoint", e))?;
        if json.len() <= INLINE_MAX {
            return Ok(Body::Json(json));
        }
        let z = zstd::encode_all(json.as_bytes(), 3)
            .map_err(|e| Error::with_source(ErrorKind::Fatal, "compressing checkpoint", e))?;
        if z.len() <= INLINE_MAX {
            return Ok(Body::Zstd(z));
        }
        let count = z.len().div_ceil(PART_MAX);
        if count > MAX_PARTS {
            return Err(Error::fatal(format!(
                "the checkpoint of pipeline {:?} is {} bytes compressed, above the {} parts of {PART_MAX} bytes a DynamoDB checkpoint may have",
                cp.pipeline,
                z.len(),
                MAX_PARTS
            )));
        }
        let parts = Parts {
            id: format!("{}-{:016x}", cp.version, fastrand::u64(..)),
            count,
            bytes: z.len(),
        };
        Ok(Body::Parts(parts, z))
    }

    fn parts(&self) -> Option<&Parts> {
        match self {
            Body::Parts(p, _) => Some(p),
            _ => None,
        }
    }
}

fn unzstd(table: &str, pipeline: &str, z: &[u8]) -> Result<Vec<u8>> {
    zstd::decode_all(z)
        .map_err(|e| invalid(table, pipeline, &format!("checkpoint compression: {e}")))
}

/// The item of `pipeline` cannot be read as a checkpoint.
fn invalid(table: &str, pipeline: &str, what: &str) -> Error {
    Error::fatal(format!(
        "DynamoDB table {table}: the item of pipeline {pipeline:?} is not valid ({what}): repair it or remove it (tidemark reset)"
    ))
}

/// The checkpoint in `json`, checked against the item's `version` and key.
fn checkpoint_of(
    table: &str,
    pipeline: &str,
    json: &[u8],
    version: Option<u64>,
) -> Result<Checkpoint> {
    let bad = |what: &str| invalid(table, pipeline, what);
    let cp: Checkpoint =
        serde_json::from_slice(json).map_err(|e| bad(&format!("checkpoint: {e}")))?;
    if version != Some(cp.version) {
        return Err(bad(&format!(
            "version {version:?} differs from the checkpoint's {}",
            cp.version
        )));
    }
    if cp.pipeline != pipeline {
        return Err(bad(&format!(
            "holds the checkpoint of pipeline {:?}",
            cp.pipeline
        )));
    }
    Ok(cp)
}

/// Replaces the observed lease `stored` (none: no lease attributes) with `granted`.
fn acquire_write(stored: Option<&Lease>, granted: &Lease) -> Write {
    let mut w = Write::default();
    w.update = format!(
        "SET {}, {}, {}",
        w.is(LEASE_OWNER, "owner", s(&granted.owner)),
        w.is(LEASE_EPOCH, "epoch", n(granted.epoch)),
        w.is(LEASE_EXPIRES_AT, "expires_at", n(granted.expires_at_ms))
    );
    w.condition = match stored {
        None => format!("attribute_not_exists({})", w.name(LEASE_OWNER)),
        Some(old) => format!(
            "{} AND {} AND {}",
            w.is(LEASE_OWNER, "old_owner", s(&old.owner)),
            w.is(LEASE_EPOCH, "old_epoch", n(old.epoch)),
            w.is(LEASE_EXPIRES_AT, "old_expires_at", n(old.expires_at_ms))
        ),
    };
    w
}

/// Sets the expiry of `lease` (renewal, or 0 for a release) while its owner and epoch hold it.
fn holder_write(lease: &Lease, expires_at_ms: i64) -> Write {
    let mut w = Write::default();
    w.update = format!(
        "SET {}",
        w.is(LEASE_EXPIRES_AT, "expires_at", n(expires_at_ms))
    );
    w.condition = w.held_by(lease);
    w
}

/// Reads a pipeline item. Checkpoint and lease attributes are each optional as a group; the
/// checkpoint is in one of three forms ([`Body`]).
fn parse_item(table: &str, pipeline: &str, item: &Item) -> Result<Parsed> {
    let bad = |what: &str| invalid(table, pipeline, what);
    let string = |attr: &str| -> Result<Option<&String>> {
        match item.get(attr) {
            None => Ok(None),
            Some(v) => v
                .as_s()
                .map(Some)
                .map_err(|_| bad(&format!("{attr} is not a string"))),
        }
    };
    let number = |attr: &str| -> Result<Option<&String>> {
        match item.get(attr) {
            None => Ok(None),
            Some(v) => v
                .as_n()
                .map(Some)
                .map_err(|_| bad(&format!("{attr} is not a number"))),
        }
    };
    let lease = match string(LEASE_OWNER)? {
        None => None,
        Some(owner) => {
            let epoch = number(LEASE_EPOCH)?
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad("lease_epoch"))?;
            let expires_at_ms = number(LEASE_EXPIRES_AT)?
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| bad("lease_expires_at"))?;
            Some(Lease {
                pipeline: pipeline.to_string(),
                owner: owner.clone(),
                epoch,
                expires_at_ms,
            })
        }
    };
    let version = number(VERSION)?.and_then(|v| v.parse::<u64>().ok());
    let zstd = match item.get(CHECKPOINT_ZSTD) {
        None => None,
        Some(v) => Some(
            v.as_b()
                .map_err(|_| bad(&format!("{CHECKPOINT_ZSTD} is not binary")))?,
        ),
    };
    let checkpoint = match (string(CHECKPOINT)?, zstd, string(CHECKPOINT_PARTS)?) {
        (None, None, None) => None,
        (Some(json), None, None) => Some(checkpoint_of(table, pipeline, json.as_bytes(), version)?),
        (None, Some(z), None) => Some(checkpoint_of(
            table,
            pipeline,
            &unzstd(table, pipeline, z.as_ref())?,
            version,
        )?),
        (None, None, Some(parts)) => {
            let parts =
                Parts::parse(parts).ok_or_else(|| bad(&format!("{CHECKPOINT_PARTS} {parts:?}")))?;
            return Ok(Parsed::InParts {
                parts,
                version,
                lease,
            });
        }
        _ => return Err(bad("it holds more than one form of checkpoint")),
    };
    Ok(Parsed::Whole(Box::new(Stored {
        checkpoint,
        lease,
        parts: None,
    })))
}

/// Maps an SDK error of `action` (the DynamoDB API name) on `table` to a tidemark error; the
/// meaning comes from the one AWS classifier.
fn sdk_error<E>(err: SdkError<E, HttpResponse>, table: &str, action: &str) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let f = Failure::of(&err);
    let detail = &f.detail;
    let message = match f.cause {
        Cause::AccessDenied => format!(
            "access denied to DynamoDB table {table}: allow dynamodb:{action} on it for this worker's AWS identity ({detail})"
        ),
        Cause::NotFound => format!(
            "DynamoDB table {table} does not exist: create it (partition key pk, string) or run with --create-table"
        ),
        Cause::Endpoint => {
            format!(
                "cannot send DynamoDB {action} for table {table}: check AWS_ENDPOINT_URL ({detail})"
            )
        }
        Cause::Credentials if f.code.is_none() => format!(
            "no AWS credentials for DynamoDB table {table}: configure credentials (environment, profile, or role)"
        ),
        Cause::Credentials | Cause::ClockSkew | Cause::WrongRegion => format!(
            "DynamoDB rejected the AWS credentials ({detail}): check the credentials and region"
        ),
        _ => format!("DynamoDB {action} on table {table} failed: {detail}"),
    };
    Error::with_source(f.kind(), message, err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::position::{Lsn, PgPosition};
    use crate::store::SourcePosition;

    /// `parse_item` of an item that holds its whole checkpoint.
    fn parse(table: &str, pipeline: &str, item: &Item) -> Result<Stored> {
        match parse_item(table, pipeline, item)? {
            Parsed::Whole(stored) => Ok(*stored),
            Parsed::InParts { parts, .. } => panic!("in parts: {parts:?}"),
        }
    }

    fn lease(owner: &str, epoch: u64, expires_at_ms: i64) -> Lease {
        Lease {
            pipeline: "p".into(),
            owner: owner.into(),
            epoch,
            expires_at_ms,
        }
    }

    fn sv(w: &Write, placeholder: &str) -> String {
        let v = &w.values[placeholder];
        v.as_s().or_else(|_| v.as_n()).unwrap().clone()
    }

    /// Every placeholder used is defined and every one defined is used (DynamoDB rejects both).
    fn assert_placeholders_match(w: &Write) {
        let text = format!("{} {}", w.update, w.condition);
        let used: std::collections::BTreeSet<String> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '#' || c == ':'))
            .filter(|t| t.starts_with('#') || t.starts_with(':'))
            .map(str::to_string)
            .collect();
        let defined: std::collections::BTreeSet<String> =
            w.names.keys().chain(w.values.keys()).cloned().collect();
        assert_eq!(used, defined, "{w:?}");
    }

    #[test]
    fn first_save_requires_no_version() {
        let cp = Checkpoint::new("p").next();
        let w = save_write(None, &cp, None, &Body::of(&cp).unwrap());
        assert_eq!(w.condition, "attribute_not_exists(#version)");
        assert_eq!(
            w.update,
            "SET #version = :version, #checkpoint = :checkpoint, #updated_at = :updated_at \
             REMOVE #checkpoint_zstd, #checkpoint_parts, #position"
        );
        assert_eq!(sv(&w, ":version"), "1");
        assert_eq!(
            serde_json::from_str::<Checkpoint>(&sv(&w, ":checkpoint")).unwrap(),
            cp
        );
        assert_placeholders_match(&w);
    }

    #[test]
    fn fenced_save_requires_version_and_lease() {
        let mut cp = Checkpoint::new("p").next().next();
        cp.position = Some(SourcePosition::Postgres(PgPosition::complete(
            Lsn(100),
            Lsn(108),
        )));
        let w = save_write(
            Some(1),
            &cp,
            Some(&lease("w-a", 3, 99)),
            &Body::of(&cp).unwrap(),
        );
        assert_eq!(
            w.condition,
            "#version = :expected AND #lease_owner = :owner AND #lease_epoch = :epoch"
        );
        assert!(
            w.update.starts_with("SET ")
                && w.update.contains("#position = :position")
                && w.update
                    .ends_with(" REMOVE #checkpoint_zstd, #checkpoint_parts")
        );
        assert!(
            !w.update.contains("lease"),
            "saves never touch lease attributes: {}",
            w.update
        );
        assert_eq!(
            (sv(&w, ":expected"), sv(&w, ":version")),
            ("1".into(), "2".into())
        );
        assert_eq!(
            (sv(&w, ":owner"), sv(&w, ":epoch")),
            ("w-a".into(), "3".into())
        );
        assert_eq!(sv(&w, ":position"), cp.position.unwrap().to_string());
        assert_placeholders_match(&w);
    }

    #[test]
    fn acquire_is_conditional_on_the_observed_lease() {
        let new = lease("w-b", 1, 5_000);
        let w = acquire_write(None, &new);
        assert_eq!(w.condition, "attribute_not_exists(#lease_owner)");
        assert_eq!(
            w.update,
            "SET #lease_owner = :owner, #lease_epoch = :epoch, #lease_expires_at = :expires_at"
        );
        assert!(
            !w.update.contains("version"),
            "lease writes never change version"
        );
        assert_placeholders_match(&w);

        let old = lease("w-a", 4, 1_000);
        let w = acquire_write(Some(&old), &lease("w-b", 5, 5_000));
        assert_eq!(
            w.condition,
            "#lease_owner = :old_owner AND #lease_epoch = :old_epoch AND #lease_expires_at = :old_expires_at"
        );
        assert_eq!(
            (
                sv(&w, ":old_owner"),
                sv(&w, ":old_epoch"),
                sv(&w, ":old_expires_at")
            ),
            ("w-a".into(), "4".into(), "1000".into())
        );
        assert_eq!(
            (sv(&w, ":owner"), sv(&w, ":epoch")),
            ("w-b".into(), "5".into())
        );
        assert_placeholders_match(&w);
    }

    #[test]
    fn renew_and_release_require_owner_and_epoch() {
        let w = holder_write(&lease("w-a", 2, 10), 0);
        assert_eq!(w.update, "SET #lease_expires_at = :expires_at");
        assert_eq!(
            w.condition,
            "#lease_owner = :owner AND #lease_epoch = :epoch"
        );
        assert_eq!(sv(&w, ":expires_at"), "0");
        assert_placeholders_match(&w);
    }

    /// The attributes `save_write` and `acquire_write` set, as DynamoDB would store them.
    fn stored_item(cp: &Checkpoint, l: Option<&Lease>) -> Item {
        let mut item = Item::new();
        item.insert(PK.into(), key(&cp.pipeline));
        let w = save_write(None, cp, None, &Body::of(cp).unwrap());
        for (attr, ph) in [
            (VERSION, ":version"),
            (CHECKPOINT, ":checkpoint"),
            (UPDATED_AT, ":updated_at"),
        ] {
            item.insert(attr.into(), w.values[ph].clone());
        }
        if let Some(l) = l {
            let w = acquire_write(None, l);
            for (attr, ph) in [
                (LEASE_OWNER, ":owner"),
                (LEASE_EPOCH, ":epoch"),
                (LEASE_EXPIRES_AT, ":expires_at"),
            ] {
                item.insert(attr.into(), w.values[ph].clone());
            }
        }
        item
    }

    /// A checkpoint naming `n` tables (the captured list and one intent key each).
    fn wide(n: usize, random: bool) -> Checkpoint {
        let mut cp = Checkpoint::new("p").next();
        let tables: Vec<_> = (0..n)
            .map(|i| crate::change::TableId::new("sales", format!("orders_{i:05}")))
            .collect();
        cp.intent = Some(crate::store::WriteIntent {
            from: None,
            to: SourcePosition::Postgres(PgPosition::complete(Lsn(1), Lsn(2))),
            keys: tables
                .iter()
                .map(|t| match random {
                    true => format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
                    false => format!(
                        "p/{t}/changes/dt=2026-12-07/0000000000000001-0000000000000000.parquet"
                    ),
                })
                .collect(),
            started_ms: None,
        });
        cp.tables = Some(tables);
        cp
    }

    #[test]
    fn bodies_stay_small_whatever_the_checkpoint() {
        assert!(matches!(Body::of(&wide(10, false)).unwrap(), Body::Json(_)));
        let Body::Zstd(z) = Body::of(&wide(3000, false)).unwrap() else {
            panic!("3,000 tables compress into the item")
        };
        assert!(z.len() <= INLINE_MAX);
        let Body::Parts(parts, _) = Body::of(&wide(30_000, true)).unwrap() else {
            panic!("30,000 random keys go to parts")
        };
        assert!(parts.count >= 2 && parts.bytes > PART_MAX, "{parts:?}");
        assert_eq!(Parts::parse(&parts.attribute()), Some(parts));
        let one = PART_MAX.to_string();
        assert!(Parts::parse(&format!("a 1 {one}")).is_some());
        let past = (PART_MAX + 1).to_string();
        let huge = format!("a {} {}", MAX_PARTS + 1, (MAX_PARTS + 1) * PART_MAX);
        for bad in [
            "",
            "a",
            "a 1",
            "a 1 2 3",
            "a#b 1 2",
            "a x 2",
            "a 0 0",
            "a 2 10",
            &format!("a 1 {past}"),
            &huge,
        ] {
            assert_eq!(Parts::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn compressed_items_read_back_and_parts_are_named() {
        let cp = wide(3000, false);
        let w = save_write(None, &cp, None, &Body::of(&cp).unwrap());
        let mut item = Item::new();
        for (attr, ph) in [(VERSION, ":version"), (CHECKPOINT_ZSTD, ":checkpoint")] {
            item.insert(attr.into(), w.values[ph].clone());
        }
        assert_eq!(parse("t", "p", &item).unwrap().checkpoint, Some(cp));
        item.insert(CHECKPOINT.into(), s("{}"));
        assert!(parse("t", "p", &item).is_err(), "two forms at once");

        let mut parted = Item::new();
        parted.insert(VERSION.into(), n(9));
        parted.insert(CHECKPOINT_PARTS.into(), s("9-ab 3 600000"));
        let Parsed::InParts { parts, version, .. } = parse_item("t", "p", &parted).unwrap() else {
            panic!("parts")
        };
        assert_eq!(version, Some(9));
        assert_eq!(
            parts.key("p", 2),
            AttributeValue::S("pipeline#p#checkpoint#9-ab#2".into())
        );
    }

    #[test]
    fn items_map_to_checkpoint_and_lease() {
        let cp = Checkpoint::new("p").next();
        let l = lease("w-a", 7, 1_700_000_000_000);
        let both = parse("t", "p", &stored_item(&cp, Some(&l))).unwrap();
        assert_eq!(
            both,
            Stored {
                checkpoint: Some(cp.clone()),
                lease: Some(l.clone()),
                parts: None,
            }
        );
        assert_eq!(
            parse("t", "p", &stored_item(&cp, None)).unwrap().lease,
            None
        );

        // A lease taken before the first save: no checkpoint yet.
        let mut lease_only = stored_item(&cp, Some(&l));
        for a in [VERSION, CHECKPOINT, UPDATED_AT] {
            lease_only.remove(a);
        }
        assert_eq!(
            parse("t", "p", &lease_only).unwrap(),
            Stored {
                checkpoint: None,
                lease: Some(l),
                parts: None,
            }
        );
        assert_eq!(parse("t", "p", &Item::new()).unwrap(), Stored::default());
    }

    #[test]
    fn invalid_items_are_clear_errors() {
        let cp = Checkpoint::new("p").next();
        let mut item = stored_item(&cp, None);
        item.insert(VERSION.into(), n(5));
        let e = parse("t", "p", &item).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Fatal);
        assert!(e.to_string().contains("differs"), "{e}");

        item.insert(CHECKPOINT.into(), s("{not json"));
        let e = parse("t", "p", &item).unwrap_err();
        assert!(
            e.to_string().contains("table t") && e.to_string().contains("tidemark reset"),
            "{e}"
        );

        let mut item = stored_item(&cp, Some(&lease("w", 1, 1)));
        item.insert(LEASE_EPOCH.into(), s("one"));
        assert!(parse("t", "p", &item).is_err());
        assert!(
            parse("t", "other", &stored_item(&cp, None)).is_err(),
            "checkpoint of another pipeline"
        );
    }

    #[test]
    fn urls_and_names() {
        assert_eq!(
            parse_url("dynamodb://tidemark-positions").unwrap(),
            "tidemark-positions"
        );
        assert_eq!(parse_url("dynamodb://t.a_b/").unwrap(), "t.a_b");
        for bad in [
            "dynamodb://",
            "dynamodb://ab",
            "dynamodb://a/b",
            "dynamodb://a b c",
        ] {
            assert_eq!(
                parse_url(bad).unwrap_err().kind(),
                ErrorKind::Config,
                "{bad}"
            );
        }
        assert!(validate_pipeline("orders-1.v2_x").is_ok());
        assert!(validate_pipeline("orders#shard#shardId-000000000001").is_ok());
        assert!(validate_pipeline("orders#baseline").is_ok());
        for bad in [
            "",
            ".hidden",
            "a#b",
            "a#shard#",
            "a#shard#1#2",
            "#shard#1",
            "a/b",
        ] {
            assert!(validate_pipeline(bad).is_err(), "{bad}");
        }
        assert_eq!(key("orders"), s("pipeline#orders"));
    }
}
