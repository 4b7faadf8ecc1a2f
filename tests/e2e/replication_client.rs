//! Replication client against the real PostgreSQL of `infra/local/stack`.
//!
//! Every test uses its own table, publication and slot names (tests run in parallel) and drops
//! its slots at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tidemark_core::ErrorKind;
use tidemark_core::position::Lsn;
use tidemark_core::source::postgres::replication::{
    ReplicationClient, ReplicationMessage, ReplicationStream, ServerError,
};
use tokio_postgres::{Client, NoTls};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the local stack with `infra/local/stack up` and load its settings with \
             `eval \"$(infra/local/stack env)\"`"
        )
    })
}

/// `tidemark` (SCRAM over TCP, REPLICATION attribute, owner of database `app`).
fn pg_url() -> String {
    env("TIDEMARK_PG_URL")
}

/// `postgres` (trust over TCP).
fn pg_admin_url() -> String {
    env("TIDEMARK_PG_ADMIN_URL")
}

fn config(url: &str) -> tokio_postgres::Config {
    url.parse().expect("valid PostgreSQL URL")
}

async fn sql(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to the local PostgreSQL (is `infra/local/stack up` running?)");
    tokio::spawn(conn);
    client
}

async fn repl(url: &str) -> ReplicationClient {
    ReplicationClient::connect(&config(url), "tidemark-e2e")
        .await
        .expect("replication connection")
}

/// A unique lower-case name (slot names allow `[a-z0-9_]` only).
fn unique(what: &str) -> String {
    format!("tm_rc_{what}_{}_{}", std::process::id(), fastrand::u32(..))
}

/// Table `name (id int primary key, payload text)` and publication `name` for it.
async fn table_with_publication(c: &Client, name: &str) {
    c.batch_execute(&format!(
        "create table {name} (id int primary key, len int not null, payload text); \
         alter table {name} alter column payload set storage external; \
         create publication {name} for table {name};"
    ))
    .await
    .unwrap();
}

/// Drops a test's slot, publication and table when it goes out of scope, also when the test
/// panics (a leaked slot retains WAL on the shared stack). Declare it before the connections so
/// it runs after they are gone; idempotent after a successful `drop_slot`.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = sql(&pg_admin_url()).await;
                for _ in 0..100 {
                    let _ = admin
                        .execute(
                            "select pg_terminate_backend(active_pid) from pg_replication_slots \
                             where slot_name = $1 and active",
                            &[&name],
                        )
                        .await;
                    let dropped = admin
                        .execute(
                            "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                             where slot_name = $1",
                            &[&name],
                        )
                        .await;
                    if dropped.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                admin
                    .batch_execute(&format!(
                        "drop publication if exists {name}; drop table if exists {name};"
                    ))
                    .await
                    .unwrap();
            });
        });
        let _ = cleanup.join();
    }
}

/// Drops a slot through a fresh replication connection (`WAIT` covers a walsender still exiting).
async fn drop_slot(slot: &str) {
    let mut c = repl(&pg_url()).await;
    c.drop_slot(slot).await.unwrap();
    c.close().await.unwrap();
}

// ---- a minimal pgoutput reader, enough to check what arrives -----------------------------

#[derive(Debug, Clone, PartialEq)]
enum Pg {
    Begin {
        final_lsn: Lsn,
    },
    Relation {
        id: u32,
        name: String,
    },
    Insert {
        relation: u32,
        id: i32,
        len: i32,
        payload: String,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
    },
    Other(u8),
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn cstr(&mut self) -> String {
        let end = self.0.iter().position(|&b| b == 0).unwrap();
        let s = String::from_utf8(self.0[..end].to_vec()).unwrap();
        self.0 = &self.0[end + 1..];
        s
    }
    /// A tuple of text columns.
    fn tuple(&mut self) -> Vec<Option<String>> {
        let n = self.i16();
        (0..n)
            .map(|_| match self.u8() {
                b't' => {
                    let len = self.u32() as usize;
                    Some(String::from_utf8(self.take(len).to_vec()).unwrap())
                }
                b'n' => None,
                other => panic!("unexpected tuple column kind {:?}", other as char),
            })
            .collect()
    }
}

