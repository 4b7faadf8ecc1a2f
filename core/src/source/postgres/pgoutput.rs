//! Decoder for `pgoutput` logical replication messages (protocol versions 1 and 2), as documented
//! in PostgreSQL 15's "Logical Replication Message Formats".
//!
//! Contract:
//! - [`decode`] takes the payload of one XLogData message and returns one [`PgOutputMessage`].
//! - It is zero-copy for row data: [`TupleValue::Text`]/[`TupleValue::Binary`] and
//!   [`PgOutputMessage::Message`] content are [`Bytes`] slices of the input.
//! - It never panics: truncated input, negative or oversized counts and lengths, invalid UTF-8,
//!   unknown tags and trailing bytes all give [`Error::data`] naming the message type and the
//!   byte offset.
//! - It is stateless: the caller tracks whether it is between StreamStart and StreamStop
//!   (`in_stream`), where data messages carry a leading (sub)transaction id.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::position::Lsn;

/// Microseconds between the UNIX epoch and PostgreSQL's epoch (2000-01-01 00:00 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `'n'`: SQL NULL (in a `'K'` old tuple also the placeholder of a non-key column).
    Null,
    /// `'u'`: an unchanged out-of-line (TOAST) value the server did not send.
    UnchangedToast,
    /// `'t'`: the value in the type's text output format.
    Text(Bytes),
    /// `'b'`: the value in the type's binary format (only with the `binary` option).
    Binary(Bytes),
}

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (under REPLICA IDENTITY FULL: every column).
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The old row image of an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `'K'`: replica identity columns; the other columns are `'n'` placeholders.
    Key(Vec<TupleValue>),
    /// `'O'`: the whole old row (REPLICA IDENTITY FULL).
    Full(Vec<TupleValue>),
}

/// One decoded pgoutput message. Timestamps are microseconds since the UNIX epoch, UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    Begin {
        final_lsn: Lsn,
        commit_ts: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    Origin {
        lsn: Lsn,
        name: String,
    },
    Relation {
        id: u32,
        /// Empty for `pg_catalog`.
        namespace: String,
        name: String,
        replica_identity: u8,
        columns: Vec<RelationColumn>,
    },
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<TupleValue>,
    },
    Update {
        relation: u32,
        old: Option<OldTuple>,
        new: Vec<TupleValue>,
    },
    Delete {
        relation: u32,
        old: OldTuple,
    },
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        relations: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

/// Decodes one pgoutput message (the payload of an XLogData).
///
/// `in_stream`: the message arrived between StreamStart and StreamStop (protocol 2), so data
/// messages (Relation, Type, Insert, Update, Delete, Truncate, Message) carry a leading xid,
/// which is consumed and dropped here; use [`decode_with_xid`] to keep it.
pub fn decode(buf: Bytes, in_stream: bool) -> Result<PgOutputMessage> {
    decode_with_xid(buf, in_stream).map(|(_, m)| m)
}

