//! MySQL/MariaDB types: how each maps onto [`ColumnType`], and how values are decoded — from
//! the binlog's binary row format (stream) and from the text protocol (snapshot) — into the
//! same [`Value`]s. Both paths agree value for value; `docs/types.md` has the table.
//!
//! Decoders never panic: a short or malformed buffer is a `Data` error naming the column.

use std::sync::Arc;

use crate::change::{ColumnType, Value, parse_decimal};
use crate::error::{Error, Result};

/// Binlog column type codes (`enum_field_types`).
pub mod code {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

/// The `binary` pseudo-charset: the column holds bytes, not text.
pub const BINARY_CHARSET: u16 = 63;

/// How text bytes are turned into a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb4, utf8mb3, ascii and anything else: UTF-8 (invalid sequences replaced).
    Utf8,
    /// latin1 (cp1252 in MySQL; bytes 0x80-0x9F taken as Latin-1 here).
    Latin1,
    /// Bytes, not text.
    Binary,
}

impl Charset {
    /// From a collation id (the binlog's charset metadata).
    pub fn from_collation(id: u16) -> Charset {
        match id {
            BINARY_CHARSET => Charset::Binary,
            5 | 8 | 15 | 31 | 47 | 48 | 49 | 94 => Charset::Latin1,
            _ => Charset::Utf8,
        }
    }
}

/// How one column's binary value is read from a rows event: fixed when the TABLE_MAP is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoder {
    Int {
        bytes: u8,
        unsigned: bool,
    },
    Float,
    Double,
    /// DECIMAL(p,s) with p <= 38 (as an unscaled integer).
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// DECIMAL(p,s) with p > 38: as text.
    DecimalText {
        precision: u8,
        scale: u8,
    },
    Year,
    Date,
    Time2 {
        fsp: u8,
    },
    Datetime2 {
        fsp: u8,
    },
    Timestamp2 {
        fsp: u8,
    },
    /// Pre-5.6 temporal formats (tables created by old servers and never rebuilt).
    OldTime,
    OldDatetime,
    OldTimestamp,
    /// A value behind a little-endian length of `len_bytes` bytes: VARCHAR, CHAR, BLOB/TEXT.
    Var {
        len_bytes: u8,
        charset: Charset,
        /// BINARY(n): the binlog drops trailing 0x00 bytes, MySQL pads them back to n.
        pad_to: u16,
    },
    /// BIT(n): big-endian in `bytes` bytes.
    Bit {
        bytes: u8,
    },
    Enum {
        bytes: u8,
        names: Arc<Vec<String>>,
    },
    Set {
        bytes: u8,
        names: Arc<Vec<String>>,
    },
    /// MySQL's binary JSON (MariaDB's JSON is LONGTEXT and arrives as `Var`).
    Json,
}

/// The logical type of a decoder's values.
pub fn column_type(d: &Decoder, bit_width: u32) -> ColumnType {
    match d {
        Decoder::Int { bytes, unsigned } => match (bytes, unsigned) {
            (1, _) | (2, false) => ColumnType::Int16,
            (2, true) | (3, _) | (4, false) => ColumnType::Int32,
            (4, true) | (8, false) => ColumnType::Int64,
            _ => ColumnType::Decimal {
                precision: 20,
                scale: 0,
            },
        },
        Decoder::Float => ColumnType::Float32,
        Decoder::Double => ColumnType::Float64,
        Decoder::Decimal { precision, scale } => ColumnType::Decimal {
            precision: *precision,
            scale: *scale as i8,
        },
        Decoder::DecimalText { .. } => ColumnType::Text,
        Decoder::Year => ColumnType::Int16,
        Decoder::Date => ColumnType::Date,
        Decoder::Time2 { .. } | Decoder::OldTime => ColumnType::Text,
        Decoder::Datetime2 { .. } | Decoder::OldDatetime => ColumnType::Timestamp,
        Decoder::Timestamp2 { .. } | Decoder::OldTimestamp => ColumnType::TimestampTz,
        Decoder::Var {
            charset: Charset::Binary,
            ..
        } => ColumnType::Bytes,
        Decoder::Var { .. } | Decoder::Enum { .. } | Decoder::Set { .. } | Decoder::Json => {
            ColumnType::Text
        }
        Decoder::Bit { .. } if bit_width >= 64 => ColumnType::Decimal {
            precision: 20,
            scale: 0,
        },
        Decoder::Bit { .. } => ColumnType::Int64,
    }
}

