//! Tenants, tokens and agents: the registry operations, audited.

use std::sync::Mutex;
use std::time::Duration;

use homeostat_model::{
    Agent, AgentId, AgentStatus, ApiScope, AuditAction, NewAgent, NewAuditEvent, PlanTier, Tenant,
    TenantId, TokenId, TokenInfo, TokenKind, new_id,
};
use homeostat_runtime::Fence;
use jiff::Timestamp;
use serde_json::json;

use crate::backend::{Backend, RowExt, Sql, Stmt, pg_judged};
use crate::decisions::{actor_for, token_event};
use crate::error::{Context, StoreError, corrupt, db_error};
use crate::leases::check_fence;
use crate::rows::{self, agent_columns};
use crate::time::{add, dur_ms, ms, ts};
use crate::{ApiKeyIdentity, IssuedSecret, NewBootstrapToken, audit_log, secret};

const INSERT_TENANT: Sql =
    Sql::both("INSERT INTO tenants (id, name, tier, created_at) VALUES ($1, $2, $3, $4)");
const SET_TIER: Sql =
    Sql::both("UPDATE tenants SET tier = $1 WHERE id = $2 RETURNING id, name, tier, created_at");
const TENANT: Sql = Sql::both("SELECT id, name, tier, created_at FROM tenants WHERE id = $1");
const TENANTS: Sql = Sql::both("SELECT id, name, tier, created_at FROM tenants ORDER BY name");

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
/// Takes one use, only if one is left: of concurrent registrations that all
/// read the token as live, the statement admits as many as it has uses
/// (on PostgreSQL each waits for the one before and re-reads the row).
const USE_TOKEN: Sql = Sql::both(
    "UPDATE tokens SET uses_left = uses_left - 1
     WHERE id = $1 AND (uses_left IS NULL OR uses_left > 0)",
);
const DELETE_DEAD_TOKENS: Sql = Sql::both(
    "DELETE FROM tokens WHERE id IN (
       SELECT id FROM tokens WHERE expires_at <= $1
       UNION SELECT id FROM tokens WHERE uses_left = 0
       UNION SELECT id FROM tokens WHERE revoked_at IS NOT NULL
       LIMIT $2)",
);
/// `$1` heard before (ms), `$2` how many: the agents offline longest,
/// deleted. The outer predicate is checked again on each row as it is
/// deleted, so an agent heard in between (PostgreSQL) stays.
const FORGET_AGENTS: Sql = Sql::both(
    "DELETE FROM agents WHERE id IN (
       SELECT id FROM agents WHERE status = 'offline' AND last_heartbeat_at < $1
       ORDER BY last_heartbeat_at LIMIT $2)
     AND status = 'offline' AND last_heartbeat_at < $1
     RETURNING id",
);
/// `$1` the agents, `$2` now. Revoked rather than deleted: other replicas
/// learn of revocations, not of deletions (token-cleanup deletes them).
const REVOKE_AGENT_CREDENTIALS: Sql = Sql::pair(
    "UPDATE tokens SET revoked_at = $2
     WHERE agent_id IN (SELECT value FROM json_each($1)) AND revoked_at IS NULL",
    "UPDATE tokens SET revoked_at = $2 WHERE agent_id = ANY($1::uuid[]) AND revoked_at IS NULL",
);

/// `$6` now (judged: the last heartbeat), `$7` now.
const AGENT_FACTS: Sql = Sql::both("SELECT tenant_id, queues FROM agents WHERE id = $1");
const AGENT_STATUS: Sql = Sql::both("SELECT status FROM agents WHERE id = $1");

