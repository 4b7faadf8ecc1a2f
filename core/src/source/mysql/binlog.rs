//! Binlog event bodies tidemark parses itself: TABLE_MAP (into a decode plan built once per
//! table version), rows events (decoded with that plan, no per-row metadata work), MariaDB GTID
//! and XA events, and the meaning of QUERY events.
//!
//! Contract: every parser takes untrusted bytes and returns `Data` errors, never panics.

use std::sync::Arc;

use crate::change::{Column, Op, SchemaRef, TableId, TableSchema, Value};
use crate::error::{Error, Result};
use crate::source::mysql::types::{self, Charset, Cursor, Decoder, code};

/// Event type codes tidemark acts on.
pub mod event {
    pub const QUERY: u8 = 2;
    pub const STOP: u8 = 3;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const XID: u8 = 16;
    pub const TABLE_MAP: u8 = 19;
    pub const WRITE_ROWS_V1: u8 = 23;
    pub const UPDATE_ROWS_V1: u8 = 24;
    pub const DELETE_ROWS_V1: u8 = 25;
    pub const HEARTBEAT: u8 = 27;
    pub const WRITE_ROWS_V2: u8 = 30;
    pub const UPDATE_ROWS_V2: u8 = 31;
    pub const DELETE_ROWS_V2: u8 = 32;
    /// MySQL GTID and anonymous GTID: a transaction begins.
    pub const MYSQL_GTID: u8 = 33;
    pub const MYSQL_ANONYMOUS_GTID: u8 = 34;
    pub const XA_PREPARE_LOG: u8 = 38;
    /// MySQL 8 partial JSON updates (`binlog_row_value_options = PARTIAL_JSON`).
    pub const MYSQL_PARTIAL_UPDATE_ROWS: u8 = 39;
    /// MySQL `binlog_transaction_compression`: a transaction's events in one (zstd) event.
    pub const TRANSACTION_PAYLOAD: u8 = 40;
    /// MySQL 8.3+ tagged GTID.
    pub const MYSQL_GTID_TAGGED: u8 = 42;
    pub const MARIA_ANNOTATE_ROWS: u8 = 160;
    pub const MARIA_BINLOG_CHECKPOINT: u8 = 161;
    pub const MARIA_GTID: u8 = 162;
    pub const MARIA_GTID_LIST: u8 = 163;
    /// MariaDB compressed query/rows events (`log_bin_compress`): 165..=171.
    pub const MARIA_COMPRESSED_FIRST: u8 = 165;
    pub const MARIA_COMPRESSED_LAST: u8 = 171;
}

/// A table's columns as one TABLE_MAP describes them, with the decoder of each.
#[derive(Debug)]
pub struct TablePlan {
    pub schema: SchemaRef,
    decoders: Vec<Decoder>,
    /// Whether rows of this table are captured.
    pub captured: bool,
    /// The TABLE_MAP body after the table id: identical bytes mean the same plan.
    pub fingerprint: Vec<u8>,
}

/// A parsed TABLE_MAP body.
pub struct TableMap<'a> {
    pub table_id: u64,
    pub database: String,
    pub table: String,
    pub types: &'a [u8],
    pub meta: &'a [u8],
    pub optional: &'a [u8],
    /// Everything after the table id (fingerprint of the table version).
    pub rest: &'a [u8],
}

fn lenenc(c: &mut Cursor<'_>) -> Result<u64> {
    let first = c.take(1)?[0];
    Ok(match first {
        0..=250 => u64::from(first),
        252 => le(c.take(2)?),
        253 => le(c.take(3)?),
        254 => le(c.take(8)?),
        _ => {
            return Err(Error::data(
                "invalid length-encoded integer in a binlog event",
            ));
        }
    })
}

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x))
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses a TABLE_MAP event body (the event's data after the common header).
pub fn parse_table_map(data: &[u8]) -> Result<TableMap<'_>> {
    let mut c = Cursor { buf: data };
    let table_id = le(c.take(6)?);
    let rest = c.buf;
    c.take(2)?; // flags
    let n = usize::from(c.take(1)?[0]);
    let database = utf8(c.take(n)?);
    c.take(1)?;
    let n = usize::from(c.take(1)?[0]);
    let table = utf8(c.take(n)?);
    c.take(1)?;
    let ncols = lenenc(&mut c)? as usize;
    let types = c.take(ncols)?;
    let meta_len = lenenc(&mut c)? as usize;
    let meta = c.take(meta_len)?;
    c.take(ncols.div_ceil(8))?; // nullability
    Ok(TableMap {
        table_id,
        database,
        table,
        types,
        meta,
        optional: c.buf,
        rest,
    })
}

