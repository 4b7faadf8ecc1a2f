//! The fixed mapping from [`TableSchema`] to the Arrow schema of the Parquet files.

use std::collections::HashSet;
use std::sync::Arc;

use ::arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::change::{ColumnType, TableSchema, Value};
use crate::error::{Error, Result};

/// `_op`: Utf8, not null, [`Op::code`](crate::change::Op::code).
pub const COL_OP: &str = "_op";
/// `_pos`: Utf8, not null, [`RowMeta::pos`](crate::change::RowMeta::pos).
pub const COL_POS: &str = "_pos";
/// `_ord`: Int64, not null, [`RowMeta::ord`](crate::change::RowMeta::ord).
pub const COL_ORD: &str = "_ord";
/// `_commit_ts`: Timestamp(µs, "UTC"), not null.
pub const COL_COMMIT_TS: &str = "_commit_ts";
/// `_xid`: Int64, nullable.
pub const COL_XID: &str = "_xid";
/// `_unavailable_cols`: List<Utf8>, NULL unless some column of the row was
/// [`Value::Unavailable`].
pub const COL_UNAVAILABLE: &str = "_unavailable_cols";
/// The metadata columns, in file order, before the data columns.
pub const META_COLUMNS: [&str; 6] = [
    COL_OP,
    COL_POS,
    COL_ORD,
    COL_COMMIT_TS,
    COL_XID,
    COL_UNAVAILABLE,
];
/// Arrow field name of list items (Athena/Glue convention).
pub const LIST_ITEM_NAME: &str = "element";

pub(crate) const UTC: &str = "UTC";

/// The Arrow type of a column of type `ty`.
pub fn data_type(ty: &ColumnType) -> DataType {
    match ty {
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Int16 => DataType::Int16,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
        ColumnType::Text => DataType::Utf8,
        ColumnType::Bytes => DataType::Binary,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        ColumnType::List(inner) => DataType::List(list_item_field(inner)),
    }
}

/// The item field of a list of `inner`: named [`LIST_ITEM_NAME`], nullable.
pub(crate) fn list_item_field(inner: &ColumnType) -> Arc<Field> {
    Arc::new(Field::new(LIST_ITEM_NAME, data_type(inner), true))
}

/// Arrow schema of the Parquet files for a table: metadata columns first, then the data columns.
pub fn arrow_schema(table: &TableSchema) -> SchemaRef {
    let mut fields = Vec::with_capacity(META_COLUMNS.len() + table.columns.len());
    fields.extend(meta_fields());
    fields.extend(
        table
            .columns
            .iter()
            .map(|c| Field::new(&c.name, data_type(&c.ty), true)),
    );
    Arc::new(Schema::new(fields))
}

fn meta_fields() -> [Field; 6] {
    [
        Field::new(COL_OP, DataType::Utf8, false),
        Field::new(COL_POS, DataType::Utf8, false),
        Field::new(COL_ORD, DataType::Int64, false),
        Field::new(
            COL_COMMIT_TS,
            DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            false,
        ),
        Field::new(COL_XID, DataType::Int64, true),
        Field::new(
            COL_UNAVAILABLE,
            DataType::List(list_item_field(&ColumnType::Text)),
            true,
        ),
    ]
}

/// Checks that a table can be written: column names unique, not empty and distinct from the
/// metadata columns; decimals with `1 <= precision <= 38` and `0 <= scale <= precision`.
/// Returns [`Error::data`] naming the table and column otherwise.
pub fn check_schema(table: &TableSchema) -> Result<()> {
    let mut seen = HashSet::with_capacity(table.columns.len());
    for c in &table.columns {
        let fail =
            |why: String| Error::data(format!("table {}, column `{}`: {why}", table.id, c.name));
        if c.name.is_empty() {
            return Err(fail("empty column name".into()));
        }
        if META_COLUMNS.contains(&c.name.as_str()) {
            return Err(fail("name collides with a tidemark metadata column".into()));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(fail("duplicate column name".into()));
        }
        check_type(&c.ty).map_err(|why| fail(format!("{why} (type {})", type_name(&c.ty))))?;
    }
    Ok(())
}

fn check_type(ty: &ColumnType) -> std::result::Result<(), String> {
    match ty {
        ColumnType::Decimal { precision, scale } => {
            if decimal_max(*precision).is_none() {
                return Err(format!("decimal precision {precision} is outside 1..=38"));
            }
            if *scale < 0 || *scale as u8 > *precision {
                return Err(format!("decimal scale {scale} is outside 0..={precision}"));
            }
            Ok(())
        }
        ColumnType::List(inner) => check_type(inner),
        _ => Ok(()),
    }
}

