//! The loop that drives one controller: ticks, runs, timeouts, retries,
//! triggers, leadership and draining at shutdown.
//!
//! Each registered controller gets one such loop (a tokio task) that owns all
//! of the controller's scheduling state, so there is no locking between
//! decisions. The loop polls the in-flight run itself (no task per run: at
//! thousands of runs a second the spawns and cross-thread wake-ups would cost
//! more than the runs), catching its panics, and arms a single timer for the
//! earliest of its deadlines.

use std::future::{Future, pending, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, field, info, info_span, warn};

use crate::backoff::{Backoff, spread};
use crate::controller::DynController;
use crate::lease::DynLeaseStore;
use crate::metrics::ControllerMetrics;
use crate::run::{InFlight, RunResult, classify};
use crate::status::StatusBoard;
use crate::{
    BoxFuture, Clock, Context, ControllerOptions, ControllerStatus, Fence, LastRun, Lease, Outcome,
    RunReason,
};

/// First retry delay after a failed run; doubles per consecutive failure,
/// capped at the controller's interval.
const RETRY_INITIAL: Duration = Duration::from_secs(1);

/// One registered controller and what the outside world sees of it.
pub(crate) struct Slot {
    pub(crate) name: Arc<str>,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) options: ControllerOptions,
    pub(crate) controller: Arc<dyn DynController>,
    pub(crate) trigger: Arc<Notify>,
    pub(crate) status: Arc<Mutex<ControllerStatus>>,
    pub(crate) metrics: ControllerMetrics,
}

/// What every loop of one manager shares.
pub(crate) struct Shared {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) leases: Arc<dyn DynLeaseStore>,
    pub(crate) holder: String,
    pub(crate) lease_ttl: Duration,
    /// Cancelled when shutdown begins (and every loop's trigger notified, so
    /// it looks): no new runs from then on.
    pub(crate) stop: CancellationToken,
    /// Set before `stop` is cancelled: when in-flight runs get cancelled.
    pub(crate) shutdown_deadline: OnceLock<SystemTime>,
    /// Every controller of this manager, for [`Context::manager_status`].
    pub(crate) board: StatusBoard,
}

impl Shared {
    /// How long after sending an acquire or renewal this replica still treats
    /// the lease as its own. Shorter than the TTL, so this replica stops
    /// acting as leader well before the store lets a peer take over.
    fn renew_deadline(&self) -> Duration {
        self.lease_ttl * 2 / 3
    }

