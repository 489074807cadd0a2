//! The controllers' sweeps and their dry runs.

use std::time::Duration;

use homeostat_model::{JobState, NewJob, PlanTier};
use homeostat_store::{Ageing, JobRetention, PlanKind, Store, StoreError};
use homeostat_testkit::{At, agent, at, job, on_both_backends, t0, tenant};

async fn every_sweep_changes_what_it_should_then_nothing(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let gone = agent(store, Some(t), &["q"]).await;
    let enqueue = |mut j: NewJob, f: &dyn Fn(&mut NewJob)| {
        f(&mut j);
        j
    };
    // Lease expiry: claimed with a 10 s lease at t0.
    let leased = store.at(t0()).enqueue(t, &job("q")).await.unwrap().id;
    store
        .at(t0())
        .claim(a, 1, Duration::from_secs(10))
        .await
        .unwrap();
    // Agent offline: a job on `gone`, whose heartbeat stops.
    let orphan = store.at(t0()).enqueue(t, &job("q")).await.unwrap().id;
    store
        .at(t0())
        .claim(gone, 1, Duration::from_secs(3600))
        .await
        .unwrap();
    // Timeout: a 5 s job.
    let slow = store
        .at(t0())
        .enqueue(t, &enqueue(job("q"), &|j| j.timeout_secs = Some(5)))
        .await
        .unwrap()
        .id;
    store
        .at(t0())
        .claim(a, 1, Duration::from_secs(3600))
        .await
        .unwrap();
    // Deadline: must start by t0 + 30 s.
    let overdue = store
        .at(t0())
        .enqueue(t, &enqueue(job("late"), &|j| j.deadline = Some(at(30))))
        .await
        .unwrap()
        .id;
    // Scheduled for t0 + 20 s.
    let delayed = store
        .at(t0())
        .enqueue(t, &enqueue(job("later"), &|j| j.run_at = Some(at(20))))
        .await
        .unwrap()
        .id;
    // Approval that expires at t0 + 40 s.
    let unapproved = store
        .at(t0())
        .enqueue(
            t,
            &enqueue(job("q"), &|j| j.approval_expires_at = Some(at(40))),
        )
        .await
        .unwrap()
        .id;
    store.at(at(100)).heartbeat_agents(&[a]).await.unwrap();

    let now = at(100);
    let offline = store
        .at(now)
        .mark_silent_agents_offline(Duration::from_secs(90), 100, None)
        .await
        .unwrap();
    assert_eq!(offline, vec![gone]);
    let reclaimed = store
        .at(now)
        .reclaim_offline_agent_jobs(100, None)
        .await
        .unwrap();
    assert_eq!(reclaimed.ids, vec![orphan]);
    let requeued = store
        .at(now)
        .requeue_expired_leases(100, None, None)
        .await
        .unwrap();
    assert_eq!(requeued.ids, vec![leased]);
    let timed_out = store.at(now).time_out_running(100, None).await.unwrap();
    assert_eq!(timed_out.ids, vec![slow]);
    let slow_job = store.get_job(slow).await.unwrap();
    assert_eq!(slow_job.state, JobState::Scheduled);
    assert_eq!(slow_job.run_at, at(110), "retried after the 10 s backoff");
    let expired = store
        .at(now)
        .expire_overdue_queued(100, None)
        .await
        .unwrap();
    assert_eq!(expired.ids, vec![overdue]);
    let promoted = store.at(now).promote_scheduled(100, None).await.unwrap();
    assert_eq!(promoted.ids, vec![delayed]);
    let approvals = store.at(now).expire_approvals(100, None).await.unwrap();
    assert_eq!(approvals.ids, vec![unapproved]);
    assert_eq!(
        store.get_job(unapproved).await.unwrap().state,
        JobState::Expired
    );

    // Again: nothing left to do.
    assert!(
        store
            .at(now)
            .mark_silent_agents_offline(Duration::from_secs(90), 100, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .at(now)
            .reclaim_offline_agent_jobs(100, None)
            .await
            .unwrap()
            .changed,
        0
    );
    assert_eq!(
        store
            .at(now)
            .requeue_expired_leases(100, None, None)
            .await
            .unwrap()
            .changed,
        0
    );
    assert_eq!(
        store
            .at(now)
            .time_out_running(100, None)
            .await
            .unwrap()
            .changed,
        0
    );
    assert_eq!(
        store
            .at(now)
            .expire_overdue_queued(100, None)
            .await
            .unwrap()
            .changed,
        0
    );
    assert_eq!(
        store
            .at(now)
            .promote_scheduled(100, None)
            .await
            .unwrap()
            .changed,
        0
    );
    assert_eq!(
        store
            .at(now)
            .expire_approvals(100, None)
            .await
            .unwrap()
            .changed,
        0
    );
    // Three jobs are queued since `now`; five minutes on, their priority
    // ages once.
    let aged = at(400);
    let recompute = || {
        store.at(aged).recompute_priorities(
            Ageing {
                bonus_per_minute: 1,
                cap: 50,
            },
            1000,
            None,
        )
    };
    assert_eq!(recompute().await.unwrap(), 3);
    assert_eq!(recompute().await.unwrap(), 0);
    assert_eq!(store.get_job(leased).await.unwrap().effective_priority, 5);

    // Retention: finished jobs go after their retention, in batches.
    let retention = JobRetention {
        succeeded: Duration::from_secs(60),
        failed: Duration::from_secs(600),
    };
    let later = at(100 + 601);
    let deleted = store
        .at(later)
        .delete_finished_jobs(retention, 100, None)
        .await
        .unwrap();
    assert_eq!(deleted.changed, 2, "the expired jobs: {:?}", deleted.ids);
    assert_eq!(
        store
            .at(later)
            .delete_finished_jobs(retention, 100, None)
            .await
            .unwrap()
            .changed,
        0
    );
    assert!(matches!(
        store.get_job(overdue).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn reclaimed_jobs_with_no_attempts_left_go_dead(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let mut new = job("q");
    new.max_attempts = Some(1);
    let id = store.at(t0()).enqueue(t, &new).await.unwrap().id;
    store
        .at(t0())
        .claim(a, 1, Duration::from_secs(10))
        .await
        .unwrap();
    let swept = store
        .at(at(20))
        .requeue_expired_leases(100, None, None)
        .await
        .unwrap();
    assert_eq!(
        swept.dead,
        vec![id],
        "a stuck job with no attempts left leaves the live states"
    );
    assert_eq!(store.get_job(id).await.unwrap().state, JobState::Dead);
}

async fn sweep_plans_show_what_would_change_without_changing_it(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let mut last_try = job("q");
    last_try.max_attempts = Some(1);
    let doomed = store.at(t0()).enqueue(t, &last_try).await.unwrap().id;
    let retried = store.at(t0()).enqueue(t, &job("q")).await.unwrap().id;
    store
        .at(t0())
        .claim(a, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let plan = store
        .at(at(20))
        .plan(PlanKind::ExpiredLeases, 10)
        .await
        .unwrap();
    assert_eq!(plan.count, 2);
    let mut items: Vec<(String, String, String)> = plan
        .items
        .into_iter()
        .map(|i| (i.subject, i.from, i.to))
        .collect();
    items.sort();
    let mut expected = vec![
        (
            format!("job:{doomed}"),
            "running".to_owned(),
            "dead".to_owned(),
        ),
        (
            format!("job:{retried}"),
            "running".to_owned(),
            "queued".to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(items, expected);
    for id in [doomed, retried] {
        assert_eq!(store.get_job(id).await.unwrap().state, JobState::Running);
    }
    let swept = store
        .at(at(20))
        .requeue_expired_leases(100, None, None)
        .await
        .unwrap();
    assert_eq!(
        swept.changed, plan.count,
        "the sweep does what the plan said"
    );
}

on_both_backends!(
    every_sweep_changes_what_it_should_then_nothing,
    reclaimed_jobs_with_no_attempts_left_go_dead,
    sweep_plans_show_what_would_change_without_changing_it,
);
