//! job-recovery: running jobs whose lease expired (the agent stopped
//! heartbeating them) are re-queued with the attempt counted, or go dead when
//! attempts are used up, so a stuck job always leaves the live states; queued
//! jobs never started by their deadline expire.

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{PlanKind, Store};

use crate::Settings;
use crate::sweep::{drain, notify_dead, total};

/// The job-recovery controller.
#[derive(Debug, Clone)]
pub struct JobRecovery {
    store: Store,
    settings: Settings,
}

impl JobRecovery {
    /// A controller over `store`.
    pub fn new(store: Store, settings: Settings) -> Self {
        Self { store, settings }
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
        let (batch, fence) = (self.settings.batch, ctx.fence());
        let requeued = drain(&ctx, batch, || {
            self.store.requeue_expired_leases(batch, fence)
        })
        .await?;
        notify_dead(
            &self.store,
            &ctx,
            &requeued,
            "lease expired with no attempts left",
        )
        .await?;
        let expired = drain(&ctx, batch, || {
            self.store.expire_overdue_queued(batch, fence)
        })
        .await?;
        Ok(Reconciled::items(total(&requeued) + total(&expired)))
    }
}