    fn renew_every(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// How long after a renewal (or an acquire) the next one falls due: a
    /// third of the TTL, less up to a quarter of that at random. Leases
    /// taken together (a manager's controllers, at its start) would
    /// otherwise be renewed together for as long as they are held: on
    /// SQLite a burst of single writes that every other write queued behind
    /// (fourteen renewals, up to 13 ms, every five seconds), on PostgreSQL
    /// as many pooled connections taken at once. Sooner is always safe.
    fn next_renewal(&self) -> Duration {
        self.renew_every()
            .mul_f64(1.0 - RENEWAL_SPREAD * fastrand::f64())
    }
}

/// The share of [`Shared::renew_every`] over which renewals are spread.
const RENEWAL_SPREAD: f64 = 0.25;

/// How a loop ended.
pub(crate) struct LoopExit {
    pub(crate) stopped_in_time: bool,
}

struct Held {
    lease: Lease,
    renew_at: SystemTime,
    valid_until: SystemTime,
    /// This leadership's term: cancelled when the lease is lost or given back.
    term: CancellationToken,
}

enum Event {
    Finished(RunResult),
    Timer,
    Trigger,
}

pub(crate) struct Driver {
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    rng: fastrand::Rng,
    next_due: SystemTime,
    next_reason: RunReason,
    in_flight: Option<InFlight>,
    /// A run that finished while the loop awaited the lease store: settled
    /// at the loop's next turn.
    ended: Option<(InFlight, RunResult)>,
    held: Option<Held>,
    /// The armed timer and the deadline it fires at.
    timer: Option<(SystemTime, BoxFuture<'static, ()>)>,
    /// Wakes the loop for a trigger or for shutdown. Kept across iterations:
    /// registering a waiter anew on every wake-up costs a lock each time.
    trigger_signal: Pin<Box<OwnedNotified>>,
    pending_trigger: bool,
    failures: u32,
    stopping: bool,
    stopped_in_time: bool,
    /// The term of a controller that is not exclusive: this manager's life.
    unleased_term: CancellationToken,
    /// Work the controller's runs left going (a key's task): stopped with
    /// the term, and waited for at shutdown within the grace.
    tasks: TaskTracker,
}

impl Driver {
    pub(crate) fn new(slot: Arc<Slot>, shared: Arc<Shared>, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let now = shared.clock.now();
        let (next_due, next_reason) = if slot.options.run_on_start {
            (now, RunReason::Start)
        } else {
            let first = spread(slot.interval, slot.options.jitter, rng.f64());
            (now + first, RunReason::Tick)
        };
        let trigger_signal = Box::pin(Arc::clone(&slot.trigger).notified_owned());
        Self {
            slot,
            shared,
            rng,
            next_due,
            next_reason,
            in_flight: None,
            ended: None,
            held: None,
            timer: None,
            trigger_signal,
            pending_trigger: false,
            failures: 0,
            stopping: false,
            stopped_in_time: true,
            unleased_term: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    pub(crate) async fn run(mut self) -> LoopExit {
        loop {
            if let Some((run, result)) = self.ended.take() {
                self.settle(run, result).await;
                continue;
            }
            if self.stopping && self.in_flight.is_none() {
                break;
            }
            self.publish();
            match self.next_event().await {
                Event::Finished(result) => {
                    if let Some(run) = self.in_flight.take() {
                        self.settle(run, result).await;
                    }
                }
                Event::Timer => {
                    self.timer = None;
                    self.on_timer().await;
                }
                Event::Trigger => {
                    self.trigger_signal = Box::pin(Arc::clone(&self.slot.trigger).notified_owned());
                    if self.shared.stop.is_cancelled() {
                        self.stopping = true;
                    } else if self.in_flight.is_some() {
                        self.pending_trigger = true;
                    } else {
                        let now = self.shared.clock.now();
                        self.start_run(now, RunReason::Trigger).await;
                    }
                }
            }
        }
        self.end_tasks().await;
        self.release().await;
        let mut status = self.slot.status.lock().unwrap();
        status.next_run = None;
        status.running = false;
        status.leader = !self.slot.options.exclusive;
        LoopExit {
            stopped_in_time: self.stopped_in_time,
        }
    }

    /// The earliest moment something is due: the shutdown deadline, the
    /// run's timeout, the lease's deadline or renewal, or the next tick.
    fn wake_at(&self) -> Option<SystemTime> {
        let shutdown_at = if self.stopping {
            self.shared.shutdown_deadline.get().copied()
        } else {
            None
        };
        [
            shutdown_at,
            self.in_flight.as_ref().map(|r| r.deadline),
            self.held.as_ref().map(|h| h.valid_until),
            self.held.as_ref().map(|h| h.renew_at),
            (!self.stopping).then_some(self.next_due),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn next_event(&mut self) -> Event {
        // Most runs finish on their first poll: try that before arming a timer
        // for their timeout.
        if let Some(run) = &mut self.in_flight
            && !run.polled
        {
            run.polled = true;
            let mut finished = run.finished();
            if let Poll::Ready(result) =
                poll_fn(|cx| Poll::Ready(Pin::new(&mut finished).poll(cx))).await
            {
                return Event::Finished(result);
            }
        }
        let wake_at = self.wake_at();
        if self.timer.as_ref().map(|(at, _)| *at) != wake_at {
            self.timer = wake_at.map(|at| (at, self.shared.clock.sleep_until(at)));
        }
        let Driver {
            in_flight,
            timer,
            trigger_signal,
            stopping,
            ..
        } = self;
        let finished = async move {
            match in_flight {
                Some(run) => run.finished().await,
                None => pending().await,
            }
        };
        let timer = async move {
            match timer {
                Some((_, sleep)) => sleep.await,
                None => pending().await,
            }
        };
        tokio::select! {
            biased;
            result = finished => Event::Finished(result),
            _ = timer => Event::Timer,
            _ = trigger_signal, if !*stopping => Event::Trigger,
        }
    }

    /// Handles the most urgent deadline that has passed; the loop comes back
    /// at once for any other that is also due.
    async fn on_timer(&mut self) {
        let now = self.shared.clock.now();
        let due = |at: Option<SystemTime>| at.is_some_and(|at| at <= now);
        if self.stopping && due(self.shared.shutdown_deadline.get().copied()) {
            self.stopped_in_time = false;
            self.cancel_run(Outcome::Timeout, "cancelled: shutdown deadline passed");
        } else if due(self.in_flight.as_ref().map(|r| r.deadline)) {
            let message = format!("timed out after {:?}", self.slot.timeout);
            self.cancel_run(Outcome::Timeout, &message);
            self.after_run(Outcome::Timeout).await;
        } else if due(self.held.as_ref().map(|h| h.valid_until)) {
            self.lose_lease("the lease could not be renewed in time");
        } else if due(self.held.as_ref().map(|h| h.renew_at)) {
            self.renew().await;
        } else if !self.stopping && self.next_due <= now {
            self.tick().await;
        }
        // Otherwise the timer fired early (the wall clock stepped back): the
        // loop re-arms it.
    }

    /// Copies the loop's state into the status snapshot.
    fn publish(&self) {
        let mut status = self.slot.status.lock().unwrap();
        status.next_run = (!self.stopping).then_some(self.next_due);
        status.running = self.in_flight.is_some();
        status.tasks = self.tasks.len();
        status.leader = !self.slot.options.exclusive || self.held.is_some();
    }

    async fn tick(&mut self) {
        let due = self.next_due;
        let reason = self.next_reason;
        self.next_due = self.following_tick(due);
        self.next_reason = RunReason::Tick;
        if self.in_flight.is_some() {
            self.slot.metrics.outcome(Outcome::SkippedOverlap).inc();
            debug!(controller = %self.slot.name, "previous run still going; tick skipped");
        } else {
            self.start_run(due, reason).await;
        }
    }

    /// The tick after the one due at `due`, with fresh jitter. Missed ticks
    /// (the process was suspended, the clock jumped) are not replayed.
    fn following_tick(&mut self, due: SystemTime) -> SystemTime {
        let interval = spread(self.slot.interval, self.slot.options.jitter, self.rng.f64());
        let now = self.shared.clock.now();
        let next = due + interval;
        if next > now { next } else { now + interval }
    }

    async fn start_run(&mut self, scheduled_at: SystemTime, reason: RunReason) {
        let fence = if self.slot.options.exclusive {
            match self.ensure_leader().await {
                Some(fence) => Some(fence),
                None => return,
            }
        } else {
            None
        };
        let clock = Arc::clone(&self.shared.clock);
        let started_at = clock.now();
        let cancel = CancellationToken::new();
        let span = info_span!(
            "reconcile",
            controller = %self.slot.name,
            epoch = fence.as_ref().map(|f| f.epoch),
            reason = %reason,
            outcome = field::Empty,
            items = field::Empty,
            duration_ms = field::Empty,
        );
        let term = match &self.held {
            Some(held) => held.term.clone(),
            None => self.unleased_term.clone(),
        };
        let ctx = Context {
            controller: Arc::clone(&self.slot.name),
            cancel: cancel.clone(),
            term,
            tasks: self.tasks.clone(),
            fence,
            clock,
            scheduled_at,
            started_at,
            reason,
            board: Some(self.shared.board.clone()),
        };
        let future = Arc::clone(&self.slot.controller)
            .reconcile_boxed(ctx)
            .instrument(span.clone());
        self.in_flight = Some(InFlight::new(
            future,
            cancel,
            started_at,
            started_at + self.slot.timeout,
            span,
        ));
        self.slot.metrics.running.set(1);
    }

    /// The fence to run under, acquiring the lease if this replica does not
    /// hold it. `None` (counted as `not_leader`) when a peer holds it or the
    /// store cannot say.
    async fn ensure_leader(&mut self) -> Option<Fence> {
        if let Some(held) = &self.held {
            return Some(self.fence(&held.lease));
        }
        let shared = Arc::clone(&self.shared);
        let sent = shared.clock.now();
        let valid_until = sent + shared.renew_deadline();
        let answer = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return None,
            answer = shared.leases.acquire_boxed(&self.slot.name, &shared.holder, shared.lease_ttl) => Some(answer),
            _ = shared.clock.sleep_until(valid_until) => None,
        };
        let lease = match answer {
            Some(Ok(Some(lease))) if shared.clock.now() < valid_until => lease,
            Some(Ok(Some(lease))) => {
                warn!(controller = %self.slot.name, "lease granted too late to use; giving it back");
                release_lease(&self.shared, &self.slot.name, &lease).await;
                self.slot.metrics.outcome(Outcome::NotLeader).inc();
                return None;
            }
            Some(Ok(None)) => {
                debug!(controller = %self.slot.name, "another replica holds the lease");
                self.slot.metrics.outcome(Outcome::NotLeader).inc();
                return None;
            }
            Some(Err(e)) => {
                warn!(controller = %self.slot.name, error = %e, "could not acquire the lease");
                self.slot.metrics.outcome(Outcome::NotLeader).inc();
                return None;
            }
            None => {
                warn!(controller = %self.slot.name, "lease store did not answer in time");
                self.slot.metrics.outcome(Outcome::NotLeader).inc();
                return None;
            }
        };
        info!(controller = %self.slot.name, epoch = lease.epoch, "leadership acquired");
        self.slot.metrics.leader.set(1);
        let fence = self.fence(&lease);
        self.held = Some(Held {
            lease,
            renew_at: sent + shared.next_renewal(),
            valid_until,
            term: CancellationToken::new(),
        });
        Some(fence)
    }

    fn fence(&self, lease: &Lease) -> Fence {
        Fence {
            name: lease.name.clone(),
            epoch: lease.epoch,
        }
    }

    async fn renew(&mut self) {
        let Some(held) = &self.held else { return };
        let shared = Arc::clone(&self.shared);
        let lease = held.lease.clone();
        let valid_until = held.valid_until;
        let sent = shared.clock.now();
        let stopping = self.stopping;
        let renewal = beside_run(
            &mut self.in_flight,
            &mut self.ended,
            shared.leases.renew_boxed(&lease, shared.lease_ttl),
        );
        let answer = tokio::select! {
            biased;
            // A slow store must not hold up shutdown: drain now, and renew
            // (without this branch) while draining.
            _ = shared.stop.cancelled(), if !stopping => None,
            answer = renewal => Some(Some(answer)),
            _ = shared.clock.sleep_until(valid_until) => Some(None),
        };
        let Some(answer) = answer else {
            self.stopping = true;
            return;
        };
        match answer {
            Some(Ok(Some(renewed))) if renewed.epoch == lease.epoch => {
                if let Some(held) = &mut self.held {
                    held.lease = renewed;
                    held.renew_at = sent + shared.next_renewal();
                    held.valid_until = sent + shared.renew_deadline();
                }
            }
            Some(Ok(_)) => self.lose_lease("another replica took the lease"),
            Some(Err(e)) => {
                warn!(controller = %self.slot.name, error = %e, "lease renewal failed; retrying");
                // Retry soon, but the lease deadline still applies.
                let retry = shared.clock.now() + (shared.renew_every() / 4);
                if let Some(held) = &mut self.held {
                    held.renew_at = retry.min(held.valid_until);
                }
            }
            None => self.lose_lease("the lease store did not answer before the lease ran out"),
        }
    }

    /// Steps down: this replica no longer leads, and its in-flight run (whose
    /// writes the store would now refuse) is cancelled.
    fn lose_lease(&mut self, why: &str) {
        let Some(held) = self.held.take() else { return };
        held.term.cancel();
        self.slot.metrics.leader.set(0);
        // A trigger asked this replica, as leader, for a run it may no longer make.
        self.pending_trigger = false;
        warn!(controller = %self.slot.name, epoch = held.lease.epoch, reason = why, "leadership lost");
        self.cancel_run(Outcome::NotLeader, &format!("leadership lost: {why}"));
    }

    /// Fires the run's cancellation, drops it, and records `outcome`.
    fn cancel_run(&mut self, outcome: Outcome, message: &str) {
        if let Some(run) = self.in_flight.take() {
            run.cancel.cancel();
            self.record(&run, outcome, 0, Some(message.to_owned()));
        }
    }

    /// Records a run that ended by itself, then schedules what follows.
    async fn settle(&mut self, run: InFlight, result: RunResult) {
        let again = match &result {
            Ok(Ok(done)) => done.again,
            _ => None,
        };
        let (outcome, items, message) = classify(result);
        self.record(&run, outcome, items, message);
        if let Some(delay) = again {
            let at = self.shared.clock.now() + delay;
            if at < self.next_due {
                self.next_due = at;
                self.next_reason = RunReason::Again;
            }
        }
        self.after_run(outcome).await;
        self.share_status().await;
    }

    /// As leader, tells the other replicas how the run went and when the
    /// next is due, so any of them can show it. Bounded like a release: a
    /// slow store delays the next status, not the loop.
    async fn share_status(&mut self) {
        let Some(held) = &self.held else { return };
        self.publish();
        let status = self.slot.status.lock().unwrap().clone();
        let shared = &self.shared;
        let limit = shared.clock.now() + shared.renew_every();
        tokio::select! {
            result = shared.leases.publish_boxed(&held.lease, &status) => {
                if let Err(e) = result {
                    warn!(controller = %self.slot.name, error = %e, "could not share the controller's status");
                }
            }
            _ = shared.clock.sleep_until(limit) => {
                warn!(controller = %self.slot.name, "sharing the controller's status timed out");
            }
        }
    }

    fn record(&mut self, run: &InFlight, outcome: Outcome, items: u64, message: Option<String>) {
        let now = self.shared.clock.now();
        let duration = now.duration_since(run.started_at).unwrap_or_default();
        let metrics = &self.slot.metrics;
        metrics.outcome(outcome).inc();
        metrics.duration.observe(duration.as_secs_f64());
        metrics.running.set(0);
        if outcome == Outcome::Success {
            self.failures = 0;
            metrics.items.inc_by(items);
            metrics.last_success.set(unix_seconds(now));
        } else if outcome.is_failure() {
            self.failures = self.failures.saturating_add(1);
        }

        let span = &run.span;
        span.record("outcome", outcome.as_str());
        span.record("items", items);
        span.record(
            "duration_ms",
            u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        );
        match (&message, outcome.is_failure()) {
            (Some(error), true) => error!(
                parent: span,
                controller = %self.slot.name,
                %outcome,
                error,
                consecutive_failures = self.failures,
                "reconcile failed"
            ),
            _ => debug!(parent: span, %outcome, items, "reconcile finished"),
        }

        let mut status = self.slot.status.lock().unwrap();
        if outcome == Outcome::Success {
            status.last_success_at = Some(now);
        }
        status.consecutive_failures = self.failures;
        status.last_run = Some(LastRun {
            started_at: run.started_at,
            duration,
            outcome,
            items,
            error: message,
        });
    }

    /// What follows a run: a sooner retry after a failure, then the trigger
    /// that arrived while it ran. Not after a lost lease: the run stopped
    /// because it may not go on here.
    async fn after_run(&mut self, outcome: Outcome) {
        if self.stopping {
            return;
        }
        if outcome.is_failure() {
            let delay = Backoff::new(RETRY_INITIAL)
                .max_delay(self.slot.interval)
                .delay(self.failures);
            let retry = self.shared.clock.now() + delay;
            if retry < self.next_due {
                self.next_due = retry;
                self.next_reason = RunReason::Retry;
            }
        }
        if std::mem::take(&mut self.pending_trigger) {
            let now = self.shared.clock.now();
            self.start_run(now, RunReason::Trigger).await;
        }
    }

    /// Ends the term and waits, until the shutdown deadline, for the work
    /// the runs left going to stop: under the lease still held, so its last
    /// writes (a final flush, a checkpoint) are not refused.
    async fn end_tasks(&mut self) {
        self.unleased_term.cancel();
        if let Some(held) = &self.held {
            held.term.cancel();
        }
        self.tasks.close();
        if self.tasks.is_empty() {
            return;
        }
        let clock = Arc::clone(&self.shared.clock);
        let deadline = self.shared.shutdown_deadline.get().copied();
        tokio::select! {
            () = self.tasks.wait() => {}
            () = async {
                match deadline {
                    Some(at) => clock.sleep_until(at).await,
                    None => pending().await,
                }
            } => {
                self.stopped_in_time = false;
                warn!(controller = %self.slot.name, tasks = self.tasks.len(),
                    "tasks still stopping at the shutdown deadline; left behind");
            }
        }
    }

    async fn release(&mut self) {
        if let Some(held) = self.held.take() {
            release_lease(&self.shared, &self.slot.name, &held.lease).await;
            self.slot.metrics.leader.set(0);
            info!(controller = %self.slot.name, epoch = held.lease.epoch, "leadership released");
        }
    }
}

/// Awaits `work` (a call to the lease store) while the run in flight goes on.
/// Only this loop polls the run: left unpolled while the loop awaited a
/// renewal, a run holding what the store needed for it (SQLite's one write
/// connection, a lock on its lease's row) held it until the lease ran out,
/// and the leader stepped down with a healthy store. A run that ends
/// meanwhile is moved to `ended`, for the loop to settle.
async fn beside_run<T>(
    in_flight: &mut Option<InFlight>,
    ended: &mut Option<(InFlight, RunResult)>,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let result = match in_flight.as_mut() {
        None => return work.await,
        Some(run) => {
            run.polled = true;
            tokio::select! {
                biased;
                out = &mut work => return out,
                result = run.finished() => result,
            }
        }
    };
    *ended = in_flight.take().map(|run| (run, result));
    work.await
}

/// Gives a lease back, bounded in time: a store that does not answer leaves
/// the lease to expire.
async fn release_lease(shared: &Shared, controller: &str, lease: &Lease) {
    let limit = shared.clock.now() + shared.renew_every();
    tokio::select! {
        result = shared.leases.release_boxed(lease) => {
            if let Err(e) = result {
                warn!(controller, error = %e, "could not release the lease; it will expire");
            }
        }
        _ = shared.clock.sleep_until(limit) => {
            warn!(controller, "lease release timed out; it will expire");
        }
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
