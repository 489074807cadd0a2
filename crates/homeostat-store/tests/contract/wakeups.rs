//! Wake-ups of waiting claims: queued jobs wake about as many waiting
//! claims as they need (oldest first), only claims that may take them, and
//! nobody else.

use homeostat_model::{ClaimedJob, JobState, NewJob, PlanTier};

fn ids(jobs: &[ClaimedJob]) -> Vec<homeostat_model::JobId> {
    jobs.iter().map(|j| j.id).collect()
}
use homeostat_store::Store;
use homeostat_testkit::{At, agent, at, job, t0, tenant, wakes, woken};

use crate::LEASE;

async fn queued_jobs_wake_as_many_waiting_claims_as_they_need(store: &Store) {
    store.listening().await;
    let t = tenant(store, "acme", PlanTier::Free).await;
    let other = tenant(store, "globex", PlanTier::Free).await;
    let mut waiters = Vec::new();
    for _ in 0..6 {
        let a = agent(store, Some(t), &["builds"]).await;
        waiters.push(store.queued_waiter(a, None, 1).await.unwrap());
    }
    let stranger = agent(store, Some(other), &["builds"]).await;
    let mut stranger = store.queued_waiter(stranger, None, 1).await.unwrap();
    let deployer = agent(store, Some(t), &["deploys"]).await;
    let mut deployer = store.queued_waiter(deployer, None, 1).await.unwrap();
    assert_eq!(store.waiting_claims(), 8);

    store
        .at(t0())
        .enqueue_batch(t, &[job("builds"), job("builds")])
        .await
        .unwrap();
    // A job on another queue, woken after the first two: once it has
    // arrived, so has every wake-up the builds sent.
    store.at(t0()).enqueue(t, &job("deploys")).await.unwrap();
    wakes(&mut deployer, "the deploys waiter").await;
    let mut woke = Vec::new();
    for w in &mut waiters {
        woke.push(woken(w).await);
    }
    assert_eq!(
        woke,
        [true, true, false, false, false, false],
        "two builds wake the two oldest waiting claims, no more"
    );
    assert!(!woken(&mut stranger).await, "another tenant's agent woke");
    assert_eq!(store.waiting_claims(), 5);

    // A job scheduled for later wakes nobody now.
    let later = NewJob {
        run_at: Some(at(3600)),
        ..job("builds")
    };
    store.at(t0()).enqueue(t, &later).await.unwrap();
    store.at(t0()).enqueue(other, &job("builds")).await.unwrap();
    wakes(&mut stranger, "the other tenant's waiter").await;
    for w in &mut waiters[2..] {
        assert!(!woken(w).await, "a scheduled job woke a claim");
    }
}

async fn a_platform_agent_is_woken_by_any_tenants_jobs(store: &Store) {
    store.listening().await;
    let t = tenant(store, "acme", PlanTier::Free).await;
    let platform = agent(store, None, &["builds"]).await;
    let mut w = store.queued_waiter(platform, None, 1).await.unwrap();
    store.at(t0()).enqueue(t, &job("builds")).await.unwrap();
    wakes(&mut w, "the platform agent").await;
}

async fn a_claim_of_several_jobs_counts_as_several_waiters(store: &Store) {
    store.listening().await;
    let t = tenant(store, "acme", PlanTier::Free).await;
    let big = agent(store, Some(t), &["builds"]).await;
    let small = agent(store, Some(t), &["builds"]).await;
    let mut big = store.queued_waiter(big, None, 5).await.unwrap();
    let mut small = store.queued_waiter(small, None, 1).await.unwrap();
    let jobs: Vec<NewJob> = (0..5).map(|_| job("builds")).collect();
    store.at(t0()).enqueue_batch(t, &jobs).await.unwrap();
    assert!(woken(&mut big).await);
    assert!(
        !woken(&mut small).await,
        "five jobs woke a second claim though the first takes five"
    );
}

async fn jobs_queued_again_wake_waiting_claims(store: &Store) {
    store.listening().await;
    let t = tenant(store, "acme", PlanTier::Free).await;
    let worker = agent(store, Some(t), &["builds"]).await;
    store.at(t0()).enqueue(t, &job("builds")).await.unwrap();
    let claimed = store.at(at(1)).claim(worker, 1, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let a = agent(store, Some(t), &["builds"]).await;
        waiters.push(store.queued_waiter(a, None, 1).await.unwrap());
    }
    // The lease runs out: the job is queued again and wakes one claim.
    let swept = store
        .at(at(62))
        .requeue_expired_leases(100, None, None)
        .await
        .unwrap();
    assert_eq!(swept.changed, 1);
    assert_eq!(
        store.get_job(claimed[0].id).await.unwrap().state,
        JobState::Queued
    );
    let mut woke = Vec::new();
    for w in &mut waiters {
        woke.push(woken(w).await);
    }
    assert_eq!(woke, [true, false, false]);
}