/// `$6` now (judged: the last heartbeat), `$7` now.
const INSERT_AGENT: Sql = Sql::pair(
    "INSERT INTO agents (id, tenant_id, name, labels, queues, status, last_heartbeat_at, registered_at)
     VALUES ($1, $2, $3, $4, $5, 'online', $6, $7)",
    concat!(
        "INSERT INTO agents (id, tenant_id, name, labels, queues, status, last_heartbeat_at, registered_at)
         VALUES ($1, $2, $3, $4, $5, 'online', ",
        pg_judged!(6),
        ", $7)"
    ),
);
/// `$1` now (judged), `$2` the agents, `$3` how long ago each was heard
/// (ms). A late batch never moves a heartbeat back. An offline agent stays
/// offline here: [`BACK_ONLINE`] brings it back, audited (rare, so the
/// common batch stays one statement). On SQLite the second
/// list is materialized so the join on positions reads it through an
/// automatic index: joined to `json_each` directly, each agent re-read the
/// whole list (5,000 heartbeats among 10,000 agents: 1.65 s, against 23 ms).
const HEARTBEATS: Sql = Sql::pair(
    "WITH a AS MATERIALIZED (SELECT key, value FROM json_each($3))
     UPDATE agents SET last_heartbeat_at = MAX(last_heartbeat_at, $1 - t.ago)
     FROM (SELECT i.value AS id, a.value AS ago
           FROM json_each($2) AS i JOIN a ON a.key = i.key) AS t
     WHERE agents.id = t.id
     RETURNING agents.id AS id, agents.status AS status",
    concat!(
        "UPDATE agents SET last_heartbeat_at = GREATEST(agents.last_heartbeat_at, ",
        pg_judged!(1),
        " - t.ago)
         FROM UNNEST($2::uuid[], $3::bigint[]) AS t(id, ago)
         WHERE agents.id = t.id
         RETURNING agents.id AS id, agents.status AS status"
    ),
);
/// `$1` the agents heard while offline: online again, unless their
/// credentials were revoked (a heartbeat heard before the revocation,
/// written after it).
const BACK_ONLINE: Sql = Sql::pair(
    "UPDATE agents SET status = 'online'
     WHERE id IN (SELECT value FROM json_each($1)) AND status = 'offline'
       AND EXISTS (SELECT 1 FROM tokens WHERE tokens.agent_id = agents.id
                   AND tokens.kind = 'agent_credential' AND tokens.revoked_at IS NULL)
     RETURNING id",
    "UPDATE agents SET status = 'online'
     WHERE id = ANY($1::uuid[]) AND status = 'offline'
       AND EXISTS (SELECT 1 FROM tokens WHERE tokens.agent_id = agents.id
                   AND tokens.kind = 'agent_credential' AND tokens.revoked_at IS NULL)
     RETURNING id",
);
const INCARNATION: Sql = Sql::both("SELECT incarnation FROM agents WHERE id = $1");
const SET_INCARNATION: Sql = Sql::both("UPDATE agents SET incarnation = $2 WHERE id = $1");
/// `$1` the agents: their names.
const AGENT_NAMES: Sql = Sql::pair(
    "SELECT id, name FROM agents WHERE id IN (SELECT value FROM json_each($1))",
    "SELECT id, name FROM agents WHERE id = ANY($1::uuid[])",
);
/// The queues some online agent claims from.
const SERVED_QUEUES: Sql = Sql::pair(
    "SELECT DISTINCT q.value AS queue FROM agents, json_each(agents.queues) AS q
     WHERE agents.status = 'online'",
    "SELECT DISTINCT q AS queue FROM agents, unnest(agents.queues) AS q WHERE agents.status = 'online'",
);
/// `$1` the agent: deleted if offline.
const REMOVE_AGENT: Sql = Sql::both(concat!(
    "DELETE FROM agents WHERE id = $1 AND status = 'offline' RETURNING ",
    agent_columns!()
));
const AGENT: Sql = Sql::both(concat!(
    "SELECT ",
    agent_columns!(),
    " FROM agents WHERE id = $1"
));
/// `$1` tenant, `$2` status, `$3` the agent after which the page starts,
/// `$4` the page's size: by name, then id (the `agents_status_name` and
/// `agents_name` indexes).
const AGENTS: Sql = Sql::pair(
    concat!(
        "SELECT ",
        agent_columns!(),
        " FROM agents WHERE ($1 IS NULL OR tenant_id = $1) AND ($2 IS NULL OR status = $2)
           AND ($3 IS NULL OR (name, id) > (SELECT name, id FROM agents WHERE id = $3))
         ORDER BY name, id LIMIT $4"
    ),
    concat!(
        "SELECT ",
        agent_columns!(),
        " FROM agents WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR (name, id) > (SELECT name, id FROM agents WHERE id = $3))
         ORDER BY name, id LIMIT $4"
    ),
);
/// `$1` now, `$2` the agent.
const REVOKE_CREDENTIALS_OF: Sql = Sql::both(
    "UPDATE tokens SET revoked_at = $1
     WHERE agent_id = $2 AND kind = 'agent_credential' AND revoked_at IS NULL RETURNING id",
);
const AGENT_OFFLINE: Sql = Sql::both(concat!(
    "UPDATE agents SET status = 'offline' WHERE id = $1 RETURNING ",
    agent_columns!()
));
const AGENT_CREDENTIALS: Sql = Sql::both(
    "SELECT id, kind, tenant_id, agent_id, admin, expires_at, uses_left, revoked_at, created_at
     FROM tokens WHERE kind = 'agent_credential' AND agent_id = $1 ORDER BY id",
);
const DRAIN_AGENT: Sql = Sql::both(concat!(
    "UPDATE agents SET status = 'draining' WHERE id = $1 RETURNING ",
    agent_columns!()
));
/// A draining agent claims again; an online one stays so; an offline one is
/// refused (it comes back by heartbeating).
const RESUME_AGENT: Sql = Sql::both(concat!(
    "UPDATE agents SET status = 'online' WHERE id = $1 AND status <> 'offline' RETURNING ",
    agent_columns!()
));
/// `$1` now (judged), `$2` limit, `$3` the stale timeout (ms).
const SILENT_AGENTS_OFFLINE: Sql = Sql::pair(
    "UPDATE agents SET status = 'offline'
     WHERE id IN (SELECT id FROM agents WHERE status <> 'offline'
                  AND last_heartbeat_at < $1 - $3 LIMIT $2)
     RETURNING id",
    concat!(
        "UPDATE agents SET status = 'offline'
         WHERE id IN (SELECT id FROM agents WHERE status <> 'offline'
                      AND last_heartbeat_at < ",
        pg_judged!(1),
        " - $3 LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id"
    ),
);

fn not_found(entity: &'static str, id: impl ToString) -> StoreError {
    StoreError::NotFound {
        entity,
        id: id.to_string(),
    }
}

// --- tenants -----------------------------------------------------------

pub(crate) async fn create_tenant<B: Backend>(
    b: &B,
    name: &str,
    tier: PlanTier,
    actor: &str,
) -> Result<Tenant, StoreError> {
    let now = b.now();
    homeostat_model::validate_name("name", name)?;
    let op = "creating a tenant";
    let mut tx = b.begin(op).await?;
    let tenant = Tenant {
        id: new_id().into(),
        name: name.to_owned(),
        tier,
        created_at: ts(ms(now)),
    };
    let stmt = Stmt::new::<B>(INSERT_TENANT)
        .arg(tenant.id)
        .arg(name)
        .arg(tier.as_str())
        .arg(ms(now));
    B::execute_in(&mut tx, stmt).await.map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict {
            operation: op,
            entity: "tenant",
            id: name.to_owned(),
            reason: "a tenant with this name exists".into(),
        },
        e => db_error(op, e),
    })?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::TenantCreated.into(),
        subject: format!("tenant:{}", tenant.id),
        details: json!({"name": name, "tier": tier}),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    Ok(tenant)
}

