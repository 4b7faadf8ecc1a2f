//! Every mapped PostgreSQL type round-trips to Parquet (read back by DuckDB), through both the
//! snapshot path (`COPY ... (FORMAT text)`) and the streaming path (pgoutput text).
//!
//! Expected values come from PostgreSQL itself, not from hand-written constants: every column
//! has a PostgreSQL expression that renders the stored value in a canonical text form (days
//! since 1970 for dates, microseconds since 1970 for timestamps, hex for bytea, the type's text
//! output under the session settings tidemark pins otherwise) and a DuckDB expression that
//! renders what tidemark wrote the same way. Which columns must be listed in
//! `_unavailable_cols` is computed by PostgreSQL too (NaN in a decimal, infinite or out-of-range
//! dates/timestamps, multi-dimensional arrays).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use serde_json::Value as Json;
use tidemark_e2e::harness::{self, Scenario};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Streamed rows repeat the snapshot rows' values with `id + STREAM_ID_OFFSET`.
const STREAM_ID_OFFSET: i32 = 1000;

/// The session settings tidemark pins on its snapshot and replication connections
/// (docs/types.md, "Values"); the expected text forms are rendered under the same ones.
const PINNED: &str = "set datestyle = 'ISO'; set timezone = 'UTC'; set extra_float_digits = 3; \
                      set intervalstyle = 'iso_8601'; set bytea_output = 'hex';";

/// How a PostgreSQL text form is compared with the DuckDB one.
#[derive(Clone, Copy, Debug)]
enum Cmp {
    /// Equal strings.
    Text,
    /// Both texts parse as `f32`: same bits (so -0 ≠ 0), or both NaN.
    F32,
    /// Both texts parse as `f64`: same bits, or both NaN.
    F64,
    /// PostgreSQL renders a JSON array of strings/nulls; DuckDB a list of strings/nulls.
    List,
    /// A [`Cmp::List`] whose items compare as [`Cmp::F32`].
    ListF32,
    /// A [`Cmp::List`] whose items compare as [`Cmp::F64`].
    ListF64,
}

impl Cmp {
    fn is_list(self) -> bool {
        matches!(self, Cmp::List | Cmp::ListF32 | Cmp::ListF64)
    }
}

/// The per-scenario user-defined types the table uses.
struct Types {
    mood: String,
    posint: String,
    money2: String,
    pair: String,
}

impl Types {
    fn new(suffix: &str) -> Self {
        Types {
            mood: format!("mood_{suffix}"),
            posint: format!("posint_{suffix}"),
            money2: format!("money2_{suffix}"),
            pair: format!("pair_{suffix}"),
        }
    }
}

/// One column of the wide table.
struct Col {
    name: &'static str,
    pg_type: String,
    /// The type DuckDB reports for the Parquet column.
    duck_type: &'static str,
    /// The Parquet leaf (physical type, logical/converted type) docs/types.md specifies.
    parquet: &'static str,
    cmp: Cmp,
    /// PostgreSQL expression (`{c}` is the column) giving the expected text; NULL when the value
    /// is NULL or has no representation. By default the column itself: its text output, which
    /// is what tidemark receives (`::text` differs for some types: inet adds `/32`, char(n)
    /// drops its padding).
    pg: String,
    /// DuckDB expression (`{c}` is the column) rendering the written value the same way.
    duck: String,
    /// PostgreSQL condition (`{c}` is the column) under which the column must be listed in
    /// `_unavailable_cols`.
    unavailable_if: Option<String>,
    /// SQL literals, one per row (row `i + 2` gets `values[i]`; row 1 and rows past the end are
    /// NULL).
    values: Vec<String>,
}

impl Col {
    fn new(
        name: &'static str,
        pg_type: impl Into<String>,
        duck_type: &'static str,
        parquet: &'static str,
    ) -> Self {
        Col {
            name,
            pg_type: pg_type.into(),
            duck_type,
            parquet,
            cmp: Cmp::Text,
            pg: "{c}".into(),
            duck: "cast({c} as varchar)".into(),
            unavailable_if: None,
            values: Vec::new(),
        }
    }
    fn pg(mut self, e: impl Into<String>) -> Self {
        self.pg = e.into();
        self
    }
    fn duck(mut self, e: impl Into<String>) -> Self {
        self.duck = e.into();
        self
    }
    fn cmp(mut self, cmp: Cmp) -> Self {
        self.cmp = cmp;
        self
    }
    fn unavailable_if(mut self, cond: impl Into<String>) -> Self {
        self.unavailable_if = Some(cond.into());
        self
    }
    /// A one-dimensional array: PostgreSQL renders `elem` (an expression of the element `e`)
    /// for each element in order; DuckDB `duck_elem` (of `x`) for each list item.
    fn list(mut self, elem: &str, duck_elem: &str) -> Self {
        self.cmp = Cmp::List;
        self.pg = format!(
            "case when {{c}} is null or array_ndims({{c}}) > 1 then null else \
             to_json(array(select {elem} from unnest({{c}}) with ordinality u(e, o) order by o))::text end"
        );
        self.duck = format!("list_transform({{c}}, x -> {duck_elem})");
        self
    }
    fn values<S: AsRef<str>>(mut self, vs: &[S]) -> Self {
        self.values = vs.iter().map(|v| v.as_ref().to_owned()).collect();
        self
    }
    fn sub(&self, e: &str) -> String {
        e.replace("{c}", self.name)
    }
}

