//! The audit log (`/v1/audit`): pages of events, and verifications of the
//! chain (asked for here, walked by the audit-chain-verify controller).

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use homeostat_model::operator::AuditVerification;
use homeostat_model::{AuditPage, Page, VerificationId};
use serde::Deserialize;

use crate::auth::{Admin, Operator};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, NoBody, Path, Query};
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
        (status = 202, description = "the verification asked for (or the one already open, which this request joins), pending until the audit-chain-verify leader walks it; follow `Location` for its progress", body = AuditVerification,
         headers(("Location" = String, description = "/v1/audit/verifications/{id}"))),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn verify_audit(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    _: NoBody,
) -> Result<impl IntoResponse, ApiError> {
    let v = state
        .store
        .request_audit_verification(&caller.actor())
        .await?;
    wake_the_walker(&state);
    let location = format!("/v1/audit/verifications/{}", v.id);
    Ok((StatusCode::ACCEPTED, [(LOCATION, location)], Json(v)))
}

/// Makes audit-chain-verify's next run due now, if it runs here: the walk
/// starts at once where this replica leads it, and within the controller's
/// interval where another does.
pub(crate) fn wake_the_walker(state: &ApiState) {
    if let Some(manager) = &state.manager {
        // Not registered (disabled): the request waits for an operator's
        // configuration, as the verification's `pending` state says.
        let _ = manager.trigger("audit-chain-verify");
    }
}

#[utoipa::path(
    get,
    path = "/v1/audit/verifications",
    tag = "audit",
    responses(
        (status = 200, description = "the latest verifications of the audit chain, newest first: the open one, if any, and the last finished ones (the whole list)", body = homeostat_model::Page<AuditVerification, homeostat_model::VerificationId>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_verifications(
    State(state): State<ApiState>,
    _: Operator,
) -> Result<Json<Page<AuditVerification, VerificationId>>, ApiError> {
    let items = state
        .store
        .audit_verifications(homeostat_store::VERIFICATIONS_KEPT + 1)
        .await?;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/audit/verifications/{id}",
    tag = "audit",
    params(("id" = uuid::Uuid, Path, description = "verification id")),
    responses(
        (status = 200, description = "the verification: its state, progress (`checked` of `total`) and outcome", body = AuditVerification),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn get_verification(
    State(state): State<ApiState>,
    _: Operator,
    Path(id): Path<VerificationId>,
) -> Result<Json<AuditVerification>, ApiError> {
    Ok(Json(state.store.audit_verification(id).await?))
}
