//! Tokens: bootstrap tokens, API keys and agents' credentials; issued, listed, revoked, authenticated, deleted when dead; audited.

use std::time::Duration;

use homeostat_model::{
    Agent, AgentId, ApiScope, AuditAction, NewAuditEvent, TenantId, TokenId, TokenInfo, TokenKind,
    new_id,
};
use homeostat_runtime::Fence;
use jiff::Timestamp;
use serde_json::json;

use super::not_found;
use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::decisions::{actor_for, token_event};
use crate::error::{Context, StoreError, corrupt};
use crate::leases::check_fence;
use crate::rows::{self, agent_columns};
use crate::time::{add, ms, ts};
use crate::{ApiKeyIdentity, IssuedSecret, NewBootstrapToken, audit_log, secret};

/// `$1` now, `$2` the agent.
const REVOKE_CREDENTIALS_OF: Sql = Sql::both(
    "UPDATE tokens SET revoked_at = $1
     WHERE agent_id = $2 AND kind = 'agent_credential' AND revoked_at IS NULL RETURNING id",
);

const INSERT_TOKEN: Sql = Sql::both(
    "INSERT INTO tokens (id, kind, hash, tenant_id, agent_id, admin, expires_at, uses_left, created_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
);

const REVOKE_TOKEN: Sql = Sql::both(
    "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING kind, agent_id",
);

const LIVE_TOKEN: Sql = Sql::both(
    "SELECT id, hash, tenant_id, agent_id, admin, uses_left FROM tokens
     WHERE hash = $1 AND kind = $2 AND revoked_at IS NULL
       AND (expires_at IS NULL OR expires_at > $3)
       AND (uses_left IS NULL OR uses_left > 0)",
);

const LIST_TOKENS: Sql = Sql::both(
    "SELECT id, kind, tenant_id, agent_id, admin, expires_at, uses_left, revoked_at, created_at
     FROM tokens WHERE kind = $1 AND ($2 IS NULL OR tenant_id = $2) ORDER BY id",
);

const DELETE_DEAD_TOKENS: Sql = Sql::both(
    "DELETE FROM tokens WHERE id IN (
       SELECT id FROM tokens WHERE expires_at <= $1
       UNION SELECT id FROM tokens WHERE uses_left = 0
       UNION SELECT id FROM tokens WHERE revoked_at IS NOT NULL
       LIMIT CAST($2 AS BIGINT))",
);

const AGENT_OFFLINE: Sql = Sql::both(concat!(
    "UPDATE agents SET status = 'offline' WHERE id = $1 RETURNING ",
    agent_columns!()
));

const AGENT_CREDENTIALS: Sql = Sql::both(
    "SELECT id, kind, tenant_id, agent_id, admin, expires_at, uses_left, revoked_at, created_at
     FROM tokens WHERE kind = 'agent_credential' AND agent_id = $1 ORDER BY id",
);

/// A token to store: who it is for and how long it lives.
pub(super) struct NewToken {
    pub(super) kind: TokenKind,
    pub(super) prefix: &'static str,
    pub(super) tenant_id: Option<TenantId>,
    pub(super) agent_id: Option<AgentId>,
    pub(super) admin: bool,
    pub(super) expires_at: Option<i64>,
    pub(super) uses_left: Option<u32>,
}

pub(super) async fn insert_token<B: Backend>(
    tx: &mut B::Tx,
    token: NewToken,
    now: Timestamp,
) -> Result<IssuedSecret, StoreError> {
    let secret = secret::generate(token.prefix);
    let info = TokenInfo {
        id: new_id().into(),
        kind: token.kind,
        tenant_id: token.tenant_id,
        agent_id: token.agent_id,
        admin: token.admin,
        expires_at: token.expires_at.map(ts),
        uses_left: token.uses_left,
        revoked_at: None,
        created_at: ts(ms(now)),
    };
    let hash = secret::hash(&secret);
    let stmt = Stmt::new::<B>(INSERT_TOKEN)
        .arg(info.id)
        .arg(token.kind.as_str())
        .arg(hash.as_slice())
        .arg(token.tenant_id)
        .arg(token.agent_id)
        .arg(token.admin)
        .arg(token.expires_at)
        .arg(token.uses_left.map(i64::from))
        .arg(ms(now));
    B::execute_in(tx, stmt).await.op("storing a token")?;
    Ok(IssuedSecret { info, secret })
}

async fn issue<B: Backend>(
    b: &B,
    op: &'static str,
    token: NewToken,
    actor: &str,
    now: Timestamp,
) -> Result<IssuedSecret, StoreError> {
    let mut tx = b.begin(op).await?;
    let issued = insert_token::<B>(&mut tx, token, now).await?;
    let event = token_event(actor, AuditAction::TokenCreated.as_str(), &issued.info);
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    Ok(issued)
}

