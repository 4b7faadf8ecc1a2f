//! Harness for end-to-end tests: the real PostgreSQL of `infra/local/stack`, the real
//! `tidemark` binary, and DuckDB as the independent Parquet reader.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value as Json;

/// What to do when the stack's settings are missing.
pub const STACK_HINT: &str = "start the local stack with `infra/local/stack up` and `eval \"$(infra/local/stack env)\"`, or run `infra/local/test`";

/// A setting exported by `infra/local/stack env`; panics with [`STACK_HINT`] when unset or empty.
pub fn env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{name} is not set: {STACK_HINT}"))
}

/// The AWS emulator's endpoint; refuses anything but loopback, so tests that create and delete
/// buckets' objects and tables can never reach real AWS.
pub fn aws_endpoint() -> String {
    let e = env("AWS_ENDPOINT_URL");
    assert!(
        e.starts_with("http://127.0.0.1:") || e.starts_with("http://localhost:"),
        "AWS_ENDPOINT_URL={e} is not the local emulator: {STACK_HINT}"
    );
    e.trim_end_matches('/').to_string()
}

pub fn pg_url() -> String {
    env("TIDEMARK_PG_URL")
}

pub fn bin() -> PathBuf {
    let p = std::env::var("TIDEMARK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tidemark"));
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p tidemark-worker` (infra/local/test does)",
        p.display()
    );
    p
}

/// Asks a child process to stop (SIGTERM: flush, commit, exit 0).
pub fn sigterm(child: &Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
}

/// Waits for a child and returns its exit status and stderr.
pub fn stderr_of(child: Child) -> (std::process::ExitStatus, String) {
    let out = child.wait_with_output().expect("wait for the child");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A binary of the workspace beside `tidemark`: a Lambda function or a development tool (built
/// by `infra/local/test`).
pub fn function_bin(name: &str) -> PathBuf {
    let p = bin().with_file_name(name);
    let package = if name.starts_with("tidemark-") {
        name.to_string()
    } else {
        format!("tidemark-{name}")
    };
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p {package}` (infra/local/test does)",
        p.display()
    );
    p
}

/// A SQL session as the test user (owner of the tables it creates).
pub async fn sql() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the local PostgreSQL (is `infra/local/stack up` running?)");
    tokio::spawn(conn);
    client
}

/// A superuser session (trust auth on the local stack), for roles and server settings.
pub async fn admin_sql() -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(&env("TIDEMARK_PG_ADMIN_URL"), tokio_postgres::NoTls)
            .await
            .expect("connect to the local PostgreSQL as postgres");
    tokio::spawn(conn);
    client
}

/// One pipeline under test: its own tables, slot, output and state directories.
pub struct Scenario {
    pub name: String,
    pub dir: tempfile::TempDir,
    /// The source URL; `None`: the stack's PostgreSQL.
    pub source: Option<String>,
}

impl Scenario {
    pub fn new(prefix: &str) -> Self {
        let name = format!("{prefix}_{:x}", fastrand::u32(..));
        Scenario {
            name,
            dir: tempfile::tempdir().expect("tempdir"),
            source: None,
        }
    }

    /// A scenario reading the stack's Oracle MySQL.
    pub fn oracle_mysql(prefix: &str) -> Self {
        Scenario {
            source: Some(env("TIDEMARK_MYSQL_URL")),
            ..Self::new(prefix)
        }
    }

