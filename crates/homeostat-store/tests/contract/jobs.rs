//! Enqueue, dedup, completion and failure, listing, statistics, bad input.

use std::collections::HashSet;

use homeostat_model::{AgentStatus, JobState, NewJob, PlanTier, TenantId};
use homeostat_store::{Failure, JobFilter, Store, StoreError};
use homeostat_testkit::{At, agent, at, job, on_both_backends, t0, tenant};
use jiff::Timestamp;
use serde_json::json;

use crate::LEASE;

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
    assert_eq!(
        stored.effective_priority, 0,
        "the submitted priority; a tier weighs shares"
    );

    let claimed = store.at(at(1)).claim(a, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!((c.id, c.attempt, c.lease_token), (enq.id, 1, 1));
    assert_eq!(c.payload, new.payload);
    assert_eq!(c.lease_expires_at, at(61));

    let extended = store
        .at(at(30))
        .heartbeat_job(a, c.id, c.lease_token, LEASE)
        .await
        .unwrap();
    assert_eq!(extended, at(90));
    store
        .at(at(40))
        .complete(a, c.id, c.lease_token, Some(json!({"ok": true})))
        .await
        .unwrap();
    let done = store.get_job(c.id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(json!({"ok": true})));
    assert_eq!(done.finished_at, Some(at(40)));
    // The agent that ran it stays named: a resent outcome is recognised as its own.
    assert_eq!(done.lease_agent, Some(a));
    assert_eq!(done.lease_expires_at, None);
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
        store
            .at(at(42))
            .complete(a, c.id, c.lease_token, None)
            .await,
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
            agent: a,
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
            agent: a,
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
            agent: a,
            id,
            lease_token: c.lease_token,
            error: "bad input",
            permanent: true,
        })
        .await
        .unwrap();
    assert_eq!(out.state, JobState::Dead);
    // Redrive: back to queued with fresh attempts.
    let again = store.at(at(40)).retry(id, "operator:test").await.unwrap();
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
        .complete(a, c.id, c.lease_token, None)
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
        ..JobFilter::default()
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
        .complete(a, done.id, done.lease_token, None)
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

async fn failed_attempts_are_kept_on_the_job(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, Some(t), &["q"]).await;
    let id = store.at(t0()).enqueue(t, &job("q")).await.unwrap().id;
    let c = store.at(at(1)).claim(a, 1, LEASE).await.unwrap().remove(0);
    store
        .at(at(5))
        .fail(&Failure {
            agent: a,
            id,
            lease_token: c.lease_token,
            error: "exit 1",
            permanent: false,
        })
        .await
        .unwrap();
    // The retry is due; the second attempt's lease expires unheartbeated.
    store.at(at(600)).promote_scheduled(10, None).await.unwrap();
    store
        .at(at(601))
        .claim(a, 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    store
        .at(at(601 + 61))
        .requeue_expired_leases(10, None, None)
        .await
        .unwrap();
    let attempts = store.get_job(id).await.unwrap().attempts;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(
        (
            attempts[0].attempt,
            attempts[0].agent_id,
            attempts[0].error.as_str()
        ),
        (1, Some(a), "exit 1")
    );
    assert_eq!(attempts[0].started_at, Some(at(1)));
    assert_eq!(attempts[0].failed_at, at(5));
    assert_eq!((attempts[1].attempt, attempts[1].agent_id), (2, Some(a)));
    assert!(
        attempts[1].error.starts_with("lease expired"),
        "{:?}",
        attempts[1]
    );
}

/// A job that waited for its approval past its start-by deadline is not
/// expired for being approved: the deadline counts the wait to start once
/// approved, and still bounds it.
async fn approving_late_does_not_expire_the_job(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let mut gated = job("q");
    gated.approval_expires_at = Some(at(24 * 3600));
    let id = store.at(t0()).enqueue(t, &gated).await.unwrap().id;
    let default = store.options().default_queue_deadline.as_secs() as i64;
    // Approved twice the default deadline after it was created.
    let late = 2 * default;
    let approved = store
        .at(at(late))
        .approve(id, "operator:test")
        .await
        .unwrap();
    assert_eq!(approved.state, JobState::Queued);
    assert_eq!(approved.deadline, Some(at(late + default)));
    let swept = store
        .at(at(late + 1))
        .expire_overdue_queued(100, None)
        .await
        .unwrap();
    assert!(swept.ids.is_empty(), "approving expired the job");
    // Unclaimed for the whole deadline after its approval, it expires.
    let swept = store
        .at(at(late + default + 1))
        .expire_overdue_queued(100, None)
        .await
        .unwrap();
    assert_eq!(swept.ids, vec![id]);
}

