//! Debezium change events as JSON, with the schema (`{"schema": ..., "payload": ...}`) or
//! without it (the payload alone).
//!
//! `op`: `c` → I, `u` → U, `d` → D (the `before` image), `r` → R, `t` → T; `m` (messages) and
//! tombstones (`null`) are skipped. The table is `source.schema` (PostgreSQL) or `source.db`
//! (MySQL) plus `source.table`; `_commit_ts` is `source.ts_ms` (else `ts_ms`); `_xid` is
//! `source.txId` (PostgreSQL) when numeric.
//!
//! With a schema, column types follow it: `int8`/`int16` → smallint, `int32` → int (`Date` →
//! date), `int64` → bigint (`Timestamp`/`MicroTimestamp`/`NanoTimestamp` → timestamp),
//! `float32`/`float64`, `boolean`, `string` (`ZonedTimestamp` → timestamp UTC), `bytes`
//! (`Decimal` with precision ≤ 38 → decimal, else text; plain → binary); anything else (times,
//! structs, arrays, variable-scale decimals) → the JSON text. Without a schema, every column
//! is text. Key columns are not in the value event, so none is marked as key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value as Json;

use super::{Change, Decoded, json_text, text_column};
use crate::change::{Column, ColumnType, Op, TableId, Value};
use crate::error::{Error, Result};

pub(super) fn decode(json: &Json) -> Result<Decoded> {
    if json.is_null() {
        return Ok(Decoded::Skip("Debezium tombstone"));
    }
    let (payload, schema) = match json.get("payload") {
        Some(p) => (p, json.get("schema")),
        None => (json, None),
    };
    if payload.is_null() {
        return Ok(Decoded::Skip("Debezium tombstone"));
    }
    let what = "Debezium event";
    let op = match payload.get("op").and_then(Json::as_str) {
        Some("c") => Op::Insert,
        Some("u") => Op::Update,
        Some("d") => Op::Delete,
        Some("r") => Op::Snapshot,
        Some("t") => Op::Truncate,
        Some("m") => return Ok(Decoded::Skip("Debezium message event")),
        other => {
            return Err(Error::data(format!(
                "{what}: unknown or missing op {other:?} (expected c, u, d, r, t or m)"
            )));
        }
    };
    let source = payload
        .get("source")
        .filter(|s| s.is_object())
        .ok_or_else(|| Error::data(format!("{what}: missing \"source\" block")))?;
    let table = source
        .get("table")
        .and_then(Json::as_str)
        .ok_or_else(|| Error::data(format!("{what}: source.table is missing")))?;
    let namespace = source
        .get("schema")
        .and_then(Json::as_str)
        .or_else(|| source.get("db").and_then(Json::as_str))
        .ok_or_else(|| Error::data(format!("{what}: neither source.schema nor source.db")))?;
    let image_name = if op == Op::Delete { "before" } else { "after" };
    let image = payload.get(image_name).unwrap_or(&Json::Null);
    let fields = schema.and_then(|s| image_fields(s, image_name));
    let (columns, values) = match (image, op) {
        (Json::Null, Op::Truncate) => (Vec::new(), Vec::new()),
        (Json::Object(map), _) => match fields {
            Some(fields) => typed_row(map, fields)?,
            None => map
                .iter()
                .map(|(k, v)| (text_column(k, false), json_text(v)))
                .unzip(),
        },
        _ => {
            return Err(Error::data(format!(
                "{what}: op {:?} without a \"{image_name}\" object",
                op.code()
            )));
        }
    };
    let ts_ms = source
        .get("ts_ms")
        .and_then(Json::as_i64)
        .or_else(|| payload.get("ts_ms").and_then(Json::as_i64));
    Ok(Decoded::Change(Box::new(Change {
        table: TableId::new(namespace, table),
        op,
        columns,
        values,
        pos: None,
        ord: None,
        commit_ts: ts_ms.map(|ms| ms.saturating_mul(1000)),
        xid: source.get("txId").and_then(Json::as_i64),
    })))
}

