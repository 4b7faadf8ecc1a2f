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
    /// transaction, or a keepalive's WAL end while nothing was buffered. Not part of the order.
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
}
