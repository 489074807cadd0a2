//! The store's registry: tenants, tokens, sessions, agents.

use std::time::Duration;

use homeostat_model::{
    Agent, AgentId, ApiScope, JobId, NewAgent, PlanTier, Tenant, TenantId, TokenId, TokenInfo,
    TokenKind,
};
use jiff::Timestamp;

use super::{Db, RECLAIM_BATCH, Store};
use crate::job_metrics::Reclaim;
use crate::{
    AgentFilter, ApiKeyIdentity, IssuedSecret, NewBootstrapToken, Page, SessionLimits, StoreError,
    Swept, registry, sessions, sweeps,
};

impl Store {
    // --- tenants, tokens, agents ------------------------------------------

    /// Creates a tenant (audited).
    pub async fn create_tenant(
        &self,
        name: &str,
        tier: PlanTier,
        actor: &str,
    ) -> Result<Tenant, StoreError> {
        dispatch!(self, registry::tenants::create_tenant(name, tier, actor))
    }

    /// Changes a tenant's plan tier (audited).
    pub async fn set_tenant_tier(
        &self,
        id: TenantId,
        tier: PlanTier,
        actor: &str,
    ) -> Result<Tenant, StoreError> {
        dispatch!(self, registry::tenants::set_tenant_tier(id, tier, actor))
    }

    /// One tenant.
    pub async fn get_tenant(&self, id: TenantId) -> Result<Tenant, StoreError> {
        dispatch!(self, registry::tenants::get_tenant(id))
    }

