//! Jobs that succeeded, counted per minute for the dashboard's chart.
//!
//! An index of every finished job cost each completion an index entry, 4.7 %
//! of the server's instructions a job, and adding each batch to a count in
//! the completion's own statement cost nearly as much (docs/benchmarks.md).
//! So a store counts its completions in memory and adds them to
//! `succeeded_per_minute` at most [`FLUSH_EVERY`] after it counted them,
//! before it reads the counts, and when it closes: one statement every few
//! seconds instead of work in every completion. Each store writes rows of
//! its own (`slot`), so replicas never wait on each other's count. What a
//! store counted in its last seconds before a crash is lost to the chart.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use homeostat_model::Id;

use crate::backend::{Backend, Sql, Stmt};
use crate::error::{Context, StoreError};
use crate::time::ms;

/// How long a store waits, after it counted a job, to write its counts.
const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// How long the counts are kept (the dashboard shows an hour of them);
/// `delete_finished_jobs` forgets older ones.
const KEPT_MS: i64 = 24 * 3600 * 1000;

const ADD: Sql = Sql::both(
    "INSERT INTO succeeded_per_minute (minute, slot, jobs) VALUES ($1, $2, $3)
     ON CONFLICT (minute, slot) DO UPDATE SET jobs = succeeded_per_minute.jobs + excluded.jobs",
);

const FORGET: Sql = Sql::both("DELETE FROM succeeded_per_minute WHERE minute < $1");

/// A store's counts not yet written.
#[derive(Debug)]
pub(crate) struct Tally {
    slot: i64,
    /// Jobs per minute (Unix epoch milliseconds / 60,000).
    minutes: Mutex<BTreeMap<i64, i64>>,
    /// A write is scheduled.
    scheduled: AtomicBool,
}

impl Default for Tally {
    fn default() -> Self {
        // Random bits of a fresh v7 id: one slot per store, whatever the
        // replica or process.
        let (_, random) = Id::now_v7().as_u64_pair();
        Self {
            slot: (random >> 1) as i64,
            minutes: Mutex::default(),
            scheduled: AtomicBool::new(false),
        }
    }
}

impl Tally {
    fn take(&self) -> BTreeMap<i64, i64> {
        std::mem::take(&mut self.minutes.lock().unwrap())
    }

    fn put_back(&self, minutes: impl Iterator<Item = (i64, i64)>) {
        let mut pending = self.minutes.lock().unwrap();
        for (minute, jobs) in minutes {
            *pending.entry(minute).or_default() += jobs;
        }
    }
}

/// Counts `jobs` that have just succeeded, and schedules a write of the
/// counts in [`FLUSH_EVERY`] unless one is scheduled already.
pub(crate) async fn succeeded<B: Backend + Clone + Send + 'static>(
    b: &B,
    tally: &std::sync::Arc<Tally>,
    jobs: usize,
) {
    if jobs == 0 {
        return;
    }
    let minute = ms(b.now()).div_euclid(60_000);
    *tally.minutes.lock().unwrap().entry(minute).or_default() += jobs as i64;
    if !tally.scheduled.swap(true, Ordering::AcqRel) {
        let (b, tally) = (b.clone(), std::sync::Arc::clone(tally));
        tokio::spawn(async move {
            tokio::time::sleep(FLUSH_EVERY).await;
            write_scheduled(&b, &tally).await;
        });
    }
}

/// The scheduled write. A failure does not lose the counts: they wait for
/// the next write (the next completion schedules one).
async fn write_scheduled<B: Backend>(b: &B, tally: &Tally) {
    tally.scheduled.store(false, Ordering::Release);
    if let Err(e) = flush(b, tally).await {
        tracing::warn!(error = %e, "the counts of succeeded jobs wait for the next write");
    }
}

/// Writes the pending counts: one statement a minute counted (usually
/// one). What a failed statement did not write stays pending.
pub(crate) async fn flush<B: Backend>(b: &B, tally: &Tally) -> Result<(), StoreError> {
    let mut minutes = tally.take().into_iter();
    while let Some((minute, jobs)) = minutes.next() {
        let stmt = Stmt::new::<B>(ADD).arg(minute).arg(tally.slot).arg(jobs);
        if let Err(e) = b.execute_write(stmt).await {
            tally.put_back(std::iter::once((minute, jobs)).chain(minutes));
            return Err(e).op("counting succeeded jobs");
        }
    }
    Ok(())
}

/// Deletes the counts older than [`KEPT_MS`].
pub(crate) async fn forget_old<B: Backend>(b: &B) -> Result<(), StoreError> {
    let kept_from = (ms(b.now()) - KEPT_MS).div_euclid(60_000);
    b.execute_write(Stmt::new::<B>(FORGET).arg(kept_from))
        .await
        .op("forgetting old counts of succeeded jobs")?;
    Ok(())
}
