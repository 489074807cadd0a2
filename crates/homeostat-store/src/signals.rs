//! Wake-ups for claims that wait for work (long polls): which queue may have
//! got a job. On SQLite the store's own operations announce it in-process; on
//! PostgreSQL the statement that queues a job sends `NOTIFY`, and each
//! replica's one listener connection relays what it hears, so an enqueue on
//! any replica wakes the claims waiting on every replica.
//!
//! A wake-up is a hint, never a promise: the woken claim runs and may find
//! nothing (another agent was faster). A missed one only delays a claim until
//! its wait runs out, so whenever wake-ups may have been lost (the listener
//! connection dropped, a waiter fell behind) everyone is woken.

use std::sync::Arc;

use tokio::sync::broadcast;

/// The `NOTIFY` channel; the payload is a queue name or [`ANY_QUEUE`].
#[cfg(feature = "postgres")]
pub(crate) const CHANNEL: &str = "homeostat_queued";
/// Wakes every waiter, whatever its queues.
pub(crate) const ANY_QUEUE: &str = "*";
/// While the listener connection is down, waiters are woken this often
/// (a slow poll) so that no claim waits out its whole long poll.
#[cfg(feature = "postgres")]
pub(crate) const FALLBACK_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The in-process fan-out of wake-ups.
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    tx: broadcast::Sender<Arc<str>>,
}

impl Default for Signals {
    fn default() -> Self {
        // Waiters only look for their queues' names; one that falls this far
        // behind is woken (`Lagged`), which is always safe.
        Self {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl Signals {
    /// Announces that a job may have been queued on `queue`.
    pub(crate) fn queued(&self, queue: &str) {
        // No receiver is not an error: nobody waits.
        let _ = self.tx.send(Arc::from(queue));
    }

    /// Wakes every waiter.
    pub(crate) fn any(&self) {
        self.queued(ANY_QUEUE);
    }

    pub(crate) fn waiter(&self) -> QueueWaiter {
        QueueWaiter {
            rx: self.tx.subscribe(),
        }
    }
}

/// Waits for jobs on some queues. Take it *before* looking for work, so a
/// job queued between the look and the wait still wakes it.
#[derive(Debug)]
pub struct QueueWaiter {
    rx: broadcast::Receiver<Arc<str>>,
}

impl QueueWaiter {
    /// Returns when a job may have been queued on one of `queues`.
    pub async fn changed(&mut self, queues: &[String]) {
        loop {
            match self.rx.recv().await {
                Ok(q) if &*q == ANY_QUEUE || queues.iter().any(|mine| *mine == *q) => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                // The store is gone: nothing will ever be queued through it.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_for_its_queues_and_for_any() {
        let signals = Signals::default();
        let mine = vec!["builds".to_owned()];
        let mut w = signals.waiter();
        signals.queued("deploys");
        signals.queued("builds");
        w.changed(&mine).await;
        signals.any();
        w.changed(&mine).await;
        // Both signals were taken; nothing is left to wake it again.
        assert!(matches!(
            w.rx.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
    }

    #[tokio::test]
    async fn a_signal_sent_before_the_wait_is_not_lost() {
        let signals = Signals::default();
        let mut w = signals.waiter();
        signals.queued("builds");
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            w.changed(&["builds".to_owned()]),
        )
        .await
        .expect("the signal sent between subscribing and waiting was lost");
    }
}
