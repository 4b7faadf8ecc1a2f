//! Source positions and their total order.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A PostgreSQL WAL location. Displays as `XXXXXXXX/XXXXXXXX` like PostgreSQL does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// Zero-padded upper-case hex: sorts as text in LSN order (`_pos`, object keys).
    pub fn sortable(self) -> String {
        format!("{:016X}", self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::data(format!("invalid LSN {s:?}: expected the form 16/B374D848"));
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How far a PostgreSQL pipeline's output is durable, in source order.
///
/// `(commit_lsn, rows)`: every transaction committed before `commit_lsn` is durable, and so are
/// the first `rows` rows of the transaction that commits at `commit_lsn`; `rows == u64::MAX`
/// (see [`PgPosition::complete`]) means that transaction is durable whole. Ordering is
/// lexicographic, so a huge transaction can advance the position in several steps.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct PgPosition {
    pub commit_lsn: Lsn,
    pub rows: u64,
    /// The LSN that may be acknowledged to the server: the end of the last whole durable
    /// transaction, or a keepalive's WAL end while nothing was buffered (saved before it is
    /// acknowledged). Last in the derived order: saving a later idle acknowledgement moves the
    /// position forward.
    #[serde(default)]
    pub ack_lsn: Lsn,
}

impl PgPosition {
    pub const WHOLE: u64 = u64::MAX;

    /// The position after the whole transaction committing at `commit_lsn`, ending at `end_lsn`.
    pub fn complete(commit_lsn: Lsn, end_lsn: Lsn) -> Self {
        PgPosition {
            commit_lsn,
            rows: Self::WHOLE,
            ack_lsn: end_lsn,
        }
    }

    /// The position before every transaction committing at or after `at`: a snapshot's
    /// consistent point. A transaction whose commit record begins exactly at `at` is not in the
    /// exported snapshot (it was still running at the snapshot builder's last record) and the
    /// walsender streams it (it skips only commits starting before `start_decoding_at`), so it
    /// must not count as written. Acknowledging `at` is safe: nothing before it is streamed.
    pub fn before(at: Lsn) -> Self {
        PgPosition {
            commit_lsn: at,
            rows: 0,
            ack_lsn: at,
        }
    }

    /// Whether row `ord` of the transaction committing at `commit_lsn` is already durable.
    pub fn covers(&self, commit_lsn: Lsn, ord: u64) -> bool {
        commit_lsn < self.commit_lsn
            || (commit_lsn == self.commit_lsn && (self.rows == Self::WHOLE || ord < self.rows))
    }
}

impl fmt::Display for PgPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rows == Self::WHOLE {
            write!(f, "{}", self.commit_lsn)
        } else {
            write!(f, "{}+{} rows", self.commit_lsn, self.rows)
        }
    }
}

/// A MySQL/MariaDB binlog coordinate: file name and byte offset in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct BinlogCoord {
    pub file: String,
    pub pos: u64,
}

impl BinlogCoord {
    pub fn new(file: impl Into<String>, pos: u64) -> Self {
        BinlogCoord {
            file: file.into(),
            pos,
        }
    }

    /// The file's sequence number: the digits after its last `.` (`mysql-bin.000042` -> 42).
    pub fn file_seq(&self) -> u64 {
        self.file
            .rsplit_once('.')
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0)
    }

    /// An order-preserving 64-bit key: `file_seq << 32 | offset` (binlog offsets are 32-bit on
    /// the wire). Used where positions of any source are compared as [`Lsn`]s (snapshot points,
    /// skip rules) and, sortable, as `_pos`.
    pub fn key(&self) -> Lsn {
        Lsn((self.file_seq() << 32) | self.pos.min(u64::from(u32::MAX)))
    }
}

impl PartialOrd for BinlogCoord {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BinlogCoord {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.file_seq(), &self.file, self.pos).cmp(&(other.file_seq(), &other.file, other.pos))
    }
}

