//! tidemark's own change envelope, version 1: one JSON object per row change.
//!
//! ```json
//! {"tidemark": 1, "table": {"schema": "public", "name": "orders"}, "op": "U",
//!  "pos": "00000000016B3748", "ord": 3, "commit_ts": 1795000000000000, "xid": 771,
//!  "columns": [{"name": "id", "ty": "Int64", "source_type": "int8", "key": true}, ...],
//!  "row": [42, ...], "unavailable": []}
//! ```
//! `op` is the `_op` letter; `pos`/`ord`/`commit_ts`/`xid` become `_pos`/`_ord`/`_commit_ts`
//! (UNIX µs)/`_xid` unchanged, so Parquet written from the envelope equals Parquet written
//! straight from the source. `columns[].ty` is the [`ColumnType`] (see `docs/types.md`);
//! `row` aligns with `columns`: numbers as JSON numbers (non-finite floats as `"NaN"`,
//! `"Infinity"`, `"-Infinity"`), decimals as decimal text, bytes as base64, dates as days and
//! timestamps as microseconds since 1970-01-01, lists as arrays. Columns listed in
//! `unavailable` are `null` in `row` and their true value is unknown (`_unavailable_cols`).
//! `source` (optional) names the pipeline that published the record.
//! A reader rejects a `tidemark` version it does not know.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value as Json;

use super::{Change, Decoded};
use crate::change::{
    Column, ColumnType, Op, RowMeta, TableId, TableSchema, Value, format_decimal, parse_decimal,
};
use crate::error::{Error, Result};

/// The envelope version this build writes and reads.
pub const VERSION: u64 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Wire<'a> {
    tidemark: u64,
    table: std::borrow::Cow<'a, TableId>,
    op: std::borrow::Cow<'a, str>,
    pos: std::borrow::Cow<'a, str>,
    ord: u64,
    commit_ts: i64,
    #[serde(default)]
    xid: Option<i64>,
    columns: std::borrow::Cow<'a, [Column]>,
    row: Vec<Json>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unavailable: Vec<String>,
    /// The publishing pipeline (tidemark's publisher sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<std::borrow::Cow<'a, str>>,
}

/// The envelope of one row change; `source` names the publishing pipeline.
pub fn encode(
    schema: &TableSchema,
    meta: &RowMeta<'_>,
    values: &[Value],
    source: Option<&str>,
) -> Vec<u8> {
    let mut unavailable = Vec::new();
    let row = schema
        .columns
        .iter()
        .zip(values)
        .map(|(c, v)| {
            if matches!(v, Value::Unavailable) {
                unavailable.push(c.name.clone());
            }
            to_json(&c.ty, v)
        })
        .collect();
    let wire = Wire {
        tidemark: VERSION,
        table: std::borrow::Cow::Borrowed(&schema.id),
        op: std::borrow::Cow::Borrowed(meta.op.code()),
        pos: std::borrow::Cow::Borrowed(meta.pos),
        ord: meta.ord,
        commit_ts: meta.commit_ts,
        xid: meta.xid,
        columns: std::borrow::Cow::Borrowed(&schema.columns),
        row,
        unavailable,
        source: source.map(std::borrow::Cow::Borrowed),
    };
    serde_json::to_vec(&wire).unwrap_or_default()
}

