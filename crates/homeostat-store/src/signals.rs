//! Wake-ups for claims that wait for work (long polls), targeted: jobs
//! queued on a queue wake about as many waiting claims as there are jobs
//! (counting each claim's capacity), oldest waiter first, and only claims
//! that may take them (the jobs' tenant's agents, or platform agents, waiting
//! on that queue). A fleet of idle agents costs an enqueue nothing but the
//! claims it wakes.
//!
//! On SQLite the store's own operations wake in-process. On PostgreSQL the
//! replica that queues jobs wakes its own waiters first and announces only
//! the shortfall to the other replicas (`NOTIFY`, in the enqueue's own
//! statement where it can be), whose one listener connection each relays it
//! to their waiters: an enqueue of k jobs wakes about k claims across all
//! replicas, not k on each.
//!
//! A wake-up is a hint, never a promise: the woken claim runs and may find
//! nothing (another agent was faster), and is counted then
//! (`homeostat_claims_total{outcome="empty"}`). A missed one only delays a
//! claim until its wait runs out, so whenever wake-ups may have been lost
//! (the listener connection dropped) everyone is woken.
//!
//! Where the jobs are known by name (those this replica enqueues), a
//! wake-up names them, and claims keep the names current: a claim that
//! takes a job named to a woken claim that has not looked yet withdraws
//! it, and a woken claim all of whose jobs were taken so does not look
//! (see [`Look`]). Agents that come back for more on their own (a long
//! poll begun anew, a claim after a completion) take most new jobs in a
//! large fleet before the claims woken for them run; without names, each
//! such job cost a claim that found nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use homeostat_model::{Enqueued, JobId, JobState, NewJob, TenantId};
use jiff::Timestamp;
use tokio::sync::oneshot;

/// The `NOTIFY` channel; the payload is [`Shortfall::payload`] or
/// [`ANY_QUEUE`].
#[cfg(feature = "postgres")]
pub(crate) const CHANNEL: &str = "homeostat_queued";
/// Wakes every waiter, whatever its queues.
pub(crate) const ANY_QUEUE: &str = "*";
/// While the listener connection is down, waiters are woken this often
/// (a slow poll) so that no claim waits out its whole long poll.
#[cfg(feature = "postgres")]
pub(crate) const FALLBACK_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a waiter was woken.
#[derive(Debug, Clone)]
enum Wake {
    /// A job of this tenant was queued on this queue.
    Queued { tenant: TenantId, queue: Arc<str> },
    /// Anything may have been queued (wake-ups may have been lost).
    Any,
}

/// One waiting claim.
#[derive(Debug)]
struct Entry {
    id: u64,
    tenant: Option<TenantId>,
    queues: Vec<String>,
    capacity: u32,
    tx: oneshot::Sender<Wake>,
}

/// The jobs named to a woken claim that has not looked yet.
#[derive(Debug)]
struct Promise {
    tenant: TenantId,
    queue: Arc<str>,
    jobs: Vec<JobId>,
}

/// The waiting claims, by queue and tenant (`None`: platform agents, which
/// take every tenant's jobs), each set in the order they started waiting;
/// and the woken claims that have not looked yet, with the jobs named to
/// them.
#[derive(Debug, Default)]
struct Registry {
    next: u64,
    by_queue: HashMap<(String, Option<TenantId>), BTreeSet<u64>>,
    waiters: HashMap<u64, Entry>,
    /// By woken claim. A promise left with no jobs is a withdrawn wake-up.
    promises: HashMap<u64, Promise>,
    /// Each named job, to the claim it is named to.
    promised: HashMap<JobId, u64>,
}

impl Registry {
    fn promise(&mut self, claim: u64, promise: Promise) {
        for job in &promise.jobs {
            self.promised.insert(*job, claim);
        }
        self.promises.insert(claim, promise);
    }