impl fmt::Display for BinlogCoord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// How far a MySQL/MariaDB pipeline's output is durable, in binlog order.
///
/// Transactions are identified by where they begin (their GTID or BEGIN event): the binlog holds
/// them in commit order and the begin offset is known before the first row. `(tx, rows)`: every
/// transaction that begins before `tx` is durable, and so are the first `rows` rows of the one
/// beginning at `tx` (`rows == WHOLE`: all of it). Lexicographic, so a huge transaction can
/// advance the position in several steps.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct MyPosition {
    pub tx: BinlogCoord,
    pub rows: u64,
    /// Where reading resumes by file:pos: the end of the last whole durable transaction.
    pub resume: BinlogCoord,
    /// MariaDB GTID state (every domain, `domain-server-seq,...`) after the last whole durable
    /// transaction; where reading resumes in GTID mode.
    #[serde(default)]
    pub gtid: Option<String>,
}

impl MyPosition {
    pub const WHOLE: u64 = u64::MAX;

    /// Whether row `ord` of the transaction beginning at `tx` is already durable.
    pub fn covers(&self, tx: &BinlogCoord, ord: u64) -> bool {
        match tx.cmp(&self.tx) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => self.rows == Self::WHOLE || ord < self.rows,
            std::cmp::Ordering::Greater => false,
        }
    }

    /// The position before any transaction beginning at or after `at` (a snapshot point).
    pub fn before(at: BinlogCoord, gtid: Option<String>) -> Self {
        MyPosition {
            tx: at.clone(),
            rows: 0,
            resume: at,
            gtid,
        }
    }
}

impl fmt::Display for MyPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rows {
            Self::WHOLE => write!(f, "{}", self.resume)?,
            0 => write!(f, "{}", self.tx)?,
            n => write!(f, "{}+{n} rows", self.tx)?,
        }
        if let Some(g) = &self.gtid {
            write!(f, " (gtid {g})")?;
        }
        Ok(())
    }
}

/// A Kinesis sequence number: a decimal string of up to 129 digits (the API's
/// `0|([1-9]\d{0,128})`), unique and increasing within a shard. Ordered numerically (shorter is
/// smaller, then digit by digit), never as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeqNo(String);

/// Width `_pos` pads sequence numbers to, so that they sort as text (AWS issues 56 digits).
pub const SEQ_POS_WIDTH: usize = 56;

impl SeqNo {
    /// Below every sequence number a shard issues.
    pub fn zero() -> SeqNo {
        SeqNo("0".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Sorts as text in sequence order (`_pos`, object keys): zero-padded to
    /// [`SEQ_POS_WIDTH`] digits; a longer number is `x`, its digit count (3 digits) and its
    /// digits, which sorts after every padded one and by length, then value, among themselves.
    pub fn sortable(&self) -> String {
        if self.0.len() <= SEQ_POS_WIDTH {
            format!("{:0>width$}", self.0, width = SEQ_POS_WIDTH)
        } else {
            format!("x{:03}{}", self.0.len(), self.0)
        }
    }
}

impl FromStr for SeqNo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let digits = s.trim_start_matches('0');
        if s.is_empty() || digits.len() > 129 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::data(format!(
                "invalid Kinesis sequence number {s:?}: expected up to 129 decimal digits"
            )));
        }
        Ok(SeqNo(
            if digits.is_empty() { "0" } else { digits }.to_string(),
        ))
    }
}

impl PartialOrd for SeqNo {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SeqNo {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for SeqNo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SeqNo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How far one Kinesis shard is durable: every record with a sequence number at or below
/// `sequence` is in the output (or its dead-letter location). `finished`: the shard is closed
/// and was read to its end, so its children may start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardPosition {
    pub shard: String,
    pub sequence: SeqNo,
    /// Arrival time (UNIX ms) of the record at `sequence`: the basis of per-shard lag.
    #[serde(default)]
    pub arrival_ms: Option<i64>,
    #[serde(default)]
    pub finished: bool,
}

impl PartialOrd for ShardPosition {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        if self.shard != other.shard {
            return None;
        }
        Some(
            self.sequence
                .cmp(&other.sequence)
                .then(self.finished.cmp(&other.finished)),
        )
    }
}

impl fmt::Display for ShardPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} @ {}", self.shard, self.sequence)?;
        if self.finished {
            f.write_str(" (finished)")?;
        }
        Ok(())
    }
}

