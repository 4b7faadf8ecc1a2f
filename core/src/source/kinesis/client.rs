//! The Kinesis Data Streams client: shards, reading a shard, publishing records.
//!
//! Errors are classified by the one AWS classifier ([`crate::aws::error`]): a missing stream,
//! access denied, an invalid argument or an unusable KMS key is
//! [`ErrorKind::Config`](crate::ErrorKind::Config); throttling, expired iterators, 5xx,
//! timeouts and connection failures are [`ErrorKind::Transient`](crate::ErrorKind::Transient);
//! any other refusal is [`ErrorKind::Fatal`](crate::ErrorKind::Fatal).

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::get_shard_iterator::builders::GetShardIteratorFluentBuilder;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};

use super::{ShardRead, ShardRecord};
use crate::aws::error::{Cause, Failure};
use crate::error::{Error, Result};
use crate::position::SeqNo;

pub use super::{Records, ShardInfo};

/// The outcome of publishing one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Put {
    Accepted {
        shard: String,
        sequence: SeqNo,
    },
    /// Throttled or failed inside Kinesis: retry it (in order).
    Failed {
        code: String,
        message: String,
    },
}

/// One attempt of any Kinesis call (a third of the default 30 s lease, so a PutRecords under a
/// lease ends before a takeover could begin).
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A read call with the SDK's retries.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A Kinesis stream.
#[derive(Debug, Clone)]
pub struct KinesisStream {
    client: Client,
    /// PutRecords without the SDK's retries: a retried request whose first attempt was stored
    /// but unanswered would put its records twice. A failed request is an error instead, and
    /// the publisher's recovery finds what reached the stream.
    put_client: Client,
    pub name: String,
}

impl KinesisStream {
    /// Opens the stream `name` with the standard AWS configuration.
    pub async fn open(name: &str) -> Result<KinesisStream> {
        let sdk = crate::aws::sdk_config().await;
        // Every call is bounded: a PutRecords must end well inside the publisher's lease
        // margin, and a read must not hang a shard's consumer.
        let conf = aws_sdk_kinesis::config::Builder::from(&sdk)
            .timeout_config(crate::aws::bounded_timeouts(
                &sdk,
                ATTEMPT_TIMEOUT,
                READ_TIMEOUT,
            ))
            .build();
        let put_conf = aws_sdk_kinesis::config::Builder::from(&sdk)
            .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
            .timeout_config(crate::aws::bounded_timeouts(
                &sdk,
                ATTEMPT_TIMEOUT,
                ATTEMPT_TIMEOUT,
            ))
            .build();
        Ok(KinesisStream {
            client: Client::from_conf(conf),
            put_client: Client::from_conf(put_conf),
            name: name.to_string(),
        })
    }