fn decode(data: &[u8]) -> Pg {
    let mut r = R(&data[1..]);
    match data[0] {
        b'B' => Pg::Begin {
            final_lsn: Lsn(r.u64()),
        },
        b'R' => {
            let id = r.u32();
            let _namespace = r.cstr();
            Pg::Relation { id, name: r.cstr() }
        }
        b'I' => {
            let relation = r.u32();
            assert_eq!(r.u8(), b'N');
            let t = r.tuple();
            let int = |i: usize| t[i].as_deref().unwrap().parse().unwrap();
            Pg::Insert {
                relation,
                id: int(0),
                len: int(1),
                payload: t[2].clone().unwrap_or_default(),
            }
        }
        b'C' => {
            let _flags = r.u8();
            Pg::Commit {
                commit_lsn: Lsn(r.u64()),
                end_lsn: Lsn(r.u64()),
            }
        }
        other => Pg::Other(other),
    }
}

/// Reads XLogData payloads until `done` says so, failing after `limit`.
async fn collect_until(
    stream: &mut ReplicationStream,
    limit: Duration,
    mut done: impl FnMut(&[Pg]) -> bool,
) -> Vec<Pg> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; received so far: {out:?}"))
            .unwrap()
            .expect("stream ended early");
        if let ReplicationMessage::XLogData {
            data,
            server_time,
            wal_start,
            wal_end,
        } = msg
        {
            assert!(
                wal_start <= wal_end || wal_end == Lsn::ZERO,
                "{wal_start} > {wal_end}"
            );
            assert_server_time_is_now(server_time);
            out.push(decode(&data));
        }
    }
    out
}

fn assert_server_time_is_now(server_time: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    assert!(
        (now - server_time).abs() < 3_600_000_000,
        "server_time {server_time} is not unix micros near {now}"
    );
}

fn payload(id: i32, size: usize) -> String {
    let mut s = format!("<{id}>");
    while s.len() < size {
        s.push_str(&format!("{:08x}", fastrand::u32(..)));
    }
    s.push_str(&format!("</{id}>"));
    s
}

// ---- tests ------------------------------------------------------------------------------

/// SCRAM (tidemark) and trust (postgres) logins, IDENTIFY_SYSTEM, and the pinned session settings.
#[tokio::test]
async fn scram_and_trust_logins_identify_system_and_pinned_settings() {
    for url in [pg_url(), pg_admin_url()] {
        let mut c = repl(&url).await;
        assert!(c.backend_pid().is_some());
        let version = c
            .server_version()
            .expect("server_version reported at startup")
            .to_string();
        assert!(
            version.starts_with(|ch: char| ch.is_ascii_digit()),
            "{version}"
        );

        let id = c.identify_system().await.unwrap();
        assert!(
            !id.systemid.is_empty() && id.systemid.chars().all(|ch| ch.is_ascii_digit()),
            "{id:?}"
        );
        assert!(id.timeline >= 1, "{id:?}");
        assert!(id.xlogpos > Lsn::ZERO, "{id:?}");
        assert_eq!(id.dbname.as_deref(), Some("app"));

        // The same system as seen through ordinary SQL.
        let s = sql(&url).await;
        let row = s
            .query_one(
                "select system_identifier::text from pg_control_system()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), id.systemid);

        for (setting, want) in [
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
            ("IntervalStyle", "iso_8601"),
            ("bytea_output", "hex"),
            ("application_name", "tidemark-e2e"),
        ] {
            let rows = c.simple_query(&format!("SHOW {setting}")).await.unwrap();
            let value = rows[0][0].clone().unwrap();
            assert!(value.starts_with(want), "{setting} = {value}, want {want}");
        }
        // Several statements, NULLs, and an error that leaves the connection usable.
        let rows = c
            .simple_query("select 1 as a, null::text as b; select 'x'")
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("1".to_string()), None],
                vec![Some("x".to_string())]
            ]
        );
        let e = c
            .simple_query("select * from tm_no_such_table_at_all")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert_eq!(c.identify_system().await.unwrap().systemid, id.systemid);
        c.close().await.unwrap();
    }
}

/// A Unix-socket connection (host = the server's socket directory), trust auth as postgres.
#[tokio::test]
async fn unix_socket_login() {
    let admin = sql(&pg_admin_url()).await;
    let dirs: String = admin
        .query_one("show unix_socket_directories", &[])
        .await
        .unwrap()
        .get(0);
    let dir = dirs.split(',').next().unwrap().trim().to_string();
    let port = config(&pg_admin_url()).get_ports()[0];
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(&dir)
        .port(port)
        .user("postgres")
        .dbname("app");
    let mut c = ReplicationClient::connect(&cfg, "tidemark-e2e")
        .await
        .unwrap();
    assert_eq!(
        c.identify_system().await.unwrap().dbname.as_deref(),
        Some("app")
    );
    c.close().await.unwrap();
}

