//! `tidemark check`: the preflight of a pipeline, as findings.

use crate::config::Config;
use crate::error::{ErrorKind, Result};
use crate::output;
use crate::source::mysql;
use crate::source::postgres::check as pg_check;
use crate::source::postgres::{catalog, connect};
use crate::source::{Finding, Level};
use crate::store;

/// Preflight of `cfg`'s pipeline: what a run needs from the source, the store and the output,
/// each as a finding (`Level::Error` findings mean a run would fail; each says what to do).
pub async fn check(cfg: &Config) -> Result<Vec<Finding>> {
    #[cfg(feature = "aws")]
    if let Some(stream) = cfg.kinesis_stream() {
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
    let findings = if cfg.is_mysql() {
        mysql_check(cfg).await?
    } else {
        let pg = connect::source_settings(&cfg.source)?;
        let client = connect::sql_connect(&pg, "tidemark-check").await?;
        let store = store::open(cfg.positions.url.as_deref(), false).await?;
        let cp = store.load(&cfg.pipeline).await?;
        let (slot, publication) = crate::engine::postgres::slot_names(cfg, cp.as_ref());
        // Each listed name resolved on its own: one that does not exist is a finding.
        let names = cfg.table_names()?;
        let mut tables = Vec::new();
        let mut missing = Vec::new();
        for n in &names {
            match catalog::resolve_tables(&client, std::slice::from_ref(n)).await {
                Ok(t) => tables.extend(t),
                Err(e) if e.kind() == ErrorKind::Config => {
                    missing.push(Finding::new("table", Level::Error, e.one_line()))
                }
                Err(e) => return Err(e),
            }
        }
        let listed = (!names.is_empty()).then_some(tables.as_slice());
        let mut findings = pg_check::run(&client, &slot, &publication, listed).await?;
        findings.extend(missing);
        findings
    };
    Ok(findings)
}

/// MySQL/MariaDB preflight: server settings, grants, retention against the stored position,
/// server_id, and that the captured tables exist and have a primary key.
async fn mysql_check(cfg: &Config) -> Result<Vec<Finding>> {
    let src = mysql::connect::source_settings(&cfg.source)?;
    let mut conn = mysql::connect::sql_connect(&src).await?;
    let server = mysql::connect::server_info(&mut conn).await?;
    let store = store::open(cfg.positions.url.as_deref(), cfg.positions.create_table).await?;
    let stored = match store.load(&cfg.pipeline).await? {
        Some(cp) => match cp.position {
            Some(store::SourcePosition::Mysql(p)) => Some(p.resume),
            _ => None,
        },
        None => None,
    };
    let mut findings =
        mysql::check::run(&mut conn, &server, cfg.server_id(), stored.as_ref()).await?;
    let listed = match mysql::snapshot::resolve_tables(
        &mut conn,
        &cfg.table_names()?,
        &src.database,
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            findings.push(Finding::new("table", Level::Error, e.one_line()));
            return Ok(findings);
        }
    };
    let (_, dbs, tables) = crate::engine::mysql::capture_of(&listed, &src.database);
    match mysql::snapshot::list_tables(&mut conn, &dbs, &tables).await {
        Ok(list) => {
            for t in list {
                let (schema, _) = mysql::snapshot::table_schema(&mut conn, &t).await?;
                findings.push(if schema.key_columns().next().is_some() {
                    Finding::new("table", Level::Ok, format!("{t}: primary key present"))
                } else {
                    Finding::new(
                        "table",
                        Level::Warning,
                        format!("{t} has no primary key: updates and deletes cannot be matched to rows downstream; add one (ALTER TABLE {t} ADD PRIMARY KEY (...))"),
                    )
                });
            }
        }
        Err(e) => findings.push(Finding::new("table", Level::Error, e.one_line())),
    }
    Ok(findings)
}
