//! One clock across replicas: on PostgreSQL the decisions that compare
//! times written by different replicas are judged by the database's clock,
//! not by the clock of the replica that happens to run the sweep.

use homeostat_testkit as backends;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use homeostat_model::{NewAgent, NewJob, PlanTier};
use homeostat_runtime::{BoxFuture, Clock, ManualClock, SystemClock};
use homeostat_store::{NewBootstrapToken, Store, StoreClock};

/// A replica's wall clock that runs `ahead` of everyone else's.
#[derive(Debug)]
struct Ahead(Duration);

impl Clock for Ahead {
    fn now(&self) -> SystemTime {
        SystemTime::now() + self.0
    }

    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'static, ()> {
        SystemClock.sleep_until(deadline - self.0)
    }
}

const SKEW: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(20);
const STALE: Duration = Duration::from_secs(20);

/// A running job with a live 20 s lease, and its agent just heartbeated,
/// both written by a replica whose clock is right.
async fn live_job_and_agent(store: &Store) {
    let tenant = store
        .create_tenant("acme", PlanTier::Standard, "operator:test")
        .await
        .unwrap();
    let token = NewBootstrapToken {
        tenant_id: Some(tenant.id),
        ttl: Duration::from_secs(3600),
        uses: 1,
    };
    let token = store
        .issue_bootstrap_token(&token, "operator:test")
        .await
        .unwrap();
    let agent = NewAgent {
        name: "worker".into(),
        labels: Default::default(),
        queues: vec!["q".into()],
    };
    let (agent, _) = store.register_agent(&token.secret, &agent).await.unwrap();
    store
        .enqueue(tenant.id, &NewJob::new("q", "build"))
        .await
        .unwrap();
    assert_eq!(store.claim(agent.id, 1, LEASE).await.unwrap().len(), 1);
    assert_eq!(store.heartbeat_agents(&[agent.id]).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_ahead_requeues_no_live_lease_and_offlines_no_live_agent() {
    let Some(test) = backends::postgres().await else {
        return;
    };
    let right = test
        .replica_on(StoreClock::system())
        .await
        .expect("PostgreSQL");
    live_job_and_agent(&right).await;

    let ahead = test
        .replica_on(StoreClock::replica(Arc::new(Ahead(SKEW))))
        .await
        .expect("PostgreSQL");
    let requeued = ahead.requeue_expired_leases(100, None, None).await.unwrap();
    assert_eq!(
        requeued.changed, 0,
        "a live lease was requeued: {requeued:?}"
    );
    let timed_out = ahead.time_out_running(100, None).await.unwrap();
    assert_eq!(timed_out.changed, 0);
    let offline = ahead
        .mark_silent_agents_offline(STALE, 100, None)
        .await
        .unwrap();
    assert!(offline.is_empty(), "a heartbeating agent went offline");

    // The same sweeps judged by a clock 30 s ahead act on both: what the
    // database's clock prevents above.
    let judged_ahead = ManualClock::new(SystemTime::now() + SKEW);
    let misjudging = test
        .replica_on(StoreClock::manual(judged_ahead))
        .await
        .expect("PostgreSQL");
    assert_eq!(
        misjudging
            .mark_silent_agents_offline(STALE, 100, None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        misjudging
            .requeue_expired_leases(100, None, None)
            .await
            .unwrap()
            .changed,
        1
    );
    for store in [right, ahead, misjudging] {
        store.close().await;
    }
    test.cleanup().await;
}