    /// The promise of `claim`, taken out with its names.
    fn unpromise(&mut self, claim: u64) -> Option<Promise> {
        let promise = self.promises.remove(&claim)?;
        for job in &promise.jobs {
            self.promised.remove(job);
        }
        Some(promise)
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.waiters.remove(&id)?;
        for queue in &entry.queues {
            let key = (queue.clone(), entry.tenant);
            if let Some(set) = self.by_queue.get_mut(&key) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_queue.remove(&key);
                }
            }
        }
        Some(entry)
    }

    /// Takes the oldest waiters that may claim `tenant`'s jobs on `queue`
    /// until their capacities cover `jobs`.
    fn take(&mut self, tenant: TenantId, queue: &str, jobs: u32) -> (Vec<Entry>, u32) {
        let mut taken = Vec::new();
        let mut left = jobs;
        while left > 0 {
            let first = |key: &(String, Option<TenantId>)| {
                self.by_queue.get(key).and_then(|s| s.first().copied())
            };
            let own = first(&(queue.to_owned(), Some(tenant)));
            let platform = first(&(queue.to_owned(), None));
            let Some(id) = own.into_iter().chain(platform).min() else {
                break;
            };
            let entry = self.remove(id).expect("a listed waiter is registered");
            left = left.saturating_sub(entry.capacity.max(1));
            taken.push(entry);
        }
        (taken, left)
    }
}

/// The wake-ups of one store (one replica).
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    registry: Arc<Mutex<Registry>>,
    /// This replica, in its announcements, so that it ignores its own.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    origin: u64,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            registry: Arc::default(),
            origin: homeostat_model::new_id().as_u64_pair().1,
        }
    }
}

/// Jobs queued on one tenant's queue that this replica's waiters did not
/// cover: announced to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shortfall {
    pub(crate) tenant: TenantId,
    pub(crate) queue: String,
    pub(crate) jobs: u32,
}

impl Shortfall {
    /// The `NOTIFY` payload: origin, count, tenant, queue (last: a queue
    /// name may hold spaces).
    pub(crate) fn payload(&self, origin: u64) -> String {
        format!("{origin:x} {} {} {}", self.jobs, self.tenant, self.queue)
    }
}

/// Waiters taken for jobs about to be queued; woken when this is fired or
/// dropped (after the commit, or after a failure: a spurious wake-up is
/// harmless, a lost one is not).
#[derive(Debug)]
pub(crate) struct Reserved {
    signals: Signals,
    woken: Vec<(Entry, Wake)>,
    /// The queued jobs by name, by queue, once known: named to the waiters
    /// in turn, as many to each as it claims at once.
    names: Vec<(Arc<str>, Vec<JobId>)>,
    pub(crate) shortfall: Vec<Shortfall>,
}

impl Reserved {
    /// Names the jobs of `enqueued` that were queued (not deduplicated,
    /// not scheduled for later) to the waiters woken for them.
    pub(crate) fn name(&mut self, jobs: &[NewJob], enqueued: &[Enqueued], now: Timestamp) {
        for (job, done) in jobs.iter().zip(enqueued) {
            if done.deduplicated || job.initial_state(now) != JobState::Queued {
                continue;
            }
            match self.names.iter_mut().find(|(q, _)| **q == *job.queue) {
                Some((_, ids)) => ids.push(done.id),
                None => self
                    .names
                    .push((Arc::from(job.queue.as_str()), vec![done.id])),
            }
        }
    }

    /// Which of `jobs` the reserved waiters are woken for: on each queue,
    /// the first jobs queued at once, as many as their capacities cover.
    pub(crate) fn covers(&self, jobs: &[NewJob], now: Timestamp) -> Vec<bool> {
        let mut room: Vec<(&str, u32)> = Vec::new();
        for (entry, wake) in &self.woken {
            let Wake::Queued { queue, .. } = wake else {
                continue;
            };
            let capacity = entry.capacity.max(1);
            match room.iter_mut().find(|(q, _)| *q == &**queue) {
                Some((_, n)) => *n = n.saturating_add(capacity),
                None => room.push((queue, capacity)),
            }
        }
        jobs.iter()
            .map(|job| {
                job.initial_state(now) == JobState::Queued
                    && room
                        .iter_mut()
                        .find(|(q, _)| *q == job.queue)
                        .is_some_and(|(_, n)| n.checked_sub(1).map(|left| *n = left).is_some())
            })
            .collect()
    }

