//! audit-chain-verify: walks the audit hash chain when a walk is asked for
//! (`POST /v1/audit/verify`, the dashboard) or none was for `every`, and
//! stores its progress and outcome in the verification's row, so every
//! replica shows the same walk. A break (an edited, deleted or reordered
//! event) fails the run and raises `audit.chain_broken`, once per distinct
//! break.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::Store;
use serde_json::json;

use crate::AuditChainVerifyConfig;

/// Who the controller's own walks are requested by.
pub const SCHEDULE_ACTOR: &str = "controller:audit-chain-verify";

/// How often a running walk writes how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The audit-chain-verify controller.
#[derive(Debug)]
pub struct AuditChainVerify {
    store: Store,
    config: AuditChainVerifyConfig,
    /// The break last reported, so a standing break notifies once.
    reported: Mutex<Option<i64>>,
}

impl AuditChainVerify {
    /// A controller over `store`.
    pub fn new(store: Store, config: AuditChainVerifyConfig) -> Self {
        Self {
            store,
            config,
            reported: Mutex::new(None),
        }
    }
}

impl Controller for AuditChainVerify {
    fn name(&self) -> &str {
        "audit-chain-verify"
    }

    fn interval(&self) -> Duration {
        self.config.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        Ok(Plan {
            note: Some("read-only: walks the audit chain and changes nothing".into()),
            ..Plan::default()
        })
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let fence = ctx.fence();
        self.store
            .schedule_audit_verification(SCHEDULE_ACTOR, self.config.every)
            .await?;
        let Some(v) = self.store.start_audit_verification(fence).await? else {
            return Ok(Reconciled::nothing());
        };
        // The walk reports pages synchronously; the row is written beside
        // it, once a second. A walk that fails or is cut off (timeout, lost
        // lease) stays open and the next run starts it over.
        let checked = AtomicU64::new(0);
        let mut note = |n: u64| checked.store(n, Ordering::Relaxed);
        let walk = self.store.verify_audit_chain(&mut note);
        tokio::pin!(walk);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let report = loop {
            tokio::select! {
                report = &mut walk => break report?,
                _ = tick.tick() => {
                    let n = checked.load(Ordering::Relaxed);
                    if let Err(e) = self.store.record_audit_verification_progress(v.id, n).await {
                        tracing::warn!(error = %e, "could not record the audit walk's progress");
                    }
                }
            }
        };
        self.store
            .finish_audit_verification(v.id, Ok(&report), fence)
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
