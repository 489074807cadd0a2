//! What SQLite's one writer is spared: a claim that finds nothing queued
//! reads beside it, so an idle fleet's long polls do not queue behind (or
//! in front of) the claims that find work.

#![cfg(feature = "sqlite")]

use std::time::Duration;

use homeostat_model::PlanTier;
use homeostat_testkit::{agent, job, tenant};
use sqlx::Connection;

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_finds_nothing_queued_does_not_wait_for_the_writer() {
    let store = homeostat_testkit::sqlite().await;
    let url = format!("sqlite:{}", store.path().unwrap().display());
    let t = tenant(&store, "acme", PlanTier::Free).await;
    let a = agent(&store, Some(t), &["builds"]).await;

    // Another process holds the database's write lock: a claim that needed
    // the writer would wait out the busy timeout and fail.
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let claimed = store
        .claim(a, 1, LEASE)
        .await
        .expect("a claim with nothing queued waited for the writer");
    assert!(claimed.is_empty());
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();

    // With a job queued, the next claim takes it (the read saw it).
    let queued = store.enqueue(t, &job("builds")).await.unwrap();
    let claimed = store.claim(a, 1, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, queued.id);
    // Still refused to an agent that may not claim, with nothing queued.
    store.drain_agent(a, "operator:test").await.unwrap();
    let err = store.claim(a, 1, LEASE).await.unwrap_err();
    assert!(err.to_string().contains("draining"), "{err}");

    drop(other);
    store.cleanup().await;
}
