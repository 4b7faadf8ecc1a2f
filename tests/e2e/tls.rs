//! TLS to the source: sslmode=require and verify-full against the real PostgreSQL.
//!
//! The local stack (`infra/local/stack up`) serves TLS with a throwaway CA
//! (`TIDEMARK_PG_CA`) and a server certificate for `localhost` and `127.0.0.1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use tidemark_core::ErrorKind;
use tidemark_core::source::postgres::connect::{parse_url, sql_connect};
use tidemark_core::source::postgres::replication::ReplicationClient;
use tidemark_e2e::harness::{self, Scenario, env};

/// The stack's CA certificate (PEM).
fn ca() -> String {
    env("TIDEMARK_PG_CA")
}

/// `TIDEMARK_PG_URL` (the `tidemark` user, SCRAM) pointed at `host`, with extra parameters.
fn url_with(host: &str, params: &str) -> String {
    let url = harness::pg_url();
    let (creds, rest) = url.split_once('@').expect("user@host in TIDEMARK_PG_URL");
    let (host_port, path) = rest.split_once('/').expect("/dbname in TIDEMARK_PG_URL");
    let port = host_port.rsplit_once(':').map_or("5432", |(_, p)| p);
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{creds}@{host}:{port}/{path}{sep}{params}")
}