pub(crate) async fn set_tenant_tier<B: Backend>(
    b: &B,
    id: TenantId,
    tier: PlanTier,
    actor: &str,
) -> Result<Tenant, StoreError> {
    let now = b.now();
    let op = "changing a tenant's tier";
    let mut tx = b.begin(op).await?;
    let stmt = Stmt::new::<B>(SET_TIER).arg(tier.as_str()).arg(id);
    let rows = B::fetch_in(&mut tx, stmt).await.op(op)?;
    let row = rows.first().ok_or_else(|| not_found("tenant", id))?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::TenantTierChanged.into(),
        subject: format!("tenant:{id}"),
        details: json!({"tier": tier}),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    rows::tenant(row)
}

pub(crate) async fn get_tenant<B: Backend>(b: &B, id: TenantId) -> Result<Tenant, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(TENANT).arg(id))
        .await
        .op("reading a tenant")?;
    rows::tenant(rows.first().ok_or_else(|| not_found("tenant", id))?)
}

pub(crate) async fn list_tenants<B: Backend>(b: &B) -> Result<Vec<Tenant>, StoreError> {
    b.fetch(Stmt::new::<B>(TENANTS))
        .await
        .op("listing tenants")?
        .iter()
        .map(rows::tenant)
        .collect()
}

// --- tokens ------------------------------------------------------------

