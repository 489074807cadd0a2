//! periodic-jobs on both backends: one job per slot across replicas, one
//! catch-up after downtime, time zones, bad schedules named.

use homeostat_testkit::{self as backends, At, on_both_backends};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use homeostat_controllers::{PeriodicJobs, PeriodicSchedule, Settings};
use homeostat_model::{NewJob, PlanTier, TenantId};
use homeostat_runtime::{Action, CancellationToken, Context, ManualClock, Reconciler};
use homeostat_store::{JobFilter, Store};
use jiff::Timestamp;

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn schedule(name: &str, cron: &str, tz: &str, tenant: TenantId) -> PeriodicSchedule {
    PeriodicSchedule {
        name: name.into(),
        cron: cron.into(),
        timezone: tz.into(),
        tenant_id: tenant,
        job: NewJob::new("reports", name),
    }
}

fn controller(store: &Store, schedules: Vec<PeriodicSchedule>) -> PeriodicJobs {
    PeriodicJobs::new(
        store.clone(),
        Settings::every(Duration::from_secs(1), 0),
        schedules,
    )
    .unwrap()
}

/// Reconciles every schedule of `c` at `at`, as a resync would: when each
/// asks to come back.
async fn run(c: &PeriodicJobs, at: &str) -> Vec<Action> {
    let ctx = Context::detached(
        Reconciler::name(c),
        Arc::new(ManualClock::new(SystemTime::from(ts(at)))),
        CancellationToken::new(),
        None,
    );
    let mut actions = Vec::new();
    for key in c.keys(&ctx).await.unwrap() {
        actions.push(c.reconcile(key, ctx.clone()).await.unwrap());
    }
    actions
}

fn after(secs: u64) -> Vec<Action> {
    vec![Action::RequeueAfter(Duration::from_secs(secs))]
}

async fn jobs(store: &Store, tenant: TenantId) -> Vec<homeostat_model::Job> {
    let filter = JobFilter {
        tenant_id: Some(tenant),
        ..JobFilter::default()
    };
    store.list_jobs(&filter, None, 100).await.unwrap().items
}

async fn one_job_per_slot_across_replicas(store: &Store) {
    let t = store
        .at(ts("2026-01-01T00:00:00Z"))
        .create_tenant("acme", PlanTier::Free, "operator:test")
        .await
        .unwrap()
        .id;
    let every5 = vec![schedule("digest", "*/5 * * * *", "UTC", t)];
    let a = controller(store, every5.clone());
    let b = controller(store, every5);
    let count = || async { jobs(store, t).await.len() };
    // Two replicas look at the same moment: one slot, one job; each comes
    // back at the next slot.
    let (x, y) = tokio::join!(
        run(&a, "2026-01-01T00:07:00Z"),
        run(&b, "2026-01-01T00:07:00Z")
    );
    assert_eq!(count().await, 1);
    assert_eq!((x, y), (after(180), after(180)));
    assert_eq!(run(&a, "2026-01-01T00:08:00Z").await, after(120));
    assert_eq!(count().await, 1, "same slot");
    run(&b, "2026-01-01T00:10:00Z").await;
    assert_eq!(count().await, 2, "next slot");
    run(&a, "2026-01-01T00:10:30Z").await;
    assert_eq!(count().await, 2);
    // Down for an hour: one catch-up for the latest slot, not twelve.
    assert_eq!(run(&a, "2026-01-01T01:03:00Z").await, after(120));
    assert_eq!(count().await, 3);
    run(&a, "2026-01-01T01:04:00Z").await;
    let all = jobs(store, t).await;
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|j| j.kind == "digest"));
    let audit = store.audit_events(0, 100).await.unwrap();
    assert_eq!(
        audit.iter().filter(|e| e.action == "jobs.periodic").count(),
        3
    );
}

async fn schedules_follow_their_time_zone(store: &Store) {
    let t = store
        .at(ts("2026-01-01T00:00:00Z"))
        .create_tenant("acme", PlanTier::Free, "operator:test")
        .await
        .unwrap()
        .id;
    let c = controller(
        store,
        vec![schedule("morning", "0 9 * * *", "Europe/Paris", t)],
    );
    // 09:00 in Paris in January is 08:00 UTC: at 07:59 UTC, yesterday's
    // slot is enqueued once and the next is a minute away.
    assert_eq!(run(&c, "2026-01-10T07:59:00Z").await, after(60));
    assert_eq!(jobs(store, t).await.len(), 1);
    run(&c, "2026-01-10T07:59:30Z").await;
    assert_eq!(jobs(store, t).await.len(), 1);
    assert_eq!(run(&c, "2026-01-10T08:00:00Z").await, after(86_400));
    run(&c, "2026-01-10T12:00:00Z").await;
    assert_eq!(jobs(store, t).await.len(), 2);
}

on_both_backends!(
    one_job_per_slot_across_replicas,
    schedules_follow_their_time_zone
);

#[tokio::test]
async fn bad_schedules_are_refused_by_name() {
    let store = backends::sqlite().await;
    let t = TenantId::from(uuid::Uuid::now_v7());
    let err = PeriodicJobs::new(
        store.store.clone(),
        Settings::every(Duration::from_secs(1), 0),
        vec![schedule("nightly", "61 * * * *", "UTC", t)],
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("periodic schedule \"nightly\": cron pattern"),
        "{err}"
    );
    let err = PeriodicJobs::new(
        store.store.clone(),
        Settings::every(Duration::from_secs(1), 0),
        vec![schedule("nightly", "0 0 * * *", "Mars/Olympus", t)],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("time zone \"Mars/Olympus\""),
        "{err}"
    );
    store.cleanup().await;
}
