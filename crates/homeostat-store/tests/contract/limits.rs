//! Limits by key: admission, each strategy, every way a slot is freed.

use std::time::Duration;

use homeostat_model::{
    AuditAction, JobId, JobLimit, JobState, KeySource, LimitScope, LimitSelector, LimitSpec,
    LimitStrategy, NewJob, PlanTier, Rate,
};
use homeostat_store::{Failure, JobFilter, Store, StoreError};
use homeostat_testkit::{At, agent, at, completions, job, on_both_backends, t0, tenant};

use crate::LEASE;

fn max(n: u32) -> LimitSpec {
    LimitSpec {
        max_running: Some(n),
        ..LimitSpec::default()
    }
}

/// Sets limit `name` to at most `n` running per key.
async fn set_max(store: &Store, name: &str, n: u32) {
    store
        .set_limit(name, &max(n), "operator:test")
        .await
        .unwrap();
}

fn keyed(queue: &str, limit: &str, key: &str) -> NewJob {
    let mut j = job(queue);
    j.limits = vec![JobLimit::new(limit, key)];
    j
}

async fn state(store: &Store, id: JobId) -> JobState {
    store.get_job(id).await.unwrap().state
}

async fn states(store: &Store, ids: &[JobId]) -> Vec<JobState> {
    let mut out = Vec::new();
    for id in ids {
        out.push(state(store, *id).await);
    }
    out
}

/// Admits what is due; `id` is then the one queued job. The replica's own
/// admitter may hold admission's lock at that moment, with the wake-up
/// taken and not yet committed: admission is asked again until the queue
/// settles (the deadline only guards a hang).
async fn only_queued(store: &Store, id: JobId) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        store.admit_waiting("test").await.unwrap();
        let queued: Vec<JobId> = store
            .list_jobs(
                &JobFilter {
                    state: Some(JobState::Queued),
                    ..JobFilter::default()
                },
                None,
                10,
            )
            .await
            .unwrap()
            .items
            .iter()
            .map(|j| j.id)
            .collect();
        if !queued.is_empty() || std::time::Instant::now() > deadline {
            assert_eq!(queued, [id]);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_key_admits_up_to_its_maximum_and_a_finished_job_frees_its_slot(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    set_max(store, "per-customer", 2).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            store
                .at(at(i))
                .enqueue(t, &keyed("q", "per-customer", "42"))
                .await
                .unwrap()
                .id,
        );
    }
    use JobState::*;
    assert_eq!(
        states(store, &ids).await,
        [Queued, Queued, Waiting, Waiting]
    );
    let claimed = store.claim(a, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 2, "no claim starts a job beyond its limit");
    let status = store
        .job_limits(&store.get_job(ids[2]).await.unwrap())
        .await
        .unwrap();
    assert_eq!(status.len(), 1);
    assert!(status[0].blocking);
    assert_eq!(status[0].describe(), "per-customer:42, 2 of 2 running");

    store
        .complete_batch(a, &completions(&claimed[..1]))
        .await
        .unwrap();
    store.admit_waiting("test").await.unwrap();
    assert_eq!(states(store, &ids[2..]).await, [Queued, Waiting]);
    let next = store.claim(a, 10, LEASE).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, ids[2]);
    let usage = store.limit_usage("per-customer").await.unwrap();
    assert_eq!((usage.holding, usage.waiting, usage.active_keys), (2, 1, 1));
    assert_eq!(usage.hottest[0].key, "42");
    assert_eq!(usage.hottest[0].running, 2);
}

async fn a_saturated_key_never_holds_back_a_free_one(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    set_max(store, "per-customer", 1).await;
    let busy: Vec<NewJob> = (0..2000)
        .map(|_| keyed("q", "per-customer", "busy"))
        .collect();
    store.at(t0()).enqueue_batch(t, &busy).await.unwrap();
    let held = store.claim(a, 10, LEASE).await.unwrap();
    assert_eq!(held.len(), 1);
    // The busy key's backlog is older and waits; the free key's job is
    // claimable as soon as it is enqueued, by the next claim.
    let free = store
        .at(at(1))
        .enqueue(t, &keyed("q", "per-customer", "free"))
        .await
        .unwrap()
        .id;
    let claimed = store.claim(a, 10, LEASE).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [free]);
    let usage = store.limit_usage("per-customer").await.unwrap();
    assert_eq!(usage.waiting, 1999);
}

