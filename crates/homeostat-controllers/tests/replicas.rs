//! Three replicas (three managers, each with its own connection pool) on one
//! PostgreSQL: an exclusive controller runs on exactly one at a time, a
//! stopped or crashed leader is replaced in time, and a leader frozen past
//! its lease has its writes refused when it wakes. Takeover is timed from
//! the moment the lease row says the lease became free (the database's
//! clock) to the new leader's first run; wall clocks only guard hangs.

use homeostat_testkit::{self as backends, At};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use homeostat_model::{NewJob, PlanTier};
use homeostat_runtime::{
    BoxError, Context, Controller, ControllerOptions, Fence, LeaseStore, Manager, Reconciled,
};
use homeostat_store::{Store, StoreError};

const TTL: Duration = Duration::from_secs(3);
const INTERVAL: Duration = Duration::from_millis(200);
/// Real databases and a shared 2-core machine: room for latency and
/// scheduling on top of the bounds (which the runtime's simulations check
/// exactly).
const SLACK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Run {
    replica: usize,
    epoch: u64,
    start: Instant,
    end: Instant,
    /// When the run began, on the replica's clock as the runtime stamps runs.
    started: SystemTime,
}

/// Records each run and makes a fenced write, taking a little time.
struct Probe {
    replica: usize,
    store: Store,
    runs: Arc<Mutex<Vec<Run>>>,
}

impl Controller for Probe {
    fn name(&self) -> &str {
        "exclusive-probe"
    }
    fn interval(&self) -> Duration {
        INTERVAL
    }
    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let (start, started) = (Instant::now(), SystemTime::now());
        let now = jiff::Timestamp::now();
        let changed = self
            .store
            .at(now)
            .promote_scheduled(100, ctx.fence())
            .await?
            .changed;
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.runs.lock().unwrap().push(Run {
            replica: self.replica,
            epoch: ctx.epoch().expect("exclusive runs carry an epoch"),
            start,
            end: Instant::now(),
            started,
        });
        Ok(Reconciled::items(changed))
    }
}

async fn replica(store: Store, index: usize, runs: &Arc<Mutex<Vec<Run>>>) -> Manager {
    let mut builder = Manager::builder()
        .lease_store(Arc::new(store.clone()))
        .lease_ttl(TTL)
        .holder(format!("replica-{index}"));
    builder
        .register(
            Probe {
                replica: index,
                store,
                runs: Arc::clone(runs),
            },
            ControllerOptions::default().jitter(0.0),
        )
        .unwrap();
    builder.start().unwrap()
}

fn leader(store_runs: &[Run]) -> usize {
    store_runs.last().expect("somebody ran").replica
}

async fn wait_for_new_epoch(runs: &Arc<Mutex<Vec<Run>>>, after: u64, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(run) = runs
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.epoch > after)
            .cloned()
        {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader within {limit:?}: {:?}",
            runs.lock()
                .unwrap()
                .iter()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The probe's lease as the database has it: its epoch, and when it is (or
/// became) free, in Unix milliseconds.
async fn lease_row(db: &backends::TestStore) -> (u64, i64) {
    let pool = backends::pg_pool(&backends::pg_url().unwrap(), db.schema().unwrap(), 1).await;
    let (epoch, expires_at): (i64, i64) =
        sqlx::query_as("SELECT epoch, expires_at FROM leases WHERE name = 'exclusive-probe'")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    (u64::try_from(epoch).unwrap(), expires_at)
}

/// How long after `free_at_ms` (the database's clock) `run` began; a run
/// before the lease was free fails the test.
fn after_free(run: &Run, free_at_ms: i64) -> Duration {
    let started = i64::try_from(
        run.started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    assert!(
        started >= free_at_ms,
        "replica {} ran {} ms before the lease was free",
        run.replica,
        free_at_ms - started
    );
    Duration::from_millis(u64::try_from(started - free_at_ms).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_leader_and_fail_over_in_time() {
    let Some(db) = backends::postgres().await else {
        return;
    };
    let runs = Arc::new(Mutex::new(Vec::new()));
    let mut managers = Vec::new();
    for i in 0..3 {
        let store = db.replica().await.unwrap();
        managers.push(Some(replica(store, i, &runs).await));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Graceful stop: the lease is released, a peer takes over at its next tick.
    let first = leader(&runs.lock().unwrap());
    let epoch = runs.lock().unwrap().last().unwrap().epoch;
    managers[first]
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
    // Released: the row says free from the release's moment.
    let (row_epoch, released_at) = lease_row(&db).await;
    let next = wait_for_new_epoch(&runs, epoch, Duration::from_secs(30)).await;
    assert_ne!(next.replica, first);
    if row_epoch == epoch {
        let waited = after_free(&next, released_at);
        assert!(waited <= INTERVAL + SLACK, "took over {waited:?} after");
    }

    // Crash: nothing released; a peer takes over once the lease expires.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = leader(&runs.lock().unwrap());
    let epoch = runs.lock().unwrap().last().unwrap().epoch;
    drop(managers[second].take());
    // Nothing released: free when its last renewal runs out.
    let (row_epoch, expires_at) = lease_row(&db).await;
    assert_eq!(row_epoch, epoch, "taken over before its lease ran out");
    let next = wait_for_new_epoch(&runs, epoch, Duration::from_secs(60)).await;
    assert!(next.replica != first && next.replica != second);
    let waited = after_free(&next, expires_at);
    assert!(waited <= INTERVAL + SLACK, "took over {waited:?} after");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in managers.into_iter().flatten() {
        m.shutdown(Duration::from_secs(5)).await;
    }

    // Exactly one replica ran it at any time, and epochs only grow.
    let mut runs = runs.lock().unwrap().clone();
    runs.sort_by_key(|r| r.start);
    assert!(runs.len() > 10, "{} runs", runs.len());
    for pair in runs.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "replicas {} and {} overlapped",
            pair[0].replica,
            pair[1].replica
        );
        assert!(pair[0].epoch <= pair[1].epoch);
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_has_its_writes_refused() {
    let Some(db) = backends::postgres().await else {
        return;
    };
    let store = db.store.clone();
    let tenant = store
        .at(jiff::Timestamp::now())
        .create_tenant("acme", PlanTier::Free, "operator:test")
        .await
        .unwrap();
    let mut job = NewJob::new("q", "k");
    job.run_at = Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1));
    let id = store
        .at(jiff::Timestamp::now())
        .enqueue(tenant.id, &job)
        .await
        .unwrap()
        .id;
    // Replica a leads, then freezes (stops renewing) past its lease...
    let a = store
        .acquire("job-scheduler", "replica-a", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    let frozen = Fence {
        name: "job-scheduler".into(),
        epoch: a.epoch,
    };
    let other = db.replica().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let b = loop {
        if let Some(lease) = other
            .acquire("job-scheduler", "replica-b", Duration::from_secs(60))
            .await
            .unwrap()
        {
            break lease;
        }
        assert!(Instant::now() < deadline, "replica b never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(b.epoch > a.epoch);
    // ...and wakes up to write with its old epoch: refused, nothing changed.
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(5);
    let err = store
        .at(later)
        .promote_scheduled(100, Some(&frozen))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert_eq!(
        store.get_job(id).await.unwrap().state,
        homeostat_model::JobState::Scheduled
    );
    db.cleanup().await;
}