/// Reads little cursors over a rows-event buffer without panicking.
pub struct Cursor<'a> {
    pub buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::data(format!(
                "row event ends early: needed {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    #[inline]
    fn le(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    }
    #[inline]
    fn be(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        Ok(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    }
}

/// Decodes one non-NULL binary value.
pub fn decode(d: &Decoder, ty: &ColumnType, c: &mut Cursor<'_>) -> Result<Value> {
    Ok(match d {
        Decoder::Int { bytes, unsigned } => {
            let n = usize::from(*bytes);
            let raw = c.le(n)?;
            let v: i128 = if *unsigned {
                i128::from(raw)
            } else {
                let shift = 64 - 8 * n as u32;
                i128::from(((raw << shift) as i64) >> shift)
            };
            int_value(ty, v)
        }
        Decoder::Float => Value::F32(f32::from_bits(c.le(4)? as u32)),
        Decoder::Double => Value::F64(f64::from_bits(c.le(8)?)),
        Decoder::Decimal { precision, scale } => {
            let mut v: i128 = 0;
            let neg = read_decimal_groups(c, *precision, *scale, |group, width| {
                v = v * 10i128.pow(width) + i128::from(group);
            })?;
            Value::Decimal(if neg { -v } else { v })
        }
        Decoder::DecimalText { precision, scale } => {
            let (neg, digits) = read_decimal_digits(c, *precision, *scale)?;
            Value::Text(render_decimal(neg, &digits, usize::from(*scale)))
        }
        Decoder::Year => {
            let y = c.le(1)?;
            Value::I16(if y == 0 { 0 } else { 1900 + y as i16 })
        }
        Decoder::Date => {
            let v = c.le(3)?;
            date_value((v >> 9) as i32, ((v >> 5) & 15) as u32, (v & 31) as u32)
        }
        Decoder::Time2 { fsp } => {
            // MySQL's packed TIME: (hms << 24) + micros, negated as a whole for negative values;
            // with 1-4 fraction digits a negative value borrows one from the integer part.
            let packed = match frac_bytes(*fsp) {
                0 => (c.be(3)? as i64 - 0x80_0000) << 24,
                n @ (1 | 2) => {
                    let mut ip = c.be(3)? as i64 - 0x80_0000;
                    let mut f = c.be(n)? as i64;
                    if ip < 0 && f > 0 {
                        ip += 1;
                        f -= 1 << (8 * n);
                    }
                    (ip << 24) + f * if n == 1 { 10_000 } else { 100 }
                }
                _ => c.be(6)? as i64 - 0x8000_0000_0000,
            };
            let a = packed.unsigned_abs();
            let (hms, micros) = (a >> 24, a % (1 << 24));
            let (h, m, s) = ((hms >> 12) % 1024, (hms >> 6) % 64, hms % 64);
            Value::Text(render_time(packed < 0, h, m, s, micros, *fsp))
        }
        Decoder::Datetime2 { fsp } => {
            let int_part = c.be(5)? as i64 - 0x80_0000_0000;
            let frac = read_frac_unsigned(c, *fsp)?;
            let ymd = int_part >> 17;
            let ym = ymd >> 5;
            let hms = int_part & 0x1_FFFF;
            datetime_value(
                (ym / 13) as i32,
                (ym % 13) as u32,
                (ymd & 31) as u32,
                (hms >> 12) as u32,
                ((hms >> 6) & 63) as u32,
                (hms & 63) as u32,
                frac,
            )
        }
        Decoder::Timestamp2 { fsp } => {
            let secs = c.be(4)? as i64;
            let frac = read_frac_unsigned(c, *fsp)?;
            if secs == 0 && frac == 0 {
                Value::Unavailable // '0000-00-00 00:00:00'
            } else {
                Value::Timestamp(secs * 1_000_000 + frac)
            }
        }
        Decoder::OldTime => {
            let v = c.le(3)?;
            Value::Text(render_time(
                false,
                v / 10000,
                (v % 10000) / 100,
                v % 100,
                0,
                0,
            ))
        }
        Decoder::OldDatetime => {
            let v = c.le(8)?;
            let (d, t) = (v / 1_000_000, v % 1_000_000);
            datetime_value(
                (d / 10000) as i32,
                ((d % 10000) / 100) as u32,
                (d % 100) as u32,
                (t / 10000) as u32,
                ((t % 10000) / 100) as u32,
                (t % 100) as u32,
                0,
            )
        }
        Decoder::OldTimestamp => {
            let secs = c.le(4)? as i64;
            if secs == 0 {
                Value::Unavailable
            } else {
                Value::Timestamp(secs * 1_000_000)
            }
        }
        Decoder::Var {
            len_bytes,
            charset,
            pad_to,
        } => {
            let n = c.le(usize::from(*len_bytes))? as usize;
            let v = bytes_value(c.take(n)?, *charset);
            match v {
                Value::Bytes(mut b) if b.len() < usize::from(*pad_to) => {
                    b.resize(usize::from(*pad_to), 0);
                    Value::Bytes(b)
                }
                v => v,
            }
        }
        Decoder::Bit { bytes } => int_value(ty, i128::from(c.be(usize::from(*bytes))?)),
        Decoder::Enum { bytes, names } => {
            let i = c.le(usize::from(*bytes))? as usize;
            match i {
                0 => Value::Text(String::new()), // the invalid-value enum ''
                i => match names.get(i - 1) {
                    Some(n) => Value::Text(n.clone()),
                    None => Value::Unavailable,
                },
            }
        }
        Decoder::Set { bytes, names } => {
            let mask = c.le(usize::from(*bytes))?;
            let mut s = String::new();
            for (i, n) in names.iter().enumerate().take(64) {
                if mask & (1 << i) != 0 {
                    if !s.is_empty() {
                        s.push(',');
                    }
                    s.push_str(n);
                }
            }
            Value::Text(s)
        }
        Decoder::Json => {
            let n = c.le(4)? as usize;
            let raw = c.take(n)?;
            let mut buf = mysql_common::io::ParseBuf(raw);
            match <mysql_common::binlog::jsonb::Value<'_> as mysql_common::proto::MyDeserialize>::deserialize((), &mut buf)
                .ok()
                .and_then(|j| j.parse().ok())
            {
                Some(dom) => {
                    let mut text = String::with_capacity(raw.len());
                    json_text(&dom, &mut text);
                    Value::Text(text)
                }
                None => Value::Unavailable,
            }
        }
    })
}

/// MySQL binary JSON as compact JSON text, with MySQL's own text for the scalars JSON lacks
/// (what `CAST(j AS CHAR)` prints, up to whitespace and key order): a DECIMAL as a number
/// with its exact digits, DATE/TIME/DATETIME/TIMESTAMP as quoted strings with microseconds,
/// any other opaque value as `"base64:type<N>:<data>"`.
fn json_text(dom: &mysql_common::binlog::jsonb::JsonDom, out: &mut String) {
    use mysql_common::binlog::jsonb::{JsonContainer, JsonDom, JsonNumber, JsonScalar};
    use std::fmt::Write;
    let quote = |s: &str, out: &mut String| {
        if let Ok(q) = serde_json::to_string(s) {
            out.push_str(&q);
        }
    };
    match dom {
        JsonDom::Container(JsonContainer::Array(items)) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_text(v, out);
            }
            out.push(']');
        }
        JsonDom::Container(JsonContainer::Object(map)) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                quote(k, out);
                out.push(':');
                json_text(v, out);
            }
            out.push('}');
        }
        JsonDom::Scalar(JsonScalar::Null) => out.push_str("null"),
        JsonDom::Scalar(JsonScalar::Boolean(b)) => out.push_str(if *b { "true" } else { "false" }),
        JsonDom::Scalar(JsonScalar::String(s)) => quote(s, out),
        JsonDom::Scalar(JsonScalar::Number(JsonNumber::Int(n))) => {
            let _ = write!(out, "{n}");
        }
        JsonDom::Scalar(JsonScalar::Number(JsonNumber::Uint(n))) => {
            let _ = write!(out, "{n}");
        }
        JsonDom::Scalar(JsonScalar::Number(JsonNumber::Double(x))) => {
            match serde_json::Number::from_f64(*x) {
                Some(n) => {
                    let _ = write!(out, "{n}");
                }
                None => out.push_str("null"),
            }
        }
        JsonDom::Scalar(JsonScalar::Number(JsonNumber::Decimal(d))) => {
            let _ = write!(out, "{d}");
        }
        JsonDom::Scalar(JsonScalar::DateTime(t)) => quote(&format!("{t:.6}"), out),
        JsonDom::Scalar(JsonScalar::Opaque(o)) => quote(&o.to_string(), out),
    }
}

