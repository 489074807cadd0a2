//! Notifications waiting to be delivered: queued by controllers, claimed by
//! the dispatcher, retried with backoff until sent or dead.

use std::time::Duration;

use homeostat_model::{Notification, NotificationId, NotificationState, new_id};
use homeostat_runtime::Fence;

use crate::Delivery;
use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::decisions::delivery_outcome;
use crate::error::{Context, StoreError};
use crate::leases::check_fence;
use crate::rows::{self, notification_columns};
use crate::time::{add, ms};

const INSERT: Sql = Sql::both(
    "INSERT INTO notifications (id, event, payload, state, next_attempt_at, created_at)
     VALUES ($1, $2, $3, 'pending', $4, $5)",
);
/// Hides the due notifications from other senders until `hold` has passed.
const CLAIM_DUE: Sql = Sql::both(concat!(
    "UPDATE notifications SET next_attempt_at = $2
     WHERE id IN (SELECT id FROM notifications WHERE state = 'pending'
                  AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT CAST($3 AS BIGINT))
     RETURNING ",
    notification_columns!()
));
const PENDING_ATTEMPTS: Sql =
    Sql::both("SELECT attempts FROM notifications WHERE id = $1 AND state = 'pending'");
const RECORD: Sql = Sql::both(
    "UPDATE notifications SET state = $2, attempts = $3, next_attempt_at = $4,
       last_error = COALESCE($5, last_error),
       sent_at = CASE WHEN $2 = 'sent' THEN $6 ELSE sent_at END
     WHERE id = $1",
);
const GET: Sql = Sql::both(concat!(
    "SELECT ",
    notification_columns!(),
    " FROM notifications WHERE id = $1"
));

/// `$1` the state, `$2` the notification after which the page starts (the
/// newest first), `$3` the page's size.
const LIST: Sql = Sql::pair(
    concat!(
        "SELECT ",
        notification_columns!(),
        " FROM notifications WHERE state = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT CAST($3 AS BIGINT)"
    ),
    concat!(
        "SELECT ",
        notification_columns!(),
        " FROM notifications WHERE state = $1 AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ),
);
const REDRIVE: Sql = Sql::both(concat!(
    "UPDATE notifications SET state = 'pending', attempts = 0, next_attempt_at = $2
     WHERE id = $1 AND state = 'dead' RETURNING ",
    notification_columns!()
));

pub(crate) async fn list<B: Backend>(
    b: &B,
    state: NotificationState,
    after: Option<NotificationId>,
    limit: u32,
) -> Result<homeostat_model::Page<Notification, NotificationId>, StoreError> {
    let stmt = Stmt::new::<B>(LIST)
        .arg(state.as_str())
        .arg(after)
        .arg(i64::from(limit) + 1);
    let items = b
        .fetch(stmt)
        .await
        .op("listing notifications")?
        .iter()
        .map(rows::notification)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(homeostat_model::Page::of_one_more(items, limit, |n| n.id))
}

pub(crate) async fn redrive<B: Backend>(
    b: &B,
    id: NotificationId,
    actor: &str,
) -> Result<Notification, StoreError> {
    let now = b.now();
    let op = "redriving a notification";
    let mut tx = b.begin(op).await?;
    let stmt = Stmt::new::<B>(REDRIVE).arg(id).arg(ms(now));
    let Some(row) = B::fetch_in(&mut tx, stmt).await.op(op)?.into_iter().next() else {
        drop(tx);
        let current = get(b, id).await?;
        return Err(StoreError::Conflict {
            operation: op,
            entity: "notification",
            id: id.to_string(),
            reason: format!("it is {}, not dead", current.state.as_str()),
        });
    };
    let notification = rows::notification(&row)?;
    let event = homeostat_model::NewAuditEvent {
        actor: actor.to_owned(),
        action: homeostat_model::AuditAction::NotificationRedriven.into(),
        subject: format!("notification:{id}"),
        details: serde_json::json!({"event": notification.event}),
    };
    crate::audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    Ok(notification)
}

/// Queues a notification inside `tx`: it is sent only if the change it
/// tells of commits, and always then.
pub(crate) async fn add_in<B: Backend>(
    tx: &mut B::Tx,
    event: &str,
    payload: &serde_json::Value,
    now_ms: i64,
) -> Result<(), StoreError> {
    let id = NotificationId::from(new_id());
    let payload = payload.to_string();
    let stmt = Stmt::new::<B>(INSERT)
        .arg(id)
        .arg(event)
        .arg(&payload)
        .arg(now_ms)
        .arg(now_ms);
    B::execute_in(tx, stmt)
        .await
        .op("queueing a notification")?;
    Ok(())
}

pub(crate) async fn add_notification<B: Backend>(
    b: &B,
    event: &str,
    payload: &serde_json::Value,
) -> Result<NotificationId, StoreError> {
    let now = b.now();
    let id = NotificationId::from(new_id());
    let payload = payload.to_string();
    let stmt = Stmt::new::<B>(INSERT)
        .arg(id)
        .arg(event)
        .arg(&payload)
        .arg(ms(now))
        .arg(ms(now));
    b.execute_write(stmt).await.op("queueing a notification")?;
    Ok(id)
}

pub(crate) async fn claim_due<B: Backend>(
    b: &B,
    limit: u32,
    hold: Duration,
    fence: Option<&Fence>,
) -> Result<Vec<Notification>, StoreError> {
    let now = b.now();
    let op = "claiming due notifications";
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, fence, op).await?;
    let stmt = Stmt::new::<B>(CLAIM_DUE)
        .arg(ms(now))
        .arg(add(now, hold))
        .arg(i64::from(limit));
    let rows = B::fetch_in(&mut tx, stmt).await.op(op)?;
    B::commit(tx, op).await?;
    // RETURNING has no order: oldest first.
    let mut due = rows
        .iter()
        .map(rows::notification)
        .collect::<Result<Vec<_>, _>>()?;
    due.sort_by_key(|n| (n.created_at, n.id));
    Ok(due)
}

pub(crate) async fn record_delivery<B: Backend>(
    b: &B,
    id: NotificationId,
    delivery: &Delivery,
) -> Result<NotificationState, StoreError> {
    let now = b.now();
    let op = "recording a notification delivery";
    let mut tx = b.begin(op).await?;
    let rows = B::fetch_in(&mut tx, Stmt::new::<B>(PENDING_ATTEMPTS).arg(id))
        .await
        .op(op)?;
    let attempts = rows
        .first()
        .ok_or_else(|| StoreError::NotFound {
            entity: "pending notification",
            id: id.to_string(),
        })?
        .num::<u32>("attempts")?
        + 1;
    let (state, next, error) = delivery_outcome(delivery, attempts, now);
    let stmt = Stmt::new::<B>(RECORD)
        .arg(id)
        .arg(state.as_str())
        .arg(i64::from(attempts))
        .arg(next)
        .arg(error.as_deref())
        .arg(ms(now));
    B::execute_in(&mut tx, stmt).await.op(op)?;
    B::commit(tx, op).await?;
    Ok(state)
}

pub(crate) async fn get<B: Backend>(b: &B, id: NotificationId) -> Result<Notification, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(GET).arg(id))
        .await
        .op("reading a notification")?;
    rows::notification(rows.first().ok_or_else(|| StoreError::NotFound {
        entity: "notification",
        id: id.to_string(),
    })?)
}
