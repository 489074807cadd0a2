//! Tenants, tokens, agents and notifications on PostgreSQL.

use std::time::Duration;

use homeostat_model::{
    Agent, AgentStatus, ApiScope, Id, NewAgent, NewAuditEvent, PlanTier, Tenant, TokenInfo,
    TokenKind, new_id,
};
use homeostat_runtime::Fence;
use jiff::Timestamp;
use serde_json::json;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{PgStore, Tx};
use crate::error::{Context, StoreError, corrupt};
use crate::secret;
use crate::time::{add, ms, ts};
use crate::{ApiKeyIdentity, IssuedSecret, actor_for};

fn tenant_from_row(r: &PgRow) -> Result<Tenant, StoreError> {
    let op = "reading a tenant";
    Ok(Tenant {
        id: r.try_get::<Id, _>("id").op("reading an id")?,
        name: r.try_get("name").op(op)?,
        tier: r
            .try_get::<String, _>("tier")
            .op(op)?
            .parse()
            .map_err(|e| corrupt(op, e))?,
        created_at: ts(r.try_get("created_at").op(op)?),
    })
}

fn agent_from_row(r: &PgRow) -> Result<Agent, StoreError> {
    let op = "reading an agent";
    let labels: String = r.try_get("labels").op(op)?;

    Ok(Agent {
        id: r.try_get::<Id, _>("id").op("reading an id")?,
        tenant_id: r
            .try_get::<Option<Id>, _>("tenant_id")
            .op("reading an id")?,
        name: r.try_get("name").op(op)?,
        labels: serde_json::from_str(&labels).map_err(|e| corrupt(op, e))?,
        queues: r.try_get("queues").op(op)?,
        status: r
            .try_get::<String, _>("status")
            .op(op)?
            .parse()
            .map_err(|e| corrupt(op, e))?,
        last_heartbeat_at: ts(r.try_get("last_heartbeat_at").op(op)?),
        registered_at: ts(r.try_get("registered_at").op(op)?),
    })
}

const AGENT_COLUMNS: &str =
    "id, tenant_id, name, labels, queues, status, last_heartbeat_at, registered_at";