/// A wrong password is a config error that says to check the password.
#[tokio::test]
async fn wrong_password_is_a_config_error() {
    let mut cfg = config(&pg_url());
    cfg.password("definitely-not-the-password");
    let e = ReplicationClient::connect(&cfg, "tidemark-e2e")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let text = e.to_string();
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("check the password"), "{text}");
    let server = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<ServerError>())
        .unwrap();
    assert_eq!(server.code, "28P01");

    // sslmode=require is honoured (TLS to the local stack).
    let mut cfg = config(&pg_url());
    cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
    let c = ReplicationClient::connect(&cfg, "tidemark-e2e")
        .await
        .unwrap();
    assert!(c.is_tls());
    c.close().await.unwrap();
}

/// A role without the REPLICATION attribute gets a config error that says `ALTER ROLE .. REPLICATION`.
#[tokio::test]
async fn role_without_replication_is_a_config_error() {
    let admin = sql(&pg_admin_url()).await;
    let role = unique("norepl");
    admin
        .batch_execute(&format!("create role {role} login password 'pw'"))
        .await
        .unwrap();
    let mut cfg = config(&pg_url());
    cfg.user(&role).password("pw");
    let r = ReplicationClient::connect(&cfg, "tidemark-e2e").await;
    admin
        .batch_execute(&format!("drop role {role}"))
        .await
        .unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("ALTER ROLE \"{role}\" REPLICATION")),
        "{e}"
    );
}

