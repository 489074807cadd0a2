//! The store's contract, written once and run against SQLite and PostgreSQL.

mod backends;

use backends::At;

use std::collections::HashSet;
use std::time::Duration;

use homeostat_model::{
    AgentId, AgentStatus, ApiScope, JobId, JobState, NewAgent, NewJob, NotificationState, PlanTier,
    TenantId,
};
use homeostat_runtime::{Fence, LeaseStore};
use homeostat_store::{
    Ageing, AuditRetentionRun, Completion, Delivery, Failure, JobFilter, JobRetention,
    NewBootstrapToken, PlanKind, Store, StoreError,
};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(60);

fn t0() -> Timestamp {
    Timestamp::from_second(1_767_225_600).unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

async fn tenant(store: &Store, name: &str, tier: PlanTier) -> TenantId {
    store
        .at(t0())
        .create_tenant(name, tier, "operator:test")
        .await
        .unwrap()
        .id
}

async fn agent(store: &Store, tenant: Option<TenantId>, queues: &[&str]) -> AgentId {
    let token = store
        .at(t0())
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: tenant,
                ttl: Duration::from_secs(3600),
                uses: 1,
            },
            "operator:test",
        )
        .await
        .unwrap();
    let (agent, _) = store
        .at(t0())
        .register_agent(
            &token.secret,
            &NewAgent {
                name: format!("agent-{}", uuid::Uuid::now_v7().simple()),
                labels: Default::default(),
                queues: queues.iter().map(|q| q.to_string()).collect(),
            },
        )
        .await
        .unwrap();
    agent.id
}

fn job(queue: &str) -> NewJob {
    NewJob::new(queue, "build")
}