/// Optional metadata (`binlog_row_metadata=FULL`) of one TABLE_MAP.
#[derive(Default)]
struct Optional {
    unsigned: Vec<bool>,
    default_charset: Option<u16>,
    charset_overrides: Vec<(usize, u16)>,
    column_charsets: Option<Vec<u16>>,
    enum_set_default_charset: Option<u16>,
    enum_set_overrides: Vec<(usize, u16)>,
    enum_set_column_charsets: Option<Vec<u16>>,
    names: Vec<String>,
    sets: Vec<Vec<String>>,
    enums: Vec<Vec<String>>,
    primary_key: Vec<usize>,
}

fn parse_optional(data: &[u8]) -> Result<Optional> {
    let mut o = Optional::default();
    let mut c = Cursor { buf: data };
    while !c.buf.is_empty() {
        let t = c.take(1)?[0];
        let len = lenenc(&mut c)? as usize;
        let mut v = Cursor { buf: c.take(len)? };
        match t {
            1 => {
                o.unsigned = v
                    .buf
                    .iter()
                    .flat_map(|b| (0..8).rev().map(move |i| b & (1 << i) != 0))
                    .collect()
            }
            2 | 10 => {
                let default = lenenc(&mut v)? as u16;
                let mut overrides = Vec::new();
                while !v.buf.is_empty() {
                    let idx = lenenc(&mut v)? as usize;
                    overrides.push((idx, lenenc(&mut v)? as u16));
                }
                if t == 2 {
                    o.default_charset = Some(default);
                    o.charset_overrides = overrides;
                } else {
                    o.enum_set_default_charset = Some(default);
                    o.enum_set_overrides = overrides;
                }
            }
            3 | 11 => {
                let mut all = Vec::new();
                while !v.buf.is_empty() {
                    all.push(lenenc(&mut v)? as u16);
                }
                if t == 3 {
                    o.column_charsets = Some(all);
                } else {
                    o.enum_set_column_charsets = Some(all);
                }
            }
            4 => {
                while !v.buf.is_empty() {
                    let n = lenenc(&mut v)? as usize;
                    o.names.push(utf8(v.take(n)?));
                }
            }
            5 | 6 => {
                let mut all = Vec::new();
                while !v.buf.is_empty() {
                    let count = lenenc(&mut v)? as usize;
                    let mut names = Vec::with_capacity(count.min(1024));
                    for _ in 0..count {
                        let n = lenenc(&mut v)? as usize;
                        names.push(utf8(v.take(n)?));
                    }
                    all.push(names);
                }
                if t == 5 {
                    o.sets = all;
                } else {
                    o.enums = all;
                }
            }
            8 => {
                while !v.buf.is_empty() {
                    o.primary_key.push(lenenc(&mut v)? as usize);
                }
            }
            9 => {
                while !v.buf.is_empty() {
                    o.primary_key.push(lenenc(&mut v)? as usize);
                    lenenc(&mut v)?; // prefix length
                }
            }
            _ => {} // geometry types, visibility, ...: not needed
        }
    }
    Ok(o)
}

fn charset_of(
    i: usize,
    default: Option<u16>,
    overrides: &[(usize, u16)],
    per_column: &Option<Vec<u16>>,
) -> Option<u16> {
    if let Some(all) = per_column {
        return all.get(i).copied();
    }
    overrides
        .iter()
        .find(|(idx, _)| *idx == i)
        .map(|(_, c)| *c)
        .or(default)
}

