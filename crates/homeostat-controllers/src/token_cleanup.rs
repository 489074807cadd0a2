//! token-cleanup: expired, used-up and revoked tokens are deleted, and so
//! are idempotency keys past their lifetime (24 h).

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{PlanKind, Store};

use crate::Settings;
use crate::sweep::{drain, left_more, swept, total};

/// The token-cleanup controller.
#[derive(Debug, Clone)]
pub struct TokenCleanup {
    store: Store,
    settings: Settings,
}

impl TokenCleanup {
    /// A controller over `store`.
    pub fn new(store: Store, settings: Settings) -> Self {
        Self { store, settings }
    }
}

impl Controller for TokenCleanup {
    fn name(&self) -> &str {
        "token-cleanup"
    }

    fn interval(&self) -> Duration {
        self.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        crate::sweep::plan_of(
            &self.store,
            &[(PlanKind::DeadTokens, "expired, used up or revoked")],
        )
        .await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let (batch, fence) = (self.settings.batch, ctx.fence());
        let done = drain(&ctx, batch, || self.store.delete_dead_tokens(batch, fence)).await?;
        let keys = drain(&ctx, batch, || {
            self.store.delete_old_idempotency_keys(
                homeostat_store::IDEMPOTENCY_LIFETIME,
                batch,
                fence,
            )
        })
        .await?;
        Ok(swept(
            total(&done) + total(&keys),
            left_more(&done, batch) || left_more(&keys, batch),
        ))
    }
}
