//! Claims: exactly once, in priority order, per tenant, across queues; stale completions.

use std::collections::HashSet;
use std::time::Duration;

use homeostat_model::{JobId, JobState, NewJob, PlanTier};
use homeostat_store::{Ageing, Completion, Failure, Store, StoreError};
use homeostat_testkit::{At, agent, agents, at, job, on_both_backends, t0, tenant};
use serde_json::json;

use crate::LEASE;

async fn eight_claimers_take_every_job_exactly_once(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let jobs: Vec<NewJob> = (0..10_000).map(|_| job("bulk")).collect();
    for chunk in jobs.chunks(2_500) {
        store.at(t0()).enqueue_batch(t, chunk).await.unwrap();
    }
    let agents = agents(store, Some(t), &["bulk"], 8).await;
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
    let done = store.at(at(2)).complete_batch(a, &batch).await.unwrap();
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
        .requeue_expired_leases(100, None, None)
        .await
        .unwrap();
    assert_eq!(swept.ids, vec![id]);
    let new = store.at(at(12)).claim(b, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(new.lease_token, old.lease_token + 1);
    let (s1, s2) = (store.clone(), store.clone());
    let (stale, current) = tokio::join!(
        s1.at(at(13))
            .complete(a, id, old.lease_token, Some(json!("a"))),
        s2.at(at(13))
            .complete(b, id, new.lease_token, Some(json!("b"))),
    );
    assert!(matches!(stale, Err(StoreError::StaleLease { .. })));
    current.unwrap();
    assert_eq!(store.get_job(id).await.unwrap().result, Some(json!("b")));
    assert!(
        store
            .at(at(14))
            .heartbeat_job(a, id, old.lease_token, LEASE)
            .await
            .is_err()
    );
    assert!(
        store
            .at(at(14))
            .fail(&Failure {
                agent: a,
                id,
                lease_token: old.lease_token,
                error: "x",
                permanent: false
            })
            .await
            .is_err()
    );
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
    let small = tenant(store, "small", PlanTier::Free).await;
    let big = tenant(store, "big", PlanTier::Premium).await;
    let platform = agent(store, None, &["q"]).await;
    let old_low = store.at(t0()).enqueue(small, &job("q")).await.unwrap().id;
    // A flood of urgent jobs 20.5 minutes later.
    let flood_at = 21 * 60 - 30;
    let urgent = NewJob {
        priority: 200,
        ..job("q")
    };
    let flood = store
        .at(at(flood_at))
        .enqueue_batch(big, &vec![urgent; 20])
        .await
        .unwrap();
    // By priority alone the flood goes first...
    let first = store
        .at(at(flood_at + 1))
        .claim(platform, 1, LEASE)
        .await
        .unwrap();
    assert_eq!(first[0].id, flood[0].id);
    // ...but at 10 points per minute waited (capped at 300) the low job,
    // 21 minutes old, passes the fresh flood.
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
    assert_eq!(next[0].id, old_low);
    assert_eq!(
        store.get_job(old_low).await.unwrap().effective_priority,
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

async fn one_heartbeat_extends_every_live_lease_and_names_the_rest(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["builds"]).await;
    let jobs: Vec<NewJob> = (0..3).map(|_| job("builds")).collect();
    store.at(at(0)).enqueue_batch(t, &jobs).await.unwrap();
    let c = store.at(at(10)).claim(a, 3, LEASE).await.unwrap();
    store
        .at(at(11))
        .complete(a, c[0].id, c[0].lease_token, None)
        .await
        .unwrap();
    let held = [
        (c[0].id, c[0].lease_token),
        (c[1].id, c[1].lease_token),
        (c[2].id, c[2].lease_token + 1),
    ];
    let extended = store
        .at(at(20))
        .heartbeat_jobs(a, &held, LEASE)
        .await
        .unwrap();
    assert_eq!(extended, vec![false, true, false]);
    let lease_of = |id: JobId| async move { store.get_job(id).await.unwrap().lease_expires_at };
    assert_eq!(lease_of(c[1].id).await, Some(at(20) + LEASE));
    assert_eq!(
        lease_of(c[2].id).await,
        Some(at(10) + LEASE),
        "a stale token extends nothing"
    );
    assert_eq!(lease_of(c[0].id).await, None);
    assert!(
        store
            .heartbeat_jobs(a, &[], LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

/// With nothing queued, a claim by an agent that may not claim is refused
/// with the agent's status (PostgreSQL's gate runs before the scan, so an
/// empty queue hides nothing), from one queue and from several.
async fn an_agent_that_may_not_claim_is_told_why_even_with_nothing_queued(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let one = agent(store, Some(t), &["q"]).await;
    let several = agent(store, Some(t), &["q", "r"]).await;
    let silent = agent(store, Some(t), &["q"]).await;
    for a in [one, several, silent] {
        assert!(
            store
                .at(at(10))
                .claim(a, 10, LEASE)
                .await
                .unwrap()
                .is_empty()
        );
    }
    for a in [one, several] {
        store
            .at(at(12))
            .drain_agent(a, "operator:test")
            .await
            .unwrap();
        let err = store.at(at(13)).claim(a, 10, LEASE).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        assert!(err.to_string().contains("the agent is draining"), "{err}");
    }
    // Draining agents that keep heartbeating stay draining.
    store
        .at(at(150))
        .heartbeat_agents(&[one, several])
        .await
        .unwrap();
    let offline = store
        .at(at(200))
        .mark_silent_agents_offline(Duration::from_secs(90), 100, None)
        .await
        .unwrap();
    assert_eq!(offline, vec![silent]);
    let err = store
        .at(at(201))
        .claim(silent, 10, LEASE)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the agent is offline"), "{err}");
    assert_eq!(err.code().as_str(), "conflict");
}

/// Lease tokens are claim counters, easy to guess: every lease operation
/// also names the agent, and one naming another agent's lease changes
/// nothing, whatever the token.
async fn only_the_holder_acts_on_a_lease(store: &Store) {
    let t1 = tenant(store, "acme", PlanTier::Free).await;
    let t2 = tenant(store, "globex", PlanTier::Free).await;
    let holder = agent(store, Some(t1), &["q"]).await;
    let intruder = agent(store, Some(t2), &["q"]).await;
    store.at(t0()).enqueue(t1, &job("q")).await.unwrap();
    let c = store
        .at(at(1))
        .claim(holder, 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let (id, token) = (c.id, c.lease_token);
    let later = store.at(at(30));
    assert!(matches!(
        later.heartbeat_job(intruder, id, token, LEASE).await,
        Err(StoreError::StaleLease { .. })
    ));
    let held = [(id, token)];
    assert_eq!(
        later.heartbeat_jobs(intruder, &held, LEASE).await.unwrap(),
        vec![false]
    );
    assert!(matches!(
        later.complete(intruder, id, token, None).await,
        Err(StoreError::StaleLease { .. })
    ));
    let failure = Failure {
        agent: intruder,
        id,
        lease_token: token,
        error: "x",
        permanent: true,
    };
    assert!(matches!(
        later.fail(&failure).await,
        Err(StoreError::StaleLease { .. })
    ));
    assert!(matches!(
        later.release_job(intruder, id, token).await,
        Err(StoreError::StaleLease { .. })
    ));
    let job = store.get_job(id).await.unwrap();
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.lease_expires_at, Some(at(1) + LEASE), "not extended");
    // The holder's own operations go through.
    assert_eq!(
        later.heartbeat_jobs(holder, &held, LEASE).await.unwrap(),
        vec![true]
    );
    later.complete(holder, id, token, None).await.unwrap();
}

on_both_backends!(
    only_the_holder_acts_on_a_lease,
    eight_claimers_take_every_job_exactly_once,
    an_agent_that_may_not_claim_is_told_why_even_with_nothing_queued,
    one_heartbeat_extends_every_live_lease_and_names_the_rest,
    a_batch_names_its_stale_completions,
    a_stale_completion_racing_the_current_one_loses,
    tenant_agents_see_only_their_tenants_jobs,
    claims_follow_priority_and_age,
    claims_across_queues_take_the_best_of_all,
);
