//! Crash points for tests: `TIDEMARK_CRASH_AT=<name>:<n>` aborts the process (as `kill -9`
//! would: no flush, no commit, no release) the `n`th time the named point is passed, so the
//! end-to-end tests hit each window of the commit protocol deterministically instead of by
//! kill timing. `TIDEMARK_STOP_AT=<name>:<n>` requests a graceful stop there instead, as a
//! SIGTERM arriving at that instant would ([`stop_requested`] feeds the same shutdown path).
//! Unset (always, outside tests), a point costs two relaxed loads.
//!
//! Points: [`INTENT_SAVED`], [`OBJECT_PUT`], [`POSITION_SAVED`] (the stream's commit protocol),
//! [`PART_PUT`], [`TABLE_DONE`] (the snapshot).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// The write intent of a batch is saved; none of its objects is written yet.
pub const INTENT_SAVED: &str = "commit.intent_saved";
/// One object of a batch is written (others of the batch may not be); the position is not moved.
pub const OBJECT_PUT: &str = "commit.object_put";
/// The position after a batch is saved; the source is not acknowledged yet.
pub const POSITION_SAVED: &str = "commit.position_saved";
/// One snapshot part is written; its progress is not saved yet.
pub const PART_PUT: &str = "snapshot.part_put";
/// A table's snapshot is recorded as done; the snapshot as a whole is not.
pub const TABLE_DONE: &str = "snapshot.table_done";

/// Every point, for the parser's check.
const POINTS: &[&str] = &[
    INTENT_SAVED,
    OBJECT_PUT,
    POSITION_SAVED,
    PART_PUT,
    TABLE_DONE,
];

struct Armed {
    point: &'static str,
    at: u64,
    hits: AtomicU64,
}

fn arm(var: &str) -> Option<Armed> {
    let spec = std::env::var(var).ok()?;
    match parse(&spec) {
        Some((point, at)) => Some(Armed {
            point,
            at,
            hits: AtomicU64::new(0),
        }),
        None => {
            tracing::warn!(var, spec, points = ?POINTS, "ignored: expected <point>:<n>");
            None
        }
    }
}

impl Armed {
    /// Counts a pass of `point`: true on the armed pass.
    fn hit(&self, point: &str) -> bool {
        self.point == point && self.hits.fetch_add(1, Ordering::Relaxed) + 1 == self.at
    }
}

fn crash() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| arm("TIDEMARK_CRASH_AT")).as_ref()
}

fn stop() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| arm("TIDEMARK_STOP_AT")).as_ref()
}

fn stop_notify() -> &'static Notify {
    static STOP: OnceLock<Notify> = OnceLock::new();
    STOP.get_or_init(Notify::new)
}

/// Completes once `TIDEMARK_STOP_AT`'s pass is reached; never when it is unset.
pub async fn stop_requested() {
    match stop() {
        Some(_) => stop_notify().notified().await,
        None => std::future::pending().await,
    }
}

fn parse(spec: &str) -> Option<(&'static str, u64)> {
    let (name, n) = spec.rsplit_once(':')?;
    let point = POINTS.iter().find(|p| **p == name)?;
    let at = n.parse().ok().filter(|n| *n > 0)?;
    Some((point, at))
}

/// Passes the point `point`: aborts the process when it is `TIDEMARK_CRASH_AT`'s pass, and
/// requests a stop when it is `TIDEMARK_STOP_AT`'s.
pub fn pass(point: &'static str) {
    if let Some(a) = crash()
        && a.hit(point)
    {
        eprintln!("TIDEMARK_CRASH_AT: aborting at {point} (pass {})", a.at);
        std::process::abort();
    }
    if let Some(a) = stop()
        && a.hit(point)
    {
        eprintln!(
            "TIDEMARK_STOP_AT: stop requested at {point} (pass {})",
            a.at
        );
        // A permit: the waiter may not be waiting yet.
        stop_notify().notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_points_only() {
        assert_eq!(parse("commit.object_put:3"), Some(("commit.object_put", 3)));
        assert_eq!(parse("commit.object_put:0"), None);
        assert_eq!(parse("commit.object_put"), None);
        assert_eq!(parse("nowhere:1"), None);
    }
}
