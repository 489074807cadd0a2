//! job-scheduler: `scheduled` jobs whose time has come (delayed, or backing
//! off after a failure) become `queued`.

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{PlanKind, Store};

use crate::Settings;
use crate::sweep::{drain, left_more, swept, total};

/// The job-scheduler controller.
#[derive(Debug, Clone)]
pub struct JobScheduler {
    store: Store,
    settings: Settings,
}

impl JobScheduler {
    /// A controller over `store`.
    pub fn new(store: Store, settings: Settings) -> Self {
        Self { store, settings }
    }
}

impl Controller for JobScheduler {
    fn name(&self) -> &str {
        "job-scheduler"
    }

    fn interval(&self) -> Duration {
        self.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        crate::sweep::plan_of(&self.store, &[(PlanKind::DueScheduled, "run time reached")]).await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let (batch, fence) = (self.settings.batch, ctx.fence());
        let done = drain(&ctx, batch, || self.store.promote_scheduled(batch, fence)).await?;
        Ok(swept(total(&done), left_more(&done, batch)))
    }
}
