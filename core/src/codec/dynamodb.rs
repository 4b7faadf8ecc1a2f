//! DynamoDB change records as Kinesis Data Streams for DynamoDB delivers them.
//!
//! `eventName` `INSERT` → I (`NewImage`), `MODIFY` → U (`NewImage`), `REMOVE` → D (`OldImage`,
//! else `Keys`). The table is `dynamodb.<tableName>`. Attributes become text columns: `S` and
//! `N` as their text (numbers keep every digit), `BOOL` as `true`/`false`, `B` as base64, `NULL`
//! as NULL, and `M`, `L`, `SS`, `NS`, `BS` as DynamoDB JSON text. Attributes of `Keys` are key
//! columns. `_commit_ts` is `ApproximateCreationDateTime` (milliseconds, or seconds when
//! small enough to be seconds).

use serde_json::Value as Json;

use super::{Change, Decoded, str_field, text_column};
use crate::change::{Op, TableId, Value};
use crate::error::{Error, Result};

/// The schema (namespace) of DynamoDB tables in the output.
pub const NAMESPACE: &str = "dynamodb";

pub(super) fn decode(json: &Json) -> Result<Decoded> {
    let what = "DynamoDB stream record";
    let op = match str_field(json, "eventName", what)? {
        "INSERT" => Op::Insert,
        "MODIFY" => Op::Update,
        "REMOVE" => Op::Delete,
        other => {
            return Err(Error::data(format!(
                "{what}: unknown eventName {other:?} (expected INSERT, MODIFY or REMOVE)"
            )));
        }
    };
    let table = str_field(json, "tableName", what)?;
    let ddb = json
        .get("dynamodb")
        .filter(|d| d.is_object())
        .ok_or_else(|| Error::data(format!("{what}: missing \"dynamodb\" object")))?;
    let keys = ddb.get("Keys").and_then(Json::as_object);
    let image = match op {
        Op::Delete => ddb.get("OldImage").or(ddb.get("Keys")),
        _ => ddb.get("NewImage"),
    }
    .and_then(Json::as_object)
    .ok_or_else(|| {
        Error::data(format!(
            "{what}: {} without its image (NewImage/OldImage): set the stream view type to NEW_AND_OLD_IMAGES",
            op.code()
        ))
    })?;
    let mut columns = Vec::with_capacity(image.len());
    let mut values = Vec::with_capacity(image.len());
    for (name, attr) in image {
        let key = keys.is_some_and(|k| k.contains_key(name));
        columns.push(text_column(name, key));
        values.push(attribute(attr).ok_or_else(|| {
            Error::data(format!(
                "{what}: attribute {name:?} is not DynamoDB JSON: {attr}"
            ))
        })?);
    }
    // Key columns first, in name order; then the others in name order (JSON object order).
    let mut order: Vec<usize> = (0..columns.len()).collect();
    order.sort_by_key(|&i| !columns[i].key);
    let columns = order.iter().map(|&i| columns[i].clone()).collect();
    let values = order.iter().map(|&i| values[i].clone()).collect();
    let commit_ts = ddb
        .get("ApproximateCreationDateTime")
        .and_then(Json::as_f64)
        .map(|t| {
            if t < 1e11 {
                (t * 1e6) as i64
            } else {
                (t * 1e3) as i64
            }
        });
    Ok(Decoded::Change(Box::new(Change {
        table: TableId::new(NAMESPACE, table),
        op,
        columns,
        values,
        pos: None,
        ord: None,
        commit_ts,
        xid: None,
    })))
}

/// One DynamoDB-JSON attribute value (`{"S": "x"}`) as text; `None` when malformed.
pub(crate) fn attribute(attr: &Json) -> Option<Value> {
    let obj = attr.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    let (ty, v) = obj.iter().next()?;
    Some(match (ty.as_str(), v) {
        ("S" | "N" | "B", Json::String(s)) => Value::Text(s.clone()),
        ("BOOL", Json::Bool(b)) => Value::Text(b.to_string()),
        ("NULL", _) => Value::Null,
        ("M" | "L" | "SS" | "NS" | "BS", _) => Value::Text(v.to_string()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use crate::change::{Op, TableId, Value};
    use crate::codec::{Decoded, RecordFormat, decode};

    #[test]
    fn golden_files() {
        let Decoded::Change(c) = decode(
            RecordFormat::Auto,
            include_bytes!("../../../tests/golden/kinesis/dynamodb-modify.json"),
        )
        .unwrap() else {
            panic!("skipped")
        };
        assert_eq!(c.table, TableId::new("dynamodb", "Orders"));
        assert_eq!(c.op, Op::Update);
        assert_eq!(c.columns[0].name, "pk");
        assert!(c.columns[0].key);
        let v = |n: &str| c.values[c.columns.iter().position(|c| c.name == n).unwrap()].clone();
        assert_eq!(v("amount"), Value::Text("12345678901234567890.5".into()));
        assert_eq!(v("paid"), Value::Text("true".into()));
        assert_eq!(v("tags"), Value::Text(r#"["a","b"]"#.into()));
        assert_eq!(c.commit_ts, Some(1_795_000_000_123_000));

        let Decoded::Change(d) = decode(
            RecordFormat::DynamoDb,
            include_bytes!("../../../tests/golden/kinesis/dynamodb-remove.json"),
        )
        .unwrap() else {
            panic!("skipped")
        };
        assert_eq!(d.op, Op::Delete);
        for (file, why) in [
            (
                &include_bytes!("../../../tests/golden/kinesis/bad/dynamodb-keys-only.json")[..],
                "NEW_AND_OLD_IMAGES",
            ),
            (
                include_bytes!("../../../tests/golden/kinesis/bad/dynamodb-bad-attribute.json"),
                "attribute \"amount\"",
            ),
        ] {
            let e = decode(RecordFormat::Auto, file).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
    }
}
