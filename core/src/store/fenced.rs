//! The fencing decorator of a position store: saves require a live lease and present it.

use std::sync::Arc;

use crate::BoxFuture;
use crate::error::Result;
use crate::store::{Checkpoint, Lease, PositionStore};

/// The lease check a fenced store runs before each write: the live lease, or an error
/// ([`crate::ErrorKind::Conflict`] once it is lost).
pub type LeaseCheck = Arc<dyn Fn() -> Result<Lease> + Send + Sync>;

/// A position store whose saves require the live lease and present it (the store then rejects
/// them once another worker took over); deletes require it too. Reads and lease calls pass.
pub struct FencedStore {
    inner: Arc<dyn PositionStore>,
    check: LeaseCheck,
}

impl FencedStore {
    pub fn new(inner: Arc<dyn PositionStore>, check: LeaseCheck) -> Self {
        FencedStore { inner, check }
    }
}

impl PositionStore for FencedStore {
    fn load<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<Checkpoint>>> {
        self.inner.load(pipeline)
    }
    fn save<'a>(
        &'a self,
        expected: Option<u64>,
        next: &'a Checkpoint,
        _lease: Option<&'a Lease>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let lease = (self.check)()?;
            self.inner.save(expected, next, Some(&lease)).await
        })
    }
    fn delete<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            (self.check)()?;
            self.inner.delete(pipeline).await
        })
    }
    fn acquire_lease<'a>(
        &'a self,
        pipeline: &'a str,
        owner: &'a str,
        ttl_ms: i64,
    ) -> BoxFuture<'a, Result<Lease>> {
        self.inner.acquire_lease(pipeline, owner, ttl_ms)
    }
    fn renew_lease<'a>(&'a self, lease: &'a Lease, ttl_ms: i64) -> BoxFuture<'a, Result<Lease>> {
        self.inner.renew_lease(lease, ttl_ms)
    }
    fn release_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        self.inner.release_lease(lease)
    }
    fn lease<'a>(&'a self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<Lease>>> {
        self.inner.lease(pipeline)
    }
    fn url(&self) -> String {
        self.inner.url()
    }
}