/// A token to store: who it is for and how long it lives.
struct NewToken {
    kind: TokenKind,
    prefix: &'static str,
    tenant_id: Option<TenantId>,
    agent_id: Option<AgentId>,
    admin: bool,
    expires_at: Option<i64>,
    uses_left: Option<u32>,
}

async fn insert_token<B: Backend>(
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
    let stmt = Stmt::new::<B>(REVOKE_CREDENTIALS_OF).arg(ms(now)).arg(id);
    let revoked = B::fetch_in(&mut tx, stmt)
        .await
        .op(op)?
        .iter()
        .map(|r| r.id::<TokenId>("id"))
        .collect::<Result<Vec<_>, _>>()?;
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
fn live_token<B: Backend>(
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

fn live_token_stmt<'a, B: Backend>(
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

/// Deletes up to `limit` agents offline and unheard for `offline_for`
/// (autoscaled runners that came and went), oldest first, and revokes their
/// credentials. An agent holds no job by then: agent-health reclaimed its
/// jobs when it went offline. Their past jobs keep its id. The agents
/// forgotten.
pub(crate) async fn forget_departed_agents<B: Backend>(
    b: &B,
    offline_for: Duration,
    limit: u32,
    fence: Option<&Fence>,
) -> Result<Vec<AgentId>, StoreError> {
    let now = b.now();
    let heard_before = ms(now).saturating_sub(dur_ms(offline_for));
    let op = AuditAction::AgentsForgotten.as_str();
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, fence, op).await?;
    let stmt = Stmt::new::<B>(FORGET_AGENTS)
        .arg(heard_before)
        .arg(i64::from(limit));
    let forgotten = B::fetch_in(&mut tx, stmt)
        .await
        .op(op)?
        .iter()
        .map(|r| r.id::<homeostat_model::Id>("id"))
        .collect::<Result<Vec<_>, _>>()?;
    let stmt = Stmt::new::<B>(REVOKE_AGENT_CREDENTIALS)
        .arg(forgotten.as_slice())
        .arg(ms(now));
    B::execute_in(&mut tx, stmt).await.op(op)?;
    let n = forgotten.len() as u64;
    if n > 0 {
        let event = NewAuditEvent {
            actor: actor_for(fence),
            action: op.into(),
            subject: "agents".into(),
            details: json!({
                "count": n,
                "reason": "offline past retention",
                "offline_for_secs": offline_for.as_secs(),
            }),
        };
        audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    }
    B::commit(tx, op).await?;
    Ok(forgotten.into_iter().map(AgentId::from).collect())
}

// --- agents ------------------------------------------------------------

/// An agent's tenant and queues. They never change after registration, so
/// claims read them from a cache instead of a statement of their own.
#[derive(Debug, Clone)]
pub(crate) struct AgentFacts {
    pub(crate) tenant: Option<TenantId>,
    pub(crate) queues: Vec<String>,
}

/// Each store's cache of [`AgentFacts`].
pub(crate) type AgentFactsCache = Mutex<crate::bounded::BoundedMap<AgentId, AgentFacts>>;

/// An agent's tenant and queues, cached after the first look.
pub(crate) async fn agent_facts<B: Backend>(
    b: &B,
    cache: &AgentFactsCache,
    id: AgentId,
    op: &'static str,
) -> Result<AgentFacts, StoreError> {
    if let Some(facts) = cache.lock().unwrap().get(&id) {
        return Ok(facts.clone());
    }
    let rows = b.fetch(Stmt::new::<B>(AGENT_FACTS).arg(id)).await.op(op)?;
    let row = rows.first().ok_or_else(|| not_found("agent", id))?;
    let facts = AgentFacts {
        tenant: row.opt_id("tenant_id")?,
        queues: row.list("queues")?,
    };
    cache.lock().unwrap().insert(id, facts.clone());
    Ok(facts)
}

/// Says why an agent claimed nothing, when the agent is the reason (on
/// SQLite; PostgreSQL's claim says so in its own statement).
#[cfg(feature = "sqlite")]
pub(crate) async fn require_online<B: Backend>(
    b: &B,
    id: AgentId,
    op: &'static str,
) -> Result<(), StoreError> {
    let rows = b.fetch(Stmt::new::<B>(AGENT_STATUS).arg(id)).await.op(op)?;
    let status = rows.first().map(|r| r.text("status")).transpose()?;
    crate::decisions::claim_refusal(op, id, status.as_deref())
}

pub(crate) async fn register_agent<B: Backend>(
    b: &B,
    bootstrap_secret: &str,
    agent: &NewAgent,
) -> Result<(Agent, IssuedSecret), StoreError> {
    let now = b.now();
    agent.validate()?;
    let op = "registering an agent";
    let presented = secret::hash(bootstrap_secret);
    let mut tx = b.begin(op).await?;
    let rows = B::fetch_in(
        &mut tx,
        live_token_stmt::<B>(&presented, TokenKind::Bootstrap, now),
    )
    .await
    .op(op)?;
    let token = live_token::<B>(rows, &presented)?.ok_or(StoreError::Unauthorized {
        kind: "bootstrap token",
    })?;
    let token_id: TokenId = token.id("id")?;
    let used = B::execute_in(&mut tx, Stmt::new::<B>(USE_TOKEN).arg(token_id))
        .await
        .op(op)?;
    if used == 0 {
        // Its last use went to a registration that committed first.
        return Err(StoreError::Unauthorized {
            kind: "bootstrap token",
        });
    }
    let stored = Agent {
        id: new_id().into(),
        tenant_id: token.opt_id("tenant_id")?,
        name: agent.name.clone(),
        labels: agent.labels.clone(),
        queues: agent.queues.clone(),
        status: AgentStatus::Online,
        last_heartbeat_at: ts(ms(now)),
        registered_at: ts(ms(now)),
    };
    let labels = serde_json::to_string(&stored.labels).map_err(|e| corrupt(op, e))?;
    let stmt = Stmt::new::<B>(INSERT_AGENT)
        .arg(stored.id)
        .arg(stored.tenant_id)
        .arg(&stored.name)
        .arg(&labels)
        .arg(stored.queues.as_slice())
        .arg(b.judged_ms(now))
        .arg(ms(now));
    B::execute_in(&mut tx, stmt).await.op(op)?;
    let credential = NewToken {
        kind: TokenKind::AgentCredential,
        prefix: "hsa",
        tenant_id: stored.tenant_id,
        agent_id: Some(stored.id),
        admin: false,
        expires_at: None,
        uses_left: None,
    };
    let credential = insert_token::<B>(&mut tx, credential, now).await?;
    let event = NewAuditEvent {
        actor: format!("bootstrap-token:{token_id}"),
        action: AuditAction::AgentRegistered.into(),
        subject: format!("agent:{}", stored.id),
        details: json!({
            "name": stored.name,
            "tenant_id": stored.tenant_id,
            "queues": stored.queues,
            "credential_token_id": credential.info.id,
        }),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    Ok((stored, credential))
}

/// Records when agents were heard (by the store's clock when each
/// heartbeat arrived; on PostgreSQL counted back from the database's clock
/// by how long ago that was), in one statement: an offline agent heard
/// again is online. Each agent's status comes back.
pub(crate) async fn record_heartbeats<B: Backend>(
    b: &B,
    heard: &[(AgentId, Timestamp)],
) -> Result<Vec<(AgentId, AgentStatus)>, StoreError> {
    if heard.is_empty() {
        return Ok(Vec::new());
    }
    let at = b.at();
    let now = ms(at.now);
    let ids: Vec<uuid::Uuid> = heard.iter().map(|(id, _)| id.as_uuid()).collect();
    let ago: Vec<i64> = heard.iter().map(|(_, t)| (now - ms(*t)).max(0)).collect();
    let stmt = Stmt::new::<B>(HEARTBEATS)
        .arg(at.judged)
        .arg(ids.as_slice())
        .arg(ago.as_slice());
    let mut written = b
        .fetch_write(stmt)
        .await
        .op("recording agent heartbeats")?
        .iter()
        .map(|r| Ok((r.id("id")?, rows::parsed("status", r.text("status")?)?)))
        .collect::<Result<Vec<(AgentId, AgentStatus)>, StoreError>>()?;
    let offline: Vec<AgentId> = written
        .iter()
        .filter(|(_, s)| *s == AgentStatus::Offline)
        .map(|(id, _)| *id)
        .collect();
    if !offline.is_empty() {
        let back = back_online(b, &offline).await?;
        for (id, status) in &mut written {
            if back.contains(id) {
                *status = AgentStatus::Online;
            }
        }
    }
    Ok(written)
}

/// Brings agents heard while offline back online, audited as
/// `agents.online`; returns those that came back.
async fn back_online<B: Backend>(b: &B, heard: &[AgentId]) -> Result<Vec<AgentId>, StoreError> {
    let now = b.now();
    let op = AuditAction::AgentsOnline.as_str();
    let ids: Vec<homeostat_model::Id> = heard.iter().map(|a| (*a).into()).collect();
    let mut tx = b.begin(op).await?;
    let back = B::fetch_in(&mut tx, Stmt::new::<B>(BACK_ONLINE).arg(ids.as_slice()))
        .await
        .op(op)?
        .iter()
        .map(|r| r.id("id"))
        .collect::<Result<Vec<AgentId>, _>>()?;
    if !back.is_empty() {
        let event = NewAuditEvent {
            actor: "system".into(),
            action: op.into(),
            subject: "agents".into(),
            details: json!({"ids": back, "count": back.len(), "reason": "heard again after going offline"}),
        };
        audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    }
    B::commit(tx, op).await?;
    Ok(back)
}

/// Why a statement on agent `id` changed nothing: there is no such agent
/// (404), or its status (given to `why`) does not allow `operation` (409).
async fn refusal<B: Backend>(
    tx: &mut B::Tx,
    id: AgentId,
    operation: &'static str,
    why: impl FnOnce(&str) -> String,
) -> StoreError {
    let rows = match B::fetch_in(tx, Stmt::new::<B>(AGENT_STATUS).arg(id))
        .await
        .op(operation)
    {
        Ok(rows) => rows,
        Err(e) => return e,
    };
    match rows.first().map(|r| r.text("status")) {
        None => not_found("agent", id),
        Some(Err(e)) => e,
        Some(Ok(status)) => StoreError::Conflict {
            operation,
            entity: "agent",
            id: id.to_string(),
            reason: why(&status),
        },
    }
}

/// Deletes an offline agent and revokes its credentials, audited as
/// `agent.removed`. Its past jobs keep its id. An agent that is not
/// offline is refused: it may hold jobs (drain it and let it stop, or
/// revoke it, first).
pub(crate) async fn remove_agent<B: Backend>(
    b: &B,
    id: AgentId,
    actor: &str,
) -> Result<Agent, StoreError> {
    let now = b.now();
    let op = "removing an agent";
    let mut tx = b.begin(op).await?;
    let rows = B::fetch_in(&mut tx, Stmt::new::<B>(REMOVE_AGENT).arg(id))
        .await
        .op(op)?;
    let Some(row) = rows.first() else {
        return Err(refusal::<B>(&mut tx, id, op, |status| {
            format!(
                "it is {status}: only an offline agent can be removed (revoke it, or drain it and let it stop, first)"
            )
        })
        .await);
    };
    let agent = rows::agent(row)?;
    let stmt = Stmt::new::<B>(REVOKE_CREDENTIALS_OF).arg(ms(now)).arg(id);
    let revoked = B::fetch_in(&mut tx, stmt)
        .await
        .op(op)?
        .iter()
        .map(|r| r.id::<TokenId>("id"))
        .collect::<Result<Vec<_>, _>>()?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::AgentRemoved.into(),
        subject: format!("agent:{id}"),
        details: json!({"name": agent.name, "tenant_id": agent.tenant_id, "credentials": revoked}),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    Ok(agent)
}

/// Records `incarnation` as agent `id`'s process; returns the one it
/// replaced (`None` for the first).
pub(crate) async fn swap_incarnation<B: Backend>(
    b: &B,
    id: AgentId,
    incarnation: &str,
) -> Result<Option<String>, StoreError> {
    let op = "recording an agent's process";
    let mut tx = b.begin(op).await?;
    let rows = B::fetch_in(&mut tx, Stmt::new::<B>(INCARNATION).arg(id))
        .await
        .op(op)?;
    let previous = rows
        .first()
        .ok_or_else(|| not_found("agent", id))?
        .opt_text("incarnation")?;
    if previous.as_deref() != Some(incarnation) {
        let stmt = Stmt::new::<B>(SET_INCARNATION).arg(id).arg(incarnation);
        B::execute_in(&mut tx, stmt).await.op(op)?;
    }
    B::commit(tx, op).await?;
    Ok(previous)
}

pub(crate) async fn agent_names<B: Backend>(
    b: &B,
    ids: &[AgentId],
) -> Result<std::collections::HashMap<AgentId, String>, StoreError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<homeostat_model::Id> = ids.iter().map(|a| (*a).into()).collect();
    b.fetch(Stmt::new::<B>(AGENT_NAMES).arg(ids.as_slice()))
        .await
        .op("reading agents' names")?
        .iter()
        .map(|r| Ok((r.id("id")?, r.text("name")?)))
        .collect()
}

pub(crate) async fn served_queues<B: Backend>(
    b: &B,
) -> Result<std::collections::BTreeSet<String>, StoreError> {
    b.fetch(Stmt::new::<B>(SERVED_QUEUES))
        .await
        .op("reading the queues online agents serve")?
        .iter()
        .map(|r| r.text("queue"))
        .collect()
}

pub(crate) async fn get_agent<B: Backend>(b: &B, id: AgentId) -> Result<Agent, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(AGENT).arg(id))
        .await
        .op("reading an agent")?;
    rows::agent(rows.first().ok_or_else(|| not_found("agent", id))?)
}

