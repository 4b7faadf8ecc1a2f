//! MySQL GTID sets (`uuid[:tag]:1-5:7,uuid2:1-3`): the executed set a pipeline resumes from
//! with COM_BINLOG_DUMP_GTID, kept up to date from the stream's GTID events.
//!
//! Contract: [`GtidSet::parse`] accepts what `@@GLOBAL.gtid_executed` prints (newlines and
//! spaces after commas included); `Display` prints the canonical form MySQL prints (sources
//! sorted by uuid, then tag; intervals merged), so a saved set compares as text with the
//! server's. Parsers take untrusted bytes and return `Data` errors, never panic.

use std::collections::BTreeMap;
use std::fmt;

use mysql_common::packets::Sid;

use crate::error::{Error, Result};

/// One transaction's GTID: `uuid[:tag]:gno`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyGtid {
    /// Lower-case hyphenated uuid.
    pub uuid: String,
    /// MySQL 8.3+ tag (empty when untagged).
    pub tag: String,
    pub gno: u64,
}

impl MyGtid {
    /// The body of an untagged GTID_LOG_EVENT: flags (1), sid (16), gno (8 LE), ...
    pub fn parse_event(data: &[u8]) -> Result<Self> {
        let sid = data
            .get(1..17)
            .ok_or_else(|| Error::data("GTID event shorter than its sid"))?;
        let gno = data
            .get(17..25)
            .ok_or_else(|| Error::data("GTID event shorter than its gno"))?;
        let mut g = [0u8; 8];
        g.copy_from_slice(gno);
        Ok(MyGtid {
            uuid: format_uuid(sid),
            tag: String::new(),
            gno: u64::from_le_bytes(g),
        })
    }
}

impl fmt::Display for MyGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tag.is_empty() {
            write!(f, "{}:{}", self.uuid, self.gno)
        } else {
            write!(f, "{}:{}:{}", self.uuid, self.tag, self.gno)
        }
    }
}

fn format_uuid(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    if hex.len() != 32 {
        return hex;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A set of MySQL GTIDs: per (uuid, tag), sorted disjoint `[start, end]` intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet(BTreeMap<(String, String), Vec<(u64, u64)>>);

impl GtidSet {
    /// Parses a GTID set as MySQL prints it; the empty string is the empty set.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::data(format!("GTID set {s:?}: {why}"));
        let mut set = GtidSet::default();
        for block in s.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            let mut parts = block.split(':');
            let uuid = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if uuid.len() != 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(bad("not a uuid"));
            }
            let mut tag = String::new();
            let mut any = false;
            for p in parts {
                let p = p.trim();
                if p.starts_with(|c: char| c.is_ascii_digit()) {
                    let (a, b) = match p.split_once('-') {
                        Some((a, b)) => (a, b),
                        None => (p, p),
                    };
                    let a: u64 = a.parse().map_err(|_| bad("bad interval"))?;
                    let b: u64 = b.parse().map_err(|_| bad("bad interval"))?;
                    if a == 0 || b < a {
                        return Err(bad("bad interval"));
                    }
                    set.add_range(&uuid, &tag, a, b);
                    any = true;
                } else if !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    tag = p.to_ascii_lowercase();
                } else {
                    return Err(bad("bad interval or tag"));
                }
            }
            if !any {
                return Err(bad("a uuid without intervals"));
            }
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, g: &MyGtid) -> bool {
        self.0
            .get(&(g.uuid.clone(), g.tag.clone()))
            .is_some_and(|ivs| ivs.iter().any(|&(a, b)| a <= g.gno && g.gno <= b))
    }

    pub fn add(&mut self, g: &MyGtid) {
        self.add_range(&g.uuid, &g.tag, g.gno, g.gno);
    }

    fn add_range(&mut self, uuid: &str, tag: &str, a: u64, b: u64) {
        let ivs = self
            .0
            .entry((uuid.to_string(), tag.to_string()))
            .or_default();
        ivs.push((a, b));
        ivs.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ivs.len());
        for &(a, b) in ivs.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *ivs = merged;
    }

    /// The set as COM_BINLOG_DUMP_GTID takes it.
    pub fn to_sids(&self) -> Result<Vec<Sid<'static>>> {
        let mut out = Vec::with_capacity(self.0.len());
        for ((uuid, tag), ivs) in &self.0 {
            let mut block = uuid.clone();
            if !tag.is_empty() {
                block.push(':');
                block.push_str(tag);
            }
            for (a, b) in ivs {
                block.push_str(&format!(":{a}-{b}"));
            }
            out.push(
                block
                    .parse::<Sid<'static>>()
                    .map_err(|e| Error::data(format!("GTID set block {block:?}: {e}")))?,
            );
        }
        Ok(out)
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first_uuid = true;
        let mut last_uuid: Option<&str> = None;
        for ((uuid, tag), ivs) in &self.0 {
            if last_uuid != Some(uuid.as_str()) {
                if !first_uuid {
                    f.write_str(",")?;
                }
                f.write_str(uuid)?;
                first_uuid = false;
                last_uuid = Some(uuid);
            }
            if !tag.is_empty() {
                write!(f, ":{tag}")?;
            }
            for &(a, b) in ivs {
                if a == b {
                    write!(f, ":{a}")?;
                } else {
                    write!(f, ":{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const U2: &str = "4e11fa47-71ca-11e1-9e33-c80aa9429562";

    #[test]
    fn parses_and_prints_as_mysql_does() {
        let s = format!("{U2}:1-3,\n{U1}:1-5:7:9-10");
        let set = GtidSet::parse(&s).unwrap();
        assert_eq!(set.to_string(), format!("{U1}:1-5:7:9-10,{U2}:1-3"));
        assert_eq!(GtidSet::parse("").unwrap().to_string(), "");
        assert_eq!(
            GtidSet::parse(&format!("{U1}:1-3:tag_a:1-2"))
                .unwrap()
                .to_string(),
            format!("{U1}:1-3:tag_a:1-2")
        );
    }

    #[test]
    fn adding_merges_intervals() {
        let mut set = GtidSet::parse(&format!("{U1}:1-5:7")).unwrap();
        let g = |n| MyGtid {
            uuid: U1.into(),
            tag: String::new(),
            gno: n,
        };
        assert!(set.contains(&g(3)) && !set.contains(&g(6)));
        set.add(&g(6));
        assert_eq!(set.to_string(), format!("{U1}:1-7"));
        set.add(&MyGtid {
            uuid: U2.into(),
            tag: String::new(),
            gno: 1,
        });
        assert_eq!(set.to_string(), format!("{U1}:1-7,{U2}:1"));
        assert_eq!(set.to_sids().unwrap().len(), 2);
    }

    #[test]
    fn rejects_what_is_not_a_set() {
        for bad in [
            "x",
            "3e11fa47:1",
            U1,
            &format!("{U1}:5-1"),
            &format!("{U1}:0"),
        ] {
            assert!(GtidSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gtid_event_body() {
        let mut data = vec![1u8];
        data.extend_from_slice(&[
            0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42,
            0x95, 0x62,
        ]);
        data.extend_from_slice(&42u64.to_le_bytes());
        let g = MyGtid::parse_event(&data).unwrap();
        assert_eq!(g.to_string(), format!("{U1}:42"));
        assert!(MyGtid::parse_event(&data[..10]).is_err());
    }
}
