//! audit-chain-verify: walks the audit hash chain and reports the first
//! break (an edited, deleted or reordered event) as a failed run and an
//! `audit.chain_broken` notification, once per distinct break.

use std::sync::Mutex;
use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::Store;
use serde_json::json;

use crate::Settings;

/// The audit-chain-verify controller.
#[derive(Debug)]
pub struct AuditChainVerify {
    store: Store,
    settings: Settings,
    /// The break last reported, so a standing break notifies once.
    reported: Mutex<Option<i64>>,
}

impl AuditChainVerify {
    /// A controller over `store`.
    pub fn new(store: Store, settings: Settings) -> Self {
        Self {
            store,
            settings,
            reported: Mutex::new(None),
        }
    }
}

impl Controller for AuditChainVerify {
    fn name(&self) -> &str {
        "audit-chain-verify"
    }

    fn interval(&self) -> Duration {
        self.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        Ok(Plan {
            note: Some("read-only: walks the audit chain and changes nothing".into()),
            ..Plan::default()
        })
    }

    async fn reconcile(&self, _ctx: Context) -> Result<Reconciled, BoxError> {
        let report = self
            .store
            .verify_audit_chain(&mut |checked| {
                tracing::debug!(checked, "audit chain verification progress");
            })
            .await?;
        let Some(broken) = report.first_break else {
            *self.reported.lock().unwrap() = None;
            return Ok(Reconciled::items(report.checked));
        };
        let first_report = self.reported.lock().unwrap().replace(broken.seq) != Some(broken.seq);
        if first_report {
            self.store
                .add_notification(
                    "audit.chain_broken",
                    &json!({"seq": broken.seq, "reason": broken.reason, "checked": report.checked}),
                )
                .await?;
        }
        Err(format!(
            "audit chain broken at event {}: {}",
            broken.seq, broken.reason
        )
        .into())
    }
}