    /// Every shard the stream still lists (open and closed within retention).
    pub async fn shards(&self) -> Result<Vec<ShardInfo>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match &token {
                Some(t) => self.client.list_shards().next_token(t),
                None => self.client.list_shards().stream_name(&self.name),
            };
            let resp = req.send().await.map_err(|e| self.error("ListShards", e))?;
            for s in resp.shards() {
                let ending = s
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .map(str::parse)
                    .transpose()?;
                out.push(ShardInfo {
                    id: s.shard_id().to_string(),
                    parent: s.parent_shard_id().map(str::to_string),
                    adjacent_parent: s.adjacent_parent_shard_id().map(str::to_string),
                    ending,
                });
            }
            match resp.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// An iterator just after `after`, or at the shard's oldest record.
    pub async fn iterator(&self, shard: &str, after: Option<&SeqNo>) -> Result<String> {
        self.iterator_from(shard, |req| match after {
            Some(seq) if *seq != SeqNo::zero() => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq.as_str()),
            _ => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        })
        .await
    }

    /// An iterator at the first record that arrived at or after `at_ms` (UNIX ms).
    pub async fn iterator_at(&self, shard: &str, at_ms: i64) -> Result<String> {
        self.iterator_from(shard, |req| {
            req.shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(
                    at_ms.max(0),
                ))
        })
        .await
    }

    async fn iterator_from(
        &self,
        shard: &str,
        start: impl FnOnce(GetShardIteratorFluentBuilder) -> GetShardIteratorFluentBuilder,
    ) -> Result<String> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.name)
            .shard_id(shard);
        let resp = start(req)
            .send()
            .await
            .map_err(|e| self.error("GetShardIterator", e))?;
        resp.shard_iterator()
            .map(str::to_string)
            .ok_or_else(|| Error::transient(format!("no iterator returned for shard {shard}")))
    }

    /// Up to `limit` records from `iterator`.
    pub async fn records(&self, iterator: &str, limit: i32) -> Result<Records> {
        let resp = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit)
            .send()
            .await
            .map_err(|e| self.error("GetRecords", e))?;
        let mut records = Vec::with_capacity(resp.records().len());
        for r in resp.records() {
            records.push(ShardRecord {
                sequence: r.sequence_number().parse()?,
                partition_key: r.partition_key().unwrap_or_default().to_string(),
                arrival_ms: r
                    .approximate_arrival_timestamp()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0),
                data: r.data().as_ref().to_vec(),
            });
        }
        Ok(Records {
            records,
            next_iterator: resp.next_shard_iterator().map(str::to_string),
            millis_behind_latest: resp.millis_behind_latest(),
        })
    }

    /// Publishes `records` (partition key, data) in one PutRecords call; the results align
    /// with the input.
    pub async fn put(&self, records: &[(String, Vec<u8>)]) -> Result<Vec<Put>> {
        let mut req = self.put_client.put_records().stream_name(&self.name);
        for (key, data) in records {
            req = req.records(
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(data.clone()))
                    .build()
                    .map_err(|e| Error::fatal(format!("PutRecords entry: {e}")))?,
            );
        }
        let resp = req.send().await.map_err(|e| self.error("PutRecords", e))?;
        resp.records()
            .iter()
            .map(
                |r| match (r.sequence_number(), r.shard_id(), r.error_code()) {
                    (Some(seq), Some(shard), None) => Ok(Put::Accepted {
                        shard: shard.to_string(),
                        sequence: seq.parse()?,
                    }),
                    (_, _, code) => Ok(Put::Failed {
                        code: code.unwrap_or("Unknown").to_string(),
                        message: r.error_message().unwrap_or_default().to_string(),
                    }),
                },
            )
            .collect()
    }

    fn error<E>(
        &self,
        op: &str,
        e: SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let f = Failure::of(&e);
        let hint = match f.cause {
            Cause::NotFound | Cause::AccessDenied | Cause::Invalid | Cause::Kms => format!(
                " (check that stream {:?} exists in this region and that the role may kinesis:{op})",
                self.name
            ),
            Cause::Credentials => " (fix the AWS credentials)".to_string(),
            Cause::Endpoint => " (check AWS_ENDPOINT_URL)".to_string(),
            _ => String::new(),
        };
        let message = format!(
            "Kinesis {op} on stream {:?} failed: {}{hint}",
            self.name, f.detail
        );
        Error::with_source(f.kind(), message, e)
    }
}

/// Kinesis itself: GetRecords pages, AfterSequenceNumber iterators, ListShards lineage.
impl ShardRead for KinesisStream {
    async fn shards(&self) -> Result<Vec<ShardInfo>> {
        KinesisStream::shards(self).await
    }

    async fn iterator(&self, shard: &str, after: Option<&SeqNo>) -> Result<String> {
        KinesisStream::iterator(self, shard, after).await
    }

    async fn records(&self, iterator: &str, limit: i32) -> Result<Records> {
        KinesisStream::records(self, iterator, limit).await
    }
}

#[cfg(test)]
mod timeout_tests {
    use super::*;

    /// Issue 11 item 11: every Kinesis call has an attempt and an operation timeout; a put
    /// ends within a third of the default lease.
    #[tokio::test]
    async fn every_kinesis_call_is_bounded_in_time() {
        let s = KinesisStream::open("s").await.unwrap();
        for (client, op) in [(&s.client, READ_TIMEOUT), (&s.put_client, ATTEMPT_TIMEOUT)] {
            let conf = client.config();
            let t = conf.timeout_config().unwrap();
            assert_eq!(t.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
            assert_eq!(t.operation_timeout(), Some(op));
        }
        assert!(ATTEMPT_TIMEOUT * 3 <= crate::config::PositionsConfig::default().lease_ttl());
    }
}
