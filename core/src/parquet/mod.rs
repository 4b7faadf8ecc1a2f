//! Arrow mapping and Parquet encoding of change rows.
//!
//! [`TableBatchBuilder`] turns rows of one [`TableSchema`](crate::change::TableSchema) into Arrow
//! [`RecordBatch`](arrow_array::RecordBatch)es with the schema of [`arrow_schema()`];
//! [`ParquetFileWriter`] (or [`encode`]) writes them as one Athena-readable Parquet file.
//!
//! Every file starts with the metadata columns [`META_COLUMNS`], followed by the table's columns
//! under their source names. The type mapping is fixed by [`data_type`].

mod builder;
mod schema;
mod writer;

pub use builder::TableBatchBuilder;
pub use schema::{
    COL_COMMIT_TS, COL_OP, COL_ORD, COL_POS, COL_UNAVAILABLE, COL_XID, LIST_ITEM_NAME,
    META_COLUMNS, arrow_schema, check_schema, data_type,
};
pub use writer::{
    ParquetFileWriter, ROW_GROUP_ROWS, SCHEMA_METADATA_KEY, ZSTD_LEVEL, encode, writer_properties,
};
