//! AWS DMS JSON records on Kinesis: `{"data": {...}, "metadata": {...}}`.
//!
//! `metadata.record-type` `data` is a row change (`operation` `insert` → I, `update` → U,
//! `delete` → D, `load` → R); `control` records (table DDL, task events) are skipped. The table
//! is `schema-name`.`table-name`; `_commit_ts` is `metadata.timestamp`; `_xid` is
//! `transaction-id` when numeric. DMS carries no column types: every column is text.

use serde_json::Value as Json;

use super::{Change, Decoded, json_text, str_field, text_column};
use crate::change::{Op, TableId};
use crate::error::{Error, Result};

pub(super) fn decode(json: &Json) -> Result<Decoded> {
    let what = "DMS record";
    let meta = json
        .get("metadata")
        .filter(|m| m.is_object())
        .ok_or_else(|| Error::data(format!("{what}: missing \"metadata\" object")))?;
    match str_field(meta, "record-type", what)? {
        "data" => {}
        "control" => return Ok(Decoded::Skip("DMS control record")),
        other => {
            return Err(Error::data(format!(
                "{what}: unknown record-type {other:?} (expected data or control)"
            )));
        }
    }
    let op = match str_field(meta, "operation", what)? {
        "insert" => Op::Insert,
        "update" => Op::Update,
        "delete" => Op::Delete,
        "load" => Op::Snapshot,
        other => {
            return Err(Error::data(format!(
                "{what}: unknown operation {other:?} (expected insert, update, delete or load)"
            )));
        }
    };
    let table = TableId::new(
        str_field(meta, "schema-name", what)?,
        str_field(meta, "table-name", what)?,
    );
    let data = json
        .get("data")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::data(format!("{what}: missing \"data\" object")))?;
    let (columns, values) = data
        .iter()
        .map(|(k, v)| (text_column(k, false), json_text(v)))
        .unzip();
    Ok(Decoded::Change(Box::new(Change {
        table,
        op,
        columns,
        values,
        pos: None,
        ord: None,
        commit_ts: meta
            .get("timestamp")
            .and_then(Json::as_str)
            .and_then(super::rfc3339_micros),
        xid: meta.get("transaction-id").and_then(Json::as_i64),
    })))
}

#[cfg(test)]
mod tests {
    use crate::change::{Op, TableId, Value};
    use crate::codec::{Decoded, RecordFormat, decode};

    #[test]
    fn golden_files() {
        let Decoded::Change(c) = decode(
            RecordFormat::Auto,
            include_bytes!("../../../tests/golden/kinesis/dms-update.json"),
        )
        .unwrap() else {
            panic!("skipped")
        };
        assert_eq!(c.table, TableId::new("sales", "orders"));
        assert_eq!(c.op, Op::Update);
        assert_eq!(c.commit_ts, Some(1_795_000_000_123_456));
        let amount = c.columns.iter().position(|c| c.name == "amount").unwrap();
        assert_eq!(c.values[amount], Value::Text("19.99".into()));
        assert!(matches!(
            decode(
                RecordFormat::Dms,
                include_bytes!("../../../tests/golden/kinesis/dms-control.json")
            )
            .unwrap(),
            Decoded::Skip(_)
        ));
        let e = decode(
            RecordFormat::Auto,
            include_bytes!("../../../tests/golden/kinesis/bad/dms-unknown-operation.json"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("merge"), "{e}");
    }
}