/// The field list of the `before`/`after` struct in a Debezium schema.
fn image_fields<'a>(schema: &'a Json, image: &str) -> Option<&'a Vec<Json>> {
    schema
        .get("fields")?
        .as_array()?
        .iter()
        .find(|f| f.get("field").and_then(Json::as_str) == Some(image))?
        .get("fields")?
        .as_array()
}

fn typed_row(
    map: &serde_json::Map<String, Json>,
    fields: &[Json],
) -> Result<(Vec<Column>, Vec<Value>)> {
    let mut columns = Vec::with_capacity(fields.len());
    let mut values = Vec::with_capacity(fields.len());
    for f in fields {
        let name = f
            .get("field")
            .and_then(Json::as_str)
            .ok_or_else(|| Error::data("Debezium schema: a field without a name"))?;
        let ty = f.get("type").and_then(Json::as_str).unwrap_or("");
        let logical = f.get("name").and_then(Json::as_str).unwrap_or("");
        let column_type = column_type(ty, logical, f.get("parameters"));
        let raw = map.get(name).unwrap_or(&Json::Null);
        let value = value(&column_type, ty, logical, raw).ok_or_else(|| {
            Error::data(format!(
                "Debezium event: column {name:?}: value {raw} does not match its schema type {ty} {logical}"
            ))
        })?;
        columns.push(Column {
            name: name.to_string(),
            ty: column_type,
            source_type: if logical.is_empty() {
                ty.to_string()
            } else {
                logical.to_string()
            },
            key: false,
        });
        values.push(value);
    }
    Ok((columns, values))
}

fn column_type(ty: &str, logical: &str, params: Option<&Json>) -> ColumnType {
    match (ty, logical) {
        ("int32", "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date") => {
            ColumnType::Date
        }
        (
            "int64",
            "io.debezium.time.Timestamp"
            | "io.debezium.time.MicroTimestamp"
            | "io.debezium.time.NanoTimestamp"
            | "org.apache.kafka.connect.data.Timestamp",
        ) => ColumnType::Timestamp,
        ("string", "io.debezium.time.ZonedTimestamp") => ColumnType::TimestampTz,
        ("bytes", "org.apache.kafka.connect.data.Decimal") => {
            let param = |k: &str| {
                params
                    .and_then(|p| p.get(k))
                    .and_then(Json::as_str)
                    .and_then(|s| s.parse::<i64>().ok())
            };
            match (param("connect.decimal.precision"), param("scale")) {
                (Some(p), Some(s)) if (1..=38).contains(&p) && (0..=p).contains(&s) => {
                    ColumnType::Decimal {
                        precision: p as u8,
                        scale: s as i8,
                    }
                }
                _ => ColumnType::Text,
            }
        }
        (_, l) if !l.is_empty() && ty != "string" => ColumnType::Text,
        ("int8" | "int16", _) => ColumnType::Int16,
        ("int32", _) => ColumnType::Int32,
        ("int64", _) => ColumnType::Int64,
        ("float32" | "float", _) => ColumnType::Float32,
        ("float64" | "double", _) => ColumnType::Float64,
        ("boolean", _) => ColumnType::Bool,
        ("bytes", _) => ColumnType::Bytes,
        _ => ColumnType::Text,
    }
}

