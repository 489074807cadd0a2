//! limits: admits jobs waiting for their limits whose keys came due
//! without anything on this replica asking (a rate's window ending, a
//! cancelled job's hold running out, a slot freed on a replica that died
//! before admitting), and prunes starts older than every window.
//!
//! Admission itself runs wherever a slot is freed or a job enqueued; this
//! controller is the backstop that makes it certain, on the leader.

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::Store;

use crate::Settings;

/// The limits controller.
#[derive(Debug, Clone)]
pub struct Limits {
    store: Store,
    settings: Settings,
}

impl Limits {
    /// A controller over `store`.
    pub fn new(store: Store, settings: Settings) -> Self {
        Self { store, settings }
    }
}

impl Controller for Limits {
    fn name(&self) -> &str {
        "limits"
    }

    fn interval(&self) -> Duration {
        self.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        let usage = self.store.limits_usage().await?;
        let waiting: u64 = usage.iter().map(|u| u.waiting).sum();
        Ok(Plan {
            count: 0,
            items: Vec::new(),
            note: Some(format!(
                "{waiting} jobs wait under {} limits; a run admits those whose keys have room when their wake-up is due",
                usage.len()
            )),
        })
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let fence = ctx.fence();
        let actor = fence.map_or_else(
            || "controller:limits".to_owned(),
            |f| format!("controller:{}@{}", f.name, f.epoch),
        );
        let admitted = self.store.admit_waiting(&actor).await?;
        let pruned = self.store.prune_limits(fence).await?;
        Ok(Reconciled::items(
            admitted.queued_count() + admitted.cancelled + pruned,
        ))
    }
}
