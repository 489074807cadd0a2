//! Keyed controllers: reconcile one object at a time, by key, as changes
//! arrive (Kubernetes' controller-runtime and kube-runtime's
//! `Controller::run`), beside the periodic sweeps.
//!
//! A keyed controller runs as a periodic controller of the manager whose
//! run drains its [`WorkQueue`]: so it has the same lease, fencing, panic
//! isolation, status, metrics and dry run. Changes go in through a
//! [`KeyHandle`], which also tells the manager to run; each run reconciles
//! the keys that are due, `concurrency` at a time, and asks to run again
//! when the next waiting key is due. Every interval (the resync) and
//! whenever this replica becomes leader, [`Reconciler::keys`] lists every
//! key and all are reconciled: a change missed while another replica led,
//! or while none did, is caught then.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{Instrument, error, info_span};

use crate::metrics::KeyMetrics;
use crate::work_queue::WorkQueue;
use crate::{Backoff, BoxError, Clock, Context, Controller, Plan, PlannedChange, Reconciled};

/// What a reconcile of one key asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the key changes again (or the next resync).
    Done,
    /// Reconcile the key again after this long, change or not (a
    /// certificate to renew in a day, a rollout to look at in a minute).
    RequeueAfter(Duration),
}

/// Reconciles objects by key. One key is never reconciled twice at once;
/// a key that changes during its reconcile is reconciled again after it.
pub trait Reconciler: Send + Sync + 'static {
    /// What names an object.
    type Key: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static;

    /// Stable, unique name (lease, metrics, logs, status).
    fn name(&self) -> &str;

    /// How often every key is reconciled even without a change: the
    /// resync, a level-triggered safety net under the change events.
    fn resync(&self) -> Duration;

    /// Every key that exists now; reconciled at each resync and whenever
    /// this replica becomes leader. The default lists none (changes only).
    fn keys(&self, ctx: &Context) -> impl Future<Output = Result<Vec<Self::Key>, BoxError>> + Send {
        let _ = ctx;
        async { Ok(Vec::new()) }
    }

    /// What a run would change now (a dry run), if the reconciler can say
    /// better than its queue; the default (`None`) shows the keys waiting.
    fn plan(&self, ctx: &Context) -> impl Future<Output = Result<Option<Plan>, BoxError>> + Send {
        let _ = ctx;
        async { Ok(None) }
    }

    /// Moves one object towards its desired state. Idempotent; should stop
    /// early when [`Context::cancelled`] fires and pass
    /// [`Context::fence`] to every write.
    fn reconcile(
        &self,
        key: Self::Key,
        ctx: Context,
    ) -> impl Future<Output = Result<Action, BoxError>> + Send;
}

/// How a keyed controller works its keys.
#[derive(Debug, Clone)]
pub struct KeyedOptions {
    pub(crate) concurrency: usize,
    pub(crate) debounce: Duration,
    pub(crate) backoff: Backoff,
}

impl Default for KeyedOptions {
    /// 4 keys at once, no debounce, retries after 1 s doubling to 5 min.
    fn default() -> Self {
        Self {
            concurrency: 4,
            debounce: Duration::ZERO,
            backoff: Backoff::new(Duration::from_secs(1)).max_delay(Duration::from_secs(300)),
        }
    }
}

impl KeyedOptions {
    /// How many keys are reconciled at once (at least 1).
    pub fn concurrency(mut self, keys: usize) -> Self {
        self.concurrency = keys.max(1);
        self
    }

    /// Reconcile a key only once it has been quiet this long: a burst of
    /// changes to one object is one reconcile.
    pub fn debounce(mut self, quiet: Duration) -> Self {
        self.debounce = quiet;
        self
    }

