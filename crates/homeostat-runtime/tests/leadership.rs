//! Leadership across managers sharing one lease store, and shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use homeostat_runtime::{
    Clock, InMemoryLeaseStore, Manager, ManagerBuilder, Outcome, Reconciled, TokioClock,
};
use prometheus_client::registry::Registry;

const S: Duration = Duration::from_secs(1);
const TTL: Duration = Duration::from_secs(15);

fn replica(
    clock: &TokioClock,
    store: &Arc<InMemoryLeaseStore>,
    holder: &str,
    registry: &mut Registry,
) -> ManagerBuilder {
    Manager::builder()
        .clock(Arc::new(*clock))
        .lease_store(Arc::clone(store))
        .lease_ttl(TTL)
        .holder(holder)
        .metrics(registry)
}

fn shared_store(clock: &TokioClock) -> Arc<InMemoryLeaseStore> {
    Arc::new(InMemoryLeaseStore::new(Arc::new(*clock)))
}

/// Two replicas "a" and "b" on one lease store, each with a "sweeper"
/// replica ticking every 5 s.
struct Pair {
    store: Arc<InMemoryLeaseStore>,
    a: Manager,
    b: Manager,
    ra: Registry,
    rb: Registry,
    probe: Arc<Probe>,
}

fn two_sweepers() -> Pair {
    let clock = TokioClock::at_test_epoch();
    let store = shared_store(&clock);
    let (mut ra, mut rb) = (Registry::default(), Registry::default());
    let (ctl, probe) = TestController::quick("sweeper", 5 * S);
    let other = ctl.replica();
    let a = start(replica(&clock, &store, "a", &mut ra), vec![(ctl, exact())]);
    let b = start(
        replica(&clock, &store, "b", &mut rb),
        vec![(other, exact())],
    );
    Pair {
        store,
        a,
        b,
        ra,
        rb,
        probe,
    }
}

