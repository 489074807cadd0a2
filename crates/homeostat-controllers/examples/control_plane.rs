//! The built-in controllers and a custom one on one manager, over an
//! embedded SQLite store: a job enqueued to run a second from now is
//! promoted by job-scheduler when its time comes; a custom controller
//! reports each queue's backlog from the store's statistics.
//!
//! Run it with `cargo run -p homeostat-controllers --example control_plane`
//! (`RUST_LOG=debug` shows every run).

use std::sync::Arc;
use std::time::Duration;

use homeostat_controllers::{ControllersConfig, Notifier, register_builtin};
use homeostat_model::{JobState, NewJob, PlanTier};
use homeostat_runtime::{BoxError, Context, Controller, ControllerOptions, Manager, Reconciled};
use homeostat_store::{Store, StoreOptions};

/// A custom controller: logs each queue's backlog and its oldest job's wait.
struct BacklogReport {
    store: Store,
}

impl Controller for BacklogReport {
    fn name(&self) -> &str {
        "backlog-report"
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn reconcile(&self, _ctx: Context) -> Result<Reconciled, BoxError> {
        let stats = self.store.stats().await?;
        let now = self.store.now();
        for q in &stats.queues {
            let waited = now.duration_since(q.oldest_queued_at);
            println!(
                "backlog: {} queued on {:?}, the oldest for {:.1} s",
                q.queued,
                q.queue,
                waited.as_secs_f64()
            );
        }
        Ok(Reconciled::items(stats.queues.len() as u64))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let dir = std::env::temp_dir().join(format!("homeostat-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite:{}", dir.join("homeostat.db").display());
    let store = Store::connect(&url, StoreOptions::default()).await?;

    let tenant = store
        .create_tenant("acme", PlanTier::Standard, "operator:example")
        .await?;
    store
        .enqueue(tenant.id, &NewJob::new("builds", "compile"))
        .await?;
    let mut later = NewJob::new("deploys", "release");
    later.run_at = Some(store.now() + jiff::SignedDuration::from_secs(1));
    let delayed = store.enqueue(tenant.id, &later).await?;
    println!("delayed job is {}", store.get_job(delayed.id).await?.state);

    // The store is also the lease store: each controller runs on one
    // replica at a time (here, this one).
    let mut builder = Manager::builder().lease_store(Arc::new(store.clone()));
    register_builtin(
        &mut builder,
        &store,
        &ControllersConfig::default(),
        Notifier::Log,
    )?;
    builder.register(
        BacklogReport {
            store: store.clone(),
        },
        ControllerOptions::default(),
    )?;
    let manager = builder.start()?;

    // job-scheduler looks every second; wait (with a deadline) for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get_job(delayed.id).await?.state != JobState::Queued {
        assert!(tokio::time::Instant::now() < deadline, "never promoted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("delayed job is {}", store.get_job(delayed.id).await?.state);
    manager.trigger("backlog-report")?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for status in manager.status() {
        let last = status
            .last_run
            .as_ref()
            .map(|r| format!("{:?}, {} items", r.outcome, r.items))
            .unwrap_or_else(|| "not run yet".into());
        println!("{:<22} leader={:<5} {last}", status.name, status.leader);
    }
    manager.shutdown(Duration::from_secs(5)).await;
    store.close().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
