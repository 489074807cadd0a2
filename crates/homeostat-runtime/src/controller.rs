//! What a controller is and what it receives for each run.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::{BoxError, BoxFuture, Clock};

/// A reconciliation loop: looks at the world, moves it towards the desired
/// state, reports how many items it changed.
///
/// A reconcile must be idempotent: the manager may run it again at any time
/// (on the next tick, after a failure, on a trigger, on another replica after a
/// leadership change), and a run that finds nothing to do returns
/// [`Reconciled::nothing`].
///
/// ```
/// use std::time::Duration;
/// use homeostat_runtime::{BoxError, Context, Controller, Reconciled};
///
/// struct SweepTempFiles;
///
/// impl Controller for SweepTempFiles {
///     fn name(&self) -> &str {
///         "sweep-temp-files"
///     }
///     fn interval(&self) -> Duration {
///         Duration::from_secs(60)
///     }
///     async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
///         if ctx.is_cancelled() {
///             return Ok(Reconciled::nothing());
///         }
///         Ok(Reconciled::items(0))
///     }
/// }
/// ```
pub trait Controller: Send + Sync + 'static {
    /// Stable, unique name: used for the lease, metrics labels, logs, status
    /// and [`Manager::trigger`](crate::Manager::trigger).
    fn name(&self) -> &str;

    /// Time between two runs, before jitter.
    fn interval(&self) -> Duration;

    /// One pass of reconciliation. It should stop early when
    /// [`Context::cancelled`] fires (timeout, lost leadership or shutdown) and
    /// pass [`Context::fence`] to every write so a deposed leader's writes are
    /// refused.
    fn reconcile(&self, ctx: Context) -> impl Future<Output = Result<Reconciled, BoxError>> + Send;

    /// What a run would change now, without changing it (a dry run): the
    /// count and the first items. The default says the controller cannot
    /// tell.
    fn plan(&self, ctx: Context) -> impl Future<Output = Result<Plan, BoxError>> + Send {
        let _ = ctx;
        async { Ok(Plan::unsupported()) }
    }
}

/// What a controller would change now: its dry run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// How many items a run would change.
    pub count: u64,
    /// The first of them.
    pub items: Vec<PlannedChange>,
    /// Anything else to know (for instance that the controller cannot plan).
    pub note: Option<String>,
}

impl Plan {
    /// The plan of a controller that cannot tell in advance.
    pub fn unsupported() -> Self {
        Self {
            note: Some("this controller does not support dry runs".into()),
            ..Self::default()
        }
    }
}

/// One change a run would make.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedChange {
    /// What changes: `job:<id>`, `agent:<id>`, `token:<id>`, ….
    pub subject: String,
    /// Its state now.
    pub from: String,
    /// Its state after the run (`deleted` for removals).
    pub to: String,
    /// Why.
    pub why: String,
}

/// What one run changed, and whether it asks to run again before its
/// interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reconciled {
    /// Number of items changed (rows updated, notifications sent, ...).
    pub items: u64,
    /// Run again this soon rather than at the next tick: a sweep that
    /// stopped at its batch cap continues at once (`Duration::ZERO`); a
    /// keyed controller comes back when its next key is due. Later than
    /// the next tick changes nothing.
    pub again: Option<Duration>,
}

impl Reconciled {
    /// A run that changed `items` items.
    pub fn items(items: u64) -> Self {
        Self { items, again: None }
    }

    /// A run that found nothing to change.
    pub fn nothing() -> Self {
        Self::items(0)
    }

    /// The same run, asking to run again after `delay` (at once for zero)
    /// instead of waiting for its interval.
    #[must_use]
    pub fn again_after(mut self, delay: Duration) -> Self {
        self.again = Some(delay);
        self
    }
}

/// The lease under which an exclusive controller runs. Stores refuse writes
/// that carry an epoch older than the lease's current one (fencing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Lease name (the controller's name).
    pub name: String,
    /// Epoch of the lease held when the run started.
    pub epoch: u64,
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunReason {
    /// The first run when the manager starts (run-on-start).
    Start,
    /// A regular (jittered) tick.
    Tick,
    /// A retry after a failed run, sooner than the interval.
    Retry,
    /// [`Manager::trigger`](crate::Manager::trigger).
    Trigger,
    /// The previous run asked to run again ([`Reconciled::again_after`]).
    Again,
}

impl RunReason {
    /// The wire and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunReason::Start => "start",
            RunReason::Tick => "tick",
            RunReason::Retry => "retry",
            RunReason::Trigger => "trigger",
            RunReason::Again => "again",
        }
    }
}

impl fmt::Display for RunReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a run gets from the manager.
#[derive(Clone)]
pub struct Context {
    pub(crate) controller: Arc<str>,
    pub(crate) cancel: CancellationToken,
    /// Fires when this replica's hold on the controller ends.
    pub(crate) term: CancellationToken,
    /// Where work that outlives the run is spawned (see [`crate::KeyTasks`]).
    pub(crate) tasks: tokio_util::task::TaskTracker,
    pub(crate) fence: Option<Fence>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) scheduled_at: SystemTime,
    pub(crate) started_at: SystemTime,
    pub(crate) reason: RunReason,
    pub(crate) board: Option<crate::status::StatusBoard>,
}

