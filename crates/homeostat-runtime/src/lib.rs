//! The homeostat controller runtime: Kubernetes-style reconciliation loops
//! for any tokio service.
//!
//! Register [`Controller`]s with a [`Manager`] and each one gets a jittered
//! interval, no overlapping runs, a per-run timeout, panic isolation, sooner
//! retries after failures, on-demand [`Manager::trigger`], optional exclusive
//! leadership through a [`LeaseStore`] with fencing epochs, Prometheus metrics
//! and a [`ControllerStatus`] snapshot. Every time decision goes through a
//! [`Clock`], so tests move time instead of sleeping.
//!
//! The runtime knows nothing of jobs, databases or HTTP.

use std::future::Future;
use std::pin::Pin;

mod backoff;
mod clock;
mod conditions;
mod controller;
mod event_loop;
mod key_tasks;
mod keyed;
mod lease;
mod manager;
mod metrics;
mod run;
mod scheduler;
mod status;
mod work_queue;

pub use backoff::{Backoff, RetryDecision};
pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use conditions::{Condition, ObjectStatus, READY};
pub use controller::{
    Context, Controller, ControllerOptions, Fence, MAX_DEFAULT_TIMEOUT, Plan, PlannedChange,
    Reconciled, RunReason,
};
pub use event_loop::{EventLoop, keep_latest};
pub use key_tasks::{Ensured, KeyTasks, TaskContext};
pub use keyed::{Action, KeyHandle, KeyedOptions, Reconciler};
pub use lease::{InMemoryLeaseStore, Lease, LeaseError, LeaseStore};
pub use manager::{
    DEFAULT_LEASE_TTL, MIN_LEASE_TTL, Manager, ManagerBuilder, ManagerError, ShutdownReport,
};
pub use status::unix_ms::to_millis as unix_millis;
pub use status::{ControllerStatus, KeyCounts, LastRun, Outcome};

/// A boxed, sendable future: what object-safe runtime interfaces return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Any error a reconcile returns; its message (and sources) end up in the
/// status and the logs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Re-exported so controllers can use the token type without depending on
/// tokio-util themselves.
pub use tokio_util::sync::CancellationToken;
