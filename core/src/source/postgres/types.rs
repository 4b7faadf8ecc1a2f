//! PostgreSQL type mapping ([`map_type`]) and parsing of values in PostgreSQL's text output
//! format ([`parse_text`]). The full table is in `docs/types.md`.
//!
//! Text formats assume the session settings the walsender and the snapshot copy pin:
//! `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3`, `IntervalStyle=iso_8601`,
//! `bytea_output=hex` (the `escape` bytea format is accepted too).

use tokio_postgres::types::{Kind, Type};
use tokio_postgres::{Client, Row};

use crate::change::{ColumnType, Value};
use crate::error::{Error, ErrorKind, Result};

/// What the catalog says about a non-built-in type (enums, domains, arrays of those, extension types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTypeInfo {
    pub oid: u32,
    pub name: String,
    pub kind: PgTypeKind,
}

/// The kind of a non-built-in type, as far as the mapping cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTypeKind {
    Enum,
    /// A domain: mapped as its base type (`base_typmod` applies when the column has none).
    Domain {
        base_oid: u32,
        base_typmod: i32,
    },
    /// A true array type (`typelem <> 0 and typlen = -1`).
    Array {
        elem_oid: u32,
    },
    /// Anything else (extension base types such as citext, composites, ranges): mapped to Text.
    Other,
}

/// Fetches [`PgTypeInfo`] rows for the OIDs in `$1` (an `oid[]`); turn them into values with
/// [`type_infos_from_rows`]. OIDs that do not exist are simply absent from the result.
pub const TYPE_INFO_SQL: &str = "select t.oid, t.typname::text as typname, t.typtype::text as typtype, \
     t.typbasetype, t.typtypmod, t.typelem, (t.typelem <> 0 and t.typlen = -1) as is_array \
     from pg_catalog.pg_type t where t.oid = any($1)";

/// Turns one row of [`TYPE_INFO_SQL`] into a [`PgTypeInfo`].
pub fn type_info_from_row(row: &Row) -> Result<PgTypeInfo> {
    let bad = |e: tokio_postgres::Error| {
        Error::with_source(ErrorKind::Fatal, "unexpected pg_type row shape", e)
    };
    let oid: u32 = row.try_get("oid").map_err(bad)?;
    let name: String = row.try_get("typname").map_err(bad)?;
    let typtype: String = row.try_get("typtype").map_err(bad)?;
    let base_oid: u32 = row.try_get("typbasetype").map_err(bad)?;
    let base_typmod: i32 = row.try_get("typtypmod").map_err(bad)?;
    let elem_oid: u32 = row.try_get("typelem").map_err(bad)?;
    let is_array: bool = row.try_get("is_array").map_err(bad)?;
    let kind = match typtype.as_str() {
        "e" => PgTypeKind::Enum,
        "d" => PgTypeKind::Domain {
            base_oid,
            base_typmod,
        },
        _ if is_array => PgTypeKind::Array { elem_oid },
        _ => PgTypeKind::Other,
    };
    Ok(PgTypeInfo { oid, name, kind })
}

/// Turns the rows of [`TYPE_INFO_SQL`] into [`PgTypeInfo`]s.
pub fn type_infos_from_rows(rows: &[Row]) -> Result<Vec<PgTypeInfo>> {
    rows.iter().map(type_info_from_row).collect()
}

/// Runs [`TYPE_INFO_SQL`] for `oids`.
pub async fn lookup_types(client: &Client, oids: &[u32]) -> Result<Vec<PgTypeInfo>> {
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client.query(TYPE_INFO_SQL, &[&oids]).await?;
    type_infos_from_rows(&rows)
}

/// How deep domains/arrays may nest before the mapping gives up (guards against a lookup cycle).
const MAX_TYPE_DEPTH: u32 = 8;

/// The largest decimal precision that maps to [`ColumnType::Decimal`] (Parquet/Athena limit).
const MAX_DECIMAL_PRECISION: u32 = 38;

/// Maps a column's type OID + typmod to tidemark's [`ColumnType`] and a display name (e.g.
/// `numeric(12,2)`, `varchar(20)`, `int4[]`, `mood (enum)`).
///
/// Built-in types are resolved without `lookup`; `lookup` resolves the others (the caller
/// queries `pg_type`, see [`lookup_types`]). Unknown OIDs map to Text named `unknown type <oid>`.
/// For arrays the typmod applies to the element (`numeric(10,2)[]`); for domains the column's
/// typmod, or the domain's own when the column has none.
pub fn map_type(
    oid: u32,
    typmod: i32,
    lookup: &dyn Fn(u32) -> Option<PgTypeInfo>,
) -> (ColumnType, String) {
    let m = map_inner(oid, typmod, lookup, 0);
    let display = match m.note {
        Some(note) => format!("{} ({note})", m.name),
        None => m.name,
    };
    (m.ty, display)
}

struct Mapped {
    ty: ColumnType,
    name: String,
    /// Shown in parentheses after the name (and after `[]` of an array): "enum", "domain over int4".
    note: Option<String>,
}

impl Mapped {
    fn new(ty: ColumnType, name: impl Into<String>) -> Self {
        Mapped {
            ty,
            name: name.into(),
            note: None,
        }
    }
    fn text(name: impl Into<String>) -> Self {
        Mapped::new(ColumnType::Text, name)
    }
}

/// `name(n)` when the typmod carries a length/precision, else `name`.
fn with_modifier(name: &str, n: Option<i32>) -> String {
    match n {
        Some(n) => format!("{name}({n})"),
        None => name.to_owned(),
    }
}

fn map_inner(
    oid: u32,
    typmod: i32,
    lookup: &dyn Fn(u32) -> Option<PgTypeInfo>,
    depth: u32,
) -> Mapped {
    if depth > MAX_TYPE_DEPTH {
        return Mapped::text(format!("unknown type {oid}"));
    }
    // varchar/bpchar/bit: typmod is the length (+4 for varchar/bpchar); time/timestamp: precision.
    let len4 = (typmod >= 4).then(|| typmod - 4);
    let plain = (typmod >= 0).then_some(typmod);
    match oid {
        16 => Mapped::new(ColumnType::Bool, "bool"),
        17 => Mapped::new(ColumnType::Bytes, "bytea"),
        18 => Mapped::text("\"char\""),
        19 => Mapped::text("name"),
        20 => Mapped::new(ColumnType::Int64, "int8"),
        21 => Mapped::new(ColumnType::Int16, "int2"),
        23 => Mapped::new(ColumnType::Int32, "int4"),
        25 => Mapped::text("text"),
        26 => Mapped::new(ColumnType::Int64, "oid"),
        700 => Mapped::new(ColumnType::Float32, "float4"),
        701 => Mapped::new(ColumnType::Float64, "float8"),
        1700 => map_numeric(typmod),
        1042 => Mapped::text(with_modifier("bpchar", len4)),
        1043 => Mapped::text(with_modifier("varchar", len4)),
        1560 => Mapped::text(with_modifier("bit", plain)),
        1562 => Mapped::text(with_modifier("varbit", plain)),
        1082 => Mapped::new(ColumnType::Date, "date"),
        1083 => Mapped::text(with_modifier("time", plain)),
        1266 => Mapped::text(with_modifier("timetz", plain)),
        1114 => Mapped::new(ColumnType::Timestamp, with_modifier("timestamp", plain)),
        1184 => Mapped::new(ColumnType::TimestampTz, with_modifier("timestamptz", plain)),
        // Space-separated vectors, not the array text format.
        22 => Mapped::text("int2vector"),
        30 => Mapped::text("oidvector"),
        // box[] uses ';' as its element delimiter: kept whole as text.
        1020 => Mapped::text("box[]"),
        _ => {
            if let Some(t) = Type::from_oid(oid) {
                return match t.kind() {
                    Kind::Array(elem) => map_array(elem.oid(), typmod, lookup, depth),
                    _ => Mapped::text(t.name()),
                };
            }
            match lookup(oid) {
                None => Mapped::text(format!("unknown type {oid}")),
                Some(info) => match info.kind {
                    PgTypeKind::Enum => Mapped {
                        ty: ColumnType::Text,
                        name: info.name,
                        note: Some("enum".into()),
                    },
                    PgTypeKind::Domain {
                        base_oid,
                        base_typmod,
                    } => {
                        let base_mod = if typmod == -1 { base_typmod } else { typmod };
                        let base = map_inner(base_oid, base_mod, lookup, depth + 1);
                        let base_display = match base.note {
                            Some(n) => format!("{} ({n})", base.name),
                            None => base.name,
                        };
                        Mapped {
                            ty: base.ty,
                            name: info.name,
                            note: Some(format!("domain over {base_display}")),
                        }
                    }
                    PgTypeKind::Array { elem_oid } => map_array(elem_oid, typmod, lookup, depth),
                    PgTypeKind::Other => Mapped::text(info.name),
                },
            }
        }
    }
}

