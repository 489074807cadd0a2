//! The keys a keyed controller has to reconcile: each key at most once in
//! the queue, never handed out twice at once, and due at a time of its own
//! (at once, after a debounce, after a requeue delay or a retry's backoff).
//!
//! A key that changes while it is being reconciled is marked, and queued
//! again when that reconcile ends: the change is never lost, and never
//! reconciled concurrently with the reconcile that missed it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

/// Why a waiting key is due when it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// It changed (the due time is the debounce's end).
    Changed,
    /// Its last reconcile asked to come back, or failed.
    Later,
}

#[derive(Debug)]
struct State<K> {
    waiting: HashMap<K, (SystemTime, Why)>,
    /// Keys being reconciled; `true` when they changed meanwhile.
    active: HashMap<K, bool>,
}

/// The queue of one keyed controller.
#[derive(Debug)]
pub(crate) struct WorkQueue<K> {
    state: Mutex<State<K>>,
    debounce: Duration,
    /// Told when a key is added, so a run waiting on its reconciles also
    /// takes new keys.
    pub(crate) added: Notify,
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    pub(crate) fn new(debounce: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                waiting: HashMap::new(),
                active: HashMap::new(),
            }),
            debounce,
            added: Notify::new(),
        }
    }

    /// `key` changed at `now`: due after the debounce (a change within it
    /// starts it again), sooner than a requeue or backoff it waited for;
    /// marked if it is being reconciled.
    pub(crate) fn changed(&self, key: K, now: SystemTime) {
        let due = now + self.debounce;
        {
            let mut s = self.state.lock().unwrap();
            if let Some(dirty) = s.active.get_mut(&key) {
                *dirty = true;
                return;
            }
            let entry = s.waiting.entry(key).or_insert((due, Why::Changed));
            *entry = match *entry {
                (_, Why::Changed) => (due, Why::Changed),
                (at, Why::Later) => (at.min(due), Why::Changed),
            };
        }
        self.added.notify_one();
    }

    /// Up to `max` keys due at `now`, earliest first, handed out: none of
    /// them is handed out again until [`WorkQueue::finished`].
    pub(crate) fn take(&self, now: SystemTime, max: usize) -> Vec<K> {
        if max == 0 {
            return Vec::new();
        }
        let mut s = self.state.lock().unwrap();
        let mut due: Vec<(SystemTime, K)> = s
            .waiting
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, (at, _))| (*at, k.clone()))
            .collect();
        due.sort_by_key(|(at, _)| *at);
        due.truncate(max);
        let mut out = Vec::with_capacity(due.len());
        for (_, key) in due {
            s.waiting.remove(&key);
            s.active.insert(key.clone(), false);
            out.push(key);
        }
        out
    }

    /// `key`'s reconcile ended: it comes back at `again` if given, and at
    /// once (after the debounce) if it changed meanwhile, whichever is
    /// sooner.
    pub(crate) fn finished(&self, key: &K, now: SystemTime, again: Option<SystemTime>) {
        let mut s = self.state.lock().unwrap();
        let changed = s.active.remove(key).unwrap_or(false);
        let next = match (changed, again) {
            (true, Some(at)) => Some((at.min(now + self.debounce), Why::Changed)),
            (true, None) => Some((now + self.debounce, Why::Changed)),
            (false, Some(at)) => Some((at, Why::Later)),
            (false, None) => None,
        };
        if let Some(next) = next {
            s.waiting.insert(key.clone(), next);
        }
    }

    /// Keys handed out whose reconciles were dropped (the run was
    /// cancelled): due again at once.
    pub(crate) fn put_back(&self, keys: impl IntoIterator<Item = K>, now: SystemTime) {
        let mut s = self.state.lock().unwrap();
        for key in keys {
            if s.active.remove(&key).is_some() {
                s.waiting.insert(key, (now, Why::Changed));
            }
        }
    }

    /// When the earliest waiting key is due.
    pub(crate) fn next_due(&self) -> Option<SystemTime> {
        let s = self.state.lock().unwrap();
        s.waiting.values().map(|(at, _)| *at).min()
    }

    /// Keys waiting and keys being reconciled.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.waiting.len(), s.active.len())
    }

    /// The waiting keys with when each is due, earliest first, at most
    /// `limit`.
    pub(crate) fn waiting(&self, limit: usize) -> Vec<(K, SystemTime)> {
        let s = self.state.lock().unwrap();
        let mut out: Vec<(K, SystemTime)> = s
            .waiting
            .iter()
            .map(|(k, (at, _))| (k.clone(), *at))
            .collect();
        out.sort_by_key(|(_, at)| *at);
        out.truncate(limit);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + S * u32::try_from(secs).unwrap()
    }

    #[test]
    fn a_key_is_queued_once_and_never_handed_out_twice_at_once() {
        let q = WorkQueue::new(Duration::ZERO);
        q.changed("a", t(0));
        q.changed("a", t(0));
        q.changed("b", t(0));
        assert_eq!(q.depth(), (2, 0));
        let mut first = q.take(t(0), 10);
        first.sort_unstable();
        assert_eq!(first, ["a", "b"]);
        // Changed while reconciled: not handed out again until finished.
        q.changed("a", t(1));
        assert!(q.take(t(1), 10).is_empty());
        q.finished(&"a", t(2), None);
        q.finished(&"b", t(2), None);
        assert_eq!(q.take(t(2), 10), ["a"], "the change during the reconcile");
        q.finished(&"a", t(3), None);
        assert_eq!(q.depth(), (0, 0));
    }

    #[test]
    fn debounce_waits_for_quiet_and_a_change_cuts_a_long_wait() {
        let q = WorkQueue::new(2 * S);
        q.changed("a", t(0));
        q.changed("a", t(1));
        assert!(
            q.take(t(2), 10).is_empty(),
            "the second change restarted it"
        );
        assert_eq!(q.take(t(3), 10), ["a"]);
        // Requeued for an hour; a change brings it back after the debounce.
        q.finished(&"a", t(3), Some(t(3600)));
        assert_eq!(q.next_due(), Some(t(3600)));
        q.changed("a", t(4));
        assert_eq!(q.next_due(), Some(t(6)));
    }

    #[test]
    fn keys_dropped_with_their_run_come_back_at_once() {
        let q = WorkQueue::new(Duration::ZERO);
        q.changed("a", t(0));
        let taken = q.take(t(0), 1);
        q.put_back(taken, t(5));
        assert_eq!(q.waiting(10), [("a", t(5))]);
    }
}