/// What one TABLE_MAP column is, before optional metadata: its real type and raw metadata.
fn column_meta(types: &[u8], meta: &[u8]) -> Result<Vec<(u8, u16)>> {
    let mut c = Cursor { buf: meta };
    let mut out = Vec::with_capacity(types.len());
    for &t in types {
        let m = match t {
            code::FLOAT
            | code::DOUBLE
            | code::BLOB
            | code::TINY_BLOB
            | code::MEDIUM_BLOB
            | code::LONG_BLOB
            | code::GEOMETRY
            | code::JSON
            | code::TIME2
            | code::DATETIME2
            | code::TIMESTAMP2 => u16::from(c.take(1)?[0]),
            code::VARCHAR | code::VAR_STRING => le(c.take(2)?) as u16,
            // Two bytes, the first the most significant.
            code::NEWDECIMAL | code::STRING | code::ENUM | code::SET | code::BIT => {
                let b = c.take(2)?;
                (u16::from(b[0]) << 8) | u16::from(b[1])
            }
            _ => 0,
        };
        // CHAR, ENUM and SET all arrive as STRING: the real type is in the metadata.
        let real = if t == code::STRING && m >> 8 != 0 {
            ((m >> 8) as u8) | 0x30
        } else {
            t
        };
        out.push((real, m));
    }
    Ok(out)
}

