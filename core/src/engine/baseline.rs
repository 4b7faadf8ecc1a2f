//! S3-versioned baselines: one version of one object → a Parquet snapshot of one table, and
//! the baseline part of a Kinesis pipeline's composite position.
//!
//! Contract:
//! - a version is read whole from a local copy, streamed row by row into snapshot parts of
//!   `part_rows` rows (memory stays bounded by one part), and written under
//!   `snapshot/snapshot_id=<version id>/part-NNNNN.parquet`; the keys derive only from the
//!   version, so a replay rewrites the same objects;
//! - the position `<pipeline>#baseline` moves only after every part is durable, and only
//!   forward (by the version's LastModified): applying an older version changes nothing;
//! - the baseline covers Kinesis records by its [`Covers`] rule; the ingest skips covered records
//!   ([`Covers::covers`]).
//!
//! Inputs: JSON lines (`.jsonl`, `.ndjson`, `.json`), CSV with a header (`.csv`), Parquet
//! (`.parquet`), DynamoDB export-to-S3 data files (`{"Item": {...}}` lines, detected by
//! content), each optionally gzip- or zstd-compressed (detected by magic bytes). JSON, CSV and
//! DynamoDB columns are text (the value's exact text); Parquet columns keep their types.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use crate::change::{Column, ColumnType, Op, RowMeta, TableId, TableSchema, Value};
use crate::error::{Error, ErrorKind, Result};
use crate::output::Layout;
pub use crate::position::{BaselinePosition, Covers};
use crate::source::snapshot::Part;

/// The schema (namespace) of baseline tables named after their object.
pub const NAMESPACE: &str = "baseline";

/// The table a baseline object fills: `table` when given (`schema.table`), else
/// `baseline.<file name without extensions>`.
pub fn table_for(key: &str, table: Option<&str>) -> TableId {
    if let Some(t) = table.filter(|t| !t.is_empty()) {
        return match t.split_once('.') {
            Some((s, n)) => TableId::new(s, n),
            None => TableId::new(NAMESPACE, t),
        };
    }
    let file = key.rsplit('/').next().unwrap_or(key);
    let stem = file.split('.').next().unwrap_or(file);
    TableId::new(NAMESPACE, if stem.is_empty() { "baseline" } else { stem })
}

/// A decompressing reader chosen by the file's magic bytes (gzip, zstd, or none).
fn open_decompressed(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let mut f = std::fs::File::open(path)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    let f = std::fs::File::open(path)?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f))),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(BufReader::new(
            zstd::stream::read::Decoder::new(f).map_err(Error::from)?,
        )),
        _ => Box::new(BufReader::with_capacity(1 << 16, f)),
    })
}

/// Input format by the key's extensions (before a compression suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    JsonLines,
    Csv,
    Parquet,
}

fn format_of(key: &str) -> Result<Format> {
    let lower = key.to_ascii_lowercase();
    let base = lower
        .trim_end_matches(".gz")
        .trim_end_matches(".zst")
        .trim_end_matches(".zstd");
    if base.ends_with(".csv") {
        Ok(Format::Csv)
    } else if base.ends_with(".parquet") {
        Ok(Format::Parquet)
    } else if base.ends_with(".jsonl") || base.ends_with(".ndjson") || base.ends_with(".json") {
        Ok(Format::JsonLines)
    } else {
        Err(Error::config(format!(
            "baseline object {key:?}: unknown format; name it .jsonl/.ndjson/.json, .csv or .parquet (optionally .gz/.zst)"
        )))
    }
}

/// Rows of the current part, with the union of their columns.
struct PartRows {
    columns: Vec<Column>,
    rows: Vec<Vec<(usize, Value)>>,
}