    /// A scenario reading the stack's MariaDB.
    pub fn mysql(prefix: &str) -> Self {
        Scenario {
            source: Some(env("TIDEMARK_MY_URL")),
            ..Self::new(prefix)
        }
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `tidemark <args>` for this pipeline, capturing the given tables.
    pub fn command(&self, sub: &str, tables: &[&str], extra: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg(sub)
            .arg("--pipeline")
            .arg(&self.name)
            .arg("--source-url")
            .arg(self.source.clone().unwrap_or_else(pg_url))
            .env("TIDEMARK_STATE_HOME", self.state())
            .env("TIDEMARK_LOG_FORMAT", "json")
            .env("TIDEMARK_LOG", "info");
        if sub == "run" {
            c.arg("--output")
                .arg(format!("file://{}", self.out().display()));
        }
        for t in tables {
            c.arg("--table").arg(t);
        }
        c.args(extra);
        c
    }

    /// `tidemark check` of `tables` with `extra` flags: whether it passed, and its report
    /// (stdout, then stderr).
    pub fn check_report(&self, tables: &[&str], extra: &[&str]) -> (bool, String) {
        let out = self
            .command("check", tables, extra)
            .output()
            .expect("run tidemark check");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Runs until everything committed before the call is durable; panics on failure.
    pub fn run_until_caught_up(&self, tables: &[&str]) -> Output {
        self.run_caught_up_with(tables, &["--flush-interval-ms", "300"])
    }

    /// [`Scenario::run_until_caught_up`] with `extra` flags.
    pub fn run_caught_up_with(&self, tables: &[&str], extra: &[&str]) -> Output {
        let out = self
            .command("run", tables, extra)
            .arg("--until-caught-up")
            .output()
            .expect("spawn tidemark");
        assert!(
            out.status.success(),
            "tidemark run failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn spawn_run(&self, tables: &[&str], extra: &[&str]) -> Child {
        self.command("run", tables, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tidemark")
    }

    /// Rows of `table`'s output (snapshot and changes) as JSON objects, in source order.
    pub fn output_rows(&self, table: &str, columns: &str) -> Vec<Json> {
        let root = format!("{}/{}/{}", self.out().display(), self.name, table);
        let snapshot = format!("{root}/snapshot/**/*.parquet");
        let changes = format!("{root}/changes/**/*.parquet");
        let read = |glob: &str| {
            let any = glob::matches(glob);
            if any {
                format!("select * from read_parquet('{glob}', union_by_name = true)")
            } else {
                String::new()
            }
        };
        let parts: Vec<String> = [read(&snapshot), read(&changes)]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            return Vec::new();
        }
        duckdb(&format!(
            "select {columns} from ({}) order by _pos, _ord",
            parts.join(" union all by name ")
        ))
    }

    /// Drops the slot and publication this scenario created.
    pub async fn cleanup(&self, client: &tokio_postgres::Client) {
        drop_slot(client, &format!("tidemark_{}", self.name), false).await;
    }
}

/// Removes what a test created, from any context (its own thread and runtime, no panics), so a
/// `Drop` guard may call it while the test panics: drops `slots` (ending their walsenders) and
/// their publications, runs `sql` as the admin user, and deletes `dynamodb_table`. Best effort.
pub fn clean_up_now(slots: &[String], sql: &str, dynamodb_table: Option<&str>) {
    let (slots, sql) = (slots.to_vec(), sql.to_string());
    let dynamodb_table = dynamodb_table.map(str::to_string);
    let admin_url = std::env::var("TIDEMARK_PG_ADMIN_URL").unwrap_or_default();
    let cleanup = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok((c, conn)) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
            else {
                return;
            };
            tokio::spawn(conn);
            for slot in &slots {
                drop_slot(&c, slot, true).await;
            }
            let _ = c.batch_execute(&sql).await;
        });
        if let (Ok(py), Some(table)) = (std::env::var("TIDEMARK_PYTHON"), dynamodb_table) {
            let _ = Command::new(py)
                .arg("-c")
                .arg("import sys, boto3; boto3.client('dynamodb').delete_table(TableName=sys.argv[1])")
                .arg(&table)
                .stderr(Stdio::null())
                .status();
        }
    });
    let _ = cleanup.join();
}

/// Drops a replication slot (waiting up to 10 s for it to become inactive; with `terminate`,
/// ending the walsender that holds it) and the publication of the same name. Best effort.
pub async fn drop_slot(client: &tokio_postgres::Client, slot: &str, terminate: bool) {
    for _ in 0..50 {
        if terminate {
            let _ = client
                .execute(
                    "select pg_terminate_backend(active_pid) from pg_replication_slots \
                     where slot_name = $1 and active_pid is not null",
                    &[&slot],
                )
                .await;
        }
        let r = client
            .query(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1 and not active",
                &[&slot],
            )
            .await;
        let left = client
            .query_one(
                "select count(*) from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        if r.is_ok() && left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = client
        .batch_execute(&format!("drop publication if exists \"{slot}\""))
        .await;
}

mod glob {
    /// Whether any `.parquet` file exists below the part of `pattern` before `/**`.
    pub fn matches(pattern: &str) -> bool {
        let dir = pattern.split("/**").next().unwrap_or(pattern);
        fn any(p: &std::path::Path) -> bool {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten().any(|e| {
                        let path = e.path();
                        if path.is_dir() {
                            any(&path)
                        } else {
                            path.extension().is_some_and(|x| x == "parquet")
                        }
                    })
                })
                .unwrap_or(false)
        }
        any(std::path::Path::new(dir))
    }
}