impl TablePlan {
    /// Builds the plan of a TABLE_MAP. Needs `binlog_row_metadata=FULL` (names, signedness,
    /// charsets, enum/set values, primary key): without it, a clear error.
    pub fn build(tm: &TableMap<'_>, captured: bool) -> Result<TablePlan> {
        let id = TableId::new(tm.database.clone(), tm.table.clone());
        let cols =
            column_meta(tm.types, tm.meta).map_err(|e| e.context(format!("TABLE_MAP of {id}")))?;
        let o = parse_optional(tm.optional).map_err(|e| e.context(format!("TABLE_MAP of {id}")))?;
        if captured && o.names.len() != cols.len() {
            return Err(Error::config(format!(
                "the binlog has no column names for {id}: set binlog_row_metadata = FULL on the server \
                 (SET GLOBAL binlog_row_metadata = 'FULL', and in my.cnf) and restart tidemark"
            )));
        }
        let (mut numeric, mut character, mut enum_set) = (0usize, 0usize, 0usize);
        let (mut enums, mut sets) = (o.enums.iter(), o.sets.iter());
        let mut decoders = Vec::with_capacity(cols.len());
        let mut columns = Vec::with_capacity(cols.len());
        for (i, &(t, m)) in cols.iter().enumerate() {
            let is_numeric = matches!(
                t,
                code::TINY
                    | code::SHORT
                    | code::INT24
                    | code::LONG
                    | code::LONGLONG
                    | code::FLOAT
                    | code::DOUBLE
                    | code::NEWDECIMAL
                    | code::DECIMAL
            );
            let unsigned = if is_numeric {
                numeric += 1;
                o.unsigned.get(numeric - 1).copied().unwrap_or(false)
            } else {
                false
            };
            let is_char = matches!(
                t,
                code::VARCHAR
                    | code::VAR_STRING
                    | code::STRING
                    | code::BLOB
                    | code::TINY_BLOB
                    | code::MEDIUM_BLOB
                    | code::LONG_BLOB
            );
            let charset = if is_char {
                character += 1;
                charset_of(
                    character - 1,
                    o.default_charset,
                    &o.charset_overrides,
                    &o.column_charsets,
                )
            } else {
                None
            };
            if matches!(t, code::ENUM | code::SET) {
                enum_set += 1;
                let _ = charset_of(
                    enum_set - 1,
                    o.enum_set_default_charset,
                    &o.enum_set_overrides,
                    &o.enum_set_column_charsets,
                );
            }
            let cs = charset.map_or(Charset::Utf8, Charset::from_collation);
            let int = |bytes| Decoder::Int { bytes, unsigned };
            let (decoder, source_type, bits) = match t {
                code::TINY => (int(1), "tinyint".to_string(), 0),
                code::SHORT => (int(2), "smallint".into(), 0),
                code::INT24 => (int(3), "mediumint".into(), 0),
                code::LONG => (int(4), "int".into(), 0),
                code::LONGLONG => (int(8), "bigint".into(), 0),
                code::FLOAT => (Decoder::Float, "float".into(), 0),
                code::DOUBLE => (Decoder::Double, "double".into(), 0),
                code::NEWDECIMAL => {
                    let (precision, scale) = ((m >> 8) as u8, (m & 0xff) as u8);
                    let d = if precision > 38 {
                        Decoder::DecimalText { precision, scale }
                    } else {
                        Decoder::Decimal { precision, scale }
                    };
                    (d, format!("decimal({precision},{scale})"), 0)
                }
                code::YEAR => (Decoder::Year, "year".into(), 0),
                code::DATE | code::NEWDATE => (Decoder::Date, "date".into(), 0),
                code::TIME2 => (Decoder::Time2 { fsp: m as u8 }, format!("time({m})"), 0),
                code::DATETIME2 => (
                    Decoder::Datetime2 { fsp: m as u8 },
                    format!("datetime({m})"),
                    0,
                ),
                code::TIMESTAMP2 => (
                    Decoder::Timestamp2 { fsp: m as u8 },
                    format!("timestamp({m})"),
                    0,
                ),
                code::TIME => (Decoder::OldTime, "time".into(), 0),
                code::DATETIME => (Decoder::OldDatetime, "datetime".into(), 0),
                code::TIMESTAMP => (Decoder::OldTimestamp, "timestamp".into(), 0),
                code::VARCHAR | code::VAR_STRING => (
                    Decoder::Var {
                        len_bytes: if m < 256 { 1 } else { 2 },
                        charset: cs,
                        pad_to: 0,
                    },
                    format!("varchar({m})"),
                    0,
                ),
                code::STRING => {
                    // CHAR(n): the byte length; long CHARs keep two high bits in byte 0.
                    let (b0, b1) = ((m >> 8) as usize, (m & 0xff) as usize);
                    let len = if b0 != 0 && (b0 & 0x30) != 0x30 {
                        b1 | (((b0 & 0x30) ^ 0x30) << 4)
                    } else {
                        b1
                    };
                    (
                        Decoder::Var {
                            len_bytes: if len < 256 { 1 } else { 2 },
                            charset: cs,
                            pad_to: if cs == Charset::Binary { len as u16 } else { 0 },
                        },
                        format!("char({len})"),
                        0,
                    )
                }
                code::BLOB | code::TINY_BLOB | code::MEDIUM_BLOB | code::LONG_BLOB => (
                    Decoder::Var {
                        len_bytes: (m as u8).clamp(1, 4),
                        charset: cs,
                        pad_to: 0,
                    },
                    if cs == Charset::Binary {
                        "blob"
                    } else {
                        "text"
                    }
                    .into(),
                    0,
                ),
                code::GEOMETRY => (
                    Decoder::Var {
                        len_bytes: (m as u8).clamp(1, 4),
                        charset: Charset::Binary,
                        pad_to: 0,
                    },
                    "geometry".into(),
                    0,
                ),
                code::BIT => {
                    // Metadata: bits % 8, then whole bytes.
                    let bits = u32::from(m & 0xff) * 8 + u32::from(m >> 8);
                    (
                        Decoder::Bit {
                            bytes: bits.div_ceil(8) as u8,
                        },
                        format!("bit({bits})"),
                        bits,
                    )
                }
                code::ENUM => (
                    Decoder::Enum {
                        bytes: (m & 0xff) as u8,
                        names: Arc::new(enums.next().cloned().unwrap_or_default()),
                    },
                    "enum".into(),
                    0,
                ),
                code::SET => (
                    Decoder::Set {
                        bytes: (m & 0xff) as u8,
                        names: Arc::new(sets.next().cloned().unwrap_or_default()),
                    },
                    "set".into(),
                    0,
                ),
                code::JSON => (Decoder::Json, "json".into(), 0),
                other => {
                    return Err(Error::data(format!(
                        "{id}: column {} has binlog type {other}, which tidemark cannot decode",
                        i + 1
                    )));
                }
            };
            let ty = types::column_type(&decoder, bits);
            let source_type = if unsigned {
                format!("{source_type} unsigned")
            } else {
                source_type
            };
            columns.push(Column {
                name: o
                    .names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("@{}", i + 1)),
                ty,
                source_type,
                key: o.primary_key.contains(&i),
            });
            decoders.push(decoder);
        }
        let schema = TableSchema { id, columns }.with_output_names();
        Ok(TablePlan {
            schema: Arc::new(schema),
            decoders,
            captured,
            fingerprint: tm.rest.to_vec(),
        })
    }
}

/// The kind of a rows event, from its type code.
pub fn rows_kind(event_type: u8) -> Option<(Op, bool)> {
    use event::*;
    // (op, whether the post-header has v2 extra data)
    match event_type {
        WRITE_ROWS_V1 => Some((Op::Insert, false)),
        UPDATE_ROWS_V1 => Some((Op::Update, false)),
        DELETE_ROWS_V1 => Some((Op::Delete, false)),
        WRITE_ROWS_V2 => Some((Op::Insert, true)),
        UPDATE_ROWS_V2 => Some((Op::Update, true)),
        DELETE_ROWS_V2 => Some((Op::Delete, true)),
        _ => None,
    }
}