/// `None` when the value does not fit the type.
fn value(ty: &ColumnType, raw_ty: &str, logical: &str, v: &Json) -> Option<Value> {
    if v.is_null() {
        return Some(Value::Null);
    }
    Some(match ty {
        ColumnType::Bool => Value::Bool(v.as_bool()?),
        ColumnType::Int16 => Value::I16(i16::try_from(v.as_i64()?).ok()?),
        ColumnType::Int32 => Value::I32(i32::try_from(v.as_i64()?).ok()?),
        ColumnType::Int64 => Value::I64(v.as_i64()?),
        ColumnType::Float32 => Value::F32(v.as_f64()? as f32),
        ColumnType::Float64 => Value::F64(v.as_f64()?),
        ColumnType::Date => Value::Date(i32::try_from(v.as_i64()?).ok()?),
        ColumnType::Timestamp => {
            let n = v.as_i64()?;
            Value::Timestamp(match logical {
                "io.debezium.time.MicroTimestamp" => n,
                "io.debezium.time.NanoTimestamp" => n.div_euclid(1000),
                _ => n.checked_mul(1000)?,
            })
        }
        ColumnType::TimestampTz => Value::Timestamp(super::rfc3339_micros(v.as_str()?)?),
        ColumnType::Decimal { .. } => {
            let bytes = B64.decode(v.as_str()?).ok()?;
            if bytes.is_empty() || bytes.len() > 16 {
                return None;
            }
            // Big-endian two's complement, sign-extended to 128 bits.
            let fill = if bytes[0] & 0x80 != 0 { 0xFF } else { 0 };
            let mut buf = [fill; 16];
            buf[16 - bytes.len()..].copy_from_slice(&bytes);
            Value::Decimal(i128::from_be_bytes(buf))
        }
        ColumnType::Bytes => Value::Bytes(B64.decode(v.as_str()?).ok()?),
        _ if raw_ty == "string" => Value::Text(v.as_str()?.to_string()),
        _ => json_text(v),
    })
}

#[cfg(test)]
mod tests {
    use crate::change::{ColumnType, Op, TableId, Value};
    use crate::codec::{Decoded, RecordFormat, decode};

    fn change(bytes: &[u8]) -> Box<super::Change> {
        match decode(RecordFormat::Auto, bytes).unwrap() {
            Decoded::Change(c) => c,
            Decoded::Skip(why) => panic!("skipped: {why}"),
        }
    }

    #[test]
    fn with_schema_types_follow_the_schema() {
        let c = change(include_bytes!(
            "../../../tests/golden/kinesis/debezium-schema-update.json"
        ));
        assert_eq!(c.table, TableId::new("public", "orders"));
        assert_eq!(c.op, Op::Update);
        let ty = |n: &str| c.columns.iter().find(|c| c.name == n).unwrap().ty.clone();
        assert_eq!(ty("id"), ColumnType::Int32);
        assert_eq!(
            ty("amount"),
            ColumnType::Decimal {
                precision: 12,
                scale: 2
            }
        );
        assert_eq!(ty("created"), ColumnType::Timestamp);
        assert_eq!(ty("updated"), ColumnType::TimestampTz);
        assert_eq!(ty("day"), ColumnType::Date);
        // 0x04D2 = 1234 -> 12.34
        let v = |n: &str| c.values[c.columns.iter().position(|c| c.name == n).unwrap()].clone();
        assert_eq!(v("amount"), Value::Decimal(1234));
        assert_eq!(v("created"), Value::Timestamp(1_700_000_000_123_456));
        assert_eq!(v("updated"), Value::Timestamp(1_700_000_000_500_000));
        assert_eq!(v("day"), Value::Date(19_000));
        assert_eq!(c.commit_ts, Some(1_700_000_001_000_000));
        assert_eq!(c.xid, Some(771));
    }

    #[test]
    fn without_schema_columns_are_text() {
        let c = change(include_bytes!(
            "../../../tests/golden/kinesis/debezium-plain-delete.json"
        ));
        assert_eq!(c.table, TableId::new("shop", "customers"));
        assert_eq!(c.op, Op::Delete);
        assert!(c.columns.iter().all(|c| c.ty == ColumnType::Text));
        assert!(
            c.values
                .contains(&Value::Text("12345678901234567890".into()))
        );
    }

    #[test]
    fn tombstones_skip_and_bad_events_say_why() {
        assert!(matches!(
            decode(RecordFormat::Debezium, b"null").unwrap(),
            Decoded::Skip(_)
        ));
        let e = decode(
            RecordFormat::Auto,
            include_bytes!("../../../tests/golden/kinesis/bad/debezium-no-source.json"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("source"), "{e}");
        let e = decode(
            RecordFormat::Auto,
            include_bytes!("../../../tests/golden/kinesis/bad/debezium-type-mismatch.json"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("column \"id\""), "{e}");
    }
}