pub(crate) async fn issue_bootstrap_token<B: Backend>(
    b: &B,
    new: &NewBootstrapToken,
    actor: &str,
) -> Result<IssuedSecret, StoreError> {
    let now = b.now();
    let token = NewToken {
        kind: TokenKind::Bootstrap,
        prefix: "hsb",
        tenant_id: new.tenant_id,
        agent_id: None,
        admin: false,
        expires_at: Some(add(now, new.ttl)),
        uses_left: Some(new.uses),
    };
    issue(b, "issuing a bootstrap token", token, actor, now).await
}

pub(crate) async fn issue_api_key<B: Backend>(
    b: &B,
    scope: ApiScope,
    ttl: Option<Duration>,
    actor: &str,
) -> Result<IssuedSecret, StoreError> {
    let now = b.now();
    let (tenant_id, admin) = match scope {
        ApiScope::Admin => (None, true),
        ApiScope::Tenant(t) => (Some(t), false),
        // Neither every tenant's rights nor one tenant's: read only.
        ApiScope::Viewer => (None, false),
    };
    let token = NewToken {
        kind: TokenKind::ApiKey,
        prefix: "hsk",
        tenant_id,
        agent_id: None,
        admin,
        expires_at: ttl.map(|t| add(now, t)),
        uses_left: None,
    };
    issue(b, "issuing an API key", token, actor, now).await
}

pub(crate) async fn list_tokens<B: Backend>(
    b: &B,
    kind: TokenKind,
    tenant: Option<TenantId>,
) -> Result<Vec<TokenInfo>, StoreError> {
    let op = "listing tokens";
    let stmt = Stmt::new::<B>(LIST_TOKENS).arg(kind.as_str()).arg(tenant);
    let rows = b.fetch(stmt).await.op(op)?;
    rows.iter().map(|r| token_info(r, kind, op)).collect()
}

/// An agent's credentials (metadata, never the secret), revoked ones too.
pub(crate) async fn agent_credentials<B: Backend>(
    b: &B,
    agent: AgentId,
) -> Result<Vec<TokenInfo>, StoreError> {
    let op = "listing an agent's credentials";
    let rows = b
        .fetch(Stmt::new::<B>(AGENT_CREDENTIALS).arg(agent))
        .await
        .op(op)?;
    rows.iter()
        .map(|r| token_info(r, TokenKind::AgentCredential, op))
        .collect()
}

fn token_info<R: RowExt>(
    r: &R,
    kind: TokenKind,
    op: &'static str,
) -> Result<TokenInfo, StoreError> {
    Ok(TokenInfo {
        id: r.id("id")?,
        kind,
        tenant_id: r.opt_id("tenant_id")?,
        agent_id: r.opt_id("agent_id")?,
        admin: r.flag("admin")?,
        expires_at: r.opt_int("expires_at")?.map(ts),
        uses_left: r
            .opt_int("uses_left")?
            .map(|n| u32::try_from(n).map_err(|_| corrupt(op, "uses_left out of range")))
            .transpose()?,
        revoked_at: r.opt_int("revoked_at")?.map(ts),
        created_at: ts(r.int("created_at")?),
    })
}

/// Revokes every live credential of an agent and takes it offline, audited
/// in one transaction; its running jobs are reclaimed next (by the caller).
pub(crate) async fn revoke_agent<B: Backend>(
    b: &B,
    id: AgentId,
    actor: &str,
) -> Result<(Agent, Vec<TokenId>), StoreError> {
    let now = b.now();
    let op = "revoking an agent";
    let mut tx = b.begin(op).await?;
    let rows = B::fetch_in(&mut tx, Stmt::new::<B>(AGENT_OFFLINE).arg(id))
        .await
        .op(op)?;
    let agent = rows::agent(rows.first().ok_or_else(|| not_found("agent", id))?)?;
    let revoked = revoke_credentials_of::<B>(&mut tx, id, ms(now), op).await?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::AgentRevoked.into(),
        subject: format!("agent:{id}"),
        details: json!({"credentials": revoked, "tenant_id": agent.tenant_id}),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    Ok((agent, revoked))
}

