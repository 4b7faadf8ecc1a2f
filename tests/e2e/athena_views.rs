//! `tidemark ddl`: the current-state view, run in DuckDB over real output of PostgreSQL and
//! MariaDB pipelines (snapshot, concurrent changes, restarts, a TRUNCATE, unchanged TOAST
//! values, a column added after the snapshot), equals the source tables' current state; the
//! Athena DDL names the same layout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use tidemark_e2e::harness::{self, Scenario, bin, sigterm, stderr_of};
use tidemark_e2e::mysql as my;

fn ddl(s: &Scenario, dialect: &str) -> String {
    let out = Command::new(bin())
        .args(["ddl", "--pipeline", &s.name, "--dialect", dialect])
        .arg("--output")
        .arg(format!("file://{}", s.out().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tidemark ddl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Snapshot and changes under a workload with one SIGTERM restart, then caught up.
async fn capture<F: std::future::Future<Output = u64> + Send + 'static>(
    s: &Scenario,
    qualified: &str,
    extra: &[&str],
    load: impl FnOnce(tokio::sync::watch::Receiver<bool>) -> F,
) -> u64 {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(load(stop_rx));
    let mut args = vec!["--flush-interval-ms", "200"];
    args.extend_from_slice(extra);
    let child = s.spawn_run(&[qualified], &args);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sigterm(&child);
    let (code, log) = stderr_of(child);
    assert!(code.success(), "{log}");
    stop_tx.send(true).unwrap();
    load.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_current_state_view_equals_the_source() {
    let c = harness::sql().await;
    let s = Scenario::new("view");
    let table = format!("t_{}", s.name);
    harness::versioned_table(&c, &table, 300).await;
    // Out-of-line values that updates leave untouched: pgoutput sends them as "unchanged
    // TOAST", so the change rows list `doc` in _unavailable_cols and the view carries it.
    c.batch_execute(&format!(
        "alter table {table} add column doc text; \
         alter table {table} alter column doc set storage external; \
         update {table} set doc = repeat(md5(id::text), 100) where id <= 100;"
    ))
    .await
    .unwrap();
    let qualified = format!("public.{table}");
    let t = table.clone();
    let ops = capture(&s, &qualified, &[], move |stop| {
        harness::workload(t, 301, stop)
    })
    .await;
    c.batch_execute(&format!(
        "truncate {table}; \
         insert into {table} select g, 0, md5(g::text), repeat(md5(g::text), 100) from generate_series(100001, 100150) g; \
         update {table} set v = v + 1, payload = 'after' where id % 3 = 0; \
         delete from {table} where id % 7 = 0; \
         alter table {table} add column extra int; \
         update {table} set extra = id where id % 5 = 0;"
    ))
    .await
    .unwrap();
    s.run_caught_up_with(&[&qualified], &["--flush-interval-ms", "200"]);

    let name = format!("public_{table}");
    let view = harness::duckdb(&format!(
        "{}\nselect id, v, payload, md5(doc) as doc, extra from \"{name}_current\" order by id",
        ddl(&s, "duckdb")
    ));
    let source: Vec<serde_json::Value> = c
        .query(
            &format!("select id, v, payload, md5(doc), extra from {table} order by id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.get::<_, i64>(0),
                "v": r.get::<_, i32>(1),
                "payload": r.get::<_, Option<String>>(2),
                "doc": r.get::<_, Option<String>>(3),
                "extra": r.get::<_, Option<i32>>(4),
            })
        })
        .collect();
    assert!(
        source.len() > 100,
        "rows after the truncate: {}",
        source.len()
    );
    assert_eq!(
        view, source,
        "the view equals the source ({ops} workload statements)"
    );
    let toasted = harness::duckdb(&format!(
        "select count(*) as n from read_parquet('{}/{}/{qualified}/changes/*/*.parquet') where list_contains(_unavailable_cols, 'doc')",
        s.out().display(),
        s.name
    ));
    assert!(
        toasted[0]["n"].as_u64().unwrap() > 0,
        "updates left doc as unchanged TOAST"
    );

    let athena = ddl(&s, "athena");
    for needle in [
        format!("CREATE EXTERNAL TABLE `{}`.`{name}_changes`", s.name),
        format!("CREATE EXTERNAL TABLE `{}`.`{name}_snapshot`", s.name),
        format!("CREATE OR REPLACE VIEW \"{}\".\"{name}_current\"", s.name),
        "`doc` string COMMENT 'text'".to_string(),
        "`id` bigint COMMENT 'int8, primary key'".to_string(),
        "'projection.dt.type' = 'date'".to_string(),
    ] {
        assert!(athena.contains(&needle), "missing {needle:?} in\n{athena}");
    }
    s.cleanup(&c).await;
}

async fn binlog_view(server: tidemark_e2e::mysql::Server) {
    let mut c = server.conn().await;
    let s = server.scenario("myview");
    let table = format!("t_{}", s.name);
    server.versioned_table(&mut c, &table, 300).await;
    let qualified = format!("app.{table}");
    let sid = fastrand::u32(2_000_000..2_000_000_000).to_string();
    let server_id = ["--server-id", sid.as_str()];
    let t = table.clone();
    let ops = capture(&s, &qualified, &server_id, move |stop| {
        server.workload(t, 301, stop)
    })
    .await;
    my::exec(&mut c, &format!("TRUNCATE TABLE {table}")).await;
    server
        .insert_numbers(&mut c, &table, "n + 100000, 0, SHA2(n, 256)", 150)
        .await;
    my::exec(
        &mut c,
        &format!(
            "UPDATE {table} SET v = v + 1, payload = 'after' WHERE id % 3 = 0; \
             DELETE FROM {table} WHERE id % 7 = 0;"
        ),
    )
    .await;
    s.run_caught_up_with(
        &[&qualified],
        &["--flush-interval-ms", "200", "--server-id", &sid],
    );

    let name = format!("app_{table}");
    let view = harness::duckdb(&format!(
        "{}\nselect id, v, payload from \"{name}_current\" order by id",
        ddl(&s, "duckdb")
    ));
    use mysql_async::prelude::Queryable;
    let rows: Vec<(i64, i64, Option<String>)> = c
        .query(format!("SELECT id, v, payload FROM {table} ORDER BY id"))
        .await
        .unwrap();
    let source: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|(id, v, payload)| serde_json::json!({"id": id, "v": v, "payload": payload}))
        .collect();
    assert!(
        source.len() > 100,
        "rows after the truncate: {}",
        source.len()
    );
    assert_eq!(
        view, source,
        "the view equals the source ({ops} workload statements)"
    );
    server.drop_tables(&[&table]).await;
}
tidemark_e2e::both_servers!(
    mariadb_current_state_view_equals_the_source,
    super::binlog_view
);
