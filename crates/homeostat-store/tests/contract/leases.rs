//! Controller leases and the fencing of a deposed leader's writes.

use std::time::Duration;

use homeostat_model::{JobState, PlanTier};
use homeostat_runtime::{ControllerStatus, Fence, LastRun, LeaseStore, Outcome};
use homeostat_store::{JobFilter, Store, StoreError};
use homeostat_testkit::{At, at, job, on_both_backends, t0, tenant};

async fn fenced_writes_from_a_superseded_epoch_change_nothing(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    store
        .at(t0())
        .enqueue(t, &{
            let mut j = job("q");
            j.run_at = Some(at(10));
            j
        })
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    let old = store
        .acquire("job-scheduler", "replica-a", ttl)
        .await
        .unwrap()
        .unwrap();
    store.release(&old).await.unwrap();
    let new = store
        .acquire("job-scheduler", "replica-b", ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.epoch, old.epoch + 1);

    let stale = Fence {
        name: "job-scheduler".into(),
        epoch: old.epoch,
    };
    let err = store
        .at(at(20))
        .promote_scheduled(100, Some(&stale))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { epoch, .. } if epoch == old.epoch),
        "{err}"
    );
    let page = store
        .list_jobs(&JobFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(page.items[0].state, JobState::Scheduled, "nothing changed");

    let current = Fence {
        name: "job-scheduler".into(),
        epoch: new.epoch,
    };
    assert_eq!(
        store
            .at(at(20))
            .promote_scheduled(100, Some(&current))
            .await
            .unwrap()
            .changed,
        1
    );
    let events = store.audit_events(0, 1000).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.action, "jobs.promoted");
    assert_eq!(
        last.actor,
        format!("controller:job-scheduler@{}", new.epoch)
    );
}

async fn leases_follow_the_database_clock_and_epochs_grow(store: &Store) {
    let ttl = Duration::from_secs(30);
    let a = store.acquire("c", "a", ttl).await.unwrap().unwrap();
    assert_eq!(a.epoch, 1);
    assert!(store.acquire("c", "b", ttl).await.unwrap().is_none());
    let again = store.acquire("c", "a", ttl).await.unwrap().unwrap();
    assert_eq!(again.epoch, 1, "the holder keeps its epoch");
    let renewed = store.renew(&a, ttl).await.unwrap().unwrap();
    assert!(renewed.expires_at >= a.expires_at);
    store.release(&a).await.unwrap();
    assert!(store.renew(&a, ttl).await.unwrap().is_none(), "released");
    let b = store
        .acquire("c", "b", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.epoch, 2);
    // Expiry is the database's: wait for it (bounded), then a takes over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let taken = loop {
        if let Some(l) = store.acquire("c", "a", ttl).await.unwrap() {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(taken.epoch, 3);
    assert!(store.renew(&b, ttl).await.unwrap().is_none());
}

async fn only_the_holder_publishes_a_controllers_status(store: &Store) {
    let ttl = Duration::from_secs(60);
    let status = |items: u64| ControllerStatus {
        name: "c".into(),
        interval: Duration::from_secs(5),
        exclusive: true,
        leader: true,
        running: false,
        last_run: Some(LastRun {
            started_at: std::time::SystemTime::UNIX_EPOCH
                + Duration::from_millis(1_700_000_000_123),
            duration: Duration::from_millis(42),
            outcome: Outcome::Success,
            items,
            error: None,
        }),
        last_success_at: Some(
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ),
        consecutive_failures: 0,
        next_run: Some(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_005)),
        keys: Some(homeostat_runtime::KeyCounts {
            waiting: 4,
            active: 1,
        }),
        tasks: 2,
    };
    assert!(store.published().await.unwrap().is_empty());
    let a = store.acquire("c", "a", ttl).await.unwrap().unwrap();
    store.publish(&a, &status(3)).await.unwrap();
    assert_eq!(
        store.published().await.unwrap()["c"],
        status(3),
        "read back whole"
    );
    store.release(&a).await.unwrap();
    let b = store.acquire("c", "b", ttl).await.unwrap().unwrap();
    store.publish(&a, &status(9)).await.unwrap();
    assert_eq!(
        store.published().await.unwrap()["c"],
        status(3),
        "a deposed leader's status is ignored"
    );
    store.publish(&b, &status(7)).await.unwrap();
    assert_eq!(
        store.published().await.unwrap()["c"]
            .last_run
            .as_ref()
            .unwrap()
            .items,
        7
    );
}

on_both_backends!(
    only_the_holder_publishes_a_controllers_status,
    fenced_writes_from_a_superseded_epoch_change_nothing,
    leases_follow_the_database_clock_and_epochs_grow,
);
