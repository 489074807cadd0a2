//! The homeostat store: one interface over SQLite (embedded, zero setup) and
//! PostgreSQL (N replicas), each with its own SQL and migrations.
//!
//! Operations act at the time of the store's clock ([`StoreClock`]): the
//! system clock in production, where PostgreSQL's own clock judges lease
//! expiry, heartbeats and deadlines so replicas with skewed clocks agree; a
//! manual clock in tests, which move it instead of sleeping. Controller
//! sweeps take a [`Fence`]: the store executes them only while that lease
//! epoch is current, in the same transaction, and records each change in the
//! hash-chained audit log.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), homeostat_store::StoreError> {
//! use homeostat_model::{AuditAction, NewJob, PlanTier};
//! use homeostat_store::{Store, StoreOptions};
//!
//! # let dir = std::env::temp_dir().join(format!("homeostat-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let url = format!("sqlite:{}", dir.join("homeostat.db").display());
//! // url: "sqlite:homeostat.db", or "postgres://user@host/db"
//! let store = Store::connect(&url, StoreOptions::default()).await?;
//! let tenant = store.create_tenant("acme", PlanTier::Standard, "operator:setup").await?;
//! let job = store.enqueue(tenant.id, &NewJob::new("builds", "compile")).await?;
//! assert!(!job.deduplicated);
//! # store.close().await;
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("homeostat-store needs a backend: enable the `sqlite` or `postgres` feature");

mod admission;
mod attention;
mod audit;
mod audit_log;
mod backend;
mod bounded;
mod credentials;
mod decisions;
mod error;
mod fair;
mod health;
mod idempotency;
mod job_metrics;
mod jobs;
mod leases;
mod limits;
mod local;
mod migrations;
mod notifications;
mod plan;
#[cfg(feature = "postgres")]
mod postgres;
mod registry;
mod rows;
mod secret;
mod sessions;
mod signals;
#[cfg(feature = "sqlite")]
mod sqlite;
mod stats;
mod store;
mod sweeps;
mod tally;
mod time;
mod types;
mod verifications;
mod workflows;

pub use admission::Admitted;
pub use attention::MinuteOutcomes;
pub use audit::{ChainBreak, VerifyReport};
pub use bounded::{AGENT_CACHE_ENTRIES, BoundedMap};
pub use credentials::REVOCATION_CHECK;
pub use error::StoreError;
pub use homeostat_model::{ClaimedJob, CompletedBatch, Completion, Enqueued, FailOutcome, Page};
pub use idempotency::{LIFETIME as IDEMPOTENCY_LIFETIME, MAX_KEY_LEN as MAX_IDEMPOTENCY_KEY_LEN};
pub use job_metrics::{MAX_SERIES as JOB_METRICS_MAX_SERIES, OTHER as JOB_METRICS_OTHER};
pub use plan::{PlanKind, PlannedItem, SweepPlan};
pub use sessions::SessionLimits;
pub use signals::QueueWaiter;
pub use stats::{AgentCount, JobCount, QueueBacklog, Stats};
#[cfg(feature = "testing")]
pub use store::PoolForTests;
pub use store::{Backup, Store};
pub use types::{
    Ageing, AgentFilter, ApiKeyIdentity, AuditFilter, AuditRetentionRun, Delivery, Failure,
    IssuedSecret, JobFilter, JobRetention, NOTIFICATION_MAX_ATTEMPTS, NewBootstrapToken, Once,
    PeriodicEnqueue, StoreClock, StoreOptions, Swept, notification_backoff,
};
pub use verifications::{KEPT as VERIFICATIONS_KEPT, MAX_ATTEMPTS as MAX_VERIFICATION_ATTEMPTS};
pub use workflows::Straggler;
