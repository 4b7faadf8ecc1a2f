//! The `tidemark` command line: preflight findings with their fixes, one-line errors, exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tidemark_e2e::harness::{self, Scenario};

/// `tidemark <sub>` for scenario `s` with an explicit source URL.
fn with_url(s: &Scenario, sub: &str, url: &str, tables: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(harness::bin());
    c.args([sub, "--pipeline", &s.name, "--source-url", url])
        .env("TIDEMARK_STATE_HOME", s.state())
        .env("TIDEMARK_LOG", "warn");
    for t in tables {
        c.args(["--table", t]);
    }
    c
}

fn run(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_reports_each_problem_with_its_fix() {
    let c = harness::sql().await;
    let s = Scenario::new("check");
    let (good, nopk, nothing) = (
        format!("g_{}", s.name),
        format!("n_{}", s.name),
        format!("x_{}", s.name),
    );
    c.batch_execute(&format!(
        "create table {good} (id int primary key); create table {nopk} (a int); \
         create table {nothing} (id int primary key); alter table {nothing} replica identity nothing;"
    ))
    .await
    .unwrap();

    let (code, out, err) = run(s
        .command("check", &[&format!("public.{good}")], &[])
        .env("TIDEMARK_LOG", "warn"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    wal_level") && out.contains("may replicate"),
        "{out}"
    );

    let tables = [
        format!("public.{good}"),
        format!("public.{nopk}"),
        format!("public.{nothing}"),
        "public.missing_table".into(),
    ];
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    let (code, out, _) = run(s.command("check", &tables, &[]).env("TIDEMARK_LOG", "warn"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{nopk} has no primary key"))
            && out.contains("REPLICA IDENTITY FULL"),
        "{out}"
    );
    assert!(
        out.contains("REPLICA IDENTITY NOTHING") && out.contains("REPLICA IDENTITY DEFAULT"),
        "{out}"
    );
    assert!(out.contains("public.missing_table does not exist"), "{out}");

    // A role without REPLICATION is told how to grant it.
    let role = format!("r_{}", s.name);
    let admin = harness::admin_sql().await;
    admin
        .batch_execute(&format!(
            "drop role if exists {role}; create role {role} login password 'pw'"
        ))
        .await
        .unwrap();
    let url = harness::pg_url().replacen("tidemark:tidemark@", &format!("{role}:pw@"), 1);
    let (code, out, _) = run(&mut with_url(
        &s,
        "check",
        &url,
        &[&format!("public.{good}")],
    ));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("ALTER ROLE {role} REPLICATION")),
        "{out}"
    );
    c.batch_execute(&format!("drop table {good}, {nopk}, {nothing}"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("drop role {role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn configuration_errors_are_one_clear_line_with_exit_code_2() {
    let s = Scenario::new("cli");
    // Not a supported source URL.
    let (code, _, err) = run(&mut with_url(&s, "run", "oracle://x@127.0.0.1/db", &[]));
    assert_eq!(code, 2, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("postgres://"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("Error {"),
        "{err}"
    );

    // Wrong password: said plainly, the password never printed.
    let url = harness::pg_url().replacen("tidemark:tidemark@", "tidemark:s3cret-wrong@", 1);
    let (code, _, err) = run(&mut with_url(&s, "run", &url, &[]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("password"), "{err}");
    assert!(
        !err.contains("s3cret-wrong"),
        "the password leaked into the output: {err}"
    );
    // The same for MySQL/MariaDB.
    let url =
        tidemark_e2e::mysql::my_url().replacen("tidemark:tidemark@", "tidemark:s3cret-wrong@", 1);
    let (code, _, err) = run(&mut with_url(&s, "run", &url, &[]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("Access denied") && err.contains("password"),
        "{err}"
    );
    assert!(
        !err.contains("s3cret-wrong"),
        "the password leaked into the output: {err}"
    );

    // No pipeline at all: the message says what to pass.
    let (code, _, err) = run(std::process::Command::new(harness::bin())
        .arg("status")
        .env_remove("TIDEMARK_PIPELINE"));
    assert_ne!(code, 0);
    assert!(
        err.contains("--pipeline") || err.contains("--config"),
        "{err}"
    );
}

#[tokio::test]
async fn help_explains_the_commands() {
    let (code, out, _) = run(std::process::Command::new(harness::bin()).arg("--help"));
    assert_eq!(code, 0);
    for word in ["run", "status", "check", "reset", "snapshot", "durable"] {
        assert!(out.contains(word), "--help lacks {word:?}:\n{out}");
    }
    let (_, out, _) = run(std::process::Command::new(harness::bin()).args(["run", "--help"]));
    assert!(
        out.contains("--until-caught-up") && out.contains("--table"),
        "{out}"
    );
}

#[tokio::test]
async fn config_file_run_then_status_reports_position_lag_and_retained_wal() {
    let c = harness::sql().await;
    let s = Scenario::new("cfg");
    let t = format!("c_{}", s.name);
    c.batch_execute(&format!(
        "create table {t} (id int primary key, x text); insert into {t} values (1, 'a'), (2, 'b');"
    ))
    .await
    .unwrap();
    std::fs::create_dir_all(s.dir.path()).unwrap();
    let cfg = s.dir.path().join("pipeline.toml");
    std::fs::write(
        &cfg,
        format!(
            "pipeline = \"{}\"\n[source]\nurl = \"{}\"\ntables = [\"public.{t}\"]\n[output]\nurl = \"file://{}\"\n[batch]\nflush_interval_ms = 200\n",
            s.name,
            harness::pg_url(),
            s.out().display()
        ),
    )
    .unwrap();
    let tm = |args: &[&str]| {
        let mut cmd = std::process::Command::new(harness::bin());
        cmd.args(args)
            .arg("--config")
            .arg(&cfg)
            .env("TIDEMARK_STATE_HOME", s.state())
            .env("TIDEMARK_LOG", "warn");
        run(&mut cmd)
    };
    let (code, _, err) = tm(&["run", "--until-caught-up"]);
    assert_eq!(code, 0, "{err}");
    c.batch_execute(&format!("update {t} set x = 'c' where id = 1"))
        .await
        .unwrap();
    let (code, _, err) = tm(&["run", "--until-caught-up"]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = tm(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["pipeline"], s.name.as_str());
    assert_eq!(st["state"], "STOPPED", "{st}");
    assert!(
        st["position"]
            .as_str()
            .is_some_and(|p| p.starts_with("postgres ")),
        "{st}"
    );
    assert!(
        st["lag_bytes"].is_i64() && st["lag_seconds"].is_f64(),
        "{st}"
    );
    assert!(st["slot_wal_retained_bytes"].is_i64(), "{st}");
    assert_eq!(st["snapshot"]["done"], true, "{st}");
    let (_, text, _) = tm(&["status"]);
    assert!(
        text.contains("lag") && text.contains("WAL retained"),
        "{text}"
    );

    let rows = s.output_rows(&format!("public.{t}"), "id, x, _op");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        (rows[2]["x"].as_str(), rows[2]["_op"].as_str()),
        (Some("c"), Some("U"))
    );
    s.cleanup(&c).await;
}

#[tokio::test]
async fn password_from_env_or_secrets_manager_is_never_logged() {
    let admin = harness::admin_sql().await;
    let s = Scenario::new("secret");
    let (role, password) = (
        format!("s_{}", s.name),
        format!("pw-{:x}-Zq81", fastrand::u64(..)),
    );
    let t = format!("t_{}", s.name);
    admin
        .batch_execute(&format!(
            "drop role if exists {role}; create role {role} login replication password '{password}'; grant create on database app to {role}; \
             create table {t} (id int primary key); alter table {t} owner to {role}; insert into {t} values (1);"
        ))
        .await
        .unwrap();
    let url_without_password =
        harness::pg_url().replacen("tidemark:tidemark@", &format!("{role}@"), 1);

    // 1. From the environment.
    let mut cmd = with_url(&s, "run", &url_without_password, &[&format!("public.{t}")]);
    cmd.args(["--until-caught-up", "--output"])
        .arg(format!("file://{}", s.out().display()))
        .env("TIDEMARK_SOURCE_PASSWORD", &password)
        .env("TIDEMARK_LOG", "debug")
        .env("TIDEMARK_METRICS", "emf");
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(&password) && !err.contains(&password),
        "password leaked:\n{out}\n{err}"
    );

    // 2. From a Secrets Manager secret (RDS-style JSON) in the local emulator.
    let python =
        std::env::var("TIDEMARK_PYTHON").expect("TIDEMARK_PYTHON (run infra/local/stack up)");
    let created = std::process::Command::new(python)
        .args([
            "-c",
            "import boto3, json, sys, os\n\
             c = boto3.client('secretsmanager', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
             r = c.create_secret(Name=sys.argv[1], SecretString=json.dumps({'username': 'x', 'password': sys.argv[2]}))\n\
             print(r['ARN'])",
            &s.name,
            &password,
        ])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let arn = String::from_utf8_lossy(&created.stdout).trim().to_string();
    admin
        .batch_execute(&format!("insert into {t} values (2)"))
        .await
        .unwrap();
    let mut cmd = with_url(&s, "run", &url_without_password, &[&format!("public.{t}")]);
    cmd.args([
        "--until-caught-up",
        "--source-password-secret-arn",
        &arn,
        "--output",
    ])
    .arg(format!("file://{}", s.out().display()))
    .env_remove("TIDEMARK_SOURCE_PASSWORD")
    .env_remove("PGPASSWORD")
    .env("TIDEMARK_LOG", "debug");
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(&password) && !err.contains(&password),
        "password leaked:\n{out}\n{err}"
    );
    let rows = s.output_rows(&format!("public.{t}"), "id");
    assert_eq!(rows.len(), 2, "{rows:?}");

    // A wrong ARN is a one-line configuration error.
    let mut cmd = with_url(&s, "check", &url_without_password, &[]);
    cmd.args([
        "--source-password-secret-arn",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing",
    ]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read the password secret"), "{err}");

    s.cleanup(&admin).await;
    admin
        .batch_execute(&format!(
            "drop table {t}; revoke create on database app from {role}; drop role {role}"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn health_check_and_embedded_metric_lines() {
    let c = harness::sql().await;
    let s = Scenario::new("health");
    let t = format!("h_{}", s.name);
    c.batch_execute(&format!(
        "create table {t} (id int primary key); insert into {t} values (1);"
    ))
    .await
    .unwrap();
    let q = format!("public.{t}");
    let health = || run(s.command("health", &[], &[]).env("TIDEMARK_LOG", "warn"));

    let (code, out, _) = health();
    assert_eq!(code, 1, "no worker yet: {out}");
    let worker = s
        .command(
            "run",
            &[&q],
            &["--flush-interval-ms", "200", "--metrics", "emf"],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(s.out().with_file_name("worker.log")).unwrap())
        .spawn()
        .unwrap();
    // Streaming within 30 s, before the insert: rows inserted earlier could land in the
    // snapshot, which has no batch metrics.
    let mut said = health();
    for _ in 0..60 {
        if (said.0, said.1.trim()) == (0, "healthy: Streaming") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        said = health();
    }
    let (code, out, _) = said;
    assert_eq!((code, out.trim()), (0, "healthy: Streaming"));
    c.batch_execute(&format!(
        "insert into {t} select g from generate_series(2, 100) g"
    ))
    .await
    .unwrap();
    // The 99 changes committed (so their metric lines are out) before the stop.
    for _ in 0..60 {
        if s.output_rows(&q, "id").len() == 100 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let out = worker.wait_with_output().unwrap();
    assert!(out.status.success());
    let (code, text, _) = health();
    assert_eq!(code, 1, "a stopped worker is not healthy: {text}");
    assert!(text.contains("Stopped"), "{text}");

    // stdout carries CloudWatch Embedded Metric Format lines, one JSON document each.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let batches: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "tidemark")
        .collect();
    let rows: i64 = batches.iter().filter_map(|v| v["Rows"].as_i64()).sum();
    let log = std::fs::read_to_string(s.out().with_file_name("worker.log")).unwrap_or_default();
    assert_eq!(rows, 99, "stdout:\n{stdout}\nthe worker's log:\n{log}");
    assert!(
        batches
            .iter()
            .any(|v| v["LagSeconds"].is_number() && v["LagBytes"].is_number()),
        "{stdout}"
    );
    assert!(batches.iter().all(|v| v["Pipeline"] == s.name.as_str()));
    s.cleanup(&c).await;
}

/// Issue 11 item 8: the status file is refreshed while a table is copied, so `health` stays at
/// exit 0 through a copy longer than `--max-age-secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_green_through_a_long_snapshot_copy() {
    let c = harness::sql().await;
    let s = Scenario::new("longcopy");
    let t = format!("l_{}", s.name);
    // A text key: copied in one COPY (no chunk commits that would refresh the status).
    c.batch_execute(&format!(
        "create table {t} (k text primary key, v text); \
         insert into {t} select g::text, md5(g::text) || md5((g + 1)::text) from generate_series(1, 4000000) g;"
    ))
    .await
    .unwrap();
    let q = format!("public.{t}");
    let health = || {
        run(s
            .command("health", &[], &["--max-age-secs", "3"])
            .env("TIDEMARK_LOG", "warn"))
    };
    let mut worker = s
        .command("run", &[&q], &["--until-caught-up"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut snapshotting = Vec::new();
    loop {
        if worker.try_wait().unwrap().is_some() {
            break;
        }
        let (code, out, _) = health();
        if out.contains("Snapshotting") || (code != 0 && !out.contains("no status file")) {
            snapshotting.push((started.elapsed(), code, out.trim().to_string()));
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "the copy did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(worker.wait().unwrap().success());
    let unhealthy: Vec<_> = snapshotting
        .iter()
        .filter(|(_, code, out)| *code != 0 && !out.contains("Stopped"))
        .collect();
    assert!(
        unhealthy.is_empty(),
        "unhealthy during the copy: {unhealthy:?}"
    );
    let span = snapshotting
        .iter()
        .filter(|(_, code, _)| *code == 0)
        .map(|(at, _, _)| *at)
        .fold(
            (None, None),
            |(lo, hi): (Option<std::time::Duration>, Option<std::time::Duration>), at| {
                (
                    Some(lo.map_or(at, |l| l.min(at))),
                    Some(hi.map_or(at, |h| h.max(at))),
                )
            },
        );
    let copied_for = span.1.unwrap_or_default() - span.0.unwrap_or_default();
    assert!(
        copied_for > std::time::Duration::from_secs(4),
        "the copy must outlast --max-age-secs for this test to mean anything: {copied_for:?} {snapshotting:?}"
    );
    s.cleanup(&c).await;
    c.batch_execute(&format!("drop table {t}")).await.unwrap();
}
