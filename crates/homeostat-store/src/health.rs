//! Replacing broken connections. The pools do not ping a connection before
//! handing it out (a round trip per statement); instead, the first statement
//! that meets a broken connection reports `Unavailable`, and from then on no
//! connection opened before that moment is handed out again: a database
//! restart or a network cut breaks them all at once, so each is replaced
//! rather than failing one more call apiece.
//!
//! The moment is process-wide: a process holds one store as a rule, and a
//! replaced healthy connection costs only a reconnect.

use std::sync::LazyLock;

use crate::backend::{Backend, Sql, Stmt};
use crate::error::{Context, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Microseconds after `BASE` when a broken connection was last met; 0: never.
static BROKE_AT: AtomicU64 = AtomicU64::new(0);

fn since_base(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*BASE).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A statement met a broken connection now.
pub(crate) fn connections_broke() {
    BROKE_AT.fetch_max(since_base(Instant::now()), Ordering::Relaxed);
}

/// Whether a pooled connection of this age was opened after the last
/// breakage (and may be handed out). PostgreSQL's pool asks; SQLite's does
/// not, since its connections hold no network state (and replacing one
/// would empty an in-memory database).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn is_trusted(age: Duration) -> bool {
    let broke = BROKE_AT.load(Ordering::Relaxed);
    if broke == 0 {
        return true;
    }
    let opened = Instant::now().checked_sub(age).unwrap_or(*BASE);
    since_base(opened) > broke
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

    #[test]
    fn connections_older_than_a_breakage_are_not_trusted_newer_ones_are() {
        // Make sure the base is set before the "old" connection opened.
        let _ = *BASE;
        std::thread::sleep(Duration::from_millis(2));
        connections_broke();
        assert!(!is_trusted(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(2));
        assert!(is_trusted(Duration::from_micros(100)));
    }
}
