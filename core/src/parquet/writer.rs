//! Parquet encoding of one table's batches: Athena-readable types, ZSTD, statistics, bloom
//! filters on key columns and the table schema in the file's key-value metadata.

use std::io::Write;

use ::parquet::arrow::ArrowWriter;
use ::parquet::basic::{Compression, ZstdLevel};
use ::parquet::file::metadata::KeyValue;
use ::parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use ::parquet::schema::types::ColumnPath;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef as ArrowSchemaRef;

use super::schema::{LIST_ITEM_NAME, arrow_schema, check_schema};
use crate::change::{ColumnType, TableId, TableSchema};
use crate::error::{Error, Result};

/// Key of the JSON-serialized [`TableSchema`] in the Parquet key-value metadata.
pub const SCHEMA_METADATA_KEY: &str = "tidemark.schema";
/// Maximum rows per row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// ZSTD compression level: 1, the fast strategy (level 3 took about a fifth of a CDC batch's
/// CPU for a few percent smaller files).
pub const ZSTD_LEVEL: i32 = 1;

/// Writer properties for a table's files: Parquet 1.0 writer version, ZSTD level
/// [`ZSTD_LEVEL`], page statistics, dictionary encoding, [`ROW_GROUP_ROWS`] rows per row group,
/// bloom filters on key columns and the schema under [`SCHEMA_METADATA_KEY`].
pub fn writer_properties(table: &TableSchema) -> Result<WriterProperties> {
    let schema_json = serde_json::to_string(table).map_err(|e| {
        Error::with_source(
            crate::error::ErrorKind::Fatal,
            format!("table {}: serializing the schema failed", table.id),
            e,
        )
    })?;
    let mut props = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_dictionary_enabled(true)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SCHEMA_METADATA_KEY.to_string(),
            schema_json,
        )]));
    // Row ordinals and keys are (nearly) unique: a dictionary would only cost time.
    props = props.set_column_dictionary_enabled(ColumnPath::from("_ord"), false);
    for col in table.key_columns() {
        props = props.set_column_dictionary_enabled(leaf_path(&col.name, &col.ty), false);
        // Bloom filters are sized for a full row group and folded down when it closes.
        props = props
            .set_column_bloom_filter_enabled(leaf_path(&col.name, &col.ty), true)
            .set_column_bloom_filter_max_ndv(leaf_path(&col.name, &col.ty), ROW_GROUP_ROWS as u64);
    }
    Ok(props.build())
}

/// The Parquet path of a column's leaf: `name`, or `name.list.element[.list.element..]`.
fn leaf_path(name: &str, ty: &ColumnType) -> ColumnPath {
    let mut parts = vec![name.to_string()];
    let mut ty = ty;
    while let ColumnType::List(inner) = ty {
        parts.push("list".to_string());
        parts.push(LIST_ITEM_NAME.to_string());
        ty = inner;
    }
    ColumnPath::new(parts)
}

/// Streams [`RecordBatch`]es of one table into one Parquet file on any [`Write`].
pub struct ParquetFileWriter<W: Write + Send> {
    inner: ArrowWriter<W>,
    schema: ArrowSchemaRef,
    table: TableId,
}

impl<W: Write + Send> ParquetFileWriter<W> {
    /// Starts a file for `table`; fails with [`Error::data`] if [`check_schema`] rejects it.
    pub fn new(out: W, table: &TableSchema) -> Result<Self> {
        check_schema(table)?;
        let schema = arrow_schema(table);
        let props = writer_properties(table)?;
        let inner = ArrowWriter::try_new(out, schema.clone(), Some(props))
            .map_err(|e| Error::from(e).context(format_args!("table {}", table.id)))?;
        Ok(ParquetFileWriter {
            inner,
            schema,
            table: table.id.clone(),
        })
    }