    /// Delays before a failed key is tried again, by its consecutive
    /// failures; a success resets them.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

/// Puts keys in a keyed controller's queue. Cheap to clone.
pub struct KeyHandle<K> {
    queue: Arc<WorkQueue<K>>,
    trigger: Arc<Notify>,
    clock: Arc<dyn Clock>,
}

impl<K> Clone for KeyHandle<K> {
    fn clone(&self) -> Self {
        Self {
            queue: Arc::clone(&self.queue),
            trigger: Arc::clone(&self.trigger),
            clock: Arc::clone(&self.clock),
        }
    }
}

impl<K> fmt::Debug for KeyHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHandle").finish_non_exhaustive()
    }
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> KeyHandle<K> {
    /// `key` changed: reconcile it (once, however often it is told, and
    /// after the debounce if there is one).
    pub fn enqueue(&self, key: K) {
        self.queue.changed(key, self.clock.now());
        self.trigger.notify_one();
    }

    /// Enqueues every key received on `changes` until it closes: the feed
    /// of a channel of change events.
    pub fn feed(&self, mut changes: tokio::sync::mpsc::Receiver<K>) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        tokio::spawn(async move {
            while let Some(key) = changes.recv().await {
                handle.enqueue(key);
            }
        })
    }

    /// Keys waiting and keys being reconciled now.
    pub fn depth(&self) -> (usize, usize) {
        self.queue.depth()
    }
}

/// A [`Reconciler`] as the manager runs it.
pub(crate) struct Keyed<R: Reconciler> {
    reconciler: Arc<R>,
    queue: Arc<WorkQueue<R::Key>>,
    options: KeyedOptions,
    metrics: KeyMetrics,
    /// The epoch of the lease the last run held: a new one means this
    /// replica has just become leader, and every key is listed again.
    last_epoch: Mutex<Option<Option<u64>>>,
    /// Consecutive failures by key.
    failures: Mutex<HashMap<R::Key, u32>>,
    /// The controller's status, where the queue's counts are shown; set
    /// once the manager has registered it.
    status: Arc<OnceLock<Arc<Mutex<crate::ControllerStatus>>>>,
}

impl<R: Reconciler> Keyed<R> {
    pub(crate) fn new(
        reconciler: R,
        options: KeyedOptions,
        metrics: KeyMetrics,
        trigger: Arc<Notify>,
        clock: Arc<dyn Clock>,
        status: Arc<OnceLock<Arc<Mutex<crate::ControllerStatus>>>>,
    ) -> (Self, KeyHandle<R::Key>) {
        let queue = Arc::new(WorkQueue::new(options.debounce));
        let handle = KeyHandle {
            queue: Arc::clone(&queue),
            trigger,
            clock,
        };
        let keyed = Self {
            reconciler: Arc::new(reconciler),
            queue,
            options,
            metrics,
            last_epoch: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
            status,
        };
        (keyed, handle)
    }

    fn publish_depth(&self) {
        let (waiting, active) = self.queue.depth();
        self.metrics
            .queued
            .set(i64::try_from(waiting + active).unwrap_or(i64::MAX));
        if let Some(status) = self.status.get() {
            status.lock().unwrap().keys = Some(crate::KeyCounts { waiting, active });
        }
    }

    /// Records how `key`'s reconcile ended and when it comes back.
    fn settle(&self, key: &R::Key, outcome: Result<Action, String>, now: SystemTime) {
        let again = match outcome {
            Ok(action) => {
                self.failures.lock().unwrap().remove(key);
                match action {
                    Action::Done => None,
                    Action::RequeueAfter(d) => Some(now + d),
                }
            }
            Err(message) => {
                let failures = {
                    let mut all = self.failures.lock().unwrap();
                    let n = all.entry(key.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                    *n
                };
                self.metrics.retries.inc();
                error!(
                    controller = self.reconciler.name(),
                    key = ?key,
                    consecutive_failures = failures,
                    error = message,
                    "reconcile of a key failed"
                );
                Some(now + self.options.backoff.delay(failures))
            }
        };
        self.queue.finished(key, now, again);
    }
}

/// Keys handed to reconciles of a run; given back to the queue if the run
/// is dropped before they finish (cancelled by a timeout, a lost lease or
/// shutdown), so the next run (on whichever replica leads) has them.
struct Taken<'a, K: Clone + Eq + Hash> {
    queue: &'a WorkQueue<K>,
    clock: Arc<dyn Clock>,
    keys: HashMap<tokio::task::Id, K>,
}

impl<K: Clone + Eq + Hash> Drop for Taken<'_, K> {
    fn drop(&mut self) {
        if !self.keys.is_empty() {
            let now = self.clock.now();
            self.queue.put_back(self.keys.drain().map(|(_, k)| k), now);
        }
    }
}