/// The exported snapshot sees exactly the rows committed before the slot; the stream delivers
/// Begin/Relation/Insert/Commit for exactly the rows inserted after it.
#[tokio::test]
async fn exported_snapshot_then_stream_hand_off() {
    let name = unique("handoff");
    let _cleanup = Cleanup(name.clone());
    let s = sql(&pg_url()).await;
    table_with_publication(&s, &name).await;
    s.batch_execute(&format!(
        "insert into {name} select g, 1, 'before' from generate_series(1, 5) g"
    ))
    .await
    .unwrap();

    let mut c = repl(&pg_url()).await;
    let created = c.create_slot_exporting(&name).await.unwrap();
    assert_eq!(created.slot_name, name);
    assert!(!created.snapshot_name.is_empty());
    assert!(created.consistent_point > Lsn::ZERO);
    assert_eq!(created.output_plugin.as_deref(), Some("pgoutput"));

    // Committed after the slot: not in the snapshot, in the stream.
    for id in 6..=8 {
        s.execute(
            &format!("insert into {name} values ($1, 1, 'after')"),
            &[&id],
        )
        .await
        .unwrap();
    }

    let mut copy = sql(&pg_url()).await;
    let tx = copy
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    tx.batch_execute(&format!(
        "SET TRANSACTION SNAPSHOT '{}'",
        created.snapshot_name
    ))
    .await
    .unwrap();
    let ids: Vec<i32> = tx
        .query(&format!("select id from {name} order by id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await.unwrap();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);

    let mut stream = c
        .start_replication(&name, Lsn::ZERO, &name, 1)
        .await
        .unwrap();
    let got = collect_until(&mut stream, Duration::from_secs(30), |m| {
        m.iter().filter(|p| matches!(p, Pg::Commit { .. })).count() == 3
    })
    .await;
    let tags: Vec<char> = got
        .iter()
        .map(|p| match p {
            Pg::Begin { .. } => 'B',
            Pg::Relation { .. } => 'R',
            Pg::Insert { .. } => 'I',
            Pg::Commit { .. } => 'C',
            Pg::Other(t) => *t as char,
        })
        .collect();
    // pgoutput sends Relation before the first change of a table in a session, and again
    // after any invalidation (other tests' DDL runs in parallel): ignore repeats.
    assert_eq!(&tags[..2], &['B', 'R'], "{got:?}");
    let without_relations: String = tags.iter().filter(|t| **t != 'R').collect();
    assert_eq!(without_relations, "BICBICBIC", "{got:?}");
    let rel = got.iter().find_map(|p| match p {
        Pg::Relation { id, name } => Some((*id, name.clone())),
        _ => None,
    });
    let (rel_id, rel_name) = rel.unwrap();
    assert_eq!(rel_name, name);
    let inserted: Vec<i32> = got
        .iter()
        .filter_map(|p| match p {
            Pg::Insert {
                relation,
                id,
                payload,
                ..
            } => {
                assert_eq!(*relation, rel_id);
                assert_eq!(payload, "after");
                Some(*id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(inserted, vec![6, 7, 8]);
    for p in &got {
        if let Pg::Begin { final_lsn }
        | Pg::Commit {
            commit_lsn: final_lsn,
            ..
        } = p
        {
            assert!(
                *final_lsn >= created.consistent_point,
                "{final_lsn} < {}",
                created.consistent_point
            );
        }
    }

    stream.close().await.unwrap();
    drop_slot(&name).await;
}

/// `send_status(reply_requested)` gets a keepalive back, and `flush = X` moves the slot's
/// `confirmed_flush_lsn` to X.
#[tokio::test]
async fn status_updates_get_keepalives_and_move_confirmed_flush() {
    let name = unique("status");
    let _cleanup = Cleanup(name.clone());
    let s = sql(&pg_url()).await;
    table_with_publication(&s, &name).await;
    let mut c = repl(&pg_url()).await;
    let created = c.create_slot(&name).await.unwrap();
    assert_eq!(created.snapshot_name, "");
    s.batch_execute(&format!("insert into {name} values (1, 1, 'x')"))
        .await
        .unwrap();

    let mut stream = c
        .start_replication(&name, Lsn::ZERO, &name, 1)
        .await
        .unwrap();
    let got = collect_until(&mut stream, Duration::from_secs(30), |m| {
        m.iter().any(|p| matches!(p, Pg::Commit { .. }))
    })
    .await;
    let Some(Pg::Commit {
        end_lsn,
        commit_lsn,
    }) = got.last().cloned()
    else {
        panic!("{got:?}")
    };
    assert!(end_lsn > commit_lsn && commit_lsn > created.consistent_point);

    let slot_lsn = || async {
        let row = s
            .query_one(
                "select confirmed_flush_lsn::text, active from pg_replication_slots where slot_name = $1",
                &[&name],
            )
            .await
            .unwrap();
        (
            row.get::<_, String>(0).parse::<Lsn>().unwrap(),
            row.get::<_, bool>(1),
        )
    };
    let (before, active) = slot_lsn().await;
    assert!(active);
    assert!(before < end_lsn, "{before} >= {end_lsn}");

    stream
        .send_status(end_lsn, end_lsn, end_lsn, true)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next())
            .await
            .expect("no keepalive after a reply request")
        {
            Ok(Some(ReplicationMessage::PrimaryKeepalive {
                wal_end,
                server_time,
                ..
            })) => {
                assert!(wal_end >= end_lsn, "{wal_end} < {end_lsn}");
                assert_server_time_is_now(server_time);
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (lsn, _) = slot_lsn().await;
        if lsn == end_lsn {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn stayed at {lsn}, want {end_lsn}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stream.close().await.unwrap();
    drop_slot(&name).await;
}

/// `next()` under `tokio::time::timeout` with zero or tiny deadlines while small, large and
/// huge (multi-MB, larger than the socket buffers) rows are inserted: every Insert arrives exactly
/// once and intact. Rows keep coming until enough cancellations hit a partially received frame
/// (or a cap on rows), so the interesting case is exercised on every run.
#[tokio::test]
async fn next_is_cancel_safe() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const MIN_ROWS: usize = 100;
    const MAX_ROWS: i32 = 1_000;
    const WANT_MID_FRAME: u32 = 20;
    let name = unique("cancel");
    let _cleanup = Cleanup(name.clone());
    let s = sql(&pg_url()).await;
    table_with_publication(&s, &name).await;
    let mut c = repl(&pg_url()).await;
    c.create_slot(&name).await.unwrap();
    let mut stream = c
        .start_replication(&name, Lsn::ZERO, &name, 1)
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = {
        let (name, stop) = (name.clone(), stop.clone());
        tokio::spawn(async move {
            let s = sql(&pg_url()).await;
            let mut id = 1;
            while id <= MAX_ROWS && !stop.load(Ordering::Relaxed) {
                let mut batch = String::from("begin;");
                for _ in 0..fastrand::i32(1..=8) {
                    let size = match fastrand::u8(0..8) {
                        0 | 1 => fastrand::usize(0..100),
                        2 | 3 => fastrand::usize(1_000..20_000),
                        4..=6 => fastrand::usize(100_000..1_500_000),
                        _ => fastrand::usize(3_000_000..6_000_000),
                    };
                    let p = payload(id, size);
                    batch.push_str(&format!(
                        "insert into {name} values ({id}, {}, '{p}');",
                        p.len()
                    ));
                    id += 1;
                }
                batch.push_str("commit;");
                s.batch_execute(&batch).await.unwrap();
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..5))).await;
            }
            id - 1
        })
    };

    let mut seen: HashMap<i32, usize> = HashMap::new();
    let (mut cancelled, mut cancelled_mid_frame) = (0u32, 0u32);
    let mut inserted: Option<i32> = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    while inserted.is_none_or(|n| seen.len() < n as usize) {
        assert!(
            Instant::now() < deadline,
            "only {} rows arrived ({inserted:?} inserted)",
            seen.len()
        );
        if seen.len() >= MIN_ROWS && cancelled_mid_frame >= WANT_MID_FRAME {
            stop.store(true, Ordering::Relaxed);
        }
        if inserted.is_none() && writer.is_finished() {
            inserted = Some((&mut writer).await.unwrap());
        }
        // Zero (poll once, then cancel) or a few hundred microseconds.
        let budget =
            Duration::from_micros(fastrand::choice([0, 0, 0, fastrand::u64(1..400)]).unwrap());
        match tokio::time::timeout(budget, stream.next()).await {
            Err(_) => {
                cancelled += 1;
                if stream.buffered() > 0 {
                    cancelled_mid_frame += 1;
                }
            }
            Ok(r) => {
                let msg = r.unwrap().expect("stream ended early");
                if let ReplicationMessage::XLogData { data, .. } = msg
                    && let Pg::Insert {
                        id, len, payload, ..
                    } = decode(&data)
                {
                    assert_eq!(payload.len(), len as usize, "row {id} corrupted");
                    assert!(
                        payload.starts_with(&format!("<{id}>")),
                        "row {id} corrupted"
                    );
                    assert!(payload.ends_with(&format!("</{id}>")), "row {id} corrupted");
                    *seen.entry(id).or_default() += 1;
                }
            }
        }
    }
    let inserted = inserted.unwrap();
    // Anything still in flight would be a duplicate: give the server a moment to send it.
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        if let ReplicationMessage::XLogData { data, .. } = r.unwrap().unwrap()
            && let Pg::Insert { id, .. } = decode(&data)
        {
            *seen.entry(id).or_default() += 1;
        }
    }
    eprintln!(
        "{inserted} rows, {cancelled} cancellations, {cancelled_mid_frame} with a partial frame buffered"
    );
    let wrong: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(wrong.is_empty(), "rows not seen exactly once: {wrong:?}");
    assert!(seen.keys().all(|id| (1..=inserted).contains(id)));
    assert_eq!(seen.len(), inserted as usize);
    assert!(
        cancelled_mid_frame > 0,
        "no cancellation hit a partial frame ({cancelled} cancellations)"
    );

    stream.close().await.unwrap();
    drop_slot(&name).await;
}

/// A slot that doesn't exist: drop_slot and start_replication fail with config errors, and a
/// failed command leaves the client usable.
#[tokio::test]
async fn missing_slot_is_a_config_error() {
    let slot = unique("missing");
    let mut c = repl(&pg_url()).await;
    let e = c.drop_slot(&slot).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    c.identify_system().await.unwrap();

    let e = c
        .start_replication(&slot, Lsn::ZERO, "whatever", 1)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("replication slot \"{slot}\" does not exist")),
        "{text}"
    );
    assert!(text.contains("create the slot first"), "{text}");
}

/// A slot streamed by another connection: transient error naming the PID.
#[tokio::test]
async fn slot_in_use_is_transient() {
    let name = unique("inuse");
    let _cleanup = Cleanup(name.clone());
    let s = sql(&pg_url()).await;
    table_with_publication(&s, &name).await;
    let mut c = repl(&pg_url()).await;
    c.create_slot(&name).await.unwrap();
    let stream = c
        .start_replication(&name, Lsn::ZERO, &name, 1)
        .await
        .unwrap();

    let e = repl(&pg_url())
        .await
        .start_replication(&name, Lsn::ZERO, &name, 1)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("is active for PID"), "{e}");

    stream.close().await.unwrap();
    drop_slot(&name).await;
}

/// A missing publication: config error from `next()` once there is something to decode (any
/// change in the database), and the stream is over afterwards.
#[tokio::test]
async fn missing_publication_is_a_config_error_from_next() {
    let name = unique("nopub");
    let _cleanup = Cleanup(name.clone());
    let s = sql(&pg_url()).await;
    table_with_publication(&s, &name).await;
    let mut c = repl(&pg_url()).await;
    c.create_slot(&name).await.unwrap();
    let mut stream = c
        .start_replication(&name, Lsn::ZERO, &format!("{name}_missing"), 1)
        .await
        .unwrap();

    s.batch_execute(&format!("insert into {name} values (1, 1, 'x')"))
        .await
        .unwrap();
    let e = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap()
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("publication \"{name}_missing\" does not exist")),
        "{text}"
    );
    assert!(text.contains("create the publication first"), "{text}");
    assert!(
        stream.next().await.unwrap().is_none(),
        "the stream is over after an error"
    );
    stream.close().await.unwrap();

    drop_slot(&name).await;
}
