//! approval-expiration: jobs awaiting an approval that expired become
//! `expired`.

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{PlanKind, Store};

use crate::Settings;
use crate::sweep::{drain, left_more, swept, total};

/// The approval-expiration controller.
#[derive(Debug, Clone)]
pub struct ApprovalExpiration {
    store: Store,
    settings: Settings,
}

impl ApprovalExpiration {
    /// A controller over `store`.
    pub fn new(store: Store, settings: Settings) -> Self {
        Self { store, settings }
    }
}

impl Controller for ApprovalExpiration {
    fn name(&self) -> &str {
        "approval-expiration"
    }

    fn interval(&self) -> Duration {
        self.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        crate::sweep::plan_of(
            &self.store,
            &[(PlanKind::ExpiredApprovals, "approval expired")],
        )
        .await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let (batch, fence) = (self.settings.batch, ctx.fence());
        let done = drain(&ctx, batch, || self.store.expire_approvals(batch, fence)).await?;
        Ok(swept(total(&done), left_more(&done, batch)))
    }
}