/// A table whose rows carry a version `v` that every update increments.
pub async fn versioned_table(c: &tokio_postgres::Client, table: &str, rows: i64) {
    c.batch_execute(&format!(
        "drop table if exists {table}; \
         create table {table} (id bigint primary key, v int not null, payload text); \
         insert into {table} select g, 0, md5(g::text) from generate_series(1, {rows}) g;"
    ))
    .await
    .unwrap();
}

/// Random inserts, updates and deletes in transactions of 1-10 statements until `stop`.
pub async fn workload(
    table: String,
    first_new_id: i64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let c = sql().await;
    let mut next = first_new_id;
    let mut ops = 0u64;
    while !*stop.borrow() {
        let mut sql = String::from("begin;");
        for _ in 0..fastrand::usize(1..=10) {
            let id = fastrand::i64(1..next.max(2));
            match fastrand::u8(0..10) {
                0..=2 => {
                    sql.push_str(&format!(
                        "insert into {table} (id, v, payload) values ({next}, 0, md5(random()::text));"
                    ));
                    next += 1;
                }
                3..=7 => sql.push_str(&format!(
                    "update {table} set v = v + 1, payload = md5(random()::text) where id = {id};"
                )),
                _ => sql.push_str(&format!("delete from {table} where id = {id};")),
            }
            ops += 1;
        }
        sql.push_str("commit;");
        c.batch_execute(&sql).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(0..15))).await;
    }
    ops
}

/// Runs a query in DuckDB (the independent reader) and returns its rows as JSON objects.
pub fn duckdb(sql: &str) -> Vec<Json> {
    let python = env("TIDEMARK_PYTHON");
    let script = r#"
import sys, json, duckdb, decimal, datetime
def conv(v):
    if isinstance(v, decimal.Decimal): return str(v)
    if isinstance(v, (datetime.date, datetime.datetime, datetime.time)): return v.isoformat()
    if isinstance(v, bytes): return v.hex()
    if isinstance(v, float) and v != v: return "NaN"
    if isinstance(v, float) and v in (float("inf"), float("-inf")): return str(v)
    if isinstance(v, list): return [conv(x) for x in v]
    return v
con = duckdb.connect()
con.execute("set TimeZone = 'UTC'")
cur = con.execute(sys.stdin.read())
cols = [d[0] for d in cur.description]
print(json.dumps([{c: conv(v) for c, v in zip(cols, row)} for row in cur.fetchall()]))
"#;
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(sql.as_bytes()).expect("write sql");
    }
    let out = child.wait_with_output().expect("duckdb");
    assert!(
        out.status.success(),
        "duckdb failed: {}\nSQL: {sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("duckdb json")
}

