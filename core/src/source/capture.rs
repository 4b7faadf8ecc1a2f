//! Which tables a pipeline captures, kept honest across restarts.
//!
//! The snapshot copies a set of tables once; the stream then captures changes to exactly that
//! set. A table added later was never copied: streaming only its later changes would
//! half-capture it, silently. Until incremental snapshots exist, a run refuses a listed table
//! that the checkpoint does not record, before writing anything; a discovered table (no table
//! list) that appeared later is left out with a warning instead, so a new application table
//! never stops the pipeline. A table removed from the list just stops being captured.

use crate::change::TableId;
use crate::error::{Error, Result};

/// The name a recorded entry uses for "every table of database `schema`" (MySQL without a list).
pub const WHOLE_DATABASE: &str = "*";

/// The tables a run would capture, before comparing with the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSet {
    /// Named by `source.tables` / `--table`.
    Listed(Vec<TableId>),
    /// Found in the source because no list is configured.
    Discovered(Vec<TableId>),
}

impl TableSet {
    pub fn tables(&self) -> &[TableId] {
        match self {
            TableSet::Listed(t) | TableSet::Discovered(t) => t,
        }
    }
}

fn recorded_covers(recorded: &[TableId], t: &TableId) -> bool {
    recorded
        .iter()
        .any(|r| r == t || (r.name == WHOLE_DATABASE && r.schema == t.schema))
}

/// The set to capture now. `recorded`: what the checkpoint's snapshot covered (`None`: a fresh
/// pipeline, or a checkpoint from before this was recorded: `now` is taken as it is).
///
/// Errors (configuration, before anything is written) when a listed table is not covered,
/// naming it and the ways out; `quote` renders a table as the user would write it.
pub fn reconcile(
    pipeline: &str,
    recorded: Option<&[TableId]>,
    now: TableSet,
    quote: impl Fn(&TableId) -> String,
) -> Result<Vec<TableId>> {
    let Some(recorded) = recorded else {
        return Ok(now.tables().to_vec());
    };
    match now {
        TableSet::Listed(tables) => {
            let added: Vec<String> = tables
                .iter()
                .filter(|t| !recorded_covers(recorded, t))
                .map(&quote)
                .collect();
            if added.is_empty() {
                return Ok(tables);
            }
            Err(Error::config(format!(
                "{} added to pipeline {pipeline}, which has already taken its snapshot: the existing rows would never be \
                 captured, only later changes. Either remove it from source.tables (--table), or start the pipeline over \
                 with a new snapshot that includes it: `tidemark reset --pipeline {pipeline} --drop-slot --yes`, then run again \
                 (incremental snapshots of added tables are not supported yet)",
                match added.as_slice() {
                    [one] => format!("table {one} was"),
                    many => format!("tables {} were", many.join(", ")),
                }
            )))
        }
        TableSet::Discovered(tables) => {
            let (keep, new): (Vec<TableId>, Vec<TableId>) = tables
                .into_iter()
                .partition(|t| recorded_covers(recorded, t));
            for t in &new {
                tracing::warn!(
                    table = %quote(t),
                    "table not captured: it appeared after this pipeline's snapshot (without a table list, the \
                     captured set is fixed by the first run). To capture it, list the tables and `tidemark reset` \
                     for a new snapshot"
                );
            }
            Ok(keep)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(t: &TableId) -> String {
        format!("\"{}\".\"{}\"", t.schema, t.name)
    }

    #[test]
    fn fresh_pipelines_take_the_set_as_it_is() {
        let now = TableSet::Listed(vec![TableId::new("public", "a")]);
        assert_eq!(
            reconcile("p", None, now, q).unwrap(),
            [TableId::new("public", "a")]
        );
    }

    #[test]
    fn a_listed_table_the_snapshot_did_not_cover_is_refused_with_the_ways_out() {
        let recorded = [TableId::new("public", "a")];
        let now = TableSet::Listed(vec![
            TableId::new("public", "a"),
            TableId::new("Billing", "Invoice Items"),
        ]);
        let e = reconcile("orders", Some(&recorded), now, q)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("table \"Billing\".\"Invoice Items\" was added"),
            "{e}"
        );
        assert!(
            e.contains("tidemark reset --pipeline orders --drop-slot"),
            "{e}"
        );
        assert!(e.contains("remove it from source.tables"), "{e}");
    }

    #[test]
    fn removing_a_table_is_fine_and_whole_databases_cover_their_tables() {
        let recorded = [TableId::new("public", "a"), TableId::new("public", "b")];
        let now = TableSet::Listed(vec![TableId::new("public", "b")]);
        assert_eq!(
            reconcile("p", Some(&recorded), now, q).unwrap(),
            [TableId::new("public", "b")]
        );
        let recorded = [TableId::new("app", WHOLE_DATABASE)];
        let now = TableSet::Listed(vec![TableId::new("app", "x")]);
        assert!(reconcile("p", Some(&recorded), now, q).is_ok());
        let now = TableSet::Listed(vec![TableId::new("shop", "x")]);
        assert!(reconcile("p", Some(&recorded), now, q).is_err());
    }

    #[test]
    fn discovered_tables_that_appeared_later_are_left_out() {
        let recorded = [TableId::new("public", "a")];
        let now = TableSet::Discovered(vec![
            TableId::new("public", "a"),
            TableId::new("public", "z"),
        ]);
        assert_eq!(
            reconcile("p", Some(&recorded), now, q).unwrap(),
            [TableId::new("public", "a")]
        );
    }
}
