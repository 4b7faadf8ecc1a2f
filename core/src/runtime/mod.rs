//! What a long-running process around the engine needs: signals (and, moving here from the
//! binaries, the supervisor, status, check and reset).

pub mod signal;

pub use signal::shutdown_signal;