impl PartRows {
    fn new() -> Self {
        PartRows {
            columns: Vec::new(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, row: Vec<(Column, Value)>) {
        let mut out = Vec::with_capacity(row.len());
        for (col, v) in row {
            let i = match self.columns.iter().position(|c| c.name == col.name) {
                Some(i) => i,
                None => {
                    self.columns.push(col);
                    self.columns.len() - 1
                }
            };
            out.push((i, v));
        }
        self.rows.push(out);
    }
}

/// Where [`write_snapshot`] puts a version's rows.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotInto<'a> {
    pub layout: &'a Layout,
    pub table: &'a TableId,
    /// The version id: names the snapshot's objects.
    pub snapshot_id: &'a str,
    /// `_commit_ts` of every row (the version's LastModified, UNIX µs).
    pub commit_ts: i64,
    pub part_rows: usize,
}

/// Writes the snapshot of one local copy of a version: parts are handed to `put` as
/// `(key, bytes)` in order. Returns the number of rows. Runs on a blocking thread.
pub fn write_snapshot(
    path: &Path,
    key: &str,
    into: &SnapshotInto<'_>,
    put: &mut dyn FnMut(String, Vec<u8>) -> Result<()>,
) -> Result<u64> {
    let SnapshotInto {
        layout,
        table,
        snapshot_id,
        commit_ts,
        part_rows,
    } = *into;
    let mut part = 0u32;
    let mut total = 0u64;
    let mut flush = |rows: &mut PartRows, total: u64| -> Result<()> {
        if rows.rows.is_empty() {
            return Ok(());
        }
        let schema = Arc::new(
            TableSchema {
                id: table.clone(),
                columns: rows.columns.clone(),
            }
            .with_output_names(),
        );
        // The database snapshot's part file: the same row groups.
        let mut b = Part::new(&schema)?;
        let pos = "0".repeat(crate::position::SEQ_POS_WIDTH);
        let first = total - rows.rows.len() as u64;
        let mut values = vec![Value::Null; rows.columns.len()];
        for (n, row) in rows.rows.iter_mut().enumerate() {
            values.iter_mut().for_each(|v| *v = Value::Null);
            for (i, v) in row.drain(..) {
                values[i] = v;
            }
            let meta = RowMeta {
                op: Op::Snapshot,
                pos: &pos,
                ord: first + n as u64,
                commit_ts,
                xid: None,
            };
            b.push(&meta, &values)
                .map_err(|e| e.context(format!("baseline row {}", first + n as u64 + 1)))?;
        }
        put(layout.snapshot_key(table, snapshot_id, part), b.finish()?)?;
        part += 1;
        *rows = PartRows::new();
        Ok(())
    };
    let mut rows = PartRows::new();
    let mut emit =
        |row: Vec<(Column, Value)>, rows: &mut PartRows, total: &mut u64| -> Result<()> {
            rows.push(row);
            *total += 1;
            if rows.rows.len() >= part_rows {
                flush(rows, *total)?;
            }
            Ok(())
        };
    match format_of(key)? {
        Format::JsonLines => {
            let reader = open_decompressed(path)?;
            for (n, line) in reader.lines().enumerate() {
                let line =
                    line.map_err(|e| Error::data(format!("baseline line {}: {e}", n + 1)))?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(&line)
                    .map_err(|e| Error::data(format!("baseline line {}: not JSON: {e}", n + 1)))?;
                emit(json_row(&v, n + 1)?, &mut rows, &mut total)?;
            }
        }
        Format::Csv => {
            let reader = open_decompressed(path)?;
            let mut csv = csv::ReaderBuilder::new()
                .flexible(false)
                .from_reader(reader);
            let header: Vec<String> = csv
                .headers()
                .map_err(|e| Error::data(format!("baseline CSV header: {e}")))?
                .iter()
                .map(str::to_string)
                .collect();
            for (n, rec) in csv.records().enumerate() {
                let rec =
                    rec.map_err(|e| Error::data(format!("baseline CSV row {}: {e}", n + 1)))?;
                let row = header
                    .iter()
                    .zip(rec.iter())
                    .map(|(h, v)| {
                        (
                            text_column(h),
                            if v.is_empty() {
                                Value::Null
                            } else {
                                Value::Text(v.to_string())
                            },
                        )
                    })
                    .collect();
                emit(row, &mut rows, &mut total)?;
            }
        }
        Format::Parquet => {
            let mut magic = [0u8; 4];
            let n = std::fs::File::open(path)?.read(&mut magic)?;
            if &magic[..n] != b"PAR1" {
                return Err(Error::data(format!(
                    "baseline {key:?} is not a Parquet file (no PAR1 header); Parquet baselines are read as they are: do not gzip/zstd them (Parquet compresses internally)"
                )));
            }
            let file = std::fs::File::open(path)?;
            let reader =
                ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| Error::data(format!("baseline Parquet: {e}")))?
                    .with_batch_size(8192)
                    .build()
                    .map_err(|e| Error::data(format!("baseline Parquet: {e}")))?;
            for batch in reader {
                let batch = batch.map_err(|e| Error::data(format!("baseline Parquet: {e}")))?;
                let schema = batch.schema();
                let cols: Vec<(Column, &dyn arrow_array::Array)> = schema
                    .fields()
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, a)| {
                        (
                            Column {
                                name: f.name().clone(),
                                ty: arrow_column_type(f.data_type()),
                                source_type: f.data_type().to_string(),
                                key: false,
                            },
                            a.as_ref(),
                        )
                    })
                    .collect();
                for r in 0..batch.num_rows() {
                    let row = cols
                        .iter()
                        .map(|(c, a)| Ok((c.clone(), arrow_value(&c.ty, *a, r)?)))
                        .collect::<Result<Vec<_>>>()?;
                    emit(row, &mut rows, &mut total)?;
                }
            }
        }
    }
    flush(&mut rows, total)?;
    Ok(total)
}

