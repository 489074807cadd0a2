//! The audit log (`/v1/audit`): pages of events, and a walk of the chain.

use axum::extract::State;
use homeostat_model::AuditPage;
use homeostat_store::VerifyReport;
use serde::Deserialize;

use crate::auth::{Admin, Operator};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, NoBody, Query};
use crate::state::ApiState;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    after: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "a page of audit events after `after`, oldest first", body = homeostat_model::AuditPage),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_audit(
    State(state): State<ApiState>,
    _: Operator,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: must be 1 to 1000"));
    }
    let items = state
        .store
        .audit_events(q.after.unwrap_or(0), limit)
        .await?;
    // A full page may have more after it; a short one is the log's end.
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditPage { items, next_cursor }))
}

#[utoipa::path(
    post,
    path = "/v1/audit/verify",
    tag = "audit",
    responses(
        (status = 200, description = "events checked and the first break, if any", body = VerifyReport),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn verify_audit(
    State(state): State<ApiState>,
    _: Admin,
    _: NoBody,
) -> Result<Json<VerifyReport>, ApiError> {
    Ok(Json(state.store.verify_audit_chain(&mut |_| {}).await?))
}