/// Controllers that took their leases together do not renew them together:
/// each renewal falls at a random point of the quarter before a third of
/// the TTL, so a manager's renewals reach the store spread out, not as one
/// burst for as long as they lead.
#[tokio::test(start_paused = true)]
async fn leases_taken_together_are_not_renewed_together() {
    let clock = TokioClock::at_test_epoch();
    let store = shared_store(&clock);
    let mut registry = Registry::default();
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let controllers = names
        .iter()
        .map(|name| (TestController::quick(name, 5 * S).0, exact()))
        .collect();
    let manager = start(replica(&clock, &store, "a", &mut registry), controllers);
    // Every lease is taken at the same instant of the paused clock, then
    // renewed several times.
    tokio::time::sleep(2 * TTL).await;
    let expiries: std::collections::BTreeSet<std::time::SystemTime> = names
        .iter()
        .map(|name| store.current(name).expect("held").expires_at)
        .collect();
    assert!(
        expiries.len() > names.len() / 2,
        "the leases are renewed in step: {expiries:?}"
    );
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn only_one_replica_runs_and_the_other_counts_not_leader() {
    let Pair {
        store,
        a,
        b,
        ra,
        rb,
        probe,
        ..
    } = two_sweepers();
    tokio::time::sleep(Duration::from_millis(60_500)).await;

    // 13 runs in 60 s (0, 5, ..., 60), all by one holder with one epoch: the
    // leader renews between runs even though the interval is shorter than
    // the TTL.
    assert_eq!(probe.count(), 13);
    let epochs: Vec<_> = probe.runs().iter().map(|r| r.epoch).collect();
    assert!(epochs.iter().all(|e| *e == Some(1)), "{epochs:?}");
    let holder = store.current("sweeper").unwrap().holder;
    let (leader, follower, lr, fr) = if holder == "a" {
        (&a, &b, &ra, &rb)
    } else {
        (&b, &a, &rb, &ra)
    };
    assert!(leader.controller_status("sweeper").unwrap().leader);
    assert!(!follower.controller_status("sweeper").unwrap().leader);
    assert_eq!(outcomes(lr, "sweeper", "success"), 13.0);
    assert_eq!(outcomes(fr, "sweeper", "success"), 0.0);
    assert_eq!(outcomes(fr, "sweeper", "not_leader"), 13.0);
    assert_eq!(
        follower.controller_status("sweeper").unwrap().last_run,
        None,
        "a follower has no runs to report"
    );
    a.shutdown(S).await;
    b.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn a_follower_shows_the_runs_its_leader_published() {
    let Pair {
        store, a, b, probe, ..
    } = two_sweepers();
    tokio::time::sleep(Duration::from_millis(20_500)).await;

    let holder = store.current("sweeper").unwrap().holder;
    let (leader, follower) = if holder == "a" { (&a, &b) } else { (&b, &a) };
    let led = leader.cluster_status().await.remove(0);
    let seen = follower.cluster_status().await.remove(0);
    assert!(
        led.leader && !seen.leader,
        "each keeps its own view of who leads"
    );
    let last = seen.last_run.clone().expect("the leader's last run");
    assert_eq!(last.outcome, Outcome::Success);
    assert_eq!(last.started_at, probe.runs().last().unwrap().started_at);
    assert_eq!(seen.last_run, led.last_run);
    assert_eq!(seen.next_run, led.next_run);
    assert_eq!(seen.last_success_at, led.last_success_at);
    assert!(seen.next_run.unwrap() > last.started_at);
    assert_eq!(
        follower.controller_status("sweeper").unwrap().last_run,
        None,
        "the follower's own status still has no runs"
    );
    a.shutdown(S).await;
    b.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_cancels_the_in_flight_run() {
    let clock = TokioClock::at_test_epoch();
    let store = shared_store(&clock);
    let mut registry = Registry::default();
    let (stuck, probe) = TestController::stuck("holder-bound", 60 * S);
    let manager = start(
        replica(&clock, &store, "a", &mut registry),
        vec![(stuck, exact().timeout(50 * S))],
    );
    wait_until("the run started", S, || probe.count() == 1).await;
    store.revoke("holder-bound");

    // The next renewal (a third of the TTL after acquiring) finds the lease
    // gone.
    wait_until("the run was cancelled", TTL / 3 + S, || probe.active() == 0).await;
    assert!(probe.runs()[0].ctx.is_cancelled());
    let status = manager.controller_status("holder-bound").unwrap();
    assert!(!status.leader);
    let last = status.last_run.unwrap();
    assert_eq!(last.outcome, Outcome::NotLeader);
    assert!(last.error.unwrap().contains("leadership lost"));
    assert_eq!(outcomes(&registry, "holder-bound", "not_leader"), 1.0);
    assert_eq!(
        status.consecutive_failures, 0,
        "losing the lease is not a failure"
    );
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_stops_before_its_lease_expires() {
    // The store's clock and the manager's clock are the same, so this shows
    // the local deadline (two thirds of the TTL) fires before the store would
    // hand the lease to anyone else.
    let clock = TokioClock::at_test_epoch();
    let store = Arc::new(SlowLeases::new(shared_store(&clock)));
    let (stuck, probe) = TestController::stuck("cut-off", 60 * S);
    let mut builder = Manager::builder()
        .clock(Arc::new(clock))
        .lease_store(Arc::clone(&store))
        .lease_ttl(TTL)
        .holder("a");
    builder.register(stuck, exact().timeout(50 * S)).unwrap();
    let manager = builder.start().unwrap();
    wait_until("the run started", S, || probe.count() == 1).await;
    let acquired = clock.now();
    store.hang_renewals();

    wait_until("the run was cancelled", TTL, || probe.active() == 0).await;
    let stopped = clock.now();
    assert!(
        secs(acquired, stopped) <= 10.0,
        "stopped {}s after acquiring, past two thirds of the TTL",
        secs(acquired, stopped)
    );
    assert!(
        store.inner.current("cut-off").is_some(),
        "store lease still live"
    );
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_runs_at_the_deadline_and_releases_leases() {
    let clock = TokioClock::at_test_epoch();
    let store = shared_store(&clock);
    let mut registry = Registry::default();
    let (stuck, sp) = TestController::stuck("stuck", 60 * S);
    let (finishing, fp) = TestController::slow("finishing", 60 * S, 2 * S);
    let (idle, _) = TestController::quick("idle", 60 * S);
    let manager = start(
        replica(&clock, &store, "a", &mut registry),
        vec![
            (stuck, exact().timeout(50 * S)),
            (finishing, exact()),
            (idle, exact()),
        ],
    );
    wait_until("both long runs started", S, || {
        sp.count() == 1 && fp.count() == 1
    })
    .await;
    assert!(store.current("idle").is_some());

    let begun = clock.now();
    let report = manager.shutdown(5 * S).await;
    assert_eq!(
        secs(begun, clock.now()),
        5.0,
        "waited exactly until the deadline"
    );
    assert_eq!(report.timed_out, vec!["stuck"]);
    assert_eq!(report.stopped, vec!["finishing", "idle"]);
    assert!(sp.runs()[0].ctx.is_cancelled());
    assert_eq!(sp.active(), 0);
    for name in ["stuck", "finishing", "idle"] {
        assert_eq!(store.current(name), None, "{name}'s lease must be released");
    }
    let statuses = manager.status();
    assert_eq!(
        statuses[0].last_run.as_ref().unwrap().outcome,
        Outcome::Timeout
    );
    assert_eq!(
        statuses[1].last_run.as_ref().unwrap().outcome,
        Outcome::Success
    );
    assert_eq!(fp.count(), 1, "no new run after shutdown began");
    assert_eq!(manager.shutdown(S).await, Default::default());
}

#[tokio::test(start_paused = true)]
async fn a_stopped_leader_is_replaced_within_ttl_plus_one_interval() {
    let clock = TokioClock::at_test_epoch();
    let store = shared_store(&clock);
    let interval = 10 * S;
    let (ctl, probe) = TestController::quick("failover", interval);
    let other = ctl.replica();
    let third = ctl.replica();
    let a = start(
        replica(&clock, &store, "a", &mut Registry::default()),
        vec![(ctl, exact())],
    );
    wait_until("a leads", S, || probe.count() == 1).await;
    let b = start(
        replica(&clock, &store, "b", &mut Registry::default()),
        vec![(other, exact())],
    );
    tokio::time::sleep(25 * S).await;
    assert!(probe.runs().iter().all(|r| r.epoch == Some(1)));

    // Crash: no release, so b must wait for the lease to expire.
    let crashed = clock.now();
    drop(a);
    wait_until("b took over", TTL + interval + S, || {
        probe.runs().last().unwrap().epoch == Some(2)
    })
    .await;
    let took_over = probe.runs().last().unwrap().started_at;
    assert!(secs(crashed, took_over) <= (TTL + interval).as_secs_f64());
    assert_eq!(store.current("failover").unwrap().holder, "b");

    // Graceful stop: the lease is released, so c takes over on its next tick.
    let c = start(
        replica(&clock, &store, "c", &mut Registry::default()),
        vec![(third, exact())],
    );
    tokio::time::sleep(3 * S).await;
    let stopped = clock.now();
    b.shutdown(S).await;
    wait_until("c took over", interval + S, || {
        probe.runs().last().unwrap().epoch == Some(3)
    })
    .await;
    let took_over = probe.runs().last().unwrap().started_at;
    assert!(secs(stopped, took_over) <= interval.as_secs_f64());
    assert_eq!(probe.max_active(), 1);
    c.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn non_exclusive_controllers_run_on_every_replica_without_a_lease() {
    let clock = TokioClock::at_test_epoch();
    let store = shared_store(&clock);
    let (ctl, probe) = TestController::new("local-cache", 10 * S, |ctx, _| async move {
        assert_eq!(ctx.fence(), None);
        Ok(Reconciled::nothing())
    });
    let other = ctl.replica();
    let a = start(
        replica(&clock, &store, "a", &mut Registry::default()),
        vec![(ctl, exact().exclusive(false))],
    );
    let b = start(
        replica(&clock, &store, "b", &mut Registry::default()),
        vec![(other, exact().exclusive(false))],
    );
    tokio::time::sleep(Duration::from_millis(20_500)).await;
    assert_eq!(probe.count(), 6, "three runs on each replica");
    assert_eq!(store.current("local-cache"), None);
    assert!(a.controller_status("local-cache").unwrap().leader);
    a.shutdown(S).await;
    b.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_not_held_up_by_a_hanging_renewal() {
    let clock = TokioClock::at_test_epoch();
    let store = Arc::new(SlowLeases::new(shared_store(&clock)));
    let (quick, _) = TestController::quick("steady", 60 * S);
    let mut builder = Manager::builder()
        .clock(Arc::new(clock))
        .lease_store(Arc::clone(&store))
        .lease_ttl(TTL)
        .holder("a");
    builder.register(quick, exact()).unwrap();
    let manager = builder.start().unwrap();
    wait_until("leading", S, || store.inner.current("steady").is_some()).await;
    store.hang_renewals();
    // Let the renewal (due a third of the TTL after acquiring) start hanging.
    tokio::time::sleep(TTL / 3 + S).await;
    let begun = clock.now();
    let report = manager.shutdown(S).await;
    assert_eq!(report.stopped, vec!["steady"]);
    assert!(
        secs(begun, clock.now()) < 1.0,
        "shutdown waited {}s for the renewal",
        secs(begun, clock.now())
    );
    assert_eq!(store.inner.current("steady"), None, "released for a peer");
}

#[tokio::test(start_paused = true)]
async fn a_run_holding_what_the_renewal_needs_goes_on_and_the_leader_stays() {
    // The store has one connection, as SQLite's writer is: the run holds it
    // from before the renewal is due (a third of the TTL, 5 s) until 8 s.
    // The renewal waits for it, and the run must go on meanwhile: left
    // unpolled, it held the connection until the lease ran out (10 s), and
    // the leader stepped down with nothing wrong with its store.
    let clock = TokioClock::at_test_epoch();
    let store = Arc::new(SlowLeases::new(shared_store(&clock)));
    let connection = Arc::clone(&store.connection);
    let (holding, probe) = TestController::new("holding", 60 * S, move |_, _| {
        let connection = Arc::clone(&connection);
        async move {
            let _held = connection.lock().await;
            tokio::time::sleep(8 * S).await;
            Ok(Reconciled::items(1))
        }
    });
    let mut registry = Registry::default();
    let mut builder = Manager::builder()
        .clock(Arc::new(clock))
        .lease_store(Arc::clone(&store))
        .lease_ttl(TTL)
        .holder("a")
        .metrics(&mut registry);
    builder.register(holding, exact()).unwrap();
    let manager = builder.start().unwrap();
    wait_until("the run started", S, || probe.count() == 1).await;
    let acquired = clock.now();

    // Past the lease's local deadline, two thirds of the TTL.
    tokio::time::sleep(TTL * 2 / 3 + S).await;
    let status = manager.controller_status("holding").unwrap();
    assert!(status.leader, "the leader stepped down");
    let last = status.last_run.expect("the run was settled");
    assert_eq!(last.outcome, Outcome::Success, "{last:?}");
    assert!(!probe.runs()[0].ctx.is_cancelled());
    assert_eq!(outcomes(&registry, "holding", "not_leader"), 0.0);
    let lease = store.inner.current("holding").unwrap();
    assert_eq!((lease.holder.as_str(), lease.epoch), ("a", 1));
    // Renewed when the run let the connection go, 8 s after acquiring.
    let expires = secs(acquired, lease.expires_at);
    assert!(
        expires >= 8.0 + TTL.as_secs_f64(),
        "expires {expires}s after acquiring"
    );
    manager.shutdown(S).await;
}

/// A lease store whose renewals can be made to hang, as a partitioned
/// database would, and whose calls wait for its one connection.
struct SlowLeases {
    inner: Arc<InMemoryLeaseStore>,
    hang: std::sync::atomic::AtomicBool,
    /// What every call waits for, as SQLite's one write connection.
    connection: Arc<tokio::sync::Mutex<()>>,
}

impl SlowLeases {
    fn new(inner: Arc<InMemoryLeaseStore>) -> Self {
        Self {
            inner,
            hang: Default::default(),
            connection: Arc::default(),
        }
    }
    fn hang_renewals(&self) {
        self.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl homeostat_runtime::LeaseStore for SlowLeases {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<homeostat_runtime::Lease>, homeostat_runtime::LeaseError> {
        let _connection = self.connection.lock().await;
        homeostat_runtime::LeaseStore::acquire(&*self.inner, name, holder, ttl).await
    }

    async fn renew(
        &self,
        lease: &homeostat_runtime::Lease,
        ttl: Duration,
    ) -> Result<Option<homeostat_runtime::Lease>, homeostat_runtime::LeaseError> {
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let _connection = self.connection.lock().await;
        homeostat_runtime::LeaseStore::renew(&*self.inner, lease, ttl).await
    }

    async fn release(
        &self,
        lease: &homeostat_runtime::Lease,
    ) -> Result<(), homeostat_runtime::LeaseError> {
        let _connection = self.connection.lock().await;
        homeostat_runtime::LeaseStore::release(&*self.inner, lease).await
    }

    async fn publish(
        &self,
        lease: &homeostat_runtime::Lease,
        status: &homeostat_runtime::ControllerStatus,
    ) -> Result<(), homeostat_runtime::LeaseError> {
        let _connection = self.connection.lock().await;
        homeostat_runtime::LeaseStore::publish(&*self.inner, lease, status).await
    }
}