/// Microseconds since 1970 of a timestamp(tz) expression, exactly, as text.
fn pg_epoch_us(e: &str) -> String {
    format!("(extract(epoch from {e}) * 1000000)::numeric(30,0)::text")
}

/// Whether a timestamp(tz) expression has a Parquet representation: finite and within i64 µs.
fn pg_ts_ok(e: &str) -> String {
    format!(
        "(isfinite({e}) and extract(epoch from {e}) * 1000000 \
         between -9223372036854775808 and 9223372036854775807)"
    )
}

fn timestamp_col(
    name: &'static str,
    pg_type: &str,
    duck_type: &'static str,
    parquet: &'static str,
) -> Col {
    Col::new(name, pg_type, duck_type, parquet)
        .pg(format!(
            "case when {} then {} end",
            pg_ts_ok("{c}"),
            pg_epoch_us("{c}")
        ))
        .duck("cast(epoch_us({c}) as varchar)")
        .unavailable_if(format!("not {}", pg_ts_ok("{c}")))
}

/// The wide table's columns and the values each takes.
fn columns(t: &Types) -> Vec<Col> {
    let mood = &t.mood;
    let all_bytes: String = (0..=255u8).map(|b| format!("{b:02x}")).collect();
    let crabs = format!("'{}'", "🦀".repeat(20));
    let ts_elem = format!("case when {} then {} end", pg_ts_ok("e"), pg_epoch_us("e"));
    let ts_elem_unavailable = format!(
        "exists (select from unnest({{c}}) u(e) where e is not null and not {})",
        pg_ts_ok("e")
    );
    vec![
        Col::new("i2", "int2", "SMALLINT", "INT32 INT_16").values(&["-32768", "32767", "0", "-1"]),
        Col::new("i4", "int4", "INTEGER", "INT32").values(&["-2147483648", "2147483647", "0"]),
        Col::new("i8", "int8", "BIGINT", "INT64").values(&[
            "-9223372036854775808",
            "9223372036854775807",
            "0",
        ]),
        Col::new("f4", "float4", "FLOAT", "FLOAT")
            .cmp(Cmp::F32)
            .values(&[
                "'NaN'",
                "'Infinity'",
                "'-Infinity'",
                "'-0'",
                "'0'",
                "'3.4e38'",
                "'3.4028235e38'",
                "'1e-45'",          // smallest subnormal
                "'1.17549435e-38'", // smallest normal
                "'-1.5'",
                "'0.1'",
            ]),
        Col::new("f8", "float8", "DOUBLE", "DOUBLE")
            .cmp(Cmp::F64)
            .values(&[
                "'NaN'",
                "'Infinity'",
                "'-Infinity'",
                "'-0'",
                "'1e-300'",
                "'5e-324'", // smallest subnormal
                "'-1.5e-310'",
                "'1.7976931348623157e308'",
                "'2.2250738585072014e-308'",
                "'0.1'",
                "'3.141592653589793'",
            ]),
        Col::new(
            "n38",
            "numeric(38,10)",
            "DECIMAL(38,10)",
            "FIXED_LEN_BYTE_ARRAY(16) DECIMAL(38,10)",
        )
        .pg("case when {c} <> 'NaN' then {c}::text end")
        .unavailable_if("{c} = 'NaN'")
        .values(&[
            "'9999999999999999999999999999.9999999999'",
            "'-9999999999999999999999999999.9999999999'",
            "'0'",
            "'0.0000000001'",
            "'-0.0000000001'",
            "'1234567890123456789012345678.0123456789'",
            "'NaN'",
            "'-1'",
        ]),
        Col::new("n12", "numeric(12,2)", "DECIMAL(12,2)", "INT64 DECIMAL(12,2)")
            .pg("case when {c} <> 'NaN' then {c}::text end")
            .unavailable_if("{c} = 'NaN'")
            .values(&[
                "'9999999999.99'",
                "'-9999999999.99'",
                "'0'",
                "'0.01'",
                "'-0.01'",
                "'NaN'",
                "'12.5'",
            ]),
        Col::new("nu", "numeric", "VARCHAR", "BYTE_ARRAY UTF8").values(&[
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'0'",
            "'1.10'",
            "'-0.000000000000000000000000000000000000000001'",
            "'123456789012345678901234567890123456789012345678901234567890.123456789012345678901234567890'",
            "'1e100'",
        ]),
        Col::new("bo", "bool", "BOOLEAN", "BOOLEAN")
            .pg("{c}::text").values(&["true", "false"]),
        Col::new("tx", "text", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&[
                "'héllo wörld 🦀🎉 日本語'",
                r#"$$it's "quoted"$$"#,
                r"'back\slash \N \. \\ \t trailing\'",
                r"E'tab\there\nnewline\r\ncrlf \x01 \x7f'",
                "''",
                "'NULL'",
                r"'\N'",
                "'  padded  '",
                "repeat('ab🦀', 3000)", // out of line (TOAST)
                r"E'\u00e9 \U0001F600 combining e\u0301'",
            ]),
        Col::new("vc", "varchar(20)", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&[crabs.as_str(), "''", r#"'a,b{c}"d\e'"#, "'trailing  '"]),
        // The text output of char(n) keeps its blank padding (`::text` would strip it).
        Col::new("ch", "char(5)", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'ab'", "''", "'é🦀'", "'abcde'", "' x'"]),
        Col::new("bt", "bytea", "BLOB", "BYTE_ARRAY")
            .pg("encode({c}, 'hex')")
            .duck("lower(hex({c}))")
            .values(&[
                r"'\x'".to_owned(),
                format!("decode('{all_bytes}', 'hex')"),
                r"'\x5c4e'".to_owned(), // the bytes of `\N`
                r"'\x00'".to_owned(),
                "convert_to('🦀', 'UTF8')".to_owned(),
            ]),
        // Not named `dt`: that is the name of the changes' `dt=YYYY-MM-DD` partition directory,
        // which DuckDB's hive partitioning would read instead of the file's column.
        Col::new("da", "date", "DATE", "INT32 DATE")
            .pg("case when isfinite({c}) then ({c} - date '1970-01-01')::text end")
            .duck("cast({c} - date '1970-01-01' as varchar)")
            .unavailable_if("not isfinite({c})")
            .values(&[
                "'0001-01-01'",
                "'1970-01-01'",
                "'9999-12-31'",
                "'infinity'",
                "'-infinity'",
                "'0044-03-15 BC'",
                "'4713-01-01 BC'", // PostgreSQL's first date
                "'5874897-12-31'", // PostgreSQL's last date
                "'2024-02-29'",
                "'1969-12-31'",
                "'0001-12-31 BC'",
            ]),
        Col::new("tm", "time", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&[
                "'00:00:00'",
                "'24:00:00'",
                "'23:59:59.999999'",
                "'13:45:12.5'",
                "'04:05:06.789'",
            ]),
        Col::new("ttz", "timetz", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&[
                "'13:45:12+05:30'",
                "'00:00:00-15:59'",
                "'24:00:00+00'",
                "'12:00:00.000001+05:30:15'",
                "'23:59:59.999999-08'",
            ]),
        timestamp_col(
            "ts",
            "timestamp",
            "TIMESTAMP",
            "INT64 TIMESTAMP(MICROS,utc=false)",
        )
        .values(&[
            "'2024-02-29 13:45:12.123456'",
            "'1969-12-31 23:59:59.999999'",
            "'1900-01-01 00:00:00.000001'",
            "'0001-01-01 00:00:00'",
            "'4713-01-01 00:00:00 BC'",
            "'0044-03-15 12:00:00.5 BC'",
            // The last µs of 294246 fits i64 µs since 1970; 294250 (valid in PostgreSQL) does not.
            "'294246-12-31 23:59:59.999999'",
            "'294250-01-01 00:00:00'",
            "'infinity'",
            "'-infinity'",
            "'1970-01-01 00:00:00'",
        ]),
        timestamp_col(
            "ts3",
            "timestamp(3)",
            "TIMESTAMP",
            "INT64 TIMESTAMP(MICROS,utc=false)",
        )
        .values(&[
            "'2024-02-29 13:45:12.123456'",
            "'1969-12-31 23:59:59.9995'",
            "'0044-03-15 12:00:00.1235 BC'",
            "'infinity'",
        ]),
        timestamp_col(
            "tstz",
            "timestamptz",
            "TIMESTAMP WITH TIME ZONE",
            "INT64 TIMESTAMP(MICROS,utc=true)",
        )
        .values(&[
            "'2024-06-01 12:34:56.789012+05:30'",
            "'1969-12-31 16:00:00-08'",
            "'2000-01-01 00:00:00+14'",
            "'2024-03-10 02:30:00 America/New_York'",
            "'0044-03-15 12:00:00+02 BC'",
            "'1901-12-13 20:45:52.000001-03:30'",
            "'1900-01-01 00:00:00+00:19:32'",
            "'-infinity'",
            "'294250-01-01 00:00:00+00'",
            "'infinity'",
        ]),
        Col::new("iv", "interval", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&[
                "'1 year 2 months 3 days 04:05:06.789'",
                "'-1 days 02:00'",
                "'0'",
                "'178000000 years'",
                "'-178000000 years'",
                "'1 microsecond'",
                "'-2 months -3 days -00:00:00.000001'",
            ]),
        Col::new("uu", "uuid", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&[
                "'00000000-0000-0000-0000-000000000000'",
                "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
                "'{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a12}'",
                "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
            ]),
        Col::new("js", "json", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(JSON_VALUES),
        Col::new("jb", "jsonb", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(JSON_VALUES),
        Col::new("ip", "inet", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&[
                "'192.168.0.1/24'",
                "'::1'",
                "'2001:db8::ff00:42:8329/64'",
                "'10.0.0.1'",
                "'::ffff:1.2.3.4'",
            ]),
        Col::new("nw", "cidr", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'10.0.0.0/8'", "'2001:db8::/32'", "'192.168.1.0/24'"]),
        Col::new("en", mood, "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&[
                "'sad'",
                "'happy 😀'",
                "'with,comma'",
                r#"'quo"te'"#,
                r"'back\slash'",
                "'NULL'",
            ]),
        Col::new("a_i4", "int4[]", "INTEGER[]", "INT32")
            .list("e::text", "cast(x as varchar)")
            .unavailable_if("array_ndims({c}) > 1")
            .values(&[
                "'{}'",
                "'{1,NULL,-2147483648,2147483647}'",
                "'{NULL}'",
                "'[2:3]={7,8}'",   // lower bound 2: dropped
                "'{{1,2},{3,4}}'", // two dimensions: unavailable
            ]),
        Col::new("a_tx", "text[]", "VARCHAR[]", "BYTE_ARRAY UTF8")
            .list("e", "x")
            .values(&[
                "'{}'",
                r#"'{"a,b","{braces}","quo\"te","back\\slash",NULL,"NULL","null",""," spaced ",🦀}'"#,
                r#"E'{"tab\there","new\nline","comma, space"}'"#,
                "'{NULL}'",
                "array[repeat('x🦀', 1000), '']", // out of line (TOAST)
            ]),
        Col::new(
            "a_num",
            "numeric(10,2)[]",
            "DECIMAL(10,2)[]",
            "INT64 DECIMAL(10,2)",
        )
        .list("case when e <> 'NaN' then e::text end", "cast(x as varchar)")
        .unavailable_if("'NaN' = any({c})")
        .values(&[
            "'{1.5,-99999999.99,NULL,NaN,0}'",
            "'{}'",
            "'{99999999.99,-0.01}'",
        ]),
        Col::new(
            "a_tstz",
            "timestamptz[]",
            "TIMESTAMP WITH TIME ZONE[]",
            "INT64 TIMESTAMP(MICROS,utc=true)",
        )
        .list(&ts_elem, "cast(epoch_us(x) as varchar)")
        .unavailable_if(&ts_elem_unavailable)
        .values(&[
            r#"'{"2024-06-01 12:34:56.789012+05:30",NULL,infinity,"0044-03-15 12:00:00+00 BC"}'"#,
            "'{}'",
            r#"'{"1969-12-31 23:59:59.999999+00"}'"#,
        ]),
        Col::new("a_uu", "uuid[]", "VARCHAR[]", "BYTE_ARRAY UTF8")
            .list("e::text", "x")
            .values(&["'{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11,NULL}'", "'{}'"]),
        Col::new("a_en", format!("{mood}[]"), "VARCHAR[]", "BYTE_ARRAY UTF8")
            .list("e::text", "x")
            .values(&[
                r#"'{sad,"with,comma","quo\"te",NULL,"happy 😀","back\\slash","NULL"}'"#,
                "'{}'",
            ]),
        // The other mapped types of docs/types.md.
        Col::new("oi", "oid", "BIGINT", "INT64").values(&["'0'", "'4294967295'", "'12345'"]),
        Col::new("nm", "name", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'pg_catalog'", "'🦀 name'"]),
        Col::new("qc", "\"char\"", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'a'", "'Z'"]),
        Col::new("mo", "money", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'-12.34'", "'92233720368547758.07'"]),
        Col::new("bi", "bit(8)", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'10101010'", "'00000000'"]),
        Col::new("vb", "varbit", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["''", "'1'"]),
        Col::new("ma", "macaddr", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'08:00:2b:01:02:03'", "'08-00-2B-01-02-FF'"]),
        Col::new("xm", "xml", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&[r#"E'<a x="1">t&amp; \\ \t 🦀</a>'"#]),
        Col::new("pt", "point", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'(1.5,-2)'", "'(1e-300,NaN)'"]),
        Col::new("rg", "int4range", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'[1,10)'", "'empty'", "'(,5]'"]),
        Col::new("tv", "tsvector", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'a fat cat'", r"$$'it''s' 'back\\slash'$$"]),
        Col::new("cp", t.pair.as_str(), "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&[r#"row(1, 'x,"y')"#, "row(null, '')", "row(null, null)"]),
        Col::new("po", t.posint.as_str(), "INTEGER", "INT32").values(&["1", "2147483647"]),
        // A domain over numeric(12,2): the domain's typmod makes it a decimal.
        Col::new("m2", t.money2.as_str(), "DECIMAL(12,2)", "INT64 DECIMAL(12,2)")
            .pg("case when {c} <> 'NaN' then {c}::text end")
            .unavailable_if("{c} = 'NaN'")
            .values(&["'-9999999999.99'", "'NaN'", "'0.5'"]),
        Col::new("a_i2", "int2[]", "SMALLINT[]", "INT32 INT_16")
            .list("e::text", "cast(x as varchar)")
            .values(&["'{-32768,32767,NULL}'"]),
        Col::new("a_i8", "int8[]", "BIGINT[]", "INT64")
            .list("e::text", "cast(x as varchar)")
            .values(&["'{-9223372036854775808,9223372036854775807,NULL}'"]),
        Col::new("a_f4", "float4[]", "FLOAT[]", "FLOAT")
            .list("e::text", "cast(x as varchar)")
            .cmp(Cmp::ListF32)
            .values(&["'{NaN,Infinity,-Infinity,-0,1e-45,3.4028235e38,NULL}'"]),
        Col::new("a_f8", "float8[]", "DOUBLE[]", "DOUBLE")
            .list("e::text", "cast(x as varchar)")
            .cmp(Cmp::ListF64)
            .values(&["'{NaN,Infinity,-Infinity,-0,5e-324,1.7976931348623157e308,NULL}'"]),
        Col::new("a_nu", "numeric[]", "VARCHAR[]", "BYTE_ARRAY UTF8")
            .list("e::text", "x")
            .values(&["'{NaN,Infinity,-Infinity,-1.10,0,NULL}'"]),
        Col::new("a_bo", "bool[]", "BOOLEAN[]", "BOOLEAN")
            .list("e::text", "cast(x as varchar)")
            .values(&["'{t,f,NULL}'"]),
        Col::new("a_by", "bytea[]", "BLOB[]", "BYTE_ARRAY")
            .list("encode(e, 'hex')", "lower(hex(x))")
            .values(&[format!(
                r"array['\x'::bytea, decode('{all_bytes}', 'hex'), null, '\x5c22']"
            )]),
        Col::new("a_da", "date[]", "DATE[]", "INT32 DATE")
            .list(
                "case when isfinite(e) then (e - date '1970-01-01')::text end",
                "cast(x - date '1970-01-01' as varchar)",
            )
            .unavailable_if("exists (select from unnest({c}) u(e) where not isfinite(e))")
            .values(&[
                r#"'{infinity,"0044-03-15 BC",NULL,1970-01-01,-infinity,5874897-12-31}'"#,
                "'{2024-02-29}'",
            ]),
        Col::new("a_ts", "timestamp[]", "TIMESTAMP[]", "INT64 TIMESTAMP(MICROS,utc=false)")
            .list(&ts_elem, "cast(epoch_us(x) as varchar)")
            .unavailable_if(&ts_elem_unavailable)
            .values(&[
                r#"'{"294250-01-01 00:00:00",infinity,"1969-12-31 23:59:59.999999","4713-01-01 00:00:00 BC"}'"#,
                r#"'{"2024-02-29 13:45:12.123456"}'"#,
            ]),
        Col::new("a_vc", "varchar(20)[]", "VARCHAR[]", "BYTE_ARRAY UTF8")
            .list("e::text", "x")
            .values(&[r#"'{"a,b",🦀,NULL,""}'"#]),
        // bpchar items keep their padding too.
        Col::new("a_ch", "char(3)[]", "VARCHAR[]", "BYTE_ARRAY UTF8")
            .list("e", "x")
            .values(&[r#"'{a,"b  ",NULL,é}'"#]),
        Col::new("a_js", "json[]", "VARCHAR[]", "BYTE_ARRAY UTF8")
            .list("e::text", "x")
            .values(&[r#"'{"{\"b\": 1,  \"a\": \"\\\\\"}",NULL,"[1, 2]"}'"#]),
        Col::new("a_jb", "jsonb[]", "VARCHAR[]", "BYTE_ARRAY UTF8")
            .list("e::text", "x")
            .values(&[r#"'{"{\"b\": 1,  \"a\": \"\\\\\"}",NULL,"[1, 2]"}'"#]),
        Col::new("a_iv", "interval[]", "VARCHAR[]", "BYTE_ARRAY UTF8")
            .list("e::text", "x")
            .values(&[r#"'{"1 day",P1Y,"-00:00:00.000001",NULL}'"#]),
        Col::new("a_ip", "inet[]", "VARCHAR[]", "BYTE_ARRAY UTF8")
            .list("e", "x")
            .values(&["'{192.168.0.1/24,::1,NULL,10.0.0.1}'"]),
        Col::new("a_po", format!("{}[]", t.posint), "INTEGER[]", "INT32")
            .list("e::text", "cast(x as varchar)")
            .values(&["'{1,NULL,7}'"]),
        // box uses ';' as its array delimiter: the whole array is one text value.
        Col::new("a_bx", "box[]", "VARCHAR", "BYTE_ARRAY UTF8")
            .duck("{c}")
            .values(&["'{(1,1),(0,0);(2,2),(1,1)}'"]),
    ]
}

const JSON_VALUES: &[&str] = &[
    r#"'{"b": 1,   "a": [1, 2.50, "x\u00e9", null]}'"#,
    "'null'",
    r#"'"tab\tand \"quote\" and 🦀"'"#,
    "'[]'",
    r#"'  {"k":"v"}  '"#,
    r#"'{"a":1,"a":2}'"#,
    "'-0.000001'",
];

/// Creates the user-defined types and the wide table.
async fn create(c: &Client, table: &str, t: &Types, cols: &[Col]) {
    let defs: Vec<String> = cols
        .iter()
        .map(|col| format!("{} {}", col.name, col.pg_type))
        .collect();
    let Types {
        mood,
        posint,
        money2,
        pair,
    } = t;
    c.batch_execute(&format!(
        "drop table if exists {table}; \
         create type {mood} as enum ('sad', 'ok', 'happy 😀', 'with,comma', 'quo\"te', 'back\\slash', 'NULL'); \
         create domain {posint} as int4 check (value > 0); \
         create domain {money2} as numeric(12,2); \
         create type {pair} as (a int, b text); \
         create table {table} (id int primary key, {});",
        defs.join(", ")
    ))
    .await
    .unwrap();
}

/// Drops the table and its types.
async fn drop_all(c: &Client, table: &str, t: &Types) {
    c.batch_execute(&format!(
        "drop table {table}; drop type {}, {}; drop domain {}, {};",
        t.mood, t.pair, t.posint, t.money2
    ))
    .await
    .unwrap();
}

/// The rows' values (SQL literals, `null` where unset); row 0 is all NULL.
fn rows(cols: &[Col]) -> Vec<Vec<&str>> {
    let n = cols.iter().map(|c| c.values.len()).max().unwrap_or(0);
    (0..=n)
        .map(|r| {
            cols.iter()
                .map(|c| match r {
                    0 => "null",
                    _ => c.values.get(r - 1).map_or("null", String::as_str),
                })
                .collect()
        })
        .collect()
}

/// Inserts `rows` with ids `first_id..`, in one transaction.
///
/// The commit is synchronous: `tidemark run --until-caught-up` stops at `pg_current_wal_lsn()`
/// (the WAL *write* position, functions/worker/src/main.rs `current_wal_lsn`), which under the
/// local stack's `synchronous_commit = off` can still be before a transaction that has already
/// committed, so the run would exit without streaming it.
async fn insert(c: &Client, table: &str, cols: &[Col], rows: &[Vec<&str>], first_id: i32) {
    let names: Vec<&str> = cols.iter().map(|c| c.name).collect();
    let mut sql = String::from("set synchronous_commit = on; begin;");
    for (i, row) in rows.iter().enumerate() {
        let id = first_id + i32::try_from(i).unwrap();
        sql.push_str(&format!(
            "insert into {table} (id, {}) values ({id}, {});",
            names.join(", "),
            row.join(", ")
        ));
    }
    sql.push_str("commit;");
    c.batch_execute(&sql).await.unwrap();
}

/// Per id: the expected `_unavailable_cols` (comma-joined, "" for none) and each column's
/// expected text, rendered by PostgreSQL under the pinned settings.
async fn expected(table: &str, cols: &[Col]) -> BTreeMap<i64, (String, Vec<Option<String>>)> {
    let c = harness::sql().await;
    c.batch_execute(PINNED).await.unwrap();
    let unav: Vec<String> = cols
        .iter()
        .filter_map(|col| {
            col.unavailable_if
                .as_ref()
                .map(|cond| format!("case when {} then '{}' end", col.sub(cond), col.name))
        })
        .collect();
    let exprs: Vec<String> = cols.iter().map(|col| col.sub(&col.pg)).collect();
    let sql = format!(
        "select id::text, concat_ws(',', {}), {} from {table} order by id",
        unav.join(", "),
        exprs.join(", ")
    );
    let mut out = BTreeMap::new();
    for m in c.simple_query(&sql).await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            let id: i64 = r.get(0).unwrap().parse().unwrap();
            let vals = (0..cols.len())
                .map(|i| r.get(i + 2).map(str::to_owned))
                .collect();
            out.insert(id, (r.get(1).unwrap_or_default().to_owned(), vals));
        }
    }
    out
}

/// The DuckDB select list: metadata, `_unav` (comma-joined `_unavailable_cols`, "" when NULL)
/// and every column rendered by its DuckDB expression.
fn duck_select(cols: &[Col]) -> String {
    let mut s = String::from(
        "id, _op, _xid, _commit_ts is not null as has_commit_ts, \
         case when _unavailable_cols is null then '' \
              when len(_unavailable_cols) = 0 then '<empty list>' \
              else array_to_string(_unavailable_cols, ',') end as _unav",
    );
    for col in cols {
        s.push_str(&format!(", {} as {}", col.sub(&col.duck), col.name));
    }
    s
}

fn same(cmp: Cmp, want: Option<&str>, got: &Json) -> bool {
    fn floats<F: std::str::FromStr>(a: &str, b: &str) -> Option<(F, F)> {
        Some((a.parse().ok()?, b.parse().ok()?))
    }
    match (cmp, want, got) {
        (_, None, Json::Null) => true,
        (_, None, _) | (_, Some(_), Json::Null) => false,
        (Cmp::Text, Some(w), Json::String(g)) => w == g,
        (Cmp::F32, Some(w), Json::String(g)) => floats::<f32>(w, g)
            .is_some_and(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())),
        (Cmp::F64, Some(w), Json::String(g)) => floats::<f64>(w, g)
            .is_some_and(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())),
        (Cmp::List, Some(w), g) => serde_json::from_str::<Json>(w).is_ok_and(|w| &w == g),
        (Cmp::ListF32 | Cmp::ListF64, Some(w), Json::Array(g)) => {
            let item = if matches!(cmp, Cmp::ListF32) {
                Cmp::F32
            } else {
                Cmp::F64
            };
            match serde_json::from_str::<Json>(w) {
                Ok(Json::Array(w)) => {
                    w.len() == g.len()
                        && w.iter().zip(g).all(|(w, g)| {
                            (w.is_null() || w.is_string()) && same(item, w.as_str(), g)
                        })
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// At most 100 characters of a value, for messages.
fn short(s: &str) -> String {
    let mut out: String = s.chars().take(100).collect();
    if out.len() < s.len() {
        out.push_str(&format!("… ({} bytes)", s.len()));
    }
    out
}

/// `describe` of the table's Parquet files under `part` (`snapshot` or `changes`) as DuckDB
/// sees them: metadata columns, then `id`, then the data columns with their mapped types. (The
/// `snapshot_id=`/`dt=` directory partitions are not file columns.)
fn check_describe(s: &Scenario, qualified: &str, part: &str, cols: &[Col]) {
    let glob = format!(
        "{}/{}/{qualified}/{part}/**/*.parquet",
        s.out().display(),
        s.name
    );
    let got: Vec<(String, String)> = harness::duckdb(&format!(
        "describe select * from read_parquet('{glob}', hive_partitioning = false)"
    ))
    .iter()
    .map(|r| {
        (
            r["column_name"].as_str().unwrap().to_owned(),
            r["column_type"].as_str().unwrap().to_owned(),
        )
    })
    .collect();
    let mut want: Vec<(String, String)> = [
        ("_op", "VARCHAR"),
        ("_pos", "VARCHAR"),
        ("_ord", "BIGINT"),
        ("_commit_ts", "TIMESTAMP WITH TIME ZONE"),
        ("_xid", "BIGINT"),
        ("_unavailable_cols", "VARCHAR[]"),
        ("id", "INTEGER"),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    want.extend(
        cols.iter()
            .map(|c| (c.name.to_owned(), c.duck_type.to_owned())),
    );
    assert_eq!(got, want, "DuckDB's view of the {part} files' schema");
}

/// The Parquet schema of every file under `part`, as `parquet_schema()` reports it: metadata
/// columns (required where docs/types.md says not null), the data columns as optional leaves
/// of the documented physical and logical types, lists in the 3-level form with an `element`
/// item.
fn check_parquet_schema(s: &Scenario, qualified: &str, part: &str, cols: &[Col]) {
    let glob = format!(
        "{}/{}/{qualified}/{part}/**/*.parquet",
        s.out().display(),
        s.name
    );
    let rows = harness::duckdb(&format!(
        "select file_name, name, type, type_length, repetition_type, converted_type, \
         scale, precision, logical_type from parquet_schema('{glob}') order by file_name, column_id"
    ));
    assert!(!rows.is_empty(), "no {part} files");
    let mut per_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &rows {
        let text = |k: &str| r[k].as_str().unwrap_or("").to_owned();
        let mut leaf = match r["type"].as_str() {
            Some("FIXED_LEN_BYTE_ARRAY") => {
                format!("FIXED_LEN_BYTE_ARRAY({})", text("type_length"))
            }
            Some(t) => t.to_owned(),
            None => "group".to_owned(),
        };
        let logical = text("logical_type");
        match text("converted_type").as_str() {
            "" => {}
            "DECIMAL" => leaf.push_str(&format!(
                " DECIMAL({},{})",
                r["precision"].as_i64().unwrap(),
                r["scale"].as_i64().unwrap()
            )),
            "TIMESTAMP_MICROS" => {}
            other => leaf.push_str(&format!(" {other}")),
        }
        if logical.starts_with("TimestampType(") {
            assert!(
                logical.contains("MICROS=MicroSeconds()"),
                "timestamps are in µs: {logical}"
            );
            let utc = logical.contains("isAdjustedToUTC=1");
            leaf.push_str(&format!(" TIMESTAMP(MICROS,utc={utc})"));
        }
        per_file.entry(text("file_name")).or_default().push(format!(
            "{} {} {leaf}",
            text("name"),
            text("repetition_type")
        ));
    }
    let mut want: Vec<String> = vec![
        "_op REQUIRED BYTE_ARRAY UTF8".into(),
        "_pos REQUIRED BYTE_ARRAY UTF8".into(),
        "_ord REQUIRED INT64".into(),
        "_commit_ts REQUIRED INT64 TIMESTAMP(MICROS,utc=true)".into(),
        "_xid OPTIONAL INT64".into(),
        "_unavailable_cols OPTIONAL group LIST".into(),
        "list REPEATED group".into(),
        "element OPTIONAL BYTE_ARRAY UTF8".into(),
        "id OPTIONAL INT32".into(),
    ];
    for c in cols {
        if c.cmp.is_list() {
            want.push(format!("{} OPTIONAL group LIST", c.name));
            want.push("list REPEATED group".into());
            want.push(format!("element OPTIONAL {}", c.parquet));
        } else {
            want.push(format!("{} OPTIONAL {}", c.name, c.parquet));
        }
    }
    for (file, mut got) in per_file {
        // The root group.
        let root = got.remove(0);
        assert!(root.ends_with(" group"), "{file}: root {root}");
        assert_eq!(got, want, "Parquet schema of {file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_via_snapshot_and_streaming() {
    let c = harness::sql().await;
    let s = Scenario::new("types");
    let table = format!("t_{}", s.name);
    let types = Types::new(&s.name);
    let cols = columns(&types);
    create(&c, &table, &types, &cols).await;
    let rows = rows(&cols);
    let qualified = format!("public.{table}");

    // Snapshot path: rows committed before the first run are read by COPY.
    insert(&c, &table, &cols, &rows, 1).await;
    s.run_until_caught_up(&[&qualified]);
    // Streaming path: the same values again, other ids, decoded from pgoutput.
    insert(&c, &table, &cols, &rows, 1 + STREAM_ID_OFFSET).await;
    s.run_until_caught_up(&[&qualified]);

    check_describe(&s, &qualified, "snapshot", &cols);
    check_describe(&s, &qualified, "changes", &cols);
    check_parquet_schema(&s, &qualified, "snapshot", &cols);
    check_parquet_schema(&s, &qualified, "changes", &cols);

    let want = expected(&table, &cols).await;
    let got = s.output_rows(&qualified, &duck_select(&cols));
    let n = i64::try_from(rows.len()).unwrap();
    let offset = i64::from(STREAM_ID_OFFSET);

    // Every source row exactly once: snapshot rows (`R`) first, then the streamed inserts
    // (`I`) in insert order.
    let ids: Vec<i64> = got.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 2 * rows.len(), "ids {ids:?}");
    let mut snapshot_ids = ids[..rows.len()].to_vec();
    snapshot_ids.sort_unstable();
    assert_eq!(snapshot_ids, (1..=n).collect::<Vec<_>>(), "ids {ids:?}");
    assert_eq!(
        ids[rows.len()..],
        (1 + offset..=n + offset).collect::<Vec<_>>(),
        "ids {ids:?}"
    );
    assert_eq!(want.keys().copied().collect::<Vec<_>>(), {
        let mut all = ids.clone();
        all.sort_unstable();
        all
    });

    // The test is not vacuous: every column has non-NULL values, and every column that can be
    // unavailable is, in some row.
    for (i, col) in cols.iter().enumerate() {
        assert!(
            want.values().any(|(_, vals)| vals[i].is_some()),
            "column {} never has a value",
            col.name
        );
        if col.unavailable_if.is_some() {
            assert!(
                want.values()
                    .any(|(unav, _)| unav.split(',').any(|u| u == col.name)),
                "column {} is never unavailable",
                col.name
            );
        }
    }

    let mut failures = Vec::new();
    let mut by_id: BTreeMap<i64, &Json> = BTreeMap::new();
    for r in &got {
        let id = r["id"].as_i64().unwrap();
        by_id.insert(id, r);
        let streamed = id > offset;
        let (op, xid_null) = (r["_op"].as_str().unwrap(), r["_xid"].is_null());
        if (streamed && (op != "I" || xid_null)) || (!streamed && (op != "R" || !xid_null)) {
            failures.push(format!("id {id}: _op {op}, _xid {}", r["_xid"]));
        }
        if r["has_commit_ts"] != Json::Bool(true) {
            failures.push(format!("id {id}: _commit_ts is NULL"));
        }
        let (want_unav, want_vals) = &want[&id];
        if r["_unav"].as_str() != Some(want_unav.as_str()) {
            failures.push(format!(
                "id {id}: _unavailable_cols [{}], expected [{want_unav}]",
                r["_unav"]
            ));
        }
        for (col, w) in cols.iter().zip(want_vals) {
            let g = &r[col.name];
            if !same(col.cmp, w.as_deref(), g) {
                failures.push(format!(
                    "id {id} ({}) column {} ({}): PostgreSQL {:?}, DuckDB {}",
                    if streamed { "stream" } else { "snapshot" },
                    col.name,
                    col.pg_type,
                    w.as_deref().map(short),
                    short(&g.to_string())
                ));
            }
        }
    }
    // The two paths wrote identical values for identical input.
    for id in 1..=n {
        let (a, b) = (by_id[&id], by_id[&(id + offset)]);
        for name in std::iter::once("_unav").chain(cols.iter().map(|c| c.name)) {
            if a[name] != b[name] {
                failures.push(format!(
                    "id {id} vs {}: column {name}: snapshot {} but stream {}",
                    id + offset,
                    short(&a[name].to_string()),
                    short(&b[name].to_string())
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} columns x {} rows compared on both paths",
        cols.len(),
        rows.len()
    );

    s.cleanup(&c).await;
    drop_all(&c, &table, &types).await;
}

/// The Parquet schema follows from the column types alone: a table holding only NULLs gets the
/// same files' schema on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_schema_depends_only_on_column_types() {
    let c = harness::sql().await;
    let s = Scenario::new("typeschema");
    let table = format!("t_{}", s.name);
    let types = Types::new(&s.name);
    let cols = columns(&types);
    create(&c, &table, &types, &cols).await;
    let all_null = vec![vec!["null"; cols.len()]];
    let qualified = format!("public.{table}");

    insert(&c, &table, &cols, &all_null, 1).await;
    s.run_until_caught_up(&[&qualified]);
    insert(&c, &table, &cols, &all_null, 2).await;
    s.run_until_caught_up(&[&qualified]);

    for part in ["snapshot", "changes"] {
        check_describe(&s, &qualified, part, &cols);
        check_parquet_schema(&s, &qualified, part, &cols);
    }
    // All data columns NULL, none unavailable (`_unavailable_cols` NULL, not an empty list).
    let rows = s.output_rows(&qualified, &duck_select(&cols));
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for r in &rows {
        assert_eq!(r["_unav"], "", "{r:#}");
        for col in &cols {
            assert!(r[col.name].is_null(), "{}: {r:#}", col.name);
        }
    }

    s.cleanup(&c).await;
    drop_all(&c, &table, &types).await;
}