async fn full_lifecycle(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, Some(t), &["builds"]).await;
    let mut new = job("builds");
    new.payload = json!({"repo": "acme/app", "ref": "main"});
    let enq = store.at(t0()).enqueue(t, &new).await.unwrap();
    assert!(!enq.deduplicated);
    assert_eq!((enq.deduplicated, enq.occurrences), (false, 1));
    let stored = store.get_job(enq.id).await.unwrap();
    assert_eq!(stored.state, JobState::Queued);
    assert_eq!(stored.effective_priority, 100, "standard tier base");

    let claimed = store.at(at(1)).claim(a, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!((c.id, c.attempt, c.lease_token), (enq.id, 1, 1));
    assert_eq!(c.payload, new.payload);
    assert_eq!(c.lease_expires_at, at(61));

    let extended = store
        .at(at(30))
        .heartbeat_job(c.id, c.lease_token, LEASE)
        .await
        .unwrap();
    assert_eq!(extended, at(90));
    store
        .at(at(40))
        .complete(c.id, c.lease_token, Some(json!({"ok": true})))
        .await
        .unwrap();
    let done = store.get_job(c.id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert_eq!(done.finished_at, Some(at(40)));
    assert_eq!(done.lease_agent, None);
    assert!(
        store
            .at(at(41))
            .claim(a, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    // A second completion is refused.
    assert!(matches!(
        store.at(at(42)).complete(c.id, c.lease_token, None).await,
        Err(StoreError::StaleLease { .. })
    ));
}

async fn failures_retry_with_backoff_then_die(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let mut new = job("q");
    new.max_attempts = Some(2);
    let id = store.at(t0()).enqueue(t, &new).await.unwrap().id;

    let c = store.at(t0()).claim(a, 1, LEASE).await.unwrap().remove(0);
    let out = store
        .at(at(5))
        .fail(&Failure {
            id,
            lease_token: c.lease_token,
            error: "exit 1",
            permanent: false,
        })
        .await
        .unwrap();
    assert_eq!(out.state, JobState::Scheduled);
    assert_eq!(out.retry_at, Some(at(15)), "first retry after 10 s");
    assert!(store.at(at(6)).claim(a, 1, LEASE).await.unwrap().is_empty());
    assert_eq!(
        store
            .at(at(14))
            .promote_scheduled(100, None)
            .await
            .unwrap()
            .changed,
        0
    );
    assert_eq!(
        store
            .at(at(15))
            .promote_scheduled(100, None)
            .await
            .unwrap()
            .changed,
        1
    );

    let c = store.at(at(16)).claim(a, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(c.attempt, 2);
    let out = store
        .at(at(20))
        .fail(&Failure {
            id,
            lease_token: c.lease_token,
            error: "exit 1 again",
            permanent: false,
        })
        .await
        .unwrap();
    assert_eq!(out.state, JobState::Dead, "attempts used up");
    let dead = store.get_job(id).await.unwrap();
    assert_eq!(dead.last_error.as_deref(), Some("exit 1 again"));
    assert_eq!(dead.finished_at, Some(at(20)));

    // A permanent failure is dead at once, attempts left or not.
    let id = store.at(at(30)).enqueue(t, &job("q")).await.unwrap().id;
    let c = store.at(at(31)).claim(a, 1, LEASE).await.unwrap().remove(0);
    let out = store
        .at(at(32))
        .fail(&Failure {
            id,
            lease_token: c.lease_token,
            error: "bad input",
            permanent: true,
        })
        .await
        .unwrap();
    assert_eq!(out.state, JobState::Dead);
    // Redrive: back to queued with fresh attempts.
    let again = store.at(at(40)).redrive(id, "operator:test").await.unwrap();
    assert_eq!((again.state, again.attempt), (JobState::Queued, 0));
    // Illegal transitions are refused, naming the states.
    let err = store
        .at(at(41))
        .approve(id, "operator:test")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("a queued job cannot become"),
        "{err}"
    );
}

async fn fingerprints_deduplicate_live_jobs_only(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let other = tenant(store, "globex", PlanTier::Free).await;
    let a = agent(store, Some(t), &["alerts"]).await;
    let mut new = job("alerts");
    new.fingerprint = Some("disk-full:host-1".into());
    let first = store.at(t0()).enqueue(t, &new).await.unwrap();
    let second = store.at(at(1)).enqueue(t, &new).await.unwrap();
    assert!(second.deduplicated);
    assert_eq!(second.id, first.id);
    assert_eq!(second.occurrences, 2);
    // Another tenant's fingerprints are its own.
    assert!(
        !store
            .at(at(1))
            .enqueue(other, &new)
            .await
            .unwrap()
            .deduplicated
    );
    // Duplicates within one batch fold into one job.
    let batch = store
        .at(at(2))
        .enqueue_batch(t, &[new.clone(), new.clone(), job("alerts")])
        .await
        .unwrap();
    assert!(batch[0].deduplicated && batch[1].deduplicated && !batch[2].deduplicated);
    assert_eq!(store.get_job(first.id).await.unwrap().occurrences, 4);
    // Running is live too.
    let c = store.at(at(3)).claim(a, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(c.id, first.id);
    assert!(store.at(at(4)).enqueue(t, &new).await.unwrap().deduplicated);
    // Once terminal, the fingerprint is free again.
    store
        .at(at(5))
        .complete(c.id, c.lease_token, None)
        .await
        .unwrap();
    let fresh = store.at(at(6)).enqueue(t, &new).await.unwrap();
    assert!(!fresh.deduplicated);
    assert_ne!(fresh.id, first.id);
    // A fingerprint new to the store, twice in one batch: one job, and the
    // second input is folded into it.
    let mut other = job("alerts");
    other.fingerprint = Some("disk-full".into());
    let twice = store
        .at(at(7))
        .enqueue_batch(t, &[other.clone(), other])
        .await
        .unwrap();
    assert!(!twice[0].deduplicated && twice[1].deduplicated);
    assert_eq!(twice[0].id, twice[1].id);
    assert_eq!(twice[1].occurrences, 2);
}

async fn concurrent_same_fingerprint_enqueues_create_one_job(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let mut new = job("alerts");
    new.fingerprint = Some("cpu-high".into());
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (store, new) = (store.clone(), new.clone());
        tasks.push(tokio::spawn(async move {
            store.at(at(i)).enqueue(t, &new).await.unwrap()
        }));
    }
    let mut ids = HashSet::new();
    let mut fresh = 0;
    for task in tasks {
        let e = task.await.unwrap();
        ids.insert(e.id);
        fresh += usize::from(!e.deduplicated);
    }
    assert_eq!(ids.len(), 1, "one job");
    assert_eq!(fresh, 1, "exactly one enqueue created it");
    let id = *ids.iter().next().unwrap();
    assert_eq!(store.get_job(id).await.unwrap().occurrences, 16);
}

async fn eight_claimers_take_every_job_exactly_once(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let jobs: Vec<NewJob> = (0..10_000).map(|_| job("bulk")).collect();
    for chunk in jobs.chunks(2_500) {
        store.at(t0()).enqueue_batch(t, chunk).await.unwrap();
    }
    let mut agents = Vec::new();
    for _ in 0..8 {
        agents.push(agent(store, Some(t), &["bulk"]).await);
    }
    let mut tasks = Vec::new();
    for a in agents {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.at(at(1)).claim(a, 50, LEASE).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|c| c.id));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 10_000, "every job claimed");
    assert_eq!(unique.len(), 10_000, "no job claimed twice");
}

async fn stats_count_live_jobs_by_state_and_queue(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["builds"]).await;
    agent(store, Some(t), &["builds"]).await;
    for at_secs in [10, 20, 30] {
        store
            .at(at(at_secs))
            .enqueue(t, &job("builds"))
            .await
            .unwrap();
    }
    store.at(at(40)).enqueue(t, &job("deploys")).await.unwrap();
    let mut later = job("deploys");
    later.run_at = Some(at(3600));
    store.at(at(40)).enqueue(t, &later).await.unwrap();
    let done = store.at(at(50)).claim(a, 1, LEASE).await.unwrap().remove(0);
    store.at(at(51)).claim(a, 1, LEASE).await.unwrap();
    store
        .at(at(52))
        .complete(done.id, done.lease_token, None)
        .await
        .unwrap();
    store
        .at(at(53))
        .drain_agent(a, "operator:test")
        .await
        .unwrap();

    let stats = store.stats().await.unwrap();
    let jobs: Vec<(JobState, &str, u64)> = stats
        .jobs
        .iter()
        .map(|c| (c.state, c.queue.as_str(), c.count))
        .collect();
    assert_eq!(
        jobs,
        vec![
            (JobState::Queued, "builds", 1),
            (JobState::Queued, "deploys", 1),
            (JobState::Running, "builds", 1),
            (JobState::Scheduled, "deploys", 1),
        ],
        "the succeeded job is history"
    );
    let queues: Vec<(&str, u64, Timestamp)> = stats
        .queues
        .iter()
        .map(|q| (q.queue.as_str(), q.queued, q.oldest_queued_at))
        .collect();
    assert_eq!(queues, vec![("builds", 1, at(30)), ("deploys", 1, at(40))]);
    let agents: Vec<(AgentStatus, u64)> =
        stats.agents.iter().map(|c| (c.status, c.count)).collect();
    assert_eq!(
        agents,
        vec![(AgentStatus::Draining, 1), (AgentStatus::Online, 1)]
    );
}

