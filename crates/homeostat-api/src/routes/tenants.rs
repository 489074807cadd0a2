//! Tenants (`/v1/tenants`): create, list, and a tenant's usage against its
//! quotas.

use axum::extract::State;
use axum::http::StatusCode;
use homeostat_model::operator::NewTenantRequest;
use homeostat_model::{Page, Tenant, TenantId};

use crate::auth::{Admin, Caller};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, Path};
use crate::state::ApiState;

#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    request_body = NewTenantRequest,
    responses(
        (status = 201, description = "created", body = homeostat_model::Tenant),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn create_tenant(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    Json(req): Json<NewTenantRequest>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let tenant = state
        .store
        .create_tenant(&req.name, req.tier, &caller.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    responses(
        (status = 200, description = "tenants the key sees (the whole list)", body = homeostat_model::Page<homeostat_model::Tenant, homeostat_model::TenantId>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_tenants(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Page<Tenant, TenantId>>, ApiError> {
    let mut tenants = state.store.list_tenants().await?;
    tenants.retain(|t| caller.sees(Some(t.id)));
    Ok(Json(Page::whole(tenants)))
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/usage",
    tag = "tenants",
    params(("id" = uuid::Uuid, Path, description = "tenant id")),
    responses(
        (status = 200, description = "the tenant's live jobs and queues, and its quotas", body = homeostat_model::operator::TenantUsage),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn tenant_usage(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<TenantId>,
) -> Result<Json<homeostat_model::operator::TenantUsage>, ApiError> {
    if !caller.sees(Some(id)) {
        return Err(ApiError::not_found(format!("tenant {id} not found")));
    }
    state.store.get_tenant(id).await?;
    let limits = state.settings.quotas.of(id);
    Ok(Json(state.quotas.usage(&state.store, id, limits).await?))
}