async fn listing_by_state_finds_exactly_the_jobs_in_each_state(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    for _ in 0..4 {
        store.at(at(1)).enqueue(t, &job("q")).await.unwrap();
    }
    let claimed = store.at(at(2)).claim(a, 4, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 4);
    store
        .at(at(3))
        .complete(a, claimed[0].id, claimed[0].lease_token, None)
        .await
        .unwrap();
    for (c, permanent) in [(&claimed[1], false), (&claimed[2], true)] {
        let failure = Failure {
            agent: a,
            id: c.id,
            lease_token: c.lease_token,
            error: "exit 1",
            permanent,
        };
        store.at(at(3)).fail(&failure).await.unwrap();
    }
    store.at(at(4)).enqueue(t, &job("q")).await.unwrap();
    let cancelled = store.at(at(4)).enqueue(t, &job("q")).await.unwrap().id;
    store
        .at(at(5))
        .cancel(cancelled, "operator:test")
        .await
        .unwrap();
    let mut approval = job("q");
    approval.approval_expires_at = Some(at(10_000));
    store.at(at(5)).enqueue(t, &approval).await.unwrap();
    let mut overdue = job("q");
    overdue.deadline = Some(at(50));
    store.at(at(5)).enqueue(t, &overdue).await.unwrap();
    store
        .at(at(100))
        .expire_overdue_queued(100, None)
        .await
        .unwrap();
    // Waiting: the second job under a limit of one.
    let one = homeostat_model::LimitSpec {
        max_running: Some(1),
        ..Default::default()
    };
    store.set_limit("one", &one, "operator:test").await.unwrap();
    for _ in 0..2 {
        let mut limited = job("q");
        limited.limits = vec![homeostat_model::JobLimit::new("one", "k")];
        store.at(at(101)).enqueue(t, &limited).await.unwrap();
    }
    // Pending: a workflow step whose need has not finished.
    let steps = ["first", "second"].map(|name| homeostat_model::NewStep {
        name: name.into(),
        job: job("q"),
        needs: if name == "second" {
            vec!["first".into()]
        } else {
            vec![]
        },
        when: homeostat_model::StepCondition::OnSuccess,
    });
    let pipeline = homeostat_model::NewWorkflow {
        name: "pipeline".into(),
        steps: steps.to_vec(),
    };
    store
        .at(at(102))
        .submit_workflow(t, &pipeline, "test")
        .await
        .unwrap();

    let all = store
        .list_jobs(&JobFilter::default(), None, 100)
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), 12);
    for state in JobState::ALL {
        let filter = JobFilter {
            state: Some(state),
            ..JobFilter::default()
        };
        let listed: Vec<_> = store
            .list_jobs(&filter, None, 100)
            .await
            .unwrap()
            .items
            .iter()
            .map(|j| j.id)
            .collect();
        let expected: Vec<_> = all
            .iter()
            .filter(|j| j.state == state)
            .map(|j| j.id)
            .collect();
        assert_eq!(listed, expected, "jobs listed as {}", state.as_str());
        assert!(!listed.is_empty(), "no job ended {}", state.as_str());
    }
}