fn text_column(name: &str) -> Column {
    Column {
        name: name.to_string(),
        ty: ColumnType::Text,
        source_type: "text".into(),
        key: false,
    }
}

/// A JSON-lines row, or a DynamoDB export line (`{"Item": {attr: {"S": ...}}}`).
fn json_row(v: &serde_json::Value, line: usize) -> Result<Vec<(Column, Value)>> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::data(format!("baseline line {line}: not a JSON object")))?;
    if let (1, Some(item)) = (obj.len(), obj.get("Item").and_then(|i| i.as_object())) {
        return item
            .iter()
            .map(|(k, a)| {
                crate::codec::dynamodb::attribute(a)
                    .map(|v| (text_column(k), v))
                    .ok_or_else(|| {
                        Error::data(format!(
                            "baseline line {line}: attribute {k:?} is not DynamoDB JSON"
                        ))
                    })
            })
            .collect();
    }
    Ok(obj
        .iter()
        .map(|(k, v)| (text_column(k), crate::codec::json_text(v)))
        .collect())
}

fn arrow_column_type(t: &arrow_schema::DataType) -> ColumnType {
    use arrow_schema::DataType as D;
    match t {
        D::Boolean => ColumnType::Bool,
        D::Int8 | D::Int16 | D::UInt8 => ColumnType::Int16,
        D::Int32 | D::UInt16 => ColumnType::Int32,
        D::Int64 | D::UInt32 => ColumnType::Int64,
        D::UInt64 => ColumnType::Decimal {
            precision: 20,
            scale: 0,
        },
        D::Float32 => ColumnType::Float32,
        D::Float64 => ColumnType::Float64,
        D::Decimal128(p, s) if *p <= 38 => ColumnType::Decimal {
            precision: *p,
            scale: *s,
        },
        D::Binary | D::LargeBinary => ColumnType::Bytes,
        D::Date32 => ColumnType::Date,
        D::Timestamp(_, None) => ColumnType::Timestamp,
        D::Timestamp(_, Some(_)) => ColumnType::TimestampTz,
        _ => ColumnType::Text,
    }
}

