//! The fencing decorator of an output: writes and deletes require a live lease.

use std::sync::Arc;

use crate::BoxFuture;
use crate::error::Result;
use crate::output::{AttemptGuard, ObjectOutput};

/// An output whose writes and deletes require the live lease: checked before each call and,
/// for outputs that retry internally (S3), before every attempt. Reads pass.
pub struct FencedOutput {
    inner: Arc<dyn ObjectOutput>,
    check: AttemptGuard,
}

impl FencedOutput {
    pub fn new(output: Arc<dyn ObjectOutput>, check: AttemptGuard) -> Self {
        let inner = output.guarded(check.clone()).unwrap_or(output);
        FencedOutput { inner, check }
    }
}

impl ObjectOutput for FencedOutput {
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            (self.check)()?;
            match self.inner.put(key, bytes).await {
                // A write refused by the per-attempt guard surfaces as the lease conflict it is.
                Err(e) => Err((self.check)().err().unwrap_or(e)),
                ok => ok,
            }
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            (self.check)()?;
            self.inner.delete(key).await
        })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        self.inner.list(prefix)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        self.inner.get(key)
    }
    fn url(&self) -> String {
        self.inner.url()
    }
}
