//! job-recovery: running jobs whose lease expired (the agent stopped
//! heartbeating them) are re-queued with the attempt counted, or go dead when
//! attempts are used up, so a stuck job always leaves the live states; queued
//! jobs never started by their deadline expire.
//!
//! Like agent-health's silence, a lease's expiry is judged only over time
//! in which agents could renew it. After this controller starts, and after a
//! run found the store unreachable, a lease that ran out before the store
//! answered again counts only once `grace` (agent-health's stale timeout:
//! every live agent is heard within it) has passed since: an outage of the
//! control plane longer than the lease lets every lease run out, and
//! reclaiming them the moment the store came back, before their agents'
//! first heartbeat, ran all that healthy work again. Leases that run out
//! after the store came back count at once, and a dead agent's jobs are
//! reclaimed by agent-health as before.

use std::sync::Mutex;
use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{PlanKind, Store};
use jiff::Timestamp;

use crate::Settings;
use crate::sweep::{drain, left_more, notify_dead, now, swept, total};

/// The job-recovery controller.
#[derive(Debug)]
pub struct JobRecovery {
    store: Store,
    settings: Settings,
    grace: Duration,
    hearing: Mutex<Hearing>,
}

/// What this controller remembers between runs.
#[derive(Debug, Default, Clone, Copy)]
struct Hearing {
    /// Since when the store has answered every run (`None`: not yet, or a
    /// run just failed).
    since: Option<Timestamp>,
    /// When the last run that succeeded started: a run cancelled (timed
    /// out while the store hung) or a stretch as follower leaves it old.
    last_ok: Option<Timestamp>,
}

impl JobRecovery {
    /// A controller over `store`; leases that ran out while the store could
    /// not be reached count `grace` after it answers again.
    pub fn new(store: Store, settings: Settings, grace: Duration) -> Self {
        Self {
            store,
            settings,
            grace,
            hearing: Mutex::default(),
        }
    }

    fn hearing(&self) -> std::sync::MutexGuard<'_, Hearing> {
        self.hearing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The earliest expiry that counts at `now`: none before the store
    /// answered again, until `grace` has passed since. Hearing starts anew
    /// when no run succeeded for `grace` and three intervals.
    fn counted_from(&self, now: Timestamp) -> Option<Timestamp> {
        let mut hearing = self.hearing();
        let recent = self.settings.interval * 3 + self.grace;
        if hearing.last_ok.is_none_or(|t| t + recent < now) {
            hearing.since = None;
        }
        let since = *hearing.since.get_or_insert(now);
        (now < since + self.grace).then_some(since)
    }

    async fn sweep(&self, ctx: &Context) -> Result<Reconciled, BoxError> {
        let (batch, fence) = (self.settings.batch, ctx.fence());
        let started = now(ctx)?;
        let counted_from = self.counted_from(started);
        let requeued = drain(ctx, batch, || {
            self.store
                .requeue_expired_leases(batch, counted_from, fence)
        })
        .await?;
        notify_dead(
            &self.store,
            ctx,
            &requeued,
            "lease expired with no attempts left",
        )
        .await?;
        let expired = drain(ctx, batch, || {
            self.store.expire_overdue_queued(batch, fence)
        })
        .await?;
        self.hearing().last_ok = Some(started);
        Ok(swept(
            total(&requeued) + total(&expired),
            left_more(&requeued, batch) || left_more(&expired, batch),
        ))
    }
}

impl Controller for JobRecovery {
    fn name(&self) -> &str {
        "job-recovery"
    }

    fn interval(&self) -> Duration {
        self.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        crate::sweep::plan_of(
            &self.store,
            &[
                (PlanKind::ExpiredLeases, "lease expired"),
                (PlanKind::OverdueQueued, "not started before its deadline"),
            ],
        )
        .await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let result = self.sweep(&ctx).await;
        if result.is_err() {
            // The store may have been out of reach: hear anew from the next
            // run that reaches it.
            self.hearing().since = None;
        }
        result
    }
}