pub(super) fn decode(json: &Json) -> Result<Decoded> {
    let version = json.get("tidemark").and_then(Json::as_u64);
    if version != Some(VERSION) {
        return Err(Error::data(format!(
            "tidemark envelope version {} is not supported by this build (reads {VERSION}): upgrade the function",
            json.get("tidemark").unwrap_or(&Json::Null)
        )));
    }
    let wire: Wire<'static> = serde_json::from_value(json.clone())
        .map_err(|e| Error::data(format!("invalid tidemark envelope: {e}")))?;
    let op = match wire.op.as_ref() {
        "R" => Op::Snapshot,
        "I" => Op::Insert,
        "U" => Op::Update,
        "D" => Op::Delete,
        "T" => Op::Truncate,
        other => {
            return Err(Error::data(format!(
                "invalid tidemark envelope: unknown op {other:?} (expected R, I, U, D or T)"
            )));
        }
    };
    let columns = wire.columns.into_owned();
    if columns.len() != wire.row.len() {
        return Err(Error::data(format!(
            "invalid tidemark envelope: {} columns but {} values",
            columns.len(),
            wire.row.len()
        )));
    }
    let mut values = Vec::with_capacity(columns.len());
    for (c, j) in columns.iter().zip(&wire.row) {
        let v = if wire.unavailable.contains(&c.name) {
            Value::Unavailable
        } else {
            from_json(&c.ty, j).map_err(|e| e.context(format!("column {:?}", c.name)))?
        };
        values.push(v);
    }
    Ok(Decoded::Change(Box::new(Change {
        table: wire.table.into_owned(),
        op,
        columns,
        values,
        pos: Some(wire.pos.into_owned()),
        ord: Some(wire.ord),
        commit_ts: Some(wire.commit_ts),
        xid: wire.xid,
    })))
}

fn float_json(f: f64) -> Json {
    if f.is_nan() {
        Json::from("NaN")
    } else if f.is_infinite() {
        Json::from(if f > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Json::from(f)
    }
}

fn to_json(ty: &ColumnType, v: &Value) -> Json {
    match (ty, v) {
        (_, Value::Null | Value::Unavailable) => Json::Null,
        (_, Value::Bool(b)) => Json::from(*b),
        (_, Value::I16(i)) => Json::from(*i),
        (_, Value::I32(i)) => Json::from(*i),
        (_, Value::I64(i)) => Json::from(*i),
        (_, Value::F32(f)) => float_json(f64::from(*f)),
        (_, Value::F64(f)) => float_json(*f),
        (ColumnType::Decimal { scale, .. }, Value::Decimal(d)) => {
            Json::from(format_decimal(*d, *scale))
        }
        (_, Value::Decimal(d)) => Json::from(d.to_string()),
        (_, Value::Text(s)) => Json::from(s.as_str()),
        (_, Value::Bytes(b)) => Json::from(B64.encode(b)),
        (_, Value::Date(d)) => Json::from(*d),
        (_, Value::Timestamp(t)) => Json::from(*t),
        (ColumnType::List(inner), Value::List(items)) => {
            Json::Array(items.iter().map(|i| to_json(inner, i)).collect())
        }
        (_, Value::List(items)) => Json::Array(
            items
                .iter()
                .map(|i| to_json(&ColumnType::Text, i))
                .collect(),
        ),
    }
}

fn from_json(ty: &ColumnType, j: &Json) -> Result<Value> {
    if j.is_null() {
        return Ok(Value::Null);
    }
    let bad = || Error::data(format!("value {j} is not a valid {ty:?}"));
    let int = || j.as_i64().ok_or_else(bad);
    let float = || match j {
        Json::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(bad()),
        },
        _ => j.as_f64().ok_or_else(bad),
    };
    Ok(match ty {
        ColumnType::Bool => Value::Bool(j.as_bool().ok_or_else(bad)?),
        ColumnType::Int16 => Value::I16(i16::try_from(int()?).map_err(|_| bad())?),
        ColumnType::Int32 => Value::I32(i32::try_from(int()?).map_err(|_| bad())?),
        ColumnType::Int64 => Value::I64(int()?),
        ColumnType::Float32 => Value::F32(float()? as f32),
        ColumnType::Float64 => Value::F64(float()?),
        ColumnType::Decimal { scale, .. } => Value::Decimal(
            j.as_str()
                .and_then(|s| parse_decimal(s, *scale))
                .ok_or_else(bad)?,
        ),
        ColumnType::Text => Value::Text(j.as_str().ok_or_else(bad)?.to_string()),
        ColumnType::Bytes => {
            Value::Bytes(B64.decode(j.as_str().ok_or_else(bad)?).map_err(|_| bad())?)
        }
        ColumnType::Date => Value::Date(i32::try_from(int()?).map_err(|_| bad())?),
        ColumnType::Timestamp | ColumnType::TimestampTz => Value::Timestamp(int()?),
        ColumnType::List(inner) => Value::List(
            j.as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|i| from_json(inner, i))
                .collect::<Result<_>>()?,
        ),
    })
}

