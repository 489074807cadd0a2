//! The manager: registers controllers, runs one scheduling loop per
//! controller, and answers for them (trigger, status, shutdown).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::controller::{DynController, MAX_DEFAULT_TIMEOUT};
use crate::lease::DynLeaseStore;
use crate::metrics::Metrics;
use crate::scheduler::{Driver, LoopExit, Shared, Slot};
use crate::status::StatusBoard;
use crate::{
    Clock, Context, Controller, ControllerOptions, ControllerStatus, InMemoryLeaseStore,
    LeaseStore, SystemClock,
};

/// Default lease time-to-live.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// Shortest lease TTL accepted; below it renewals (every third of the TTL)
/// would flood the store.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(300);

/// A manager could not be set up, or was asked about a controller it lacks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// A controller's name is empty.
    #[error("controller name must not be empty")]
    EmptyName,
    /// Two controllers share a name.
    #[error("controller {0:?} is already registered")]
    Duplicate(String),
    /// A controller's interval is zero.
    #[error("controller {0:?}: interval must be greater than zero")]
    ZeroInterval(String),
    /// A controller's jitter is outside `0.0..1.0`.
    #[error("controller {name:?}: jitter {jitter} is outside 0.0..1.0")]
    InvalidJitter {
        /// The controller.
        name: String,
        /// The rejected value.
        jitter: f64,
    },
    /// A controller's timeout is zero.
    #[error("controller {0:?}: timeout must be greater than zero")]
    ZeroTimeout(String),
    /// The lease TTL is too short.
    #[error("lease TTL {ttl:?} is below the minimum of {MIN_LEASE_TTL:?}")]
    LeaseTtl {
        /// The rejected value.
        ttl: Duration,
    },
    /// No controller has this name.
    #[error("no controller named {0:?}")]
    UnknownController(String),
    /// A dry run failed.
    #[error("planning controller {name:?} failed")]
    Plan {
        /// The controller.
        name: String,
        /// What failed.
        #[source]
        source: crate::BoxError,
    },
}

/// Configures a [`Manager`]: clock, leases, metrics, controllers.
///
/// ```
/// use std::time::Duration;
/// use homeostat_runtime::{BoxError, Context, Controller, ControllerOptions, Manager, Reconciled};
///
/// struct Noop;
/// impl Controller for Noop {
///     fn name(&self) -> &str { "noop" }
///     fn interval(&self) -> Duration { Duration::from_secs(30) }
///     async fn reconcile(&self, _ctx: Context) -> Result<Reconciled, BoxError> {
///         Ok(Reconciled::nothing())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut registry = prometheus_client::registry::Registry::default();
/// let mut builder = Manager::builder().metrics(&mut registry);
/// builder.register(Noop, ControllerOptions::default())?;
/// let manager = builder.start()?;
/// manager.trigger("noop")?;
/// let report = manager.shutdown(Duration::from_secs(5)).await;
/// assert!(report.timed_out.is_empty());
/// # Ok(())
/// # }
/// ```
pub struct ManagerBuilder {
    clock: Arc<dyn Clock>,
    leases: Option<Arc<dyn DynLeaseStore>>,
    holder: Option<String>,
    lease_ttl: Duration,
    seed: Option<u64>,
    metrics: Metrics,
    slots: Vec<Arc<Slot>>,
}

