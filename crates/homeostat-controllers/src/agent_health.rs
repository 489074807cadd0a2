//! agent-health: online agents silent past the stale timeout go offline, and
//! their running jobs are reclaimed at once (re-queued with the attempt
//! counted, or dead when attempts are used up) rather than left to wait for
//! their leases to expire.

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{PlanKind, Store};
use serde_json::json;

use crate::AgentHealthConfig;
use crate::sweep::{drain, notify_dead, total};

/// The agent-health controller.
#[derive(Debug, Clone)]
pub struct AgentHealth {
    store: Store,
    config: AgentHealthConfig,
}

impl AgentHealth {
    /// A controller over `store`.
    pub fn new(store: Store, config: AgentHealthConfig) -> Self {
        Self { store, config }
    }
}

impl Controller for AgentHealth {
    fn name(&self) -> &str {
        "agent-health"
    }

    fn interval(&self) -> Duration {
        self.config.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        crate::sweep::plan_of(
            &self.store,
            &[
                (
                    PlanKind::SilentAgents {
                        stale_after: self.config.stale_after,
                    },
                    "silent past the stale timeout",
                ),
                (
                    PlanKind::OfflineAgentJobs {
                        stale_after: self.config.stale_after,
                    },
                    "its agent is offline",
                ),
            ],
        )
        .await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let (batch, fence) = (self.config.settings.batch, ctx.fence());
        let offline = drain(&ctx, batch, || {
            self.store
                .mark_silent_agents_offline(self.config.stale_after, batch, fence)
        })
        .await?;
        for id in offline.iter().flatten() {
            self.store
                .add_notification(
                    "agent.offline",
                    &json!({"agent_id": id, "silent_for_secs": self.config.stale_after.as_secs()}),
                )
                .await?;
        }
        let reclaimed = drain(&ctx, batch, || {
            self.store.reclaim_offline_agent_jobs(batch, fence)
        })
        .await?;
        notify_dead(&self.store, &ctx, &reclaimed, "its agent went offline").await?;
        Ok(Reconciled::items(total(&offline) + total(&reclaimed)))
    }
}
