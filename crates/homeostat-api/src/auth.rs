//! Who is calling: an agent (its credential) or an API key (its role), both
//! as `Authorization: Bearer …`. A missing or dead credential is 401; a role
//! that may not do something is 403; another tenant's entity is 404, so a
//! tenant cannot learn what exists outside it.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use homeostat_model::{AgentId, ApiScope, TenantId, TokenId};

use crate::error::ApiError;
use crate::state::ApiState;

fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer credential"))?;
    // The scheme is case-insensitive (RFC 9110): `bearer` is `Bearer`.
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header is not a Bearer credential")
        })
}

fn read_only() -> ApiError {
    ApiError::forbidden("a viewer API key is read only: it sees everything and changes nothing")
}

/// An authenticated agent.
#[derive(Debug, Clone, Copy)]
pub struct AgentCaller {
    /// The agent.
    pub id: AgentId,
}

impl FromRequestParts<ApiState> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let secret = bearer(&parts.headers)?;
        // Boxed: this future would otherwise be part of every agent
        // request's for the request's whole life (a long poll's too).
        let id = Box::pin(state.store.authenticate_agent(secret)).await?;
        tracing::Span::current().record("homeostat.agent.id", tracing::field::display(id));
        Ok(Self { id })
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, every tenant.
    Admin,
    /// Its own tenant: enqueue, read, cancel, retry, approve.
    Tenant(TenantId),
    /// Read only, every tenant.
    Viewer,
}

/// An authenticated API key.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The key.
    pub token_id: TokenId,
    /// Its role.
    pub role: Role,
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        Self::from_request_parts_of(&parts.headers, state).await
    }
}

/// An admin API key: a handler that takes it states in its signature that
/// it is for admins only (anything else is 403 before the handler runs).
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Caller);

/// An admin or viewer API key: what spans tenants (a tenant key sees its
/// own tenant only).
#[derive(Debug, Clone, Copy)]
pub struct Operator(pub Caller);

/// An admin or tenant API key: what changes jobs (a viewer sees everything
/// and changes nothing).
#[derive(Debug, Clone, Copy)]
pub struct Writer(pub Caller);

impl TryFrom<Caller> for Admin {
    type Error = ApiError;

    /// The caller, if it is an admin key (the dashboard's actions, whose
    /// caller comes from a session).
    fn try_from(caller: Caller) -> Result<Self, ApiError> {
        caller.require_admin()?;
        Ok(Self(caller))
    }
}

impl TryFrom<Caller> for Writer {
    type Error = ApiError;

    /// The caller, if its key may change jobs.
    fn try_from(caller: Caller) -> Result<Self, ApiError> {
        caller.require_write()?;
        Ok(Self(caller))
    }
}

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        Self::try_from(Caller::from_request_parts_of(&parts.headers, state).await?)
    }
}

impl FromRequestParts<ApiState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts_of(&parts.headers, state).await?;
        caller.require_operator(&format!("{} {}", parts.method, parts.uri.path()))?;
        Ok(Self(caller))
    }
}

impl FromRequestParts<ApiState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        Self::try_from(Caller::from_request_parts_of(&parts.headers, state).await?)
    }
}

impl Caller {
    /// The API key a request's headers carry, authenticated.
    pub(crate) async fn from_request_parts_of(
        headers: &axum::http::HeaderMap,
        state: &ApiState,
    ) -> Result<Self, ApiError> {
        let secret = bearer(headers)?;
        let identity = state.store.authenticate_api_key(secret).await?;
        if let ApiScope::Tenant(tenant) = identity.scope {
            tracing::Span::current().record("homeostat.tenant.id", tracing::field::display(tenant));
        }
        Ok(Self::from_identity(&identity))
    }
}

impl Caller {
    /// The caller an authenticated key is.
    pub fn from_identity(identity: &homeostat_store::ApiKeyIdentity) -> Self {
        let role = match identity.scope {
            ApiScope::Admin => Role::Admin,
            ApiScope::Tenant(t) => Role::Tenant(t),
            ApiScope::Viewer => Role::Viewer,
        };
        Self {
            token_id: identity.token_id,
            role,
        }
    }

    /// The audit actor for changes this key makes (its id, never its secret).
    pub fn actor(&self) -> String {
        format!("api_key:{}", self.token_id)
    }

    /// Whether this key may change jobs (admin, tenant; a viewer sees
    /// everything and changes nothing).
    pub fn may_write(&self) -> bool {
        self.role != Role::Viewer
    }

    /// Whether this is an admin key.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Admin keys only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Viewer => Err(read_only()),
            Role::Tenant(_) => Err(ApiError::forbidden("this needs an admin API key")),
        }
    }

    /// Keys that may change jobs (admin, tenant).
    pub fn require_write(&self) -> Result<(), ApiError> {
        if self.may_write() {
            Ok(())
        } else {
            Err(read_only())
        }
    }

    /// Admin and viewer keys: `what` spans tenants, and a tenant key sees
    /// its own tenant only.
    pub fn require_operator(&self, what: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Tenant(_) => Err(ApiError::forbidden(format!(
                "{what} spans tenants: it needs an admin or viewer API key"
            ))),
            Role::Admin | Role::Viewer => Ok(()),
        }
    }

    /// The one tenant this key is confined to, if any.
    pub fn tenant(&self) -> Option<TenantId> {
        match self.role {
            Role::Tenant(t) => Some(t),
            _ => None,
        }
    }

    /// The tenant a list asked for `named` is confined to: a tenant key's
    /// own (`Some(None)` never comes back for it); `None` when a tenant key
    /// names another tenant, whose list it sees as empty.
    pub fn list_scope(&self, named: Option<TenantId>) -> Option<Option<TenantId>> {
        match (self.tenant(), named) {
            (Some(own), Some(t)) if t != own => None,
            (Some(own), _) => Some(Some(own)),
            (None, t) => Some(t),
        }
    }

    /// Whether this key sees entities of `tenant` (`None`: the platform's).
    pub fn sees(&self, tenant: Option<TenantId>) -> bool {
        match self.role {
            Role::Tenant(t) => tenant == Some(t),
            Role::Admin | Role::Viewer => true,
        }
    }
}
