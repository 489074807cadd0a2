//! workflows: releases or skips workflow steps left pending though every
//! step they need has finished. The database's trigger does that in the
//! transaction that finishes a step's last need; this controller is the
//! backstop (a need whose job was removed, counts changed by hand), on the
//! leader, fenced.

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, PlannedChange, Reconciled};
use homeostat_store::Store;

use crate::Settings;

/// The workflows controller.
#[derive(Debug, Clone)]
pub struct Workflows {
    store: Store,
    settings: Settings,
}

impl Workflows {
    /// A controller over `store`.
    pub fn new(store: Store, settings: Settings) -> Self {
        Self { store, settings }
    }
}

impl Controller for Workflows {
    fn name(&self) -> &str {
        "workflows"
    }

    fn interval(&self) -> Duration {
        self.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        let found = self.store.workflow_stragglers(self.settings.batch).await?;
        Ok(Plan {
            count: found.len() as u64,
            items: found
                .iter()
                .map(|s| PlannedChange {
                    subject: format!("job:{}", s.job_id),
                    from: "pending".into(),
                    to: "released or skipped".into(),
                    why: format!(
                        "step {} of workflow {}: every step it needs has finished",
                        s.name, s.workflow_id
                    ),
                })
                .collect(),
            note: Some(
                "steps left pending though every step they need has finished; a run releases each whose condition holds and skips the others".into(),
            ),
        })
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let fence = ctx.fence();
        let actor = fence.map_or_else(
            || "controller:workflows".to_owned(),
            |f| format!("controller:{}@{}", f.name, f.epoch),
        );
        let repaired = self
            .store
            .repair_workflows(self.settings.batch, fence, &actor)
            .await?;
        Ok(Reconciled::items(repaired as u64))
    }
}
