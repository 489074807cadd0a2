//! The built-in controllers that keep a homeostat queue healthy.
//!
//! Each controller is a thin, idempotent loop over one or two of the store's
//! set-based sweeps: it passes its lease's [`Fence`] so a deposed leader
//! changes nothing, works in bounded batches, stops early when its run is
//! cancelled, and reports how many items it changed. The store writes the
//! audit events (naming the controller and its epoch) in the same
//! transactions.
//!
//! ```no_run
//! # async fn demo(store: homeostat_store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! use homeostat_controllers::{ControllersConfig, Notifier, register_builtin};
//! use homeostat_runtime::Manager;
//!
//! let mut builder = Manager::builder().lease_store(std::sync::Arc::new(store.clone()));
//! register_builtin(&mut builder, &store, &ControllersConfig::default(), Notifier::Log)?;
//! let manager = builder.start()?;
//! # let _ = manager;
//! # Ok(())
//! # }
//! ```

mod agent_health;
mod approval_expiration;
mod audit_chain_verify;
mod audit_retention;
mod config;
mod job_recovery;
mod job_retention;
mod job_scheduler;
mod job_timeout;
mod limits;
mod notification_dispatch;
pub mod notifier;
mod periodic_jobs;
mod queue_priority;
mod sweep;
mod token_cleanup;
mod watchdog;
mod workflows;

pub use agent_health::AgentHealth;
pub use approval_expiration::ApprovalExpiration;
pub use audit_chain_verify::{AuditChainVerify, SCHEDULE_ACTOR as AUDIT_VERIFY_ACTOR};
pub use audit_retention::AuditRetention;
pub use config::*;
pub use job_recovery::JobRecovery;
pub use job_retention::JobRetention;
pub use job_scheduler::JobScheduler;
pub use job_timeout::JobTimeout;
pub use limits::Limits;
pub use notification_dispatch::NotificationDispatch;
pub use notifier::Notifier;
pub use periodic_jobs::{PeriodicJobs, PeriodicSchedule, ScheduleError};
pub use queue_priority::QueuePriority;
pub use token_cleanup::TokenCleanup;
pub use watchdog::Watchdog;
pub use workflows::Workflows;

use homeostat_runtime::{ControllerOptions, KeyedOptions, ManagerBuilder, ManagerError};
use homeostat_store::Store;

#[doc(no_inline)]
pub use homeostat_runtime::Fence;

/// Why the built-in controllers could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The manager refused a controller.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// A periodic schedule is invalid.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

/// Registers every enabled built-in controller with `builder`, sending
/// notifications through `notifier`.
pub fn register_builtin(
    builder: &mut ManagerBuilder,
    store: &Store,
    config: &ControllersConfig,
    notifier: Notifier,
) -> Result<(), RegisterError> {
    let options = ControllerOptions::default();
    macro_rules! add {
        ($settings:expr, $controller:expr) => {
            if $settings.enabled {
                builder.register($controller, options)?;
            }
        };
    }
    add!(
        config.agent_health.settings,
        AgentHealth::new(store.clone(), config.agent_health.clone())
    );
    add!(
        config.job_recovery,
        JobRecovery::new(
            store.clone(),
            config.job_recovery,
            config.agent_health.stale_after
        )
    );
    add!(
        config.job_timeout,
        JobTimeout::new(store.clone(), config.job_timeout)
    );
    add!(
        config.job_scheduler,
        JobScheduler::new(store.clone(), config.job_scheduler)
    );
    add!(
        config.queue_priority.settings,
        QueuePriority::new(store.clone(), config.queue_priority.clone())
    );
    add!(
        config.approval_expiration,
        ApprovalExpiration::new(store.clone(), config.approval_expiration)
    );
    add!(config.limits, Limits::new(store.clone(), config.limits));
    add!(
        config.workflows,
        Workflows::new(store.clone(), config.workflows)
    );
    add!(
        config.token_cleanup,
        TokenCleanup::new(store.clone(), config.token_cleanup)
    );
    add!(
        config.job_retention.settings,
        JobRetention::new(store.clone(), config.job_retention.clone())
    );
    add!(
        config.audit_retention.settings,
        AuditRetention::new(store.clone(), config.audit_retention.clone())
    );
    let verify = &config.audit_chain_verify;
    if verify.settings.enabled {
        // A walk outlasts the interval, which is how often requests are
        // looked for.
        builder.register(
            AuditChainVerify::new(store.clone(), verify.clone()),
            options.timeout(verify.timeout),
        )?;
    }
    add!(
        config.notification_dispatch,
        NotificationDispatch::new(store.clone(), notifier, config.notification_dispatch)
    );
    if config.periodic.settings.enabled && !config.periodic.schedules.is_empty() {
        let periodic = PeriodicJobs::new(
            store.clone(),
            config.periodic.settings,
            config.periodic.schedules.clone(),
        )?;
        builder.register_keyed(periodic, options, KeyedOptions::default())?;
    }
    if config.watchdog.settings.enabled {
        // Every replica watches the controllers it leads.
        builder.register(
            Watchdog::new(store.clone(), config.watchdog.clone()),
            options.exclusive(false),
        )?;
    }
    Ok(())
}

/// The Rust snippets of the README and the guides, compiled as doctests so
/// that they stay true to the code.
#[cfg(doctest)]
mod guides {
    #[doc = include_str!("../../../README.md")]
    struct Readme;
    #[doc = include_str!("../../../docs/architecture.md")]
    struct Architecture;
    #[doc = include_str!("../../../docs/store.md")]
    struct Store;
    #[doc = include_str!("../../../docs/runtime.md")]
    struct Runtime;
    #[doc = include_str!("../../../docs/controllers.md")]
    struct Controllers;
}
