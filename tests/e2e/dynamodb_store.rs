//! The DynamoDB position store against the local AWS emulator (moto) through the real
//! aws-sdk-dynamodb client. Each test uses its own table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tidemark_core::ErrorKind;
use tidemark_core::position::{Lsn, PgPosition};
use tidemark_core::store::dynamodb::DynamoStore;
use tidemark_core::store::{Checkpoint, PositionStore, SourcePosition, conformance};

fn require_stack() {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some_and(|v| !v.is_empty()),
        "AWS_ENDPOINT_URL is not set: run infra/local/stack up aws and eval \"$(infra/local/stack env)\""
    );
}

fn unique(tag: &str) -> String {
    format!("tidemark-e2e-{tag}-{:x}", fastrand::u64(..))
}

/// A store on a new table, created by `open`.
async fn fresh_store(tag: &str) -> DynamoStore {
    require_stack();
    DynamoStore::open(&format!("dynamodb://{}", unique(tag)), true)
        .await
        .unwrap()
}

async fn drop_table(store: &DynamoStore) {
    store
        .client()
        .delete_table()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
}

fn pos(lsn: u64) -> Option<SourcePosition> {
    Some(SourcePosition::Postgres(PgPosition::complete(
        Lsn(lsn),
        Lsn(lsn + 8),
    )))
}

#[tokio::test]
async fn conformance_on_a_created_table() {
    let store = fresh_store("conformance").await;
    conformance::run(&store).await;
    // The table now exists: opening it again needs no creation.
    let again = DynamoStore::open(&store.url(), false).await.unwrap();
    assert_eq!(again.url(), store.url());
    drop_table(&store).await;
}

#[tokio::test]
async fn missing_table_is_a_config_error_naming_the_fix() {
    require_stack();
    let table = unique("missing");
    let e = DynamoStore::open(&format!("dynamodb://{table}"), false)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&table), "{msg}");
    assert!(
        msg.contains("partition key pk") && msg.contains("--create-table"),
        "{msg}"
    );
}

/// Eight workers race for one pipeline's lease, first a fresh one and then an expired one:
/// each time exactly one wins and the others get a conflict naming the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_acquirers_exactly_one_wins() {
    let store = Arc::new(fresh_store("race").await);
    let p = unique("pipeline");

    async fn race(store: &Arc<DynamoStore>, p: &str, round: &str) -> tidemark_core::store::Lease {
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (store, p, start) = (store.clone(), p.to_string(), start.clone());
                let owner = format!("{round}-worker-{i}");
                tokio::spawn(async move {
                    start.wait().await;
                    store.acquire_lease(&p, &owner, 60_000).await
                })
            })
            .collect();
        let (mut won, mut lost) = (Vec::new(), Vec::new());
        for t in tasks {
            match t.await.unwrap() {
                Ok(l) => won.push(l),
                Err(e) => lost.push(e),
            }
        }
        assert_eq!(won.len(), 1, "exactly one winner: {won:?}");
        assert_eq!(lost.len(), 7);
        for e in &lost {
            assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
            assert!(e.to_string().contains(&won[0].owner), "{e}");
        }
        assert_eq!(store.lease(p).await.unwrap().as_ref(), Some(&won[0]));
        won.remove(0)
    }

    let first = race(&store, &p, "a").await;
    assert_eq!(first.epoch, 1);

    // Let it expire (by releasing it), then race for the takeover.
    store.release_lease(&first).await.unwrap();
    let second = race(&store, &p, "b").await;
    assert_eq!(second.epoch, 2, "a takeover increments the epoch once");
    drop_table(&store).await;
}

/// A worker that lost its lease cannot save: neither through `save` (the client-side check)
/// nor through the conditional write alone (the case of a takeover landing between the read
/// and the write), and the stored item stays exactly as it was.
#[tokio::test]
async fn fenced_save_after_takeover_leaves_the_item_unchanged() {
    let store = fresh_store("fence").await;
    let p = unique("pipeline");

    let a = store.acquire_lease(&p, "worker-a", 300).await.unwrap();
    let mut first = Checkpoint::new(&p).next();
    first.position = pos(100);
    store.save(None, &first, Some(&a)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let b = store.acquire_lease(&p, "worker-b", 60_000).await.unwrap();
    assert_eq!(b.epoch, 2);

    let before = store.raw_item(&p).await.unwrap().expect("item exists");
    let mut next = first.next();
    next.position = pos(200);

    let e = store
        .save(first.expected(), &next, Some(&a))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("worker-b"), "{e}");
    let e = store
        .save_condition_only(first.expected(), &next, Some(&a))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    // The version condition alone also stops a stale writer.
    let e = store
        .save_condition_only(None, &next, Some(&b))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");

    let after = store.raw_item(&p).await.unwrap().expect("item exists");
    assert_eq!(after, before, "rejected saves change nothing");
    assert_eq!(after["version"].as_n().unwrap(), "1");
    let stored: Checkpoint = serde_json::from_str(after["checkpoint"].as_s().unwrap()).unwrap();
    assert_eq!(stored, first);
    assert_eq!(
        after["position"].as_s().unwrap(),
        &pos(100).unwrap().to_string()
    );
    assert_eq!(after["lease_owner"].as_s().unwrap(), "worker-b");
    assert_eq!(after["lease_epoch"].as_n().unwrap(), "2");

    // The new holder saves.
    store.save(first.expected(), &next, Some(&b)).await.unwrap();
    let after = store.raw_item(&p).await.unwrap().unwrap();
    assert_eq!(after["version"].as_n().unwrap(), "2");
    assert_eq!(
        after["lease_owner"].as_s().unwrap(),
        "worker-b",
        "saves keep the lease"
    );
    assert_eq!(store.load(&p).await.unwrap(), Some(next));
    drop_table(&store).await;
}
