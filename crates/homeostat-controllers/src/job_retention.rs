//! job-retention: finished jobs past their retention (succeeded and
//! cancelled 24 h, dead and expired 7 d by default) are deleted in batches.

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{PlanKind, Store};

use crate::JobRetentionConfig;
use crate::sweep::{drain, left_more, swept, total};

/// The job-retention controller.
#[derive(Debug, Clone)]
pub struct JobRetention {
    store: Store,
    config: JobRetentionConfig,
}

impl JobRetention {
    /// A controller over `store`.
    pub fn new(store: Store, config: JobRetentionConfig) -> Self {
        Self { store, config }
    }
}

impl Controller for JobRetention {
    fn name(&self) -> &str {
        "job-retention"
    }

    fn interval(&self) -> Duration {
        self.config.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        crate::sweep::plan_of(
            &self.store,
            &[(
                PlanKind::FinishedJobs(self.config.retention),
                "past retention",
            )],
        )
        .await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let (batch, fence) = (self.config.settings.batch, ctx.fence());
        let retention = self.config.retention;
        let done = drain(&ctx, batch, || {
            self.store.delete_finished_jobs(retention, batch, fence)
        })
        .await?;
        Ok(swept(total(&done), left_more(&done, batch)))
    }
}
