//! The embedded default position store: one JSON file per pipeline, replaced atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::BoxFuture;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{
    Checkpoint, Lease, PositionStore, check_lease, check_transition, grant_lease, now_ms,
};

/// The state directory: `$TIDEMARK_STATE_HOME`, else `$XDG_STATE_HOME/tidemark`, else
/// `~/.local/state/tidemark`.
pub fn default_state_dir() -> Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("TIDEMARK_STATE_HOME") {
        return Ok(d);
    }
    if let Some(d) = var("XDG_STATE_HOME") {
        return Ok(d.join("tidemark"));
    }
    if let Some(h) = var("HOME") {
        return Ok(h.join(".local/state/tidemark"));
    }
    Err(Error::config(
        "no state directory: set TIDEMARK_STATE_HOME (or HOME)",
    ))
}

/// Checkpoints as `<dir>/<pipeline>.json` and leases as `<dir>/<pipeline>.lease.json`, each
/// written to a temporary file, fsynced, renamed over the old file, and the directory fsynced.
/// Every conditional operation holds an exclusive lock on `<dir>/<pipeline>.lock` (across
/// processes) and checks its condition against the files on disk.
#[derive(Debug, Clone)]
pub struct LocalFileStore {
    dir: PathBuf,
    lock: Arc<std::sync::Mutex<()>>,
}