/// The table id a rows event refers to.
pub fn rows_table_id(data: &[u8]) -> Result<u64> {
    Ok(le(Cursor { buf: data }.take(6)?))
}

/// Decodes a rows event with `plan`, appending `(op, row)`s: `ops` gets one entry per row and
/// `values` the row's values (`plan.schema.columns.len()` per row). An UPDATE yields its after
/// image, preceded by a `Delete` of the before image when the primary key changed or the table
/// has no primary key.
///
/// A partial row image (`binlog_row_image` MINIMAL or NOBLOB) is refused: tidemark writes whole
/// rows.
pub fn decode_rows(
    plan: &TablePlan,
    data: &[u8],
    op: Op,
    v2: bool,
    ops: &mut Vec<Op>,
    values: &mut Vec<Value>,
) -> Result<()> {
    let mut c = Cursor { buf: data };
    c.take(8)?; // table id, flags
    if v2 {
        let extra = le(c.take(2)?) as usize;
        c.take(extra.saturating_sub(2))?;
    }
    let ncols = lenenc(&mut c)? as usize;
    if ncols != plan.decoders.len() {
        return Err(Error::data(format!(
            "rows event for {} has {ncols} columns, its TABLE_MAP {}",
            plan.schema.id,
            plan.decoders.len()
        )));
    }
    let bitmap_len = ncols.div_ceil(8);
    let full = |b: &[u8]| (0..ncols).all(|i| b[i / 8] & (1 << (i % 8)) != 0);
    let present = c.take(bitmap_len)?;
    let present_after = if op == Op::Update {
        Some(c.take(bitmap_len)?)
    } else {
        None
    };
    if !full(present) || present_after.is_some_and(|b| !full(b)) {
        return Err(Error::config(format!(
            "the binlog holds a partial row image for {}: set binlog_row_image = FULL on the server \
             (SET GLOBAL binlog_row_image = 'FULL', in my.cnf, and in sessions that override it)",
            plan.schema.id
        )));
    }
    let key_idx: Vec<usize> = plan
        .schema
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.key)
        .map(|(i, _)| i)
        .collect();
    while !c.buf.is_empty() {
        let start = values.len();
        read_image(plan, &mut c, values)?;
        if op == Op::Update {
            let before_end = values.len();
            read_image(plan, &mut c, values)?;
            let (before, after) = values[start..].split_at(before_end - start);
            // Without a primary key the before image is the only way to say which row changed:
            // keep it (`D` then `U`), so replaying the output rebuilds the table as a multiset.
            let key_changed = key_idx.is_empty() || key_idx.iter().any(|&i| before[i] != after[i]);
            if key_changed {
                ops.push(Op::Delete);
                ops.push(Op::Update);
            } else {
                values.drain(start..before_end);
                ops.push(Op::Update);
            }
        } else {
            ops.push(op);
        }
    }
    Ok(())
}

fn read_image(plan: &TablePlan, c: &mut Cursor<'_>, values: &mut Vec<Value>) -> Result<()> {
    let n = plan.decoders.len();
    let nulls = c.take(n.div_ceil(8))?;
    for (i, (d, col)) in plan.decoders.iter().zip(&plan.schema.columns).enumerate() {
        if nulls[i / 8] & (1 << (i % 8)) != 0 {
            values.push(Value::Null);
        } else {
            values.push(
                types::decode(d, &col.ty, c)
                    .map_err(|e| e.context(format!("{}.{}", plan.schema.id, col.name)))?,
            );
        }
    }
    Ok(())
}

/// A MariaDB GTID event: `domain-server-seq`, its flags, and the XA id of an XA group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MariaGtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
    pub flags: u8,
    pub xid: Option<Vec<u8>>,
}

impl MariaGtid {
    pub const FL_STANDALONE: u8 = 1;
    pub const FL_GROUP_COMMIT_ID: u8 = 2;
    pub const FL_PREPARED_XA: u8 = 64;
    pub const FL_COMPLETED_XA: u8 = 128;

