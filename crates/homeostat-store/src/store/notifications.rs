//! The store's notifications outbox.

use std::time::Duration;

use homeostat_model::{Notification, NotificationId, NotificationState};
use homeostat_runtime::Fence;

use super::{Db, Store};
use crate::{Delivery, Page, StoreError, notifications};

impl Store {
    // --- notifications ----------------------------------------------------

    /// Queues a notification for delivery.
    pub async fn add_notification(
        &self,
        event: &str,
        payload: &serde_json::Value,
    ) -> Result<NotificationId, StoreError> {
        dispatch!(self, notifications::add_notification(event, payload))
    }

    /// Takes up to `limit` due notifications for sending, hiding them from
    /// other senders for `hold`.
    pub async fn claim_due_notifications(
        &self,
        limit: u32,
        hold: Duration,
        fence: Option<&Fence>,
    ) -> Result<Vec<Notification>, StoreError> {
        dispatch!(self, notifications::claim_due(limit, hold, fence))
    }

    /// Records a delivery attempt: sent; or retried after min(2^n min, 1 h);
    /// or dead after 5 attempts or a permanent failure.
    pub async fn record_delivery(
        &self,
        id: NotificationId,
        delivery: &Delivery,
    ) -> Result<NotificationState, StoreError> {
        dispatch!(self, notifications::record_delivery(id, delivery))
    }

    /// A page of the notifications in one state (`dead` ones, for an
    /// operator), newest first, after the notification `after`.
    pub async fn list_notifications(
        &self,
        state: NotificationState,
        after: Option<NotificationId>,
        limit: u32,
    ) -> Result<Page<Notification, NotificationId>, StoreError> {
        dispatch!(self, notifications::list(state, after, limit))
    }

    /// Sends a dead notification again, with fresh attempts (audited).
    pub async fn redrive_notification(
        &self,
        id: NotificationId,
        actor: &str,
    ) -> Result<Notification, StoreError> {
        dispatch!(self, notifications::redrive(id, actor))
    }

    /// One notification.
    pub async fn get_notification(&self, id: NotificationId) -> Result<Notification, StoreError> {
        dispatch!(self, notifications::get(id))
    }
}
