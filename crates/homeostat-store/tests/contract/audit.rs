//! The hash-chained audit log: verification and retention.

use std::time::Duration;

use homeostat_runtime::{Fence, LeaseStore};
use homeostat_store::{AuditRetentionRun, Store, StoreError};
use homeostat_testkit::{At, at, on_both_backends};
use serde_json::json;

use crate::raw;

async fn the_audit_chain_detects_edits_deletions_and_reordering(store: &Store) {
    use homeostat_model::NewAuditEvent;
    let events: Vec<NewAuditEvent> = (0..5)
        .map(|i| NewAuditEvent {
            actor: "operator:test".into(),
            action: "test.event".into(),
            subject: format!("thing:{i}"),
            details: json!({"i": i}),
        })
        .collect();
    for (i, e) in events.iter().enumerate() {
        store
            .at(at(i as i64))
            .append_audit(std::slice::from_ref(e))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let report = store
        .verify_audit_chain(&mut |n| seen.push(n))
        .await
        .unwrap();
    assert_eq!((report.checked, report.first_break.clone()), (5, None));
    assert_eq!(seen, vec![5], "progress reported per page");

    let exec = |sql: &'static str| {
        let store = store.clone();
        async move { raw(&store, sql).await }
    };
    // Edited.
    exec("UPDATE audit_events SET subject = 'thing:x' WHERE seq = 3").await;
    let report = store.verify_audit_chain(&mut |_| {}).await.unwrap();
    assert_eq!(
        report.first_break.as_ref().map(|b| b.seq),
        Some(3),
        "{report:?}"
    );
    assert!(report.first_break.unwrap().reason.contains("edited"));
    exec("UPDATE audit_events SET subject = 'thing:2' WHERE seq = 3").await;
    assert_eq!(
        store
            .verify_audit_chain(&mut |_| {})
            .await
            .unwrap()
            .first_break,
        None
    );
    // Reordered: swap the contents of events 2 and 3 (and back after).
    let swap_2_and_3 = || async {
        exec("UPDATE audit_events SET seq = -2 WHERE seq = 2").await;
        exec("UPDATE audit_events SET seq = 2 WHERE seq = 3").await;
        exec("UPDATE audit_events SET seq = 3 WHERE seq = -2").await;
    };
    swap_2_and_3().await;
    let report = store.verify_audit_chain(&mut |_| {}).await.unwrap();
    assert_eq!(report.first_break.map(|b| b.seq), Some(2));
    swap_2_and_3().await;
    assert_eq!(
        store
            .verify_audit_chain(&mut |_| {})
            .await
            .unwrap()
            .first_break,
        None
    );
    // Deleted.
    exec("DELETE FROM audit_events WHERE seq = 4").await;
    let report = store.verify_audit_chain(&mut |_| {}).await.unwrap();
    assert_eq!(report.first_break.map(|b| b.seq), Some(4));
}

async fn audit_retention_keeps_the_chain_verifiable(store: &Store) {
    use homeostat_model::NewAuditEvent;
    for i in 0..25 {
        store
            .at(at(i))
            .append_audit(&[NewAuditEvent {
                actor: "system".into(),
                action: "test.event".into(),
                subject: format!("n:{i}"),
                details: json!({}),
            }])
            .await
            .unwrap();
    }
    let now = at(1000);
    let retention = Duration::from_secs(1000 - 20); // events before at(20) are old
    assert_eq!(
        store
            .at(now)
            .delete_old_audit_events(
                AuditRetentionRun {
                    retention,
                    batch: 8,
                    dry_run: true
                },
                None
            )
            .await
            .unwrap(),
        8
    );
    assert_eq!(
        store
            .at(now)
            .delete_old_audit_events(
                AuditRetentionRun {
                    retention,
                    batch: 8,
                    dry_run: false
                },
                None
            )
            .await
            .unwrap(),
        8
    );
    assert_eq!(
        store
            .at(now)
            .delete_old_audit_events(
                AuditRetentionRun {
                    retention,
                    batch: 8,
                    dry_run: false
                },
                None
            )
            .await
            .unwrap(),
        8
    );
    assert_eq!(
        store
            .at(now)
            .delete_old_audit_events(
                AuditRetentionRun {
                    retention,
                    batch: 8,
                    dry_run: false
                },
                None
            )
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        store
            .at(now)
            .delete_old_audit_events(
                AuditRetentionRun {
                    retention,
                    batch: 8,
                    dry_run: false
                },
                None
            )
            .await
            .unwrap(),
        0
    );
    let report = store.verify_audit_chain(&mut |_| {}).await.unwrap();
    assert_eq!(report.first_break, None, "{report:?}");
    assert_eq!(report.first_seq, 21);
    // 5 kept + 3 retention events, each audited.
    assert_eq!(report.checked, 8);
    let events = store.audit_events(0, 100).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.action == "audit.retention")
            .count(),
        3
    );
}

