//! The store's contract, written once and run against SQLite and
//! PostgreSQL, by area.

mod attention;
mod audit;
mod claims;
mod fair_share;
mod jobs;
mod leases;
mod limits;
mod limits_simulation;
mod notifications;
mod registry;
mod sweeps;
mod wakeups;
mod workflows;
mod workflows_simulation;

use std::time::Duration;

use homeostat_store::Store;

/// The lease most tests claim with.
pub(crate) const LEASE: Duration = Duration::from_secs(60);

/// Runs tampering SQL directly against the backend.
pub(crate) async fn raw(store: &Store, sql: &'static str) {
    store.pool_for_tests().execute(sql).await.unwrap();
}
