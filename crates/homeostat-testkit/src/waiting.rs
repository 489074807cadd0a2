//! Waiting claims in tests: whether one was woken, without waiting; and a
//! wait for one to be woken whose deadline only guards a hang.

use std::time::Duration;

use homeostat_store::QueueWaiter;

/// Whether `w` has been woken (polled once, never waited for).
pub async fn woken(w: &mut QueueWaiter) -> bool {
    // `timeout` polls the future before its timer.
    tokio::time::timeout(Duration::ZERO, w.changed())
        .await
        .is_ok()
}

/// Waits for `w` to be woken; panics naming `what` if it never is.
pub async fn wakes(w: &mut QueueWaiter, what: &str) {
    tokio::time::timeout(Duration::from_secs(30), w.changed())
        .await
        .unwrap_or_else(|_| panic!("{what} was never woken"));
}