async fn a_claim_woken_and_gone_before_it_looked_hands_its_wake_up_on(store: &Store) {
    store.listening().await;
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["builds"]).await;
    let b = agent(store, Some(t), &["builds"]).await;
    let gone = store.queued_waiter(a, None, 1).await.unwrap();
    let mut next = store.queued_waiter(b, None, 1).await.unwrap();
    store.at(t0()).enqueue(t, &job("builds")).await.unwrap();
    assert!(!woken(&mut next).await);
    drop(gone);
    assert!(woken(&mut next).await, "the job's wake-up was lost");
}

async fn a_job_named_to_a_woken_claim_costs_no_look_that_finds_nothing(store: &Store) {
    store.listening().await;
    let t = tenant(store, "acme", PlanTier::Free).await;
    // On two queues: the claim that merges them, beside the usual one.
    for queues in [&["builds"][..], &["builds", "deploys"][..]] {
        let waiting = agent(store, Some(t), queues).await;
        let back = agent(store, Some(t), &["builds"]).await;
        let mut w = store.queued_waiter(waiting, None, 1).await.unwrap();
        let first = store.at(t0()).enqueue(t, &job("builds")).await.unwrap();
        wakes(&mut w, "the waiting claim").await;
        // An agent coming back on its own is faster.
        let taken = store.at(at(1)).claim(back, 1, LEASE).await.unwrap();
        let looked = store
            .at(at(1))
            .claim_woken(&w, waiting, None, 1, LEASE)
            .await
            .unwrap();
        assert_eq!(ids(&taken), [first.id]);
        assert_eq!(
            looked, None,
            "{queues:?}: a claim woken for a taken job looked"
        );
        drop(w);

        // Its job still queued, a woken claim looks and takes it.
        let mut w = store.queued_waiter(waiting, None, 1).await.unwrap();
        let second = store.at(at(2)).enqueue(t, &job("builds")).await.unwrap();
        wakes(&mut w, "the waiting claim").await;
        let looked = store
            .at(at(2))
            .claim_woken(&w, waiting, None, 1, LEASE)
            .await
            .unwrap()
            .expect("a woken claim whose job is queued did not look");
        assert_eq!(looked.len(), 1);
        assert_eq!(looked[0].id, second.id);
    }
}

async fn a_woken_claims_job_is_kept_for_it_on_postgres_and_withdrawn_from_it_on_sqlite(
    store: &Store,
) {
    store.listening().await;
    let t = tenant(store, "acme", PlanTier::Free).await;
    let postgres = store.backend() == "postgres";
    // The agent back on its own claims from one queue, then from two: the
    // claim that merges queues, beside the usual one.
    for queues in [&["builds"][..], &["builds", "deploys"][..]] {
        let waiting = agent(store, Some(t), &["builds"]).await;
        let back = agent(store, Some(t), queues).await;
        let mut w = store.queued_waiter(waiting, None, 1).await.unwrap();
        let queued = store.at(t0()).enqueue(t, &job("builds")).await.unwrap();
        wakes(&mut w, "the waiting claim").await;
        let shown = store.get_job(queued.id).await.unwrap();
        assert_eq!(shown.lease_expires_at, None, "a queued job shows a lease");
        let taken = store.at(t0()).claim(back, 1, LEASE).await.unwrap();
        let looked = store
            .at(t0())
            .claim_woken(&w, waiting, None, 1, LEASE)
            .await
            .unwrap();
        if postgres {
            // Claims run side by side there: the job is kept for the
            // woken claim, on every replica.
            assert!(
                taken.is_empty(),
                "{queues:?}: a claim that was not woken took it"
            );
            let looked = looked.expect("the woken claim did not look");
            assert_eq!(ids(&looked), [queued.id], "{queues:?}");
        } else {
            // One writer: the faster claim takes it and the woken claim,
            // told, does not look.
            assert_eq!(ids(&taken), [queued.id], "{queues:?}");
            assert_eq!(looked, None, "{queues:?}");
        }
        drop(w);

        // A job whose woken claim never looks (its replica died) is any
        // claim's a moment later.
        let mut w = store.queued_waiter(waiting, None, 1).await.unwrap();
        let orphan = store.at(at(10)).enqueue(t, &job("builds")).await.unwrap();
        wakes(&mut w, "the waiting claim").await;
        if postgres {
            let now = store.at(at(10)).claim(back, 1, LEASE).await.unwrap();
            assert!(now.is_empty(), "{queues:?}: kept for no time");
        }
        let later = store.at(at(11)).claim(back, 1, LEASE).await.unwrap();
        assert_eq!(ids(&later), [orphan.id], "{queues:?}: kept for ever");
        drop(w);
    }
}

homeostat_testkit::on_both_backends!(
    a_job_named_to_a_woken_claim_costs_no_look_that_finds_nothing,
    a_woken_claims_job_is_kept_for_it_on_postgres_and_withdrawn_from_it_on_sqlite,
    queued_jobs_wake_as_many_waiting_claims_as_they_need,
    a_platform_agent_is_woken_by_any_tenants_jobs,
    a_claim_of_several_jobs_counts_as_several_waiters,
    jobs_queued_again_wake_waiting_claims,
    a_claim_woken_and_gone_before_it_looked_hands_its_wake_up_on,
);
