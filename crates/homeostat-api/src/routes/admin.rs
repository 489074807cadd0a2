//! The operator's API: agents (list, show, drain), tenants, bootstrap
//! tokens and API keys (created with their secret shown once, listed,
//! revoked), the audit log (list, verify), and the controllers (status,
//! trigger, plan).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use homeostat_model::operator::{
    ControllerPlan, ControllerRun, ControllerView, CreatedSecret, KeyRole, NewApiKeyRequest,
    NewBootstrapTokenRequest, NewTenantRequest, PlannedChange,
};
use homeostat_model::{
    Agent, AgentId, ApiScope, AuditPage, NotificationId, Page, Tenant, TenantId, TokenId,
    TokenInfo, TokenKind,
};
use homeostat_runtime::{ControllerStatus, Manager};
use homeostat_store::{NewBootstrapToken, VerifyReport};
use serde::Deserialize;

use crate::auth::{Admin, Caller, Operator};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, NoBody, Path, Query};
use crate::state::ApiState;

// --- agents --------------------------------------------------------------

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
    let tenant_id = match (caller.tenant(), q.tenant_id) {
        (Some(own), Some(t)) if t != own => {
            return Ok(Page {
                items: vec![],
                next_cursor: None,
            });
        }
        (Some(own), _) => Some(own),
        (None, t) => t,
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

// --- tenants -------------------------------------------------------------

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

// --- tokens --------------------------------------------------------------

/// Longest a bootstrap token may live.
const MAX_BOOTSTRAP_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest an API key given a lifetime may live.
const MAX_API_KEY_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

#[utoipa::path(
    post,
    path = "/v1/bootstrap-tokens",
    tag = "tokens",
    request_body = NewBootstrapTokenRequest,
    responses(
        (status = 201, description = "created; the secret is shown this once", body = CreatedSecret),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn create_bootstrap_token(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    Json(req): Json<NewBootstrapTokenRequest>,
) -> Result<(StatusCode, Json<CreatedSecret>), ApiError> {
    let ttl = Duration::from_secs(req.ttl_secs);
    if ttl.is_zero() || ttl > MAX_BOOTSTRAP_TTL {
        return Err(ApiError::invalid(
            "ttl_secs: must be above 0 and at most 30 days (2592000)",
        ));
    }
    if !(1..=10_000).contains(&req.uses) {
        return Err(ApiError::invalid("uses: must be 1 to 10000"));
    }
    if let Some(t) = req.tenant_id {
        state.store.get_tenant(t).await?;
    }
    let issued = state
        .store
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: req.tenant_id,
                ttl,
                uses: req.uses,
            },
            &caller.actor(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedSecret {
            info: issued.info,
            secret: issued.secret,
        }),
    ))
}