/// Which Kinesis records a baseline already holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Covers {
    /// Records of a listed shard at or below its sequence number. Records of unlisted shards
    /// (children created after the baseline) are not covered.
    Shards(std::collections::BTreeMap<String, SeqNo>),
    /// Records that arrived at or before this time (UNIX ms), on every shard.
    Watermark(i64),
}

impl Covers {
    /// The documented rule: whether the record `seq` of `shard`, arrived at `arrival_ms`, is
    /// already in the baseline (and is therefore not written as a change).
    pub fn covers(&self, shard: &str, seq: &SeqNo, arrival_ms: i64) -> bool {
        match self {
            Covers::Shards(m) => m.get(shard).is_some_and(|s| seq <= s),
            Covers::Watermark(w) => arrival_ms <= *w,
        }
    }

    /// From the object's user metadata: `tidemark-shards` (`shardId-0=49590…,shardId-1=…`)
    /// or `tidemark-watermark` (RFC 3339); else the version's LastModified as the watermark.
    pub fn from_metadata(
        meta: &std::collections::BTreeMap<String, String>,
        last_modified_ms: i64,
    ) -> Result<Covers> {
        if let Some(list) = meta.get("tidemark-shards").filter(|s| !s.trim().is_empty()) {
            let mut m = std::collections::BTreeMap::new();
            for part in list.split(',') {
                let (shard, seq) = part.trim().split_once('=').ok_or_else(|| {
                    Error::data(format!(
                        "baseline metadata tidemark-shards: {part:?} is not shard=sequence"
                    ))
                })?;
                m.insert(shard.trim().to_string(), seq.trim().parse()?);
            }
            return Ok(Covers::Shards(m));
        }
        if let Some(w) = meta.get("tidemark-watermark") {
            let t = chrono::DateTime::parse_from_rfc3339(w.trim()).map_err(|e| {
                Error::data(format!(
                    "baseline metadata tidemark-watermark {w:?} is not an RFC 3339 time: {e}"
                ))
            })?;
            return Ok(Covers::Watermark(t.timestamp_millis()));
        }
        Ok(Covers::Watermark(last_modified_ms))
    }
}

/// The baseline part of a composite position.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaselinePosition {
    pub bucket: String,
    pub key: String,
    pub version_id: String,
    /// The version's LastModified (UNIX ms): orders versions.
    pub last_modified_ms: i64,
    pub table: crate::change::TableId,
    pub rows: u64,
    pub covers: Covers,
}

impl PartialOrd for BaselinePosition {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(
            self.last_modified_ms
                .cmp(&other.last_modified_ms)
                .then_with(|| self.version_id.cmp(&other.version_id)),
        )
    }
}

impl std::fmt::Display for BaselinePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "s3://{}/{} version {}",
            self.bucket, self.key, self.version_id
        )
    }
}

/// A capture hook's position (`source::hook`): transaction `tx` (numbered from 1 by the hook), its first `rows` rows
/// durable (`u64::MAX`: all), and `whole`, the last transaction durable whole. Ordered by
/// `(tx, rows, whole)`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct HookPosition {
    pub tx: u64,
    pub rows: u64,
    pub whole: u64,
}

impl HookPosition {
    /// After the whole transaction `tx`.
    pub fn after(tx: u64) -> Self {
        HookPosition {
            tx,
            rows: u64::MAX,
            whole: tx,
        }
    }
}

impl fmt::Display for HookPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rows {
            u64::MAX => write!(f, "tx {}", self.tx),
            rows => write!(f, "tx {}+{rows} rows", self.tx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_and_sorts() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(l.sortable(), "00000016B374D848");
        assert!("0/FFFFFFFF".parse::<Lsn>().unwrap() < "1/0".parse::<Lsn>().unwrap());
        assert!("x/1".parse::<Lsn>().is_err());
        assert!("1".parse::<Lsn>().is_err());
        assert!("/".parse::<Lsn>().is_err());
    }

