//! PostgreSQL logical replication source (pgoutput).

pub mod catalog;
pub mod check;
pub mod connect;
pub mod copy_text;
pub mod pgoutput;
pub mod replication;
pub mod snapshot;
pub mod source;
pub mod stream;
pub mod tls;
pub mod types;