    /// Wakes the reserved waiters.
    pub(crate) fn fire(self) {
        drop(self);
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let woken = std::mem::take(&mut self.woken);
        if !self.names.is_empty() {
            let mut reg = self.signals.registry.lock().unwrap();
            for (entry, wake) in &woken {
                let Wake::Queued { tenant, queue } = wake else {
                    continue;
                };
                let Some((_, ids)) = self.names.iter_mut().find(|(q, _)| q == queue) else {
                    continue;
                };
                let n = ids.len().min(entry.capacity.max(1) as usize);
                let jobs: Vec<JobId> = ids.drain(..n).collect();
                if !jobs.is_empty() {
                    let (tenant, queue) = (*tenant, queue.clone());
                    reg.promise(
                        entry.id,
                        Promise {
                            tenant,
                            queue,
                            jobs,
                        },
                    );
                }
            }
        }
        for (entry, wake) in woken {
            if entry.tx.send(wake).is_err() {
                // Gone meanwhile (its `Drop` found it neither waiting nor
                // promised): its jobs go to the next waiter.
                let promise = self.signals.registry.lock().unwrap().unpromise(entry.id);
                if let Some(promise) = promise {
                    self.signals.hand_on(promise);
                }
            }
        }
    }
}

/// Jobs of `jobs` that will be queued at once, by queue.
pub(crate) fn queued_by_queue(jobs: &[NewJob], now: Timestamp) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for job in jobs
        .iter()
        .filter(|j| j.initial_state(now) == JobState::Queued)
    {
        match out.iter_mut().find(|(q, _)| *q == job.queue) {
            Some((_, n)) => *n += 1,
            None => out.push((job.queue.clone(), 1)),
        }
    }
    out
}

impl Signals {
    /// The announcements of `shortfall` to the other replicas.
    pub(crate) fn payloads(&self, shortfall: &[Shortfall]) -> Vec<String> {
        shortfall.iter().map(|s| s.payload(self.origin)).collect()
    }

    /// A claim of up to `capacity` jobs that waits on `queues` for jobs of
    /// `tenant` (`None`: any tenant's, a platform agent).
    pub(crate) fn waiter(
        &self,
        tenant: Option<TenantId>,
        queues: &[String],
        capacity: u32,
    ) -> QueueWaiter {
        let (tx, rx) = oneshot::channel();
        let mut reg = self.registry.lock().unwrap();
        let id = reg.next;
        reg.next += 1;
        for queue in queues {
            reg.by_queue
                .entry((queue.clone(), tenant))
                .or_default()
                .insert(id);
        }
        reg.waiters.insert(
            id,
            Entry {
                id,
                tenant,
                queues: queues.to_vec(),
                capacity,
                tx,
            },
        );
        QueueWaiter {
            id,
            rx: Some(rx),
            signals: self.clone(),
        }
    }

    /// Takes waiters for `jobs` jobs of `tenant` queued on each queue of
    /// `queued`; what they do not cover is the shortfall.
    pub(crate) fn reserve(&self, tenant: TenantId, queued: &[(String, u32)]) -> Reserved {
        let mut reserved = Reserved {
            signals: self.clone(),
            woken: Vec::new(),
            names: Vec::new(),
            shortfall: Vec::new(),
        };
        let mut reg = self.registry.lock().unwrap();
        for (queue, jobs) in queued {
            let (taken, left) = reg.take(tenant, queue, *jobs);
            let wake = Wake::Queued {
                tenant,
                queue: Arc::from(queue.as_str()),
            };
            reserved
                .woken
                .extend(taken.into_iter().map(|e| (e, wake.clone())));
            if left > 0 {
                reserved.shortfall.push(Shortfall {
                    tenant,
                    queue: queue.clone(),
                    jobs: left,
                });
            }
        }
        reserved
    }

