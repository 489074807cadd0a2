//! queue-priority: a queued job's effective priority is its tenant's tier
//! base plus its own priority plus an ageing bonus (points per whole minute
//! waited) up to a ceiling, computed in the database. Every job that waited
//! long enough reaches the ceiling, where the oldest goes first, so a small
//! tenant's job is never starved by a large tenant's growing backlog: it
//! waits at most `cap / bonus_per_minute` minutes plus the work queued before
//! it.

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{Ageing, PlanKind, Store};

use crate::QueuePriorityConfig;
use crate::sweep::{drain, left_more, swept, total};

/// The queue-priority controller.
#[derive(Debug, Clone)]
pub struct QueuePriority {
    store: Store,
    config: QueuePriorityConfig,
}

impl QueuePriority {
    /// A controller over `store`.
    pub fn new(store: Store, config: QueuePriorityConfig) -> Self {
        Self { store, config }
    }
}

impl Controller for QueuePriority {
    fn name(&self) -> &str {
        "queue-priority"
    }

    fn interval(&self) -> Duration {
        self.config.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        crate::sweep::plan_of(
            &self.store,
            &[(
                PlanKind::Priorities {
                    bonus_per_minute: self.config.bonus_per_minute,
                    cap: self.config.cap,
                },
                "waited in the queue",
            )],
        )
        .await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let (batch, fence) = (self.config.settings.batch, ctx.fence());
        let ageing = Ageing {
            bonus_per_minute: self.config.bonus_per_minute,
            cap: self.config.cap,
        };
        let done = drain(&ctx, batch, || {
            self.store.recompute_priorities(ageing, batch, fence)
        })
        .await?;
        Ok(swept(total(&done), left_more(&done, batch)))
    }
}