    pub fn parse(data: &[u8], server: u32) -> Result<Self> {
        let mut c = Cursor { buf: data };
        let seq = le(c.take(8)?);
        let domain = le(c.take(4)?) as u32;
        let flags = c.take(1)?[0];
        if flags & Self::FL_GROUP_COMMIT_ID != 0 {
            c.take(8)?;
        }
        let xid = if flags & (Self::FL_PREPARED_XA | Self::FL_COMPLETED_XA) != 0 {
            let format = c.take(4)?;
            let g = usize::from(c.take(1)?[0]);
            let b = usize::from(c.take(1)?[0]);
            let mut x = format.to_vec();
            x.extend_from_slice(c.take(g + b)?);
            Some(x)
        } else {
            None
        };
        Ok(MariaGtid {
            domain,
            server,
            seq,
            flags,
            xid,
        })
    }
}

/// An XA_PREPARE_LOG event: whether it is a one-phase commit, and the XA id in the same form
/// as [`MariaGtid::xid`] (format id, 4 bytes LE, then gtrid and bqual).
pub fn xa_prepare_xid(data: &[u8]) -> Result<(bool, Vec<u8>)> {
    let mut c = Cursor { buf: data };
    let one_phase = c.take(1)?[0] != 0;
    let mut x = c.take(4)?.to_vec();
    let g = le(c.take(4)?) as usize;
    let b = le(c.take(4)?) as usize;
    x.extend_from_slice(c.take(g.saturating_add(b))?);
    Ok((one_phase, x))
}

/// The XA id of `XA START|BEGIN|COMMIT|ROLLBACK X'gtrid',X'bqual',format` as MySQL logs it,
/// in the form of [`xa_prepare_xid`]; `None` for any other statement or form.
pub fn xa_query_xid(sql: &str) -> Option<Vec<u8>> {
    let s = strip_leading_comments(sql);
    let mut words = s.splitn(3, char::is_whitespace);
    if !words.next()?.eq_ignore_ascii_case("XA") {
        return None;
    }
    let verb = words.next()?.to_ascii_uppercase();
    if !matches!(verb.as_str(), "START" | "BEGIN" | "COMMIT" | "ROLLBACK") {
        return None;
    }
    let rest = words.next()?.trim();
    let hex = |t: &str| -> Option<Vec<u8>> {
        let t = t.trim();
        let h = t
            .strip_prefix("X'")
            .or_else(|| t.strip_prefix("x'"))?
            .strip_suffix('\'')?;
        if h.len() % 2 != 0 {
            return None;
        }
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
            .collect()
    };
    let mut parts = rest.split(',');
    let gtrid = hex(parts.next()?)?;
    let bqual = hex(parts.next()?)?;
    let format: u32 = parts.next()?.split_whitespace().next()?.parse().ok()?;
    let mut x = format.to_le_bytes().to_vec();
    x.extend_from_slice(&gtrid);
    x.extend_from_slice(&bqual);
    Some(x)
}

/// A MariaDB GTID_LIST event: the binlog state (last GTID per domain) at that point.
pub fn parse_gtid_list(data: &[u8]) -> Result<Vec<MariaGtid>> {
    let mut c = Cursor { buf: data };
    let count = (le(c.take(4)?) & 0x0fff_ffff) as usize;
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let domain = le(c.take(4)?) as u32;
        let server = le(c.take(4)?) as u32;
        let seq = le(c.take(8)?);
        out.push(MariaGtid {
            domain,
            server,
            seq,
            flags: 0,
            xid: None,
        });
    }
    Ok(out)
}

/// A GTID state: the last sequence number per replication domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState(pub std::collections::BTreeMap<u32, (u32, u64)>);

impl GtidState {
    /// Parses `0-1-100,1-2-7` (MariaDB's `gtid_binlog_pos` form); empty is the empty state.
    pub fn parse(s: &str) -> Result<Self> {
        let mut m = std::collections::BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split('-');
            let bad = || {
                Error::data(format!(
                    "invalid MariaDB GTID {part:?}: expected domain-server-seq"
                ))
            };
            let d = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
            let s = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
            let n = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
            m.insert(d, (s, n));
        }
        Ok(GtidState(m))
    }
    pub fn apply(&mut self, g: &MariaGtid) {
        self.0.insert(g.domain, (g.server, g.seq));
    }
}

impl std::fmt::Display for GtidState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (d, (s, n))) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}-{s}-{n}")?;
        }
        Ok(())
    }
}