/// The largest unscaled magnitude of a decimal of `precision` digits (`10^precision - 1`), or
/// `None` when `precision` is outside `1..=38`.
pub(crate) fn decimal_max(precision: u8) -> Option<u128> {
    const MAX: [u128; 39] = {
        let mut t = [0u128; 39];
        let mut p = 1;
        let mut pow = 10u128;
        while p <= 38 {
            t[p] = pow - 1;
            pow = pow.saturating_mul(10);
            p += 1;
        }
        t
    };
    match precision {
        1..=38 => MAX.get(usize::from(precision)).copied(),
        _ => None,
    }
}

/// Bytes one value of `ty` adds to its builders whether NULL or not (value slot or offset).
pub(crate) fn fixed_width(ty: &ColumnType) -> usize {
    match ty {
        ColumnType::Bool => 1,
        ColumnType::Int16 => 2,
        ColumnType::Int32 | ColumnType::Float32 | ColumnType::Date => 4,
        ColumnType::Int64
        | ColumnType::Float64
        | ColumnType::Timestamp
        | ColumnType::TimestampTz => 8,
        ColumnType::Decimal { .. } => 16,
        ColumnType::Text | ColumnType::Bytes | ColumnType::List(_) => 4,
    }
}

/// A short name of a column type for messages, e.g. `Decimal(12,2)` or `List(Int32)`.
pub(crate) fn type_name(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Decimal { precision, scale } => format!("Decimal({precision},{scale})"),
        ColumnType::List(inner) => format!("List({})", type_name(inner)),
        other => format!("{other:?}"),
    }
}

/// A short rendering of a value for messages: never the whole content of a large value.
pub(crate) fn describe(v: &Value) -> String {
    const MAX_CHARS: usize = 40;
    match v {
        Value::Text(s) => {
            let mut short: String = s.chars().take(MAX_CHARS).collect();
            if short.len() < s.len() {
                short.push('…');
            }
            format!("Text({short:?})")
        }
        Value::Bytes(b) => format!("Bytes({} bytes)", b.len()),
        Value::List(items) => format!("List({} items)", items.len()),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Column, TableId};

    fn table(cols: Vec<(&str, ColumnType)>) -> TableSchema {
        TableSchema {
            id: TableId::new("public", "t"),
            columns: cols
                .into_iter()
                .map(|(n, ty)| Column {
                    name: n.into(),
                    ty,
                    source_type: String::new(),
                    key: false,
                })
                .collect(),
        }
    }

    #[test]
    fn schema_has_meta_columns_first() {
        let t = table(vec![
            ("id", ColumnType::Int64),
            ("tags", ColumnType::List(Box::new(ColumnType::Text))),
        ]);
        let s = arrow_schema(&t);
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "_op",
                "_pos",
                "_ord",
                "_commit_ts",
                "_xid",
                "_unavailable_cols",
                "id",
                "tags"
            ]
        );
        assert!(!s.field(0).is_nullable());
        assert!(s.field(4).is_nullable());
        assert!(s.field(6).is_nullable());
        let DataType::List(item) = s.field(7).data_type() else {
            panic!("not a list")
        };
        assert_eq!(item.name(), "element");
        assert!(item.is_nullable());
    }

    #[test]
    fn decimal_max_bounds() {
        assert_eq!(decimal_max(0), None);
        assert_eq!(decimal_max(1), Some(9));
        assert_eq!(decimal_max(18), Some(999_999_999_999_999_999));
        assert_eq!(decimal_max(38), Some(10u128.pow(38) - 1));
        assert_eq!(decimal_max(39), None);
    }

    #[test]
    fn check_schema_rejects_unwritable_tables() {
        assert!(
            check_schema(&table(vec![
                ("a", ColumnType::Int32),
                ("b", ColumnType::Text)
            ]))
            .is_ok()
        );
        for bad in [
            table(vec![("a", ColumnType::Int32), ("a", ColumnType::Text)]),
            table(vec![("_op", ColumnType::Text)]),
            table(vec![("", ColumnType::Text)]),
            table(vec![(
                "d",
                ColumnType::Decimal {
                    precision: 39,
                    scale: 0,
                },
            )]),
            table(vec![(
                "d",
                ColumnType::Decimal {
                    precision: 0,
                    scale: 0,
                },
            )]),
            table(vec![(
                "d",
                ColumnType::Decimal {
                    precision: 5,
                    scale: -1,
                },
            )]),
            table(vec![(
                "d",
                ColumnType::List(Box::new(ColumnType::Decimal {
                    precision: 5,
                    scale: 6,
                })),
            )]),
        ] {
            let e = check_schema(&bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("public.t"), "{e}");
        }
    }

    #[test]
    fn describe_truncates() {
        let long = "é".repeat(100);
        let d = describe(&Value::Text(long));
        assert!(d.chars().count() < 60, "{d}");
        assert_eq!(describe(&Value::Bytes(vec![0; 10])), "Bytes(10 bytes)");
    }
}