    /// Wakes waiters for jobs already queued; returns what they did not
    /// cover.
    pub(crate) fn wake(&self, tenant: TenantId, queued: &[(String, u32)]) -> Vec<Shortfall> {
        let mut reserved = self.reserve(tenant, queued);
        let shortfall = std::mem::take(&mut reserved.shortfall);
        reserved.fire();
        shortfall
    }

    /// Wakes waiters for the jobs of `promise`, which its claim will not
    /// look for, naming them again. Jobs no waiter here covers stay queued
    /// for the next claim.
    fn hand_on(&self, promise: Promise) {
        let queue = promise.queue.to_string();
        let n = u32::try_from(promise.jobs.len()).unwrap_or(u32::MAX);
        let mut reserved = self.reserve(promise.tenant, &[(queue, n)]);
        reserved.names.push((promise.queue, promise.jobs));
        reserved.fire();
    }

    /// Wakes every waiter.
    pub(crate) fn any(&self) {
        let entries: Vec<Entry> = {
            let mut reg = self.registry.lock().unwrap();
            reg.by_queue.clear();
            reg.waiters.drain().map(|(_, e)| e).collect()
        };
        for entry in entries {
            let _ = entry.tx.send(Wake::Any);
        }
    }

    /// Relays an announcement heard from another replica (or from this one,
    /// which it ignores: it woke its own waiters already).
    pub(crate) fn heard(&self, payload: &str) {
        if payload == ANY_QUEUE {
            return self.any();
        }
        let mut parts = payload.splitn(4, ' ');
        let parsed = (|| {
            let origin = u64::from_str_radix(parts.next()?, 16).ok()?;
            let jobs: u32 = parts.next()?.parse().ok()?;
            let tenant: TenantId = parts.next()?.parse().ok()?;
            Some((origin, jobs, tenant, parts.next()?.to_owned()))
        })();
        match parsed {
            Some((origin, _, _, _)) if origin == self.origin => {}
            Some((_, jobs, tenant, queue)) => {
                self.wake(tenant, &[(queue, jobs)]);
            }
            // Another version's announcement: wake everyone rather than
            // miss it.
            None => self.any(),
        }
    }

    /// How many claims wait now.
    pub(crate) fn waiting(&self) -> usize {
        self.registry.lock().unwrap().waiters.len()
    }
}

/// Wakes this replica's waiting claims for jobs of `tenant` already queued
/// (committed), and tells the other replicas of what they did not cover.
pub(crate) async fn wake<B: crate::backend::Backend>(
    b: &B,
    signals: &Signals,
    tenant: TenantId,
    queued: &[(String, u32)],
) {
    if queued.is_empty() {
        return;
    }
    let shortfall = signals.wake(tenant, queued);
    b.announce(&signals.payloads(&shortfall)).await;
}

/// [`wake`] for jobs of several tenants: `(tenant, queue, how many)`.
pub(crate) async fn wake_all<B: crate::backend::Backend>(
    b: &B,
    signals: &Signals,
    queued: &[(TenantId, String, u32)],
) {
    let mut by_tenant: std::collections::BTreeMap<TenantId, Vec<(String, u32)>> =
        std::collections::BTreeMap::new();
    for (tenant, queue, n) in queued {
        by_tenant
            .entry(*tenant)
            .or_default()
            .push((queue.clone(), *n));
    }
    for (tenant, queued) in by_tenant {
        wake(b, signals, tenant, &queued).await;
    }
}

