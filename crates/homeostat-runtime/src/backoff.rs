//! Retry delays: exponential backoff with a cap, jitter and an attempt limit.
//!
//! The manager uses it to retry a failing controller sooner than its interval;
//! the store and notifier reuse it for job and notification retries.

use std::time::Duration;

/// An exponential backoff policy.
///
/// The delay before retry `n` (1-based: the retry after the first failure is
/// `n = 1`) is `initial × multiplier^(n-1)`, capped at `max_delay`, then spread
/// by `± jitter` (a fraction of the delay).
///
/// ```
/// use std::time::Duration;
/// use homeostat_runtime::{Backoff, RetryDecision};
///
/// let policy = Backoff::new(Duration::from_secs(1))
///     .max_delay(Duration::from_secs(60))
///     .max_attempts(5);
/// assert_eq!(policy.delay(1), Duration::from_secs(1));
/// assert_eq!(policy.delay(3), Duration::from_secs(4));
/// assert_eq!(policy.delay(10), Duration::from_secs(60));
/// // Attempt 5 was the last one allowed: give up.
/// assert_eq!(policy.decide(5, false, 0.5), RetryDecision::GiveUp);
/// // A permanent error is never retried.
/// assert_eq!(policy.decide(1, true, 0.5), RetryDecision::GiveUp);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: f64,
    max_attempts: Option<u32>,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Stop: the error is permanent or the attempts are used up.
    GiveUp,
}

impl Backoff {
    /// Doubling backoff starting at `initial`, capped at one hour, no jitter,
    /// unlimited attempts.
    pub fn new(initial: Duration) -> Self {
        Self {
            initial,
            multiplier: 2.0,
            max_delay: Duration::from_secs(3600),
            jitter: 0.0,
            max_attempts: None,
        }
    }

    /// Growth factor between consecutive delays; values below 1 are raised to 1.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Upper bound of any delay, before jitter.
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Spread each delay uniformly over `± fraction` of itself; clamped to
    /// `0.0..=1.0`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Total attempts allowed, the first one included.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// The delay before retry `n` without jitter (`n = 0` is treated as 1).
    pub fn delay(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(1024) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let max = self.max_delay.as_secs_f64();
        if !secs.is_finite() || secs >= max {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before retry `n`, spread by the jitter using `unit`, a
    /// uniformly random number in `0.0..1.0` supplied by the caller (so the
    /// caller chooses its random source and tests can fix it).
    pub fn delay_with_jitter(&self, retry: u32, unit: f64) -> Duration {
        spread(self.delay(retry), self.jitter, unit)
    }

    /// Decides what follows failed attempt number `attempt` (1-based).
    pub fn decide(&self, attempt: u32, permanent: bool, unit: f64) -> RetryDecision {
        if permanent || self.max_attempts.is_some_and(|max| attempt >= max) {
            RetryDecision::GiveUp
        } else {
            RetryDecision::RetryAfter(self.delay_with_jitter(attempt, unit))
        }
    }
}

/// `base` spread uniformly over `± fraction` of itself, `unit` in `0.0..1.0`
/// choosing where.
pub(crate) fn spread(base: Duration, fraction: f64, unit: f64) -> Duration {
    if fraction <= 0.0 {
        return base;
    }
    let factor = 1.0 + fraction * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    Duration::from_secs_f64((base.as_secs_f64() * factor).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_from_initial_then_caps() {
        let b = Backoff::new(Duration::from_secs(1)).max_delay(Duration::from_secs(10));
        let delays: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        let b = Backoff::new(Duration::from_secs(1)).max_delay(Duration::from_secs(3600));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn gives_up_after_max_attempts_or_on_permanent_errors() {
        let b = Backoff::new(Duration::from_secs(1)).max_attempts(3);
        assert_eq!(
            b.decide(1, false, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            b.decide(2, false, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(b.decide(3, false, 0.5), RetryDecision::GiveUp);
        assert_eq!(b.decide(1, true, 0.5), RetryDecision::GiveUp);
    }

    proptest! {
        #[test]
        fn jittered_delay_stays_within_the_fraction(
            retry in 1u32..20,
            fraction in 0.0f64..1.0,
            unit in 0.0f64..1.0,
        ) {
            let b = Backoff::new(Duration::from_millis(100))
                .max_delay(Duration::from_secs(30))
                .jitter(fraction);
            let base = b.delay(retry).as_secs_f64();
            let got = b.delay_with_jitter(retry, unit).as_secs_f64();
            prop_assert!(got >= base * (1.0 - fraction) - 1e-9);
            prop_assert!(got <= base * (1.0 + fraction) + 1e-9);
        }
    }
}
