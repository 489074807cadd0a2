//! Tokens: bootstrap tokens, agent credentials and API keys. Only hashes are
//! stored; the secret is shown once, at creation.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{AgentId, TenantId, TokenId};

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Lets an agent register (TTL, limited uses).
    Bootstrap,
    /// An agent's own credential, issued at registration.
    AgentCredential,
    /// A bearer key for the admin or a tenant's API.
    ApiKey,
}

impl TokenKind {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Bootstrap => "bootstrap",
            TokenKind::AgentCredential => "agent_credential",
            TokenKind::ApiKey => "api_key",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "scope", content = "tenant_id")]
pub enum ApiScope {
    /// Everything.
    Admin,
    /// One tenant's jobs and agents.
    Tenant(TenantId),
    /// Reads everything, changes nothing.
    Viewer,
}

/// A token's metadata: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    /// Identifier.
    pub id: TokenId,
    /// Kind.
    pub kind: TokenKind,
    /// Tenant it belongs to, if any.
    pub tenant_id: Option<TenantId>,
    /// Agent it identifies (credentials).
    pub agent_id: Option<AgentId>,
    /// Admin key (API keys without a tenant).
    pub admin: bool,
    /// Unusable after this time.
    pub expires_at: Option<Timestamp>,
    /// Uses left (bootstrap tokens).
    pub uses_left: Option<u32>,
    /// Revoked at.
    pub revoked_at: Option<Timestamp>,
    /// Created.
    pub created_at: Timestamp,
}