impl fmt::Debug for ManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("clock", &self.clock)
            .field("holder", &self.holder)
            .field("lease_ttl", &self.lease_ttl)
            .field("controllers", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl ManagerBuilder {
    fn new() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            leases: None,
            holder: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            seed: None,
            metrics: Metrics::new(),
            slots: Vec::new(),
        }
    }

    /// The clock for every scheduling decision. Default: [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where exclusive controllers take their leases. Default: an
    /// [`InMemoryLeaseStore`] on the manager's clock (one process only).
    pub fn lease_store<L: LeaseStore>(mut self, store: Arc<L>) -> Self {
        self.leases = Some(store);
        self
    }

    /// This replica's identity in leases. Must be unique per process; the
    /// default combines the host name, the process id and a random suffix.
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// Lease time-to-live (default 15 s). Leases are renewed every third of
    /// it; a replica that has not renewed within two thirds of it stops
    /// acting as leader.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Registers the runtime's metrics in `registry`.
    pub fn metrics(self, registry: &mut Registry) -> Self {
        self.metrics.register(registry);
        self
    }

    /// Fixes the seed of the jitter, for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Adds a controller.
    pub fn register<C: Controller>(
        &mut self,
        controller: C,
        options: ControllerOptions,
    ) -> Result<(), ManagerError> {
        self.register_with(controller, options, Arc::new(Notify::new()))
    }

    /// Adds a keyed controller (docs/runtime.md, "Keyed controllers"): its
    /// interval is the reconciler's resync, and `options` apply to its
    /// runs (lease, timeout of a run); the handle puts keys in its queue
    /// and tells it to run.
    pub fn register_keyed<R: crate::Reconciler>(
        &mut self,
        reconciler: R,
        options: ControllerOptions,
        keyed: crate::KeyedOptions,
    ) -> Result<crate::KeyHandle<R::Key>, ManagerError> {
        let trigger = Arc::new(Notify::new());
        let metrics = self.metrics.for_keys(reconciler.name());
        let status = Arc::new(OnceLock::new());
        let (controller, handle) = crate::keyed::Keyed::new(
            reconciler,
            keyed,
            metrics,
            Arc::clone(&trigger),
            Arc::clone(&self.clock),
            Arc::clone(&status),
        );
        self.register_with(controller, options, trigger)?;
        let slot = self.slots.last().expect("the slot just registered");
        slot.status.lock().unwrap().keys = Some(crate::KeyCounts::default());
        let _ = status.set(Arc::clone(&slot.status));
        Ok(handle)
    }

    fn register_with<C: Controller>(
        &mut self,
        controller: C,
        options: ControllerOptions,
        trigger: Arc<Notify>,
    ) -> Result<(), ManagerError> {
        let name = controller.name().to_owned();
        let interval = controller.interval();
        if name.is_empty() {
            return Err(ManagerError::EmptyName);
        }
        if self.slots.iter().any(|s| *s.name == *name) {
            return Err(ManagerError::Duplicate(name));
        }
        if interval.is_zero() {
            return Err(ManagerError::ZeroInterval(name));
        }
        if !(0.0..1.0).contains(&options.jitter) {
            return Err(ManagerError::InvalidJitter {
                name,
                jitter: options.jitter,
            });
        }
        let timeout = options
            .timeout
            .unwrap_or_else(|| interval.min(MAX_DEFAULT_TIMEOUT));
        if timeout.is_zero() {
            return Err(ManagerError::ZeroTimeout(name));
        }
        let status = ControllerStatus {
            name: name.clone(),
            interval,
            exclusive: options.exclusive,
            leader: !options.exclusive,
            running: false,
            last_run: None,
            last_success_at: None,
            consecutive_failures: 0,
            next_run: None,
            keys: None,
            tasks: 0,
        };
        let controller: Arc<dyn DynController> = Arc::new(controller);
        self.slots.push(Arc::new(Slot {
            metrics: self.metrics.for_controller(&name),
            name: name.into(),
            interval,
            timeout,
            options,
            controller,
            trigger,
            status: Arc::new(Mutex::new(status)),
        }));
        Ok(())
    }

    /// Starts one scheduling loop per controller on the current tokio
    /// runtime.
    pub fn start(self) -> Result<Manager, ManagerError> {
        if self.lease_ttl < MIN_LEASE_TTL {
            return Err(ManagerError::LeaseTtl {
                ttl: self.lease_ttl,
            });
        }
        let leases = self
            .leases
            .unwrap_or_else(|| Arc::new(InMemoryLeaseStore::new(Arc::clone(&self.clock))));
        let slots: Arc<[Arc<Slot>]> = self.slots.into();
        let shared = Arc::new(Shared {
            board: StatusBoard::new(slots.iter().map(|s| Arc::clone(&s.status))),
            clock: self.clock,
            leases,
            holder: self.holder.unwrap_or_else(default_holder),
            lease_ttl: self.lease_ttl,
            stop: CancellationToken::new(),
            shutdown_deadline: OnceLock::new(),
        });
        let seed = self.seed.unwrap_or_else(|| fastrand::u64(..));
        let mut loops = JoinSet::new();
        let mut names = HashMap::new();
        for (index, slot) in slots.iter().enumerate() {
            let driver = Driver::new(
                Arc::clone(slot),
                Arc::clone(&shared),
                seed.wrapping_add(index as u64),
            );
            let handle = loops.spawn(driver.run());
            names.insert(handle.id(), Arc::clone(&slot.name));
        }
        Ok(Manager {
            inner: Arc::new(Inner {
                shared,
                slots,
                loops: Mutex::new(Some((loops, names))),
            }),
        })
    }
}

type Loops = (JoinSet<LoopExit>, HashMap<tokio::task::Id, Arc<str>>);

