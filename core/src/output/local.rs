//! The embedded default output: a local directory holding exactly the keys S3 would get.

use std::path::{Path, PathBuf};

use crate::BoxFuture;
use crate::error::{Error, Result};
use crate::output::ObjectOutput;

/// A directory as an object store. `put` writes a temporary file beside the target, fsyncs it,
/// renames it into place and fsyncs the directory: atomic and durable.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(|e| {
            Error::with_source(
                crate::ErrorKind::Config,
                format!("cannot create output directory {}", root.display()),
                e,
            )
        })?;
        Ok(LocalDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty()
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(Error::fatal(format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

fn put_blocking(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| Error::fatal("object path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", fastrand::u64(..)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok::<_, std::io::Error>(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::from(e).context(format!("writing {}", path.display())))
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<String>> {
    // Walk only the deepest directory named by the prefix.
    let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    let start = if dir_part.is_empty() {
        root.to_path_buf()
    } else {
        root.join(dir_part)
    };
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
                continue;
            }
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue; // temporary files of an unfinished put
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let key = rel
                .to_string_lossy()
                .replace(std::path::MAIN_SEPARATOR, "/");
            if key.starts_with(prefix) {
                out.push(key);
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::fatal(format!("blocking file task failed: {e}")))?
}

impl ObjectOutput for LocalDir {
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.path(key)?;
            blocking(move || put_blocking(&path, &bytes)).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.path(key)?;
            blocking(move || match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            })
            .await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let root = self.root.clone();
            let prefix = prefix.to_string();
            blocking(move || list_blocking(&root, &prefix)).await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let path = self.path(key)?;
            blocking(move || match std::fs::read(&path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            })
            .await
        })
    }

    fn get_tail<'a>(&'a self, key: &'a str, len: usize) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let path = self.path(key)?;
            blocking(move || {
                use std::io::{Read, Seek, SeekFrom};
                let mut file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let size = file.metadata()?.len();
                file.seek(SeekFrom::Start(size.saturating_sub(len as u64)))?;
                let mut tail = Vec::with_capacity(len.min(size as usize));
                file.read_to_end(&mut tail)?;
                Ok(Some(tail))
            })
            .await
        })
    }

    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::conformance;

    #[tokio::test]
    async fn local_dir_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let out = LocalDir::new(dir.path()).unwrap();
        conformance::run(&out).await;
    }

    #[tokio::test]
    async fn rejects_escaping_keys() {
        let dir = tempfile::tempdir().unwrap();
        let out = LocalDir::new(dir.path()).unwrap();
        assert!(out.put("../x", vec![]).await.is_err());
        assert!(out.put("a//b", vec![]).await.is_err());
    }
}