/// Connects the SQL client and answers whether its session is encrypted (`pg_stat_ssl`).
async fn sql_client_ssl(url: &str) -> tidemark_core::Result<bool> {
    let src = parse_url(url)?;
    let client = sql_connect(&src, "tidemark-e2e-tls").await?;
    let row = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

/// Connects the replication client, runs IDENTIFY_SYSTEM, and answers whether its walsender's
/// session is encrypted (`pg_stat_ssl` joined to `pg_stat_activity` by the backend PID).
async fn replication_client_ssl(url: &str) -> tidemark_core::Result<bool> {
    let src = parse_url(url)?;
    let mut repl = ReplicationClient::connect(&src, "tidemark-e2e-tls").await?;
    let id = repl.identify_system().await?;
    assert_eq!(id.dbname.as_deref(), Some("app"));
    let pid = repl.backend_pid().expect("backend pid");
    let c = harness::sql().await;
    let row = c
        .query_one(
            "select s.ssl, a.backend_type from pg_stat_ssl s join pg_stat_activity a using (pid) where s.pid = $1",
            &[&pid],
        )
        .await
        .unwrap();
    let backend_type: String = row.get(1);
    assert_eq!(backend_type, "walsender");
    let ssl: bool = row.get(0);
    assert_eq!(ssl, repl.is_tls());
    repl.close().await.unwrap();
    Ok(ssl)
}

fn assert_config_error(r: tidemark_core::Result<bool>, needles: &[&str]) {
    let e = match r {
        Ok(ssl) => panic!("expected a configuration error, got a connection (ssl = {ssl})"),
        Err(e) => e,
    };
    let text = e.one_line();
    assert_eq!(e.kind(), ErrorKind::Config, "{text}");
    for n in needles {
        assert!(text.contains(n), "{n:?} not in: {text}");
    }
    assert!(
        !text.contains(":tidemark@"),
        "the password leaked into: {text}"
    );
}

/// A throwaway CA (self-signed) that did not sign the server's certificate.
fn wrong_ca(dir: &Path) -> String {
    let (key, cert) = (dir.join("wrong-ca.key"), dir.join("wrong-ca.crt"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-new", "-nodes", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "2"])
        .args(["-subj", "/CN=tidemark e2e wrong CA", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cert.display().to_string()
}

#[tokio::test]
async fn require_encrypts_both_connections() {
    let url = url_with("127.0.0.1", "sslmode=require");
    assert!(sql_client_ssl(&url).await.unwrap(), "SQL session not TLS");
    assert!(
        replication_client_ssl(&url).await.unwrap(),
        "replication session not TLS"
    );
    // prefer (the default) uses TLS too when the server offers it; disable does not.
    let url = url_with("127.0.0.1", "sslmode=prefer");
    assert!(sql_client_ssl(&url).await.unwrap());
    assert!(replication_client_ssl(&url).await.unwrap());
    let url = url_with("127.0.0.1", "sslmode=disable");
    assert!(!sql_client_ssl(&url).await.unwrap());
    assert!(!replication_client_ssl(&url).await.unwrap());
}

#[tokio::test]
async fn verify_full_with_the_stack_ca() {
    for host in ["127.0.0.1", "localhost"] {
        let url = url_with(host, &format!("sslmode=verify-full&sslrootcert={}", ca()));
        assert!(sql_client_ssl(&url).await.unwrap(), "{host}");
        assert!(replication_client_ssl(&url).await.unwrap(), "{host}");
        let url = url_with(host, &format!("sslmode=verify-ca&sslrootcert={}", ca()));
        assert!(sql_client_ssl(&url).await.unwrap(), "{host}");
        assert!(replication_client_ssl(&url).await.unwrap(), "{host}");
    }
}

/// SCRAM-SHA-256-PLUS: the server checks our tls-server-end-point hash of its certificate.
#[tokio::test]
async fn channel_binding_over_tls() {
    let url = url_with(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&channel_binding=require",
            ca()
        ),
    );
    assert!(sql_client_ssl(&url).await.unwrap());
    assert!(replication_client_ssl(&url).await.unwrap());
    let url = url_with("127.0.0.1", "sslmode=require&channel_binding=require");
    assert!(sql_client_ssl(&url).await.unwrap());
    assert!(replication_client_ssl(&url).await.unwrap());

    // Without TLS there is nothing to bind to.
    let url = url_with("127.0.0.1", "sslmode=disable&channel_binding=require");
    assert_config_error(sql_client_ssl(&url).await, &["channel"]);
    assert_config_error(
        replication_client_ssl(&url).await,
        &["channel_binding=require needs TLS"],
    );
}

#[tokio::test]
async fn verify_full_with_a_wrong_ca_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = wrong_ca(dir.path());
    for mode in ["verify-full", "verify-ca"] {
        let url = url_with("localhost", &format!("sslmode={mode}&sslrootcert={wrong}"));
        for r in [
            sql_client_ssl(&url).await,
            replication_client_ssl(&url).await,
        ] {
            assert_config_error(r, &["certificate could not be verified", "sslrootcert="]);
        }
    }
    // A missing sslrootcert file is named in the error.
    let url = url_with(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
    );
    assert_config_error(
        sql_client_ssl(&url).await,
        &["cannot read sslrootcert /nonexistent/ca.crt"],
    );
    assert_config_error(
        replication_client_ssl(&url).await,
        &["cannot read sslrootcert /nonexistent/ca.crt"],
    );
}

/// A whole pipeline (snapshot via the SQL client, slot and stream via the replication client)
/// with verify-full and channel binding required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_over_tls() {
    let c = harness::sql().await;
    let s = Scenario::new("tls");
    let table = format!("t_{}", s.name);
    c.batch_execute(&format!(
        "drop table if exists {table}; \
         create table {table} (id int primary key, payload text); \
         insert into {table} select g, md5(g::text) from generate_series(1, 100) g;"
    ))
    .await
    .unwrap();
    let qualified = format!("public.{table}");
    let url = url_with(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&channel_binding=require",
            ca()
        ),
    );

    // Scenario::command, with the TLS URL.
    let out = Command::new(harness::bin())
        .arg("run")
        .arg("--pipeline")
        .arg(&s.name)
        .arg("--source-url")
        .arg(&url)
        .arg("--output")
        .arg(format!("file://{}", s.out().display()))
        .arg("--table")
        .arg(&qualified)
        .args(["--until-caught-up", "--flush-interval-ms", "300"])
        .env("TIDEMARK_STATE_HOME", s.state())
        .env("TIDEMARK_LOG_FORMAT", "json")
        .env("TIDEMARK_LOG", "info")
        .output()
        .expect("spawn tidemark");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tidemark run failed ({}):\n{log}",
        out.status
    );
    assert!(
        !log.contains(":tidemark@"),
        "the password leaked into the log:\n{log}"
    );

    let snapshot = s.out().join(&s.name).join(&qualified).join("snapshot");
    assert!(
        parquet_files(&snapshot) > 0,
        "no snapshot file under {}:\n{log}",
        snapshot.display()
    );
    let rows = s.output_rows(&qualified, "id");
    assert_eq!(rows.len(), 100);
    s.cleanup(&c).await;
    c.batch_execute(&format!("drop table if exists {table}"))
        .await
        .unwrap();
}

