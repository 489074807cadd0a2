//! Limits (`/v1/limits`): concurrency and rate limits by key, shared by
//! every tenant, queue and replica. Operators read them (with what holds
//! and waits on each key); admins set and delete them.

use axum::extract::State;
use axum::http::StatusCode;
use homeostat_model::{Limit, LimitSpec, LimitUsage, Page};

use crate::auth::{Admin, Operator};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, NoBody, Path};
use crate::state::ApiState;

#[utoipa::path(
    get,
    path = "/v1/limits",
    tag = "limits",
    responses(
        (status = 200, description = "every limit with what holds and waits under it and its busiest keys (the whole list)", body = homeostat_model::Page<LimitUsage, String>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_limits(
    State(state): State<ApiState>,
    _: Operator,
) -> Result<Json<Page<LimitUsage, String>>, ApiError> {
    Ok(Json(Page::whole(state.store.limits_usage().await?)))
}

#[utoipa::path(
    get,
    path = "/v1/limits/{name}",
    tag = "limits",
    params(("name" = String, Path, description = "limit name")),
    responses(
        (status = 200, description = "the limit, what holds and waits under it, its busiest keys", body = LimitUsage),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn show_limit(
    State(state): State<ApiState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Json<LimitUsage>, ApiError> {
    Ok(Json(state.store.limit_usage(&name).await?))
}

#[utoipa::path(
    put,
    path = "/v1/limits/{name}",
    tag = "limits",
    params(("name" = String, Path, description = "limit name: 1 to 100 of A-Z a-z 0-9 . _ -, not . or .. and not starting with -")),
    request_body = LimitSpec,
    responses(
        (status = 201, description = "created", body = Limit),
        (status = 200, description = "changed: jobs under it keep their keys; its keys' waiting jobs are admitted under the new values at once", body = Limit),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn set_limit(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    Path(name): Path<String>,
    Json(spec): Json<LimitSpec>,
) -> Result<(StatusCode, Json<Limit>), ApiError> {
    let (limit, created) = state.store.set_limit(&name, &spec, &caller.actor()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(limit)))
}

#[utoipa::path(
    delete,
    path = "/v1/limits/{name}",
    tag = "limits",
    params(("name" = String, Path, description = "limit name")),
    responses(
        (status = 204, description = "deleted: jobs waiting on it alone are queued; those under other limits still wait for them"),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn delete_limit(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    Path(name): Path<String>,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    state.store.delete_limit(&name, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}