/// An integer in the column's (widened) type.
fn int_value(ty: &ColumnType, v: i128) -> Value {
    match ty {
        ColumnType::Int16 => i16::try_from(v).map_or(Value::Unavailable, Value::I16),
        ColumnType::Int32 => i32::try_from(v).map_or(Value::Unavailable, Value::I32),
        ColumnType::Int64 => i64::try_from(v).map_or(Value::Unavailable, Value::I64),
        ColumnType::Decimal { .. } => Value::Decimal(v),
        _ => Value::Unavailable,
    }
}

fn bytes_value(b: &[u8], charset: Charset) -> Value {
    match charset {
        Charset::Binary => Value::Bytes(b.to_vec()),
        Charset::Latin1 => Value::Text(b.iter().map(|&x| latin1_char(x)).collect()),
        Charset::Utf8 => Value::Text(match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => String::from_utf8_lossy(b).into_owned(),
        }),
    }
}

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// Reads MySQL's packed DECIMAL: returns the sign and the digits (integer digits then exactly
/// `scale` fraction digits, leading zeros kept).
fn read_decimal_digits(c: &mut Cursor<'_>, precision: u8, scale: u8) -> Result<(bool, String)> {
    let mut digits = String::with_capacity(usize::from(precision));
    let neg = read_decimal_groups(c, precision, scale, |group, width| {
        digits.push_str(&format!("{group:0w$}", w = width as usize));
    })?;
    Ok((neg, digits))
}