fn parquet_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                parquet_files(&p)
            } else {
                usize::from(p.extension().is_some_and(|x| x == "parquet"))
            }
        })
        .sum()
}

/// The stack server's CA (`TIDEMARK_MY_CA` / `TIDEMARK_MYSQL_CA`), and the other server's (a
/// CA that did not sign this server's certificate).
fn my_cas(server: tidemark_e2e::mysql::Server) -> (String, String) {
    let (ma, my) = (env("TIDEMARK_MY_CA"), env("TIDEMARK_MYSQL_CA"));
    match server {
        tidemark_e2e::mysql::Server::MariaDb => (ma, my),
        tidemark_e2e::mysql::Server::MySql => (my, ma),
    }
}

/// Issue 12 item 6: TLS to MySQL and MariaDB with `sslmode` / `sslrootcert`, on the SQL and the
/// binlog connection: a user that the server admits over TLS only (`REQUIRE SSL`) snapshots
/// and streams with verify-full (and with the default, prefer); plaintext is refused for it;
/// a CA that did not sign the certificate is a configuration error that names the fix;
/// verify-ca works by host name (`localhost`), verify-full by IP address (`127.0.0.1`).
async fn mysql_tls(server: tidemark_e2e::mysql::Server) {
    use tidemark_e2e::mysql::{Server, exec};
    let mut admin = server.admin().await;
    let grants = match server {
        Server::MariaDb => "REPLICATION SLAVE, BINLOG MONITOR, SELECT",
        Server::MySql => "REPLICATION SLAVE, REPLICATION CLIENT, SELECT, RELOAD, XA_RECOVER_ADMIN",
    };
    exec(
        &mut admin,
        &format!(
            "CREATE USER IF NOT EXISTS 'tm_tls'@'127.0.0.1' IDENTIFIED BY 'tidemark' REQUIRE SSL; \
             GRANT {grants} ON *.* TO 'tm_tls'@'127.0.0.1';"
        ),
    )
    .await;
    let (ca, other_ca) = my_cas(server);
    let base = server.url().replacen("tidemark:", "tm_tls:", 1);
    let with =
        |host: &str, params: &str| format!("{}?{params}", base.replacen("127.0.0.1", host, 1));
    let mut c = server.conn().await;
    let mut s = server.scenario("mytls");
    let table = format!("t_{}", s.name);
    server.versioned_table(&mut c, &table, 500).await;
    let qualified = format!("app.{table}");
    let sid = (3_000_000 + fastrand::u32(..1_000_000)).to_string();
    let check = |s: &Scenario| s.check_report(&[&qualified], &["--server-id", &sid]);

    s.source = Some(with("127.0.0.1", "sslmode=disable"));
    let (ok, out) = check(&s);
    assert!(!ok, "REQUIRE SSL refuses plaintext: {out}");

    s.source = Some(with(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={other_ca}"),
    ));
    let (ok, out) = check(&s);
    assert!(
        !ok && out.contains("TLS to MySQL/MariaDB failed") && out.contains("sslrootcert"),
        "a CA that did not sign the certificate: {out}"
    );

    s.source = Some(with(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ));
    let (ok, out) = check(&s);
    assert!(ok, "verify-ca via localhost: {out}");

    // Snapshot and stream over TLS with verify-full, then resume with the default (prefer).
    s.source = Some(with(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    let (ok, out) = check(&s);
    assert!(ok, "verify-full: {out}");
    let args = ["--flush-interval-ms", "200", "--server-id", &sid];
    s.run_caught_up_with(&[&qualified], &args);
    exec(
        &mut c,
        &format!("UPDATE {table} SET v = v + 1 WHERE id <= 50"),
    )
    .await;
    s.run_caught_up_with(&[&qualified], &args);
    s.source = Some(base.clone());
    exec(&mut c, &format!("DELETE FROM {table} WHERE id > 450")).await;
    s.run_caught_up_with(&[&qualified], &args);
    let checked = harness::assert_exactly_once_against(
        &s,
        &qualified,
        &tidemark_e2e::mysql::versions(&mut c, &table).await,
    );
    assert!(checked >= 500, "{checked}");
    server.drop_tables(&[&table]).await;
}
tidemark_e2e::both_servers!(mysql_and_mariadb_over_tls, super::mysql_tls);
