//! `tidemark check`: the preflight of a pipeline, as findings.

use crate::config::Config;
use crate::error::Result;
use crate::source::contract::{WithSource, with_source};
use crate::source::{Finding, Source};
use crate::store::{self, Checkpoint, PositionStore};

/// Preflight of `cfg`'s pipeline: what a run needs from the source (and, per source, the
/// store and the output), each as a finding (`Level::Error` findings mean a run would fail;
/// each says what to do).
pub async fn check(cfg: &Config) -> Result<Vec<Finding>> {
    let store = store::open(cfg.positions.url.as_deref(), cfg.positions.create_table).await?;
    let cp = store.load(&cfg.pipeline).await?;
    with_source(cfg, Check(cfg, store.as_ref(), cp.as_ref())).await
}

struct Check<'a>(&'a Config, &'a dyn PositionStore, Option<&'a Checkpoint>);

impl WithSource for Check<'_> {
    type Output = Vec<Finding>;
    async fn run<S: Source>(self) -> Result<Vec<Finding>> {
        S::check(self.0, self.1, self.2).await
    }
}
