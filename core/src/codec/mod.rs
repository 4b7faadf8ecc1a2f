//! Record formats on a Kinesis stream, decoded into source-neutral changes.
//!
//! | format | recognised by | types | `_pos` |
//! |---|---|---|---|
//! | [`envelope`] (tidemark's own, versioned) | `"tidemark": 1` | declared per column | the source's position |
//! | [`debezium`] JSON, with or without schema | `payload.op` / `op` + `source` | from the schema, else text | the shard sequence number |
//! | [`dms`] (AWS DMS `data` + `metadata`) | `metadata.record-type` | text | the shard sequence number |
//! | [`dynamodb`] (Kinesis Data Streams for DynamoDB) | `eventName` + `dynamodb` | text | the shard sequence number |
//!
//! Formats that carry no column types give text columns holding the value's JSON text (64-bit
//! integers exactly, other JSON numbers as parsed into a double; DynamoDB `N` values keep every
//! digit); cast in Athena. Decoding never panics: a record that cannot be
//! decoded is an [`ErrorKind::Data`](crate::ErrorKind::Data) error naming why, and the ingest
//! sends it to the dead-letter location.

pub mod debezium;
pub mod dms;
pub mod dynamodb;
pub mod envelope;

use serde_json::Value as Json;

use crate::change::{Column, ColumnType, Op, TableId, Value};
use crate::error::{Error, Result};

/// The format of a stream's records: configured, or detected per record (`Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordFormat {
    #[default]
    Auto,
    Tidemark,
    Debezium,
    Dms,
    DynamoDb,
}

impl std::str::FromStr for RecordFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "" | "auto" => RecordFormat::Auto,
            "tidemark" => RecordFormat::Tidemark,
            "debezium" => RecordFormat::Debezium,
            "dms" => RecordFormat::Dms,
            "dynamodb" => RecordFormat::DynamoDb,
            _ => {
                return Err(Error::config(format!(
                    "unknown record format {s:?}: use auto, tidemark, debezium, dms or dynamodb"
                )));
            }
        })
    }
}

impl std::fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordFormat::Auto => "auto",
            RecordFormat::Tidemark => "tidemark",
            RecordFormat::Debezium => "debezium",
            RecordFormat::Dms => "dms",
            RecordFormat::DynamoDb => "dynamodb",
        })
    }
}

/// One decoded row change. `values` align with `columns`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub table: TableId,
    pub op: Op,
    pub columns: Vec<Column>,
    pub values: Vec<Value>,
    /// The source's own sortable position (`_pos`), when the format carries one.
    pub pos: Option<String>,
    /// The row's ordinal inside its source transaction (`_ord`), with `pos`.
    pub ord: Option<u64>,
    /// Commit time, UNIX microseconds, when the format carries one.
    pub commit_ts: Option<i64>,
    pub xid: Option<i64>,
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Change(Box<Change>),
    /// Nothing to write: a control record, a tombstone or a heartbeat (the reason says which).
    Skip(&'static str),
}

/// Decodes one record's data.
pub fn decode(format: RecordFormat, data: &[u8]) -> Result<Decoded> {
    let json: Json = serde_json::from_slice(data).map_err(|e| {
        Error::data(format!(
            "not JSON ({e}); expected a {format} record",
            format = if format == RecordFormat::Auto {
                "tidemark, Debezium, DMS or DynamoDB"
            } else {
                format_name(format)
            }
        ))
    })?;
    let format = match format {
        RecordFormat::Auto => detect(&json)?,
        f => f,
    };
    match format {
        RecordFormat::Tidemark => envelope::decode(&json),
        RecordFormat::Debezium => debezium::decode(&json),
        RecordFormat::Dms => dms::decode(&json),
        RecordFormat::DynamoDb | RecordFormat::Auto => dynamodb::decode(&json),
    }
}

fn format_name(f: RecordFormat) -> &'static str {
    match f {
        RecordFormat::Auto => "auto",
        RecordFormat::Tidemark => "tidemark",
        RecordFormat::Debezium => "Debezium",
        RecordFormat::Dms => "DMS",
        RecordFormat::DynamoDb => "DynamoDB",
    }
}

/// Which format a JSON record is in.
pub fn detect(json: &Json) -> Result<RecordFormat> {
    let has = |k: &str| json.get(k).is_some();
    if has("tidemark") {
        Ok(RecordFormat::Tidemark)
    } else if has("metadata") && json["metadata"].get("record-type").is_some() {
        Ok(RecordFormat::Dms)
    } else if has("eventName") && has("dynamodb") {
        Ok(RecordFormat::DynamoDb)
    } else if json
        .get("payload")
        .is_some_and(|p| p.get("op").is_some() || p.is_null())
        || (has("op") && has("source"))
        || json.is_null()
    {
        Ok(RecordFormat::Debezium)
    } else {
        Err(Error::data(
            "unrecognised record: not a tidemark envelope (\"tidemark\"), Debezium (\"payload\"/\"op\"+\"source\"), \
             DMS (\"data\"+\"metadata\") or DynamoDB (\"eventName\"+\"dynamodb\") record; set the stream's format if it is one of them",
        ))
    }
}

/// A text column (formats without types).
pub(crate) fn text_column(name: &str, key: bool) -> Column {
    Column {
        name: name.to_string(),
        ty: ColumnType::Text,
        source_type: "json".into(),
        key,
    }
}

/// The exact text of a JSON value for a text column: strings as they are, everything else as
/// its JSON text; `null` is NULL.
pub(crate) fn json_text(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    }
}

/// A field that must be a string.
pub(crate) fn str_field<'a>(obj: &'a Json, field: &str, what: &str) -> Result<&'a str> {
    obj.get(field)
        .and_then(Json::as_str)
        .ok_or_else(|| Error::data(format!("{what}: missing string field {field:?}")))
}

/// UNIX microseconds of an RFC 3339 time.
pub(crate) fn rfc3339_micros(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected() {
        let cases = [
            (r#"{"tidemark":1}"#, RecordFormat::Tidemark),
            (
                r#"{"payload":{"op":"c"},"schema":{}}"#,
                RecordFormat::Debezium,
            ),
            (
                r#"{"op":"c","source":{},"after":{}}"#,
                RecordFormat::Debezium,
            ),
            (
                r#"{"data":{},"metadata":{"record-type":"data"}}"#,
                RecordFormat::Dms,
            ),
            (
                r#"{"eventName":"INSERT","dynamodb":{}}"#,
                RecordFormat::DynamoDb,
            ),
        ];
        for (text, f) in cases {
            let j: Json = serde_json::from_str(text).unwrap();
            assert_eq!(detect(&j).unwrap(), f, "{text}");
        }
        let e = detect(&serde_json::json!({"hello": 1})).unwrap_err();
        assert!(e.to_string().contains("unrecognised record"), "{e}");
    }

    #[test]
    fn garbage_is_a_data_error_not_a_panic() {
        for data in [&b"\xff\xfe"[..], b"", b"{", b"[1,2]", b"42", b"\"x\""] {
            let e = decode(RecordFormat::Auto, data).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Data, "{data:?}");
        }
        assert!("kafka".parse::<RecordFormat>().is_err());
        assert_eq!(
            "DMS".parse::<RecordFormat>().unwrap().to_string(),
            "dms".to_string()
        );
    }
}
