//! The test clock: every test store starts at the test epoch and moves only
//! when a test says so.

use homeostat_store::Store;
use jiff::{SignedDuration, Timestamp};

/// The test epoch, 2026-01-01T00:00:00Z: where every test store's clock
/// starts (the runtime's `ManualClock::at_test_epoch`).
pub fn t0() -> Timestamp {
    Timestamp::from_second(1_767_225_600).expect("a valid timestamp")
}

/// `secs` seconds after the test epoch.
pub fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

/// Moves a test store's clock: `store.at(t).claim(…)` claims at `t`.
pub trait At {
    /// Sets the clock to `t` and hands the store back.
    fn at(&self, t: Timestamp) -> &Self;
}

impl At for Store {
    fn at(&self, t: Timestamp) -> &Store {
        let clock = self
            .options()
            .clock
            .as_manual()
            .expect("a test store runs on a manual clock");
        clock.set(t.into());
        self
    }
}