/// Walks MySQL's packed DECIMAL (precision <= 65): calls `each(group, width)` for its digit
/// groups, most significant first (`width` decimal digits each, integer part then `scale`
/// fraction digits). Returns whether the value is negative. No allocation.
fn read_decimal_groups(
    c: &mut Cursor<'_>,
    precision: u8,
    scale: u8,
    mut each: impl FnMut(u64, u32),
) -> Result<bool> {
    let (p, s) = (usize::from(precision), usize::from(scale));
    if s > p || p > 65 {
        return Err(Error::data(format!("DECIMAL({p},{s}) is not valid")));
    }
    let intg = p - s;
    let (intg0, intg0x, frac0, frac0x) = (intg / 9, intg % 9, s / 9, s % 9);
    let size = intg0 * 4 + DIG2BYTES[intg0x] + frac0 * 4 + DIG2BYTES[frac0x];
    let raw = c.take(size)?;
    let neg = raw.first().is_some_and(|b| b & 0x80 == 0);
    let mask: u8 = if neg { 0xff } else { 0 };
    let mut at = 0usize;
    let mut group = |bytes: usize, width: usize| -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let mut v = 0u64;
        for (i, b) in raw[at..at + bytes].iter().enumerate() {
            let b = if at + i == 0 { b ^ 0x80 } else { *b };
            v = (v << 8) | u64::from(b ^ mask);
        }
        at += bytes;
        if v >= 10u64.pow(width as u32) {
            return Err(Error::data("DECIMAL value has an invalid digit group"));
        }
        each(v, width as u32);
        Ok(())
    };
    group(DIG2BYTES[intg0x], intg0x)?;
    for _ in 0..intg0 {
        group(4, 9)?;
    }
    for _ in 0..frac0 {
        group(4, 9)?;
    }
    group(DIG2BYTES[frac0x], frac0x)?;
    Ok(neg)
}

