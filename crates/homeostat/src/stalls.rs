//! Notices when the server's async runtime stops running its tasks. A timer
//! that fires far later than it was set for means every task on the
//! runtime waited about as long: a worker thread blocked, or the machine
//! gave the process no CPU. The timeouts, lost leases and slow answers that
//! follow such a stall then have their cause in the log beside them.

use std::time::{Duration, Instant};

/// How often the watch sets its timer.
const TICK: Duration = Duration::from_millis(100);

/// A timer this late is a stall worth a warning.
const STALL: Duration = Duration::from_millis(500);

/// Watches the runtime it is called on, for as long as the runtime runs,
/// logging each stall.
pub(crate) fn watch() {
    tokio::spawn(watching(|late| {
        tracing::warn!(
            late_ms = u64::try_from(late.as_millis()).unwrap_or(u64::MAX),
            "the server's runtime ran no timer for a while: every task waited as long \
             (a worker thread was blocked, or the process had no CPU)"
        );
    }));
}

async fn watching(mut stalled: impl FnMut(Duration)) {
    loop {
        let set = Instant::now();
        tokio::time::sleep(TICK).await;
        let late = set.elapsed().saturating_sub(TICK);
        if late > STALL {
            stalled(late);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_runtime_is_reported_with_how_long_it_was_blocked() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        rt.block_on(async move {
            let watch = tokio::spawn(watching(move |late| {
                let _ = tx.send(late);
            }));
            // Let the watch set its timer, then hold the only thread.
            tokio::time::sleep(TICK / 2).await;
            std::thread::sleep(STALL + Duration::from_millis(400));
            // The watch runs again once the thread is free.
            tokio::time::sleep(TICK * 2).await;
            watch.abort();
        });
        let late = rx.try_recv().expect("no stall reported");
        assert!(
            late >= STALL + Duration::from_millis(300) - TICK,
            "{late:?}"
        );
    }
}
