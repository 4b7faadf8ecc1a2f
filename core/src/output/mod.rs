//! Where Parquet objects go and how their keys are named.
//!
//! Every implementation of [`ObjectOutput`] stores exactly the same keys: the local directory is
//! a byte-for-byte preview of the S3 layout.

pub mod athena;
pub mod fenced;
pub mod layout;

pub use fenced::FencedOutput;
pub mod local;
#[cfg(feature = "aws")]
pub mod s3;

use crate::BoxFuture;
use crate::error::Result;

pub use layout::Layout;
pub use local::LocalDir;

/// An object store for the output files.
///
/// Contract: `put` is atomic and durable when it returns `Ok` (a reader never sees a partial
/// object; a crash after `Ok` keeps it); `put` of an existing key replaces it; `delete` of a
/// missing key is `Ok`; `list` returns every key under a prefix, sorted.
pub trait ObjectOutput: Send + Sync {
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<()>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>>;
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>>;
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    /// The last `len` bytes of an object (all of it when shorter); `None` when it is missing.
    fn get_tail<'a>(&'a self, key: &'a str, len: usize) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            Ok(self.get(key).await?.map(|mut bytes| {
                bytes.drain(..bytes.len().saturating_sub(len));
                bytes
            }))
        })
    }
    /// For messages and `status`: `file:///...` or `s3://...`.
    fn url(&self) -> String;

    /// A copy of this output that runs `guard` right before every attempt to send a write,
    /// including the retries an output makes inside one call (the S3 SDK's retry loop), and
    /// fails the write when the guard fails. `None` when the output makes no internal retries,
    /// so checking once per call is enough.
    fn guarded(&self, guard: AttemptGuard) -> Option<std::sync::Arc<dyn ObjectOutput>> {
        let _ = guard;
        None
    }
}

/// A check run before every write attempt (see [`ObjectOutput::guarded`]).
pub type AttemptGuard = std::sync::Arc<dyn Fn() -> Result<()> + Send + Sync>;

/// Opens an output from its URL: `file:///path` (or a plain path), or `s3://bucket/prefix`.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn ObjectOutput>> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Ok(std::sync::Arc::new(LocalDir::new(rest)?));
    }
    #[cfg(feature = "aws")]
    if url.starts_with("s3://") {
        return s3::open(url).await;
    }
    if url.contains("://") {
        return Err(crate::Error::config(format!(
            "unsupported output {url:?}: use file:///path or s3://bucket/prefix"
        )));
    }
    Ok(std::sync::Arc::new(LocalDir::new(url)?))
}

/// The conformance suite every [`ObjectOutput`] implementation must pass.
#[cfg(any(test, feature = "conformance"))]
#[allow(clippy::unwrap_used)]
pub mod conformance {
    use super::ObjectOutput;

    pub async fn run(out: &dyn ObjectOutput) {
        let base = format!("conformance-{:x}", fastrand::u64(..));
        let a = format!("{base}/t/changes/dt=2026-01-01/a.parquet");
        let b = format!("{base}/t/changes/dt=2026-01-02/b.parquet");
        let c = format!("{base}/u/snapshot/part-00000.parquet");

        assert_eq!(
            out.get(&a).await.unwrap(),
            None,
            "missing key reads as None"
        );
        out.put(&a, b"first".to_vec()).await.unwrap();
        assert_eq!(out.get(&a).await.unwrap().as_deref(), Some(&b"first"[..]));
        out.put(&a, b"second".to_vec()).await.unwrap();
        assert_eq!(
            out.get(&a).await.unwrap().as_deref(),
            Some(&b"second"[..]),
            "put replaces"
        );
        out.put(&b, vec![0u8; 3 << 20]).await.unwrap();
        out.put(&c, Vec::new()).await.unwrap();
        assert_eq!(
            out.get(&c).await.unwrap().as_deref(),
            Some(&b""[..]),
            "empty objects exist"
        );
        assert_eq!(
            out.get_tail(&a, 2).await.unwrap().as_deref(),
            Some(&b"nd"[..]),
            "the tail is the object's last bytes"
        );
        assert_eq!(
            out.get_tail(&a, 1 << 20).await.unwrap().as_deref(),
            Some(&b"second"[..]),
            "a tail longer than the object is all of it"
        );
        let tail = out.get_tail(&b, 10).await.unwrap().unwrap();
        assert_eq!(tail, vec![0u8; 10]);
        assert_eq!(
            out.get_tail(&format!("{base}/none"), 4).await.unwrap(),
            None
        );

        assert_eq!(
            out.list(&format!("{base}/t/")).await.unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(
            out.list(&format!("{base}/")).await.unwrap(),
            vec![a.clone(), b.clone(), c.clone()]
        );
        assert_eq!(
            out.list(&format!("{base}/t/changes/dt=2026-01-0"))
                .await
                .unwrap()
                .len(),
            2
        );
        assert!(out.list(&format!("{base}/none/")).await.unwrap().is_empty());

        out.delete(&a).await.unwrap();
        out.delete(&a).await.unwrap();
        assert_eq!(out.get(&a).await.unwrap(), None);
        for k in [&b, &c] {
            out.delete(k).await.unwrap();
        }
        assert!(out.list(&format!("{base}/")).await.unwrap().is_empty());
    }
}
