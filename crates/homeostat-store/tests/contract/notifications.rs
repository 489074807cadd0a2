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

on_both_backends!(notifications_back_off_then_die,);