#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "tokens",
    request_body = NewApiKeyRequest,
    responses(
        (status = 201, description = "created; the secret is shown this once", body = CreatedSecret),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn create_api_key(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    Json(req): Json<NewApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedSecret>), ApiError> {
    let scope = match (req.role, req.tenant_id) {
        (KeyRole::Admin, None) => ApiScope::Admin,
        (KeyRole::Viewer, None) => ApiScope::Viewer,
        (KeyRole::Tenant, Some(t)) => {
            state.store.get_tenant(t).await?;
            ApiScope::Tenant(t)
        }
        (KeyRole::Tenant, None) => {
            return Err(ApiError::invalid(
                "tenant_id: a tenant key names its tenant",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "tenant_id: only a tenant key belongs to a tenant",
            ));
        }
    };
    let ttl = req.ttl_secs.map(Duration::from_secs);
    if ttl.is_some_and(|t| t.is_zero() || t > MAX_API_KEY_TTL) {
        return Err(ApiError::invalid(format!(
            "ttl_secs: must be above 0 and at most 10 years ({}); leave it out for a key that does not expire",
            MAX_API_KEY_TTL.as_secs()
        )));
    }
    let issued = state
        .store
        .issue_api_key(scope, ttl, &caller.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedSecret {
            info: issued.info,
            secret: issued.secret,
        }),
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TokenQuery {
    tenant_id: Option<TenantId>,
}

#[utoipa::path(
    get,
    path = "/v1/bootstrap-tokens",
    tag = "tokens",
    params(TokenQuery),
    responses(
        (status = 200, description = "metadata, never a secret (the whole list)", body = homeostat_model::Page<homeostat_model::TokenInfo, homeostat_model::TokenId>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_bootstrap_tokens(
    State(state): State<ApiState>,
    _: Operator,
    Query(q): Query<TokenQuery>,
) -> Result<Json<Page<TokenInfo, TokenId>>, ApiError> {
    list_tokens(&state, TokenKind::Bootstrap, q).await
}

#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "tokens",
    params(TokenQuery),
    responses(
        (status = 200, description = "metadata, never a secret (the whole list)", body = homeostat_model::Page<homeostat_model::TokenInfo, homeostat_model::TokenId>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_api_keys(
    State(state): State<ApiState>,
    _: Operator,
    Query(q): Query<TokenQuery>,
) -> Result<Json<Page<TokenInfo, TokenId>>, ApiError> {
    list_tokens(&state, TokenKind::ApiKey, q).await
}

/// Credentials' metadata: the handlers that call it take an operator key.
async fn list_tokens(
    state: &ApiState,
    kind: TokenKind,
    q: TokenQuery,
) -> Result<Json<Page<TokenInfo, TokenId>>, ApiError> {
    // Metadata only (never a secret): viewers read it as they read the rest.
    Ok(Json(Page::whole(
        state.store.list_tokens(kind, q.tenant_id).await?,
    )))
}

#[utoipa::path(
    post,
    path = "/v1/tokens/{id}/revoke",
    tag = "tokens",
    params(("id" = uuid::Uuid, Path, description = "token id")),
    responses(
        (status = 204, description = "revoked: refused from now on"),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn revoke_token(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    Path(id): Path<TokenId>,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    state.store.revoke_token(id, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- audit ---------------------------------------------------------------

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

// --- controllers ---------------------------------------------------------

pub(crate) fn manager(state: &ApiState) -> Result<&Manager, ApiError> {
    state
        .manager
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("no controller manager runs in this server"))
}

#[utoipa::path(
    get,
    path = "/v1/controllers",
    tag = "controllers",
    responses(
        (status = 200, description = "{items, next_cursor}: each controller's last run, outcome, items, error, next run, leader (the whole list)", body = homeostat_model::Page<ControllerView, String>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_controllers(
    State(state): State<ApiState>,
    _: Operator,
) -> Result<Json<Page<ControllerView, String>>, ApiError> {
    let statuses = manager(&state)?.cluster_status().await;
    let mut holders = state.store.lease_holders().await?;
    Ok(Json(Page::whole(
        statuses
            .into_iter()
            .map(|status| {
                let leader = holders.remove(&status.name);
                controller_view(status, leader)
            })
            .collect(),
    )))
}

/// A controller as this replica's manager sees it (with the runs as its
/// leader published them, for an exclusive controller another replica
/// leads), and which replica leads it now.
fn controller_view(s: ControllerStatus, leader_replica: Option<String>) -> ControllerView {
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    };
    let to_ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ControllerView {
        interval_ms: to_ms(s.interval),
        exclusive: s.exclusive,
        leader: s.leader,
        running: s.running,
        last_run: s.last_run.map(|r| ControllerRun {
            started_at: ms(r.started_at),
            duration_ms: to_ms(r.duration),
            outcome: r.outcome.as_str().to_owned(),
            items: r.items,
            error: r.error,
        }),
        last_success_at: s.last_success_at.map(ms),
        consecutive_failures: s.consecutive_failures,
        next_run: s.next_run.map(ms),
        leader_replica,
        name: s.name,
    }
}

#[utoipa::path(
    post,
    path = "/v1/controllers/{name}/trigger",
    tag = "controllers",
    params(("name" = String, Path, description = "controller name")),
    responses(
        (status = 202, description = "a run is due now (coalesced with one already due)"),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn trigger_controller(
    State(state): State<ApiState>,
    admin: Admin,
    Path(name): Path<String>,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    trigger(&state, &admin, &name).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Makes a run of `name` due now (admin keys), audited as the caller.
pub(crate) async fn trigger(state: &ApiState, admin: &Admin, name: &str) -> Result<(), ApiError> {
    let caller = &admin.0;
    manager(state)?.trigger(name)?;
    state
        .store
        .append_audit(&[homeostat_model::NewAuditEvent {
            actor: caller.actor(),
            action: homeostat_model::AuditAction::ControllerTriggered.into(),
            subject: format!("controller:{name}"),
            details: serde_json::json!({}),
        }])
        .await?;
    Ok(())
}

#[utoipa::path(
    get,
    path = "/v1/controllers/{name}/plan",
    tag = "controllers",
    params(("name" = String, Path, description = "controller name")),
    responses(
        (status = 200, description = "what a run would change now (a dry run)", body = ControllerPlan),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn plan_controller(
    State(state): State<ApiState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Json<ControllerPlan>, ApiError> {
    // A plan names the jobs and agents a run would touch, of every tenant.
    let plan = manager(&state)?.plan(&name).await?;
    Ok(Json(ControllerPlan {
        count: plan.count,
        items: plan
            .items
            .into_iter()
            .map(|c| PlannedChange {
                subject: c.subject,
                from: c.from,
                to: c.to,
                why: c.why,
            })
            .collect(),
        note: plan.note,
    }))
}

// --- notifications -------------------------------------------------------

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
