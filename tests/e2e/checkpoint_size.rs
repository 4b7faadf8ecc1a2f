//! Checkpoints of bounded size: one PostgreSQL transaction writes 3,000 tables, streamed by a
//! pipeline with its positions in DynamoDB (the local emulator, which enforces the 400 KB item
//! limit) and output on S3, and by the same pipeline on the local store and directory. Its
//! write intent names 3,000 objects and its checkpoint 3,000 captured tables: over 400 KB as
//! JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value as Json;
use tidemark_e2e::harness::{self, Scenario, aws_endpoint, duckdb};

use crate::aws_failures::Aws;

const TABLES: usize = 3000;

/// Drops the schema, the slots and the DynamoDB table, also when the test fails.
struct Cleanup {
    schema: String,
    slots: Vec<String>,
    dynamodb_table: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        harness::clean_up_now(
            &self.slots,
            &format!("drop schema if exists {} cascade", self.schema),
            Some(&self.dynamodb_table),
        );
    }
}

/// Rows and distinct tables in a scenario's change output for `schema`.
fn counts(s: &Scenario, schema: &str) -> (i64, i64) {
    let rows = duckdb(&format!(
        "select count(*) as n, count(distinct regexp_extract(filename, '{schema}\\.[a-z_0-9]+')) as t \
         from read_parquet('{}/{}/{schema}.*/changes/*/*.parquet', filename = true)",
        s.out().display(),
        s.name
    ));
    (
        rows[0]["n"].as_i64().unwrap(),
        rows[0]["t"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_over_3000_tables_commits_on_dynamodb_and_the_local_store() {
    let c = harness::sql().await;
    let schema = format!("wide_{:x}", fastrand::u32(..));
    let aws = Aws::new("wide");
    let (on_aws, local) = (Scenario::new("wide_aws"), Scenario::new("wide_local"));
    let _cleanup = Cleanup {
        schema: schema.clone(),
        slots: [&on_aws, &local]
            .iter()
            .map(|s| format!("tidemark_{}", s.name))
            .collect(),
        dynamodb_table: aws.table.clone(),
    };
    let tables: Vec<String> = (0..TABLES)
        .map(|i| format!("{schema}.orders_by_sales_region_{i:04}"))
        .collect();
    let mut ddl = format!("create schema {schema};");
    for t in &tables {
        ddl.push_str(&format!(
            "create table {t} (id int8 primary key, v int8 not null default 0);"
        ));
    }
    c.batch_execute(&ddl).await.unwrap();
    let names: Vec<&str> = tables.iter().map(String::as_str).collect();

    // Both pipelines start streaming (the tables are empty: no snapshot to take).
    let endpoint = aws_endpoint();
    let out = aws
        .run(
            &on_aws,
            &endpoint,
            &names,
            &["--no-snapshot", "--until-caught-up"],
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    local.run_caught_up_with(&names, &["--no-snapshot"]);

    let mut tx = String::from("begin;");
    for t in &tables {
        tx.push_str(&format!("insert into {t} (id) values (1);"));
    }
    tx.push_str("commit;");
    c.batch_execute(&tx).await.unwrap();

    let started = std::time::Instant::now();
    aws.catch_up(&on_aws, &endpoint, &names);
    eprintln!(
        "S3 + DynamoDB: caught up in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    local.run_caught_up_with(&names, &["--flush-interval-ms", "300"]);
    eprintln!(
        "local: caught up in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The position moved past the transaction and no intent is left.
    let item: Json = aws.item(&on_aws.name);
    let cp = &item["checkpoint"];
    assert!(
        cp.is_null() || (!cp["position"].is_null() && cp["intent"].is_null()),
        "{item}"
    );
    assert!(
        item.get("checkpoint").is_some() || item.get("checkpoint_zstd").is_some(),
        "3,000 tables fit the item compressed: {item}"
    );
    let objects = aws.download(&on_aws.out());
    assert!(objects >= TABLES, "{objects} objects");
    for s in [&on_aws, &local] {
        assert_eq!(
            counts(s, &schema),
            (TABLES as i64, TABLES as i64),
            "{}: every table's row exactly once",
            s.name
        );
    }
}
