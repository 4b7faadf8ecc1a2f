//! The source-neutral change model: table schemas, typed values and row operations.
//!
//! Sources map their native types onto [`ColumnType`]; the Parquet writer maps [`ColumnType`]
//! onto Athena-safe Arrow types. A row is a slice of [`Value`]s aligned with
//! [`TableSchema::columns`].

use std::fmt;
use std::sync::Arc;

/// A table's qualified name.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TableId {
    pub schema: String,
    pub name: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableId {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Logical column types. Each maps to exactly one Arrow/Parquet type (see `docs/types.md`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ColumnType {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Fixed-point decimal with `precision <= 38`; values are `Value::Decimal` scaled by `scale`.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Any text: varchar, char, text, and types written as their text form
    /// (json, uuid, inet, interval, time, enum, unbounded numeric, unknown types).
    Text,
    Bytes,
    /// Days since 1970-01-01.
    Date,
    /// Microseconds since 1970-01-01 00:00, no time zone.
    Timestamp,
    /// Microseconds since 1970-01-01 00:00 UTC.
    TimestampTz,
    /// A one-dimensional list of the element type.
    List(Box<ColumnType>),
}

/// One column of a table schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// The source's own type name, e.g. `numeric(12,2)` or `varchar(20)`.
    pub source_type: String,
    /// Part of the primary key (the real key, not the replica identity).
    pub key: bool,
}

/// A table's columns at one point of its history. A change of columns is a new `TableSchema`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSchema {
    pub id: TableId,
    pub columns: Vec<Column>,
}

pub type SchemaRef = Arc<TableSchema>;

/// Names the output reserves, compared case-insensitively (Athena folds case): the metadata
/// columns and the hive partition keys.
pub const RESERVED_NAMES: [&str; 8] = [
    "_op",
    "_pos",
    "_ord",
    "_commit_ts",
    "_xid",
    "_unavailable_cols",
    "dt",
    "snapshot_id",
];

impl TableSchema {
    /// Renames columns whose names are reserved or equal another column's ignoring case, by
    /// appending `_` until unique, so every column is distinct for Athena and never shadows a
    /// metadata column or partition key. Deterministic: the first column keeps its name.
    pub fn with_output_names(mut self) -> Self {
        let mut taken: std::collections::HashSet<String> =
            RESERVED_NAMES.iter().map(|n| n.to_string()).collect();
        for c in &mut self.columns {
            let mut name = c.name.clone();
            while taken.contains(&name.to_lowercase()) {
                name.push('_');
            }
            if name != c.name {
                tracing::warn!(table = %self.id, column = %c.name, written_as = %name, "column renamed in the output: its name is reserved or differs from another only by case");
                c.name = name;
            }
            taken.insert(c.name.to_lowercase());
        }
        self
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.key)
    }
}

/// A typed value. Its variant must agree with the column's [`ColumnType`]:
/// `Bool`-`Bool`, `I16`-`Int16`, `I32`-`Int32`, `I64`-`Int64`, `F32`-`Float32`, `F64`-`Float64`,
/// `Decimal`-`Decimal` (unscaled), `Text`-`Text`, `Bytes`-`Bytes`, `Date`-`Date`,
/// `Timestamp`-`Timestamp`/`TimestampTz`, `List`-`List`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    /// Unscaled value of a `Decimal { scale, .. }` column.
    Decimal(i128),
    Text(String),
    Bytes(Vec<u8>),
    Date(i32),
    Timestamp(i64),
    List(Vec<Value>),
    /// The true value is not known here: an unchanged TOAST value the source did not send, a
    /// non-key column of a DELETE under REPLICA IDENTITY DEFAULT, or a value with no
    /// representation in the column's type (numeric NaN in a DECIMAL). Written as NULL with the
    /// column's name listed in `_unavailable_cols`, never as a placeholder.
    Unavailable,
}

/// What happened to a row. Written to `_op` as one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// Row read by the initial snapshot (`R`).
    Snapshot,
    /// `I`
    Insert,
    /// `U`: the new row image.
    Update,
    /// `D`: the old row image (key columns at least).
    Delete,
    /// `T`: the whole table was truncated; data columns are NULL.
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Snapshot => "R",
            Op::Insert => "I",
            Op::Update => "U",
            Op::Delete => "D",
            Op::Truncate => "T",
        }
    }
}

/// Metadata written beside every row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowMeta<'a> {
    pub op: Op,
    /// The source position that orders rows (`_pos`): zero-padded so it sorts as text.
    pub pos: &'a str,
    /// Ordinal of the row inside its transaction or snapshot (`_ord`), from 0.
    pub ord: u64,
    /// Commit time, microseconds since the epoch, UTC (`_commit_ts`).
    pub commit_ts: i64,
    /// Source transaction id (`_xid`), where the source has one.
    pub xid: Option<i64>,
}

/// `-123.45` at `scale` 2 -> -12345. `None` when it does not fit or is not a number.
pub fn parse_decimal(s: &str, scale: i8) -> Option<i128> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let scale = usize::try_from(scale).ok()?;
    if frac.len() > scale || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        v = v.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    for _ in frac.len()..scale {
        v = v.checked_mul(10)?;
    }
    Some(if neg { -v } else { v })
}

/// The decimal text of the unscaled value `v` at `scale`: 12345 at 2 -> `123.45`.
pub fn format_decimal(v: i128, scale: i8) -> String {
    if scale <= 0 {
        let zeros = "0".repeat(usize::from(scale.unsigned_abs()));
        return if v == 0 {
            "0".into()
        } else {
            format!("{v}{zeros}")
        };
    }
    let scale = usize::from(scale.unsigned_abs());
    let digits = v.unsigned_abs().to_string();
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    format!("{}{int}.{frac}", if v < 0 { "-" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str) -> Column {
        Column {
            name: name.into(),
            ty: ColumnType::Int32,
            source_type: "int4".into(),
            key: false,
        }
    }

    #[test]
    fn reserved_and_case_colliding_names_get_a_suffix() {
        let t = TableSchema {
            id: TableId::new("public", "t"),
            columns: vec![
                col("id"),
                col("dt"),
                col("dt_"),
                col("_op"),
                col("Id"),
                col("DT"),
            ],
        }
        .with_output_names();
        let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "dt_", "dt__", "_op_", "Id_", "DT___"]);
    }

    #[test]
    fn decimals_format_and_parse_back() {
        for (v, scale, text) in [
            (12345i128, 2i8, "123.45"),
            (-5, 3, "-0.005"),
            (7, 0, "7"),
            (0, 2, "0.00"),
        ] {
            assert_eq!(format_decimal(v, scale), text);
            assert_eq!(parse_decimal(text, scale), Some(v));
        }
        assert_eq!(parse_decimal("1.234", 2), None);
    }
}