    /// Appends a batch, which must have the schema of [`arrow_schema`] for this table.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema_ref().fields() != self.schema.fields() {
            return Err(Error::fatal(format!(
                "table {}: batch schema does not match the file schema",
                self.table
            )));
        }
        self.inner
            .write(batch)
            .map_err(|e| Error::from(e).context(format_args!("table {}", self.table)))
    }

    /// Bytes written to the output so far (closed row groups only).
    pub fn bytes_written(&self) -> usize {
        self.inner.bytes_written()
    }

    /// Estimated bytes buffered in memory for the open row group.
    pub fn buffered_bytes(&self) -> usize {
        self.inner.memory_size()
    }

    /// Finishes the file (footer written) and returns the writer, flushed.
    pub fn finish(self) -> Result<W> {
        let table = self.table;
        let mut out = self
            .inner
            .into_inner()
            .map_err(|e| Error::from(e).context(format_args!("table {table}")))?;
        out.flush()?;
        Ok(out)
    }
}

/// One table's batches to the bytes of one Parquet file.
pub fn encode(table: &TableSchema, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut w = ParquetFileWriter::new(Vec::with_capacity(4096 + rows * 16), table)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::approx_constant)]
mod tests {
    use std::sync::Arc;

    use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use ::parquet::basic::{LogicalType, TimeUnit, Type as PhysicalType};
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
        TimestampMicrosecondType,
    };
    use arrow_array::{Array, ArrayRef};
    use bytes::Bytes;

    use super::*;
    use crate::change::{Column, Op, RowMeta, Value};
    use crate::parquet::TableBatchBuilder;

    fn col(name: &str, ty: ColumnType, key: bool) -> Column {
        Column {
            name: name.into(),
            ty,
            source_type: String::new(),
            key,
        }
    }

    fn list(ty: ColumnType) -> ColumnType {
        ColumnType::List(Box::new(ty))
    }

    /// One column of every type, plus nested lists.
    fn all_types() -> TableSchema {
        TableSchema {
            id: TableId::new("public", "all_types"),
            columns: vec![
                col("id", ColumnType::Int64, true),
                col("b", ColumnType::Bool, false),
                col("i16", ColumnType::Int16, false),
                col("i32", ColumnType::Int32, false),
                col("i64", ColumnType::Int64, false),
                col("f32", ColumnType::Float32, false),
                col("f64", ColumnType::Float64, false),
                col(
                    "d38",
                    ColumnType::Decimal {
                        precision: 38,
                        scale: 10,
                    },
                    false,
                ),
                col(
                    "d9",
                    ColumnType::Decimal {
                        precision: 9,
                        scale: 2,
                    },
                    false,
                ),
                col("t", ColumnType::Text, false),
                col("by", ColumnType::Bytes, false),
                col("dt", ColumnType::Date, false),
                col("ts", ColumnType::Timestamp, false),
                col("tstz", ColumnType::TimestampTz, false),
                col("li", list(ColumnType::Int32), false),
                col("lt", list(ColumnType::Text), false),
                col("lli", list(list(ColumnType::Int32)), false),
                col(
                    "ld",
                    list(ColumnType::Decimal {
                        precision: 38,
                        scale: 0,
                    }),
                    false,
                ),
            ],
        }
    }

    fn row(vals: Vec<(usize, Value)>, n: usize) -> Vec<Value> {
        let mut r = vec![Value::Null; n];
        for (i, v) in vals {
            r[i] = v;
        }
        r
    }

    fn read_back(bytes: Vec<u8>) -> (RecordBatch, Arc<::parquet::file::metadata::ParquetMetaData>) {
        let b = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes)).unwrap();
        let md = b.metadata().clone();
        let batches: Vec<RecordBatch> = b
            .with_batch_size(1 << 20)
            .build()
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(batches.len(), 1);
        (batches.into_iter().next().unwrap(), md)
    }

    const D38_MAX: i128 = 99_999_999_999_999_999_999_999_999_999_999_999_999;

    #[test]
    fn round_trip_every_type() -> Result<()> {
        let t = all_types();
        let n = t.columns.len();
        let mut b = TableBatchBuilder::new(Arc::new(t.clone()));
        let m = |op, ord, xid| RowMeta {
            op,
            pos: "00000000/0000AB01",
            ord,
            commit_ts: -1_000_001,
            xid,
        };
        // row 0: maxima, unicode, lists with nulls, nested lists
        b.push(
            &m(Op::Insert, 0, Some(42)),
            &[
                Value::I64(i64::MAX),
                Value::Bool(true),
                Value::I16(i16::MAX),
                Value::I32(i32::MAX),
                Value::I64(i64::MAX),
                Value::F32(f32::NAN),
                Value::F64(f64::INFINITY),
                Value::Decimal(D38_MAX),
                Value::Decimal(999_999_999),
                Value::Text("héllo wörld ✓ 𝄞 日本".into()),
                Value::Bytes(vec![0, 255, 1]),
                Value::Date(-719_162),
                Value::Timestamp(-62_135_596_800_000_000),
                Value::Timestamp(i64::MAX),
                Value::List(vec![Value::I32(1), Value::Null, Value::I32(i32::MIN)]),
                Value::List(vec![
                    Value::Text(String::new()),
                    Value::Null,
                    Value::Text("ü".into()),
                ]),
                Value::List(vec![
                    Value::List(vec![Value::I32(1), Value::I32(2)]),
                    Value::Null,
                    Value::List(vec![]),
                    Value::List(vec![Value::Null]),
                ]),
                Value::List(vec![Value::Decimal(-D38_MAX), Value::Decimal(D38_MAX)]),
            ],
        )?;
        // row 1: minima, empty values, negative infinities
        b.push(
            &m(Op::Update, 1, None),
            &[
                Value::I64(i64::MIN),
                Value::Bool(false),
                Value::I16(i16::MIN),
                Value::I32(i32::MIN),
                Value::I64(i64::MIN),
                Value::F32(f32::NEG_INFINITY),
                Value::F64(f64::NAN),
                Value::Decimal(-D38_MAX),
                Value::Decimal(-999_999_999),
                Value::Text(String::new()),
                Value::Bytes(vec![]),
                Value::Date(i32::MIN),
                Value::Timestamp(i64::MIN),
                Value::Timestamp(-1),
                Value::List(vec![]),
                Value::List(vec![]),
                Value::List(vec![]),
                Value::List(vec![]),
            ],
        )?;
        // row 2: all NULL
        b.push(
            &m(Op::Delete, 2, Some(-1)),
            &row(vec![(0, Value::I64(0))], n),
        )?;
        // row 3: Unavailable in three columns (one inside a list)
        b.push(
            &m(Op::Truncate, 3, None),
            &row(
                vec![
                    (0, Value::I64(3)),
                    (5, Value::F32(f32::INFINITY)),
                    (6, Value::F64(f64::NEG_INFINITY)),
                    (7, Value::Unavailable),
                    (9, Value::Unavailable),
                    (
                        15,
                        Value::List(vec![Value::Text("a".into()), Value::Unavailable]),
                    ),
                ],
                n,
            ),
        )?;
        b.push(
            &m(Op::Snapshot, 4, None),
            &row(vec![(5, Value::F32(-0.0)), (6, Value::F64(3.14))], n),
        )?;
        let batch = b.finish()?;
        let (got, md) = read_back(encode(&t, std::slice::from_ref(&batch))?);

        assert_eq!(got.schema(), arrow_schema(&t));
        assert_eq!(got.num_rows(), 5);
        // Bit-exact except NaN, which is compared separately.
        for (i, (a, e)) in got.columns().iter().zip(batch.columns()).enumerate() {
            if !matches!(i, 11 | 12) {
                assert_eq!(
                    a.as_ref(),
                    e.as_ref(),
                    "column {}",
                    got.schema().field(i).name()
                );
            }
        }

        let op = got.column(0).as_string::<i32>();
        assert_eq!(
            op.iter().collect::<Vec<_>>(),
            ["I", "U", "D", "T", "R"].map(Some)
        );
        assert_eq!(
            got.column(1).as_string::<i32>().value(0),
            "00000000/0000AB01"
        );
        assert_eq!(
            got.column(2).as_primitive::<Int64Type>().values(),
            &[0, 1, 2, 3, 4]
        );
        assert_eq!(
            got.column(3)
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            -1_000_001
        );
        let xid = got.column(4).as_primitive::<Int64Type>();
        assert_eq!(
            xid.iter().collect::<Vec<_>>(),
            [Some(42), None, Some(-1), None, None]
        );

        let un = got.column(5).as_list::<i32>();
        assert!(un.is_null(0) && un.is_null(1) && un.is_null(2) && un.is_null(4));
        let names: Vec<_> = un
            .value(3)
            .as_string::<i32>()
            .iter()
            .map(|s| s.unwrap().to_string())
            .collect();
        assert_eq!(names, ["d38", "t", "lt"]);

        let c = |name: &str| -> ArrayRef { got.column_by_name(name).unwrap().clone() };
        assert_eq!(
            c("i16").as_primitive::<Int16Type>().values(),
            &[i16::MAX, i16::MIN, 0, 0, 0]
        );
        assert_eq!(c("i32").as_primitive::<Int32Type>().value(1), i32::MIN);
        assert_eq!(c("i64").as_primitive::<Int64Type>().value(0), i64::MAX);
        let f32s = c("f32");
        let f32s = f32s.as_primitive::<Float32Type>();
        assert!(f32s.value(0).is_nan());
        assert_eq!(f32s.value(1), f32::NEG_INFINITY);
        assert!(f32s.is_null(2));
        assert_eq!(f32s.value(3), f32::INFINITY);
        assert!(f32s.value(4) == 0.0 && f32s.value(4).is_sign_negative());
        let f64s = c("f64");
        let f64s = f64s.as_primitive::<Float64Type>();
        assert_eq!(f64s.value(0), f64::INFINITY);
        assert!(f64s.value(1).is_nan());
        assert_eq!(f64s.value(3), f64::NEG_INFINITY);
        assert_eq!(f64s.value(4), 3.14);
        let d38 = c("d38");
        let d38 = d38.as_primitive::<Decimal128Type>();
        assert_eq!((d38.value(0), d38.value(1)), (D38_MAX, -D38_MAX));
        assert!(d38.is_null(3));
        assert_eq!(d38.precision(), 38);
        assert_eq!(d38.scale(), 10);
        let t_ = c("t");
        let text = t_.as_string::<i32>();
        assert_eq!(text.value(0), "héllo wörld ✓ 𝄞 日本");
        assert!(text.is_valid(1) && text.value(1).is_empty());
        assert!(text.is_null(2) && text.is_null(3));
        let by = c("by");
        assert_eq!(by.as_binary::<i32>().value(0), &[0, 255, 1]);
        assert!(by.is_valid(1) && by.as_binary::<i32>().value(1).is_empty());
        assert_eq!(c("dt").as_primitive::<Date32Type>().value(0), -719_162);
        assert_eq!(c("dt").as_primitive::<Date32Type>().value(1), i32::MIN);
        assert_eq!(
            c("ts").as_primitive::<TimestampMicrosecondType>().value(0),
            -62_135_596_800_000_000
        );
        assert_eq!(
            c("tstz")
                .as_primitive::<TimestampMicrosecondType>()
                .value(1),
            -1
        );

        let li = c("li");
        let li = li.as_list::<i32>();
        let li0 = li.value(0);
        let li0 = li0.as_primitive::<Int32Type>();
        assert_eq!(
            li0.iter().collect::<Vec<_>>(),
            [Some(1), None, Some(i32::MIN)]
        );
        assert!(li.is_valid(1) && li.value(1).is_empty());
        assert!(li.is_null(2));
        let lt = c("lt");
        let lt = lt.as_list::<i32>();
        let lt3 = lt.value(3);
        assert_eq!(
            lt3.as_string::<i32>().iter().collect::<Vec<_>>(),
            [Some("a"), None]
        );
        let lli = c("lli");
        let lli0 = lli.as_list::<i32>().value(0);
        let lli0 = lli0.as_list::<i32>();
        assert_eq!(lli0.len(), 4);
        assert_eq!(lli0.value(0).as_primitive::<Int32Type>().values(), &[1, 2]);
        assert!(lli0.is_null(1));
        assert!(lli0.is_valid(2) && lli0.value(2).is_empty());
        assert!(lli0.value(3).is_null(0));

        // Physical/logical types Athena reads: no INT96, UTC-adjusted micros for TimestampTz.
        let descr = md.file_metadata().schema_descr();
        for leaf in descr.columns() {
            assert_ne!(leaf.physical_type(), PhysicalType::INT96, "{}", leaf.path());
        }
        let leaf = |path: &str| {
            descr
                .columns()
                .iter()
                .find(|c| c.path().string() == path)
                .unwrap()
                .clone()
        };
        assert_eq!(
            leaf("ts").logical_type_ref(),
            Some(&LogicalType::timestamp(false, TimeUnit::MICROS))
        );
        assert_eq!(
            leaf("tstz").logical_type_ref(),
            Some(&LogicalType::timestamp(true, TimeUnit::MICROS))
        );
        assert_eq!(
            leaf("_commit_ts").logical_type_ref(),
            Some(&LogicalType::timestamp(true, TimeUnit::MICROS))
        );
        assert_eq!(
            leaf("d38").physical_type(),
            PhysicalType::FIXED_LEN_BYTE_ARRAY
        );
        assert!(
            descr
                .columns()
                .iter()
                .any(|c| c.path().string() == "lli.list.element.list.element")
        );
        Ok(())
    }

    #[test]
    fn unavailable_cols_is_null_when_nothing_unavailable() -> Result<()> {
        let t = all_types();
        let mut b = TableBatchBuilder::new(Arc::new(t.clone()));
        for i in 0..100 {
            let m = RowMeta {
                op: Op::Insert,
                pos: "1",
                ord: i,
                commit_ts: 0,
                xid: None,
            };
            b.push(&m, &row(vec![(0, Value::I64(i as i64))], t.columns.len()))?;
        }
        let (got, _) = read_back(encode(&t, &[b.finish()?])?);
        assert_eq!(got.column(5).null_count(), 100);
        Ok(())
    }

    #[test]
    fn file_metadata_has_schema_zstd_and_bloom_filters() -> Result<()> {
        let t = all_types();
        let mut b = TableBatchBuilder::new(Arc::new(t.clone()));
        for i in 0..10 {
            let m = RowMeta {
                op: Op::Insert,
                pos: "1",
                ord: i,
                commit_ts: 0,
                xid: None,
            };
            b.push(
                &m,
                &row(
                    vec![(0, Value::I64(i as i64)), (9, Value::Text("x".into()))],
                    t.columns.len(),
                ),
            )?;
        }
        let (_, md) = read_back(encode(&t, &[b.finish()?])?);

        let kv = md.file_metadata().key_value_metadata().unwrap();
        let json = kv
            .iter()
            .find(|kv| kv.key == SCHEMA_METADATA_KEY)
            .and_then(|kv| kv.value.clone())
            .unwrap();
        let back: TableSchema = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);

        assert_eq!(md.num_row_groups(), 1);
        let rg = md.row_group(0);
        for c in rg.columns() {
            assert!(
                matches!(c.compression(), Compression::ZSTD(_)),
                "{:?}",
                c.compression()
            );
            assert!(c.statistics().is_some(), "{}", c.column_path());
            let is_key = c.column_path().string() == "id";
            assert_eq!(
                c.bloom_filter_offset().is_some(),
                is_key,
                "{}",
                c.column_path()
            );
        }
        Ok(())
    }

    #[test]
    fn writer_streams_batches_into_row_groups() -> Result<()> {
        let t = TableSchema {
            id: TableId::new("s", "t"),
            columns: vec![col("id", ColumnType::Int32, true)],
        };
        let mut b = TableBatchBuilder::new(Arc::new(t.clone()));
        let mut w = ParquetFileWriter::new(Vec::new(), &t)?;
        let total = ROW_GROUP_ROWS + 10;
        for i in 0..total {
            let m = RowMeta {
                op: Op::Insert,
                pos: "1",
                ord: 0,
                commit_ts: 0,
                xid: None,
            };
            b.push(&m, &[Value::I32(i as i32)])?;
            if b.len() == 50_000 {
                w.write(&b.finish()?)?;
            }
        }
        w.write(&b.finish()?)?;
        let (got, md) = read_back(w.finish()?);
        assert_eq!(got.num_rows(), total);
        assert_eq!(md.num_row_groups(), 2);
        assert_eq!(md.row_group(0).num_rows(), ROW_GROUP_ROWS as i64);
        let ids = got.column(6).as_primitive::<Int32Type>();
        assert!(ids.values().iter().enumerate().all(|(i, v)| *v == i as i32));
        Ok(())
    }

    #[test]
    fn writer_rejects_foreign_batches_and_bad_schemas() -> Result<()> {
        let t = TableSchema {
            id: TableId::new("s", "t"),
            columns: vec![col("id", ColumnType::Int32, true)],
        };
        let other = TableSchema {
            id: TableId::new("s", "u"),
            columns: vec![col("id", ColumnType::Int64, true)],
        };
        let mut b = TableBatchBuilder::new(Arc::new(other));
        let mut w = ParquetFileWriter::new(Vec::new(), &t)?;
        assert!(w.write(&b.finish()?).is_err());

        let bad = TableSchema {
            id: TableId::new("s", "t"),
            columns: vec![col("_pos", ColumnType::Text, false)],
        };
        let e = ParquetFileWriter::new(Vec::new(), &bad).err().unwrap();
        assert_eq!(e.kind(), crate::error::ErrorKind::Data);

        // An empty file is a valid file.
        let bytes = encode(&t, &[])?;
        let r = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes)).unwrap();
        assert_eq!(r.metadata().file_metadata().num_rows(), 0);
        Ok(())
    }

    /// `cargo test --release -p tidemark-core parquet::writer::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_push_finish_encode_1m_rows() -> Result<()> {
        const ROWS: usize = 1_000_000;
        const FLUSH: usize = 100_000;
        let t = TableSchema {
            id: TableId::new("public", "orders"),
            columns: vec![
                col("id", ColumnType::Int64, true),
                col("customer", ColumnType::Text, false),
                col(
                    "amount",
                    ColumnType::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                    false,
                ),
                col("created_at", ColumnType::TimestampTz, false),
                col("paid", ColumnType::Bool, false),
                col("score", ColumnType::Float64, false),
            ],
        };
        let names: Vec<String> = (0..1000).map(|i| format!("customer-{i:05}")).collect();
        let rows: Vec<Vec<Value>> = (0..ROWS)
            .map(|i| {
                vec![
                    Value::I64(i as i64),
                    Value::Text(names[i % names.len()].clone()),
                    Value::Decimal((i as i128 * 7919) % 10_000_000),
                    Value::Timestamp(1_700_000_000_000_000 + i as i64 * 1000),
                    if i % 10 == 0 {
                        Value::Null
                    } else {
                        Value::Bool(i % 3 == 0)
                    },
                    Value::F64(i as f64 * 0.25),
                ]
            })
            .collect();
        let pos: Vec<String> = (0..ROWS / 100)
            .map(|i| format!("{:016X}", i * 4096))
            .collect();

        let start = std::time::Instant::now();
        let mut b = TableBatchBuilder::new(Arc::new(t.clone()));
        let mut batches = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let m = RowMeta {
                op: Op::Insert,
                pos: &pos[i / 100],
                ord: (i % 100) as u64,
                commit_ts: 1_700_000_000_000_000,
                xid: Some((i / 100) as i64),
            };
            b.push(&m, r)?;
            if b.len() == FLUSH {
                batches.push(b.finish()?);
            }
        }
        if !b.is_empty() {
            batches.push(b.finish()?);
        }
        let built = start.elapsed();
        let bytes = encode(&t, &batches)?;
        let total = start.elapsed();
        println!(
            "{ROWS} rows: push+finish {:.0} ms, encode {:.0} ms, total {:.0} ms = {:.0} rows/s; {} bytes",
            built.as_secs_f64() * 1e3,
            (total - built).as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            ROWS as f64 / total.as_secs_f64(),
            bytes.len()
        );
        Ok(())
    }
}
