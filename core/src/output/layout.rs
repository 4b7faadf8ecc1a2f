//! Object keys. Keys derive only from the data (source, table, positions, part number) and the
//! partition from the commit time, so replaying the same rows writes the same keys.
//!
//! ```text
//! <prefix>/<source>/<schema>.<table>/snapshot/snapshot_id=<id>/part-NNNNN.parquet
//! <prefix>/<source>/<schema>.<table>/changes/dt=YYYY-MM-DD/<first>_<last>.parquet
//! <prefix>/<source>/<schema>.<table>/changes/dt=YYYY-MM-DD/<shard>.<first seq>_<last seq>.parquet   (Kinesis)
//! <prefix>/<source>/_schema_history/<pos>.<n>.json
//! <prefix>/<source>/_dead_letter/shard=<shard>/<seq>.json
//! ```
//! `<first>`/`<last>` are `<pos>.<ord>` of the first and last row in the object, zero-padded so
//! keys sort in source order.

use crate::change::TableId;

/// Key builder for one pipeline's output.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<prefix>/<source>`, without a trailing slash (may be just `<source>`).
    root: String,
}

impl Layout {
    pub fn new(prefix: &str, source: &str) -> Self {
        let prefix = prefix.trim_matches('/');
        let source = escape(source);
        let root = if prefix.is_empty() {
            source
        } else {
            format!("{prefix}/{source}")
        };
        Layout { root }
    }

    /// `<prefix>/<source>`: every key of the pipeline is under `<root>/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<root>/<schema>.<table>/`. A dot inside either name is escaped (`%2E`), so the one
    /// unescaped dot separates them: `"a.b"."c"` and `"a"."b.c"` never share a folder.
    pub fn table_prefix(&self, table: &TableId) -> String {
        format!(
            "{}/{}.{}/",
            self.root,
            escape_name(&table.schema),
            escape_name(&table.name)
        )
    }

    /// A schema-history record: the `n`-th statement (DDL) of the transaction at `pos`.
    pub fn schema_history_key(&self, pos: &str, n: u32) -> String {
        format!("{}/_schema_history/{pos}.{n:05}.json", self.root)
    }

    pub fn snapshot_prefix(&self, table: &TableId, snapshot_id: &str) -> String {
        format!(
            "{}snapshot/snapshot_id={}/",
            self.table_prefix(table),
            escape(snapshot_id)
        )
    }

    pub fn snapshot_key(&self, table: &TableId, snapshot_id: &str, part: u32) -> String {
        format!(
            "{}part-{part:05}.parquet",
            self.snapshot_prefix(table, snapshot_id)
        )
    }

    /// `dt` is `YYYY-MM-DD` of the commit time (UTC).
    pub fn change_key(
        &self,
        table: &TableId,
        dt: &str,
        first: (&str, u64),
        last: (&str, u64),
    ) -> String {
        format!(
            "{}changes/dt={dt}/{}.{:010}_{}.{:010}.parquet",
            self.table_prefix(table),
            first.0,
            first.1,
            last.0,
            last.1
        )
    }
}

impl Layout {
    /// A change object written from one Kinesis shard: named by the shard and the sequence
    /// numbers (their [`SeqNo::sortable`](crate::position::SeqNo::sortable) forms) of its
    /// first and last record, so objects of different shards never collide.
    pub fn shard_change_key(
        &self,
        table: &TableId,
        dt: &str,
        shard: &str,
        first: &str,
        last: &str,
    ) -> String {
        format!(
            "{}changes/dt={dt}/{}.{first}_{last}.parquet",
            self.table_prefix(table),
            escape(shard),
        )
    }

    /// Where a record that could not be written goes, with the reason and its bytes.
    pub fn dead_letter_key(&self, shard: &str, seq: &crate::position::SeqNo) -> String {
        format!(
            "{}/_dead_letter/shard={}/{}.json",
            self.root,
            escape(shard),
            seq.sortable()
        )
    }
}

/// `YYYY-MM-DD` of a UTC timestamp in microseconds.
pub fn date_partition(commit_ts_micros: i64) -> String {
    let days = commit_ts_micros.div_euclid(86_400_000_000);
    match chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|d| d.checked_add_signed(chrono::TimeDelta::days(days)))
    {
        Some(d) => d.format("%Y-%m-%d").to_string(),
        None => "1970-01-01".to_string(),
    }
}

/// [`escape`] for a schema or table name: dots are escaped too.
fn escape_name(s: &str) -> String {
    escape(s).replace('.', "%2E")
}

/// Percent-encodes everything but `[A-Za-z0-9_.-]` so that any identifier is one safe key segment.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names_never_share_a_folder() {
        let l = Layout::new("", "p");
        let a = l.table_prefix(&TableId::new("a.b", "c"));
        let b = l.table_prefix(&TableId::new("a", "b.c"));
        assert_ne!(a, b);
        assert_eq!(a, "p/a%2Eb.c/");
        assert_eq!(l.table_prefix(&TableId::new("public", "t")), "p/public.t/");
    }

    #[test]
    fn keys_are_deterministic_and_sortable() {
        let l = Layout::new("/lake/", "pg-main");
        let t = TableId::new("public", "orders");
        assert_eq!(
            l.change_key(
                &t,
                "2026-11-21",
                ("00000000016B3748", 0),
                ("00000000016B3748", 41)
            ),
            "lake/pg-main/public.orders/changes/dt=2026-11-21/00000000016B3748.0000000000_00000000016B3748.0000000041.parquet"
        );
        assert_eq!(
            l.snapshot_key(&t, "00000000016B3748", 3),
            "lake/pg-main/public.orders/snapshot/snapshot_id=00000000016B3748/part-00003.parquet"
        );
        assert_eq!(Layout::new("", "s").table_prefix(&t), "s/public.orders/");
    }

    #[test]
    fn identifiers_are_escaped_to_one_segment() {
        let l = Layout::new("", "s");
        let t = TableId::new("my schema", "a/b");
        assert_eq!(l.table_prefix(&t), "s/my%20schema.a%2Fb/");
        assert_eq!(escape(".."), "%2E.");
    }

    #[test]
    fn date_partition_from_commit_time() {
        assert_eq!(date_partition(0), "1970-01-01");
        assert_eq!(date_partition(-1), "1969-12-31");
        assert_eq!(date_partition(1_795_000_000_000_000), "2026-11-18");
    }
}