/// Enqueues `jobs` through the backend's tuned insert: this replica's
/// waiting claims are taken for them first and woken once they are
/// committed (or the insert failed: a spurious wake-up is harmless, a lost
/// one is not); the other replicas hear of the rest.
pub(crate) async fn enqueue<B: crate::backend::Backend>(
    b: &B,
    signals: &Signals,
    tenant: TenantId,
    jobs: &[NewJob],
) -> Result<Vec<crate::Enqueued>, crate::StoreError> {
    let now = b.now();
    let mut reserved = signals.reserve(tenant, &queued_by_queue(jobs, now));
    let announce = signals.payloads(&reserved.shortfall);
    let promised = reserved.covers(jobs, now);
    let enqueued = b.enqueue_batch(tenant, jobs, &announce, &promised).await;
    if let Ok(enqueued) = &enqueued {
        reserved.name(jobs, enqueued, now);
    }
    reserved.fire();
    enqueued
}

/// A claim waiting for jobs on its queues. Take it *before* looking for
/// work, so a job queued between the look and the wait still wakes it.
#[derive(Debug)]
pub struct QueueWaiter {
    id: u64,
    rx: Option<oneshot::Receiver<Wake>>,
    signals: Signals,
}

impl QueueWaiter {
    /// Returns when a job may have been queued on one of its queues.
    pub async fn changed(&mut self) {
        let Some(rx) = self.rx.as_mut() else {
            // Woken already.
            return;
        };
        let _ = rx.await;
        self.rx = None;
    }
}

impl Drop for QueueWaiter {
    fn drop(&mut self) {
        let (registered, promise) = {
            let mut reg = self.signals.registry.lock().unwrap();
            let registered = reg.remove(self.id).is_some();
            (registered, reg.unpromise(self.id))
        };
        if registered {
            return;
        }
        // Woken but gone before it looked (its client went away): hand the
        // wake-up on, so that the job it was for still wakes a claim.
        if let Some(promise) = promise {
            if !promise.jobs.is_empty() {
                self.signals.hand_on(promise);
            }
            return;
        }
        if let Some(Ok(Wake::Queued { tenant, queue })) = self.rx.as_mut().map(|rx| rx.try_recv()) {
            self.signals.wake(tenant, &[(queue.to_string(), 1)]);
        }
    }
}

/// A claim's part in the wake-ups, around its one look for jobs.
///
/// A claim woken for named jobs, all of which other claims have taken
/// since, does not look: it would find nothing. A claim that takes jobs
/// named to a woken claim that has not looked yet withdraws them from it;
/// a woken claim that filled up on other jobs than its own hands its own on
/// to the next waiter (they are still queued), and so does one that failed.
///
/// The backends open it and report what was taken on the connection the
/// claim runs on, before another claim may have it: on SQLite's one
/// writer the names are then exact.
#[derive(Debug)]
pub(crate) struct Look {
    signals: Signals,
    /// The waiter whose wake-up this claim follows.
    woken: Option<u64>,
    capacity: u32,
    /// The promise taken at [`Look::open`], until [`Look::took`].
    promise: Option<Promise>,
    withdrawn: bool,
}

impl Look {
    /// The look of a claim that was not woken: it withdraws what it takes.
    pub(crate) fn fresh(signals: &Signals, capacity: u32) -> Self {
        Self {
            signals: signals.clone(),
            woken: None,
            capacity,
            promise: None,
            withdrawn: false,
        }
    }

    /// The look of a claim that `waiter`'s wake-up started.
    pub(crate) fn woken(signals: &Signals, waiter: &QueueWaiter, capacity: u32) -> Self {
        let mut look = Self::fresh(signals, capacity);
        look.woken = Some(waiter.id);
        look
    }

    /// Whether to look now; false when every job the claim was woken for
    /// has gone to other claims.
    pub(crate) fn open(&mut self) -> bool {
        let Some(id) = self.woken else {
            return true;
        };
        match self.signals.registry.lock().unwrap().unpromise(id) {
            Some(promise) if promise.jobs.is_empty() => {
                self.withdrawn = true;
                false
            }
            promise => {
                self.promise = promise;
                true
            }
        }
    }

    /// Whether the claim was not woken (an agent back on its own).
    pub(crate) fn is_fresh(&self) -> bool {
        self.woken.is_none()
    }