/// Revokes a token; the agent it was the credential of, if any.
pub(crate) async fn revoke_token<B: Backend>(
    b: &B,
    id: TokenId,
    actor: &str,
) -> Result<Option<AgentId>, StoreError> {
    let now = b.now();
    let op = "revoking a token";
    let mut tx = b.begin(op).await?;
    let stmt = Stmt::new::<B>(REVOKE_TOKEN).arg(ms(now)).arg(id);
    let rows = B::fetch_in(&mut tx, stmt).await.op(op)?;
    let row = rows.first().ok_or_else(|| not_found("token", id))?;
    let kind = row.text("kind")?;
    let agent: Option<AgentId> = row.opt_id("agent_id")?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::TokenRevoked.into(),
        subject: format!("token:{id}"),
        details: json!({"kind": kind}),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    Ok(agent)
}

/// A live token of `kind` with this secret, compared in constant time.
pub(super) fn live_token<B: Backend>(
    rows: Vec<B::Row>,
    presented: &[u8; 32],
) -> Result<Option<B::Row>, StoreError> {
    for row in rows {
        if secret::matches(&row.bytes("hash")?, presented) {
            return Ok(Some(row));
        }
    }
    Ok(None)
}

pub(super) fn live_token_stmt<'a, B: Backend>(
    presented: &'a [u8; 32],
    kind: TokenKind,
    now: Timestamp,
) -> Stmt<'a> {
    Stmt::new::<B>(LIVE_TOKEN)
        .arg(presented.as_slice())
        .arg(kind.as_str())
        .arg(ms(now))
}

pub(crate) async fn authenticate_api_key<B: Backend>(
    b: &B,
    secret_text: &str,
) -> Result<ApiKeyIdentity, StoreError> {
    let now = b.now();
    let op = "checking a token";
    let presented = secret::hash(secret_text);
    let rows = b
        .fetch(live_token_stmt::<B>(&presented, TokenKind::ApiKey, now))
        .await
        .op(op)?;
    let row =
        live_token::<B>(rows, &presented)?.ok_or(StoreError::Unauthorized { kind: "API key" })?;
    identity(&row)
}

/// Who an API key's row (`id`, `admin`, `tenant_id`) is.
pub(crate) fn identity<R: RowExt>(row: &R) -> Result<ApiKeyIdentity, StoreError> {
    let scope = match (row.flag("admin")?, row.opt_id("tenant_id")?) {
        (true, _) => ApiScope::Admin,
        (false, Some(tenant)) => ApiScope::Tenant(tenant),
        (false, None) => ApiScope::Viewer,
    };
    Ok(ApiKeyIdentity {
        token_id: row.id("id")?,
        scope,
    })
}

pub(crate) async fn authenticate_agent<B: Backend>(
    b: &B,
    known: &crate::credentials::CredentialCache,
    secret_text: &str,
) -> Result<AgentId, StoreError> {
    let presented = secret::hash(secret_text);
    crate::credentials::check_revocations(b, known).await?;
    if let Some(agent) = known.get(&presented) {
        return Ok(agent);
    }
    let now = b.now();
    let op = "checking a token";
    let rows = b
        .fetch(live_token_stmt::<B>(
            &presented,
            TokenKind::AgentCredential,
            now,
        ))
        .await
        .op(op)?;
    let row = live_token::<B>(rows, &presented)?.ok_or(StoreError::Unauthorized {
        kind: "agent credential",
    })?;
    let agent = row
        .opt_id("agent_id")?
        .ok_or_else(|| corrupt(op, "agent credential without an agent"))?;
    known.insert(presented, agent);
    Ok(agent)
}

pub(crate) async fn delete_dead_tokens<B: Backend>(
    b: &B,
    limit: u32,
    fence: Option<&Fence>,
) -> Result<u64, StoreError> {
    let now = b.now();
    let op = AuditAction::TokensDeleted.as_str();
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, fence, op).await?;
    let stmt = Stmt::new::<B>(DELETE_DEAD_TOKENS)
        .arg(ms(now))
        .arg(i64::from(limit));
    let n = B::execute_in(&mut tx, stmt).await.op(op)?;
    if n > 0 {
        let event = NewAuditEvent {
            actor: actor_for(fence),
            action: op.into(),
            subject: "tokens".into(),
            details: json!({"count": n, "reason": "expired, used up or revoked"}),
        };
        audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    }
    B::commit(tx, op).await?;
    Ok(n)
}

/// Revokes every live credential of agent `id` in `tx`; their ids.
pub(super) async fn revoke_credentials_of<B: Backend>(
    tx: &mut B::Tx,
    id: AgentId,
    now_ms: i64,
    op: &'static str,
) -> Result<Vec<TokenId>, StoreError> {
    let stmt = Stmt::new::<B>(REVOKE_CREDENTIALS_OF).arg(now_ms).arg(id);
    B::fetch_in(tx, stmt)
        .await
        .op(op)?
        .iter()
        .map(|r| r.id::<TokenId>("id"))
        .collect()
}
