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

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use homeostat_model::{JobState, NewJob, TenantId};
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
    tenant: Option<TenantId>,
    queues: Vec<String>,
    capacity: u32,
    tx: oneshot::Sender<Wake>,
}

/// The waiting claims, by queue and tenant (`None`: platform agents, which
/// take every tenant's jobs), each set in the order they started waiting.
#[derive(Debug, Default)]
struct Registry {
    next: u64,
    by_queue: HashMap<(String, Option<TenantId>), BTreeSet<u64>>,
    waiters: HashMap<u64, Entry>,
}

impl Registry {
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
#[derive(Debug, Default)]
pub(crate) struct Reserved {
    woken: Vec<(Entry, Wake)>,
    pub(crate) shortfall: Vec<Shortfall>,
}

impl Reserved {
    /// Wakes the reserved waiters.
    pub(crate) fn fire(self) {
        drop(self);
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        for (entry, wake) in self.woken.drain(..) {
            // A waiter that went away meanwhile hands nothing on: it was
            // taken out of the registry, and the job stays queued for the
            // next claim (or the next waiter woken by a later job).
            let _ = entry.tx.send(wake);
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
        let mut reserved = Reserved::default();
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
    let reserved = signals.reserve(tenant, &queued_by_queue(jobs, b.now()));
    let announce = signals.payloads(&reserved.shortfall);
    let enqueued = b.enqueue_batch(tenant, jobs, &announce).await;
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
        let registered = self.signals.registry.lock().unwrap().remove(self.id);
        if registered.is_some() {
            return;
        }
        // Woken but gone before it looked (its client went away): hand the
        // wake-up on, so that the job it was for still wakes a claim.
        if let Some(Ok(Wake::Queued { tenant, queue })) = self.rx.as_mut().map(|rx| rx.try_recv()) {
            self.signals.wake(tenant, &[(queue.to_string(), 1)]);
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
