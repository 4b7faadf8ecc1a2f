//! tidemark-core: change data capture from PostgreSQL into Athena-ready Parquet.
//!
//! Modules by domain: [`change`] (the change model), [`position`] (source positions),
//! [`source`] (change sources), [`parquet`] (Arrow mapping and Parquet encoding), [`output`]
//! (where objects go and how keys are named), [`store`] (position stores), [`pipeline`] (the
//! drive loop and the commit protocol), [`config`].

#[cfg(feature = "aws")]
pub mod aws;
pub mod change;
pub mod clock;
pub mod codec;
pub mod config;
pub mod engine;
pub mod error;
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