pub(crate) async fn list_agents<B: Backend>(
    b: &B,
    filter: &crate::AgentFilter,
    after: Option<AgentId>,
    limit: u32,
) -> Result<homeostat_model::Page<Agent, AgentId>, StoreError> {
    let stmt = Stmt::new::<B>(AGENTS)
        .arg(filter.tenant_id)
        .arg(filter.status.map(AgentStatus::as_str))
        .arg(after)
        .arg(i64::from(limit) + 1);
    let items = b
        .fetch(stmt)
        .await
        .op("listing agents")?
        .iter()
        .map(rows::agent)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(homeostat_model::Page::of_one_more(items, limit, |a| a.id))
}

pub(crate) async fn drain_agent<B: Backend>(
    b: &B,
    id: AgentId,
    actor: &str,
) -> Result<Agent, StoreError> {
    let now = b.now();
    let op = "draining an agent";
    let mut tx = b.begin(op).await?;
    let rows = B::fetch_in(&mut tx, Stmt::new::<B>(DRAIN_AGENT).arg(id))
        .await
        .op(op)?;
    let row = rows.first().ok_or_else(|| not_found("agent", id))?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::AgentDraining.into(),
        subject: format!("agent:{id}"),
        details: json!({}),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    rows::agent(row)
}

pub(crate) async fn resume_agent<B: Backend>(
    b: &B,
    id: AgentId,
    actor: &str,
) -> Result<Agent, StoreError> {
    let now = b.now();
    let op = "resuming an agent";
    let mut tx = b.begin(op).await?;
    let rows = B::fetch_in(&mut tx, Stmt::new::<B>(RESUME_AGENT).arg(id))
        .await
        .op(op)?;
    let Some(row) = rows.first() else {
        return Err(refusal::<B>(&mut tx, id, op, |_| {
            "the agent is offline: it comes back online by heartbeating".into()
        })
        .await);
    };
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::AgentResumed.into(),
        subject: format!("agent:{id}"),
        details: json!({}),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    rows::agent(row)
}

pub(crate) async fn mark_silent_agents_offline<B: Backend>(
    b: &B,
    stale_after: Duration,
    limit: u32,
    fence: Option<&Fence>,
) -> Result<Vec<AgentId>, StoreError> {
    let now = b.now();
    let op = AuditAction::AgentsOffline.as_str();
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, fence, op).await?;
    let stmt = Stmt::new::<B>(SILENT_AGENTS_OFFLINE)
        .arg(b.judged_ms(now))
        .arg(i64::from(limit))
        .arg(dur_ms(stale_after));
    let ids = B::fetch_in(&mut tx, stmt)
        .await
        .op(op)?
        .iter()
        .map(|r| r.id("id"))
        .collect::<Result<Vec<_>, _>>()?;
    if !ids.is_empty() {
        let event = NewAuditEvent {
            actor: actor_for(fence),
            action: op.into(),
            subject: "agents".into(),
            details: json!({"ids": ids, "count": ids.len(), "reason": "silent past the stale timeout"}),
        };
        audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    }
    B::commit(tx, op).await?;
    Ok(ids)
}
