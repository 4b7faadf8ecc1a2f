//! `tidemark check`: the preflight of a pipeline, as findings.

use crate::config::Config;
use crate::error::Result;
use crate::source::contract::{WithSource, with_source};
use crate::source::{Finding, Source};
use crate::store::{self, Checkpoint};

/// Preflight of `cfg`'s pipeline: what a run needs from the source, the store and the output,
/// each as a finding (`Level::Error` findings mean a run would fail; each says what to do).
pub async fn check(cfg: &Config) -> Result<Vec<Finding>> {
    #[cfg(feature = "aws")]
    if let Some(stream) = cfg.kinesis_stream() {
        use crate::output;
        use crate::source::Level;
        let shards = crate::source::kinesis::client::KinesisStream::open(stream)
            .await?
            .shards()
            .await?;
        let open = shards.iter().filter(|s| s.ending.is_none()).count();
        let mut findings = vec![Finding::new(
            "stream",
            Level::Ok,
            format!("{stream} has {} shards ({open} open)", shards.len()),
        )];
        let store = store::open(cfg.positions.url.as_deref(), false).await?;
        store.load(&cfg.pipeline).await?;
        findings.push(Finding::new(
            "positions",
            Level::Ok,
            format!("{} is reachable", store.url()),
        ));
        let output = output::open(&cfg.output_url()).await?;
        findings.push(Finding::new(
            "output",
            Level::Ok,
            format!("{} is reachable", output.url()),
        ));
        return Ok(findings);
    }
    let store = store::open(cfg.positions.url.as_deref(), cfg.positions.create_table).await?;
    let cp = store.load(&cfg.pipeline).await?;
    with_source(cfg, Check(cfg, cp.as_ref())).await
}

struct Check<'a>(&'a Config, Option<&'a Checkpoint>);

impl WithSource for Check<'_> {
    type Output = Vec<Finding>;
    async fn run<S: Source>(self) -> Result<Vec<Finding>> {
        S::check(self.0, self.1).await
    }
}