impl LocalFileStore {
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!("cannot create state directory {}", dir.display()),
                e,
            )
        })?;
        Ok(LocalFileStore {
            dir,
            lock: Arc::new(std::sync::Mutex::new(())),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` holding the pipeline's cross-process lock, on the blocking pool.
    async fn locked<T: Send + 'static>(
        &self,
        pipeline: &str,
        f: impl FnOnce(&Path, &Path) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let cp = self.file(pipeline)?;
        let lease = cp.with_extension("lease.json");
        let lock_path = cp.with_extension("lock");
        let mutex = self.lock.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = mutex
                .lock()
                .map_err(|_| Error::fatal("checkpoint lock poisoned"))?;
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            lock.lock()?;
            let out = f(&cp, &lease);
            let _ = lock.unlock();
            out
        })
        .await
        .map_err(|e| Error::fatal(format!("checkpoint task failed: {e}")))?
    }

    fn file(&self, pipeline: &str) -> Result<PathBuf> {
        crate::store::check_name(pipeline)?;
        Ok(self.dir.join(format!("{pipeline}.json")))
    }
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::with_source(
                ErrorKind::Fatal,
                format!(
                    "checkpoint file {} is not valid: repair or remove it",
                    path.display()
                ),
                e,
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::from(e).context(format!("reading {}", path.display()))),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| Error::fatal("checkpoint path has no parent"))?;
    let tmp = path.with_extension(format!("json.tmp-{:016x}", fastrand::u64(..)));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(|e| Error::from(e).context(format!("writing {}", path.display())))
}

impl PositionStore for LocalFileStore {
    fn load<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<Checkpoint>>> {
        Box::pin(async move {
            let path = self.file(pipeline)?;
            tokio::task::spawn_blocking(move || read(&path))
                .await
                .map_err(|e| Error::fatal(format!("checkpoint read task failed: {e}")))?
        })
    }

    fn save<'a>(
        &'a self,
        expected: Option<u64>,
        next: &'a Checkpoint,
        lease: Option<&'a Lease>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let bytes = serde_json::to_vec_pretty(next)
                .map_err(|e| Error::with_source(ErrorKind::Fatal, "serializing checkpoint", e))?;
            let next = next.clone();
            let lease = lease.cloned();
            self.locked(&next.pipeline.clone(), move |cp_path, lease_path| {
                check_lease(read::<Lease>(lease_path)?.as_ref(), lease.as_ref())?;
                let prev = read::<Checkpoint>(cp_path)?;
                check_transition(prev.as_ref(), expected, &next)?;
                write_atomic(cp_path, &bytes)
            })
            .await
        })
    }

    fn delete<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.locked(pipeline, |cp_path, lease_path| {
                for p in [cp_path, lease_path] {
                    match std::fs::remove_file(p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            })
            .await
        })
    }

    fn acquire_lease<'a>(
        &'a self,
        pipeline: &'a str,
        owner: &'a str,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<Lease>> {
        Box::pin(async move {
            let (p, o) = (pipeline.to_string(), owner.to_string());
            self.locked(pipeline, move |_, lease_path| {
                let stored = read::<Lease>(lease_path)?.map(expire_if_owner_died);
                let lease = grant_lease(stored.as_ref(), &p, &o, ttl_ms, now_ms())?;
                write_lease(lease_path, &lease)?;
                Ok(lease)
            })
            .await
        })
    }

    fn renew_lease<'a>(&'a self, lease: &'a Lease, ttl_ms: i64) -> BoxFuture<'a, Result<Lease>> {
        Box::pin(async move {
            let held = lease.clone();
            self.locked(&lease.pipeline, move |_, lease_path| {
                check_lease(read::<Lease>(lease_path)?.as_ref(), Some(&held))?;
                let renewed = Lease {
                    expires_at_ms: now_ms() + ttl_ms,
                    ..held
                };
                write_lease(lease_path, &renewed)?;
                Ok(renewed)
            })
            .await
        })
    }

    fn release_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let held = lease.clone();
            self.locked(&lease.pipeline, move |_, lease_path| {
                if check_lease(read::<Lease>(lease_path)?.as_ref(), Some(&held)).is_ok() {
                    write_lease(
                        lease_path,
                        &Lease {
                            expires_at_ms: 0,
                            ..held
                        },
                    )?;
                }
                Ok(())
            })
            .await
        })
    }

    fn lease<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<Lease>>> {
        Box::pin(async move {
            let path = self.file(pipeline)?.with_extension("lease.json");
            tokio::task::spawn_blocking(move || read(&path))
                .await
                .map_err(|e| Error::fatal(format!("lease read task failed: {e}")))?
        })
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// A local store lives on one machine: a lease whose owner ran on this host in a process that
/// no longer exists (killed, crashed) is expired now, so a restarted worker need not wait out
/// the TTL. Owner ids are `host:pid:suffix` ([`crate::lease::owner_id`]).
fn expire_if_owner_died(lease: Lease) -> Lease {
    let mut parts = lease.owner.rsplitn(3, ':');
    let (_suffix, pid, host) = (parts.next(), parts.next(), parts.next());
    let pid_gone = pid
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists());
    let same_host = host.is_some_and(|h| h == crate::lease::host_name());
    if pid_gone && same_host && Path::new("/proc/self").exists() {
        tracing::info!(owner = %lease.owner, "the previous owner of this pipeline's lease is gone; taking over");
        Lease {
            expires_at_ms: 0,
            ..lease
        }
    } else {
        lease
    }
}

fn write_lease(path: &Path, lease: &Lease) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(lease)
        .map_err(|e| Error::with_source(ErrorKind::Fatal, "serializing lease", e))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_file_store_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileStore::new(dir.path()).unwrap();
        crate::store::conformance::run(&store).await;
        // No temporary files are left behind (lock files may stay).
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn a_dead_local_owner_does_not_hold_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileStore::new(dir.path()).unwrap();
        // A lease held by a process of this host that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let owner = format!("{}:{pid}:abcd", crate::lease::host_name());
        let dead = store.acquire_lease("p", &owner, 60_000).await.unwrap();
        let next = store
            .acquire_lease("p", "other:1:0000", 60_000)
            .await
            .unwrap();
        assert_eq!(next.epoch, dead.epoch + 1);
        // A live owner (this process) keeps it.
        let me = format!("{}:{}:abcd", crate::lease::host_name(), std::process::id());
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = LocalFileStore::new(dir2.path()).unwrap();
        store2.acquire_lease("p", &me, 60_000).await.unwrap();
        assert!(
            store2
                .acquire_lease("p", "other:1:0000", 60_000)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn rejects_path_like_pipeline_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileStore::new(dir.path()).unwrap();
        assert!(store.load("../x").await.is_err());
        assert!(store.load("").await.is_err());
    }

    #[tokio::test]
    async fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.json"), b"{not json").unwrap();
        let store = LocalFileStore::new(dir.path()).unwrap();
        let e = store.load("p").await.unwrap_err();
        assert!(e.to_string().contains("not valid"), "{e}");
    }
}
