//! An event loop that aggregates and flushes: events come in by key, the
//! latest per key is kept (or merged), and a flush writes them all at once,
//! every interval, on demand ([`EventLoop::checkpoint`]) and once more when
//! the loop closes. Many small writes (an agent's heartbeat every few
//! seconds, times ten thousand agents) become one write a second.
//!
//! A failed flush keeps its events for the next one, merged with whatever
//! came in meanwhile, so nothing is lost while the sink is down; what a
//! crash loses is what came in since the last flush, at most one interval.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::{BoxError, BoxFuture};

/// Writes one batch of aggregated events.
type Flush<K, V> = dyn Fn(HashMap<K, V>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync;

/// Aggregates events by key and flushes them in batches.
pub struct EventLoop<K, V> {
    inner: Arc<Inner<K, V>>,
}

struct Inner<K, V> {
    name: &'static str,
    pending: Mutex<HashMap<K, V>>,
    merge: fn(&mut V, V),
    flush: Box<Flush<K, V>>,
    /// One flush at a time: the periodic one, a checkpoint or the last.
    flushing: tokio::sync::Mutex<()>,
    last_flushed: Mutex<Option<SystemTime>>,
    stop: CancellationToken,
}

impl<K, V> Clone for EventLoop<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V> std::fmt::Debug for EventLoop<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// Keeps the later event: what a merge of "the latest state" does.
pub fn keep_latest<V>(held: &mut V, new: V) {
    *held = new;
}

impl<K, V> EventLoop<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Starts a loop named `name` (in logs) that flushes every `interval`
    /// through `flush`; a second event for a key already pending is folded
    /// into it with `merge` (see [`keep_latest`]).
    pub fn spawn<F>(name: &'static str, interval: Duration, merge: fn(&mut V, V), flush: F) -> Self
    where
        F: Fn(HashMap<K, V>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync + 'static,
    {
        let inner = Arc::new(Inner {
            name,
            pending: Mutex::new(HashMap::new()),
            merge,
            flush: Box::new(flush),
            flushing: tokio::sync::Mutex::new(()),
            last_flushed: Mutex::new(None),
            stop: CancellationToken::new(),
        });
        let task = Arc::clone(&inner);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = task.stop.cancelled() => return,
                    _ = ticks.tick() => {
                        let _ = task.flush_pending().await;
                    }
                }
            }
        });
        Self { inner }
    }

    /// Records an event for `key`; written at the next flush.
    pub fn record(&self, key: K, event: V) {
        let mut pending = self.inner.pending.lock().unwrap();
        match pending.get_mut(&key) {
            Some(held) => (self.inner.merge)(held, event),
            None => {
                pending.insert(key, event);
            }
        }
    }

    /// Writes every event recorded before this call now; how many were
    /// written (after a failure, they stay pending).
    pub async fn checkpoint(&self) -> Result<usize, BoxError> {
        self.inner.flush_pending().await
    }

    /// Stops the periodic flush and writes what is pending, once.
    pub async fn close(&self) -> Result<usize, BoxError> {
        self.inner.stop.cancel();
        self.inner.flush_pending().await
    }

    /// Events waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.inner.pending.lock().unwrap().len()
    }

    /// When the last flush that wrote something succeeded.
    pub fn last_flushed(&self) -> Option<SystemTime> {
        *self.inner.last_flushed.lock().unwrap()
    }
}

impl<K, V> Inner<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    async fn flush_pending(&self) -> Result<usize, BoxError> {
        let _one_at_a_time = self.flushing.lock().await;
        let batch = std::mem::take(&mut *self.pending.lock().unwrap());
        if batch.is_empty() {
            return Ok(0);
        }
        let written = batch.len();
        match (self.flush)(batch.clone()).await {
            Ok(()) => {
                *self.last_flushed.lock().unwrap() = Some(SystemTime::now());
                Ok(written)
            }
            Err(e) => {
                tracing::warn!(event_loop = self.name, error = %e, events = written,
                    "flush failed; the events wait for the next one");
                // Back in, behind anything newer recorded meanwhile.
                let mut pending = self.pending.lock().unwrap();
                for (key, old) in batch {
                    pending.entry(key).or_insert(old);
                }
                Err(e)
            }
        }
    }
}