fn render_decimal(neg: bool, digits: &str, scale: usize) -> String {
    let (int, frac) = digits.split_at(digits.len() - scale.min(digits.len()));
    let int = int.trim_start_matches('0');
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    s.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        s.push('.');
        s.push_str(frac);
    }
    s
}

fn frac_bytes(fsp: u8) -> usize {
    usize::from(fsp).div_ceil(2)
}

/// Fractional seconds of DATETIME2/TIMESTAMP2, in microseconds.
fn read_frac_unsigned(c: &mut Cursor<'_>, fsp: u8) -> Result<i64> {
    let n = frac_bytes(fsp);
    let v = c.be(n)? as i64;
    Ok(match n {
        0 => 0,
        1 => v * 10_000,
        2 => v * 100,
        _ => v,
    })
}

/// `[-]HH:MM:SS[.f]` with `fsp` fraction digits, as MySQL prints TIME.
fn render_time(neg: bool, h: u64, m: u64, s: u64, micros: u64, fsp: u8) -> String {
    let mut out = format!("{}{h:02}:{m:02}:{s:02}", if neg { "-" } else { "" });
    if fsp > 0 {
        let f = format!("{micros:06}");
        out.push('.');
        out.push_str(&f[..usize::from(fsp.min(6))]);
    }
    out
}