/// Like [`decode`], and also returns the xid a streamed data message carries (`None` outside a
/// stream and for messages without one). Inside a stream this is the xid of the
/// *sub*transaction that made the change, which a consumer needs to honour
/// [`PgOutputMessage::StreamAbort`] for a subtransaction.
pub fn decode_with_xid(buf: Bytes, in_stream: bool) -> Result<(Option<u32>, PgOutputMessage)> {
    let mut r = Reader {
        buf,
        pos: 0,
        msg: "pgoutput",
    };
    let tag = r.u8("message type")?;
    r.msg = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        _ => return Err(r.err_at(0, &format!("unknown message type {}", show_tag(tag)))),
    };
    let xid = if in_stream && matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M') {
        Some(r.u32("transaction id")?)
    } else {
        None
    };
    let msg = match tag {
        b'B' => PgOutputMessage::Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_ts: r.timestamp("commit timestamp")?,
            xid: r.u32("transaction id")?,
        },
        b'C' => PgOutputMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.timestamp("commit timestamp")?,
        },
        b'O' => PgOutputMessage::Origin {
            lsn: r.lsn("origin LSN")?,
            name: r.string("origin name")?,
        },
        b'R' => {
            let id = r.u32("relation id")?;
            let namespace = r.string("namespace")?;
            let name = r.string("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.count16("column count")?;
            // Each column takes at least 10 bytes: do not trust `n` for the allocation.
            let mut columns = Vec::with_capacity(n.min(r.remaining() / 10));
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                columns.push(RelationColumn {
                    is_key: flags & 1 != 0,
                    name: r.string("column name")?,
                    type_oid: r.u32("column type OID")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            PgOutputMessage::Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            }
        }
        b'Y' => PgOutputMessage::Type {
            id: r.u32("type OID")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        },
        b'I' => {
            let relation = r.u32("relation id")?;
            r.expect_tag(b'N', "new tuple marker 'N'")?;
            PgOutputMessage::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32("relation id")?;
            let at = r.pos;
            let old = match r.u8("tuple marker")? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                t => {
                    return Err(r.err_at(
                        at,
                        &format!("expected tuple marker 'K', 'O' or 'N', got {}", show_tag(t)),
                    ));
                }
            };
            if old.is_some() {
                r.expect_tag(b'N', "new tuple marker 'N'")?;
            }
            PgOutputMessage::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32("relation id")?;
            let at = r.pos;
            let old = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                t => {
                    return Err(r.err_at(
                        at,
                        &format!("expected tuple marker 'K' or 'O', got {}", show_tag(t)),
                    ));
                }
            };
            PgOutputMessage::Delete { relation, old }
        }
        b'T' => {
            let at = r.pos;
            let n = r.i32("relation count")?;
            let n = usize::try_from(n)
                .map_err(|_| r.err_at(at, &format!("negative relation count {n}")))?;
            let options = r.u8("options")?;
            if n > r.remaining() / 4 {
                return Err(r.err_at(
                    at,
                    &format!("relation count {n} exceeds the message length"),
                ));
            }
            let mut relations = Vec::with_capacity(n);
            for _ in 0..n {
                relations.push(r.u32("relation id")?);
            }
            PgOutputMessage::Truncate { options, relations }
        }
        b'M' => {
            let flags = r.u8("flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.string("prefix")?;
            let len = r.len32("content length")?;
            PgOutputMessage::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len, "content")?,
            }
        }
        b'S' => PgOutputMessage::StreamStart {
            xid: r.u32("transaction id")?,
            first_segment: r.u8("flags")? == 1,
        },
        b'E' => PgOutputMessage::StreamStop,
        b'c' => PgOutputMessage::StreamCommit {
            xid: r.u32("transaction id")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.timestamp("commit timestamp")?,
        },
        b'A' => PgOutputMessage::StreamAbort {
            xid: r.u32("transaction id")?,
            subxid: r.u32("subtransaction id")?,
        },
        // Unreachable: unknown tags returned above. Kept as an error, never a panic.
        _ => return Err(r.err_at(0, &format!("unknown message type {}", show_tag(tag)))),
    };
    r.finish()?;
    Ok((xid, msg))
}

fn show_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// A cursor over one message. Every read is bounds-checked.
struct Reader {
    buf: Bytes,
    pos: usize,
    /// The message type, for error messages.
    msg: &'static str,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[cold]
    fn err_at(&self, offset: usize, what: &str) -> Error {
        Error::data(format!(
            "invalid pgoutput {} message: {what} at offset {offset} (message length {})",
            self.msg,
            self.buf.len()
        ))
    }

    #[cold]
    fn truncated(&self, what: &str, need: usize) -> Error {
        self.err_at(
            self.pos,
            &format!(
                "truncated {what} (need {need} bytes, {} left)",
                self.remaining()
            ),
        )
    }