impl PgStore {
    pub(crate) async fn create_tenant(
        &self,
        name: &str,
        tier: PlanTier,
        actor: &str,
        now: Timestamp,
    ) -> Result<Tenant, StoreError> {
        homeostat_model::validate_name("name", name)?;
        let op = "creating a tenant";
        let mut tx = self.write(op).await?;
        let tenant = Tenant {
            id: new_id(),
            name: name.to_owned(),
            tier,
            created_at: ts(ms(now)),
        };
        sqlx::query("INSERT INTO tenants (id, name, tier, created_at) VALUES ($1, $2, $3, $4)")
            .bind(tenant.id)
            .bind(name)
            .bind(tier.as_str())
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict {
                    operation: op,
                    entity: "tenant",
                    id: name.to_owned(),
                    reason: "a tenant with this name exists".into(),
                },
                e => crate::error::db_error(op, e),
            })?;
        Self::append_audit(
            &mut tx,
            &[NewAuditEvent {
                actor: actor.to_owned(),
                action: "tenant.created".into(),
                subject: format!("tenant:{}", tenant.id),
                details: json!({"name": name, "tier": tier}),
            }],
            ms(now),
        )
        .await?;
        tx.commit().await.op(op)?;
        Ok(tenant)
    }

    pub(crate) async fn set_tenant_tier(
        &self,
        id: Id,
        tier: PlanTier,
        actor: &str,
        now: Timestamp,
    ) -> Result<Tenant, StoreError> {
        let op = "changing a tenant's tier";
        let mut tx = self.write(op).await?;
        let row = sqlx::query(
            "UPDATE tenants SET tier = $1 WHERE id = $2 RETURNING id, name, tier, created_at",
        )
        .bind(tier.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .op(op)?
        .ok_or_else(|| StoreError::NotFound {
            entity: "tenant",
            id: id.to_string(),
        })?;
        Self::append_audit(
            &mut tx,
            &[NewAuditEvent {
                actor: actor.to_owned(),
                action: "tenant.tier_changed".into(),
                subject: format!("tenant:{id}"),
                details: json!({"tier": tier}),
            }],
            ms(now),
        )
        .await?;
        tx.commit().await.op(op)?;
        tenant_from_row(&row)
    }

    pub(crate) async fn get_tenant(&self, id: Id) -> Result<Tenant, StoreError> {
        let row = sqlx::query("SELECT id, name, tier, created_at FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .op("reading a tenant")?
            .ok_or_else(|| StoreError::NotFound {
                entity: "tenant",
                id: id.to_string(),
            })?;
        tenant_from_row(&row)
    }

    pub(crate) async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        sqlx::query("SELECT id, name, tier, created_at FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .op("listing tenants")?
            .iter()
            .map(tenant_from_row)
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_token(
        tx: &mut Tx,
        kind: TokenKind,
        prefix: &str,
        tenant_id: Option<Id>,
        agent_id: Option<Id>,
        admin: bool,
        expires_at: Option<i64>,
        uses_left: Option<u32>,
        now: Timestamp,
    ) -> Result<IssuedSecret, StoreError> {
        let secret = secret::generate(prefix);
        let info = TokenInfo {
            id: new_id(),
            kind,
            tenant_id,
            agent_id,
            admin,
            expires_at: expires_at.map(ts),
            uses_left,
            revoked_at: None,
            created_at: ts(ms(now)),
        };
        sqlx::query(
            "INSERT INTO tokens (id, kind, hash, tenant_id, agent_id, admin, expires_at, uses_left, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(info.id)
        .bind(kind.as_str())
        .bind(secret::hash(&secret).to_vec())
        .bind(tenant_id)
        .bind(agent_id)
        .bind(admin)
        .bind(expires_at)
        .bind(uses_left.map(i64::from))
        .bind(ms(now))
        .execute(&mut **tx)
        .await
        .op("storing a token")?;
        Ok(IssuedSecret { info, secret })
    }

    pub(crate) async fn issue_bootstrap_token(
        &self,
        tenant_id: Option<Id>,
        ttl: Duration,
        uses: u32,
        actor: &str,
        now: Timestamp,
    ) -> Result<IssuedSecret, StoreError> {
        let op = "issuing a bootstrap token";
        let mut tx = self.write(op).await?;
        let issued = Self::insert_token(
            &mut tx,
            TokenKind::Bootstrap,
            "hsb",
            tenant_id,
            None,
            false,
            Some(add(now, ttl)),
            Some(uses),
            now,
        )
        .await?;
        Self::append_audit(
            &mut tx,
            &[crate::token_event(actor, "token.created", &issued.info)],
            ms(now),
        )
        .await?;
        tx.commit().await.op(op)?;
        Ok(issued)
    }

    pub(crate) async fn issue_api_key(
        &self,
        scope: ApiScope,
        ttl: Option<Duration>,
        actor: &str,
        now: Timestamp,
    ) -> Result<IssuedSecret, StoreError> {
        let op = "issuing an API key";
        let mut tx = self.write(op).await?;
        let (tenant, admin) = match scope {
            ApiScope::Admin => (None, true),
            ApiScope::Tenant(t) => (Some(t), false),
        };
        let issued = Self::insert_token(
            &mut tx,
            TokenKind::ApiKey,
            "hsk",
            tenant,
            None,
            admin,
            ttl.map(|t| add(now, t)),
            None,
            now,
        )
        .await?;
        Self::append_audit(
            &mut tx,
            &[crate::token_event(actor, "token.created", &issued.info)],
            ms(now),
        )
        .await?;
        tx.commit().await.op(op)?;
        Ok(issued)
    }

    pub(crate) async fn revoke_token(
        &self,
        id: Id,
        actor: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let op = "revoking a token";
        let mut tx = self.write(op).await?;
        let kind: Option<String> = sqlx::query_scalar(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING kind",
        )
        .bind(ms(now))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .op(op)?;
        let kind = kind.ok_or_else(|| StoreError::NotFound {
            entity: "token",
            id: id.to_string(),
        })?;
        Self::append_audit(
            &mut tx,
            &[NewAuditEvent {
                actor: actor.to_owned(),
                action: "token.revoked".into(),
                subject: format!("token:{id}"),
                details: json!({"kind": kind}),
            }],
            ms(now),
        )
        .await?;
        tx.commit().await.op(op)
    }

    /// Finds a live token of `kind` by its secret.
    async fn live_token<'e, E>(
        executor: E,
        kind: TokenKind,
        secret_text: &str,
        now: Timestamp,
    ) -> Result<Option<PgRow>, StoreError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Postgres>,
    {
        let presented = secret::hash(secret_text);
        let row = sqlx::query(
            "SELECT id, hash, tenant_id, agent_id, admin, uses_left FROM tokens
             WHERE hash = $1 AND kind = $2 AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > $3)
               AND (uses_left IS NULL OR uses_left > 0)",
        )
        .bind(presented.to_vec())
        .bind(kind.as_str())
        .bind(ms(now))
        .fetch_optional(executor)
        .await
        .op("checking a token")?;
        Ok(row.filter(|r| secret::matches(&r.get::<Vec<u8>, _>("hash"), &presented)))
    }

    pub(crate) async fn authenticate_api_key(
        &self,
        secret_text: &str,
        now: Timestamp,
    ) -> Result<ApiKeyIdentity, StoreError> {
        let row = Self::live_token(&self.pool, TokenKind::ApiKey, secret_text, now)
            .await?
            .ok_or(StoreError::Unauthorized { kind: "API key" })?;
        let scope = if row.get::<bool, _>("admin") {
            ApiScope::Admin
        } else {
            ApiScope::Tenant(
                row.try_get::<Option<Id>, _>("tenant_id")
                    .op("reading an id")?
                    .ok_or_else(|| {
                        corrupt("checking a token", "tenant API key without a tenant")
                    })?,
            )
        };
        Ok(ApiKeyIdentity {
            token_id: row.try_get::<Id, _>("id").op("reading an id")?,
            scope,
        })
    }

    pub(crate) async fn authenticate_agent(
        &self,
        secret_text: &str,
        now: Timestamp,
    ) -> Result<Id, StoreError> {
        let row = Self::live_token(&self.pool, TokenKind::AgentCredential, secret_text, now)
            .await?
            .ok_or(StoreError::Unauthorized {
                kind: "agent credential",
            })?;
        row.try_get::<Option<Id>, _>("agent_id")
            .op("reading an id")?
            .ok_or_else(|| corrupt("checking a token", "agent credential without an agent"))
    }

    pub(crate) async fn register_agent(
        &self,
        bootstrap_secret: &str,
        agent: &NewAgent,
        now: Timestamp,
    ) -> Result<(Agent, IssuedSecret), StoreError> {
        agent.validate()?;
        let op = "registering an agent";
        let mut tx = self.write(op).await?;
        let token = Self::live_token(&mut *tx, TokenKind::Bootstrap, bootstrap_secret, now)
            .await?
            .ok_or(StoreError::Unauthorized {
                kind: "bootstrap token",
            })?;
        let token_id = token.try_get::<Id, _>("id").op("reading an id")?;
        sqlx::query("UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1")
            .bind(token_id)
            .execute(&mut *tx)
            .await
            .op(op)?;
        let stored = Agent {
            id: new_id(),
            tenant_id: token
                .try_get::<Option<Id>, _>("tenant_id")
                .op("reading an id")?,
            name: agent.name.clone(),
            labels: agent.labels.clone(),
            queues: agent.queues.clone(),
            status: AgentStatus::Online,
            last_heartbeat_at: ts(ms(now)),
            registered_at: ts(ms(now)),
        };
        sqlx::query(
            "INSERT INTO agents (id, tenant_id, name, labels, queues, status, last_heartbeat_at, registered_at)
             VALUES ($1, $2, $3, $4, $5, 'online', $6, $7)",
        )
        .bind(stored.id)
        .bind(stored.tenant_id)
        .bind(&stored.name)
        .bind(serde_json::to_string(&stored.labels).unwrap_or_default())
        .bind(&stored.queues)
        .bind(ms(now))
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .op(op)?;
        let credential = Self::insert_token(
            &mut tx,
            TokenKind::AgentCredential,
            "hsa",
            stored.tenant_id,
            Some(stored.id),
            false,
            None,
            None,
            now,
        )
        .await?;
        Self::append_audit(
            &mut tx,
            &[NewAuditEvent {
                actor: format!("bootstrap-token:{token_id}"),
                action: "agent.registered".into(),
                subject: format!("agent:{}", stored.id),
                details: json!({
                    "name": stored.name,
                    "tenant_id": stored.tenant_id,
                    "queues": stored.queues,
                    "credential_token_id": credential.info.id,
                }),
            }],
            ms(now),
        )
        .await?;
        tx.commit().await.op(op)?;
        Ok((stored, credential))
    }

    pub(crate) async fn heartbeat_agents(
        &self,
        ids: &[Id],
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let op = "recording agent heartbeats";
        let mut tx = self.write(op).await?;
        let n = sqlx::query(
            "UPDATE agents SET last_heartbeat_at = $1,
               status = CASE WHEN status = 'offline' THEN 'online' ELSE status END
             WHERE id = ANY($2)",
        )
        .bind(ms(now))
        .bind(ids)
        .execute(&mut *tx)
        .await
        .op(op)?
        .rows_affected();
        tx.commit().await.op(op)?;
        Ok(n)
    }

    pub(crate) async fn get_agent(&self, id: Id) -> Result<Agent, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .op("reading an agent")?
            .ok_or_else(|| StoreError::NotFound {
                entity: "agent",
                id: id.to_string(),
            })?;
        agent_from_row(&row)
    }

    pub(crate) async fn list_agents(&self, tenant: Option<Id>) -> Result<Vec<Agent>, StoreError> {
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE ($1::uuid IS NULL OR tenant_id = $1) ORDER BY name"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .fetch_all(&self.pool)
            .await
            .op("listing agents")?
            .iter()
            .map(agent_from_row)
            .collect()
    }

    pub(crate) async fn drain_agent(
        &self,
        id: Id,
        actor: &str,
        now: Timestamp,
    ) -> Result<Agent, StoreError> {
        let op = "draining an agent";
        let mut tx = self.write(op).await?;
        let sql = format!(
            "UPDATE agents SET status = 'draining' WHERE id = $1 RETURNING {AGENT_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .op(op)?
            .ok_or_else(|| StoreError::NotFound {
                entity: "agent",
                id: id.to_string(),
            })?;
        Self::append_audit(
            &mut tx,
            &[NewAuditEvent {
                actor: actor.to_owned(),
                action: "agent.draining".into(),
                subject: format!("agent:{id}"),
                details: json!({}),
            }],
            ms(now),
        )
        .await?;
        tx.commit().await.op(op)?;
        agent_from_row(&row)
    }

    pub(crate) async fn mark_silent_agents_offline(
        &self,
        now: Timestamp,
        stale_after: Duration,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Vec<Id>, StoreError> {
        let op = "agents.offline";
        let mut tx = self.write(op).await?;
        Self::check_fence(&mut tx, fence, op).await?;
        let rows = sqlx::query(
            "UPDATE agents SET status = 'offline'
             WHERE id IN (SELECT id FROM agents WHERE status <> 'offline'
                          AND last_heartbeat_at < $1 LIMIT $2)
             RETURNING id",
        )
        .bind(ms(now) - crate::time::dur_ms(stale_after))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .op(op)?;
        let ids = rows
            .iter()
            .map(|r| r.try_get::<Id, _>("id").op("reading an id"))
            .collect::<Result<Vec<_>, _>>()?;
        if !ids.is_empty() {
            Self::append_audit(
                &mut tx,
                &[NewAuditEvent {
                    actor: actor_for(fence),
                    action: op.into(),
                    subject: "agents".into(),
                    details: json!({"ids": ids, "count": ids.len(), "reason": "silent past the stale timeout"}),
                }],
                ms(now),
            )
            .await?;
        }
        tx.commit().await.op(op)?;
        Ok(ids)
    }

    pub(crate) async fn delete_dead_tokens(
        &self,
        now: Timestamp,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        let op = "tokens.deleted";
        let mut tx = self.write(op).await?;
        Self::check_fence(&mut tx, fence, op).await?;
        let n = sqlx::query(
            "DELETE FROM tokens WHERE id IN (
               SELECT id FROM tokens WHERE expires_at <= $1
               UNION SELECT id FROM tokens WHERE uses_left = 0
               UNION SELECT id FROM tokens WHERE revoked_at IS NOT NULL
               LIMIT $2)",
        )
        .bind(ms(now))
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await
        .op(op)?
        .rows_affected();
        if n > 0 {
            Self::append_audit(
                &mut tx,
                &[NewAuditEvent {
                    actor: actor_for(fence),
                    action: op.into(),
                    subject: "tokens".into(),
                    details: json!({"count": n, "reason": "expired, used up or revoked"}),
                }],
                ms(now),
            )
            .await?;
        }
        tx.commit().await.op(op)?;
        Ok(n)
    }
}
