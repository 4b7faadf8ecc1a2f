//! Holding a pipeline's lease while running it.
//!
//! Contract: every write a running pipeline makes goes through [`FencedStore`] and
//! [`FencedOutput`] (decorators beside their traits, fenced by [`LeaseHolder::check`]), which refuse it ([`crate::ErrorKind::Conflict`]) unless the lease is live
//! with a safety margin on this worker's clock; saves additionally present the lease to the
//! store, which rejects them once another worker took over (new epoch). A worker paused past its
//! TTL therefore writes nothing when it resumes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::output::{FencedOutput, ObjectOutput};
use crate::store::{FencedStore, Lease, PositionStore, now_ms};

/// The lease this worker holds, shared with the renewal task.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    current: Arc<Mutex<Lease>>,
    margin_ms: i64,
}

impl LeaseHolder {
    /// The lease, if it is still live with the safety margin.
    pub fn check(&self) -> Result<Lease> {
        let lease = self
            .current
            .lock()
            .map_err(|_| Error::fatal("lease lock poisoned"))?
            .clone();
        if lease.is_live(now_ms(), self.margin_ms) {
            Ok(lease)
        } else {
            Err(Error::conflict(format!(
                "the lease on pipeline {:?} expired before it could be renewed; this worker stops writing",
                lease.pipeline
            )))
        }
    }

    fn set(&self, lease: Lease) {
        if let Ok(mut cur) = self.current.lock() {
            *cur = lease;
        }
    }

    fn get(&self) -> Option<Lease> {
        self.current.lock().ok().map(|l| l.clone())
    }
}

/// This machine's name (`/etc/hostname`, else `$HOSTNAME`), without ':' so owner ids parse.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().replace(':', "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string())
}

/// This worker's lease owner id, `host:pid:random`: the same for the whole process, so a run
/// that reconnects after an error re-takes its own lease at once (same epoch).
pub fn owner_id() -> String {
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OWNER
        .get_or_init(|| {
            format!(
                "{}:{}:{:04x}",
                host_name(),
                std::process::id(),
                fastrand::u16(..)
            )
        })
        .clone()
}

/// Takes the pipeline's lease, waiting while another worker holds it. `Ok(None)` when
/// `shutdown` turned true while waiting.
pub async fn acquire(
    store: &dyn PositionStore,
    pipeline: &str,
    owner: &str,
    ttl: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<LeaseHolder>> {
    let ttl_ms = ttl.as_millis() as i64;
    let mut waiting = false;
    loop {
        match store.acquire_lease(pipeline, owner, ttl_ms).await {
            Ok(lease) => {
                tracing::info!(owner, epoch = lease.epoch, "holding the pipeline's lease");
                return Ok(Some(LeaseHolder {
                    current: Arc::new(Mutex::new(lease)),
                    margin_ms: ttl_ms / 3,
                }));
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                if !waiting {
                    tracing::warn!(reason = %e, "standing by: another worker runs this pipeline");
                    waiting = true;
                }
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e.one_line(), "cannot reach the position store; retrying")
            }
            Err(e) => return Err(e),
        }
        let pause = Duration::from_millis((ttl_ms / 3).clamp(100, 5_000) as u64);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(None),
        }
    }
}

/// Takes the lease of `name` if it is free, expired or already ours; `Ok(None)` while another
/// worker holds it.
pub async fn try_acquire(
    store: &dyn PositionStore,
    name: &str,
    owner: &str,
    ttl: Duration,
) -> Result<Option<LeaseHolder>> {
    let ttl_ms = ttl.as_millis() as i64;
    match store.acquire_lease(name, owner, ttl_ms).await {
        Ok(lease) => Ok(Some(LeaseHolder {
            current: Arc::new(Mutex::new(lease)),
            margin_ms: ttl_ms / 3,
        })),
        Err(e) if e.kind() == ErrorKind::Conflict => Ok(None),
        Err(e) => Err(e),
    }
}