    /// Every tenant, by name.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        dispatch!(self, registry::tenants::list_tenants())
    }

    /// Issues a bootstrap token for agents of a tenant (or platform agents),
    /// valid for a time and a number of registrations (audited, without the
    /// secret).
    pub async fn issue_bootstrap_token(
        &self,
        token: &NewBootstrapToken,
        actor: &str,
    ) -> Result<IssuedSecret, StoreError> {
        dispatch!(self, registry::tokens::issue_bootstrap_token(token, actor))
    }

    /// Issues an API key (audited, without the secret).
    pub async fn issue_api_key(
        &self,
        scope: ApiScope,
        ttl: Option<Duration>,
        actor: &str,
    ) -> Result<IssuedSecret, StoreError> {
        dispatch!(self, registry::tokens::issue_api_key(scope, ttl, actor))
    }

    /// Tokens of one kind (of one tenant, or all), oldest first: their
    /// metadata, never a secret or a hash.
    pub async fn list_tokens(
        &self,
        kind: TokenKind,
        tenant: Option<TenantId>,
    ) -> Result<Vec<TokenInfo>, StoreError> {
        dispatch!(self, registry::tokens::list_tokens(kind, tenant))
    }

    /// Revokes a token (audited).
    pub async fn revoke_token(&self, id: TokenId, actor: &str) -> Result<(), StoreError> {
        let agent = dispatch!(self, registry::tokens::revoke_token(id, actor))?;
        // Other replicas learn of it within `REVOCATION_CHECK`; this one now.
        self.local.credentials.forget(&Vec::from_iter(agent));
        Ok(())
    }

    /// The scope of a live API key.
    pub async fn authenticate_api_key(&self, secret: &str) -> Result<ApiKeyIdentity, StoreError> {
        dispatch!(self, registry::tokens::authenticate_api_key(secret))
    }

    /// Starts a dashboard session for the API key `token_id` (one the
    /// caller authenticated): the session id for the cookie, shown this
    /// once and stored as its hash.
    pub async fn start_session(&self, token_id: TokenId) -> Result<String, StoreError> {
        dispatch!(self, sessions::create(token_id))
    }

    /// The API key a live dashboard session belongs to: unauthorized when
    /// the session ended (signed out, idle, too old) or its key did.
    pub async fn session(
        &self,
        id: &str,
        limits: SessionLimits,
    ) -> Result<ApiKeyIdentity, StoreError> {
        dispatch!(self, sessions::identify(id, limits))
    }

    /// Ends a dashboard session (sign-out).
    pub async fn end_session(&self, id: &str) -> Result<(), StoreError> {
        dispatch!(self, sessions::end(id))
    }

    /// Deletes up to `limit` dashboard sessions that idled or aged out.
    pub async fn delete_ended_sessions(
        &self,
        limits: SessionLimits,
        limit: u32,
    ) -> Result<u64, StoreError> {
        dispatch!(self, sessions::delete_ended(limits, limit))
    }

    /// A secret the server keeps for itself under `name` (32 random bytes,
    /// the same on every replica).
    pub async fn server_secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        dispatch!(self, sessions::server_secret(name))
    }

    /// The agent a live credential belongs to.
    pub async fn authenticate_agent(&self, secret: &str) -> Result<AgentId, StoreError> {
        dispatch!(
            self,
            registry::tokens::authenticate_agent(&self.local.credentials, secret)
        )
    }

    /// Registers an agent, consuming one use of the bootstrap token in the
    /// same transaction, and issues its credential.
    pub async fn register_agent(
        &self,
        bootstrap_secret: &str,
        agent: &NewAgent,
    ) -> Result<(Agent, IssuedSecret), StoreError> {
        dispatch!(
            self,
            registry::agents::register_agent(bootstrap_secret, agent)
        )
    }

    /// Records heartbeats of many agents, 250 a statement; an offline agent
    /// that heartbeats is online again. Returns how many agents exist.
    pub async fn heartbeat_agents(&self, ids: &[AgentId]) -> Result<u64, StoreError> {
        let now = self.now();
        let heard: Vec<(AgentId, Timestamp)> = ids.iter().map(|id| (*id, now)).collect();
        Ok(self.record_heartbeats(&heard).await?.len() as u64)
    }

    /// Records, 250 agents a statement, when each agent was heard (by this
    /// store's clock when its heartbeat arrived; a server gathers them and
    /// writes them about once a second): an offline agent heard again is
    /// online. Each agent's status comes back (agents that no longer exist
    /// are absent).
    pub async fn record_heartbeats(
        &self,
        heard: &[(AgentId, Timestamp)],
    ) -> Result<Vec<(AgentId, homeostat_model::AgentStatus)>, StoreError> {
        dispatch!(self, registry::agents::record_heartbeats(heard))
    }

    /// One agent.
    pub async fn get_agent(&self, id: AgentId) -> Result<Agent, StoreError> {
        dispatch!(self, registry::agents::get_agent(id))
    }

    /// The queues at least one online agent claims from (draining and
    /// offline agents claim nothing).
    pub async fn served_queues(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        dispatch!(self, registry::agents::served_queues())
    }

    /// The names of those of `ids` that exist (removed agents are absent).
    pub async fn agent_names(
        &self,
        ids: &[AgentId],
    ) -> Result<std::collections::HashMap<AgentId, String>, StoreError> {
        dispatch!(self, registry::agents::agent_names(ids))
    }

    /// Agents, of one tenant or all, by name.
    pub async fn list_agents(
        &self,
        filter: &AgentFilter,
        after: Option<AgentId>,
        limit: u32,
    ) -> Result<Page<Agent, AgentId>, StoreError> {
        dispatch!(self, registry::agents::list_agents(filter, after, limit))
    }

    /// Stops an agent from claiming new jobs (audited).
    pub async fn drain_agent(&self, id: AgentId, actor: &str) -> Result<Agent, StoreError> {
        dispatch!(self, registry::agents::drain_agent(id, actor))
    }

    /// Undoes a drain: the agent claims again (audited). An offline agent
    /// is a conflict: it comes back by heartbeating.
    pub async fn resume_agent(&self, id: AgentId, actor: &str) -> Result<Agent, StoreError> {
        dispatch!(self, registry::agents::resume_agent(id, actor))
    }

    /// Records the agent process a heartbeat came from. When it is a new
    /// one (the agent restarted), the running jobs leased to the agent that
    /// the new process does not hold (`held`) are reclaimed at once, as for
    /// an agent gone offline (attempt counted; `job.dead` for those with
    /// none left); returns them.
    pub async fn agent_incarnation(
        &self,
        id: AgentId,
        incarnation: uuid::Uuid,
        held: &[JobId],
    ) -> Result<Vec<JobId>, StoreError> {
        let new = incarnation.to_string();
        let previous = dispatch!(self, registry::agents::swap_incarnation(id, &new))?;
        if previous.is_none_or(|p| p == new) {
            return Ok(Vec::new());
        }
        let held: Vec<homeostat_model::Id> = held.iter().map(|j| j.as_uuid()).collect();
        let dead = serde_json::json!({"reason": "its agent restarted without it"});
        self.reclaim_in_batches(dead, || async {
            let swept = dispatch!(self, sweeps::reclaim_restarted(id, &held, RECLAIM_BATCH));
            self.counted_reclaims(swept, Reclaim::AgentRestarted)
        })
        .await
    }

    /// Runs `batch` (a reclaim of at most [`RECLAIM_BATCH`] jobs) until one
    /// comes back short, waking claims for the jobs queued again and
    /// sending `job.dead`, with `dead`'s fields, for those left with no
    /// attempts; returns every job reclaimed.
    async fn reclaim_in_batches<F, Fut>(
        &self,
        dead: serde_json::Value,
        mut batch: F,
    ) -> Result<Vec<JobId>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Swept, StoreError>>,
    {
        let mut reclaimed = Vec::new();
        loop {
            let swept = self.woken(batch().await).await?;
            for job in &swept.dead {
                let mut payload = dead.clone();
                payload["job_id"] = serde_json::json!(job);
                self.add_notification("job.dead", &payload).await?;
            }
            let done = swept.changed < u64::from(RECLAIM_BATCH);
            reclaimed.extend(swept.ids);
            if done {
                return Ok(reclaimed);
            }
        }
    }

    /// Deletes an offline agent and revokes its credentials (audited as
    /// `agent.removed`); its past jobs keep its id. An agent that is not
    /// offline is a conflict: revoke it, or drain it and let it stop, first.
    pub async fn remove_agent(&self, id: AgentId, actor: &str) -> Result<Agent, StoreError> {
        let agent = dispatch!(self, registry::agents::remove_agent(id, actor))?;
        self.forget_agents(&[id]);
        Ok(agent)
    }

    /// An agent's credentials: metadata, never a secret; revoked ones too.
    pub async fn agent_credentials(&self, id: AgentId) -> Result<Vec<TokenInfo>, StoreError> {
        dispatch!(self, registry::tokens::agent_credentials(id))
    }

    /// Revokes every credential of an agent (its next request is refused,
    /// on this replica at once and on the others within
    /// [`REVOCATION_CHECK`]), takes it offline, and reclaims
    /// its running jobs at once, as agent-health does for a silent agent.
    /// Audited as `actor`.
    pub async fn revoke_agent(
        &self,
        id: AgentId,
        actor: &str,
    ) -> Result<homeostat_model::operator::RevokedAgent, StoreError> {
        let (agent, credentials) = dispatch!(self, registry::tokens::revoke_agent(id, actor))?;
        // Other replicas learn of it within `REVOCATION_CHECK`; this one now.
        self.local.credentials.forget(&[id]);
        let dead = serde_json::json!({"reason": "its agent was revoked", "actor": actor});
        let reclaimed = self
            .reclaim_in_batches(dead, || async {
                let swept = dispatch!(self, sweeps::reclaim_revoked(id, RECLAIM_BATCH));
                self.counted_reclaims(swept, Reclaim::AgentRevoked)
            })
            .await?;
        Ok(homeostat_model::operator::RevokedAgent {
            agent,
            credentials,
            reclaimed,
        })
    }

    /// Forgets what this store cached of agents that are gone.
    pub(super) fn forget_agents(&self, agents: &[AgentId]) {
        self.local.credentials.forget(agents);
        let mut facts = self.local.agent_facts.lock().unwrap();
        for agent in agents {
            facts.remove(agent);
        }
    }
}
