//! Replacing broken connections. The pools do not ping a connection before
//! handing it out (a round trip per statement); instead, the first statement
//! that meets a broken connection reports `Unavailable`, and from then on no
//! connection of that pool opened before that moment is handed out again: a
//! database restart or a network cut breaks them all at once, so each is
//! replaced rather than failing one more call apiece.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Sql, Stmt};
use crate::error::{Context, StoreError};

/// When one pool's statements last met a broken connection.
#[derive(Debug)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct Breakage {
    base: Instant,
    /// Microseconds after `base` when a broken connection was last met;
    /// 0: never.
    broke_at: AtomicU64,
}

impl Default for Breakage {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            broke_at: AtomicU64::new(0),
        }
    }
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
impl Breakage {
    fn since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Notes `e` if it says the connection broke (not merely busy).
    pub(crate) fn saw(&self, e: &sqlx::Error) {
        if crate::error::breaks_connections(e) {
            self.broke_at
                .fetch_max(self.since_base(Instant::now()), Ordering::Relaxed);
        }
    }

    /// Whether a pooled connection of this age was opened after the last
    /// breakage (and may be handed out). PostgreSQL's pool asks; SQLite's
    /// does not, since its connections hold no network state (and
    /// replacing one would empty an in-memory database).
    pub(crate) fn is_trusted(&self, age: Duration) -> bool {
        let broke = self.broke_at.load(Ordering::Relaxed);
        if broke == 0 {
            return true;
        }
        let opened = Instant::now().checked_sub(age).unwrap_or(self.base);
        self.since_base(opened) > broke
    }
}

/// `$1` the replica, `$2` now: a write that must reach the disk (a
/// changed row is a WAL record on either database).
const PROBE_WRITE: Sql = Sql::both(
    "INSERT INTO write_probes (replica, at) VALUES ($1, $2)
     ON CONFLICT (replica) DO UPDATE SET at = excluded.at",
);

/// Writes this replica's readiness row: whether writes succeed now.
pub(crate) async fn probe_write<B: Backend>(b: &B, replica: &str) -> Result<(), StoreError> {
    let now = crate::time::ms(b.now());
    b.fetch_write(Stmt::new::<B>(PROBE_WRITE).arg(replica).arg(now))
        .await
        .op("writing the readiness probe")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    }

    #[test]
    fn connections_older_than_a_breakage_are_not_trusted_newer_ones_are() {
        let breakage = Breakage::default();
        std::thread::sleep(Duration::from_millis(2));
        assert!(breakage.is_trusted(Duration::from_secs(5)));
        breakage.saw(&broken());
        assert!(!breakage.is_trusted(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(2));
        assert!(breakage.is_trusted(Duration::from_micros(100)));
    }

    #[test]
    fn a_breakage_in_one_pool_leaves_another_pools_connections_trusted() {
        let (one, other) = (Breakage::default(), Breakage::default());
        std::thread::sleep(Duration::from_millis(2));
        one.saw(&broken());
        assert!(!one.is_trusted(Duration::from_secs(5)));
        assert!(other.is_trusted(Duration::from_secs(5)));
    }

    #[test]
    fn errors_that_do_not_break_a_connection_change_nothing() {
        let breakage = Breakage::default();
        std::thread::sleep(Duration::from_millis(2));
        breakage.saw(&sqlx::Error::RowNotFound);
        assert!(breakage.is_trusted(Duration::from_secs(5)));
    }
}
