//! Notifications waiting to be delivered, on SQLite.

use std::time::Duration;

use homeostat_model::{Id, Notification, NotificationState, new_id};
use homeostat_runtime::Fence;
use jiff::Timestamp;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, id_of};
use crate::Delivery;
use crate::error::{Context, StoreError, corrupt};
use crate::time::{add, ms, ts};

fn notification_from_row(r: &SqliteRow) -> Result<Notification, StoreError> {
    let op = "reading a notification";
    let payload: String = r.try_get("payload").op(op)?;
    Ok(Notification {
        id: id_of(r, "id")?,
        event: r.try_get("event").op(op)?,
        payload: serde_json::from_str(&payload).map_err(|e| corrupt(op, e))?,
        state: r
            .try_get::<String, _>("state")
            .op(op)?
            .parse()
            .map_err(|e| corrupt(op, e))?,
        attempts: r.try_get::<i64, _>("attempts").op(op)? as u32,
        next_attempt_at: ts(r.try_get("next_attempt_at").op(op)?),
        last_error: r.try_get("last_error").op(op)?,
        created_at: ts(r.try_get("created_at").op(op)?),
    })
}

impl SqliteStore {
    pub(crate) async fn add_notification(
        &self,
        event: &str,
        payload: &serde_json::Value,
        now: Timestamp,
    ) -> Result<Id, StoreError> {
        let op = "queueing a notification";
        let id = new_id();
        let mut tx = self.write(op).await?;
        sqlx::query(
            "INSERT INTO notifications (id, event, payload, state, next_attempt_at, created_at)
             VALUES (?, ?, ?, 'pending', ?, ?)",
        )
        .bind(id.to_string())
        .bind(event)
        .bind(payload.to_string())
        .bind(ms(now))
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .op(op)?;
        tx.commit().await.op(op)?;
        Ok(id)
    }

    pub(crate) async fn claim_due_notifications(
        &self,
        now: Timestamp,
        limit: u32,
        hold: Duration,
        fence: Option<&Fence>,
    ) -> Result<Vec<Notification>, StoreError> {
        let op = "claiming due notifications";
        let mut tx = self.write(op).await?;
        Self::check_fence(&mut tx, fence, op).await?;
        let rows = sqlx::query(
            "UPDATE notifications SET next_attempt_at = ?2
             WHERE id IN (SELECT id FROM notifications WHERE state = 'pending'
                          AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?3)
             RETURNING id, event, payload, state, attempts, next_attempt_at, last_error, created_at",
        )
        .bind(ms(now))
        .bind(add(now, hold))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .op(op)?;
        tx.commit().await.op(op)?;
        // RETURNING has no order: oldest first.
        let mut due = rows
            .iter()
            .map(notification_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        due.sort_by_key(|n| (n.created_at, n.id));
        Ok(due)
    }

    pub(crate) async fn record_delivery(
        &self,
        id: Id,
        delivery: &Delivery,
        now: Timestamp,
    ) -> Result<NotificationState, StoreError> {
        let op = "recording a notification delivery";
        let mut tx = self.write(op).await?;
        let attempts: Option<i64> = sqlx::query_scalar(
            "SELECT attempts FROM notifications WHERE id = ? AND state = 'pending'",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .op(op)?;
        let attempts = attempts.ok_or_else(|| StoreError::NotFound {
            entity: "pending notification",
            id: id.to_string(),
        })? as u32
            + 1;
        let (state, next, error) = crate::delivery_outcome(delivery, attempts, now);
        sqlx::query(
            "UPDATE notifications SET state = ?2, attempts = ?3, next_attempt_at = ?4,
               last_error = COALESCE(?5, last_error),
               sent_at = CASE WHEN ?2 = 'sent' THEN ?6 ELSE sent_at END
             WHERE id = ?1",
        )
        .bind(id.to_string())
        .bind(state.as_str())
        .bind(i64::from(attempts))
        .bind(next)
        .bind(error)
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .op(op)?;
        tx.commit().await.op(op)?;
        Ok(state)
    }

    pub(crate) async fn get_notification(&self, id: Id) -> Result<Notification, StoreError> {
        let row = sqlx::query(
            "SELECT id, event, payload, state, attempts, next_attempt_at, last_error, created_at
             FROM notifications WHERE id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .op("reading a notification")?
        .ok_or_else(|| StoreError::NotFound {
            entity: "notification",
            id: id.to_string(),
        })?;
        notification_from_row(&row)
    }
}
