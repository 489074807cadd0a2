//! Fair share between tenants: a tenant's backlog never holds back another
//! tenant's jobs of the same priority by more than a turn, tiers weigh the
//! shares, and a tenant served alone owes nothing afterwards.

use std::collections::HashMap;
use std::time::Duration;

use homeostat_model::{AgentId, JobId, PlanTier, TenantId};
use homeostat_store::{Ageing, ClaimedJob, Store, StoreOptions};
use homeostat_testkit::{At, agent, at, job, on_both_backends, t0, tenant};

use crate::LEASE;

fn by_tenant(claimed: &[ClaimedJob]) -> HashMap<TenantId, usize> {
    let mut n = HashMap::new();
    for c in claimed {
        *n.entry(c.tenant_id).or_insert(0) += 1;
    }
    n
}

async fn a_tenants_backlog_does_not_hold_back_another(store: &Store) {
    let a = tenant(store, "a", PlanTier::Standard).await;
    let b = tenant(store, "b", PlanTier::Standard).await;
    let platform = agent(store, None, &["q"]).await;
    store
        .at(t0())
        .enqueue_batch(a, &vec![job("q"); 500])
        .await
        .unwrap();
    let served = store.at(at(1)).claim(platform, 100, LEASE).await.unwrap();
    assert_eq!(by_tenant(&served)[&a], 100);
    // 400 of A's wait; B's job is served within a turn, not after them.
    let late = store.at(at(2)).enqueue(b, &job("q")).await.unwrap().id;
    let next = store.at(at(2)).claim(platform, 2, LEASE).await.unwrap();
    assert!(
        next.iter().any(|c| c.id == late),
        "B's job waits behind A's backlog: {next:?}"
    );
}

/// Enqueues 80 jobs for each of `tenants`, in turn, `from` seconds into
/// the test, and has `platform` claim 50 a second later: how many each got.
async fn fifty_of_80_each(
    store: &Store,
    platform: AgentId,
    tenants: [TenantId; 2],
    from: i64,
) -> HashMap<TenantId, usize> {
    for t in tenants {
        store
            .at(at(from))
            .enqueue_batch(t, &vec![job("q"); 80])
            .await
            .unwrap();
    }
    let claimed = store
        .at(at(from + 1))
        .claim(platform, 50, LEASE)
        .await
        .unwrap();
    by_tenant(&claimed)
}

async fn tiers_weigh_the_shares(store: &Store) {
    let premium = tenant(store, "premium", PlanTier::Premium).await;
    let free = tenant(store, "free", PlanTier::Free).await;
    let platform = agent(store, None, &["q"]).await;
    let n = fifty_of_80_each(store, platform, [free, premium], 0).await;
    assert_eq!((n[&premium], n[&free]), (40, 10), "weights 4 and 1");
}

/// A tier changed weighs the tenant's next enqueue: the enqueue reads the
/// tier as it writes, with no copy kept.
async fn a_changed_tier_weighs_the_next_enqueue(store: &Store) {
    let upgraded = tenant(store, "upgraded", PlanTier::Free).await;
    let free = tenant(store, "free", PlanTier::Free).await;
    let platform = agent(store, None, &["q"]).await;
    // Both enqueue once at the old tier, so the statement has run for it.
    for t in [free, upgraded] {
        store.at(t0()).enqueue(t, &job("q")).await.unwrap();
    }
    let first = store.at(t0()).claim(platform, 2, LEASE).await.unwrap();
    assert_eq!(first.len(), 2);
    store
        .set_tenant_tier(upgraded, PlanTier::Premium, "test")
        .await
        .unwrap();
    let n = fifty_of_80_each(store, platform, [free, upgraded], 1).await;
    assert_eq!((n[&upgraded], n[&free]), (40, 10), "weights 4 and 1");
}

