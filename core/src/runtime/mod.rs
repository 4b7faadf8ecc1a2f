//! What a process around the engine needs: `run` (the pipeline a config names, until
//! stopped), the supervisor (retry, backoff, standby, stop timeout), signals, and the
//! `status`, `check` and `reset` commands, for every source.

#[cfg(any(feature = "postgres", feature = "mysql", feature = "aws"))]
pub mod check;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "aws"))]
pub mod reset;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod run;
pub mod signal;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "aws"))]
pub mod status;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod supervisor;

pub use signal::shutdown_signal;