    #[inline]
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let end = self
            .pos
            .checked_add(N)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| self.truncated(what, N))?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(out)
    }

    #[inline]
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take::<1>(what)?[0])
    }

    #[inline]
    fn i16(&mut self, what: &str) -> Result<i16> {
        Ok(i16::from_be_bytes(self.take(what)?))
    }

    #[inline]
    fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(what)?))
    }

    #[inline]
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(what)?))
    }

    #[inline]
    fn i64(&mut self, what: &str) -> Result<i64> {
        Ok(i64::from_be_bytes(self.take(what)?))
    }

    fn lsn(&mut self, what: &str) -> Result<Lsn> {
        Ok(Lsn(u64::from_be_bytes(self.take(what)?)))
    }

    /// A PostgreSQL timestamp (micros since 2000-01-01) as micros since the UNIX epoch.
    fn timestamp(&mut self, what: &str) -> Result<i64> {
        let at = self.pos;
        let pg = self.i64(what)?;
        pg.checked_add(PG_EPOCH_OFFSET_MICROS)
            .ok_or_else(|| self.err_at(at, &format!("{what} {pg} out of range")))
    }

    /// A non-negative Int16 count.
    fn count16(&mut self, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| self.err_at(at, &format!("negative {what} {n}")))
    }

    /// A non-negative Int32 length that fits in the rest of the message.
    fn len32(&mut self, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.i32(what)?;
        match usize::try_from(n) {
            Ok(len) if len <= self.remaining() => Ok(len),
            Ok(len) => Err(self.err_at(
                at,
                &format!("{what} {len} exceeds the {} bytes left", self.remaining()),
            )),
            Err(_) => Err(self.err_at(at, &format!("negative {what} {n}"))),
        }
    }

    /// `len` bytes as a zero-copy slice of the message.
    #[inline]
    fn bytes(&mut self, len: usize, what: &str) -> Result<Bytes> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| self.truncated(what, len))?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &str) -> Result<String> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|b| *b == 0) else {
            return Err(self.err_at(self.pos, &format!("{what} is not NUL-terminated")));
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|e| {
                self.err_at(
                    self.pos + e.valid_up_to(),
                    &format!("{what} is not valid UTF-8"),
                )
            })?
            .to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    fn expect_tag(&mut self, want: u8, what: &str) -> Result<()> {
        let at = self.pos;
        match self.u8(what)? {
            t if t == want => Ok(()),
            t => Err(self.err_at(at, &format!("expected {what}, got {}", show_tag(t)))),
        }
    }

    /// TupleData: Int16 column count, then per column a kind byte and maybe a length + value.
    fn tuple(&mut self) -> Result<Vec<TupleValue>> {
        let n = self.count16("tuple column count")?;
        // Each column takes at least one byte: do not trust `n` for the allocation.
        let mut values = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            let at = self.pos;
            values.push(match self.u8("tuple column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.len32("text value length")?;
                    TupleValue::Text(self.bytes(len, "text value")?)
                }
                b'b' => {
                    let len = self.len32("binary value length")?;
                    TupleValue::Binary(self.bytes(len, "binary value")?)
                }
                k => {
                    return Err(
                        self.err_at(at, &format!("unknown tuple column kind {}", show_tag(k)))
                    );
                }
            });
        }
        Ok(values)
    }

    fn finish(&self) -> Result<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.err_at(
                self.pos,
                &format!("{} unexpected trailing bytes", self.remaining()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way the server does (big-endian, NUL-terminated strings).
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn new(tag: u8) -> Self {
            W(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        /// TupleData from (kind, value) pairs.
        fn tuple(mut self, cols: &[(u8, &[u8])]) -> Self {
            self = self.i16(cols.len() as i16);
            for (kind, v) in cols {
                self = self.u8(*kind);
                if *kind == b't' || *kind == b'b' {
                    self = self.i32(v.len() as i32).raw(v);
                }
            }
            self
        }
        fn bytes(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    /// 2024-01-01 00:00:00 UTC in PG epoch micros, and in UNIX micros.
    const PG_TS: i64 = 757_382_400_000_000;
    const UNIX_TS: i64 = 1_704_067_200_000_000;

    fn dec(w: W) -> PgOutputMessage {
        decode(w.bytes(), false).unwrap()
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn begin_commit_origin() {
        let m = dec(W::new(b'B').u64(0x16_B374_D848).i64(PG_TS).u32(771));
        assert_eq!(
            m,
            PgOutputMessage::Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_ts: UNIX_TS,
                xid: 771
            }
        );

        let m = dec(W::new(b'C').u8(0).u64(100).u64(164).i64(PG_TS));
        assert_eq!(
            m,
            PgOutputMessage::Commit {
                flags: 0,
                commit_lsn: Lsn(100),
                end_lsn: Lsn(164),
                commit_ts: UNIX_TS
            }
        );

        let m = dec(W::new(b'O').u64(42).s("node_a"));
        assert_eq!(
            m,
            PgOutputMessage::Origin {
                lsn: Lsn(42),
                name: "node_a".into()
            }
        );

        // PG epoch zero is 2000-01-01.
        let m = dec(W::new(b'B').u64(1).i64(0).u32(1));
        assert!(matches!(
            m,
            PgOutputMessage::Begin {
                commit_ts: 946_684_800_000_000,
                ..
            }
        ));
    }

    fn relation_msg(w: W) -> W {
        w.u32(16390)
            .s("public")
            .s("orders")
            .u8(b'd')
            .i16(3)
            .u8(1)
            .s("id")
            .u32(20)
            .i32(-1)
            .u8(0)
            .s("amount")
            .u32(1700)
            .i32((12 << 16) + 2 + 4)
            .u8(0)
            .s("note")
            .u32(25)
            .i32(-1)
    }

    #[test]
    fn relation_and_type() {
        let m = dec(relation_msg(W::new(b'R')));
        let PgOutputMessage::Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        } = m
        else {
            panic!("not a relation: {m:?}")
        };
        assert_eq!(
            (id, namespace.as_str(), name.as_str(), replica_identity),
            (16390, "public", "orders", b'd')
        );
        assert_eq!(columns.len(), 3);
        assert_eq!(
            columns[0],
            RelationColumn {
                is_key: true,
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1
            }
        );
        assert_eq!(columns[1].type_modifier, (12 << 16) + 6);
        assert!(!columns[2].is_key);

        // pg_catalog relations have an empty namespace.
        let m = dec(W::new(b'R').u32(1).s("").s("t").u8(b'f').i16(0));
        assert!(
            matches!(m, PgOutputMessage::Relation { ref namespace, ref columns, .. } if namespace.is_empty() && columns.is_empty())
        );

        let m = dec(W::new(b'Y').u32(16401).s("public").s("mood"));
        assert_eq!(
            m,
            PgOutputMessage::Type {
                id: 16401,
                namespace: "public".into(),
                name: "mood".into()
            }
        );
    }

    #[test]
    fn insert_with_every_column_kind() {
        let m = dec(W::new(b'I').u32(7).u8(b'N').tuple(&[
            (b't', b"42"),
            (b'n', b""),
            (b'u', b""),
            (b'b', &[0, 0, 0, 1]),
            (b't', b""),
            (b't', "żółw".as_bytes()),
        ]));
        assert_eq!(
            m,
            PgOutputMessage::Insert {
                relation: 7,
                new: vec![
                    text("42"),
                    TupleValue::Null,
                    TupleValue::UnchangedToast,
                    TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 1])),
                    text(""),
                    text("żółw"),
                ],
            }
        );
    }

    #[test]
    fn values_are_slices_of_the_input() {
        let buf = W::new(b'I')
            .u32(7)
            .u8(b'N')
            .tuple(&[(b't', b"hello")])
            .bytes();
        let base = buf.as_ptr() as usize;
        let PgOutputMessage::Insert { new, .. } = decode(buf.clone(), false).unwrap() else {
            panic!()
        };
        let TupleValue::Text(t) = &new[0] else {
            panic!()
        };
        let off = t.as_ptr() as usize - base;
        assert_eq!(&buf[off..off + 5], b"hello");
        assert!(off + 5 <= buf.len());
    }

    #[test]
    fn update_without_old_with_key_and_with_full() {
        let m = dec(W::new(b'U')
            .u32(7)
            .u8(b'N')
            .tuple(&[(b't', b"1"), (b'u', b"")]));
        assert_eq!(
            m,
            PgOutputMessage::Update {
                relation: 7,
                old: None,
                new: vec![text("1"), TupleValue::UnchangedToast]
            }
        );

        let m = dec(W::new(b'U')
            .u32(7)
            .u8(b'K')
            .tuple(&[(b't', b"1"), (b'n', b"")])
            .u8(b'N')
            .tuple(&[(b't', b"2"), (b't', b"x")]));
        assert_eq!(
            m,
            PgOutputMessage::Update {
                relation: 7,
                old: Some(OldTuple::Key(vec![text("1"), TupleValue::Null])),
                new: vec![text("2"), text("x")],
            }
        );

        let m = dec(W::new(b'U')
            .u32(7)
            .u8(b'O')
            .tuple(&[(b't', b"1"), (b't', b"big")])
            .u8(b'N')
            .tuple(&[(b't', b"1"), (b'u', b"")]));
        assert_eq!(
            m,
            PgOutputMessage::Update {
                relation: 7,
                old: Some(OldTuple::Full(vec![text("1"), text("big")])),
                new: vec![text("1"), TupleValue::UnchangedToast],
            }
        );
    }

    #[test]
    fn delete_key_and_full() {
        let m = dec(W::new(b'D')
            .u32(9)
            .u8(b'K')
            .tuple(&[(b't', b"5"), (b'n', b"")]));
        assert_eq!(
            m,
            PgOutputMessage::Delete {
                relation: 9,
                old: OldTuple::Key(vec![text("5"), TupleValue::Null])
            }
        );
        let m = dec(W::new(b'D')
            .u32(9)
            .u8(b'O')
            .tuple(&[(b't', b"5"), (b't', b"a")]));
        assert_eq!(
            m,
            PgOutputMessage::Delete {
                relation: 9,
                old: OldTuple::Full(vec![text("5"), text("a")])
            }
        );
    }

    #[test]
    fn truncate_and_message() {
        let m = dec(W::new(b'T').i32(2).u8(3).u32(10).u32(11));
        assert_eq!(
            m,
            PgOutputMessage::Truncate {
                options: 3,
                relations: vec![10, 11]
            }
        );

        let m = dec(W::new(b'M')
            .u8(1)
            .u64(500)
            .s("tidemark")
            .i32(3)
            .raw(b"a\0b"));
        assert_eq!(
            m,
            PgOutputMessage::Message {
                transactional: true,
                lsn: Lsn(500),
                prefix: "tidemark".into(),
                content: Bytes::from_static(b"a\0b"),
            }
        );
        let m = dec(W::new(b'M').u8(0).u64(500).s("hb").i32(0));
        assert!(
            matches!(m, PgOutputMessage::Message { transactional: false, ref content, .. } if content.is_empty())
        );
    }

    #[test]
    fn stream_control_messages() {
        assert_eq!(
            dec(W::new(b'S').u32(900).u8(1)),
            PgOutputMessage::StreamStart {
                xid: 900,
                first_segment: true
            }
        );
        assert_eq!(
            dec(W::new(b'S').u32(900).u8(0)),
            PgOutputMessage::StreamStart {
                xid: 900,
                first_segment: false
            }
        );
        assert_eq!(dec(W::new(b'E')), PgOutputMessage::StreamStop);
        assert_eq!(
            dec(W::new(b'c').u32(900).u8(0).u64(1000).u64(1100).i64(PG_TS)),
            PgOutputMessage::StreamCommit {
                xid: 900,
                flags: 0,
                commit_lsn: Lsn(1000),
                end_lsn: Lsn(1100),
                commit_ts: UNIX_TS
            }
        );
        assert_eq!(
            dec(W::new(b'A').u32(900).u32(901)),
            PgOutputMessage::StreamAbort {
                xid: 900,
                subxid: 901
            }
        );
        // Stream control messages have no extra xid even inside a stream.
        assert_eq!(
            decode(W::new(b'E').bytes(), true).unwrap(),
            PgOutputMessage::StreamStop
        );
    }

    #[test]
    fn streamed_data_messages_carry_an_xid() {
        let cases: Vec<(W, W)> = vec![
            (
                relation_msg(W::new(b'R').u32(901)),
                relation_msg(W::new(b'R')),
            ),
            (
                W::new(b'Y').u32(901).u32(5).s("public").s("mood"),
                W::new(b'Y').u32(5).s("public").s("mood"),
            ),
            (
                W::new(b'I').u32(901).u32(7).u8(b'N').tuple(&[(b't', b"1")]),
                W::new(b'I').u32(7).u8(b'N').tuple(&[(b't', b"1")]),
            ),
            (
                W::new(b'U')
                    .u32(901)
                    .u32(7)
                    .u8(b'K')
                    .tuple(&[(b't', b"1")])
                    .u8(b'N')
                    .tuple(&[(b't', b"2")]),
                W::new(b'U')
                    .u32(7)
                    .u8(b'K')
                    .tuple(&[(b't', b"1")])
                    .u8(b'N')
                    .tuple(&[(b't', b"2")]),
            ),
            (
                W::new(b'D').u32(901).u32(7).u8(b'O').tuple(&[(b't', b"1")]),
                W::new(b'D').u32(7).u8(b'O').tuple(&[(b't', b"1")]),
            ),
            (
                W::new(b'T').u32(901).i32(1).u8(0).u32(7),
                W::new(b'T').i32(1).u8(0).u32(7),
            ),
            (
                W::new(b'M').u32(901).u8(1).u64(9).s("p").i32(1).raw(b"x"),
                W::new(b'M').u8(1).u64(9).s("p").i32(1).raw(b"x"),
            ),
        ];
        for (streamed, plain) in cases {
            let (streamed, plain) = (streamed.bytes(), plain.bytes());
            let (xid, m) = decode_with_xid(streamed.clone(), true).unwrap();
            assert_eq!(xid, Some(901));
            assert_eq!(m, decode(plain.clone(), false).unwrap());
            assert_eq!(decode_with_xid(plain.clone(), false).unwrap().0, None);
            // Decoding a streamed message as non-streamed (or vice versa) is an error, not garbage.
            assert!(decode(streamed, false).is_err() || decode(plain, true).is_err());
        }
        // Begin/Commit inside a stream carry no xid.
        let (xid, _) = decode_with_xid(W::new(b'B').u64(1).i64(0).u32(1).bytes(), true).unwrap();
        assert_eq!(xid, None);
    }

    fn err(buf: Vec<u8>) -> String {
        let e = decode(Bytes::from(buf), false).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Data);
        e.to_string()
    }

    #[test]
    fn malformed_messages_are_data_errors() {
        let e = err(vec![]);
        assert!(
            e.contains("truncated message type") && e.contains("at offset 0"),
            "{e}"
        );
        let e = err(vec![b'Z', 1, 2]);
        assert!(e.contains("unknown message type 'Z'"), "{e}");
        assert!(err(vec![0x01]).contains("0x01"));
        let e = err(W::new(b'B').u64(1).i64(0).bytes().to_vec());
        assert!(
            e.contains("Begin") && e.contains("transaction id") && e.contains("offset 17"),
            "{e}"
        );
        // Trailing garbage.
        let e = err(W::new(b'E').u8(0).0);
        assert!(e.contains("Stream Stop") && e.contains("trailing"), "{e}");
        // Unknown tuple kind.
        let e = err(W::new(b'I').u32(1).u8(b'N').i16(1).u8(b'x').0);
        assert!(
            e.contains("Insert") && e.contains("tuple column kind 'x'") && e.contains("offset 8"),
            "{e}"
        );
        // Wrong new-tuple marker.
        assert!(err(W::new(b'I').u32(1).u8(b'K').i16(0).0).contains("'N'"));
        assert!(err(W::new(b'U').u32(1).u8(b'X').i16(0).0).contains("'K', 'O' or 'N'"));
        assert!(err(W::new(b'U').u32(1).u8(b'K').i16(0).u8(b'K').i16(0).0).contains("'N'"));
        assert!(err(W::new(b'D').u32(1).u8(b'N').i16(0).0).contains("'K' or 'O'"));
        // Negative and oversized counts and lengths.
        assert!(err(W::new(b'I').u32(1).u8(b'N').i16(-1).0).contains("negative"));
        assert!(err(W::new(b'I').u32(1).u8(b'N').i16(i16::MAX).0).contains("truncated"));
        assert!(err(W::new(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-5).0).contains("negative"));
        assert!(
            err(W::new(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(i32::MAX).0).contains("exceeds")
        );
        assert!(err(W::new(b'T').i32(-1).u8(0).0).contains("negative"));
        assert!(err(W::new(b'T').i32(i32::MAX).u8(0).u32(1).0).contains("exceeds"));
        assert!(err(W::new(b'M').u8(0).u64(1).s("p").i32(10).raw(b"abc").0).contains("exceeds"));
        assert!(
            err(W::new(b'R').u32(1).s("a").s("b").u8(b'd').i16(i16::MAX).0).contains("truncated")
        );
        // Strings: missing NUL, bad UTF-8.
        assert!(err(W::new(b'O').u64(1).raw(b"abc").0).contains("not NUL-terminated"));
        let e = err(W::new(b'O').u64(1).raw(b"ab\xff\0").0);
        assert!(
            e.contains("not valid UTF-8") && e.contains("offset 11"),
            "{e}"
        );
        // Timestamp overflow.
        assert!(err(W::new(b'B').u64(1).i64(i64::MAX).u32(1).0).contains("out of range"));
    }

    fn valid_messages() -> Vec<Bytes> {
        vec![
            W::new(b'B').u64(1).i64(PG_TS).u32(1).bytes(),
            W::new(b'C').u8(0).u64(1).u64(2).i64(PG_TS).bytes(),
            W::new(b'O').u64(1).s("o").bytes(),
            relation_msg(W::new(b'R')).bytes(),
            W::new(b'Y').u32(1).s("n").s("t").bytes(),
            W::new(b'I')
                .u32(1)
                .u8(b'N')
                .tuple(&[(b't', b"12"), (b'n', b""), (b'u', b""), (b'b', b"\x01")])
                .bytes(),
            W::new(b'U')
                .u32(1)
                .u8(b'O')
                .tuple(&[(b't', b"1")])
                .u8(b'N')
                .tuple(&[(b'u', b"")])
                .bytes(),
            W::new(b'D')
                .u32(1)
                .u8(b'K')
                .tuple(&[(b't', b"1"), (b'n', b"")])
                .bytes(),
            W::new(b'T').i32(2).u8(1).u32(1).u32(2).bytes(),
            W::new(b'M').u8(1).u64(1).s("p").i32(2).raw(b"hi").bytes(),
            W::new(b'S').u32(1).u8(1).bytes(),
            W::new(b'E').bytes(),
            W::new(b'c').u32(1).u8(0).u64(1).u64(2).i64(PG_TS).bytes(),
            W::new(b'A').u32(1).u32(2).bytes(),
        ]
    }

    #[test]
    fn fuzz_prefixes_mutations_and_random_bytes_never_panic() {
        for msg in valid_messages() {
            assert!(decode(msg.clone(), false).is_ok(), "{msg:?}");
            // Every strict prefix is truncated: an error, never a panic.
            for n in 0..msg.len() {
                assert!(
                    decode(msg.slice(..n), false).is_err(),
                    "prefix {n} of {msg:?}"
                );
                let _ = decode(msg.slice(..n), true);
            }
        }
        let mut rng = fastrand::Rng::with_seed(0x7469_6465);
        // Single-byte mutations of valid messages.
        for msg in valid_messages() {
            for _ in 0..500 {
                let mut m = msg.to_vec();
                let i = rng.usize(..m.len());
                m[i] = rng.u8(..);
                let _ = decode(Bytes::from(m.clone()), false);
                let _ = decode(Bytes::from(m), true);
            }
        }
        // Random byte strings, biased to start with a known tag.
        let tags = b"BCORYIUDTMSEcA";
        for i in 0..5000 {
            let len = rng.usize(0..64);
            let mut m = vec![0u8; len];
            rng.fill(&mut m);
            if len > 0 && i % 2 == 0 {
                m[0] = tags[rng.usize(..tags.len())];
            }
            let _ = decode(Bytes::from(m.clone()), false);
            let _ = decode(Bytes::from(m), true);
        }
    }
}