fn arrow_value(ty: &ColumnType, a: &dyn arrow_array::Array, r: usize) -> Result<Value> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::{DataType as D, TimeUnit};
    if a.is_null(r) {
        return Ok(Value::Null);
    }
    let v = match (a.data_type(), ty) {
        (D::Boolean, _) => Value::Bool(a.as_boolean().value(r)),
        (D::Int8, _) => Value::I16(a.as_primitive::<Int8Type>().value(r).into()),
        (D::Int16, _) => Value::I16(a.as_primitive::<Int16Type>().value(r)),
        (D::UInt8, _) => Value::I16(a.as_primitive::<UInt8Type>().value(r).into()),
        (D::Int32, _) => Value::I32(a.as_primitive::<Int32Type>().value(r)),
        (D::UInt16, _) => Value::I32(a.as_primitive::<UInt16Type>().value(r).into()),
        (D::Int64, _) => Value::I64(a.as_primitive::<Int64Type>().value(r)),
        (D::UInt32, _) => Value::I64(a.as_primitive::<UInt32Type>().value(r).into()),
        (D::UInt64, _) => Value::Decimal(a.as_primitive::<UInt64Type>().value(r).into()),
        (D::Float32, _) => Value::F32(a.as_primitive::<Float32Type>().value(r)),
        (D::Float64, _) => Value::F64(a.as_primitive::<Float64Type>().value(r)),
        (D::Decimal128(..), ColumnType::Decimal { .. }) => {
            Value::Decimal(a.as_primitive::<Decimal128Type>().value(r))
        }
        (D::Binary, _) => Value::Bytes(a.as_binary::<i32>().value(r).to_vec()),
        (D::LargeBinary, _) => Value::Bytes(a.as_binary::<i64>().value(r).to_vec()),
        (D::Date32, _) => Value::Date(a.as_primitive::<Date32Type>().value(r)),
        (D::Timestamp(unit, _), _) => {
            let micros = match unit {
                TimeUnit::Second => a
                    .as_primitive::<TimestampSecondType>()
                    .value(r)
                    .checked_mul(1_000_000),
                TimeUnit::Millisecond => a
                    .as_primitive::<TimestampMillisecondType>()
                    .value(r)
                    .checked_mul(1000),
                TimeUnit::Microsecond => {
                    Some(a.as_primitive::<TimestampMicrosecondType>().value(r))
                }
                TimeUnit::Nanosecond => Some(
                    a.as_primitive::<TimestampNanosecondType>()
                        .value(r)
                        .div_euclid(1000),
                ),
            };
            Value::Timestamp(micros.ok_or_else(|| {
                Error::data("baseline Parquet timestamp out of range (beyond year 294247)")
            })?)
        }
        (D::Utf8, _) => Value::Text(a.as_string::<i32>().value(r).to_string()),
        (D::LargeUtf8, _) => Value::Text(a.as_string::<i64>().value(r).to_string()),
        _ => {
            let fmt = arrow_cast::display::ArrayFormatter::try_new(a, &Default::default())
                .map_err(|e| Error::new(ErrorKind::Data, format!("baseline Parquet value: {e}")))?;
            Value::Text(fmt.value(r).to_string())
        }
    };
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::SeqNo;
    use std::collections::BTreeMap;

    #[test]
    fn coverage_rule() {
        let seq = |s: &str| s.parse::<SeqNo>().unwrap();
        let shards = Covers::Shards(BTreeMap::from([("s-0".to_string(), seq("100"))]));
        assert!(shards.covers("s-0", &seq("100"), i64::MAX));
        assert!(!shards.covers("s-0", &seq("101"), 0));
        assert!(
            !shards.covers("s-1", &seq("1"), 0),
            "unlisted shards are after the baseline"
        );
        let w = Covers::Watermark(1000);
        assert!(w.covers("any", &seq("9"), 1000));
        assert!(!w.covers("any", &seq("9"), 1001));

        let meta = BTreeMap::from([("tidemark-shards".to_string(), "s-0=100, s-1=7".to_string())]);
        assert_eq!(
            Covers::from_metadata(&meta, 5).unwrap(),
            Covers::Shards(BTreeMap::from([
                ("s-0".to_string(), seq("100")),
                ("s-1".to_string(), seq("7"))
            ]))
        );
        let meta = BTreeMap::from([(
            "tidemark-watermark".to_string(),
            "1970-01-01T00:00:01Z".to_string(),
        )]);
        assert_eq!(
            Covers::from_metadata(&meta, 5).unwrap(),
            Covers::Watermark(1000)
        );
        assert_eq!(
            Covers::from_metadata(&BTreeMap::new(), 5).unwrap(),
            Covers::Watermark(5)
        );
        let bad = BTreeMap::from([("tidemark-shards".to_string(), "oops".to_string())]);
        assert!(Covers::from_metadata(&bad, 5).is_err());
    }

    #[test]
    fn tables_are_named_by_parameter_or_file() {
        assert_eq!(
            table_for("a/b/orders.jsonl.gz", None),
            TableId::new("baseline", "orders")
        );
        assert_eq!(
            table_for("x.csv", Some("sales.orders")),
            TableId::new("sales", "orders")
        );
        assert_eq!(
            table_for("x.csv", Some("orders")),
            TableId::new("baseline", "orders")
        );
    }

    fn snapshot(name: &str, bytes: &[u8], part_rows: usize) -> (u64, Vec<(String, Vec<u8>)>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let mut parts = Vec::new();
        let (layout, table) = (Layout::new("", "p"), TableId::new("baseline", "t"));
        let into = SnapshotInto {
            layout: &layout,
            table: &table,
            snapshot_id: "v1",
            commit_ts: 0,
            part_rows,
        };
        let rows = write_snapshot(&path, name, &into, &mut |k, b| {
            parts.push((k, b));
            Ok(())
        })
        .unwrap();
        (rows, parts)
    }

    #[test]
    fn parquet_input_keeps_its_types() {
        use arrow_array::{
            ArrayRef, Decimal128Array, Int64Array, RecordBatch, StringArray,
            TimestampMicrosecondArray,
        };
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                "name",
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])) as ArrayRef,
            ),
            (
                "amount",
                Arc::new(
                    Decimal128Array::from(vec![1234, -5, 0])
                        .with_precision_and_scale(12, 2)
                        .unwrap(),
                ) as ArrayRef,
            ),
            (
                "at",
                Arc::new(TimestampMicrosecondArray::from(vec![0, 1, 2]).with_timezone("UTC"))
                    as ArrayRef,
            ),
        ])
        .unwrap();
        let mut buf = Vec::new();
        let mut w = ::parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let (rows, parts) = snapshot("t.parquet", &buf, 2);
        assert_eq!((rows, parts.len()), (3, 2));
        let reader = ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(parts[0].1.clone()),
        )
        .unwrap()
        .build()
        .unwrap();
        let out: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        let schema = out[0].schema();
        let ty = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
        assert_eq!(ty("id"), arrow_schema::DataType::Int64);
        assert_eq!(ty("amount"), arrow_schema::DataType::Decimal128(12, 2));
        assert!(matches!(
            ty("at"),
            arrow_schema::DataType::Timestamp(_, Some(_))
        ));
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &buf).unwrap();
            e.finish().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet.gz");
        std::fs::write(&path, gz).unwrap();
        let (layout, table) = (Layout::new("", "p"), TableId::new("baseline", "t"));
        let into = SnapshotInto {
            layout: &layout,
            table: &table,
            snapshot_id: "v1",
            commit_ts: 0,
            part_rows: 10,
        };
        let e = write_snapshot(&path, "t.parquet.gz", &into, &mut |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("do not gzip"), "{e}");
    }

    #[test]
    fn json_csv_dynamodb_and_compression() {
        let jsonl = b"{\"id\": 1, \"n\": \"a\"}\n\n{\"id\": 2, \"extra\": true}\n{\"id\": 3}\n";
        let (rows, parts) = snapshot("t.jsonl", jsonl, 2);
        assert_eq!((rows, parts.len()), (3, 2));
        assert_eq!(
            parts[1].0,
            "p/baseline.t/snapshot/snapshot_id=v1/part-00001.parquet"
        );

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"id,name\n1,\"a, b\"\n2,\n").unwrap();
        let (rows, parts) = snapshot("t.csv.gz", &gz.finish().unwrap(), 100);
        assert_eq!((rows, parts.len()), (2, 1));

        let ddb = br#"{"Item":{"pk":{"S":"a"},"n":{"N":"1.50"}}}"#;
        let z = zstd::encode_all(&ddb[..], 1).unwrap();
        let (rows, _) = snapshot("export.json.zst", &z, 100);
        assert_eq!(rows, 1);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, b"{\"id\": 1}\nnot json\n").unwrap();
        let (layout, table) = (Layout::new("", "p"), TableId::new("baseline", "t"));
        let into = SnapshotInto {
            layout: &layout,
            table: &table,
            snapshot_id: "v1",
            commit_ts: 0,
            part_rows: 10,
        };
        let e = write_snapshot(&path, "t.jsonl", &into, &mut |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The version was written as a snapshot and is now the pipeline's baseline.
    Written(Box<BaselinePosition>),
    /// The version is older than (or the same as) the committed baseline: nothing changed.
    NotNewer { committed: Box<BaselinePosition> },
}