/// What a QUERY event means for the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKind {
    Begin,
    Commit,
    /// `ROLLBACK` logged for non-transactional changes: the group ends, its rows stand.
    Rollback,
    XaCommit,
    XaRollback,
    /// XA END, SAVEPOINT, ROLLBACK TO: nothing to do.
    Ignore,
    /// A statement-format data change: refused (tidemark needs row events).
    StatementDml,
    /// `TRUNCATE [TABLE] name`.
    Truncate(String),
    /// Any other statement: DDL, GRANT, ...
    Ddl,
}

/// Classifies a QUERY event's statement (comments and leading whitespace ignored).
pub fn classify_query(sql: &str) -> QueryKind {
    let s = strip_leading_comments(sql);
    let mut words = s.split_ascii_whitespace();
    let first = words.next().unwrap_or("").to_ascii_uppercase();
    let second = words.next().unwrap_or("").to_ascii_uppercase();
    match (first.as_str(), second.as_str()) {
        ("BEGIN", _) | ("XA", "START") | ("XA", "BEGIN") | ("START", "TRANSACTION") => {
            QueryKind::Begin
        }
        ("COMMIT", _) => QueryKind::Commit,
        ("ROLLBACK", "TO") | ("SAVEPOINT", _) | ("RELEASE", _) | ("XA", "END") => QueryKind::Ignore,
        ("ROLLBACK", _) => QueryKind::Rollback,
        ("XA", "COMMIT") => QueryKind::XaCommit,
        ("XA", "ROLLBACK") => QueryKind::XaRollback,
        ("INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "LOAD", _) => QueryKind::StatementDml,
        ("TRUNCATE", _) => {
            let name = if second == "TABLE" {
                words.next().unwrap_or("")
            } else {
                s.split_ascii_whitespace().nth(1).unwrap_or("")
            };
            QueryKind::Truncate(name.trim_end_matches(';').replace('`', ""))
        }
        _ => QueryKind::Ddl,
    }
}

fn strip_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("/*") {
            match rest.find("*/") {
                Some(end) => s = &rest[end + 2..],
                None => return "",
            }
        } else if s.starts_with("--") || s.starts_with('#') {
            match s.find('\n') {
                Some(end) => s = &s[end + 1..],
                None => return "",
            }
        } else {
            return s;
        }
    }
}

/// A QUERY event body: default database and statement text.
pub fn parse_query(data: &[u8]) -> Result<(String, String)> {
    let mut c = Cursor { buf: data };
    c.take(4 + 4)?; // thread id, exec time
    let db_len = usize::from(c.take(1)?[0]);
    c.take(2)?; // error code
    let status_len = le(c.take(2)?) as usize;
    c.take(status_len)?;
    let db = utf8(c.take(db_len)?);
    c.take(1)?;
    Ok((db, utf8(c.buf)))
}

/// A ROTATE event body: position and next file name. `header`: the event's 19 header bytes
/// ([`header_bytes`]), to tell a trailing CRC32 from the name's last bytes.
pub fn parse_rotate(data: &[u8], header: &[u8; 19]) -> Result<(u64, String)> {
    let mut c = Cursor { buf: data };
    let pos = le(c.take(8)?);
    // The fake ROTATE a dump starts with comes before the FORMAT_DESCRIPTION that says whether
    // events carry a CRC32, and servers differ (MariaDB: with it; MySQL 8+: the client library
    // already cut it): it is cut here only when the last 4 bytes are this event's CRC32.
    let name = match c.buf.len().checked_sub(4) {
        Some(n) if n > 0 && has_crc32(header, data) => &c.buf[..n],
        _ => c.buf,
    };
    Ok((pos, utf8(name)))
}

/// Whether `data` ends with the CRC32 of the event (`header`, then `data` without those bytes).
fn has_crc32(header: &[u8; 19], data: &[u8]) -> bool {
    let Some(body) = data.len().checked_sub(4) else {
        return false;
    };
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(&data[..body]);
    h.finalize().to_le_bytes() == data[body..]
}

