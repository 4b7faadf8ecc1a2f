//! Change sources.

#[cfg(feature = "postgres")]
pub mod postgres;