/// The pipeline a baseline is applied to.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub pipeline: &'a str,
    pub layout: &'a Layout,
    pub store: &'a dyn crate::store::PositionStore,
    pub output: &'a dyn crate::output::ObjectOutput,
    /// Rows per snapshot part.
    pub part_rows: usize,
}

/// One object version to apply: the latest when `version` is `None`; `table` (`schema.table`)
/// names the table it fills (else metadata `tidemark-table`, else the file name).
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub version: Option<&'a str>,
    pub table: Option<&'a str>,
}

/// Applies one version of `s3://bucket/key` (the latest when `version` is `None`) as the
/// baseline of `pipeline`. See the module documentation for the guarantees.
#[cfg(feature = "aws")]
pub async fn apply(target: &Target<'_>, object: &ObjectRef<'_>) -> Result<Applied> {
    let Target {
        pipeline,
        layout,
        store,
        output,
        part_rows,
    } = *target;
    let ObjectRef {
        bucket,
        key,
        version,
        table,
    } = *object;
    use crate::store::{SourcePosition, baseline_checkpoint};
    let name = baseline_checkpoint(pipeline);
    let cp = crate::engine::load_and_recover(store, output, &name).await?;
    let committed = match &cp.position {
        Some(SourcePosition::Baseline(b)) => Some(b.clone()),
        Some(other) => {
            return Err(Error::config(format!(
                "checkpoint {name:?} holds a {other} position, not a baseline"
            )));
        }
        None => None,
    };
    let source = crate::output::s3::S3Output::open(
        &format!("s3://{bucket}"),
        crate::output::s3::S3Options::from_env()?,
    )
    .await?;
    let dir = tempfile_dir()?;
    let local = dir.path().join("object");
    let info = source
        .download(key, version, &local)
        .await?
        .ok_or_else(|| {
            Error::config(format!(
                "baseline object s3://{bucket}/{key} (version {}) does not exist",
                version.unwrap_or("latest")
            ))
        })?;
    if let Some(c) = &committed
        && (info.last_modified_ms, info.version_id.as_str())
            <= (c.last_modified_ms, c.version_id.as_str())
    {
        tracing::info!(version = %info.version_id, committed = %c.version_id, "baseline version is not newer than the committed one: nothing to do");
        return Ok(Applied::NotNewer {
            committed: c.clone(),
        });
    }
    let covers = match manifest_covers(&source, key, &info.version_id).await? {
        Some(c) => c,
        None => Covers::from_metadata(&info.metadata, info.last_modified_ms)?,
    };
    let table = table
        .map(str::to_string)
        .or_else(|| info.metadata.get("tidemark-table").cloned());
    let table = table_for(key, table.as_deref());
    // An unversioned bucket answers version "null" for every object: name such snapshots by
    // the object's LastModified so that a new upload never overwrites the committed snapshot.
    let snapshot_id = if info.version_id == "null" {
        format!("null-{}", info.last_modified_ms)
    } else {
        info.version_id.clone()
    };
    let commit_ts = info.last_modified_ms.saturating_mul(1000);

    // Encode on a blocking thread, write here: at most two parts in flight.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(2);
    let (layout2, table2, id2, key2) = (
        layout.clone(),
        table.clone(),
        snapshot_id.clone(),
        key.to_string(),
    );
    let encoder = tokio::task::spawn_blocking(move || {
        let into = SnapshotInto {
            layout: &layout2,
            table: &table2,
            snapshot_id: &id2,
            commit_ts,
            part_rows: part_rows.max(1),
        };
        write_snapshot(&local, &key2, &into, &mut |k, b| {
            tx.blocking_send((k, b))
                .map_err(|_| Error::fatal("baseline writer stopped"))
        })
    });
    let mut parts = 0u32;
    while let Some((k, bytes)) = rx.recv().await {
        output.put(&k, bytes).await?;
        parts += 1;
    }
    let rows = encoder
        .await
        .map_err(|e| Error::fatal(format!("baseline encoder failed: {e}")))??;
    crate::engine::delete_snapshot_parts(output, layout, &table, &snapshot_id, parts).await?;
    let position = BaselinePosition {
        bucket: bucket.to_string(),
        key: key.to_string(),
        version_id: info.version_id.clone(),
        last_modified_ms: info.last_modified_ms,
        table,
        rows,
        covers,
    };
    crate::engine::commit_batch(
        store,
        output,
        &cp,
        Vec::new(),
        SourcePosition::Baseline(Box::new(position.clone())),
        Some(commit_ts),
    )
    .await?;
    drop(dir);
    tracing::info!(version = %position.version_id, rows, parts, table = %position.table, "baseline written");
    Ok(Applied::Written(Box::new(position)))
}

