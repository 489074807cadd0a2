//! A lease's renewal waits, on a real database, for what a controller's run
//! holds: SQLite's write lock, or on PostgreSQL the lock a fence takes on
//! the lease's row. The run must go on meanwhile, and the leader keep its
//! lease: paused while the manager awaited the renewal, the run held the
//! lock until the lease ran out, and every controller whose run held it
//! stepped down from a healthy store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use homeostat_runtime::{
    BoxError, Context, Controller, ControllerOptions, Manager, Outcome, Reconciled,
};
use homeostat_testkit::{self as backends, TestStore};
use sqlx::Connection;

const NAME: &str = "holding-the-lock";

/// A third of the TTL after acquiring (2 s) the lease is renewed; the
/// leader steps down if that is unanswered at two thirds (4 s). The run
/// holds the lock until half the TTL (3 s).
const TTL: Duration = Duration::from_secs(6);

/// What the run locks.
#[derive(Clone)]
enum Lock {
    /// The database's write lock, from a connection of its own.
    Sqlite { url: String },
    /// The lease's row, as a fence does (`FOR SHARE`).
    Postgres { url: String, schema: String },
}

/// A controller whose run holds `lock` for `hold`.
struct HoldingTheLock {
    lock: Lock,
    hold: Duration,
    runs: Arc<AtomicU32>,
}

impl Controller for HoldingTheLock {
    fn name(&self) -> &str {
        NAME
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(600)
    }

    async fn reconcile(&self, _ctx: Context) -> Result<Reconciled, BoxError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        match &self.lock {
            Lock::Sqlite { url } => {
                let mut other = sqlx::SqliteConnection::connect(url).await?;
                sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await?;
                tokio::time::sleep(self.hold).await;
                sqlx::query("ROLLBACK").execute(&mut other).await?;
            }
            Lock::Postgres { url, schema } => {
                let mut other =
                    sqlx::PgConnection::connect_with(&backends::pg_connect(url, schema)).await?;
                let mut tx = other.begin().await?;
                let locked = sqlx::query("SELECT 1 FROM leases WHERE name = $1 FOR SHARE")
                    .bind(NAME)
                    .fetch_all(&mut *tx)
                    .await?;
                assert_eq!(locked.len(), 1, "the lease's row");
                tokio::time::sleep(self.hold).await;
                tx.rollback().await?;
            }
        }
        Ok(Reconciled::items(1))
    }
}

async fn a_run_that_holds_the_lock_over_its_renewal_keeps_the_lease(test: TestStore, lock: Lock) {
    let runs = Arc::default();
    let mut builder = Manager::builder()
        .lease_store(Arc::new(test.store.clone()))
        .lease_ttl(TTL)
        .holder("replica-a");
    let controller = HoldingTheLock {
        lock,
        hold: TTL / 2,
        runs: Arc::clone(&runs),
    };
    builder
        .register(controller, ControllerOptions::default().jitter(0.0))
        .unwrap();
    let manager = builder.start().unwrap();

    // Until the run has ended and been settled; a hang is cut by the limit.
    let limit = Instant::now() + TTL * 3;
    let status = loop {
        let status = manager.controller_status(NAME).unwrap();
        if status.last_run.is_some() {
            break status;
        }
        assert!(Instant::now() < limit, "the run never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last = status.last_run.unwrap();
    assert_eq!(last.outcome, Outcome::Success, "{last:?}");
    assert!(status.leader, "the leader stepped down");
    let holders = test.lease_holders().await.unwrap();
    assert_eq!(holders.get(NAME).map(String::as_str), Some("replica-a"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    manager.shutdown(Duration::from_secs(1)).await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_run_that_holds_the_write_lock_over_its_renewal_keeps_the_lease() {
    let test = backends::sqlite().await;
    let url = format!("sqlite:{}", test.path().unwrap().display());
    a_run_that_holds_the_lock_over_its_renewal_keeps_the_lease(test, Lock::Sqlite { url }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_run_that_locks_its_lease_row_over_its_renewal_keeps_the_lease() {
    let Some(test) = backends::postgres().await else {
        return;
    };
    let url = backends::pg_url().unwrap();
    let schema = test.schema().unwrap().to_owned();
    a_run_that_holds_the_lock_over_its_renewal_keeps_the_lease(
        test,
        Lock::Postgres { url, schema },
    )
    .await;
}
