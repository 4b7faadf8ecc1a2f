//! MySQL/MariaDB row-binlog source.
//!
//! The binlog arrives through `mysql_async`'s binlog stream (transport, framing, checksums,
//! TABLE_MAP parsing); row values are decoded by tidemark's own per-TABLE_MAP plan
//! ([`binlog::TablePlan`]), and MariaDB's GTID events are parsed here.

pub mod binlog;
pub mod check;
pub mod connect;
pub mod gtid;
pub mod snapshot;
pub mod source;
pub mod stream;
pub mod types;
