//! The watchdog inside a real manager (manual clock), raising and clearing
//! notifications in a real store.

use homeostat_testkit::{At, on_both_backends};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use homeostat_controllers::{Settings, Watchdog, WatchdogConfig};
use homeostat_runtime::{
    BoxError, Context, Controller, ControllerOptions, Manager, ManualClock, Outcome, Reconciled,
};
use homeostat_store::Store;
use jiff::Timestamp;

struct Flaky(Arc<AtomicBool>);

impl Controller for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }
    async fn reconcile(&self, _ctx: Context) -> Result<Reconciled, BoxError> {
        if self.0.load(Ordering::SeqCst) {
            Err("upstream unavailable".into())
        } else {
            Ok(Reconciled::nothing())
        }
    }
}

/// Moves the clock a second at a time until `done` holds (bounded in steps,
/// and each step waits for the runs it triggered, bounded in real time).
async fn step_until(
    manager: &Manager,
    clock: &ManualClock,
    what: &str,
    done: impl Fn(&Manager) -> bool,
) {
    for _ in 0..30 {
        if done(manager) {
            return;
        }
        clock.advance(Duration::from_secs(1));
        let target = clock.now();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Wait until both controllers ran at (or after) the new time.
        while !manager
            .status()
            .iter()
            .all(|s| s.last_run.as_ref().is_some_and(|r| r.started_at >= target) && !s.running)
        {
            assert!(
                Instant::now() < deadline,
                "runs at {target:?} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    panic!("gave up waiting until {what}: {:#?}", manager.status());
}

trait Now {
    fn now(&self) -> SystemTime;
}

impl Now for ManualClock {
    fn now(&self) -> SystemTime {
        homeostat_runtime::Clock::now(self)
    }
}

async fn the_watchdog_raises_then_clears_an_unhealthy_controller(store: &Store) {
    let start = SystemTime::from(Timestamp::from_second(1_767_225_600).unwrap());
    let clock = ManualClock::new(start);
    let broken = Arc::new(AtomicBool::new(true));
    let mut builder = Manager::builder().clock(Arc::new(clock.clone())).seed(1);
    let exact = ControllerOptions::default().jitter(0.0);
    builder.register(Flaky(Arc::clone(&broken)), exact).unwrap();
    builder
        .register(
            Watchdog::new(
                store.clone(),
                WatchdogConfig {
                    settings: Settings::every(Duration::from_secs(1), 0),
                    intervals: 3,
                },
            ),
            exact.exclusive(false),
        )
        .unwrap();
    let manager = builder.start().unwrap();

    step_until(&manager, &clock, "the watchdog reports flaky", |m| {
        let watchdog = m.controller_status("watchdog").unwrap();
        watchdog.last_run.is_some_and(|r| {
            r.outcome == Outcome::Error
                && r.error.is_some_and(|e| {
                    e.contains("flaky: failed ")
                        && e.contains("times in a row (last: upstream unavailable)")
                })
        })
    })
    .await;
    broken.store(false, Ordering::SeqCst);
    step_until(&manager, &clock, "the watchdog is content", |m| {
        let watchdog = m.controller_status("watchdog").unwrap();
        watchdog
            .last_run
            .is_some_and(|r| r.outcome == Outcome::Success)
    })
    .await;
    manager.shutdown(Duration::from_secs(5)).await;

    let far = Timestamp::from_second(1_767_225_600 + 86_400).unwrap();
    let notes = store
        .at(far)
        .claim_due_notifications(10, Duration::from_secs(60), None)
        .await
        .unwrap();
    let events: Vec<(&str, String)> = notes
        .iter()
        .map(|n| (n.event.as_str(), n.payload["controller"].to_string()))
        .collect();
    assert_eq!(
        events,
        [
            ("controller.unhealthy", "\"flaky\"".to_string()),
            ("controller.recovered", "\"flaky\"".to_string())
        ],
        "raised once, cleared once"
    );
}

on_both_backends!(the_watchdog_raises_then_clears_an_unhealthy_controller);