async fn a_batch_names_its_stale_completions(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    for _ in 0..3 {
        store.at(t0()).enqueue(t, &job("q")).await.unwrap();
    }
    let claimed = store.at(at(1)).claim(a, 3, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let batch: Vec<Completion> = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| Completion {
            id: c.id,
            // The second carries a token from before its claim.
            lease_token: if i == 1 {
                c.lease_token - 1
            } else {
                c.lease_token
            },
            result: None,
        })
        .collect();
    let done = store.at(at(2)).complete_batch(&batch).await.unwrap();
    assert_eq!(done.completed, vec![claimed[0].id, claimed[2].id]);
    assert_eq!(done.stale, vec![claimed[1].id]);
    assert_eq!(
        store.get_job(claimed[1].id).await.unwrap().state,
        JobState::Running
    );
}

async fn a_stale_completion_racing_the_current_one_loses(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let b = agent(store, Some(t), &["q"]).await;
    let id = store.at(t0()).enqueue(t, &job("q")).await.unwrap().id;
    let old = store
        .at(t0())
        .claim(a, 1, Duration::from_secs(10))
        .await
        .unwrap()
        .remove(0);
    // a stops heartbeating; the lease expires and b gets the job.
    let swept = store
        .at(at(11))
        .requeue_expired_leases(100, None)
        .await
        .unwrap();
    assert_eq!(swept.ids, vec![id]);
    let new = store.at(at(12)).claim(b, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(new.lease_token, old.lease_token + 1);
    let (s1, s2) = (store.clone(), store.clone());
    let (stale, current) = tokio::join!(
        s1.at(at(13))
            .complete(id, old.lease_token, Some(json!("a"))),
        s2.at(at(13))
            .complete(id, new.lease_token, Some(json!("b"))),
    );
    assert!(matches!(stale, Err(StoreError::StaleLease { .. })));
    current.unwrap();
    assert_eq!(store.get_job(id).await.unwrap().result, Some(json!("b")));
    assert!(
        store
            .at(at(14))
            .heartbeat_job(id, old.lease_token, LEASE)
            .await
            .is_err()
    );
    assert!(
        store
            .at(at(14))
            .fail(&Failure {
                id,
                lease_token: old.lease_token,
                error: "x",
                permanent: false
            })
            .await
            .is_err()
    );
}

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
        .requeue_expired_leases(100, None)
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
            .requeue_expired_leases(100, None)
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
        .requeue_expired_leases(100, None)
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
        .requeue_expired_leases(100, None)
        .await
        .unwrap();
    assert_eq!(
        swept.changed, plan.count,
        "the sweep does what the plan said"
    );
}

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

