//! Time as the runtime sees it.
//!
//! Every scheduling decision (when a tick is due, when a run times out, when a
//! lease must be renewed) asks a [`Clock`], so tests and simulations can move
//! time instead of waiting for it.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::BoxFuture;

/// A source of wall-clock time and of timers that fire at a wall-clock time.
///
/// Implementations: [`SystemClock`] for production, [`ManualClock`] for tests
/// that set the time explicitly (for instance alongside a real database), and
/// [`TokioClock`] for tests and simulations running under tokio's paused time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// Completes once [`Clock::now`] has reached `deadline`. Completes at once
    /// when the deadline has already passed.
    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'static, ()>;
}

/// The operating system's wall clock, with tokio timers for sleeping.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'static, ()> {
        let wait = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that only moves when told to.
///
/// Cloning shares the same time. Sleepers wake when [`ManualClock::advance`] or
/// [`ManualClock::set`] moves the time to or past their deadline.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    now: Mutex<SystemTime>,
    tick: watch::Sender<SystemTime>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> Self {
        let (tick, _) = watch::channel(start);
        Self {
            inner: Arc::new(ManualInner {
                now: Mutex::new(start),
                tick,
            }),
        }
    }

    /// A clock stopped at a fixed, round instant (2026-01-01T00:00:00Z), so
    /// that test output is stable.
    pub fn at_test_epoch() -> Self {
        Self::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600))
    }

    /// Moves the time forward by `by` and wakes the sleepers that are due.
    pub fn advance(&self, by: Duration) {
        let mut now = self.inner.now.lock().unwrap();
        *now += by;
        self.inner.tick.send_replace(*now);
    }

    /// Sets the time. Moving it backwards is allowed (it models a wall-clock
    /// step); sleepers whose deadline is now in the future keep sleeping.
    pub fn set(&self, to: SystemTime) {
        let mut now = self.inner.now.lock().unwrap();
        *now = to;
        self.inner.tick.send_replace(to);
    }

    /// How many sleeps are currently waiting on this clock.
    pub fn sleepers(&self) -> usize {
        self.inner.tick.receiver_count()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.inner.now.lock().unwrap()
    }

    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'static, ()> {
        let mut rx = self.inner.tick.subscribe();
        Box::pin(async move {
            loop {
                if *rx.borrow_and_update() >= deadline {
                    return;
                }
                if rx.changed().await.is_err() {
                    // The clock is gone: nothing will ever move time again.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

/// Wall time that follows tokio's clock.
///
/// `now()` is a fixed starting instant plus the time tokio has seen pass since
/// the clock was made. Under tokio's paused time (`start_paused = true`) time
/// therefore moves only through `tokio::time::advance` or when every task is
/// idle, which makes timing tests and simulations deterministic. Outside paused
/// time it drifts from the system clock like any monotonic clock would, so
/// production code uses [`SystemClock`].
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall_start: SystemTime,
    instant_start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `wall_start` now. Must be called inside a tokio
    /// runtime with the time driver enabled.
    pub fn new(wall_start: SystemTime) -> Self {
        Self {
            wall_start,
            instant_start: tokio::time::Instant::now(),
        }
    }

    /// A clock that reads 2026-01-01T00:00:00Z now.
    pub fn at_test_epoch() -> Self {
        Self::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600))
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.wall_start + self.instant_start.elapsed()
    }

    fn sleep_until(&self, deadline: SystemTime) -> BoxFuture<'static, ()> {
        let offset = deadline
            .duration_since(self.wall_start)
            .unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep_until(self.instant_start + offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_when_their_deadline_is_reached() {
        let clock = ManualClock::at_test_epoch();
        let start = clock.now();
        let sleep = tokio::spawn(clock.sleep_until(start + Duration::from_secs(10)));
        while clock.sleepers() == 0 {
            tokio::task::yield_now().await;
        }
        clock.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(!sleep.is_finished(), "woke one second early");
        clock.advance(Duration::from_secs(1));
        sleep.await.unwrap();
        assert_eq!(clock.now(), start + Duration::from_secs(10));
    }

    #[tokio::test]
    async fn manual_clock_sleep_in_the_past_completes_at_once() {
        let clock = ManualClock::at_test_epoch();
        let past = clock.now() - Duration::from_secs(1);
        clock.sleep_until(past).await;
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::at_test_epoch();
        let start = clock.now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), start + Duration::from_millis(1500));
        clock.sleep_until(start + Duration::from_secs(3)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(3));
    }
}
