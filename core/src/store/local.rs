//! The embedded default position store: one JSON file per pipeline, replaced atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::BoxFuture;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{Checkpoint, PositionStore, check_transition};

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

/// Checkpoints as `<dir>/<pipeline>.json`, written to a temporary file, fsynced, renamed over
/// the old file, and the directory fsynced. Saves are serialized within the process; the
/// compare-and-swap is checked against the file on disk.
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

    fn file(&self, pipeline: &str) -> Result<PathBuf> {
        if pipeline.is_empty()
            || !pipeline
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            || pipeline.starts_with('.')
        {
            return Err(Error::config(format!(
                "invalid pipeline name {pipeline:?}: use letters, digits, '.', '_' and '-'"
            )));
        }
        Ok(self.dir.join(format!("{pipeline}.json")))
    }
}

fn read(path: &Path) -> Result<Option<Checkpoint>> {
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
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.file(&next.pipeline)?;
            let bytes = serde_json::to_vec_pretty(next)
                .map_err(|e| Error::with_source(ErrorKind::Fatal, "serializing checkpoint", e))?;
            let next = next.clone();
            let lock = self.lock.clone();
            tokio::task::spawn_blocking(move || {
                let _guard = lock
                    .lock()
                    .map_err(|_| Error::fatal("checkpoint lock poisoned"))?;
                let prev = read(&path)?;
                check_transition(prev.as_ref(), expected, &next)?;
                write_atomic(&path, &bytes)
            })
            .await
            .map_err(|e| Error::fatal(format!("checkpoint write task failed: {e}")))?
        })
    }

    fn delete<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.file(pipeline)?;
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_file_store_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileStore::new(dir.path()).unwrap();
        crate::store::conformance::run(&store).await;
        // No temporary files are left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
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
