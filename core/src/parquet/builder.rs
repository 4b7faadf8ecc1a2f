//! Row-at-a-time accumulation of one table's changes into Arrow builders.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, ListArray, RecordBatch};
use arrow_buffer::{NullBufferBuilder, OffsetBufferBuilder};
use arrow_schema::{FieldRef, SchemaRef as ArrowSchemaRef};

use super::schema::{
    COL_UNAVAILABLE, UTC, arrow_schema, data_type, decimal_max, describe, fixed_width,
    list_item_field, type_name,
};
use crate::change::{ColumnType, RowMeta, SchemaRef, TableSchema, Value};
use crate::error::{Error, Result};

/// Rows per builder allocated up front; builders grow beyond it as needed.
const INITIAL_ROWS: usize = 1024;
/// Upper bound of [`TableBatchBuilder::approx_bytes`]: keeps every i32 offset of a batch in range.
const MAX_BATCH_BYTES: usize = i32::MAX as usize;

/// Accumulates rows of one table (one [`TableSchema`]) into Arrow builders. Memory is bounded
/// by the caller, who flushes on [`len`](Self::len)/[`approx_bytes`](Self::approx_bytes).
pub struct TableBatchBuilder {
    schema: SchemaRef,
    arrow: ArrowSchemaRef,
    op: StringBuilder,
    pos: StringBuilder,
    ord: Int64Builder,
    commit_ts: TimestampMicrosecondBuilder,
    xid: Int64Builder,
    unavailable: UnavailableBuilder,
    /// One builder per data column, in column order.
    columns: Vec<ColumnBuilder>,
    /// Bytes every row adds regardless of its values (value slots and offsets).
    row_fixed_bytes: usize,
    len: usize,
    bytes: usize,
    /// Indices of the current row's unavailable columns; reused across rows.
    scratch_unavailable: Vec<usize>,
}

impl TableBatchBuilder {
    pub fn new(schema: SchemaRef) -> Self {
        let arrow = arrow_schema(&schema);
        let columns = schema
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(&c.ty))
            .collect();
        let row_fixed_bytes = 4
            + 1
            + 4
            + 8
            + 8
            + 8
            + 4
            + schema
                .columns
                .iter()
                .map(|c| fixed_width(&c.ty))
                .sum::<usize>();
        TableBatchBuilder {
            arrow,
            op: StringBuilder::with_capacity(INITIAL_ROWS, INITIAL_ROWS),
            pos: StringBuilder::with_capacity(INITIAL_ROWS, INITIAL_ROWS * 24),
            ord: Int64Builder::with_capacity(INITIAL_ROWS),
            commit_ts: TimestampMicrosecondBuilder::with_capacity(INITIAL_ROWS).with_timezone(UTC),
            xid: Int64Builder::with_capacity(INITIAL_ROWS),
            unavailable: UnavailableBuilder::new(),
            columns,
            row_fixed_bytes,
            len: 0,
            bytes: 0,
            scratch_unavailable: Vec::with_capacity(schema.columns.len()),
            schema,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The Arrow schema of the batches, as [`arrow_schema()`](super::arrow_schema) returns it.
    pub fn arrow_schema(&self) -> &ArrowSchemaRef {
        &self.arrow
    }

    /// Appends one row. `values.len()` must equal `schema.columns.len()` and each value's variant
    /// must agree with its column's [`ColumnType`] ([`Value::Null`] and [`Value::Unavailable`] fit
    /// any column; inside a list an unavailable item is written as a NULL item and the column is
    /// listed in `_unavailable_cols`). A decimal must fit its precision.
    ///
    /// On a mismatch returns [`Error::data`] naming table, column, expected type and value, and
    /// appends nothing.
    pub fn push(&mut self, meta: &RowMeta<'_>, values: &[Value]) -> Result<()> {
        let table: &TableSchema = &self.schema;
        if values.len() != table.columns.len() {
            return Err(Error::data(format!(
                "table {}: row has {} values, the schema has {} columns",
                table.id,
                values.len(),
                table.columns.len()
            )));
        }
        let ord = i64::try_from(meta.ord).map_err(|_| {
            Error::data(format!(
                "table {}: row ordinal {} exceeds i64",
                table.id, meta.ord
            ))
        })?;

        self.scratch_unavailable.clear();
        let mut var_bytes = meta.pos.len();
        for (i, (col, v)) in table.columns.iter().zip(values).enumerate() {
            let mut acc = RowAcc::default();
            check_value(&col.ty, v, &mut acc).map_err(|r| {
                Error::data(format!(
                    "table {}, column `{}`: {}",
                    table.id,
                    col.name,
                    r.message()
                ))
            })?;
            var_bytes += acc.bytes;
            if acc.unavailable {
                self.scratch_unavailable.push(i);
                var_bytes += 4 + col.name.len();
            }
        }
        let row_bytes = self.row_fixed_bytes + var_bytes;
        if self.bytes + row_bytes > MAX_BATCH_BYTES {
            return Err(Error::data(format!(
                "table {}: row of {row_bytes} bytes does not fit a batch holding {} bytes \
                 (limit {MAX_BATCH_BYTES}); flush earlier",
                table.id, self.bytes
            )));
        }

        self.op.append_value(meta.op.code());
        self.pos.append_value(meta.pos);
        self.ord.append_value(ord);
        self.commit_ts.append_value(meta.commit_ts);
        self.xid.append_option(meta.xid);
        self.unavailable.append(&self.scratch_unavailable, table)?;
        for ((col, b), v) in table.columns.iter().zip(&mut self.columns).zip(values) {
            b.append(v).map_err(|e| {
                e.context(format_args!("table {}, column `{}`", table.id, col.name))
            })?;
        }
        self.len += 1;
        self.bytes += row_bytes;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rough bytes held by the builders (for flush thresholds; O(1)).
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the rows appended so far as one [`RecordBatch`] and resets the builder for reuse.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.arrow.fields().len());
        arrays.push(Arc::new(self.op.finish()));
        arrays.push(Arc::new(self.pos.finish()));
        arrays.push(Arc::new(self.ord.finish()));
        arrays.push(Arc::new(self.commit_ts.finish()));
        arrays.push(Arc::new(self.xid.finish()));
        // Every builder is reset even if one fails, so the builder stays usable.
        let mut failed = None;
        let parts = std::iter::once(self.unavailable.finish())
            .chain(self.columns.iter_mut().map(ColumnBuilder::finish));
        for part in parts {
            match part {
                Ok(a) => arrays.push(a),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        self.len = 0;
        self.bytes = 0;
        if let Some(e) = failed {
            return Err(e.context(format_args!("table {}", self.schema.id)));
        }
        RecordBatch::try_new(self.arrow.clone(), arrays).map_err(|e| {
            Error::with_source(
                crate::error::ErrorKind::Fatal,
                format!("table {}: building the Arrow batch failed", self.schema.id),
                e,
            )
        })
    }
}

impl std::fmt::Debug for TableBatchBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableBatchBuilder")
            .field("table", &self.schema.id)
            .field("len", &self.len)
            .field("approx_bytes", &self.bytes)
            .finish()
    }
}

