//! Agents: registered, heard, drained, resumed, removed, forgotten, marked offline; audited.

use std::sync::Mutex;
use std::time::Duration;

use homeostat_model::{
    Agent, AgentId, AgentStatus, AuditAction, NewAgent, NewAuditEvent, TenantId, TokenId,
    TokenKind, new_id,
};
use homeostat_runtime::Fence;
use jiff::Timestamp;
use serde_json::json;

use super::not_found;
use super::tokens::{NewToken, insert_token, live_token, live_token_stmt, revoke_credentials_of};
use crate::backend::{Backend, RowExt, Sql, Stmt, pg_judged};
use crate::decisions::actor_for;
use crate::error::{Context, StoreError, corrupt};
use crate::leases::check_fence;
use crate::rows::{self, agent_columns};
use crate::time::{dur_ms, ms, ts};
use crate::{IssuedSecret, audit_log, secret};

/// Takes one use, only if one is left: of concurrent registrations that all
/// read the token as live, the statement admits as many as it has uses
/// (on PostgreSQL each waits for the one before and re-reads the row).
const USE_TOKEN: Sql = Sql::both(
    "UPDATE tokens SET uses_left = uses_left - 1
     WHERE id = $1 AND (uses_left IS NULL OR uses_left > 0)",
);

/// `$1` heard before (ms), `$2` how many: the agents offline longest,
/// deleted. The outer predicate is checked again on each row as it is
/// deleted, so an agent heard in between (PostgreSQL) stays.
const FORGET_AGENTS: Sql = Sql::both(
    "DELETE FROM agents WHERE id IN (
       SELECT id FROM agents WHERE status = 'offline' AND last_heartbeat_at < $1
       ORDER BY last_heartbeat_at LIMIT CAST($2 AS BIGINT))
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
         FROM UNNEST((SELECT $2::uuid[]), $3::bigint[]) AS t(id, ago)
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
         ORDER BY name, id LIMIT CAST($4 AS BIGINT)"
    ),
    concat!(
        "SELECT ",
        agent_columns!(),
        " FROM agents WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR (name, id) > (SELECT name, id FROM agents WHERE id = $3))
         ORDER BY name, id LIMIT $4"
    ),
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
                  AND last_heartbeat_at < $1 - $3 LIMIT CAST($2 AS BIGINT))
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

/// Agents' heartbeats written by one statement.
const HEARTBEAT_CHUNK: usize = 250;

/// Records when agents were heard (by the store's clock when each
/// heartbeat arrived; on PostgreSQL counted back from the database's clock
/// by how long ago that was), [`HEARTBEAT_CHUNK`] agents a statement: an
/// offline agent heard again is online. Each agent's status comes back.
pub(crate) async fn record_heartbeats<B: Backend>(
    b: &B,
    heard: &[(AgentId, Timestamp)],
) -> Result<Vec<(AgentId, AgentStatus)>, StoreError> {
    if heard.is_empty() {
        return Ok(Vec::new());
    }
    let at = b.at();
    let now = ms(at.now);
    let mut written = Vec::with_capacity(heard.len());
    // A statement per chunk: on SQLite each takes the one write connection,
    // and a second's heartbeats of 10,000 agents in one statement held it
    // 5–7 ms, which an enqueue arriving meanwhile waited out whole.
    for chunk in heard.chunks(HEARTBEAT_CHUNK) {
        let ids: Vec<uuid::Uuid> = chunk.iter().map(|(id, _)| id.as_uuid()).collect();
        let ago: Vec<i64> = chunk.iter().map(|(_, t)| (now - ms(*t)).max(0)).collect();
        let stmt = Stmt::new::<B>(HEARTBEATS)
            .arg(at.judged)
            .arg(ids.as_slice())
            .arg(ago.as_slice());
        for r in b
            .fetch_write(stmt)
            .await
            .op("recording agent heartbeats")?
            .iter()
        {
            written.push((r.id("id")?, rows::parsed("status", r.text("status")?)?));
        }
    }
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
    let revoked = revoke_credentials_of::<B>(&mut tx, id, ms(now), op).await?;
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