/// Checks the exactly-once invariant on a table whose rows carry a version `v` that every
/// update increments by one: per key, the output's row images (in source order) are the
/// snapshot or insert followed by consecutive versions with none missing and none repeated,
/// optionally ending in a delete; and the last image of every live key equals the source row.
/// Returns the number of output rows checked.
pub async fn assert_exactly_once(
    s: &Scenario,
    client: &tokio_postgres::Client,
    table: &str,
) -> usize {
    let source: std::collections::BTreeMap<i64, i64> = client
        .query(&format!("select id::int8, v::int8 from {table}"), &[])
        .await
        .expect("source rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_exactly_once_against(s, &format!("public.{table}"), &source)
}

/// [`assert_exactly_once`] for any source: `source` maps each live key to its version.
pub fn assert_exactly_once_against(
    s: &Scenario,
    output_table: &str,
    source: &std::collections::BTreeMap<i64, i64>,
) -> usize {
    let rows = s.output_rows(output_table, "id, v, _op, _pos, _ord");
    let mut per_key: std::collections::BTreeMap<i64, Vec<(i64, String)>> = Default::default();
    let mut seen_pos = std::collections::HashSet::new();
    for r in &rows {
        let pos = (
            r["_pos"].as_str().unwrap_or_default().to_string(),
            r["_ord"].as_i64().unwrap_or(-1),
        );
        assert!(
            seen_pos.insert(pos.clone()),
            "duplicate row position {pos:?}"
        );
        let id = r["id"].as_i64().expect("id");
        per_key.entry(id).or_default().push((
            r["v"].as_i64().unwrap_or(-1),
            r["_op"].as_str().unwrap_or("").to_string(),
        ));
    }
    for (id, hist) in &per_key {
        let mut expect_v: Option<i64> = None;
        for (i, (v, op)) in hist.iter().enumerate() {
            match op.as_str() {
                "R" => assert_eq!(i, 0, "id {id}: snapshot row after other rows: {hist:?}"),
                "I" => {
                    assert!(
                        i == 0 || hist[i - 1].1 == "D",
                        "id {id}: insert of a live key: {hist:?}"
                    );
                    assert_eq!(*v, 0, "id {id}: insert with v={v}: {hist:?}");
                }
                "U" => assert_eq!(
                    Some(*v),
                    expect_v,
                    "id {id}: version gap or duplicate: {hist:?}"
                ),
                "D" => {
                    // Under REPLICA IDENTITY DEFAULT a delete carries the key only (v unavailable).
                    assert!(
                        *v == -1 || Some(*v) == expect_v.map(|e| e - 1),
                        "id {id}: delete image out of order: {hist:?}"
                    );
                    expect_v = None;
                    continue;
                }
                other => panic!("id {id}: unexpected op {other}"),
            }
            expect_v = Some(v + 1);
        }
        let last = hist.last().expect("non-empty");
        match source.get(id) {
            Some(sv) => {
                assert_ne!(
                    last.1, "D",
                    "id {id} is live in the source but deleted in the output"
                );
                assert_eq!(
                    last.0, *sv,
                    "id {id}: output ends at v={} but the source has v={sv}: {hist:?}",
                    last.0
                );
            }
            None => assert_eq!(
                last.1, "D",
                "id {id} was deleted in the source but not in the output: {hist:?}"
            ),
        }
    }
    for id in source.keys() {
        assert!(
            per_key.contains_key(id),
            "id {id} is in the source but missing from the output"
        );
    }
    rows.len()
}

/// Replays output rows (in `(_pos, _ord)` order, with `_op`) as a multiset of row images:
/// `R`/`I`/`U` add their image, `D` removes one equal image (panicking when none is there),
/// `T` empties it. `cols` names the value columns that make an image. The result is sorted.
pub fn replay_multiset(rows: &[Json], cols: &[&str]) -> Vec<String> {
    let mut live: Vec<String> = Vec::new();
    for r in rows {
        let image = cols
            .iter()
            .map(|c| r[*c].to_string())
            .collect::<Vec<_>>()
            .join("|");
        match r["_op"].as_str().expect("_op") {
            "R" | "I" | "U" => live.push(image),
            "D" => {
                let i = live
                    .iter()
                    .position(|x| *x == image)
                    .unwrap_or_else(|| panic!("D of {image} with no such row: {rows:#?}"));
                live.swap_remove(i);
            }
            "T" => live.clear(),
            op => panic!("unknown _op {op}"),
        }
    }
    live.sort();
    live
}

impl Scenario {
    /// Every file under this pipeline's output, relative and sorted.
    pub fn output_files(&self) -> Vec<String> {
        fn walk(base: &Path, p: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(base, &path, out);
                } else if let Ok(rel) = path.strip_prefix(base) {
                    out.push(rel.display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        let base = self.out();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    /// The pipeline's checkpoint as `status --json` shows it.
    pub fn status_json(&self) -> Json {
        let out = self
            .command("status", &[], &["--json"])
            .output()
            .expect("tidemark status");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// `tidemark run --until-caught-up` expected to fail: its exit code and stderr.
    pub fn run_failing(&self, tables: &[&str], extra: &[&str]) -> (i32, String) {
        let out = self
            .command("run", tables, extra)
            .arg("--until-caught-up")
            .output()
            .expect("spawn tidemark");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Waits until the scenario's worker reports STREAMING in its status file; panics after `limit`.
pub fn wait_streaming(s: &Scenario, limit: Duration) {
    let started = std::time::Instant::now();
    loop {
        let out = s
            .command("health", &[], &[])
            .env("TIDEMARK_LOG", "warn")
            .output()
            .expect("tidemark health");
        if String::from_utf8_lossy(&out.stdout).contains("Streaming") {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "the worker did not reach STREAMING within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Scenario {
    /// Every output row as `"<table folder> <id> <_op>"`, sorted by folder and `id`: what the
    /// table-name tests compare.
    pub fn rows_by_folder(&self) -> Vec<String> {
        duckdb(&format!(
            "select regexp_extract(filename, '/{}/([^/]+)/', 1) as dir, id::int as id, _op \
             from read_parquet('{}/**/*.parquet', union_by_name = true, filename = true) order by dir, id",
            self.name,
            self.out().display()
        ))
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["dir"].as_str().unwrap_or("?"),
                r["id"],
                r["_op"].as_str().unwrap_or("?")
            )
        })
        .collect()
    }
}
