//! job-timeout: running jobs past their own timeout count a failed attempt:
//! retried after the backoff, or dead when attempts are used up.

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{PlanKind, Store};

use crate::Settings;
use crate::sweep::{drain, left_more, notify_dead, swept, total};

/// The job-timeout controller.
#[derive(Debug, Clone)]
pub struct JobTimeout {
    store: Store,
    settings: Settings,
}

impl JobTimeout {
    /// A controller over `store`.
    pub fn new(store: Store, settings: Settings) -> Self {
        Self { store, settings }
    }
}

impl Controller for JobTimeout {
    fn name(&self) -> &str {
        "job-timeout"
    }

    fn interval(&self) -> Duration {
        self.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        crate::sweep::plan_of(&self.store, &[(PlanKind::TimedOut, "attempt timed out")]).await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let (batch, fence) = (self.settings.batch, ctx.fence());
        let timed_out = drain(&ctx, batch, || self.store.time_out_running(batch, fence)).await?;
        notify_dead(
            &self.store,
            &ctx,
            &timed_out,
            "timed out with no attempts left",
        )
        .await?;
        Ok(swept(total(&timed_out), left_more(&timed_out, batch)))
    }
}
