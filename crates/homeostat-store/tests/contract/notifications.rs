//! Notifications: retries with backoff, then dead.

use std::time::Duration;

use homeostat_model::NotificationState;
use homeostat_store::{Delivery, Store};
use homeostat_testkit::{At, at, on_both_backends, t0};
use jiff::SignedDuration;
use serde_json::json;

async fn notifications_back_off_then_die(store: &Store) {
    let id = store
        .at(t0())
        .add_notification("job.dead", &json!({"job": "x"}))
        .await
        .unwrap();
    let hold = Duration::from_secs(30);
    let claimed = store
        .at(t0())
        .claim_due_notifications(10, hold, None)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        store
            .at(t0())
            .claim_due_notifications(10, hold, None)
            .await
            .unwrap()
            .is_empty(),
        "held"
    );
    let failed = Delivery::Failed {
        error: "502".into(),
        permanent: false,
    };
    let mut now = t0();
    for attempt in 1..=4u32 {
        let state = store.at(now).record_delivery(id, &failed).await.unwrap();
        assert_eq!(state, NotificationState::Pending);
        let n = store.get_notification(id).await.unwrap();
        let wait = (2i64.pow(attempt) * 60).min(3600);
        assert_eq!(
            n.next_attempt_at,
            now + SignedDuration::from_secs(wait),
            "attempt {attempt}"
        );
        now = n.next_attempt_at;
        assert_eq!(
            store
                .at(now)
                .claim_due_notifications(10, hold, None)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    assert_eq!(
        store.at(now).record_delivery(id, &failed).await.unwrap(),
        NotificationState::Dead
    );
    assert!(
        store
            .at(at(100_000))
            .claim_due_notifications(10, hold, None)
            .await
            .unwrap()
            .is_empty()
    );

    let id = store
        .at(t0())
        .add_notification("agent.offline", &json!({}))
        .await
        .unwrap();
    let gone = Delivery::Failed {
        error: "404".into(),
        permanent: true,
    };
    assert_eq!(
        store.at(t0()).record_delivery(id, &gone).await.unwrap(),
        NotificationState::Dead
    );
    let id = store
        .at(t0())
        .add_notification("agent.offline", &json!({}))
        .await
        .unwrap();
    assert_eq!(
        store
            .at(t0())
            .record_delivery(id, &Delivery::Sent)
            .await
            .unwrap(),
        NotificationState::Sent
    );
}

/// A job an agent's report kills — a permanent failure, or its last
/// attempt failing — is told as `job.dead`, as a controller's kill is; a
/// retry is not; the error text stays out of it.
async fn every_way_a_job_dies_is_told(store: &Store) {
    use homeostat_model::PlanTier;
    use homeostat_store::Failure;
    use homeostat_testkit::{agent, job, tenant};
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let mut once = job("q");
    once.max_attempts = Some(1);
    let mut twice = job("q");
    twice.max_attempts = Some(2);
    let used_up = store.at(t0()).enqueue(t, &once).await.unwrap().id;
    let permanent = store.at(t0()).enqueue(t, &twice).await.unwrap().id;
    let retried = store.at(t0()).enqueue(t, &twice).await.unwrap().id;
    let claimed = store
        .at(at(1))
        .claim(a, 3, Duration::from_secs(60))
        .await
        .unwrap();
    for c in &claimed {
        let failure = Failure {
            agent: a,
            id: c.id,
            lease_token: c.lease_token,
            error: "exit 1: token=s3cr3t",
            permanent: c.id == permanent,
        };
        store.at(at(2)).fail(&failure).await.unwrap();
    }
    let pending = store
        .list_notifications(NotificationState::Pending, None, 100)
        .await
        .unwrap()
        .items;
    let dead: Vec<_> = pending
        .iter()
        .filter(|n| n.event == "job.dead")
        .map(|n| n.payload["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(dead.len(), 2, "{pending:?}");
    assert!(dead.contains(&used_up.to_string()) && dead.contains(&permanent.to_string()));
    assert!(
        !dead.contains(&retried.to_string()),
        "a retry was told as a death"
    );
    assert!(
        !serde_json::to_string(&pending).unwrap().contains("s3cr3t"),
        "the error text reached a notification"
    );
}

on_both_backends!(
    notifications_back_off_then_die,
    every_way_a_job_dies_is_told,
);