/// A manifest `<key>.manifest.json` naming this version: `{"version_id": "...", "shards":
/// {"shardId-...": "seq"}}` or `{"version_id": "...", "watermark": "RFC 3339"}`.
#[cfg(feature = "aws")]
async fn manifest_covers(
    source: &crate::output::s3::S3Output,
    key: &str,
    version_id: &str,
) -> Result<Option<Covers>> {
    let dir = tempfile_dir()?;
    let path = dir.path().join("manifest");
    let manifest_key = format!("{key}.manifest.json");
    if source.download(&manifest_key, None, &path).await?.is_none() {
        return Ok(None);
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)
        .map_err(|e| Error::data(format!("baseline manifest {manifest_key}: not JSON: {e}")))?;
    if doc.get("version_id").and_then(|v| v.as_str()) != Some(version_id) {
        tracing::warn!(manifest = %manifest_key, "baseline manifest names another version: ignored");
        return Ok(None);
    }
    let mut meta = std::collections::BTreeMap::new();
    if let Some(shards) = doc.get("shards").and_then(|s| s.as_object()) {
        let list: Vec<String> = shards
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map(str::to_string).unwrap_or(v.to_string())
                )
            })
            .collect();
        meta.insert("tidemark-shards".to_string(), list.join(","));
    }
    if let Some(w) = doc.get("watermark").and_then(|w| w.as_str()) {
        meta.insert("tidemark-watermark".to_string(), w.to_string());
    }
    if meta.is_empty() {
        return Ok(None);
    }
    Covers::from_metadata(&meta, 0).map(Some)
}

/// A private scratch directory (`$TMPDIR`; Lambda's `/tmp`).
#[cfg(feature = "aws")]
fn tempfile_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("tidemark-baseline-")
        .tempdir()
        .map_err(Error::from)
}