/// The controllers' sweeps are counted in the job metrics too: a lease
/// that ran out (a reclaim; dead with its attempts used up), a job past
/// its timeout (a retry), a job never started by its deadline (expired).
async fn sweeps_are_counted_in_the_job_metrics(store: &Store) {
    let mut registry = prometheus_client::registry::Registry::default();
    store.register_metrics(&mut registry);
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, Some(t), &["q"]).await;
    let mut once = job("q");
    once.max_attempts = Some(1);
    store.at(t0()).enqueue(t, &once).await.unwrap();
    store.at(at(1)).claim(a, 1, LEASE).await.unwrap();
    let mut slow = NewJob::new("q", "render");
    slow.timeout_secs = Some(10);
    slow.max_attempts = Some(3);
    store.at(at(2)).enqueue(t, &slow).await.unwrap();
    store.at(at(3)).claim(a, 1, LEASE).await.unwrap();
    let mut late = NewJob::new("q", "report");
    late.deadline = Some(at(30));
    store.at(at(4)).enqueue(t, &late).await.unwrap();

    let timed_out = store.at(at(20)).time_out_running(10, None).await.unwrap();
    assert_eq!(timed_out.ids.len(), 1);
    let expired = store
        .at(at(31))
        .expire_overdue_queued(10, None)
        .await
        .unwrap();
    assert_eq!(expired.ids.len(), 1);
    let reclaimed = store
        .at(at(1 + 61))
        .requeue_expired_leases(10, None, None)
        .await
        .unwrap();
    assert_eq!(reclaimed.dead.len(), 1);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for needle in [
        "homeostat_job_reclaims_total{queue=\"q\",kind=\"build\",reason=\"lease_expired\"} 1",
        "homeostat_jobs_finished_total{queue=\"q\",kind=\"build\",outcome=\"dead\"} 1",
        "homeostat_job_retries_total{queue=\"q\",kind=\"render\"} 1",
        "homeostat_jobs_finished_total{queue=\"q\",kind=\"report\",outcome=\"expired\"} 1",
    ] {
        assert!(text.contains(needle), "no {needle} in\n{text}");
    }
    assert!(
        !text.contains("kind=\"render\",reason"),
        "a timeout is not a reclaim"
    );
}

/// A job's trace context is kept and handed to the agent that claims it:
/// in a batch (the tuned insert), beside a job with none, and in a
/// workflow's steps.
async fn the_trace_context_goes_from_enqueue_to_claim(store: &Store) {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, Some(t), &["q"]).await;
    let mut traced = job("q");
    traced.traceparent = Some(tp.into());
    let made = store
        .at(t0())
        .enqueue_batch(t, &[traced.clone(), job("q")])
        .await
        .unwrap();
    let claimed = store.at(at(1)).claim(a, 2, LEASE).await.unwrap();
    let of = |id| {
        claimed
            .iter()
            .find(|c| c.id == id)
            .unwrap()
            .traceparent
            .clone()
    };
    assert_eq!(of(made[0].id).as_deref(), Some(tp));
    assert_eq!(of(made[1].id), None);
    assert_eq!(
        store
            .get_job(made[0].id)
            .await
            .unwrap()
            .traceparent
            .as_deref(),
        Some(tp)
    );
    let wf = store
        .at(at(2))
        .submit_workflow(
            t,
            &homeostat_model::NewWorkflow {
                name: "traced".into(),
                steps: vec![homeostat_model::NewStep {
                    name: "only".into(),
                    job: traced,
                    needs: Vec::new(),
                    when: homeostat_model::StepCondition::OnSuccess,
                }],
            },
            "operator:test",
        )
        .await
        .unwrap();
    let step = store.at(at(3)).claim(a, 1, LEASE).await.unwrap();
    assert_eq!(step[0].id, wf.steps[0].job_id);
    assert_eq!(step[0].traceparent.as_deref(), Some(tp));
}

on_both_backends!(
    the_trace_context_goes_from_enqueue_to_claim,
    sweeps_are_counted_in_the_job_metrics,
    listing_by_state_finds_exactly_the_jobs_in_each_state,
    approving_late_does_not_expire_the_job,
    failed_attempts_are_kept_on_the_job,
    full_lifecycle,
    failures_retry_with_backoff_then_die,
    fingerprints_deduplicate_live_jobs_only,
    concurrent_same_fingerprint_enqueues_create_one_job,
    listing_pages_newest_first,
    stats_count_live_jobs_by_state_and_queue,
    bad_input_is_refused_whole,
);
