//! Credentials (`/v1/bootstrap-tokens`, `/v1/api-keys`, `/v1/tokens`):
//! created with their secret shown once, listed (metadata only), revoked.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use homeostat_model::operator::{
    CreatedSecret, KeyRole, NewApiKeyRequest, NewBootstrapTokenRequest,
};
use homeostat_model::{ApiScope, Page, TenantId, TokenId, TokenInfo, TokenKind};
use homeostat_store::NewBootstrapToken;
use serde::Deserialize;

use crate::auth::{Admin, Operator};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, NoBody, Path, Query};
use crate::state::ApiState;

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