/// A verify reads the chain as its head stood when it began: events
/// appended while it walks (four writers here) are not tampering, and a
/// retention run deleting the oldest events under it is not either.
async fn verification_while_writers_append_is_always_intact(store: &Store) {
    use homeostat_model::NewAuditEvent;
    let event = |w: usize, i: usize| NewAuditEvent {
        actor: format!("operator:w{w}"),
        action: "test.event".into(),
        subject: format!("thing:{i}"),
        details: json!({"i": i}),
    };
    // A chain longer than a page, so a walk spans several reads.
    let first: Vec<NewAuditEvent> = (0..2500).map(|i| event(9, i)).collect();
    for chunk in first.chunks(500) {
        store.at(at(0)).append_audit(chunk).await.unwrap();
    }
    // The writers' events are 100 s younger: retention takes only the first.
    store.at(at(100));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (store, stop) = (store.clone(), stop.clone());
        writers.spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.append_audit(&[event(w, i)]).await.unwrap();
                i += 1;
            }
            i
        });
    }
    let retention = AuditRetentionRun {
        retention: Duration::from_secs(50),
        batch: 400,
        dry_run: false,
    };
    for round in 0..20 {
        if round % 5 == 4 {
            // Retention of the oldest (the first 2,500, written at 0 s),
            // racing the verify.
            let mut progress = |_| {};
            let (report, deleted) = tokio::join!(
                store.verify_audit_chain(&mut progress),
                store.delete_old_audit_events(retention, None)
            );
            assert!(
                deleted.unwrap() > 0,
                "round {round}: retention deleted nothing"
            );
            let report = report.unwrap();
            assert_eq!(report.first_break, None, "round {round}: {report:?}");
        } else {
            let report = store.verify_audit_chain(&mut |_| {}).await.unwrap();
            assert_eq!(report.first_break, None, "round {round}: {report:?}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut appended = 0;
    while let Some(n) = writers.join_next().await {
        appended += n.unwrap();
    }
    assert!(appended > 0, "the writers wrote nothing");
    let report = store.verify_audit_chain(&mut |_| {}).await.unwrap();
    assert_eq!(report.first_break, None, "{report:?}");
    // Still caught once the writers stopped: events at the end deleted.
    let last = store.audit_len().await.unwrap();
    assert!(last > 0);
    raw(
        store,
        "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)",
    )
    .await;
    let report = store.verify_audit_chain(&mut |_| {}).await.unwrap();
    let broken = report.first_break.expect("a truncated chain verified");
    assert!(broken.reason.contains("deleted"), "{broken:?}");
}

async fn a_verification_is_requested_once_walked_by_the_leader_and_read_by_anyone(store: &Store) {
    use homeostat_model::operator::VerificationState::{Broken, Intact, Pending, Running};
    store
        .append_audit(&[homeostat_model::NewAuditEvent {
            actor: "operator:test".into(),
            action: "test.event".into(),
            subject: "thing:1".into(),
            details: json!({}),
        }])
        .await
        .unwrap();
    let asked = store
        .at(at(1))
        .request_audit_verification("operator:alice")
        .await
        .unwrap();
    assert_eq!(
        (asked.state, asked.requested_by.as_str(), asked.requested_at),
        (Pending, "operator:alice", at(1))
    );
    // A second request while one is open joins it.
    let again = store
        .request_audit_verification("operator:bob")
        .await
        .unwrap();
    assert_eq!(again.id, asked.id);

    let ttl = Duration::from_secs(60);
    let lease = store
        .acquire("audit-chain-verify", "replica-a", ttl)
        .await
        .unwrap()
        .unwrap();
    let fence = Fence {
        name: lease.name.clone(),
        epoch: lease.epoch,
    };
    let running = store
        .at(at(2))
        .start_audit_verification(Some(&fence))
        .await
        .unwrap()
        .expect("the open verification is taken");
    assert_eq!(
        (running.id, running.state, running.started_at, running.total),
        (asked.id, Running, Some(at(2)), 1)
    );
    store
        .record_audit_verification_progress(asked.id, 1)
        .await
        .unwrap();
    assert_eq!(store.audit_verification(asked.id).await.unwrap().checked, 1);

    // A deposed leader cannot record an outcome.
    store.release(&lease).await.unwrap();
    let new = store
        .acquire("audit-chain-verify", "replica-b", ttl)
        .await
        .unwrap()
        .unwrap();
    let report = store.verify_audit_chain(&mut |_| {}).await.unwrap();
    let err = store
        .finish_audit_verification(asked.id, Ok(&report), Some(&fence))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    let new_fence = Fence {
        name: new.name.clone(),
        epoch: new.epoch,
    };
    let done = store
        .at(at(3))
        .finish_audit_verification(asked.id, Ok(&report), Some(&new_fence))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.state, done.checked, done.finished_at, done.first_break),
        (Intact, 1, Some(at(3)), None)
    );
    assert_eq!(
        store.start_audit_verification(None).await.unwrap(),
        None,
        "nothing open to walk"
    );

    // A finished one is history: the next request opens another.
    let next = store
        .at(at(4))
        .request_audit_verification("operator:bob")
        .await
        .unwrap();
    assert_ne!(next.id, asked.id);
    store.start_audit_verification(None).await.unwrap().unwrap();
    let broken = homeostat_store::VerifyReport {
        checked: 0,
        first_seq: 1,
        first_break: Some(homeostat_store::ChainBreak {
            seq: 1,
            reason: "edited".into(),
        }),
    };
    let done = store
        .finish_audit_verification(next.id, Ok(&broken), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((done.state, done.first_break), (Broken, broken.first_break));
    let listed: Vec<_> = store
        .audit_verifications(10)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(listed, vec![next.id, asked.id], "newest first");
    let missing = homeostat_model::VerificationId::from_uuid(homeostat_model::new_id());
    assert!(matches!(
        store.audit_verification(missing).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn an_interrupted_walk_starts_over_then_fails(store: &Store) {
    use homeostat_model::operator::VerificationState::{Failed, Running};
    let asked = store
        .request_audit_verification("operator:alice")
        .await
        .unwrap();
    for attempt in 1..=homeostat_store::MAX_VERIFICATION_ATTEMPTS {
        // Each start finds the walk the last leader left running.
        let v = store.start_audit_verification(None).await.unwrap().unwrap();
        assert_eq!((v.id, v.state), (asked.id, Running), "attempt {attempt}");
    }
    assert_eq!(store.start_audit_verification(None).await.unwrap(), None);
    let v = store.audit_verification(asked.id).await.unwrap();
    assert_eq!(v.state, Failed);
    assert!(v.error.unwrap().contains("cut off 3 times"));
    // Failed is finished: a new request opens a new one.
    let again = store
        .request_audit_verification("operator:alice")
        .await
        .unwrap();
    assert_ne!(again.id, asked.id);
}

async fn the_schedule_opens_a_verification_only_when_none_was_asked_for_lately(store: &Store) {
    let every = Duration::from_secs(3600);
    let first = store
        .at(at(0))
        .schedule_audit_verification("controller:audit-chain-verify", every)
        .await
        .unwrap()
        .expect("none asked for yet");
    assert_eq!(
        store
            .at(at(10))
            .schedule_audit_verification("controller:audit-chain-verify", every)
            .await
            .unwrap(),
        None,
        "one is open"
    );
    store.start_audit_verification(None).await.unwrap().unwrap();
    store
        .finish_audit_verification(first.id, Err("stopped"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .at(at(3599))
            .schedule_audit_verification("controller:audit-chain-verify", every)
            .await
            .unwrap(),
        None,
        "the last was asked for within the hour"
    );
    let second = store
        .at(at(3601))
        .schedule_audit_verification("controller:audit-chain-verify", every)
        .await
        .unwrap()
        .expect("an hour after the last");
    assert_ne!(second.id, first.id);
}

async fn only_the_newest_finished_verifications_are_kept(store: &Store) {
    let kept = homeostat_store::VERIFICATIONS_KEPT as usize;
    let mut ids = Vec::new();
    for i in 0..kept + 3 {
        let v = store
            .at(at(i as i64))
            .request_audit_verification("operator:alice")
            .await
            .unwrap();
        store.start_audit_verification(None).await.unwrap().unwrap();
        store
            .finish_audit_verification(v.id, Err("stopped"), None)
            .await
            .unwrap();
        ids.push(v.id);
    }
    let open = store
        .at(at(1000))
        .request_audit_verification("operator:alice")
        .await
        .unwrap();
    let listed: Vec<_> = store
        .audit_verifications(100)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    let mut expected = vec![open.id];
    expected.extend(ids.iter().rev().take(kept - 1));
    assert_eq!(listed, expected, "the open one and the newest finished");
}

on_both_backends!(
    a_verification_is_requested_once_walked_by_the_leader_and_read_by_anyone,
    an_interrupted_walk_starts_over_then_fails,
    the_schedule_opens_a_verification_only_when_none_was_asked_for_lately,
    only_the_newest_finished_verifications_are_kept,
    verification_while_writers_append_is_always_intact,
    the_audit_chain_detects_edits_deletions_and_reordering,
    audit_retention_keeps_the_chain_verifiable,
);
