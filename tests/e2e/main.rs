//! The end-to-end tests against the local stack, in one test binary (one link step), a module
//! per area. The tests that change server-wide state are the `server_wide` binary.

mod athena_views;
mod aws_failures;
mod checkpoint_size;
mod cli;
mod dynamodb_store;
mod kinesis_lambda;
mod kinesis_publish;
mod kinesis_worker;
mod mysql_pipeline;
mod postgres_pipeline;
mod replication_client;
mod s3_output;
mod source_conformance;
mod tls;
mod types_round_trip;