    /// Whether the claim's wake-up was withdrawn: it did not look.
    pub(crate) fn withdrawn(&self) -> bool {
        self.withdrawn
    }

    /// The claim took `taken`.
    pub(crate) fn took(&mut self, taken: &[JobId]) {
        if !taken.is_empty() {
            let mut reg = self.signals.registry.lock().unwrap();
            for job in taken {
                if let Some(claim) = reg.promised.remove(job)
                    && let Some(promise) = reg.promises.get_mut(&claim)
                {
                    promise.jobs.retain(|j| j != job);
                }
            }
        }
        let Some(mut own) = self.promise.take() else {
            return;
        };
        // Took fewer than it could: no more of its queued jobs were left to
        // take, its own included.
        own.jobs.retain(|j| !taken.contains(j));
        if !own.jobs.is_empty() && taken.len() >= self.capacity.max(1) as usize {
            self.signals.hand_on(own);
        }
    }
}

impl Drop for Look {
    fn drop(&mut self) {
        // Opened and never told what it took: the claim failed, and its
        // jobs are still queued.
        if let Some(promise) = self.promise.take() {
            self.signals.hand_on(promise);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite_now::now_or_never;

    mod futures_lite_now {
        use std::future::Future;
        use std::pin::pin;
        use std::task::{Context, Poll, Waker};

        /// Polls `f` once.
        pub(super) fn now_or_never<F: Future>(f: F) -> Option<F::Output> {
            let mut cx = Context::from_waker(Waker::noop());
            match pin!(f).poll(&mut cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            }
        }
    }

    fn tenant() -> TenantId {
        homeostat_model::new_id().into()
    }

    fn q(name: &str) -> Vec<String> {
        vec![name.to_owned()]
    }

    #[test]
    fn jobs_wake_as_many_waiters_as_they_need_oldest_first() {
        let s = Signals::default();
        let t = tenant();
        let mut waiters: Vec<_> = (0..5).map(|_| s.waiter(Some(t), &q("builds"), 1)).collect();
        let short = s.wake(t, &[("builds".into(), 2)]);
        assert!(short.is_empty());
        let woken: Vec<bool> = waiters
            .iter_mut()
            .map(|w| now_or_never(w.changed()).is_some())
            .collect();
        assert_eq!(woken, [true, true, false, false, false]);
        assert_eq!(s.waiting(), 3);
    }

    #[test]
    fn a_waiter_is_woken_only_by_its_queues_and_its_tenant_or_any_for_a_platform_agent() {
        let s = Signals::default();
        let (mine, other) = (tenant(), tenant());
        let mut own = s.waiter(Some(mine), &q("builds"), 1);
        let mut platform = s.waiter(None, &q("builds"), 1);
        let short = s.wake(other, &[("builds".into(), 1), ("deploys".into(), 1)]);
        // The other tenant's build wakes the platform agent; nobody waits
        // for deploys.
        assert_eq!(short.len(), 1);
        assert_eq!(short[0].queue, "deploys");
        assert!(now_or_never(own.changed()).is_none());
        assert!(now_or_never(platform.changed()).is_some());
        s.any();
        assert!(now_or_never(own.changed()).is_some());
    }

    #[test]
    fn capacity_covers_several_jobs_and_the_rest_is_the_shortfall() {
        let s = Signals::default();
        let t = tenant();
        let mut big = s.waiter(Some(t), &q("builds"), 10);
        let mut small = s.waiter(Some(t), &q("builds"), 1);
        let short = s.wake(t, &[("builds".into(), 12)]);
        assert!(now_or_never(big.changed()).is_some());
        assert!(now_or_never(small.changed()).is_some());
        assert_eq!(short[0].jobs, 1);
    }

    #[test]
    fn a_waiter_woken_and_dropped_before_it_looked_hands_its_wake_up_on() {
        let s = Signals::default();
        let t = tenant();
        let gone = s.waiter(Some(t), &q("builds"), 1);
        let mut next = s.waiter(Some(t), &q("builds"), 1);
        s.wake(t, &[("builds".into(), 1)]);
        assert!(now_or_never(next.changed()).is_none());
        drop(gone);
        assert!(now_or_never(next.changed()).is_some());
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn a_reservation_wakes_when_fired_not_before() {
        let s = Signals::default();
        let t = tenant();
        let mut w = s.waiter(Some(t), &q("builds"), 1);
        let reserved = s.reserve(t, &[("builds".into(), 1)]);
        assert!(reserved.shortfall.is_empty());
        assert!(now_or_never(w.changed()).is_none());
        reserved.fire();
        assert!(now_or_never(w.changed()).is_some());
    }

    #[test]
    fn a_reservation_covers_the_first_jobs_queued_at_once_on_each_queue_up_to_its_capacities() {
        let s = Signals::default();
        let t = tenant();
        let _two = s.waiter(Some(t), &q("builds"), 2);
        let _one = s.waiter(Some(t), &q("builds"), 1);
        let _deploys = s.waiter(Some(t), &q("deploys"), 5);
        let now = Timestamp::now();
        let later = NewJob {
            run_at: Some(now + jiff::SignedDuration::from_secs(60)),
            ..NewJob::new("builds", "k")
        };
        let jobs = [
            later,
            NewJob::new("builds", "k"),
            NewJob::new("deploys", "k"),
            NewJob::new("builds", "k"),
            NewJob::new("builds", "k"),
            NewJob::new("builds", "k"),
            NewJob::new("tests", "k"),
        ];
        let reserved = s.reserve(t, &queued_by_queue(&jobs, now));
        assert_eq!(
            reserved.covers(&jobs, now),
            [false, true, true, true, true, false, false],
            "a scheduled job, three builds of four, the deploy, no test"
        );
    }

    /// Queues `jobs` new jobs on `builds` for `t`, naming them: what
    /// [`enqueue`] does around its insert.
    fn queue_named(s: &Signals, t: TenantId, jobs: usize) -> Vec<JobId> {
        let new: Vec<NewJob> = (0..jobs).map(|_| NewJob::new("builds", "k")).collect();
        let done: Vec<Enqueued> = (0..jobs)
            .map(|_| Enqueued {
                id: homeostat_model::new_id().into(),
                deduplicated: false,
                occurrences: 1,
            })
            .collect();
        let now = Timestamp::now();
        let mut reserved = s.reserve(t, &queued_by_queue(&new, now));
        reserved.name(&new, &done, now);
        reserved.fire();
        done.iter().map(|d| d.id).collect()
    }

    /// A claim that was not woken (an agent back on its own) takes `jobs`.
    fn fresh_claim_takes(s: &Signals, jobs: &[JobId]) {
        let mut look = Look::fresh(s, 1);
        assert!(look.open());
        look.took(jobs);
    }

    #[test]
    fn a_claim_that_takes_a_job_named_to_a_woken_claim_withdraws_its_wake_up() {
        let s = Signals::default();
        let t = tenant();
        let mut woken = s.waiter(Some(t), &q("builds"), 1);
        let jobs = queue_named(&s, t, 1);
        assert!(now_or_never(woken.changed()).is_some());
        // An agent back on its own takes the job first.
        fresh_claim_takes(&s, &jobs);
        let mut look = Look::woken(&s, &woken, 1);
        assert!(!look.open(), "a claim woken for a taken job looked");
        assert!(look.withdrawn());
        drop((look, woken));
        let reg = s.registry.lock().unwrap();
        assert!(reg.promises.is_empty() && reg.promised.is_empty());
    }

    #[test]
    fn a_woken_claim_looks_while_any_of_its_jobs_is_left() {
        let s = Signals::default();
        let t = tenant();
        let mut woken = s.waiter(Some(t), &q("builds"), 2);
        let jobs = queue_named(&s, t, 2);
        assert!(now_or_never(woken.changed()).is_some());
        fresh_claim_takes(&s, &jobs[..1]);
        let mut look = Look::woken(&s, &woken, 2);
        assert!(look.open());
        assert!(!look.withdrawn());
        look.took(&jobs[1..]);
    }

    #[test]
    fn a_claim_woken_without_names_always_looks() {
        let s = Signals::default();
        let t = tenant();
        let mut woken = s.waiter(Some(t), &q("builds"), 1);
        s.wake(t, &[("builds".into(), 1)]);
        assert!(now_or_never(woken.changed()).is_some());
        fresh_claim_takes(&s, &[homeostat_model::new_id().into()]);
        assert!(Look::woken(&s, &woken, 1).open());
    }

    #[test]
    fn a_woken_claim_that_filled_up_on_other_jobs_hands_its_own_on() {
        let s = Signals::default();
        let t = tenant();
        let mut first = s.waiter(Some(t), &q("builds"), 1);
        let mut second = s.waiter(Some(t), &q("builds"), 1);
        let mut third = s.waiter(Some(t), &q("builds"), 1);
        let jobs = queue_named(&s, t, 2);
        assert!(now_or_never(first.changed()).is_some());
        assert!(now_or_never(second.changed()).is_some());
        assert!(now_or_never(third.changed()).is_none());
        // The first claim takes the job named to the second, not its own.
        let mut look = Look::woken(&s, &first, 1);
        assert!(look.open());
        look.took(&jobs[1..]);
        assert!(!Look::woken(&s, &second, 1).open());
        assert!(
            now_or_never(third.changed()).is_some(),
            "the job left queued woke nobody"
        );
        let mut last = Look::woken(&s, &third, 1);
        assert!(last.open());
        last.took(&jobs[..1]);
    }

    #[test]
    fn a_woken_claim_that_found_less_than_it_could_hands_nothing_on() {
        let s = Signals::default();
        let t = tenant();
        let mut first = s.waiter(Some(t), &q("builds"), 2);
        let mut next = s.waiter(Some(t), &q("builds"), 1);
        queue_named(&s, t, 1);
        assert!(now_or_never(first.changed()).is_some());
        let mut look = Look::woken(&s, &first, 2);
        assert!(look.open());
        look.took(&[]);
        assert!(now_or_never(next.changed()).is_none());
    }

    #[test]
    fn a_claim_that_failed_or_went_away_hands_its_named_jobs_on() {
        let s = Signals::default();
        let t = tenant();
        let mut failing = s.waiter(Some(t), &q("builds"), 1);
        let gone = s.waiter(Some(t), &q("builds"), 1);
        let mut next = s.waiter(Some(t), &q("builds"), 1);
        let jobs = queue_named(&s, t, 2);
        assert!(now_or_never(failing.changed()).is_some());
        let mut look = Look::woken(&s, &failing, 1);
        assert!(look.open());
        drop(look);
        assert!(now_or_never(next.changed()).is_some());
        // The next claim was named the failed one's job: a fresh claim
        // that takes it withdraws the next claim's wake-up.
        fresh_claim_takes(&s, &jobs[..1]);
        assert!(!Look::woken(&s, &next, 1).open());
        // Woken, then gone before it looked: its job goes to a new waiter.
        let mut later = s.waiter(Some(t), &q("builds"), 1);
        drop(gone);
        assert!(now_or_never(later.changed()).is_some());
        let mut look = Look::woken(&s, &later, 1);
        assert!(look.open());
        look.took(&jobs[1..]);
        let reg = s.registry.lock().unwrap();
        assert!(reg.promised.is_empty());
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_nothing_behind() {
        let s = Signals::default();
        let t = tenant();
        for _ in 0..100 {
            drop(s.waiter(Some(t), &["a".to_owned(), "b".to_owned()], 1));
        }
        let reg = s.registry.lock().unwrap();
        assert!(reg.waiters.is_empty() && reg.by_queue.is_empty());
    }
}