impl Context {
    /// A context for calling a controller outside a manager (tests, one-off
    /// CLI runs): never cancelled unless `cancel` is, not fenced unless `fence`
    /// is given.
    pub fn detached(
        controller: &str,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
        fence: Option<Fence>,
    ) -> Self {
        let now = clock.now();
        Self {
            controller: controller.into(),
            term: cancel.clone(),
            cancel,
            tasks: tokio_util::task::TaskTracker::new(),
            fence,
            clock,
            scheduled_at: now,
            started_at: now,
            reason: RunReason::Trigger,
            board: None,
        }
    }

    /// A snapshot of every controller of the manager running this one (for
    /// watchdogs); empty for a detached context.
    pub fn manager_status(&self) -> Vec<crate::ControllerStatus> {
        self.board
            .as_ref()
            .map(crate::status::StatusBoard::snapshot)
            .unwrap_or_default()
    }

    /// The controller's name.
    pub fn controller(&self) -> &str {
        &self.controller
    }

    /// Fires when the run must stop: timeout, lost leadership, shutdown.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Fires when this replica's hold on the controller ends: its lease is
    /// lost or given back, or the manager shuts down (for a controller that
    /// is not exclusive, only then). Work that outlives a run, such as a
    /// key's task, stops on it; a run's own cancellation fires too.
    pub fn term(&self) -> &CancellationToken {
        &self.term
    }

    /// Whether the run has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the run has been asked to stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The lease this run holds, for exclusive controllers.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// The lease epoch this run holds, for exclusive controllers.
    pub fn epoch(&self) -> Option<u64> {
        self.fence.as_ref().map(|f| f.epoch)
    }

    /// The manager's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The current time on the manager's clock.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// When the run was due (the tick, retry or trigger time).
    pub fn scheduled_at(&self) -> SystemTime {
        self.scheduled_at
    }

    /// When the run actually started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Why the run started.
    pub fn reason(&self) -> RunReason {
        self.reason
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("controller", &self.controller)
            .field("cancelled", &self.is_cancelled())
            .field("fence", &self.fence)
            .field("scheduled_at", &self.scheduled_at)
            .field("reason", &self.reason)
            .finish()
    }
}

/// How the manager schedules one controller.
///
/// ```
/// use std::time::Duration;
/// use homeostat_runtime::ControllerOptions;
///
/// let opts = ControllerOptions::default()
///     .jitter(0.2)
///     .run_on_start(false)
///     .timeout(Duration::from_secs(30))
///     .exclusive(true);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControllerOptions {
    pub(crate) jitter: f64,
    pub(crate) run_on_start: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) exclusive: bool,
}

/// Ceiling of the default per-run timeout (the interval).
pub const MAX_DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for ControllerOptions {
    /// ±10% jitter, run on start, timeout = interval capped at 5 min,
    /// exclusive.
    fn default() -> Self {
        Self {
            jitter: 0.1,
            run_on_start: true,
            timeout: None,
            exclusive: true,
        }
    }
}

impl ControllerOptions {
    /// Spread each interval uniformly over `± fraction` of itself, drawn afresh
    /// each tick. `0.0` disables jitter; must be in `0.0..1.0`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Run as soon as the manager starts (`true`), or wait for the first tick.
    pub fn run_on_start(mut self, yes: bool) -> Self {
        self.run_on_start = yes;
        self
    }

    /// Longest a run may take before it is cancelled and recorded as a
    /// timeout. Default: the interval, capped at [`MAX_DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Run on one replica at a time under a lease (`true`, the default), or on
    /// every replica.
    pub fn exclusive(mut self, yes: bool) -> Self {
        self.exclusive = yes;
        self
    }
}

/// Object-safe form of [`Controller`], so the manager can hold many kinds.
pub(crate) trait DynController: Send + Sync + 'static {
    fn reconcile_boxed(
        self: Arc<Self>,
        ctx: Context,
    ) -> BoxFuture<'static, Result<Reconciled, BoxError>>;
    fn plan_boxed(self: Arc<Self>, ctx: Context) -> BoxFuture<'static, Result<Plan, BoxError>>;
}

impl<C: Controller> DynController for C {
    fn reconcile_boxed(
        self: Arc<Self>,
        ctx: Context,
    ) -> BoxFuture<'static, Result<Reconciled, BoxError>> {
        Box::pin(async move { self.reconcile(ctx).await })
    }
    fn plan_boxed(self: Arc<Self>, ctx: Context) -> BoxFuture<'static, Result<Plan, BoxError>> {
        Box::pin(async move { self.plan(ctx).await })
    }
}
