//! What the dashboard reads beside `stats`: jobs finished per minute, dead
//! jobs and their count, jobs awaiting approval, running jobs per agent,
//! the audit log newest first with filters.

use homeostat_model::{JobState, PlanTier};
use std::time::Duration;

use homeostat_store::{AuditFilter, Completion, Failure, JobRetention, Store};
use homeostat_testkit::{At, agent, at, completions, job, on_both_backends, tenant};

use crate::LEASE;

async fn finished_jobs_are_counted_per_minute_and_dead_ones_listed(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, Some(t), &["builds"]).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let mut j = job("builds");
        j.max_attempts = Some(1);
        ids.push(store.at(at(0)).enqueue(t, &j).await.unwrap().id);
    }
    let claimed = store.at(at(10)).claim(a, 3, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 3);
    store
        .at(at(70))
        .complete(a, claimed[0].id, claimed[0].lease_token, None)
        .await
        .unwrap();
    for (c, secs) in [(&claimed[1], 75), (&claimed[2], 130)] {
        store
            .at(at(secs))
            .fail(&Failure {
                agent: a,
                id: c.id,
                lease_token: c.lease_token,
                error: "disk full",
                permanent: true,
            })
            .await
            .unwrap();
    }
    // A job cancelled is neither outcome.
    store
        .at(at(80))
        .cancel(ids[3], "operator:test")
        .await
        .unwrap();

    let minutes = store.at(at(200)).finished_per_minute(at(0)).await.unwrap();
    let shape: Vec<(i64, u64, u64)> = minutes
        .iter()
        .map(|m| {
            (
                m.minute.as_second() - at(0).as_second(),
                m.succeeded,
                m.failed,
            )
        })
        .collect();
    assert_eq!(shape, vec![(60, 1, 1), (120, 0, 1)]);
    let recent = store
        .at(at(200))
        .finished_per_minute(at(120))
        .await
        .unwrap();
    assert_eq!(recent.len(), 1);

    let (dead, count) = store.dead_jobs(1).await.unwrap();
    assert_eq!(count, 2);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].state, JobState::Dead);
    let newest_dead = [claimed[1].id, claimed[2].id].into_iter().max().unwrap();
    assert_eq!(dead[0].id, newest_dead, "newest first");
    assert_eq!(dead[0].last_error.as_deref(), Some("disk full"));
}

async fn approvals_come_soonest_to_expire_first_and_running_jobs_by_agent(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, Some(t), &["builds"]).await;
    let b = agent(store, Some(t), &["builds"]).await;
    assert!(store.awaiting_approval(8).await.unwrap().is_empty());
    let mut later = job("deploys");
    later.approval_expires_at = Some(at(5000));
    let later = store.at(at(0)).enqueue(t, &later).await.unwrap().id;
    let mut sooner = job("deploys");
    sooner.approval_expires_at = Some(at(3000));
    let sooner = store.at(at(1)).enqueue(t, &sooner).await.unwrap().id;
    let waiting: Vec<_> = store
        .awaiting_approval(8)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(waiting, vec![sooner, later]);

    for _ in 0..3 {
        store.at(at(2)).enqueue(t, &job("builds")).await.unwrap();
    }
    store.at(at(3)).claim(a, 2, LEASE).await.unwrap();
    store.at(at(3)).claim(b, 1, LEASE).await.unwrap();
    let running = store.running_by_agent().await.unwrap();
    assert_eq!(running.get(&a), Some(&2));
    assert_eq!(running.get(&b), Some(&1));
    assert_eq!(running.len(), 2);
}

async fn the_audit_log_reads_newest_first_with_filters(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let mut cancelled = Vec::new();
    for i in 0..3 {
        let id = store.at(at(i)).enqueue(t, &job("q")).await.unwrap().id;
        store
            .at(at(10 + i))
            .cancel(id, &format!("api_key:k{i}"))
            .await
            .unwrap();
        cancelled.push(id);
    }
    let all = store
        .audit_page(&AuditFilter::default(), None, 100)
        .await
        .unwrap();
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    assert_eq!(store.audit_len().await.unwrap(), all.len() as u64);

    let only = AuditFilter {
        action: Some("job.cancelled".into()),
        ..AuditFilter::default()
    };
    let page = store.audit_page(&only, None, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].subject, format!("job:{}", cancelled[2]));
    let rest = store.audit_page(&only, Some(page[1].seq), 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].subject, format!("job:{}", cancelled[0]));

    let by = AuditFilter {
        actor: Some("api_key:k1".into()),
        subject: Some(format!("job:{}", cancelled[1])),
        ..AuditFilter::default()
    };
    let one = store.audit_page(&by, None, 10).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].action, "job.cancelled");
    let none = AuditFilter {
        actor: Some("api_key:k1".into()),
        subject: Some(format!("job:{}", cancelled[0])),
        ..AuditFilter::default()
    };
    assert!(store.audit_page(&none, None, 10).await.unwrap().is_empty());
}

/// Succeeded jobs are counted as they complete: batches that complete at
/// once add up, a completion that changes nothing counts nothing, and the
/// counts are forgotten a day later by the retention sweep.
async fn succeeded_counts_add_up_and_are_forgotten_after_a_day(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, Some(t), &["builds"]).await;
    let jobs: Vec<_> = (0..7).map(|_| job("builds")).collect();
    store.at(at(0)).enqueue_batch(t, &jobs).await.unwrap();
    let claimed = store.at(at(10)).claim(a, 7, LEASE).await.unwrap();
    let completions: Vec<Completion> = completions(&claimed);
    let (first, rest) = completions.split_at(3);
    let (second, third) = rest.split_at(2);
    let clock = store.at(at(70));
    let (x, y, z) = tokio::join!(
        clock.complete_batch(a, first),
        clock.complete_batch(a, second),
        clock.complete_batch(a, third),
    );
    for batch in [x, y, z] {
        assert!(batch.unwrap().stale.is_empty());
    }
    let again = store.at(at(75)).complete_batch(a, first).await.unwrap();
    assert_eq!(again.stale.len(), 3);

    let counted = |now: i64| async move {
        store
            .at(at(now))
            .finished_per_minute(at(0))
            .await
            .unwrap()
            .iter()
            .map(|m| (m.minute.as_second() - at(0).as_second(), m.succeeded))
            .collect::<Vec<_>>()
    };
    assert_eq!(counted(200).await, vec![(60, 7)]);
    // Read again: written once, counted once.
    assert_eq!(counted(200).await, vec![(60, 7)]);
    // Within the day the sweep keeps the counts, past it they go.
    let retention = JobRetention {
        succeeded: Duration::from_secs(7 * 24 * 3600),
        failed: Duration::from_secs(7 * 24 * 3600),
    };
    let day = 24 * 3600;
    store
        .at(at(day))
        .delete_finished_jobs(retention, 100, None)
        .await
        .unwrap();
    assert_eq!(counted(day).await, vec![(60, 7)]);
    store
        .at(at(day + 120))
        .delete_finished_jobs(retention, 100, None)
        .await
        .unwrap();
    assert_eq!(counted(day + 120).await, vec![]);
}

on_both_backends!(
    finished_jobs_are_counted_per_minute_and_dead_ones_listed,
    succeeded_counts_add_up_and_are_forgotten_after_a_day,
    approvals_come_soonest_to_expire_first_and_running_jobs_by_agent,
    the_audit_log_reads_newest_first_with_filters,
);
