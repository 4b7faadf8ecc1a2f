//! Lambda handler for a Kinesis event source mapping: decodes each shard batch, writes Parquet
//! change objects and commits the shard's position ([`ShardIngest::handle`]). Reports the first
//! record that is not durable in `batchItemFailures`; configure the mapping with
//! `FunctionResponseTypes: [ReportBatchItemFailures]` and `ParallelizationFactor: 1`.
//!
//! Environment: `TIDEMARK_PIPELINE`, `TIDEMARK_OUTPUT`, `TIDEMARK_POSITIONS`, `TIDEMARK_FORMAT`.

use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use tidemark_core::engine::shard::{ShardIngest, ShardRecord};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tidemark_core::telemetry::init_lambda_logging();
    let ingest = Arc::new(ShardIngest::from_env().await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let ingest = ingest.clone();
        async move { handle(&ingest, event.payload).await }
    }))
    .await
}

async fn handle(ingest: &ShardIngest, event: KinesisEvent) -> Result<KinesisEventResponse, Error> {
    let Some(first) = event.records.first() else {
        return Ok(KinesisEventResponse::default());
    };
    // One invocation carries one shard: its id prefixes every eventID ("shardId-...:<seq>").
    let shard = first
        .event_id
        .as_deref()
        .and_then(|id| id.split_once(':'))
        .map(|(shard, _)| shard.to_string())
        .ok_or("a Kinesis record without an eventID naming its shard")?;
    let mut records = Vec::with_capacity(event.records.len());
    for r in event.records {
        let k = r.kinesis;
        records.push(ShardRecord {
            sequence: k.sequence_number.parse()?,
            partition_key: k.partition_key,
            arrival_ms: (k.approximate_arrival_timestamp.0.timestamp_millis()),
            data: k.data.0,
        });
    }
    let mut response = KinesisEventResponse::default();
    if let Some(seq) = ingest.handle(&shard, &records).await? {
        let mut failure = KinesisBatchItemFailure::default();
        failure.item_identifier = Some(seq.to_string());
        response.batch_item_failures.push(failure);
    }
    Ok(response)
}