/// The 19 header bytes of an event as the server wrote them (for its checksum).
pub fn header_bytes(h: &mysql_common::binlog::events::BinlogEventHeader) -> [u8; 19] {
    let mut b = [0u8; 19];
    b[0..4].copy_from_slice(&h.timestamp().to_le_bytes());
    b[4] = h.event_type_raw();
    b[5..9].copy_from_slice(&h.server_id().to_le_bytes());
    b[9..13].copy_from_slice(&h.event_size().to_le_bytes());
    b[13..17].copy_from_slice(&h.log_pos().to_le_bytes());
    b[17..19].copy_from_slice(&h.flags_raw().to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_classified() {
        assert_eq!(classify_query("BEGIN"), QueryKind::Begin);
        assert_eq!(classify_query("  /* x */ COMMIT"), QueryKind::Commit);
        assert_eq!(classify_query("XA COMMIT X'31',X'',1"), QueryKind::XaCommit);
        assert_eq!(
            xa_query_xid("XA START X'7879',X'',1"),
            Some(vec![1, 0, 0, 0, b'x', b'y'])
        );
        assert_eq!(
            xa_query_xid("XA COMMIT X'7879',X'7a',7 ONE PHASE"),
            Some(vec![7, 0, 0, 0, b'x', b'y', b'z'])
        );
        assert_eq!(xa_query_xid("XA END X'7879',X'',1").map(|_| ()), None);
        assert_eq!(xa_query_xid("XA COMMIT 'plain'"), None);
        assert_eq!(
            classify_query("insert into t values (1)"),
            QueryKind::StatementDml
        );
        assert_eq!(
            classify_query("TRUNCATE TABLE `app`.`t`"),
            QueryKind::Truncate("app.t".into())
        );
        assert_eq!(
            classify_query("truncate t"),
            QueryKind::Truncate("t".into())
        );
        assert_eq!(
            classify_query("ALTER TABLE t ADD COLUMN c int"),
            QueryKind::Ddl
        );
        assert_eq!(classify_query("ROLLBACK TO SAVEPOINT a"), QueryKind::Ignore);
    }

    #[test]
    fn gtid_state_round_trips() {
        let mut s = GtidState::parse("0-101-5, 1-7-9").unwrap();
        s.apply(&MariaGtid {
            domain: 0,
            server: 101,
            seq: 6,
            flags: 0,
            xid: None,
        });
        assert_eq!(s.to_string(), "0-101-6,1-7-9");
        assert!(GtidState::parse("0-x-1").is_err());
        assert_eq!(GtidState::parse("").unwrap().to_string(), "");
    }

    #[test]
    fn gtid_event_with_xa_id() {
        let mut b = 42u64.to_le_bytes().to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.push(MariaGtid::FL_PREPARED_XA);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[2, 0, b'x', b'y']);
        let g = MariaGtid::parse(&b, 9).unwrap();
        assert_eq!((g.domain, g.server, g.seq), (3, 9, 42));
        assert_eq!(g.xid.unwrap(), vec![1, 0, 0, 0, b'x', b'y']);
        assert!(MariaGtid::parse(&b[..10], 9).is_err());
    }

    /// Issue 12: the fake ROTATE's file name keeps all its characters whether or not the event
    /// still carries its CRC32 (MariaDB sends it with one; with MySQL 9.7 it arrives without, and
    /// cutting 4 bytes turned `binlog.000006` into `binlog.00`).
    #[test]
    fn fake_rotate_names_are_cut_only_by_a_real_checksum() {
        let mut data = 4u64.to_le_bytes().to_vec();
        data.extend_from_slice(b"binlog.000006");
        let mut header = [0u8; 19];
        header[4] = event::ROTATE;
        header[9..13].copy_from_slice(&(19 + data.len() as u32).to_le_bytes());
        assert_eq!(
            parse_rotate(&data, &header).unwrap(),
            (4, "binlog.000006".into())
        );
        let mut h = crc32fast::Hasher::new();
        h.update(&header);
        h.update(&data);
        let mut with_crc = data.clone();
        with_crc.extend_from_slice(&h.finalize().to_le_bytes());
        assert_eq!(
            parse_rotate(&with_crc, &header).unwrap(),
            (4, "binlog.000006".into())
        );
    }

    #[test]
    fn parsers_never_panic_on_garbage() {
        let mut seed = 3u64;
        for len in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            let _ = parse_query(&buf);
            let _ = parse_rotate(&buf, &[0u8; 19]);
            let _ = MariaGtid::parse(&buf, 1);
            let _ = xa_prepare_xid(&buf);
            let _ = parse_gtid_list(&buf);
            if let Ok(tm) = parse_table_map(&buf)
                && let Ok(plan) = TablePlan::build(&tm, false)
            {
                let (mut ops, mut values) = (Vec::new(), Vec::new());
                let _ = decode_rows(&plan, &buf, Op::Update, true, &mut ops, &mut values);
            }
        }
    }
}
