//! notification-dispatch: sends due notifications through the notifier.
//! Failures back off (min(2^n min, 1 h)) and go dead after 5 attempts or at
//! once on a permanent failure; a dead notification raises a
//! `notification.dead` notification (but one of those dying raises nothing,
//! so there is no loop). Claimed notifications are hidden from other senders
//! while they are sent, and the controller is exclusive: one replica sends.

use std::time::Duration;

use homeostat_model::NotificationState;
use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{Delivery, PlanKind, Store};
use serde_json::json;

use crate::notifier::{Notifier, SEND_TIMEOUT};
use crate::{MAX_BATCHES_PER_RUN, Settings};

/// Notifications claimed (and hidden from other senders) at a time.
const CLAIM_CHUNK: u32 = 10;

/// The notification-dispatch controller.
#[derive(Debug, Clone)]
pub struct NotificationDispatch {
    store: Store,
    notifier: Notifier,
    settings: Settings,
}

impl NotificationDispatch {
    /// A controller sending `store`'s notifications through `notifier`.
    pub fn new(store: Store, notifier: Notifier, settings: Settings) -> Self {
        Self {
            store,
            notifier,
            settings,
        }
    }
}

impl Controller for NotificationDispatch {
    fn name(&self) -> &str {
        "notification-dispatch"
    }

    fn interval(&self) -> Duration {
        self.settings.interval
    }

    async fn plan(&self, _ctx: Context) -> Result<Plan, BoxError> {
        crate::sweep::plan_of(&self.store, &[(PlanKind::DueNotifications, "due")]).await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        // Claim a few at a time and hide them for as long as sending them
        // can take: if this replica dies mid-send, they are due again soon.
        let batch = self.settings.batch.clamp(1, CLAIM_CHUNK);
        let hold = SEND_TIMEOUT * batch + Duration::from_secs(30);
        let mut changed = 0;
        for _ in 0..MAX_BATCHES_PER_RUN {
            let due = self
                .store
                .claim_due_notifications(batch, hold, ctx.fence())
                .await?;
            for n in &due {
                if ctx.is_cancelled() {
                    // The rest become due again when the hold runs out.
                    return Ok(Reconciled::items(changed));
                }
                let delivery = match self.notifier.send(n).await {
                    Ok(()) => Delivery::Sent,
                    Err(e) => Delivery::Failed {
                        error: e.message,
                        permanent: e.permanent,
                    },
                };
                let state = self.store.record_delivery(n.id, &delivery).await?;
                match state {
                    NotificationState::Sent => changed += 1,
                    NotificationState::Dead => {
                        changed += 1;
                        tracing::warn!(notification = %n.id, event = %n.event, "notification given up");
                        if n.event != "notification.dead" {
                            let error = match &delivery {
                                Delivery::Failed { error, .. } => error.as_str(),
                                Delivery::Sent => "",
                            };
                            self.store
                                .add_notification(
                                    "notification.dead",
                                    &json!({"notification_id": n.id, "event": n.event, "error": error})
                                )
                                .await?;
                        }
                    }
                    NotificationState::Pending => {}
                }
            }
            if due.len() < batch as usize {
                break;
            }
        }
        Ok(Reconciled::items(changed))
    }
}