fn map_array(
    elem_oid: u32,
    typmod: i32,
    lookup: &dyn Fn(u32) -> Option<PgTypeInfo>,
    depth: u32,
) -> Mapped {
    let elem = map_inner(elem_oid, typmod, lookup, depth + 1);
    let name = format!("{}[]", elem.name);
    // An array of a domain over an array has no 1-D list representation: keep it as text.
    let ty = match elem.ty {
        ColumnType::List(_) => ColumnType::Text,
        ty => ColumnType::List(Box::new(ty)),
    };
    Mapped {
        ty,
        name,
        note: elem.note,
    }
}

/// numeric(p,s) with 1 <= p <= 38 and 0 <= s <= p is a Decimal; unbounded numeric, p > 38 and
/// PostgreSQL 15's negative or larger-than-precision scales are Text.
fn map_numeric(typmod: i32) -> Mapped {
    if typmod < 4 {
        return Mapped::text("numeric");
    }
    let t = typmod - 4;
    let precision = ((t >> 16) & 0xffff) as u32;
    // PG 15 stores the scale as a signed 11-bit field; earlier versions only used 0..=precision.
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    let name = format!("numeric({precision},{scale})");
    if (1..=MAX_DECIMAL_PRECISION).contains(&precision) && scale >= 0 && scale as u32 <= precision {
        // Both fit: precision <= 38, 0 <= scale <= precision.
        Mapped::new(
            ColumnType::Decimal {
                precision: precision as u8,
                scale: scale as i8,
            },
            name,
        )
    } else {
        Mapped::text(name)
    }
}

// ---------------------------------------------------------------------------------------------
// Text parsing

/// Why a value failed to parse; turned into an [`Error::data`] with context by [`parse_text`].
#[derive(Debug)]
enum Bad {
    Msg(&'static str),
    /// Element `n` (from 1) of an array.
    Elem(usize, &'static str),
}

type P<T> = std::result::Result<T, Bad>;

/// Parses one value in PostgreSQL's text output format into the [`Value`] for `ty`.
///
/// - `±infinity` dates/timestamps, `NaN`/`±Infinity` in a Decimal column, timestamps outside
///   the i64 microsecond range, and multi-dimensional arrays (not representable as a 1-D list)
///   give [`Value::Unavailable`]. Inside a list such an element is a `Value::Unavailable` item
///   (the Parquet builder writes it as a NULL item and lists the column in `_unavailable_cols`).
/// - Malformed input (including a Decimal with more non-zero fraction digits than the scale, or
///   more digits than the precision allows) is an [`Error::data`] naming the type and an excerpt.
/// - Never returns [`Value::Null`] for a scalar: SQL NULL is signalled out of band (pgoutput
///   `'n'`, COPY `\N`); inside arrays, unquoted `NULL` elements are `Value::Null`.
pub fn parse_text(ty: &ColumnType, text: &[u8]) -> Result<Value> {
    let r = match ty {
        ColumnType::List(elem) => parse_array(elem, text),
        _ => parse_scalar(ty, text),
    };
    r.map_err(|bad| {
        let reason = match bad {
            Bad::Msg(m) => m.to_owned(),
            Bad::Elem(n, m) => format!("element {n}: {m}"),
        };
        Error::data(format!(
            "invalid {} value {}: {reason}",
            type_label(ty),
            excerpt(text)
        ))
    })
}

/// A short name for a ColumnType, for error messages.
fn type_label(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Bool => "bool".into(),
        ColumnType::Int16 => "int16".into(),
        ColumnType::Int32 => "int32".into(),
        ColumnType::Int64 => "int64".into(),
        ColumnType::Float32 => "float32".into(),
        ColumnType::Float64 => "float64".into(),
        ColumnType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
        ColumnType::Text => "text".into(),
        ColumnType::Bytes => "bytes".into(),
        ColumnType::Date => "date".into(),
        ColumnType::Timestamp => "timestamp".into(),
        ColumnType::TimestampTz => "timestamptz".into(),
        ColumnType::List(e) => format!("list<{}>", type_label(e)),
    }
}

/// At most 40 bytes of the input, quoted, for error messages.
fn excerpt(text: &[u8]) -> String {
    const MAX: usize = 40;
    if text.len() <= MAX {
        format!("{:?}", String::from_utf8_lossy(text))
    } else {
        format!(
            "{:?}... ({} bytes)",
            String::from_utf8_lossy(&text[..MAX]),
            text.len()
        )
    }
}

fn parse_scalar(ty: &ColumnType, t: &[u8]) -> P<Value> {
    Ok(match ty {
        ColumnType::Bool => match t {
            b"t" | b"true" => Value::Bool(true),
            b"f" | b"false" => Value::Bool(false),
            _ => return Err(Bad::Msg("expected 't' or 'f'")),
        },
        ColumnType::Int16 => Value::I16(
            parse_int(t)
                .and_then(|v| i16::try_from(v).ok())
                .ok_or(Bad::Msg("not a 16-bit integer"))?,
        ),
        ColumnType::Int32 => Value::I32(
            parse_int(t)
                .and_then(|v| i32::try_from(v).ok())
                .ok_or(Bad::Msg("not a 32-bit integer"))?,
        ),
        ColumnType::Int64 => Value::I64(parse_int(t).ok_or(Bad::Msg("not a 64-bit integer"))?),
        ColumnType::Float32 => Value::F32(parse_float::<f32>(t)?),
        ColumnType::Float64 => Value::F64(parse_float::<f64>(t)?),
        ColumnType::Decimal { precision, scale } => parse_decimal(t, *precision, *scale)?,
        ColumnType::Text => Value::Text(
            std::str::from_utf8(t)
                .map_err(|_| Bad::Msg("text is not valid UTF-8"))?
                .to_owned(),
        ),
        ColumnType::Bytes => Value::Bytes(parse_bytea(t)?),
        ColumnType::Date => parse_date(t)?,
        ColumnType::Timestamp => parse_timestamp(t, false)?,
        ColumnType::TimestampTz => parse_timestamp(t, true)?,
        ColumnType::List(_) => return Err(Bad::Msg("nested list types are not supported")),
    })
}

/// A decimal integer with an optional sign, without allocation. Accumulates negatively so that
/// `i64::MIN` parses.
fn parse_int(t: &[u8]) -> Option<i64> {
    let (neg, digits) = match t.split_first()? {
        (b'-', rest) => (true, rest),
        (b'+', rest) => (false, rest),
        _ => (false, t),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(d))?;
    }
    if neg { Some(v) } else { v.checked_neg() }
}

