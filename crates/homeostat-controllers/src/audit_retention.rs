//! audit-retention: audit events past retention (365 d by default) are
//! removed oldest first in batches of 10,000; each removal is itself audited
//! and the chain stays verifiable. In dry-run mode it counts and logs what it
//! would remove.

use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{AuditRetentionRun, PlanKind, Store};

use crate::AuditRetentionConfig;
use crate::sweep::{drain, left_more, swept, total};

/// The audit-retention controller.
#[derive(Debug, Clone)]
pub struct AuditRetention {
    store: Store,
    config: AuditRetentionConfig,
}

impl AuditRetention {
    /// A controller over `store`.
    pub fn new(store: Store, config: AuditRetentionConfig) -> Self {
        Self { store, config }
    }
}

impl Controller for AuditRetention {
    fn name(&self) -> &str {
        "audit-retention"
    }

    fn interval(&self) -> Duration {
        self.config.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        crate::sweep::plan_of(
            &self.store,
            &[(
                PlanKind::OldAuditEvents {
                    retention: self.config.retention,
                },
                "past retention",
            )],
        )
        .await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let (batch, fence) = (self.config.settings.batch, ctx.fence());
        let run = AuditRetentionRun {
            retention: self.config.retention,
            batch,
            dry_run: self.config.dry_run,
        };
        if run.dry_run {
            let would = self.store.delete_old_audit_events(run, fence).await?;
            tracing::info!(
                controller = ctx.controller(),
                would_delete = would,
                "audit retention dry run: nothing deleted"
            );
            return Ok(Reconciled::nothing());
        }
        let done = drain(&ctx, batch, || {
            self.store.delete_old_audit_events(run, fence)
        })
        .await?;
        Ok(swept(total(&done), left_more(&done, batch)))
    }
}