/// What validating one value found.
#[derive(Default)]
struct RowAcc {
    /// Variable-length bytes the value adds beyond its fixed width.
    bytes: usize,
    /// The value is, or contains, [`Value::Unavailable`].
    unavailable: bool,
}

/// Why a value was rejected.
enum Reject<'a> {
    Type {
        expected: &'a ColumnType,
        got: &'a Value,
    },
    DecimalRange {
        precision: u8,
        scale: i8,
        got: i128,
    },
    DecimalPrecision(u8),
}

impl Reject<'_> {
    fn message(&self) -> String {
        match self {
            Reject::Type { expected, got } => {
                format!("expected {}, got {}", type_name(expected), describe(got))
            }
            Reject::DecimalRange {
                precision,
                scale,
                got,
            } => format!(
                "expected Decimal({precision},{scale}), got unscaled {got} which exceeds \
                 {precision} digits"
            ),
            Reject::DecimalPrecision(p) => {
                format!("expected Decimal with precision {p}, which is outside 1..=38")
            }
        }
    }
}

/// Checks that `v` fits a column of type `ty`, adding its variable bytes to `acc`.
fn check_value<'a>(ty: &'a ColumnType, v: &'a Value, acc: &mut RowAcc) -> Result<(), Reject<'a>> {
    match (ty, v) {
        (_, Value::Null) => Ok(()),
        (_, Value::Unavailable) => {
            acc.unavailable = true;
            Ok(())
        }
        (ColumnType::Bool, Value::Bool(_))
        | (ColumnType::Int16, Value::I16(_))
        | (ColumnType::Int32, Value::I32(_))
        | (ColumnType::Int64, Value::I64(_))
        | (ColumnType::Float32, Value::F32(_))
        | (ColumnType::Float64, Value::F64(_))
        | (ColumnType::Date, Value::Date(_))
        | (ColumnType::Timestamp | ColumnType::TimestampTz, Value::Timestamp(_)) => Ok(()),
        (ColumnType::Decimal { precision, scale }, Value::Decimal(d)) => {
            let max = decimal_max(*precision).ok_or(Reject::DecimalPrecision(*precision))?;
            if d.unsigned_abs() > max {
                return Err(Reject::DecimalRange {
                    precision: *precision,
                    scale: *scale,
                    got: *d,
                });
            }
            Ok(())
        }
        (ColumnType::Text, Value::Text(s)) => {
            acc.bytes += s.len();
            Ok(())
        }
        (ColumnType::Bytes, Value::Bytes(b)) => {
            acc.bytes += b.len();
            Ok(())
        }
        (ColumnType::List(inner), Value::List(items)) => {
            acc.bytes += items.len() * fixed_width(inner);
            for item in items {
                check_value(inner, item, acc)?;
            }
            Ok(())
        }
        _ => Err(Reject::Type {
            expected: ty,
            got: v,
        }),
    }
}