async fn tokens_are_hashed_consumed_and_cleaned_up(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Premium).await;
    let boot = store
        .at(t0())
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: Some(t),
                ttl: Duration::from_secs(600),
                uses: 1,
            },
            "operator:test",
        )
        .await
        .unwrap();
    let spec = NewAgent {
        name: "runner-1".into(),
        labels: [("zone".to_string(), "eu-1".to_string())].into(),
        queues: vec!["builds".into()],
    };
    let (agent, credential) = store
        .at(at(1))
        .register_agent(&boot.secret, &spec)
        .await
        .unwrap();
    assert_eq!(agent.tenant_id, Some(t));
    assert_eq!(
        store
            .at(at(2))
            .authenticate_agent(&credential.secret)
            .await
            .unwrap(),
        agent.id
    );
    // One use only.
    assert!(matches!(
        store.at(at(2)).register_agent(&boot.secret, &spec).await,
        Err(StoreError::Unauthorized { .. })
    ));
    assert!(
        store
            .at(at(2))
            .authenticate_agent("hsa_nope")
            .await
            .is_err()
    );

    let key = store
        .at(t0())
        .issue_api_key(ApiScope::Tenant(t), None, "operator:test")
        .await
        .unwrap();
    let who = store
        .at(at(3))
        .authenticate_api_key(&key.secret)
        .await
        .unwrap();
    assert_eq!(who.scope, ApiScope::Tenant(t));
    store
        .at(at(4))
        .revoke_token(key.info.id, "operator:test")
        .await
        .unwrap();
    assert!(
        store
            .at(at(5))
            .authenticate_api_key(&key.secret)
            .await
            .is_err()
    );
    let expiring = store
        .at(t0())
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: None,
                ttl: Duration::from_secs(10),
                uses: 5,
            },
            "operator:test",
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .at(at(11))
            .register_agent(&expiring.secret, &spec)
            .await,
        Err(StoreError::Unauthorized { .. })
    ));

    // No secret is ever in the audit log.
    let log = serde_json::to_string(&store.audit_events(0, 1000).await.unwrap()).unwrap();
    for secret in [
        &boot.secret,
        &credential.secret,
        &key.secret,
        &expiring.secret,
    ] {
        assert!(!log.contains(secret.as_str()));
    }
    // Used-up, revoked and expired tokens go; the live credential stays.
    assert_eq!(
        store
            .at(at(20))
            .delete_dead_tokens(100, None)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .at(at(20))
            .delete_dead_tokens(100, None)
            .await
            .unwrap(),
        0
    );
    assert!(
        store
            .at(at(21))
            .authenticate_agent(&credential.secret)
            .await
            .is_ok()
    );
}