/// MySQL's latin1 is Windows-1252: 0x80-0x9F are mostly printable (€, ‘, ’, …), as the
/// server's own conversion to utf8mb4 renders them.
fn latin1_char(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

/// Days since 1970-01-01, or `Unavailable` for MySQL's zero and partial dates.
fn date_value(y: i32, m: u32, d: u32) -> Value {
    match chrono::NaiveDate::from_ymd_opt(y, m, d) {
        Some(date) if y > 0 => Value::Date(
            (date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days()
                as i32,
        ),
        _ => Value::Unavailable,
    }
}

fn datetime_value(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, micros: i64) -> Value {
    match chrono::NaiveDate::from_ymd_opt(y, mo, d).and_then(|dt| dt.and_hms_opt(h, mi, s)) {
        Some(dt) if y > 0 => Value::Timestamp(dt.and_utc().timestamp() * 1_000_000 + micros),
        _ => Value::Unavailable,
    }
}

/// The column type of an `information_schema.COLUMNS` row (snapshot schema). Agrees with the
/// binlog mapping ([`column_type`] of the TABLE_MAP decoder) for every type.
pub fn info_schema_type(data_type: &str, column_type: &str, charset: Option<&str>) -> ColumnType {
    let unsigned = column_type.contains("unsigned");
    let ty = data_type.to_ascii_lowercase();
    let (p, s) = paren_args(column_type);
    match ty.as_str() {
        "tinyint" => ColumnType::Int16,
        "smallint" if unsigned => ColumnType::Int32,
        "smallint" => ColumnType::Int16,
        "mediumint" => ColumnType::Int32,
        "int" | "integer" if unsigned => ColumnType::Int64,
        "int" | "integer" => ColumnType::Int32,
        "bigint" if unsigned => ColumnType::Decimal {
            precision: 20,
            scale: 0,
        },
        "bigint" => ColumnType::Int64,
        "decimal" | "numeric" => {
            let precision = p.unwrap_or(10);
            if precision > 38 {
                ColumnType::Text
            } else {
                ColumnType::Decimal {
                    precision: precision as u8,
                    scale: s.unwrap_or(0) as i8,
                }
            }
        }
        "float" => ColumnType::Float32,
        "double" | "real" => ColumnType::Float64,
        "bit" if p.unwrap_or(1) >= 64 => ColumnType::Decimal {
            precision: 20,
            scale: 0,
        },
        "bit" => ColumnType::Int64,
        "year" => ColumnType::Int16,
        "date" => ColumnType::Date,
        "datetime" => ColumnType::Timestamp,
        "timestamp" => ColumnType::TimestampTz,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
        | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => ColumnType::Bytes,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext"
            if charset.is_none_or(|c| c == "binary") && charset.is_some() =>
        {
            ColumnType::Bytes
        }
        _ => ColumnType::Text, // char, varchar, text, enum, set, json, time, unknown
    }
}

/// `(p, s)` from a column type like `decimal(12,2)` or `bit(8)`.
fn paren_args(column_type: &str) -> (Option<u32>, Option<u32>) {
    let Some(inner) = column_type
        .split_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(i, _)| i)
    else {
        return (None, None);
    };
    let mut it = inner.split(',').map(|x| x.trim().parse::<u32>().ok());
    (it.next().flatten(), it.next().flatten())
}

/// Parses a value as the text protocol sends it (connection in UTC, utf8mb4) into the same
/// [`Value`] the binlog decoder yields. `data_type` is `information_schema.COLUMNS.DATA_TYPE`.
pub fn parse_text(ty: &ColumnType, data_type: &str, raw: &[u8]) -> Result<Value> {
    let text = || std::str::from_utf8(raw).map_err(|_| Error::data("value is not UTF-8"));
    let bad = |what: &str| {
        Error::data(format!(
            "cannot read {what} value {:?}",
            String::from_utf8_lossy(raw)
        ))
    };
    Ok(match ty {
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64
            if data_type.eq_ignore_ascii_case("bit") =>
        {
            int_value(ty, i128::from(be_uint(raw)))
        }
        ColumnType::Decimal { scale: 0, .. } if data_type.eq_ignore_ascii_case("bit") => {
            Value::Decimal(i128::from(be_uint(raw)))
        }
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => {
            let v: i128 = text()?.trim().parse().map_err(|_| bad("integer"))?;
            int_value(ty, v)
        }
        ColumnType::Decimal { scale, .. } => parse_decimal(text()?, *scale)
            .map_or_else(|| Err(bad("decimal")), |v| Ok(Value::Decimal(v)))?,
        ColumnType::Float32 => Value::F32(text()?.trim().parse().map_err(|_| bad("float"))?),
        ColumnType::Float64 => Value::F64(text()?.trim().parse().map_err(|_| bad("double"))?),
        ColumnType::Date => {
            let t = text()?;
            match chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
                Ok(d) if !t.starts_with("0000") => date_value(
                    chrono::Datelike::year(&d),
                    chrono::Datelike::month(&d),
                    chrono::Datelike::day(&d),
                ),
                _ => Value::Unavailable,
            }
        }
        ColumnType::Timestamp | ColumnType::TimestampTz => {
            let t = text()?;
            match chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f") {
                Ok(dt) if !t.starts_with("0000") => {
                    Value::Timestamp(dt.and_utc().timestamp_micros())
                }
                _ => Value::Unavailable,
            }
        }
        ColumnType::Bytes => Value::Bytes(raw.to_vec()),
        ColumnType::Text => Value::Text(match std::str::from_utf8(raw) {
            Ok(s) => s.to_string(),
            Err(_) => String::from_utf8_lossy(raw).into_owned(),
        }),
        ColumnType::Bool | ColumnType::List(_) => return Err(bad("unexpected")),
    })
}