async fn every_way_a_slot_is_freed_admits_the_next_job(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    set_max(store, "one", 1).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            store
                .at(at(i))
                .enqueue(t, &keyed("q", "one", "k"))
                .await
                .unwrap()
                .id,
        );
    }
    // Each step frees the one slot a different way; the next job in line
    // is admitted, and only it.
    let holder = |n: usize| ids[n];

    // 1. Succeeds.
    let c = store.claim(a, 1, LEASE).await.unwrap();
    assert_eq!(c[0].id, holder(0));
    store.complete_batch(a, &completions(&c)).await.unwrap();
    only_queued(store, ids[1]).await;
    // 2. Fails for good.
    let c = store.claim(a, 1, LEASE).await.unwrap();
    store
        .fail(&Failure {
            agent: a,
            id: c[0].id,
            lease_token: c[0].lease_token,
            error: "boom",
            permanent: true,
        })
        .await
        .unwrap();
    only_queued(store, ids[2]).await;
    // 3. Cancelled while queued.
    store.cancel(holder(2), "operator:test").await.unwrap();
    only_queued(store, ids[3]).await;
    // 4. Released by its agent (shutting down): it waits again, at the
    // back of its key's line (as a retry does), and the next is admitted.
    let c = store.claim(a, 1, LEASE).await.unwrap();
    assert_eq!(c[0].id, holder(3));
    store
        .release_job(a, c[0].id, c[0].lease_token)
        .await
        .unwrap();
    only_queued(store, ids[4]).await;
    assert_eq!(state(store, holder(3)).await, JobState::Waiting);
    // 5. Its lease runs out: with attempts left it waits for its limit
    // again rather than being queued past it; a job with none left is dead.
    let c = store.at(at(10)).claim(a, 1, LEASE).await.unwrap();
    assert_eq!(c[0].id, holder(4));
    let mut once = keyed("q", "one", "k2");
    once.max_attempts = Some(1);
    let single = store.enqueue(t, &once).await.unwrap().id;
    let c2 = store.claim(a, 1, LEASE).await.unwrap();
    assert_eq!(c2[0].id, single);
    store
        .at(at(10) + LEASE + Duration::from_secs(1))
        .requeue_expired_leases(100, None, None)
        .await
        .unwrap();
    assert_eq!(state(store, single).await, JobState::Dead);
    only_queued(store, ids[5]).await;
    assert_eq!(state(store, holder(4)).await, JobState::Waiting);
    // 6. Cancelled while running: its slot is held until the agent has
    // had its lease to stop it, then freed.
    let c = store
        .at(at(100))
        .claim(a, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(c[0].id, holder(5));
    store.cancel(holder(5), "operator:test").await.unwrap();
    store.admit_waiting("test").await.unwrap();
    assert_eq!(state(store, holder(3)).await, JobState::Waiting);
    store.at(at(131)).admit_waiting("test").await.unwrap();
    assert_eq!(state(store, holder(3)).await, JobState::Queued);
    // 7. Reclaimed from an agent revoked.
    let c = store.at(at(200)).claim(a, 1, LEASE).await.unwrap();
    assert_eq!(c[0].id, holder(3));
    store.revoke_agent(a, "operator:test").await.unwrap();
    only_queued(store, ids[6]).await;
}