/// A running set of controllers.
///
/// Cloning gives another handle to the same manager. Dropping the last handle
/// without [`Manager::shutdown`] stops every loop and run at once and releases
/// no lease, as a crash would: peers take over when the leases expire.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    slots: Arc<[Arc<Slot>]>,
    loops: Mutex<Option<Loops>>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("holder", &self.inner.shared.holder)
            .field(
                "controllers",
                &self
                    .inner
                    .slots
                    .iter()
                    .map(|s| &*s.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What [`Manager::shutdown`] achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Controllers that were idle or finished their run before the deadline.
    pub stopped: Vec<String>,
    /// Controllers whose run had to be cancelled at the deadline.
    pub timed_out: Vec<String>,
}

impl Manager {
    /// Starts configuring a manager.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::new()
    }

    /// This replica's lease holder identity.
    pub fn holder(&self) -> &str {
        &self.inner.shared.holder
    }

    /// Asks for a run of `name` as soon as possible. Triggers that arrive while
    /// a run is queued or going coalesce into one more run.
    pub fn trigger(&self, name: &str) -> Result<(), ManagerError> {
        self.slot(name)?.trigger.notify_one();
        Ok(())
    }

    /// What controller `name` would change now, without changing anything
    /// (its dry run). Runs on this replica whether or not it leads, outside
    /// the schedule.
    pub async fn plan(&self, name: &str) -> Result<crate::Plan, ManagerError> {
        let slot = self.slot(name)?;
        // A dry run holds no term: nothing it might start would outlive it.
        let term = CancellationToken::new();
        term.cancel();
        let ctx = Context {
            controller: Arc::clone(&slot.name),
            cancel: CancellationToken::new(),
            term,
            tasks: tokio_util::task::TaskTracker::new(),
            fence: None,
            clock: Arc::clone(&self.inner.shared.clock),
            scheduled_at: self.inner.shared.clock.now(),
            started_at: self.inner.shared.clock.now(),
            reason: crate::RunReason::Trigger,
            board: Some(self.inner.shared.board.clone()),
        };
        Arc::clone(&slot.controller)
            .plan_boxed(ctx)
            .await
            .map_err(|source| ManagerError::Plan {
                name: name.to_owned(),
                source,
            })
    }

    /// A snapshot of every controller, in registration order.
    pub fn status(&self) -> Vec<ControllerStatus> {
        self.inner
            .slots
            .iter()
            .map(|s| s.status.lock().unwrap().clone())
            .collect()
    }

    /// A snapshot of every controller, with the runs of those another
    /// replica leads as their leader published them (this replica's own view
    /// when the lease store cannot say).
    pub async fn cluster_status(&self) -> Vec<ControllerStatus> {
        let mine = self.status();
        if mine.iter().all(|s| s.leader) {
            return mine;
        }
        let published = match self.inner.shared.leases.published_boxed().await {
            Ok(published) => published,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the leaders' controller status");
                return mine;
            }
        };
        mine.into_iter()
            .map(|s| match published.get(&s.name) {
                Some(leader) if !s.leader => s.with_runs_of(leader),
                _ => s,
            })
            .collect()
    }

    /// Tells the manager that the lease of controller `name` was given up
    /// (a peer stopped): unless this replica leads it, it tries to take the
    /// lease at once, and runs the controller if it gets it, instead of
    /// waiting for its next tick. A name it does not run is ignored.
    pub fn lease_released(&self, name: &str) {
        if let Ok(slot) = self.slot(name)
            && slot.options.exclusive
            && !slot.status.lock().unwrap().leader
        {
            slot.trigger.notify_one();
        }
    }

    /// A snapshot of one controller.
    pub fn controller_status(&self, name: &str) -> Result<ControllerStatus, ManagerError> {
        Ok(self.slot(name)?.status.lock().unwrap().clone())
    }

    /// Stops scheduling, lets in-flight runs finish until `grace` has passed
    /// on the manager's clock, cancels those still going, waits for them, and
    /// releases held leases so peers take over at once. Calling it again
    /// returns an empty report.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let shared = &self.inner.shared;
        let _ = shared.shutdown_deadline.set(shared.clock.now() + grace);
        shared.stop.cancel();
        for slot in self.inner.slots.iter() {
            slot.trigger.notify_one();
        }
        let Some((mut loops, names)) = self.inner.loops.lock().unwrap().take() else {
            return ShutdownReport::default();
        };
        let mut in_time = Vec::new();
        let mut late = Vec::new();
        while let Some(exit) = loops.join_next_with_id().await {
            match exit {
                Ok((id, exit)) if exit.stopped_in_time => in_time.push(names[&id].clone()),
                Ok((id, _)) => late.push(names[&id].clone()),
                Err(e) => {
                    tracing::error!(error = %e, "controller loop failed");
                    late.push(names[&e.id()].clone());
                }
            }
        }
        let order = |list: Vec<Arc<str>>| -> Vec<String> {
            self.inner
                .slots
                .iter()
                .filter(|s| list.contains(&s.name))
                .map(|s| s.name.to_string())
                .collect()
        };
        ShutdownReport {
            stopped: order(in_time),
            timed_out: order(late),
        }
    }

    fn slot(&self, name: &str) -> Result<&Slot, ManagerError> {
        self.inner
            .slots
            .iter()
            .find(|s| &*s.name == name)
            .map(|s| &**s)
            .ok_or_else(|| ManagerError::UnknownController(name.to_owned()))
    }
}

fn default_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "homeostat".to_owned());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}