/// The publishing pipeline and `(pos, ord)` of an envelope, without decoding its row.
pub fn identity(data: &[u8]) -> Option<(String, String, u64)> {
    #[derive(serde::Deserialize)]
    struct Id {
        tidemark: u64,
        pos: String,
        ord: u64,
        source: Option<String>,
    }
    let id: Id = serde_json::from_slice(data).ok()?;
    (id.tidemark == VERSION).then_some(())?;
    Some((id.source?, id.pos, id.ord))
}

/// A row change to publish: its partition key, envelope and identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub partition_key: String,
    pub data: Vec<u8>,
    pub pos: String,
    pub ord: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{RecordFormat, decode as decode_any};

    fn schema() -> TableSchema {
        let col = |name: &str, ty: ColumnType, key| Column {
            name: name.into(),
            ty,
            source_type: "x".into(),
            key,
        };
        TableSchema {
            id: TableId::new("public", "orders"),
            columns: vec![
                col("id", ColumnType::Int64, true),
                col(
                    "amount",
                    ColumnType::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                    false,
                ),
                col("f", ColumnType::Float64, false),
                col("note", ColumnType::Text, false),
                col("raw", ColumnType::Bytes, false),
                col("day", ColumnType::Date, false),
                col("at", ColumnType::TimestampTz, false),
                col("tags", ColumnType::List(Box::new(ColumnType::Int32)), false),
                col("big", ColumnType::Text, false),
                col("small", ColumnType::Int16, false),
            ],
        }
    }

    #[test]
    fn round_trips_every_type() {
        let s = schema();
        let values = vec![
            Value::I64(i64::MAX),
            Value::Decimal(-12345),
            Value::F64(f64::NEG_INFINITY),
            Value::Text("héllo \"x\"".into()),
            Value::Bytes(vec![0, 255, 7]),
            Value::Date(-3),
            Value::Timestamp(1_795_000_000_123_456),
            Value::List(vec![Value::I32(1), Value::Null]),
            Value::Unavailable,
            Value::Null,
        ];
        let meta = RowMeta {
            op: Op::Update,
            pos: "00000000016B3748",
            ord: 3,
            commit_ts: 1_795_000_000_000_000,
            xid: Some(771),
        };
        let bytes = encode(&s, &meta, &values, Some("p"));
        let Decoded::Change(c) = decode_any(RecordFormat::Auto, &bytes).unwrap() else {
            panic!("not a change")
        };
        assert_eq!(c.table, s.id);
        assert_eq!(c.columns, s.columns);
        assert_eq!(c.values, values);
        assert_eq!(
            (c.op, c.pos.as_deref(), c.ord, c.commit_ts, c.xid),
            (
                Op::Update,
                Some("00000000016B3748"),
                Some(3),
                Some(1_795_000_000_000_000),
                Some(771)
            )
        );
    }

    #[test]
    fn golden_files() {
        let ok = include_bytes!("../../../tests/golden/kinesis/tidemark-v1.json");
        let Decoded::Change(c) = decode_any(RecordFormat::Tidemark, ok).unwrap() else {
            panic!("not a change")
        };
        assert_eq!(c.values[1], Value::Decimal(1999));
        for (file, why) in [
            (
                &include_bytes!("../../../tests/golden/kinesis/bad/tidemark-v9.json")[..],
                "version 9",
            ),
            (
                include_bytes!("../../../tests/golden/kinesis/bad/tidemark-short-row.json"),
                "2 columns but 1 values",
            ),
            (
                include_bytes!("../../../tests/golden/kinesis/bad/tidemark-bad-decimal.json"),
                "column \"amount\"",
            ),
        ] {
            let e = decode_any(RecordFormat::Auto, file).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
    }
}