/// The builder of one data column, chosen once from its [`ColumnType`].
enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Text(StringBuilder),
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    /// `Timestamp` and `TimestampTz`; the builder carries the time zone.
    Timestamp(TimestampMicrosecondBuilder),
    List(Box<ListBuilder>),
}

struct ListBuilder {
    item_field: FieldRef,
    offsets: OffsetBufferBuilder<i32>,
    nulls: NullBufferBuilder,
    items: ColumnBuilder,
}

impl ColumnBuilder {
    fn new(ty: &ColumnType) -> Self {
        let n = INITIAL_ROWS;
        match ty {
            ColumnType::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(n)),
            ColumnType::Int16 => ColumnBuilder::Int16(Int16Builder::with_capacity(n)),
            ColumnType::Int32 => ColumnBuilder::Int32(Int32Builder::with_capacity(n)),
            ColumnType::Int64 => ColumnBuilder::Int64(Int64Builder::with_capacity(n)),
            ColumnType::Float32 => ColumnBuilder::Float32(Float32Builder::with_capacity(n)),
            ColumnType::Float64 => ColumnBuilder::Float64(Float64Builder::with_capacity(n)),
            ColumnType::Decimal { .. } => ColumnBuilder::Decimal(
                Decimal128Builder::with_capacity(n).with_data_type(data_type(ty)),
            ),
            ColumnType::Text => ColumnBuilder::Text(StringBuilder::with_capacity(n, n * 16)),
            ColumnType::Bytes => ColumnBuilder::Bytes(BinaryBuilder::with_capacity(n, n * 16)),
            ColumnType::Date => ColumnBuilder::Date(Date32Builder::with_capacity(n)),
            ColumnType::Timestamp => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(n))
            }
            ColumnType::TimestampTz => ColumnBuilder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(n).with_timezone(UTC),
            ),
            ColumnType::List(inner) => ColumnBuilder::List(Box::new(ListBuilder {
                item_field: list_item_field(inner),
                offsets: OffsetBufferBuilder::new(n),
                nulls: NullBufferBuilder::new(n),
                items: ColumnBuilder::new(inner),
            })),
        }
    }

    /// Appends a value already accepted by [`check_value`]; NULL for Null and Unavailable.
    fn append(&mut self, v: &Value) -> Result<()> {
        match (self, v) {
            (b, Value::Null | Value::Unavailable) => b.append_null(),
            (ColumnBuilder::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (ColumnBuilder::Int16(b), Value::I16(x)) => b.append_value(*x),
            (ColumnBuilder::Int32(b), Value::I32(x)) => b.append_value(*x),
            (ColumnBuilder::Int64(b), Value::I64(x)) => b.append_value(*x),
            (ColumnBuilder::Float32(b), Value::F32(x)) => b.append_value(*x),
            (ColumnBuilder::Float64(b), Value::F64(x)) => b.append_value(*x),
            (ColumnBuilder::Decimal(b), Value::Decimal(x)) => b.append_value(*x),
            (ColumnBuilder::Text(b), Value::Text(x)) => b.append_value(x),
            (ColumnBuilder::Bytes(b), Value::Bytes(x)) => b.append_value(x),
            (ColumnBuilder::Date(b), Value::Date(x)) => b.append_value(*x),
            (ColumnBuilder::Timestamp(b), Value::Timestamp(x)) => b.append_value(*x),
            (ColumnBuilder::List(l), Value::List(items)) => {
                for item in items {
                    l.items.append(item)?;
                }
                l.offsets
                    .try_push_length(items.len())
                    .map_err(|e| Error::fatal(format!("list offsets overflow: {e}")))?;
                l.nulls.append_non_null();
            }
            (_, v) => {
                return Err(Error::fatal(format!(
                    "value {} reached a builder of another type after validation",
                    describe(v)
                )));
            }
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal(b) => b.append_null(),
            ColumnBuilder::Text(b) => b.append_null(),
            ColumnBuilder::Bytes(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
            ColumnBuilder::List(l) => {
                // A zero length cannot overflow.
                let _ = l.offsets.try_push_length(0);
                l.nulls.append_null();
            }
        }
    }

    /// Takes the values appended so far as an array and resets the builder.
    fn finish(&mut self) -> Result<ArrayRef> {
        Ok(match self {
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b) => Arc::new(b.finish()),
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
            ColumnBuilder::Bytes(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
            ColumnBuilder::List(l) => {
                let items = l.items.finish()?;
                let offsets = std::mem::replace(&mut l.offsets, OffsetBufferBuilder::new(0))
                    .try_finish()
                    .map_err(|e| Error::fatal(format!("list offsets overflow: {e}")))?;
                let nulls = l.nulls.finish();
                Arc::new(ListArray::try_new(
                    l.item_field.clone(),
                    offsets,
                    items,
                    nulls,
                )?)
            }
        })
    }
}

/// `_unavailable_cols`: NULL, or the names of the row's unavailable columns.
struct UnavailableBuilder {
    item_field: FieldRef,
    offsets: OffsetBufferBuilder<i32>,
    nulls: NullBufferBuilder,
    names: StringBuilder,
}

impl UnavailableBuilder {
    fn new() -> Self {
        UnavailableBuilder {
            item_field: list_item_field(&ColumnType::Text),
            offsets: OffsetBufferBuilder::new(INITIAL_ROWS),
            nulls: NullBufferBuilder::new(INITIAL_ROWS),
            names: StringBuilder::new(),
        }
    }

    /// Appends the names of columns `indices` of `table`, or NULL when there are none.
    fn append(&mut self, indices: &[usize], table: &TableSchema) -> Result<()> {
        for &i in indices {
            let col = table
                .columns
                .get(i)
                .ok_or_else(|| Error::fatal(format!("{COL_UNAVAILABLE}: no column {i}")))?;
            self.names.append_value(&col.name);
        }
        self.offsets
            .try_push_length(indices.len())
            .map_err(|e| Error::fatal(format!("{COL_UNAVAILABLE} offsets overflow: {e}")))?;
        self.nulls.append(!indices.is_empty());
        Ok(())
    }

    fn finish(&mut self) -> Result<ArrayRef> {
        let offsets = std::mem::replace(&mut self.offsets, OffsetBufferBuilder::new(INITIAL_ROWS))
            .try_finish()
            .map_err(|e| Error::fatal(format!("{COL_UNAVAILABLE} offsets overflow: {e}")))?;
        let names: ArrayRef = Arc::new(self.names.finish());
        let nulls = self.nulls.finish();
        Ok(Arc::new(ListArray::try_new(
            self.item_field.clone(),
            offsets,
            names,
            nulls,
        )?))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::change::{Column, Op, TableId};
    use crate::error::ErrorKind;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int32Type, Int64Type};
    use arrow_array::{Array, ListArray};

    fn table(cols: Vec<(&str, ColumnType)>) -> SchemaRef {
        Arc::new(TableSchema {
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
        })
    }

    fn meta(ord: u64) -> RowMeta<'static> {
        RowMeta {
            op: Op::Insert,
            pos: "0000000001",
            ord,
            commit_ts: 1_700_000_000_000_000,
            xid: Some(7),
        }
    }

    #[test]
    fn mismatch_is_rejected_and_appends_nothing() {
        let t = table(vec![
            ("id", ColumnType::Int64),
            ("name", ColumnType::Text),
            (
                "amount",
                ColumnType::Decimal {
                    precision: 5,
                    scale: 2,
                },
            ),
            ("xs", ColumnType::List(Box::new(ColumnType::Int32))),
        ]);
        let mut b = TableBatchBuilder::new(t);
        let good = [
            Value::I64(1),
            Value::Text("a".into()),
            Value::Decimal(99_999),
            Value::List(vec![Value::I32(1)]),
        ];
        b.push(&meta(0), &good).unwrap();
        let bytes = b.approx_bytes();

        let bad_rows = [
            // wrong variant in the last-but-one column: earlier columns must not be touched
            vec![
                Value::I64(2),
                Value::Text("b".into()),
                Value::Text("1.00".into()),
                Value::Null,
            ],
            vec![Value::I32(2), Value::Null, Value::Null, Value::Null],
            // out of precision
            vec![
                Value::I64(2),
                Value::Null,
                Value::Decimal(100_000),
                Value::Null,
            ],
            vec![
                Value::I64(2),
                Value::Null,
                Value::Decimal(-100_000),
                Value::Null,
            ],
            // list element of the wrong type, after a good one
            vec![
                Value::I64(2),
                Value::Null,
                Value::Null,
                Value::List(vec![Value::I32(1), Value::I64(2)]),
            ],
            // too few values
            vec![Value::I64(2)],
        ];
        for row in &bad_rows {
            let e = b.push(&meta(1), row).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Data);
            let msg = e.to_string();
            assert!(msg.contains("public.t"), "{msg}");
            assert_eq!(b.len(), 1);
            assert_eq!(b.approx_bytes(), bytes);
        }
        let e = b.push(&meta(1), &bad_rows[0]).unwrap_err().to_string();
        assert!(
            e.contains("amount") && e.contains("Decimal(5,2)") && e.contains("Text(\"1.00\")"),
            "{e}"
        );
        let e = b.push(&meta(1), &bad_rows[4]).unwrap_err().to_string();
        assert!(
            e.contains("xs") && e.contains("Int32") && e.contains("I64(2)"),
            "{e}"
        );
        let e = b.push(&meta(1), &bad_rows[2]).unwrap_err().to_string();
        assert!(e.contains("100000"), "{e}");

        b.push(&meta(1), &good).unwrap();
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(
            batch.column(6).as_primitive::<Int64Type>().values(),
            &[1, 1]
        );
        assert_eq!(
            batch.column(8).as_primitive::<Decimal128Type>().values(),
            &[99_999, 99_999]
        );
        let xs = batch.column(9).as_list::<i32>();
        assert_eq!(xs.value_offsets(), &[0, 1, 2]);
    }

    #[test]
    fn builder_is_send() {
        fn send<T: Send>() {}
        send::<TableBatchBuilder>();
    }

    #[test]
    fn ord_beyond_i64_is_rejected() {
        let mut b = TableBatchBuilder::new(table(vec![("id", ColumnType::Int64)]));
        let e = b.push(&meta(u64::MAX), &[Value::I64(1)]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Data);
        assert!(b.is_empty());
    }

    #[test]
    fn finish_resets_for_reuse() {
        let mut b = TableBatchBuilder::new(table(vec![
            ("id", ColumnType::Int32),
            ("xs", ColumnType::List(Box::new(ColumnType::Text))),
        ]));
        for round in 0..3 {
            for i in 0..(round + 2) {
                let xs = if i % 2 == 0 {
                    Value::List(vec![Value::Text("x".into())])
                } else {
                    Value::Unavailable
                };
                b.push(&meta(i as u64), &[Value::I32(i), xs]).unwrap();
            }
            assert!(b.approx_bytes() > 0);
            let batch = b.finish().unwrap();
            assert_eq!(batch.num_rows(), (round + 2) as usize);
            assert!(b.is_empty());
            assert_eq!(b.approx_bytes(), 0);
            assert_eq!(batch.column(6).as_primitive::<Int32Type>().value(1), 1);
            let un = batch.column(5).as_list::<i32>();
            assert!(un.is_null(0));
            assert_eq!(un.value(1).as_string::<i32>().value(0), "xs");
        }
        let empty = b.finish().unwrap();
        assert_eq!(empty.num_rows(), 0);
        assert_eq!(empty.schema(), *b.arrow_schema());
    }

    #[test]
    fn unavailable_list_item_is_null_item_and_listed() {
        let mut b = TableBatchBuilder::new(table(vec![
            ("a", ColumnType::List(Box::new(ColumnType::Int32))),
            ("b", ColumnType::Int32),
        ]));
        b.push(
            &meta(0),
            &[
                Value::List(vec![Value::I32(1), Value::Unavailable]),
                Value::I32(2),
            ],
        )
        .unwrap();
        let batch = b.finish().unwrap();
        let un = batch.column(5).as_list::<i32>();
        let names = un.value(0);
        assert_eq!(
            names.as_string::<i32>().iter().collect::<Vec<_>>(),
            [Some("a")]
        );
        let a: &ListArray = batch.column(6).as_list::<i32>();
        let items = a.value(0);
        assert_eq!(items.len(), 2);
        assert!(items.is_null(1));
    }

    #[test]
    fn approx_bytes_grows_with_content() {
        let mut b = TableBatchBuilder::new(table(vec![("s", ColumnType::Text)]));
        b.push(&meta(0), &[Value::Null]).unwrap();
        let one = b.approx_bytes();
        b.push(&meta(1), &[Value::Text("x".repeat(1000))]).unwrap();
        assert!(b.approx_bytes() >= 2 * one + 1000);
    }
}