async fn agents_heartbeat_in_batches_and_drain(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(agent(store, Some(t), &["q"]).await);
    }
    assert_eq!(store.at(at(50)).heartbeat_agents(&ids).await.unwrap(), 5);
    let a = store.get_agent(ids[0]).await.unwrap();
    assert_eq!(a.last_heartbeat_at, at(50));
    store
        .at(at(51))
        .drain_agent(ids[0], "operator:test")
        .await
        .unwrap();
    store.at(at(52)).enqueue(t, &job("q")).await.unwrap();
    let err = store.at(at(53)).claim(ids[0], 1, LEASE).await.unwrap_err();
    assert!(err.to_string().contains("draining"), "{err}");
    assert_eq!(
        store
            .at(at(53))
            .claim(ids[1], 1, LEASE)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.list_agents(Some(t)).await.unwrap().len(), 5);
}

async fn tenant_agents_see_only_their_tenants_jobs(store: &Store) {
    let t1 = tenant(store, "acme", PlanTier::Free).await;
    let t2 = tenant(store, "globex", PlanTier::Free).await;
    let a1 = agent(store, Some(t1), &["q"]).await;
    let platform = agent(store, None, &["q", "other"]).await;
    store.at(t0()).enqueue(t2, &job("q")).await.unwrap();
    assert!(
        store
            .at(at(1))
            .claim(a1, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let got = store.at(at(1)).claim(platform, 10, LEASE).await.unwrap();
    assert_eq!(got[0].tenant_id, t2);
}

async fn claims_follow_priority_and_age(store: &Store) {
    let free = tenant(store, "small", PlanTier::Free).await;
    let premium = tenant(store, "big", PlanTier::Premium).await;
    let platform = agent(store, None, &["q"]).await;
    let old_free = store.at(t0()).enqueue(free, &job("q")).await.unwrap().id;
    // A big tenant floods the queue 20.5 minutes later.
    let flood_at = 21 * 60 - 30;
    let flood = store
        .at(at(flood_at))
        .enqueue_batch(premium, &(0..20).map(|_| job("q")).collect::<Vec<_>>())
        .await
        .unwrap();
    // By tier alone (premium 200, free 0) the flood goes first (which of
    // its jobs is open: they tie on priority and queue time)...
    let first = store
        .at(at(flood_at + 1))
        .claim(platform, 1, LEASE)
        .await
        .unwrap();
    assert!(flood.iter().any(|e| e.id == first[0].id));
    // ...but at 10 points per minute waited (capped at 300) the small
    // tenant's job, 21 minutes old, passes the fresh flood.
    store
        .at(at(21 * 60))
        .recompute_priorities(
            Ageing {
                bonus_per_minute: 10,
                cap: 300,
            },
            1000,
            None,
        )
        .await
        .unwrap();
    let next = store
        .at(at(21 * 60))
        .claim(platform, 1, LEASE)
        .await
        .unwrap();
    assert_eq!(next[0].id, old_free);
    assert_eq!(
        store.get_job(old_free).await.unwrap().effective_priority,
        210
    );
}

async fn claims_across_queues_take_the_best_of_all(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["a", "b"]).await;
    let mut ids = std::collections::HashMap::new();
    for (queue, priority) in [("a", 1), ("a", 5), ("b", 3), ("b", 7), ("c", 9)] {
        let mut new = job(queue);
        new.priority = priority;
        let id = store.at(t0()).enqueue(t, &new).await.unwrap().id;
        ids.insert(priority, id);
    }
    let first = store.at(at(1)).claim(a, 3, LEASE).await.unwrap();
    let got: Vec<JobId> = first.iter().map(|c| c.id).collect();
    assert_eq!(
        got,
        vec![ids[&7], ids[&5], ids[&3]],
        "best first, across both queues"
    );
    assert!(first.iter().all(|c| c.attempt == 1 && c.lease_token == 1));
    let rest = store.at(at(2)).claim(a, 10, LEASE).await.unwrap();
    assert_eq!(rest.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[&1]]);
    // Queue c is not the agent's.
    assert!(
        store
            .at(at(3))
            .claim(a, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get_job(ids[&9]).await.unwrap().state,
        JobState::Queued
    );
}

async fn listing_pages_newest_first(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(store.at(at(i)).enqueue(t, &job("q")).await.unwrap().id);
    }
    let filter = JobFilter {
        tenant_id: Some(t),
        state: Some(JobState::Queued),
        queue: Some("q".into()),
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_jobs(&filter, after, 3).await.unwrap();
        seen.extend(page.items.iter().map(|j| j.id));
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
}

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

async fn bad_input_is_refused_whole(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let mut bad = job("q");
    bad.max_attempts = Some(0);
    let err = store
        .at(t0())
        .enqueue_batch(t, &[job("q"), bad])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid(ref e) if e.field == "max_attempts"),
        "{err}"
    );
    let page = store
        .list_jobs(&JobFilter::default(), None, 10)
        .await
        .unwrap();
    assert!(page.items.is_empty(), "no partial write");
    let unknown = TenantId::from(uuid::Uuid::now_v7());
    assert!(matches!(
        store.at(t0()).enqueue(unknown, &job("q")).await,
        Err(StoreError::NotFound {
            entity: "tenant",
            ..
        })
    ));
    assert!(matches!(
        store
            .at(t0())
            .create_tenant("acme", PlanTier::Free, "operator:test")
            .await,
        Err(StoreError::Conflict { .. })
    ));
}