fn be_uint(raw: &[u8]) -> u64 {
    raw.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(d: &Decoder, bytes: &[u8]) -> Value {
        let ty = column_type(d, 8);
        let mut c = Cursor { buf: bytes };
        let v = decode(d, &ty, &mut c).unwrap();
        assert!(c.buf.is_empty(), "left over: {:?}", c.buf);
        v
    }

    #[test]
    fn integers_widen_and_keep_sign() {
        let i = |bytes, unsigned| Decoder::Int { bytes, unsigned };
        assert_eq!(dec(&i(1, false), &[0xff]), Value::I16(-1));
        assert_eq!(dec(&i(1, true), &[0xff]), Value::I16(255));
        assert_eq!(dec(&i(2, true), &[0xff, 0xff]), Value::I32(65535));
        assert_eq!(dec(&i(3, false), &[0xff, 0xff, 0xff]), Value::I32(-1));
        assert_eq!(dec(&i(4, true), &[0xff; 4]), Value::I64(4_294_967_295));
        assert_eq!(
            dec(&i(8, true), &[0xff; 8]),
            Value::Decimal(18_446_744_073_709_551_615)
        );
        assert_eq!(
            dec(
                &i(8, false),
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
            ),
            Value::I64(-2)
        );
    }

    #[test]
    fn decimals_in_mysql_packed_form() {
        // DECIMAL(10,2) 1234.56 and -1234.56 (from MySQL's reference encoding).
        let d = Decoder::Decimal {
            precision: 10,
            scale: 2,
        };
        assert_eq!(
            dec(&d, &[0x80, 0x00, 0x04, 0xd2, 0x38]),
            Value::Decimal(123_456)
        );
        assert_eq!(
            dec(&d, &[0x7f, 0xff, 0xfb, 0x2d, 0xc7]),
            Value::Decimal(-123_456)
        );
        assert_eq!(parse_decimal("-1234.56", 2), Some(-123_456));
        assert_eq!(parse_decimal("7", 2), Some(700));
        assert_eq!(parse_decimal("1.234", 2), None);
        assert_eq!(render_decimal(true, "00012345", 2), "-123.45");
        assert_eq!(render_decimal(false, "000", 3), "0.000");
    }

    #[test]
    fn temporal_values() {
        // DATE 2024-02-29: 2024*512 + 2*32 + 29.
        let v = 2024 * 512 + 2 * 32 + 29u32;
        assert_eq!(
            dec(&Decoder::Date, &v.to_le_bytes()[..3]),
            Value::Date(19782)
        );
        assert_eq!(dec(&Decoder::Date, &[0, 0, 0]), Value::Unavailable);
        // DATETIME2(0) 2024-02-29 13:14:15.
        let ym = 2024 * 13 + 2i64;
        let packed = ((ym << 5 | 29) << 17) | (13 << 12 | 14 << 6 | 15);
        let raw = (packed + 0x80_0000_0000).to_be_bytes();
        assert_eq!(
            dec(&Decoder::Datetime2 { fsp: 0 }, &raw[3..]),
            Value::Timestamp(1_709_212_455_000_000)
        );
        // TIMESTAMP2(3) 1.5 s after the epoch.
        assert_eq!(
            dec(&Decoder::Timestamp2 { fsp: 3 }, &[0, 0, 0, 1, 0x13, 0x88]),
            Value::Timestamp(1_500_000)
        );
        // TIME2(0) -838:59:59 and 12:34:56.
        let t = |h: i64, m: i64, s: i64| h << 12 | m << 6 | s;
        let raw = (0x80_0000 - t(838, 59, 59)).to_be_bytes();
        assert_eq!(
            dec(&Decoder::Time2 { fsp: 0 }, &raw[5..]),
            Value::Text("-838:59:59".into())
        );
        let raw = (0x80_0000 + t(12, 34, 56)).to_be_bytes();
        let mut b = raw[5..].to_vec();
        b.extend_from_slice(&[0x00, 0x00, 0x07]); // fsp 6: 7 µs
        assert_eq!(
            dec(&Decoder::Time2 { fsp: 6 }, &b),
            Value::Text("12:34:56.000007".into())
        );
    }

    #[test]
    fn strings_enums_sets_bits() {
        let utf8 = Decoder::Var {
            len_bytes: 1,
            charset: Charset::Utf8,
            pad_to: 0,
        };
        assert_eq!(dec(&utf8, b"\x03h\xc3\xa9"), Value::Text("hé".into()));
        let latin1 = Decoder::Var {
            len_bytes: 2,
            charset: Charset::Latin1,
            pad_to: 0,
        };
        assert_eq!(dec(&latin1, b"\x02\x00h\xe9"), Value::Text("hé".into()));
        assert_eq!(dec(&latin1, b"\x02\x00\x80\x93"), Value::Text("€“".into()));
        let names = Arc::new(vec!["a".to_string(), "b".into(), "c".into()]);
        let e = Decoder::Enum {
            bytes: 1,
            names: names.clone(),
        };
        assert_eq!(dec(&e, &[2]), Value::Text("b".into()));
        assert_eq!(dec(&e, &[9]), Value::Unavailable);
        let s = Decoder::Set { bytes: 1, names };
        assert_eq!(dec(&s, &[0b101]), Value::Text("a,c".into()));
        assert_eq!(dec(&Decoder::Bit { bytes: 2 }, &[1, 2]), Value::I64(258));
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let decoders = [
            Decoder::Int {
                bytes: 8,
                unsigned: false,
            },
            Decoder::Decimal {
                precision: 38,
                scale: 10,
            },
            Decoder::DecimalText {
                precision: 65,
                scale: 30,
            },
            Decoder::Time2 { fsp: 6 },
            Decoder::Datetime2 { fsp: 6 },
            Decoder::Timestamp2 { fsp: 6 },
            Decoder::Var {
                len_bytes: 4,
                charset: Charset::Utf8,
                pad_to: 0,
            },
            Decoder::Json,
            Decoder::Date,
        ];
        let mut seed = 7u64;
        for d in &decoders {
            let ty = column_type(d, 8);
            for len in 0..40 {
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (seed >> 33) as u8
                    })
                    .collect();
                let _ = decode(d, &ty, &mut Cursor { buf: &buf });
            }
        }
    }

    #[test]
    fn snapshot_text_agrees_with_the_mapping() {
        assert_eq!(
            info_schema_type("bigint", "bigint(20) unsigned", None),
            ColumnType::Decimal {
                precision: 20,
                scale: 0
            }
        );
        assert_eq!(
            info_schema_type("int", "int(10) unsigned", None),
            ColumnType::Int64
        );
        assert_eq!(
            info_schema_type("varbinary", "varbinary(4)", None),
            ColumnType::Bytes
        );
        assert_eq!(
            info_schema_type("longtext", "longtext", Some("utf8mb4")),
            ColumnType::Text
        );
        let ts = parse_text(
            &ColumnType::TimestampTz,
            "timestamp",
            b"1970-01-01 00:00:01.500000",
        )
        .unwrap();
        assert_eq!(ts, Value::Timestamp(1_500_000));
        assert_eq!(
            parse_text(&ColumnType::Int64, "bit", &[1, 2]).unwrap(),
            Value::I64(258)
        );
        assert_eq!(
            parse_text(&ColumnType::Date, "date", b"0000-00-00").unwrap(),
            Value::Unavailable
        );
    }
}
