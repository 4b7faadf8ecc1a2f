//! The supervisor of a database pipeline's run: retries with backoff, standby when another
//! worker holds the pipeline, and a bound on how long a stop may take.
//!
//! Contract: a retryable error never loses anything (the checkpoint stays consistent; the next
//! run replays); only failures in a row without progress count against `max_retries`; a stop
//! request ends the loop with `Ok` once the run has flushed and committed.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::engine::{Backoff, Pipeline, PipelineState};
use crate::error::{ErrorKind, Result};

/// Runs `pipeline` until `stop` (then `Ok`), a fatal error, or `max_retries` failed retries
/// in a row. `signal` (SIGTERM/Ctrl-C) also interrupts a backoff wait.
pub async fn supervise(
    pipeline: &mut Pipeline,
    stop: watch::Receiver<bool>,
    mut signal: watch::Receiver<bool>,
    max_retries: u32,
) -> Result<()> {
    let metrics = pipeline.metrics.clone();
    let mut backoff = Backoff::new(max_retries);
    loop {
        let started = Instant::now();
        let commits_before = pipeline.commits;
        match pipeline.run(stop.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Conflict && !*stop.borrow() => {
                // Another worker owns the pipeline now: stop writing and stand by.
                tracing::warn!(error = %e.one_line(), "another worker took over this pipeline; standing by");
                metrics.error("conflict");
                set_state(pipeline, PipelineState::Connecting, Some(e.one_line()));
            }
            Err(e) if e.is_retryable() && !*stop.borrow() => {
                metrics.error("transient");
                // A run that made progress (or lasted) starts the backoff afresh: only failures
                // in a row without progress count towards max_retries.
                if pipeline.commits > commits_before || started.elapsed() > Duration::from_secs(60)
                {
                    backoff.reset();
                }
                let Some(delay) = backoff.next_delay() else {
                    set_state(pipeline, PipelineState::Error, Some(e.one_line()));
                    return Err(
                        e.context(format!("giving up after {} retries", backoff.max_retries))
                    );
                };
                tracing::warn!(error = %e.one_line(), retry_in_ms = delay.as_millis() as u64, "connection lost; reconnecting");
                set_state(pipeline, PipelineState::Reconnecting, Some(e.one_line()));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = signal.wait_for(|v| *v) => return Ok(()),
                }
            }
            Err(e) => {
                metrics.error("fatal");
                set_state(pipeline, PipelineState::Error, Some(e.one_line()));
                return Err(e);
            }
        }
    }
}

/// After `signal`, gives the run `limit` to drain and commit; past it, exits the process with
/// status 3 (nothing is lost: what was not committed is replayed by the next run).
pub fn exit_after_stop_timeout(mut signal: watch::Receiver<bool>, limit: Duration) {
    tokio::spawn(async move {
        let _ = signal.wait_for(|v| *v).await;
        tokio::time::sleep(limit).await;
        tracing::error!(
            stop_timeout_secs = limit.as_secs(),
            "could not drain within the stop timeout; exiting without the final commit"
        );
        std::process::exit(3);
    });
}

fn set_state(p: &mut Pipeline, state: PipelineState, err: Option<String>) {
    if let Some(s) = &mut p.status {
        s.set_state(state, err);
    }
}