/// Runs tampering SQL directly against the backend.
async fn raw(store: &Store, sql: &'static str) {
    match store {
        Store::Sqlite(s) => {
            sqlx::query(sql).execute(s.pool()).await.unwrap();
        }
        Store::Postgres(s) => {
            sqlx::query(sql).execute(s.pool()).await.unwrap();
        }
    }
}

on_both_backends!(
    stats_count_live_jobs_by_state_and_queue,
    a_batch_names_its_stale_completions,
    full_lifecycle,
    failures_retry_with_backoff_then_die,
    fingerprints_deduplicate_live_jobs_only,
    concurrent_same_fingerprint_enqueues_create_one_job,
    eight_claimers_take_every_job_exactly_once,
    a_stale_completion_racing_the_current_one_loses,
    fenced_writes_from_a_superseded_epoch_change_nothing,
    leases_follow_the_database_clock_and_epochs_grow,
    every_sweep_changes_what_it_should_then_nothing,
    reclaimed_jobs_with_no_attempts_left_go_dead,
    sweep_plans_show_what_would_change_without_changing_it,
    the_audit_chain_detects_edits_deletions_and_reordering,
    audit_retention_keeps_the_chain_verifiable,
    tokens_are_hashed_consumed_and_cleaned_up,
    agents_heartbeat_in_batches_and_drain,
    tenant_agents_see_only_their_tenants_jobs,
    claims_follow_priority_and_age,
    claims_across_queues_take_the_best_of_all,
    listing_pages_newest_first,
    notifications_back_off_then_die,
    bad_input_is_refused_whole,
);