/// Floats including `NaN`, `Infinity`, `-Infinity` and exponents (`1e+30`).
fn parse_float<F: std::str::FromStr>(t: &[u8]) -> P<F> {
    // Rust also accepts "inf"; PostgreSQL never prints it, harmless to accept.
    std::str::from_utf8(t)
        .ok()
        .and_then(|s| s.parse::<F>().ok())
        .ok_or(Bad::Msg("not a floating-point number"))
}

const POW10: [i128; 39] = {
    let mut p = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// An exact decimal as the unscaled i128 at `scale`. `NaN`/`±Infinity` are Unavailable.
fn parse_decimal(t: &[u8], precision: u8, scale: i8) -> P<Value> {
    if matches!(t, b"NaN" | b"Infinity" | b"-Infinity" | b"+Infinity") {
        return Ok(Value::Unavailable);
    }
    let scale =
        usize::try_from(scale).map_err(|_| Bad::Msg("negative decimal scale is not supported"))?;
    let (neg, rest) = match t.split_first() {
        Some((b'-', r)) => (true, r),
        Some((b'+', r)) => (false, r),
        _ => (false, t),
    };
    let (int, frac) = match rest.iter().position(|b| *b == b'.') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(Bad::Msg("no digits"));
    }
    const OVERFLOW: Bad = Bad::Msg("more digits than the decimal precision allows");
    let mut v: i128 = 0;
    for &b in int {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return Err(Bad::Msg("not a decimal number"));
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(d)))
            .ok_or(OVERFLOW)?;
    }
    for i in 0..scale.max(frac.len()) {
        let d = match frac.get(i) {
            Some(b) => b.wrapping_sub(b'0'),
            None => 0,
        };
        if d > 9 {
            return Err(Bad::Msg("not a decimal number"));
        }
        if i < scale {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(i128::from(d)))
                .ok_or(OVERFLOW)?;
        } else if d != 0 {
            return Err(Bad::Msg("more fraction digits than the decimal scale"));
        }
    }
    if POW10
        .get(usize::from(precision))
        .is_some_and(|limit| v >= *limit)
    {
        return Err(OVERFLOW);
    }
    Ok(Value::Decimal(if neg { -v } else { v }))
}

