//! Notifications (`/v1/notifications`): the dead ones, and sending one
//! again.

use axum::extract::State;
use homeostat_model::{NotificationId, Page};
use serde::Deserialize;

use crate::auth::{Admin, Operator};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, NoBody, Path, Query};
use crate::state::ApiState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct NotificationQuery {
    #[serde(default = "dead")]
    state: homeostat_model::NotificationState,
    /// The notification after which the page starts (a `next_cursor`).
    after: Option<NotificationId>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

fn dead() -> homeostat_model::NotificationState {
    homeostat_model::NotificationState::Dead
}

#[utoipa::path(
    get,
    path = "/v1/notifications",
    tag = "notifications",
    params(NotificationQuery),
    responses(
        (status = 200, description = "a page of the notifications in a state (dead by default), newest first", body = homeostat_model::Page<homeostat_model::Notification, homeostat_model::NotificationId>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_notifications(
    State(state): State<ApiState>,
    _: Operator,
    Query(q): Query<NotificationQuery>,
) -> Result<Json<Page<homeostat_model::Notification, NotificationId>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: must be 1 to 1000"));
    }
    Ok(Json(
        state
            .store
            .list_notifications(q.state, q.after, limit)
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/notifications/{id}/redrive",
    tag = "notifications",
    params(("id" = uuid::Uuid, Path, description = "notification id")),
    responses(
        (status = 200, description = "pending again, with fresh attempts", body = homeostat_model::Notification),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn redrive_notification(
    State(state): State<ApiState>,
    admin: Admin,
    Path(id): Path<homeostat_model::NotificationId>,
    _: NoBody,
) -> Result<Json<homeostat_model::Notification>, ApiError> {
    Ok(Json(redrive(&state, &admin, id).await?))
}

/// Sends a dead notification again (admin keys), audited as the caller.
pub(crate) async fn redrive(
    state: &ApiState,
    admin: &Admin,
    id: homeostat_model::NotificationId,
) -> Result<homeostat_model::Notification, ApiError> {
    let caller = &admin.0;
    Ok(state
        .store
        .redrive_notification(id, &caller.actor())
        .await?)
}
