//! tidemark-core: change data capture from PostgreSQL, MySQL/MariaDB and Kinesis into
//! Athena-ready Parquet.
//!
//! # Data flow
//!
//! ```text
//!  source (postgres, mysql, hook)      engine                         output / store
//!  ───────────────────────            ──────                         ──────────────
//!  TotalSource: open, prepare ─────> engine::run (one driver)
//!  SnapshotRead + TableCopier ─────> snapshot driver ── parts ─────> ObjectOutput (local dir, S3)
//!  ChangeStream ─ Begin/Rows/...     stream loop: ChangeSink buffer   │
//!     Commit/Progress ────────────>   encode off-task, N in flight    │ intent → objects → commit
//!     <── ack(durable position) ──   commits in order ──────────────> PositionStore (file, DynamoDB)
//!                                     (sink::parquet, or sink::kinesis)
//!  Kinesis shard records ──────────> engine::shard (apply per shard) ─> the same protocol
//!  S3 baseline version ────────────> engine::baseline ────────────────> snapshot parts + position
//!
//!  Source (every source, Kinesis with its baseline too): position, ordering, resume mode,
//!  check, reset, status ─────────────> runtime (tidemark check / reset / status)
//! ```
//!
//! A position moves only after the Parquet it covers is durable ([`engine::commit_batch`]); a
//! restart replays from it and skips what it covers, so the output holds each row once.
//! [`failpoint`] aborts the process at each window of that protocol, for the end-to-end tests.
//!
//! The contracts: [`source::Source`], [`source::TotalSource`] (with [`source::SnapshotRead`],
//! [`source::snapshot::TableCopier`], [`source::stream::ChangeStream`]),
//! [`sink::ChangeSink`] (with [`sink::ChangeBuffer`]), [`output::ObjectOutput`],
//! [`store::PositionStore`]; one AWS error classifier,
//! `aws::error`.
//!
//! # Layers
//!
//! Each module uses only its own layer and those below (checked by a unit test, `layers.rs`):
//! model ([`change`], [`position`], [`clock`], [`table_name`], [`metrics`], [`failpoint`]) ←
//! [`codec`], [`parquet`], [`config`], `aws` ← [`output`], [`store`], [`lease`] ← [`source`], [`sink`] ←
//! [`engine`] ← [`runtime`] (run, supervisor, status, check, reset) ← the binaries.

#[cfg(feature = "aws")]
pub mod aws;
pub mod change;
pub mod clock;
pub mod codec;
pub mod config;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod lease;
pub mod metrics;
pub mod output;
pub mod parquet;
pub mod position;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod store;
pub mod table_name;
#[cfg(feature = "lambda")]
pub mod telemetry;

pub use error::{Error, ErrorKind, Result};

#[cfg(test)]
mod layers;

/// A boxed, sendable future: keeps the storage traits object-safe.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