/// bytea in hex format (`\x0a0b`) or the legacy escape format (`a\\b\001`).
fn parse_bytea(t: &[u8]) -> P<Vec<u8>> {
    if let Some(hex) = t.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err(Bad::Msg("odd number of hex digits"));
        }
        let mut out = Vec::with_capacity(hex.len() / 2);
        for pair in hex.chunks_exact(2) {
            match (hex_val(pair[0]), hex_val(pair[1])) {
                (Some(h), Some(l)) => out.push((h << 4) | l),
                _ => return Err(Bad::Msg("invalid hex digit")),
            }
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        if t[i] != b'\\' {
            out.push(t[i]);
            i += 1;
        } else if t.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            match (t.get(i + 1), t.get(i + 2), t.get(i + 3)) {
                (Some(a @ b'0'..=b'3'), Some(b @ b'0'..=b'7'), Some(c @ b'0'..=b'7')) => {
                    out.push(((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'));
                    i += 4;
                }
                _ => return Err(Bad::Msg("invalid bytea escape")),
            }
        }
    }
    Ok(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Exactly `N` ASCII digits.
fn fixed_digits<const N: usize>(t: &[u8]) -> Option<u32> {
    if t.len() != N {
        return None;
    }
    let mut v = 0u32;
    for &b in t {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u32::from(d);
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date with an astronomical year (1 BC = 0).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Strips a trailing " BC".
fn strip_bc(t: &[u8]) -> (&[u8], bool) {
    match t.strip_suffix(b" BC") {
        Some(rest) => (rest, true),
        None => (t, false),
    }
}

/// `YYYY-MM-DD` (year of 1 to 7 digits) at the start of `t`: days since 1970-01-01 and the rest.
fn parse_ymd(t: &[u8], bc: bool) -> P<(i64, i64, &[u8])> {
    const BAD: Bad = Bad::Msg("expected a date like 2024-02-29");
    let ylen = t
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(t.len());
    if !(1..=7).contains(&ylen) || t.len() < ylen + 6 || t[ylen] != b'-' || t[ylen + 3] != b'-' {
        return Err(BAD);
    }
    let mut year: i64 = 0;
    for &b in &t[..ylen] {
        year = year * 10 + i64::from(b - b'0');
    }
    let month = fixed_digits::<2>(&t[ylen + 1..ylen + 3]).ok_or(BAD)?;
    let day_end = (ylen + 6).min(t.len());
    let day = fixed_digits::<2>(&t[ylen + 4..day_end]).ok_or(BAD)?;
    if year == 0 {
        return Err(Bad::Msg("year 0 does not exist"));
    }
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(Bad::Msg("no such date"));
    }
    Ok((days_from_civil(year, month, day), year, &t[day_end..]))
}

fn parse_date(t: &[u8]) -> P<Value> {
    if t == b"infinity" || t == b"-infinity" {
        return Ok(Value::Unavailable);
    }
    let (t, bc) = strip_bc(t);
    let (days, _, rest) = parse_ymd(t, bc)?;
    if !rest.is_empty() {
        return Err(Bad::Msg("trailing characters after the date"));
    }
    Ok(Value::Date(
        i32::try_from(days).map_err(|_| Bad::Msg("date out of range"))?,
    ))
}

const MICROS_PER_SEC: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;

/// `YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]` as microseconds since 1970-01-01 UTC.
/// The offset is required to be absent for `timestamp`; optional (UTC) for `timestamptz`.
fn parse_timestamp(t: &[u8], tz: bool) -> P<Value> {
    if t == b"infinity" || t == b"-infinity" {
        return Ok(Value::Unavailable);
    }
    const BAD: Bad = Bad::Msg("expected a timestamp like 2024-02-29 13:45:12.123456");
    let (t, bc) = strip_bc(t);
    let (days, year, rest) = parse_ymd(t, bc)?;
    // PostgreSQL timestamps end in 294276 AD; anything beyond is garbage, not "unrepresentable".
    if year > 294_277 {
        return Err(Bad::Msg("year out of range for a timestamp"));
    }
    let rest = rest.strip_prefix(b" ").ok_or(BAD)?;
    if rest.len() < 8 || rest[2] != b':' || rest[5] != b':' {
        return Err(BAD);
    }
    let h = fixed_digits::<2>(&rest[0..2]).ok_or(BAD)?;
    let m = fixed_digits::<2>(&rest[3..5]).ok_or(BAD)?;
    let s = fixed_digits::<2>(&rest[6..8]).ok_or(BAD)?;
    if h > 23 || m > 59 || s > 59 {
        return Err(Bad::Msg("time of day out of range"));
    }
    let mut rest = &rest[8..];
    let mut frac: i64 = 0;
    if let Some(f) = rest.strip_prefix(b".") {
        let n = f
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(f.len());
        if n == 0 || n > 6 {
            return Err(Bad::Msg("fractional seconds must have 1 to 6 digits"));
        }
        for &b in &f[..n] {
            frac = frac * 10 + i64::from(b - b'0');
        }
        frac *= POW10[6 - n] as i64;
        rest = &f[n..];
    }
    let offset_secs: i64 = if rest.is_empty() {
        0
    } else if !tz {
        return Err(Bad::Msg(
            "unexpected time zone offset in a timestamp without time zone",
        ));
    } else {
        parse_offset(rest)?
    };
    let tod = i64::from(h * 3600 + m * 60 + s) * MICROS_PER_SEC + frac;
    let micros = days
        .checked_mul(MICROS_PER_DAY)
        .and_then(|v| v.checked_add(tod))
        .and_then(|v| v.checked_sub(offset_secs * MICROS_PER_SEC));
    // Valid PostgreSQL timestamps near 294276 AD do not fit i64 micros since 1970.
    Ok(micros.map_or(Value::Unavailable, Value::Timestamp))
}

/// `±HH`, `±HH:MM` or `±HH:MM:SS` as seconds east of UTC.
fn parse_offset(t: &[u8]) -> P<i64> {
    const BAD: Bad = Bad::Msg("expected a UTC offset like +00, +05:30 or -08:00:00");
    let (sign, t) = match t.split_first() {
        Some((b'+', r)) => (1, r),
        Some((b'-', r)) => (-1, r),
        _ => return Err(BAD),
    };
    let (h, m, s) = match t.len() {
        2 => (fixed_digits::<2>(t), Some(0), Some(0)),
        5 if t[2] == b':' => (
            fixed_digits::<2>(&t[..2]),
            fixed_digits::<2>(&t[3..5]),
            Some(0),
        ),
        8 if t[2] == b':' && t[5] == b':' => (
            fixed_digits::<2>(&t[..2]),
            fixed_digits::<2>(&t[3..5]),
            fixed_digits::<2>(&t[6..8]),
        ),
        _ => return Err(BAD),
    };
    match (h, m, s) {
        (Some(h), Some(m), Some(s)) if m < 60 && s < 60 => {
            Ok(sign * i64::from(h * 3600 + m * 60 + s))
        }
        _ => Err(BAD),
    }
}

/// Whitespace as PostgreSQL's array parser sees it.
fn is_array_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn trim_array_space(mut t: &[u8]) -> &[u8] {
    while let Some((first, rest)) = t.split_first() {
        if !is_array_space(*first) {
            break;
        }
        t = rest;
    }
    while let Some((last, rest)) = t.split_last() {
        if !is_array_space(*last) {
            break;
        }
        t = rest;
    }
    t
}

/// A 1-D array in PostgreSQL's text format: `{1,2,NULL}`, `{"a b","c\"d",NULL,""}`,
/// optionally prefixed by dimensions `[2:3]=`. Multi-dimensional arrays are Unavailable.
fn parse_array(elem_ty: &ColumnType, t: &[u8]) -> P<Value> {
    let mut t = trim_array_space(t);
    if t.first() == Some(&b'[') {
        let eq = t
            .iter()
            .position(|b| *b == b'=')
            .ok_or(Bad::Msg("array dimensions without '='"))?;
        let dims = &t[..eq];
        let ndims = dims.iter().filter(|b| **b == b'[').count();
        if ndims != dims.iter().filter(|b| **b == b']').count()
            || !dims
                .iter()
                .all(|b| matches!(b, b'[' | b']' | b':' | b'-' | b'0'..=b'9'))
        {
            return Err(Bad::Msg("malformed array dimensions"));
        }
        if ndims > 1 {
            return Ok(Value::Unavailable);
        }
        t = trim_array_space(&t[eq + 1..]);
    }
    // Not trimmed at the end here: a trailing escaped space belongs to the last element.
    let inner = match t {
        [b'{', inner @ .., b'}'] => inner,
        _ => return Err(Bad::Msg("array must be enclosed in braces")),
    };
    let trimmed = trim_array_space(inner);
    if trimmed.is_empty() {
        return Ok(Value::List(Vec::new()));
    }
    if trimmed[0] == b'{' {
        // Not representable as a 1-D list.
        return Ok(Value::Unavailable);
    }
    let mut out = Vec::with_capacity(1 + inner.iter().filter(|b| **b == b',').count().min(4096));
    let mut scratch: Vec<u8> = Vec::new();
    let mut i = 0;
    loop {
        let n = out.len() + 1;
        while i < inner.len() && is_array_space(inner[i]) {
            i += 1;
        }
        let elem: Option<&[u8]>; // None: NULL
        if inner.get(i) == Some(&b'"') {
            i += 1;
            let start = i;
            let mut escaped = false;
            loop {
                match inner.get(i) {
                    None => return Err(Bad::Elem(n, "unterminated quoted element")),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        escaped = true;
                        i += 2;
                    }
                    Some(_) => i += 1,
                }
            }
            let raw = &inner[start..i];
            i += 1; // closing quote
            elem = Some(if escaped {
                unescape_array_elem(raw, &mut scratch);
                &scratch
            } else {
                raw
            });
            while i < inner.len() && is_array_space(inner[i]) {
                i += 1;
            }
        } else {
            let start = i;
            let mut escaped = false;
            // Trailing whitespace is dropped, but not an escaped one.
            let mut keep_to = start;
            while let Some(&b) = inner.get(i) {
                match b {
                    b',' => break,
                    b'{' | b'}' | b'"' => {
                        return Err(Bad::Elem(n, "unexpected character in unquoted element"));
                    }
                    b'\\' => {
                        escaped = true;
                        i += 2;
                        keep_to = i;
                    }
                    _ => i += 1,
                }
            }
            if i > inner.len() {
                return Err(Bad::Elem(n, "backslash at the end of the array"));
            }
            let mut end = i;
            while end > keep_to && is_array_space(inner[end - 1]) {
                end -= 1;
            }
            let raw = &inner[start..end];
            if raw.is_empty() {
                return Err(Bad::Elem(n, "empty unquoted element"));
            }
            elem = if escaped {
                unescape_array_elem(raw, &mut scratch);
                Some(&scratch)
            } else if raw.eq_ignore_ascii_case(b"NULL") {
                None
            } else {
                Some(raw)
            };
        }
        let v = match elem {
            None => Value::Null,
            Some(e) => parse_scalar(elem_ty, e).map_err(|b| match b {
                Bad::Msg(m) | Bad::Elem(_, m) => Bad::Elem(n, m),
            })?,
        };
        out.push(v);
        match inner.get(i) {
            None => break,
            Some(b',') => i += 1,
            Some(_) => return Err(Bad::Elem(n, "expected ',' after element")),
        }
        if i >= inner.len() {
            return Err(Bad::Elem(n + 1, "missing element after ','"));
        }
    }
    Ok(Value::List(out))
}

/// Removes array-element backslash escapes (`\x` is `x`) into `out`.
fn unescape_array_elem(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut it = raw.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            if let Some(&next) = it.next() {
                out.push(next);
            }
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ty: &ColumnType, s: &str) -> Value {
        parse_text(ty, s.as_bytes()).unwrap_or_else(|e| panic!("{ty:?} {s:?}: {e}"))
    }

    fn bad(ty: &ColumnType, s: &[u8]) -> String {
        let e = parse_text(ty, s).expect_err(&format!("{ty:?} {s:?} should fail"));
        assert_eq!(e.kind(), ErrorKind::Data);
        e.to_string()
    }

    fn no_lookup(_: u32) -> Option<PgTypeInfo> {
        None
    }

    fn dec(p: u8, s: i8) -> ColumnType {
        ColumnType::Decimal {
            precision: p,
            scale: s,
        }
    }

    fn list(t: ColumnType) -> ColumnType {
        ColumnType::List(Box::new(t))
    }

    fn numeric_typmod(p: i32, s: i32) -> i32 {
        ((p << 16) | (s & 0x7ff)) + 4
    }

    #[test]
    fn map_builtin_scalars() {
        let cases: &[(u32, i32, ColumnType, &str)] = &[
            (16, -1, ColumnType::Bool, "bool"),
            (17, -1, ColumnType::Bytes, "bytea"),
            (18, -1, ColumnType::Text, "\"char\""),
            (19, -1, ColumnType::Text, "name"),
            (20, -1, ColumnType::Int64, "int8"),
            (21, -1, ColumnType::Int16, "int2"),
            (23, -1, ColumnType::Int32, "int4"),
            (25, -1, ColumnType::Text, "text"),
            (26, -1, ColumnType::Int64, "oid"),
            (700, -1, ColumnType::Float32, "float4"),
            (701, -1, ColumnType::Float64, "float8"),
            (1700, -1, ColumnType::Text, "numeric"),
            (1700, numeric_typmod(12, 2), dec(12, 2), "numeric(12,2)"),
            (1700, numeric_typmod(38, 38), dec(38, 38), "numeric(38,38)"),
            (1700, numeric_typmod(38, 0), dec(38, 0), "numeric(38,0)"),
            (
                1700,
                numeric_typmod(39, 2),
                ColumnType::Text,
                "numeric(39,2)",
            ),
            (
                1700,
                numeric_typmod(1000, 0),
                ColumnType::Text,
                "numeric(1000,0)",
            ),
            (
                1700,
                numeric_typmod(5, -2),
                ColumnType::Text,
                "numeric(5,-2)",
            ),
            (1700, numeric_typmod(3, 5), ColumnType::Text, "numeric(3,5)"),
            (1042, 14, ColumnType::Text, "bpchar(10)"),
            (1042, -1, ColumnType::Text, "bpchar"),
            (1043, 24, ColumnType::Text, "varchar(20)"),
            (1043, -1, ColumnType::Text, "varchar"),
            (1082, -1, ColumnType::Date, "date"),
            (1083, -1, ColumnType::Text, "time"),
            (1083, 3, ColumnType::Text, "time(3)"),
            (1266, -1, ColumnType::Text, "timetz"),
            (1114, -1, ColumnType::Timestamp, "timestamp"),
            (1114, 3, ColumnType::Timestamp, "timestamp(3)"),
            (1114, 0, ColumnType::Timestamp, "timestamp(0)"),
            (1184, -1, ColumnType::TimestampTz, "timestamptz"),
            (1184, 6, ColumnType::TimestampTz, "timestamptz(6)"),
            (1186, -1, ColumnType::Text, "interval"),
            (2950, -1, ColumnType::Text, "uuid"),
            (114, -1, ColumnType::Text, "json"),
            (3802, -1, ColumnType::Text, "jsonb"),
            (869, -1, ColumnType::Text, "inet"),
            (650, -1, ColumnType::Text, "cidr"),
            (829, -1, ColumnType::Text, "macaddr"),
            (142, -1, ColumnType::Text, "xml"),
            (790, -1, ColumnType::Text, "money"),
            (1560, 8, ColumnType::Text, "bit(8)"),
            (1562, -1, ColumnType::Text, "varbit"),
            (3614, -1, ColumnType::Text, "tsvector"),
            (600, -1, ColumnType::Text, "point"),
            (603, -1, ColumnType::Text, "box"),
            (3904, -1, ColumnType::Text, "int4range"),
            (3220, -1, ColumnType::Text, "pg_lsn"),
            (22, -1, ColumnType::Text, "int2vector"),
            (30, -1, ColumnType::Text, "oidvector"),
        ];
        for (oid, typmod, ty, name) in cases {
            assert_eq!(
                map_type(*oid, *typmod, &no_lookup),
                (ty.clone(), name.to_string()),
                "oid {oid} typmod {typmod}"
            );
        }
    }

    #[test]
    fn map_builtin_arrays() {
        let cases: &[(u32, i32, ColumnType, &str)] = &[
            (1005, -1, list(ColumnType::Int16), "int2[]"),
            (1007, -1, list(ColumnType::Int32), "int4[]"),
            (1016, -1, list(ColumnType::Int64), "int8[]"),
            (1021, -1, list(ColumnType::Float32), "float4[]"),
            (1022, -1, list(ColumnType::Float64), "float8[]"),
            (1231, -1, list(ColumnType::Text), "numeric[]"),
            (
                1231,
                numeric_typmod(10, 2),
                list(dec(10, 2)),
                "numeric(10,2)[]",
            ),
            (1000, -1, list(ColumnType::Bool), "bool[]"),
            (1009, -1, list(ColumnType::Text), "text[]"),
            (1015, 24, list(ColumnType::Text), "varchar(20)[]"),
            (1014, -1, list(ColumnType::Text), "bpchar[]"),
            (1001, -1, list(ColumnType::Bytes), "bytea[]"),
            (1182, -1, list(ColumnType::Date), "date[]"),
            (1115, -1, list(ColumnType::Timestamp), "timestamp[]"),
            (1185, 3, list(ColumnType::TimestampTz), "timestamptz(3)[]"),
            (2951, -1, list(ColumnType::Text), "uuid[]"),
            (199, -1, list(ColumnType::Text), "json[]"),
            (3807, -1, list(ColumnType::Text), "jsonb[]"),
            (1041, -1, list(ColumnType::Text), "inet[]"),
            (1028, -1, list(ColumnType::Int64), "oid[]"),
            (1187, -1, list(ColumnType::Text), "interval[]"),
            (1020, -1, ColumnType::Text, "box[]"),
        ];
        for (oid, typmod, ty, name) in cases {
            assert_eq!(
                map_type(*oid, *typmod, &no_lookup),
                (ty.clone(), name.to_string()),
                "oid {oid} typmod {typmod}"
            );
        }
    }

    #[test]
    fn map_lookup_types() {
        let lookup = |oid: u32| -> Option<PgTypeInfo> {
            let (name, kind) = match oid {
                16401 => ("mood", PgTypeKind::Enum),
                16402 => ("_mood", PgTypeKind::Array { elem_oid: 16401 }),
                16403 => (
                    "posint",
                    PgTypeKind::Domain {
                        base_oid: 23,
                        base_typmod: -1,
                    },
                ),
                16404 => (
                    "money2",
                    PgTypeKind::Domain {
                        base_oid: 1700,
                        base_typmod: numeric_typmod(12, 2),
                    },
                ),
                16405 => ("citext", PgTypeKind::Other),
                16406 => ("_citext", PgTypeKind::Array { elem_oid: 16405 }),
                16407 => ("_posint", PgTypeKind::Array { elem_oid: 16403 }),
                16408 => (
                    "intlist",
                    PgTypeKind::Domain {
                        base_oid: 1007,
                        base_typmod: -1,
                    },
                ),
                16409 => ("_intlist", PgTypeKind::Array { elem_oid: 16408 }),
                16410 => (
                    "loop",
                    PgTypeKind::Domain {
                        base_oid: 16410,
                        base_typmod: -1,
                    },
                ),
                16411 => ("dangling", PgTypeKind::Array { elem_oid: 99999 }),
                16412 => (
                    "mood_dom",
                    PgTypeKind::Domain {
                        base_oid: 16401,
                        base_typmod: -1,
                    },
                ),
                _ => return None,
            };
            Some(PgTypeInfo {
                oid,
                name: name.into(),
                kind,
            })
        };
        let m = |oid: u32, typmod: i32| map_type(oid, typmod, &lookup);
        assert_eq!(m(16401, -1), (ColumnType::Text, "mood (enum)".into()));
        assert_eq!(
            m(16402, -1),
            (list(ColumnType::Text), "mood[] (enum)".into())
        );
        assert_eq!(
            m(16403, -1),
            (ColumnType::Int32, "posint (domain over int4)".into())
        );
        assert_eq!(
            m(16404, -1),
            (dec(12, 2), "money2 (domain over numeric(12,2))".into())
        );
        // A column typmod overrides the domain's.
        assert_eq!(m(16404, numeric_typmod(8, 1)).0, dec(8, 1));
        assert_eq!(m(16405, -1), (ColumnType::Text, "citext".into()));
        assert_eq!(m(16406, -1), (list(ColumnType::Text), "citext[]".into()));
        assert_eq!(
            m(16407, -1),
            (
                list(ColumnType::Int32),
                "posint[] (domain over int4)".into()
            )
        );
        assert_eq!(
            m(16408, -1),
            (
                list(ColumnType::Int32),
                "intlist (domain over int4[])".into()
            )
        );
        assert_eq!(m(16409, -1).0, ColumnType::Text);
        assert_eq!(m(16410, -1).0, ColumnType::Text); // cycle: bounded, no stack overflow
        assert_eq!(
            m(16411, -1),
            (list(ColumnType::Text), "unknown type 99999[]".into())
        );
        assert_eq!(
            m(16412, -1),
            (
                ColumnType::Text,
                "mood_dom (domain over mood (enum))".into()
            )
        );
        assert_eq!(
            m(55555, -1),
            (ColumnType::Text, "unknown type 55555".into())
        );
        // Built-ins never consult the lookup.
        let panicking = |_: u32| -> Option<PgTypeInfo> { panic!("lookup called for a built-in") };
        for oid in [16, 20, 1007, 1700, 3802, 3904, 1020] {
            let _ = map_type(oid, -1, &panicking);
        }
    }

    #[test]
    fn integers() {
        assert_eq!(p(&ColumnType::Int16, "-32768"), Value::I16(i16::MIN));
        assert_eq!(p(&ColumnType::Int16, "32767"), Value::I16(i16::MAX));
        assert_eq!(p(&ColumnType::Int32, "-2147483648"), Value::I32(i32::MIN));
        assert_eq!(p(&ColumnType::Int32, "2147483647"), Value::I32(i32::MAX));
        assert_eq!(
            p(&ColumnType::Int64, "-9223372036854775808"),
            Value::I64(i64::MIN)
        );
        assert_eq!(
            p(&ColumnType::Int64, "9223372036854775807"),
            Value::I64(i64::MAX)
        );
        assert_eq!(
            p(&ColumnType::Int64, "4294967295"),
            Value::I64(4_294_967_295)
        ); // oid max
        assert_eq!(p(&ColumnType::Int32, "0"), Value::I32(0));
        assert_eq!(p(&ColumnType::Int32, "-0"), Value::I32(0));
        bad(&ColumnType::Int16, b"32768");
        bad(&ColumnType::Int16, b"-32769");
        bad(&ColumnType::Int32, b"2147483648");
        bad(&ColumnType::Int64, b"9223372036854775808");
        bad(&ColumnType::Int64, b"-9223372036854775809");
        for s in [
            &b""[..],
            b"-",
            b"+",
            b"1.0",
            b"1e3",
            b" 1",
            b"0x10",
            b"12a",
            b"\xff",
        ] {
            bad(&ColumnType::Int32, s);
        }
    }

    #[test]
    fn floats_and_bools() {
        assert_eq!(
            p(&ColumnType::Float64, "3.141592653589793"),
            Value::F64(std::f64::consts::PI)
        );
        assert_eq!(p(&ColumnType::Float64, "1e+300"), Value::F64(1e300));
        assert_eq!(p(&ColumnType::Float64, "-1.5e-05"), Value::F64(-1.5e-5));
        assert_eq!(
            p(&ColumnType::Float64, "Infinity"),
            Value::F64(f64::INFINITY)
        );
        assert_eq!(
            p(&ColumnType::Float64, "-Infinity"),
            Value::F64(f64::NEG_INFINITY)
        );
        assert!(matches!(p(&ColumnType::Float64, "NaN"), Value::F64(v) if v.is_nan()));
        assert_eq!(p(&ColumnType::Float32, "1.1"), Value::F32(1.1));
        assert_eq!(
            p(&ColumnType::Float32, "3.4028235e+38"),
            Value::F32(f32::MAX)
        );
        assert_eq!(
            p(&ColumnType::Float32, "-Infinity"),
            Value::F32(f32::NEG_INFINITY)
        );
        assert!(matches!(p(&ColumnType::Float32, "NaN"), Value::F32(v) if v.is_nan()));
        bad(&ColumnType::Float64, b"");
        bad(&ColumnType::Float64, b"1,5");
        bad(&ColumnType::Float32, b"abc");
        assert_eq!(p(&ColumnType::Bool, "t"), Value::Bool(true));
        assert_eq!(p(&ColumnType::Bool, "f"), Value::Bool(false));
        bad(&ColumnType::Bool, b"yes");
        bad(&ColumnType::Bool, b"");
    }

    #[test]
    fn decimals() {
        assert_eq!(p(&dec(12, 2), "1234.50"), Value::Decimal(123_450));
        assert_eq!(p(&dec(12, 2), "-0.01"), Value::Decimal(-1));
        assert_eq!(p(&dec(12, 2), "0.00"), Value::Decimal(0));
        assert_eq!(p(&dec(12, 2), "7"), Value::Decimal(700)); // padded
        assert_eq!(p(&dec(12, 2), "7.5"), Value::Decimal(750));
        assert_eq!(p(&dec(12, 2), "7.500"), Value::Decimal(750)); // trailing zeros are exact
        assert_eq!(p(&dec(5, 0), "-12345"), Value::Decimal(-12_345));
        let max38 = "9".repeat(38);
        assert_eq!(p(&dec(38, 0), &max38), Value::Decimal(POW10[38] - 1));
        assert_eq!(
            p(&dec(38, 0), &format!("-{max38}")),
            Value::Decimal(-(POW10[38] - 1))
        );
        assert_eq!(
            p(&dec(38, 38), &format!("0.{max38}")),
            Value::Decimal(POW10[38] - 1)
        );
        assert_eq!(
            p(&dec(38, 10), "-1234567890123456789012345678.0123456789"),
            Value::Decimal(-12_345_678_901_234_567_890_123_456_780_123_456_789)
        );
        for s in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(p(&dec(10, 2), s), Value::Unavailable);
        }
        assert!(bad(&dec(12, 2), b"1.234").contains("more fraction digits than the decimal scale"));
        assert!(bad(&dec(5, 2), b"1234.00").contains("precision"));
        bad(&dec(38, 0), format!("1{max38}").as_bytes());
        bad(&dec(38, 0), "9".repeat(60).as_bytes()); // i128 overflow, no panic
        for s in [
            &b""[..],
            b"-",
            b".",
            b"1.2.3",
            b"1e5",
            b"abc",
            b"1,5",
            b" 1",
        ] {
            bad(&dec(12, 2), s);
        }
        assert!(bad(&dec(12, 2), b"1.234").starts_with("invalid decimal(12,2) value \"1.234\""));
    }

    #[test]
    fn dates() {
        let d = |s: &str| p(&ColumnType::Date, s);
        assert_eq!(d("1970-01-01"), Value::Date(0));
        assert_eq!(d("1969-12-31"), Value::Date(-1));
        assert_eq!(d("2000-01-01"), Value::Date(10_957));
        assert_eq!(d("2024-02-29"), Value::Date(19_782));
        assert_eq!(d("0001-01-01"), Value::Date(-719_162));
        // 1 BC is astronomical year 0 (a leap year); 1 BC-12-31 is the day before 0001-01-01.
        assert_eq!(d("0001-12-31 BC"), Value::Date(-719_163));
        assert_eq!(d("0001-02-29 BC"), Value::Date(-719_163 - 306));
        // Caesar's death, proleptic Gregorian.
        assert_eq!(d("0044-03-15 BC"), Value::Date(-735_160));
        // PostgreSQL's range ends: Julian day 0, and the day before DATE_END_JULIAN (2147483494).
        assert_eq!(d("4714-11-24 BC"), Value::Date(-2_440_588));
        assert_eq!(d("5874897-12-31"), Value::Date(2_147_483_493 - 2_440_588));
        assert_eq!(d("infinity"), Value::Unavailable);
        assert_eq!(d("-infinity"), Value::Unavailable);
        for s in [
            &b""[..],
            b"2023-02-29",
            b"2024-13-01",
            b"2024-00-10",
            b"2024-01-00",
            b"2024-04-31",
            b"0000-01-01",
            b"24-1-1",
            b"2024/01/01",
            b"2024-01-01 ",
            b"2024-01-01 AD",
            b"2024-01-01x",
            b"99999999-01-01",
            b"9999999-12-31",
            b"2024-01-0",
            b"-2024-01-01",
            b"2024-01-01 12:00:00",
        ] {
            bad(&ColumnType::Date, s);
        }
    }

    #[test]
    fn days_match_chrono_across_the_calendar() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let y = rng.i32(-200_000..=200_000);
            let m = rng.u32(1..=12);
            let d = rng.u32(1..=days_in_month(i64::from(y), m));
            let want = (chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap() - epoch).num_days();
            assert_eq!(days_from_civil(i64::from(y), m, d), want, "{y}-{m}-{d}");
            let text = if y <= 0 {
                format!("{:04}-{m:02}-{d:02} BC", 1 - y)
            } else {
                format!("{y:04}-{m:02}-{d:02}")
            };
            assert_eq!(
                p(&ColumnType::Date, &text),
                Value::Date(want as i32),
                "{text}"
            );
        }
        let caesar = chrono::NaiveDate::from_ymd_opt(-43, 3, 15).unwrap();
        assert_eq!((caesar - epoch).num_days(), -735_160);
    }

    #[test]
    fn timestamps() {
        let ts = |s: &str| p(&ColumnType::Timestamp, s);
        let tz = |s: &str| p(&ColumnType::TimestampTz, s);
        assert_eq!(ts("1970-01-01 00:00:00"), Value::Timestamp(0));
        assert_eq!(
            ts("2024-02-29 13:45:12.123456"),
            Value::Timestamp(1_709_214_312_123_456)
        );
        assert_eq!(
            ts("2024-02-29 13:45:12.5"),
            Value::Timestamp(1_709_214_312_500_000)
        );
        assert_eq!(
            ts("2024-02-29 13:45:12"),
            Value::Timestamp(1_709_214_312_000_000)
        );
        assert_eq!(ts("1969-12-31 23:59:59.999999"), Value::Timestamp(-1));
        assert_eq!(
            ts("0044-03-15 12:00:00 BC"),
            Value::Timestamp(-735_160 * MICROS_PER_DAY + 12 * 3_600_000_000)
        );
        assert_eq!(
            ts("4714-11-24 00:00:00 BC"),
            Value::Timestamp(-2_440_588 * MICROS_PER_DAY)
        );
        assert_eq!(ts("infinity"), Value::Unavailable);
        assert_eq!(ts("-infinity"), Value::Unavailable);
        // 294276 AD is valid in PostgreSQL but beyond i64 micros since 1970.
        assert_eq!(ts("294276-12-31 23:59:59.999999"), Value::Unavailable);
        assert_eq!(
            ts("200000-01-01 00:00:00"),
            Value::Timestamp(days_from_civil(200_000, 1, 1) * MICROS_PER_DAY)
        );

        assert_eq!(
            tz("2024-02-29 13:45:12.123456+00"),
            Value::Timestamp(1_709_214_312_123_456)
        );
        assert_eq!(
            tz("2024-02-29 19:15:12.123456+05:30"),
            Value::Timestamp(1_709_214_312_123_456)
        );
        assert_eq!(
            tz("2024-02-29 05:45:12-08:00:00"),
            Value::Timestamp(1_709_214_312_000_000)
        );
        assert_eq!(
            tz("2024-02-29 13:45:12"),
            Value::Timestamp(1_709_214_312_000_000)
        );
        assert_eq!(tz("1970-01-01 00:53:28+00:53:28"), Value::Timestamp(0));
        assert_eq!(
            tz("0044-03-15 12:00:00+00 BC"),
            Value::Timestamp(-735_160 * MICROS_PER_DAY + 12 * 3_600_000_000)
        );
        assert_eq!(tz("-infinity"), Value::Unavailable);

        for s in [
            &b""[..],
            b"2024-02-29",
            b"2024-02-29T13:45:12",
            b"2024-02-29 24:00:00",
            b"2024-02-29 13:60:00",
            b"2024-02-29 13:45:60",
            b"2024-02-29 13:45",
            b"2024-02-29 13:45:12.",
            b"2024-02-29 13:45:12.1234567",
            b"2024-02-29 13:45:12+00",
            b"2024-02-30 13:45:12",
            b"9999999-01-01 00:00:00",
        ] {
            bad(&ColumnType::Timestamp, s);
        }
        for s in [
            &b"2024-02-29 13:45:12+5"[..],
            b"2024-02-29 13:45:12 +00",
            b"2024-02-29 13:45:12+05:3",
            b"2024-02-29 13:45:12+05:60",
            b"2024-02-29 13:45:12Z",
            b"2024-02-29 13:45:12+00 AD",
        ] {
            bad(&ColumnType::TimestampTz, s);
        }
    }

    #[test]
    fn text_and_bytes() {
        assert_eq!(p(&ColumnType::Text, ""), Value::Text(String::new()));
        assert_eq!(
            p(&ColumnType::Text, "zażółć 🦀 \t\n\\"),
            Value::Text("zażółć 🦀 \t\n\\".into())
        );
        assert!(bad(&ColumnType::Text, b"ab\xffcd").contains("UTF-8"));
        assert_eq!(p(&ColumnType::Bytes, "\\x"), Value::Bytes(vec![]));
        assert_eq!(
            p(&ColumnType::Bytes, "\\x0a0BfF00"),
            Value::Bytes(vec![0x0a, 0x0b, 0xff, 0x00])
        );
        // Legacy escape format.
        assert_eq!(
            p(&ColumnType::Bytes, "ab\\\\c\\001\\377"),
            Value::Bytes(b"ab\\c\x01\xff".to_vec())
        );
        assert_eq!(p(&ColumnType::Bytes, ""), Value::Bytes(vec![]));
        bad(&ColumnType::Bytes, b"\\x0");
        bad(&ColumnType::Bytes, b"\\x0g");
        bad(&ColumnType::Bytes, b"a\\9");
        bad(&ColumnType::Bytes, b"a\\");
        bad(&ColumnType::Bytes, b"\\40");
    }

    #[test]
    fn arrays_of_every_element_kind() {
        use Value::*;
        let l = |v: Vec<Value>| List(v);
        assert_eq!(
            p(&list(ColumnType::Int16), "{1,-2,NULL}"),
            l(vec![I16(1), I16(-2), Null])
        );
        assert_eq!(p(&list(ColumnType::Int32), "{}"), l(vec![]));
        assert_eq!(
            p(&list(ColumnType::Int32), "{2147483647,-2147483648}"),
            l(vec![I32(i32::MAX), I32(i32::MIN)])
        );
        assert_eq!(
            p(&list(ColumnType::Int64), "[2:3]={7,8}"),
            l(vec![I64(7), I64(8)])
        );
        assert_eq!(p(&list(ColumnType::Int64), "[-1:-1]={7}"), l(vec![I64(7)]));
        assert!(
            matches!(&p(&list(ColumnType::Float64), "{1.5,NaN,-Infinity}"), List(v)
            if v[0] == F64(1.5) && matches!(v[1], F64(x) if x.is_nan()) && v[2] == F64(f64::NEG_INFINITY))
        );
        assert_eq!(p(&list(ColumnType::Float32), "{0.25}"), l(vec![F32(0.25)]));
        assert_eq!(
            p(&list(dec(10, 2)), "{1.50,-0.01,NULL}"),
            l(vec![Decimal(150), Decimal(-1), Null])
        );
        // An unrepresentable element is an Unavailable item; the others are kept.
        assert_eq!(
            p(&list(dec(10, 2)), "{1.50,NaN}"),
            l(vec![Decimal(150), Unavailable])
        );
        assert_eq!(
            p(&list(ColumnType::Text), "{1.50,NaN}"),
            l(vec![Text("1.50".into()), Text("NaN".into())])
        );
        assert_eq!(
            p(&list(ColumnType::Bool), "{t,f,NULL}"),
            l(vec![Bool(true), Bool(false), Null])
        );
        assert_eq!(
            p(
                &list(ColumnType::Text),
                r#"{"a b","c\"d",NULL,"","NULL",null,plain,"back\\slash","{x,y}"}"#
            ),
            l(vec![
                Text("a b".into()),
                Text("c\"d".into()),
                Null,
                Text("".into()),
                Text("NULL".into()),
                Null,
                Text("plain".into()),
                Text("back\\slash".into()),
                Text("{x,y}".into()),
            ])
        );
        assert_eq!(
            p(&list(ColumnType::Text), r#"{"żółw","🦀"}"#),
            l(vec![Text("żółw".into()), Text("🦀".into())])
        );
        assert_eq!(
            p(&list(ColumnType::Text), r"{a\ ,\N\U\LL, \  }"),
            l(vec![
                Text("a ".into()),
                Text("NULL".into()),
                Text(" ".into())
            ])
        );
        assert_eq!(
            p(&list(ColumnType::Text), "{ a , b }"),
            l(vec![Text("a".into()), Text("b".into())])
        );
        // json[] elements are quoted with escaped quotes.
        assert_eq!(
            p(&list(ColumnType::Text), r#"{"{\"a\": 1}","[1, 2]"}"#),
            l(vec![Text(r#"{"a": 1}"#.into()), Text("[1, 2]".into())])
        );
        assert_eq!(
            p(&list(ColumnType::Bytes), r#"{"\\x0a0b","\\x",NULL}"#),
            l(vec![Bytes(vec![10, 11]), Bytes(vec![]), Null])
        );
        assert_eq!(
            p(&list(ColumnType::Date), "{2024-02-29,\"0044-03-15 BC\"}"),
            l(vec![Date(19_782), Date(-735_160)])
        );
        assert_eq!(
            p(&list(ColumnType::Date), "{2024-02-29,infinity}"),
            l(vec![Date(19_782), Unavailable])
        );
        assert_eq!(
            p(
                &list(ColumnType::Timestamp),
                r#"{"2024-02-29 13:45:12.123456",NULL}"#
            ),
            l(vec![Timestamp(1_709_214_312_123_456), Null])
        );
        assert_eq!(
            p(
                &list(ColumnType::TimestampTz),
                r#"{"2024-02-29 13:45:12.123456+00","1970-01-01 01:00:00+01"}"#
            ),
            l(vec![Timestamp(1_709_214_312_123_456), Timestamp(0)])
        );
        assert_eq!(
            p(
                &list(ColumnType::Text),
                "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"
            ),
            l(vec![Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())])
        );
        assert_eq!(
            p(&list(ColumnType::Text), "{192.168.0.1/24,::1}"),
            l(vec![Text("192.168.0.1/24".into()), Text("::1".into())])
        );
        // Multi-dimensional arrays have no 1-D representation.
        assert_eq!(p(&list(ColumnType::Int32), "{{1,2},{3,4}}"), Unavailable);
        assert_eq!(
            p(&list(ColumnType::Int32), "[1:2][1:1]={{1},{2}}"),
            Unavailable
        );
    }

    #[test]
    fn malformed_arrays() {
        let e = bad(&list(ColumnType::Int32), b"{1,x,3}");
        assert!(
            e.contains("list<int32>") && e.contains("element 2") && e.contains("{1,x,3}"),
            "{e}"
        );
        for s in [
            &b""[..],
            b"{",
            b"}",
            b"1,2",
            b"{1,2",
            b"{1,,2}",
            b"{1,}",
            b"{,1}",
            b"{\"a}",
            b"{\"a\"b}",
            b"{a\"b\"}",
            b"{1,{2}}",
            b"[1:2{1,2}",
            b"[1:x]={1}",
            b"[1:2]=1,2",
            b"{\"\\",
            b"{a\\",
            b"{a\\}",
            b"{\"a\\\"}",
        ] {
            bad(&list(ColumnType::Text), s);
        }
        bad(&list(dec(5, 2)), b"{1.234}");
        bad(&list(ColumnType::Bool), b"{true,maybe}");
        bad(&list(list(ColumnType::Int32)), b"{1}");
        bad(&list(ColumnType::Text), b"{\"\xff\"}");
    }

    #[test]
    fn long_inputs_are_excerpted() {
        let long = "x".repeat(500);
        let e = bad(&ColumnType::Int32, long.as_bytes());
        assert!(e.len() < 200 && e.contains("500 bytes"), "{e}");
    }

    #[test]
    fn random_inputs_never_panic() {
        let types = [
            ColumnType::Bool,
            ColumnType::Int16,
            ColumnType::Int64,
            ColumnType::Float32,
            dec(38, 10),
            dec(5, 0),
            ColumnType::Text,
            ColumnType::Bytes,
            ColumnType::Date,
            ColumnType::Timestamp,
            ColumnType::TimestampTz,
            list(ColumnType::Text),
            list(ColumnType::Int32),
            list(ColumnType::TimestampTz),
        ];
        let alphabet = b"0123456789-+.:{}[]=\",\\ NULLnaINFxBC tf";
        let seeds: [&[u8]; 6] = [
            b"2024-02-29 13:45:12.123456+05:30 BC",
            b"{\"a\\\"b\",NULL,[1:2]={1,2}}",
            b"-12345.678",
            b"\\x0a0b",
            b"5874897-12-31",
            b"{{1,2},{3,4}}",
        ];
        let mut rng = fastrand::Rng::with_seed(42);
        for i in 0..20_000 {
            let input: Vec<u8> = if i % 3 == 0 {
                let s = seeds[rng.usize(..seeds.len())];
                s[..rng.usize(..=s.len())].to_vec()
            } else {
                (0..rng.usize(..40))
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect()
            };
            for ty in &types {
                let _ = parse_text(ty, &input);
            }
        }
    }
}