async fn a_newcomer_joins_a_backlog_at_its_head(store: &Store) {
    let a = tenant(store, "a", PlanTier::Standard).await;
    let b = tenant(store, "b", PlanTier::Standard).await;
    let platform = agent(store, None, &["q"]).await;
    // A, alone, is served faster than its turns: its head runs 50 s ahead
    // of the clock when B's backlog arrives.
    store
        .at(t0())
        .enqueue_batch(a, &vec![job("q"); 200])
        .await
        .unwrap();
    store.at(at(1)).claim(platform, 100, LEASE).await.unwrap();
    store
        .at(at(2))
        .enqueue_batch(b, &vec![job("q"); 200])
        .await
        .unwrap();
    // Had B's turns started at the clock, B would be served alone for 50 s
    // of turns; joined at the head, the two alternate.
    let next = store.at(at(3)).claim(platform, 20, LEASE).await.unwrap();
    let n = by_tenant(&next);
    assert_eq!((n[&a], n[&b]), (10, 10));
}

async fn a_tenant_served_alone_owes_nothing(store: &Store) {
    let a = tenant(store, "a", PlanTier::Standard).await;
    let b = tenant(store, "b", PlanTier::Standard).await;
    let platform = agent(store, None, &["q"]).await;
    // Its 100 turns run 50 s ahead of the clock, but nobody waited.
    store
        .at(t0())
        .enqueue_batch(a, &vec![job("q"); 100])
        .await
        .unwrap();
    assert_eq!(
        store
            .at(at(1))
            .claim(platform, 100, LEASE)
            .await
            .unwrap()
            .len(),
        100
    );
    let first = store.at(at(2)).enqueue(a, &job("q")).await.unwrap().id;
    let second = store.at(at(3)).enqueue(b, &job("q")).await.unwrap().id;
    let order: Vec<JobId> = store
        .at(at(4))
        .claim(platform, 2, LEASE)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(order, vec![first, second], "first come, first served");
}

async fn ageing_counts_from_the_turn(store: &Store) {
    let a = tenant(store, "a", PlanTier::Free).await;
    // Free tier: turns a second apart, the last 199 s from now.
    let ids: Vec<JobId> = store
        .at(t0())
        .enqueue_batch(a, &vec![job("q"); 200])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    store
        .at(at(120))
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
    let priority = |id| async move { store.get_job(id).await.unwrap().effective_priority };
    assert_eq!(priority(ids[0]).await, 20, "its turn came 2 minutes ago");
    assert_eq!(priority(ids[30]).await, 10, "1.5 minutes ago");
    assert_eq!(priority(ids[150]).await, 0, "its turn has not come");
}

on_both_backends!(
    a_tenants_backlog_does_not_hold_back_another,
    tiers_weigh_the_shares,
    a_changed_tier_weighs_the_next_enqueue,
    a_newcomer_joins_a_backlog_at_its_head,
    a_tenant_served_alone_owes_nothing,
    ageing_counts_from_the_turn,
);

/// Fair share turned off: jobs of one priority go first come, first served.
async fn off_is_first_come_first_served(store: &Store) {
    let a = tenant(store, "a", PlanTier::Standard).await;
    let b = tenant(store, "b", PlanTier::Premium).await;
    let platform = agent(store, None, &["q"]).await;
    store
        .at(t0())
        .enqueue_batch(a, &vec![job("q"); 100])
        .await
        .unwrap();
    let late = store.at(at(1)).enqueue(b, &job("q")).await.unwrap().id;
    let first = store.at(at(2)).claim(platform, 100, LEASE).await.unwrap();
    assert!(first.iter().all(|c| c.tenant_id == a));
    let next = store.at(at(2)).claim(platform, 1, LEASE).await.unwrap();
    assert_eq!(next[0].id, late);
}

fn off() -> StoreOptions {
    StoreOptions {
        fair_share_turn: Duration::ZERO,
        ..StoreOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_off_is_first_come_first_served() {
    let store = homeostat_testkit::sqlite_with(off()).await;
    off_is_first_come_first_served(&store).await;
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_off_is_first_come_first_served() {
    let Some(store) = homeostat_testkit::postgres_with(off()).await else {
        return;
    };
    off_is_first_come_first_served(&store).await;
    store.cleanup().await;
}