    #[test]
    fn position_order_and_coverage() {
        let a = PgPosition {
            commit_lsn: Lsn(100),
            rows: 5,
            ack_lsn: Lsn(50),
        };
        let whole = PgPosition::complete(Lsn(100), Lsn(120));
        assert!(a < whole);
        assert!(
            whole
                < PgPosition {
                    commit_lsn: Lsn(101),
                    rows: 0,
                    ack_lsn: Lsn(0)
                }
        );
        assert!(a.covers(Lsn(99), 1_000_000));
        assert!(a.covers(Lsn(100), 4));
        assert!(!a.covers(Lsn(100), 5));
        assert!(whole.covers(Lsn(100), 1 << 40));
        assert!(!whole.covers(Lsn(101), 0));
    }

    /// Issue 11 item 11: sequence numbers of up to 129 digits (the API's limit) parse, order
    /// numerically, and keep sorting as text beyond the 56 digits AWS issues today.
    #[test]
    fn kinesis_sequence_numbers_of_129_digits() {
        let max: SeqNo = format!("1{}", "9".repeat(128)).parse().unwrap();
        let long: SeqNo = format!("1{}", "0".repeat(56)).parse().unwrap();
        let aws: SeqNo = "49".repeat(28).parse().unwrap();
        assert!(format!("1{}", "0".repeat(129)).parse::<SeqNo>().is_err());
        assert!(aws < long && long < max);
        let (a, b, c) = (aws.sortable(), long.sortable(), max.sortable());
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), SEQ_POS_WIDTH);
        assert!(SeqNo::zero().sortable() < a);
    }

    /// Audit item 6: a commit record beginning exactly at the consistent point C is streamed by
    /// the walsender (`SnapBuildXactNeedsSkip`: `ptr < start_decoding_at`) and is not visible in
    /// the exported snapshot (C is the end of the xl_running_xacts record that made the
    /// builder consistent; a transaction running there is in the snapshot's xip). The snapshot's
    /// position must cover every commit before C and none at C.
    #[test]
    fn snapshot_hand_off_keeps_a_commit_at_the_consistent_point() {
        let c = Lsn(0x16B_6C50);
        let start = PgPosition::before(c);
        assert!(start.covers(Lsn(c.0 - 8), u64::MAX));
        assert!(!start.covers(c, 0), "a commit at C is not in the snapshot");
        assert!(!start.covers(Lsn(c.0 + 8), 0));
        assert!(start < PgPosition::complete(c, Lsn(c.0 + 0x30)));
        assert!(
            start
                < PgPosition {
                    commit_lsn: c,
                    rows: 1,
                    ack_lsn: c
                }
        );
        assert_eq!(start.ack_lsn, c, "START_REPLICATION and acks stay at C");
        // The old hand-off position dropped it.
        assert!(PgPosition::complete(c, c).covers(c, 0));
    }

    #[test]
    fn binlog_coords_order_by_file_sequence() {
        let a = BinlogCoord::new("mysql-bin.000009", 900);
        let b = BinlogCoord::new("mysql-bin.000010", 4);
        assert!(a < b);
        assert!(a.key() < b.key());
        assert_eq!(b.key(), Lsn((10 << 32) | 4));
        let start = MyPosition::before(b.clone(), None);
        assert!(start.covers(&a, 0));
        assert!(!start.covers(&b, 0));
        let part = MyPosition {
            tx: b.clone(),
            rows: 3,
            resume: a.clone(),
            gtid: None,
        };
        assert!(part.covers(&b, 2) && !part.covers(&b, 3));
        assert!(start < part);
    }

    #[test]
    fn sequence_numbers_order_numerically() {
        let a: SeqNo = "9".parse().unwrap();
        let b: SeqNo = "10".parse().unwrap();
        let c: SeqNo = "49590338271490256608559692538361571095921575989136588898"
            .parse()
            .unwrap();
        assert!(a < b && b < c);
        assert_eq!("007".parse::<SeqNo>().unwrap(), "7".parse().unwrap());
        assert!("12a".parse::<SeqNo>().is_err());
        assert!("".parse::<SeqNo>().is_err());
        assert!(a.sortable() < b.sortable());
        assert_eq!(c.sortable(), c.as_str());
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, "\"10\"");
    }
}