/// Renews the lease every third of its TTL until aborted. A renewal refused because another
/// worker took over stops renewing; the lease then lapses and the fenced writers stop.
pub fn spawn_renewal(
    store: Arc<dyn PositionStore>,
    holder: LeaseHolder,
    ttl: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let ttl_ms = ttl.as_millis() as i64;
        let mut tick = tokio::time::interval(Duration::from_millis((ttl_ms / 3).max(50) as u64));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(lease) = holder.get() else { return };
            match store.renew_lease(&lease, ttl_ms).await {
                Ok(renewed) => holder.set(renewed),
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    tracing::error!(error = %e.one_line(), "lost the pipeline's lease");
                    return;
                }
                Err(e) => tracing::warn!(error = %e.one_line(), "lease renewal failed; retrying"),
            }
        }
    })
}

/// Ends the lease (best effort) so a standby worker takes over at once.
pub async fn release(store: &dyn PositionStore, holder: &LeaseHolder) {
    if let Some(lease) = holder.get()
        && let Err(e) = store.release_lease(&lease).await
    {
        tracing::warn!(error = %e.one_line(), "could not release the lease; it expires by itself");
    }
}

impl LeaseHolder {
    /// The store decorator that fences saves with this lease.
    pub fn fence_store(&self, inner: Arc<dyn PositionStore>) -> FencedStore {
        let holder = self.clone();
        FencedStore::new(inner, Arc::new(move || holder.check()))
    }
    /// The output decorator that fences writes with this lease.
    pub fn fence_output(&self, inner: Arc<dyn ObjectOutput>) -> FencedOutput {
        let holder = self.clone();
        FencedOutput::new(inner, Arc::new(move || holder.check().map(|_| ())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::LocalDir;
    use crate::store::LocalFileStore;

    #[tokio::test]
    async fn fenced_writers_stop_once_the_lease_lapses() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn PositionStore> =
            Arc::new(LocalFileStore::new(dir.path().join("s")).unwrap());
        let out: Arc<dyn ObjectOutput> = Arc::new(LocalDir::new(dir.path().join("o")).unwrap());
        let (_tx, rx) = watch::channel(false);
        let holder = acquire(
            store.as_ref(),
            "p",
            "a",
            Duration::from_millis(600),
            rx.clone(),
        )
        .await
        .unwrap()
        .unwrap();
        let fenced = holder.fence_output(out.clone());
        fenced.put("k/1", vec![1]).await.unwrap();
        // No renewal: past TTL minus margin, writes are refused locally.
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(
            fenced.put("k/2", vec![2]).await.unwrap_err().kind(),
            ErrorKind::Conflict
        );
        assert_eq!(out.get("k/2").await.unwrap(), None);

        // A second worker waits, then takes over once the first lapses; the first is fenced.
        let b = acquire(store.as_ref(), "p", "b", Duration::from_secs(3), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.check().unwrap().epoch, 2);
        let fs = holder.fence_store(store.clone());
        let cp = crate::store::Checkpoint::new("p").next();
        assert_eq!(
            fs.save(None, &cp, None).await.unwrap_err().kind(),
            ErrorKind::Conflict
        );
    }

    #[tokio::test]
    async fn renewal_keeps_the_lease_live() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn PositionStore> = Arc::new(LocalFileStore::new(dir.path()).unwrap());
        let (_tx, rx) = watch::channel(false);
        let ttl = Duration::from_millis(300);
        let holder = acquire(store.as_ref(), "p", "a", ttl, rx)
            .await
            .unwrap()
            .unwrap();
        let task = spawn_renewal(store.clone(), holder.clone(), ttl);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(holder.check().is_ok());
        task.abort();
        release(store.as_ref(), &holder).await;
        assert_eq!(store.lease("p").await.unwrap().unwrap().expires_at_ms, 0);
    }
}
