//! The kit homeostat's own tests share: a store on each backend that removes
//! its SQLite file or PostgreSQL schema even when the test panics
//! ([`TestStore`]), the [`on_both_backends!`] harness, factories for
//! tenants, agents and jobs, and the test clock.
//!
//! ```no_run
//! use homeostat_testkit::{At, at, job, on_both_backends, tenant};
//!
//! async fn enqueues(store: &homeostat_store::Store) {
//!     let t = tenant(store, "acme", homeostat_model::PlanTier::Free).await;
//!     store.at(at(5)).enqueue(t, &job("builds")).await.unwrap();
//! }
//!
//! on_both_backends!(enqueues);
//! ```
//!
//! PostgreSQL comes from `HOMEOSTAT_TEST_DATABASE_URL`; without it the
//! PostgreSQL half of each test prints a `SKIPPED (PostgreSQL)` notice.

mod backends;
mod clock;
mod factories;
mod waiting;

pub use backends::{
    TestStore, context_at, pg_connect, pg_pool, pg_url, postgres, postgres_with, sqlite,
    sqlite_path, sqlite_with,
};
pub use clock::{At, at, t0};
pub use factories::{agent, agents, completions, job, tenant};
pub use waiting::{wakes, woken};