impl<R: Reconciler> Controller for Keyed<R> {
    fn name(&self) -> &str {
        self.reconciler.name()
    }

    fn interval(&self) -> Duration {
        self.reconciler.resync()
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let epoch = ctx.epoch();
        let new_leader = self.last_epoch.lock().unwrap().replace(epoch) != Some(epoch);
        let resync = new_leader
            || matches!(
                ctx.reason(),
                crate::RunReason::Start | crate::RunReason::Tick
            );
        if resync {
            let now = ctx.now();
            for key in self.reconciler.keys(&ctx).await? {
                self.queue.changed(key, now);
            }
        }
        let mut running: JoinSet<(Result<Action, BoxError>, SystemTime)> = JoinSet::new();
        let mut taken = Taken {
            queue: &self.queue,
            clock: Arc::clone(ctx.clock()),
            keys: HashMap::new(),
        };
        let mut done = 0u64;
        loop {
            if ctx.is_cancelled() {
                // The run is over; what it had taken goes back (`Taken`).
                return Err("cancelled before its keys were reconciled".into());
            }
            let free = self.options.concurrency.saturating_sub(running.len());
            for key in self.queue.take(ctx.now(), free) {
                let reconciler = Arc::clone(&self.reconciler);
                let key_ctx = ctx.clone();
                let span = info_span!("reconcile_key", controller = reconciler.name(), key = ?key);
                let started = ctx.now();
                let k = key.clone();
                let task = running.spawn(
                    async move { (reconciler.reconcile(k, key_ctx).await, started) }
                        .instrument(span),
                );
                taken.keys.insert(task.id(), key);
            }
            self.publish_depth();
            if running.is_empty() {
                let reconciled = Reconciled::items(done);
                return Ok(match self.queue.next_due() {
                    Some(at) => reconciled
                        .again_after(at.duration_since(ctx.now()).unwrap_or(Duration::ZERO)),
                    None => reconciled,
                });
            }
            // With every slot taken, a due key waits for a reconcile to end:
            // neither a new key nor a due time can start anything.
            let room = running.len() < self.options.concurrency;
            let next_due = self.queue.next_due().filter(|_| room);
            let clock = Arc::clone(ctx.clock());
            tokio::select! {
                finished = running.join_next_with_id() => {
                    let Some(finished) = finished else { continue };
                    let now = ctx.now();
                    let (id, outcome) = match finished {
                        Ok((id, (result, started))) => {
                            let took = now.duration_since(started).unwrap_or_default();
                            self.metrics.duration.observe(took.as_secs_f64());
                            (id, result.map_err(|e| crate::run::error_chain(&*e)))
                        }
                        Err(e) => {
                            let id = e.id();
                            let message = if e.is_panic() {
                                crate::run::panic_message(&*e.into_panic())
                            } else {
                                "the reconcile was aborted".to_owned()
                            };
                            (id, Err(message))
                        }
                    };
                    if let Some(key) = taken.keys.remove(&id) {
                        if outcome.is_ok() {
                            done += 1;
                        }
                        self.settle(&key, outcome, now);
                    }
                }
                () = self.queue.added.notified(), if room => {}
                () = async {
                    match next_due {
                        Some(at) => clock.sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = ctx.cancelled() => {}
            }
        }
    }

    async fn plan(&self, ctx: Context) -> Result<Plan, BoxError> {
        if let Some(plan) = self.reconciler.plan(&ctx).await? {
            return Ok(plan);
        }
        let (waiting, active) = self.queue.depth();
        let items = self
            .queue
            .waiting(20)
            .into_iter()
            .map(|(key, _)| PlannedChange {
                subject: format!("{key:?}"),
                from: "queued".into(),
                to: "reconciled".into(),
                why: if self.failures.lock().unwrap().contains_key(&key) {
                    "retry after a failure".into()
                } else {
                    "changed or due".into()
                },
            })
            .collect();
        Ok(Plan {
            count: waiting as u64,
            items,
            note: (active > 0).then(|| format!("{active} keys being reconciled now")),
        })
    }
}