async fn a_rate_is_never_exceeded_in_any_window(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let spec = LimitSpec {
        rate: Some(Rate {
            starts: 2,
            per_secs: 60,
        }),
        ..LimitSpec::default()
    };
    store
        .set_limit("api", &spec, "operator:test")
        .await
        .unwrap();
    let jobs: Vec<NewJob> = (0..5).map(|_| keyed("q", "api", "github")).collect();
    store.at(t0()).enqueue_batch(t, &jobs).await.unwrap();
    let first = store.at(at(0)).claim(a, 10, LEASE).await.unwrap();
    assert_eq!(first.len(), 2);
    store.complete_batch(a, &completions(&first)).await.unwrap();
    // Both slots are free, but two starts in the last minute: nothing.
    store.at(at(30)).admit_waiting("test").await.unwrap();
    assert!(
        store
            .at(at(30))
            .claim(a, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let usage = store.at(at(30)).limit_usage("api").await.unwrap();
    assert_eq!(usage.delayed_by_rate, 3);
    // A retried start counts again: a job that fails and goes back waits
    // for the rate too.
    store.at(at(61)).admit_waiting("test").await.unwrap();
    let second = store.at(at(61)).claim(a, 10, LEASE).await.unwrap();
    assert_eq!(second.len(), 2);
    let retry = store
        .fail(&Failure {
            agent: a,
            id: second[0].id,
            lease_token: second[0].lease_token,
            error: "flaky",
            permanent: false,
        })
        .await
        .unwrap()
        .retry_at
        .expect("retried");
    assert!(
        retry < at(121),
        "the test needs the retry inside the window"
    );
    store.at(retry).promote_scheduled(100, None).await.unwrap();
    store.at(retry).admit_waiting("test").await.unwrap();
    assert!(
        store
            .at(retry)
            .claim(a, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    store.at(at(122)).admit_waiting("test").await.unwrap();
    assert_eq!(
        store.at(at(122)).claim(a, 10, LEASE).await.unwrap().len(),
        2
    );
}

async fn cancel_newest_gives_up_the_jobs_beyond_the_free_slots(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let spec = LimitSpec {
        strategy: LimitStrategy::CancelNewest,
        ..max(1)
    };
    store
        .set_limit("deploy", &spec, "operator:test")
        .await
        .unwrap();
    let first = store
        .at(t0())
        .enqueue(t, &keyed("q", "deploy", "prod"))
        .await
        .unwrap()
        .id;
    // One admission gives up jobs of two keys: each says its own key.
    let batch = [
        keyed("q", "deploy", "prod"),
        keyed("q", "deploy", "stage"),
        keyed("q", "deploy", "stage"),
    ];
    let ids: Vec<JobId> = store
        .at(at(1))
        .enqueue_batch(t, &batch)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let second = ids[0];
    assert_eq!(state(store, first).await, JobState::Queued);
    let late = store.get_job(second).await.unwrap();
    assert_eq!(late.state, JobState::Cancelled);
    assert_eq!(
        late.last_error.as_deref(),
        Some(
            "cancelled by limit deploy (key prod): its strategy gives the key's slots to other jobs"
        ),
        "the error names the limit and the key as the job named it"
    );
    let stages = states(store, &ids[1..]).await;
    assert_eq!(
        stages.iter().filter(|s| **s == JobState::Cancelled).count(),
        1
    );
    let given_up = ids[1..]
        .iter()
        .zip(&stages)
        .find(|(_, s)| **s == JobState::Cancelled)
        .unwrap()
        .0;
    let stage = store.get_job(*given_up).await.unwrap();
    assert!(
        stage.last_error.unwrap().contains("(key stage)"),
        "each job names its own key"
    );
    let events = store.audit_events(0, 1000).await.unwrap();
    let event = events
        .iter()
        .find(|e| {
            e.action == AuditAction::JobsLimitCancelled.as_str()
                && e.subject == format!("job:{second}")
        })
        .expect("the cancel is audited");
    assert_eq!(event.details["key"], "prod");
    assert_eq!(event.details["tenant_id"], t.to_string());
}

async fn cancel_oldest_gives_the_slot_to_the_newest_job(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let spec = LimitSpec {
        strategy: LimitStrategy::CancelOldest,
        ..max(1)
    };
    store
        .set_limit("sync", &spec, "operator:test")
        .await
        .unwrap();
    let old = store
        .at(t0())
        .enqueue(t, &keyed("q", "sync", "repo"))
        .await
        .unwrap()
        .id;
    let c = store
        .at(t0())
        .claim(a, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(c[0].id, old);
    let new = store
        .at(at(1))
        .enqueue(t, &keyed("q", "sync", "repo"))
        .await
        .unwrap()
        .id;
    // The running one is cancelled (its agent hears it at its heartbeat);
    // the new one waits for the old lease, then runs.
    assert_eq!(state(store, old).await, JobState::Cancelled);
    assert_eq!(state(store, new).await, JobState::Waiting);
    store.at(at(31)).admit_waiting("test").await.unwrap();
    assert_eq!(state(store, new).await, JobState::Queued);
}

async fn round_robin_keys_take_turns_in_the_claim_order(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let spec = LimitSpec {
        strategy: LimitStrategy::RoundRobin,
        ..max(100)
    };
    store
        .set_limit("fair", &spec, "operator:test")
        .await
        .unwrap();
    let mut batch: Vec<NewJob> = (0..5).map(|_| keyed("q", "fair", "big")).collect();
    batch.push(keyed("q", "fair", "small"));
    store.at(t0()).enqueue_batch(t, &batch).await.unwrap();
    let claimed = store.at(at(1)).claim(a, 2, LEASE).await.unwrap();
    let keys: Vec<String> = claimed.iter().map(|c| c.payload.to_string()).collect();
    assert_eq!(claimed.len(), 2);
    let small = store
        .list_jobs(&JobFilter::default(), None, 10)
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|j| j.limits[0].key == "small")
        .unwrap();
    assert_eq!(
        small.state,
        JobState::Running,
        "the small key's job is among the first two claimed: {keys:?}"
    );
}

async fn keys_come_from_the_payload_or_tenant_and_limits_apply_by_queue(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let per_customer = LimitSpec {
        key_from: KeySource::Payload("/customer".into()),
        ..max(1)
    };
    store
        .set_limit("per-customer", &per_customer, "operator:test")
        .await
        .unwrap();
    let tenant_wide = LimitSpec {
        key_from: KeySource::Tenant,
        applies_to: Some(LimitSelector {
            queue: Some("scans".into()),
            kind: None,
        }),
        ..max(5)
    };
    store
        .set_limit("tenant-scans", &tenant_wide, "operator:test")
        .await
        .unwrap();
    let mut scan = job("scans");
    scan.payload = serde_json::json!({"customer": 7});
    scan.limits = vec![JobLimit {
        limit: "per-customer".into(),
        key: None,
    }];
    let stored = store.enqueue(t, &scan).await.unwrap().id;
    let stored = store.get_job(stored).await.unwrap();
    let keys: Vec<String> = stored.limits.iter().map(ToString::to_string).collect();
    assert_eq!(
        keys,
        ["per-customer:7".to_string(), format!("tenant-scans:{t}")]
    );

    // A job may not name a key for a limit that derives it; an unknown
    // limit is refused, naming the field.
    let mut bad = job("q");
    bad.limits = vec![JobLimit::new("per-customer", "x")];
    let err = store.enqueue(t, &bad).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(e) if e.field == "limits[0].key"),
        "{err:?}"
    );
    let err = store
        .enqueue(t, &keyed("q", "nope", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(e) if e.field == "limits[0].limit"),
        "{err:?}"
    );
}

async fn deleting_a_limit_releases_what_waits_on_it_alone(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    set_max(store, "a", 1).await;
    set_max(store, "b", 1).await;
    let mut both = job("q");
    both.limits = vec![JobLimit::new("a", "k"), JobLimit::new("b", "k")];
    let first = store.enqueue(t, &keyed("q", "a", "k")).await.unwrap().id;
    let only_a = store.enqueue(t, &keyed("q", "a", "k")).await.unwrap().id;
    let b_holder = store.enqueue(t, &keyed("q", "b", "k")).await.unwrap().id;
    let under_both = store.enqueue(t, &both).await.unwrap().id;
    use JobState::*;
    assert_eq!(
        states(store, &[first, only_a, b_holder, under_both]).await,
        [Queued, Waiting, Queued, Waiting]
    );
    store.delete_limit("a", "operator:test").await.unwrap();
    // Waiting on `a` alone: queued. Under `b` too: still waits for `b`.
    assert_eq!(
        states(store, &[only_a, under_both]).await,
        [Queued, Waiting]
    );
    assert!(matches!(
        store.limit("a").await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    assert!(matches!(
        store.delete_limit("a", "operator:test").await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

async fn a_waiting_job_expires_at_its_deadline_and_retry_waits_again(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    set_max(store, "one", 1).await;
    store
        .at(t0())
        .enqueue(t, &keyed("q", "one", "k"))
        .await
        .unwrap();
    let mut late = keyed("q", "one", "k");
    late.deadline = Some(at(30));
    let late = store.at(t0()).enqueue(t, &late).await.unwrap().id;
    assert_eq!(state(store, late).await, JobState::Waiting);
    let swept = store
        .at(at(31))
        .expire_overdue_queued(100, None)
        .await
        .unwrap();
    assert_eq!(swept.ids, [late]);
    assert_eq!(state(store, late).await, JobState::Expired);
    // Retried, it waits for its limit again rather than skipping it.
    let retried = store.at(at(32)).retry(late, "operator:test").await.unwrap();
    assert_eq!(retried.state, JobState::Waiting);
}

async fn a_limit_is_validated_and_its_changes_are_audited(store: &Store) {
    let err = store
        .set_limit("x", &LimitSpec::default(), "operator:test")
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::Invalid(e) if e.field == "max_running"));
    let err = store
        .set_limit("bad name!", &max(1), "operator:test")
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::Invalid(e) if e.field == "name"));
    let (_, created) = store
        .set_limit("x", &max(1), "operator:test")
        .await
        .unwrap();
    assert!(created);
    let (limit, created) = store
        .set_limit("x", &max(3), "operator:test")
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(limit.spec.max_running, Some(3));
    store.delete_limit("x", "operator:test").await.unwrap();
    let actions: Vec<String> = store
        .audit_events(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.starts_with("limit."))
            .collect::<Vec<_>>(),
        ["limit.set", "limit.set", "limit.deleted"]
    );
}

/// An agent taken offline may only be unheard (a replica crashed with its
/// last heartbeats) and still run its jobs: one under a limit keeps its
/// slot until its lease runs out, and a job of its key waits until then;
/// one under no limit is taken back at once, as before.
async fn an_offline_agents_limited_job_keeps_its_slot_until_its_lease_runs_out(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    set_max(store, "one", 1).await;
    let a = agent(store, Some(t), &["q"]).await;
    let limited = store
        .at(t0())
        .enqueue(t, &keyed("q", "one", "k"))
        .await
        .unwrap()
        .id;
    only_queued(store, limited).await;
    let free = store.at(t0()).enqueue(t, &job("q")).await.unwrap().id;
    let claimed = store.at(at(1)).claim(a, 2, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let offline = store
        .at(at(20))
        .mark_silent_agents_offline(Duration::from_secs(10), 100, None)
        .await
        .unwrap();
    assert_eq!(offline, vec![a]);
    // The plan says what the sweep does.
    let plan = store
        .at(at(20))
        .plan(
            homeostat_store::PlanKind::OfflineAgentJobs {
                stale_after: Duration::from_secs(10),
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(plan.count, 1, "{plan:?}");
    assert_eq!(plan.items[0].subject, format!("job:{free}"));
    let swept = store
        .at(at(20))
        .reclaim_offline_agent_jobs(100, None)
        .await
        .unwrap();
    assert_eq!(swept.ids, vec![free]);
    assert_eq!(state(store, limited).await, JobState::Running);
    let next = store
        .at(at(21))
        .enqueue(t, &keyed("q", "one", "k"))
        .await
        .unwrap()
        .id;
    store.at(at(22)).admit_waiting("test").await.unwrap();
    assert_eq!(
        state(store, next).await,
        JobState::Waiting,
        "the slot is held"
    );
    // Its lease (60 s from the claim) runs out: taken back, slot freed.
    let swept = store
        .at(at(1 + 61))
        .reclaim_offline_agent_jobs(100, None)
        .await
        .unwrap();
    assert_eq!(swept.ids, vec![limited]);
    assert_ne!(state(store, limited).await, JobState::Running);
}

async fn a_tenants_keys_are_its_own_unless_the_limit_shares_them(store: &Store) {
    let a = tenant(store, "acme", PlanTier::Free).await;
    let b = tenant(store, "bolt", PlanTier::Free).await;
    set_max(store, "per-customer", 1).await;
    let enqueue = async |t, i, limit: &str, key: &str| {
        store
            .at(at(i))
            .enqueue(t, &keyed("q", limit, key))
            .await
            .unwrap()
            .id
    };
    // Key 42 of acme is full; bolt's key 42 is another key: acme's jobs
    // neither hold bolt's back nor count in what bolt is shown.
    let a1 = enqueue(a, 1, "per-customer", "42").await;
    let a2 = enqueue(a, 2, "per-customer", "42").await;
    let b1 = enqueue(b, 3, "per-customer", "42").await;
    use JobState::*;
    assert_eq!(
        states(store, &[a1, a2, b1]).await,
        [Queued, Waiting, Queued]
    );
    let bolts = store.get_job(b1).await.unwrap();
    assert_eq!(bolts.limits[0].key, "42");
    assert_eq!(bolts.limits[0].tenant, Some(b));
    let status = store.job_limits(&bolts).await.unwrap();
    assert_eq!(status[0].holding, 1, "bolt sees its own slot only");
    assert_eq!(status[0].key.tenant, Some(b));
    assert_eq!(status[0].describe(), "per-customer:42, 1 of 1 running");
    let status = store
        .job_limits(&store.get_job(a2).await.unwrap())
        .await
        .unwrap();
    assert!(status[0].blocking);
    assert_eq!(status[0].holding, 1);
    let usage = store.limit_usage("per-customer").await.unwrap();
    assert_eq!(usage.active_keys, 2);
    let mut owners: Vec<_> = usage
        .hottest
        .iter()
        .map(|k| (k.tenant, k.key.as_str()))
        .collect();
    owners.sort();
    let mut expected = vec![(Some(a), "42"), (Some(b), "42")];
    expected.sort();
    assert_eq!(owners, expected);

    // A shared limit's key is every tenant's: bolt waits for acme.
    let shared = LimitSpec {
        scope: LimitScope::Shared,
        ..max(1)
    };
    let set = store
        .set_limit("upstream", &shared, "operator:test")
        .await
        .unwrap();
    assert_eq!(set.0.spec.scope, LimitScope::Shared);
    let a3 = enqueue(a, 4, "upstream", "api").await;
    let b2 = enqueue(b, 5, "upstream", "api").await;
    assert_eq!(states(store, &[a3, b2]).await, [Queued, Waiting]);
    let waiting = store.get_job(b2).await.unwrap();
    assert_eq!(waiting.limits[0].tenant, None);
    let status = store.job_limits(&waiting).await.unwrap();
    assert!(status[0].blocking);
    assert_eq!(
        status[0].holding, 1,
        "a shared key counts every tenant's jobs"
    );
    let usage = store.limit_usage("upstream").await.unwrap();
    assert_eq!(usage.hottest.len(), 1);
    assert_eq!(
        (usage.hottest[0].tenant, usage.hottest[0].waiting),
        (None, 1)
    );
}

/// Keys of different room admitted together each take their own number
/// of waiting jobs, highest priority first (SQLite fetches keys of one
/// number in a statement).
async fn keys_of_different_room_each_admit_their_best(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    set_max(store, "one", 1).await;
    set_max(store, "three", 3).await;
    let with = |limit: &str, priority: i32| {
        let mut j = keyed("q", limit, "k");
        j.priority = priority;
        j
    };
    let batch = vec![
        with("one", 0),
        with("one", 5),
        with("one", 1),
        with("three", 0),
        with("three", 1),
        with("three", 2),
        with("three", 3),
        with("three", 4),
    ];
    let ids: Vec<JobId> = store
        .enqueue_batch(t, &batch)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    // The replica's own admitter may be admitting the same wake-ups: ask
    // until both keys are full (the deadline only guards a hang).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    use JobState::*;
    let want = [
        Waiting, Queued, Waiting, Waiting, Waiting, Queued, Queued, Queued,
    ];
    loop {
        store.admit_waiting("test").await.unwrap();
        let now = states(store, &ids).await;
        if now == want || std::time::Instant::now() > deadline {
            assert_eq!(now, want);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_both_backends!(
    keys_of_different_room_each_admit_their_best,
    a_tenants_keys_are_its_own_unless_the_limit_shares_them,
    an_offline_agents_limited_job_keeps_its_slot_until_its_lease_runs_out,
    a_key_admits_up_to_its_maximum_and_a_finished_job_frees_its_slot,
    a_saturated_key_never_holds_back_a_free_one,
    every_way_a_slot_is_freed_admits_the_next_job,
    a_rate_is_never_exceeded_in_any_window,
    cancel_newest_gives_up_the_jobs_beyond_the_free_slots,
    cancel_oldest_gives_the_slot_to_the_newest_job,
    round_robin_keys_take_turns_in_the_claim_order,
    keys_come_from_the_payload_or_tenant_and_limits_apply_by_queue,
    deleting_a_limit_releases_what_waits_on_it_alone,
    a_waiting_job_expires_at_its_deadline_and_retry_waits_again,
    a_limit_is_validated_and_its_changes_are_audited,
);
