//! The operator's view of the fleet (`/v1/agents`): list, show, drain,
//! resume, remove, revoke, and an agent's credentials. (The agents' own
//! protocol is `agent.rs`.)

use axum::extract::State;
use homeostat_model::{Agent, AgentId, Page, TenantId, TokenId, TokenInfo};
use serde::Deserialize;

use crate::auth::{Admin, Caller};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, NoBody, Path, Query};
use crate::state::ApiState;

/// Filters and paging of `GET /v1/agents`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AgentsQuery {
    /// Agents in this status only.
    pub(crate) status: Option<homeostat_model::AgentStatus>,
    /// One tenant's agents only (a tenant key sees its own only).
    pub(crate) tenant_id: Option<TenantId>,
    /// The previous page's `next_cursor`.
    pub(crate) after: Option<AgentId>,
    /// Agents in one page: 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
}

/// Most agents in one page.
pub(crate) const MAX_AGENTS_PAGE: u32 = 1000;

#[utoipa::path(
    get,
    path = "/v1/agents",
    tag = "agents",
    params(AgentsQuery),
    responses(
        (status = 200, description = "a page of the agents the key sees, by name", body = homeostat_model::Page<homeostat_model::Agent, homeostat_model::AgentId>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_agents(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<AgentsQuery>,
) -> Result<Json<Page<Agent, AgentId>>, ApiError> {
    Ok(Json(visible_agents(&state, &caller, &q).await?))
}

/// A page of the agents the caller may see.
pub(crate) async fn visible_agents(
    state: &ApiState,
    caller: &Caller,
    q: &AgentsQuery,
) -> Result<Page<Agent, AgentId>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_AGENTS_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit: must be 1 to {MAX_AGENTS_PAGE}"
        )));
    }
    let Some(tenant_id) = caller.list_scope(q.tenant_id) else {
        return Ok(Page::whole(vec![]));
    };
    let filter = homeostat_store::AgentFilter {
        tenant_id,
        status: q.status,
    };
    let mut page = state.store.list_agents(&filter, q.after, limit).await?;
    page.items.retain(|a| caller.sees(a.tenant_id));
    Ok(page)
}

async fn visible_agent(state: &ApiState, caller: &Caller, id: AgentId) -> Result<Agent, ApiError> {
    let agent = state.store.get_agent(id).await?;
    if !caller.sees(agent.tenant_id) {
        return Err(ApiError::not_found(format!("agent {id} not found")));
    }
    Ok(agent)
}

#[utoipa::path(
    get,
    path = "/v1/agents/{id}",
    tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "agent id")),
    responses(
        (status = 200, description = "the agent", body = homeostat_model::Agent),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn show_agent(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<AgentId>,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(visible_agent(&state, &caller, id).await?))
}

#[utoipa::path(
    post,
    path = "/v1/agents/{id}/drain",
    tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "agent id")),
    responses(
        (status = 200, description = "draining: it finishes its jobs and claims no more", body = homeostat_model::Agent),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn drain_agent(
    State(state): State<ApiState>,
    admin: Admin,
    Path(id): Path<AgentId>,
    _: NoBody,
) -> Result<Json<Agent>, ApiError> {
    Ok(Json(drain(&state, &admin, id).await?))
}

/// Drains an agent (admin keys), audited as the caller.
pub(crate) async fn drain(state: &ApiState, admin: &Admin, id: AgentId) -> Result<Agent, ApiError> {
    let caller = &admin.0;
    visible_agent(state, caller, id).await?;
    Ok(state.store.drain_agent(id, &caller.actor()).await?)
}

#[utoipa::path(
    post,
    path = "/v1/agents/{id}/resume",
    tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "agent id")),
    responses(
        (status = 200, description = "online again: it claims jobs (a drain undone)", body = homeostat_model::Agent),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn resume_agent(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    Path(id): Path<AgentId>,
    _: NoBody,
) -> Result<Json<Agent>, ApiError> {
    visible_agent(&state, &caller, id).await?;
    Ok(Json(state.store.resume_agent(id, &caller.actor()).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/agents/{id}",
    tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "agent id")),
    responses(
        (status = 200, description = "removed: the offline agent is deleted and its credentials revoked; its past jobs keep its id", body = homeostat_model::Agent),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn remove_agent(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    Path(id): Path<AgentId>,
    _: NoBody,
) -> Result<Json<Agent>, ApiError> {
    visible_agent(&state, &caller, id).await?;
    Ok(Json(state.store.remove_agent(id, &caller.actor()).await?))
}

#[utoipa::path(
    get,
    path = "/v1/agents/{id}/credentials",
    tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "agent id")),
    responses(
        (status = 200, description = "the agent's credentials: metadata, never a secret; revoked ones too (the whole list)", body = homeostat_model::Page<homeostat_model::TokenInfo, homeostat_model::TokenId>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn agent_credentials(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<AgentId>,
) -> Result<Json<Page<TokenInfo, TokenId>>, ApiError> {
    visible_agent(&state, &caller, id).await?;
    Ok(Json(Page::whole(state.store.agent_credentials(id).await?)))
}

#[utoipa::path(
    post,
    path = "/v1/agents/{id}/revoke",
    tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "agent id")),
    responses(
        (status = 200, description = "revoked: its next request is 401, it is offline, and its running jobs were reclaimed", body = homeostat_model::operator::RevokedAgent),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn revoke_agent(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    Path(id): Path<AgentId>,
    _: NoBody,
) -> Result<Json<homeostat_model::operator::RevokedAgent>, ApiError> {
    visible_agent(&state, &caller, id).await?;
    let revoked = state.store.revoke_agent(id, &caller.actor()).await?;
    tracing::info!(agent = %id, reclaimed = revoked.reclaimed.len(), "agent revoked");
    Ok(Json(revoked))
}
