//! The homeostat store: one interface over SQLite (embedded, zero setup) and
//! PostgreSQL (N replicas), each with its own SQL and migrations.
//!
//! Operations act at the time of the store's clock ([`StoreClock`]): the
//! system clock in production, where PostgreSQL's own clock judges lease
//! expiry, heartbeats and deadlines so replicas with skewed clocks agree; a
//! manual clock in tests, which move it instead of sleeping. Controller
//! sweeps take a [`Fence`]: the store executes them only while that lease
//! epoch is current, in the same transaction, and records each change in the
//! hash-chained audit log.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), homeostat_store::StoreError> {
//! use homeostat_model::{AuditAction, NewJob, PlanTier};
//! use homeostat_store::{Store, StoreOptions};
//!
//! # let dir = std::env::temp_dir().join(format!("homeostat-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let url = format!("sqlite:{}", dir.join("homeostat.db").display());
//! // url: "sqlite:homeostat.db", or "postgres://user@host/db"
//! let store = Store::connect(&url, StoreOptions::default()).await?;
//! let tenant = store.create_tenant("acme", PlanTier::Standard, "operator:setup").await?;
//! let job = store.enqueue(tenant.id, &NewJob::new("builds", "compile")).await?;
//! assert!(!job.deduplicated);
//! # store.close().await;
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("homeostat-store needs a backend: enable the `sqlite` or `postgres` feature");

mod attention;
mod audit;
mod audit_log;
mod backend;
mod bounded;
mod credentials;
mod decisions;
mod error;
mod health;
mod idempotency;
mod jobs;
mod leases;
mod migrations;
mod notifications;
mod plan;
#[cfg(feature = "postgres")]
mod postgres;
mod registry;
mod rows;
mod secret;
mod sessions;
mod signals;
#[cfg(feature = "sqlite")]
mod sqlite;
mod stats;
mod sweeps;
mod tally;
mod time;
mod types;

use std::time::Duration;

use homeostat_model::{
    Agent, AgentId, ApiScope, AuditAction, Job, JobId, JobState, NewAgent, NewAuditEvent, NewJob,
    Notification, NotificationId, NotificationState, PlanTier, Tenant, TenantId, TokenId,
    TokenInfo, TokenKind,
};
use homeostat_runtime::{Fence, Lease, LeaseError, LeaseStore};
use jiff::Timestamp;

pub use attention::MinuteOutcomes;
pub use audit::{ChainBreak, VerifyReport};
pub use bounded::{AGENT_CACHE_ENTRIES, BoundedMap};
pub use credentials::REVOCATION_CHECK;
pub use error::StoreError;
pub use homeostat_model::{ClaimedJob, CompletedBatch, Completion, Enqueued, FailOutcome, Page};
pub use idempotency::{LIFETIME as IDEMPOTENCY_LIFETIME, MAX_KEY_LEN as MAX_IDEMPOTENCY_KEY_LEN};
pub use plan::{PlanKind, PlannedItem, SweepPlan};
#[cfg(feature = "postgres")]
pub use postgres::PgStore;
pub use sessions::SessionLimits;
pub use signals::QueueWaiter;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
pub use stats::{AgentCount, JobCount, QueueBacklog, Stats};
pub use types::*;

/// The store: SQLite or PostgreSQL behind one interface.
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded, one process.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
    /// Shared by replicas.
    #[cfg(feature = "postgres")]
    Postgres(PgStore),
}

/// Runs an operation written once over [`backend::Backend`]
/// (`dispatch!(self, module::operation(args))`), or a backend's own tuned
/// method (`dispatch!(self.method(args))`).
macro_rules! dispatch {
    ($self:ident, $($op:ident)::+($($arg:expr),*)) => {
        match $self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => $($op)::+(s, $($arg),*).await,
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => $($op)::+(s, $($arg),*).await,
        }
    };
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => s.$method($($arg),*).await,
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

/// Jobs reclaimed from one agent in one transaction.
const RECLAIM_BATCH: u32 = 1000;

impl Store {
    /// Connects to `url` (`sqlite:path`, `sqlite://path`, `postgres://…`),
    /// refuses a schema newer than this build, and applies migrations.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        #[cfg(feature = "sqlite")]
        if url.starts_with("sqlite:") {
            return Ok(Store::Sqlite(SqliteStore::connect(url, options).await?));
        }
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Store::Postgres(PgStore::connect(url, options).await?));
        }
        let _ = options;
        Err(StoreError::unsupported_url(url))
    }

    /// Which backend this is: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => "postgres",
        }
    }

    /// The time now, by the store's clock ([`StoreOptions::clock`]).
    pub fn now(&self) -> Timestamp {
        self.options().clock.now()
    }

    /// The store's policies.
    pub fn options(&self) -> &StoreOptions {
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => backend::Backend::options(s),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => backend::Backend::options(s),
        }
    }

    /// Whether the database answers and its schema is this build's (a
    /// readiness probe).
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        dispatch!(self, migrations::check_current())
    }

    /// Closes the connection pool.
    pub async fn close(&self) {
        if let Err(e) = dispatch!(self, tally::flush()) {
            tracing::warn!(error = %e, "the last counts of succeeded jobs were not written");
        }
        dispatch!(self.close())
    }

    // --- tenants, tokens, agents ------------------------------------------

    /// Creates a tenant (audited).
    pub async fn create_tenant(
        &self,
        name: &str,
        tier: PlanTier,
        actor: &str,
    ) -> Result<Tenant, StoreError> {
        dispatch!(self, registry::create_tenant(name, tier, actor))
    }

    /// Changes a tenant's plan tier (audited).
    pub async fn set_tenant_tier(
        &self,
        id: TenantId,
        tier: PlanTier,
        actor: &str,
    ) -> Result<Tenant, StoreError> {
        dispatch!(self, registry::set_tenant_tier(id, tier, actor))
    }

    /// One tenant.
    pub async fn get_tenant(&self, id: TenantId) -> Result<Tenant, StoreError> {
        dispatch!(self, registry::get_tenant(id))
    }

    /// Every tenant, by name.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        dispatch!(self, registry::list_tenants())
    }

    /// Issues a bootstrap token for agents of a tenant (or platform agents),
    /// valid for a time and a number of registrations (audited, without the
    /// secret).
    pub async fn issue_bootstrap_token(
        &self,
        token: &NewBootstrapToken,
        actor: &str,
    ) -> Result<IssuedSecret, StoreError> {
        dispatch!(self, registry::issue_bootstrap_token(token, actor))
    }

    /// Issues an API key (audited, without the secret).
    pub async fn issue_api_key(
        &self,
        scope: ApiScope,
        ttl: Option<Duration>,
        actor: &str,
    ) -> Result<IssuedSecret, StoreError> {
        dispatch!(self, registry::issue_api_key(scope, ttl, actor))
    }

    /// Tokens of one kind (of one tenant, or all), oldest first: their
    /// metadata, never a secret or a hash.
    pub async fn list_tokens(
        &self,
        kind: TokenKind,
        tenant: Option<TenantId>,
    ) -> Result<Vec<TokenInfo>, StoreError> {
        dispatch!(self, registry::list_tokens(kind, tenant))
    }

    /// Revokes a token (audited).
    pub async fn revoke_token(&self, id: TokenId, actor: &str) -> Result<(), StoreError> {
        dispatch!(self, registry::revoke_token(id, actor))
    }

    /// The scope of a live API key.
    pub async fn authenticate_api_key(&self, secret: &str) -> Result<ApiKeyIdentity, StoreError> {
        dispatch!(self, registry::authenticate_api_key(secret))
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
        dispatch!(self, registry::authenticate_agent(secret))
    }

    /// Registers an agent, consuming one use of the bootstrap token in the
    /// same transaction, and issues its credential.
    pub async fn register_agent(
        &self,
        bootstrap_secret: &str,
        agent: &NewAgent,
    ) -> Result<(Agent, IssuedSecret), StoreError> {
        dispatch!(self, registry::register_agent(bootstrap_secret, agent))
    }

    /// Records heartbeats of many agents in one statement; an offline agent
    /// that heartbeats is online again. Returns how many agents exist.
    pub async fn heartbeat_agents(&self, ids: &[AgentId]) -> Result<u64, StoreError> {
        let now = self.now();
        let heard: Vec<(AgentId, Timestamp)> = ids.iter().map(|id| (*id, now)).collect();
        Ok(self.record_heartbeats(&heard).await?.len() as u64)
    }

    /// Records, in one statement, when each agent was heard (by this
    /// store's clock when its heartbeat arrived; a server gathers them and
    /// writes them about once a second): an offline agent heard again is
    /// online. Each agent's status comes back (agents that no longer exist
    /// are absent).
    pub async fn record_heartbeats(
        &self,
        heard: &[(AgentId, Timestamp)],
    ) -> Result<Vec<(AgentId, homeostat_model::AgentStatus)>, StoreError> {
        dispatch!(self, registry::record_heartbeats(heard))
    }

    /// One agent.
    pub async fn get_agent(&self, id: AgentId) -> Result<Agent, StoreError> {
        dispatch!(self, registry::get_agent(id))
    }

    /// The queues at least one online agent claims from (draining and
    /// offline agents claim nothing).
    pub async fn served_queues(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        dispatch!(self, registry::served_queues())
    }

    /// The names of those of `ids` that exist (removed agents are absent).
    pub async fn agent_names(
        &self,
        ids: &[AgentId],
    ) -> Result<std::collections::HashMap<AgentId, String>, StoreError> {
        dispatch!(self, registry::agent_names(ids))
    }

    /// Agents, of one tenant or all, by name.
    pub async fn list_agents(
        &self,
        filter: &AgentFilter,
        after: Option<AgentId>,
        limit: u32,
    ) -> Result<Page<Agent, AgentId>, StoreError> {
        dispatch!(self, registry::list_agents(filter, after, limit))
    }

    /// Stops an agent from claiming new jobs (audited).
    pub async fn drain_agent(&self, id: AgentId, actor: &str) -> Result<Agent, StoreError> {
        dispatch!(self, registry::drain_agent(id, actor))
    }

    /// Undoes a drain: the agent claims again (audited). An offline agent
    /// is a conflict: it comes back by heartbeating.
    pub async fn resume_agent(&self, id: AgentId, actor: &str) -> Result<Agent, StoreError> {
        dispatch!(self, registry::resume_agent(id, actor))
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
        let previous = dispatch!(self, registry::swap_incarnation(id, &new))?;
        if previous.is_none_or(|p| p == new) {
            return Ok(Vec::new());
        }
        let held: Vec<homeostat_model::Id> = held.iter().map(|j| j.as_uuid()).collect();
        let dead = serde_json::json!({"reason": "its agent restarted without it"});
        self.reclaim_in_batches(dead, || async {
            dispatch!(self, sweeps::reclaim_restarted(id, &held, RECLAIM_BATCH))
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
        dispatch!(self, registry::remove_agent(id, actor))
    }

    /// An agent's credentials: metadata, never a secret; revoked ones too.
    pub async fn agent_credentials(&self, id: AgentId) -> Result<Vec<TokenInfo>, StoreError> {
        dispatch!(self, registry::agent_credentials(id))
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
        let (agent, credentials) = dispatch!(self, registry::revoke_agent(id, actor))?;
        let dead = serde_json::json!({"reason": "its agent was revoked", "actor": actor});
        let reclaimed = self
            .reclaim_in_batches(dead, || async {
                dispatch!(self, sweeps::reclaim_revoked(id, RECLAIM_BATCH))
            })
            .await?;
        Ok(homeostat_model::operator::RevokedAgent {
            agent,
            credentials,
            reclaimed,
        })
    }

    // --- jobs -------------------------------------------------------------

    /// Enqueues one job (see [`Store::enqueue_batch`]).
    pub async fn enqueue(&self, tenant_id: TenantId, job: &NewJob) -> Result<Enqueued, StoreError> {
        let mut out = self
            .enqueue_batch(tenant_id, std::slice::from_ref(job))
            .await?;
        Ok(out.remove(0))
    }

    /// Enqueues jobs in one transaction, all or none. A job whose fingerprint
    /// matches a live job of the tenant returns that job, its occurrences
    /// increased.
    pub async fn enqueue_batch(
        &self,
        tenant_id: TenantId,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let enqueued = dispatch!(self.enqueue_batch(tenant_id, jobs))?;
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => {
                let queued = signals::queued_by_queue(jobs, self.now());
                signals::wake(s, tenant_id, &queued).await;
            }
            // It woke this replica's waiting claims and told the others in
            // its own statement.
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => {}
        }
        Ok(enqueued)
    }

    /// Enqueues like [`Store::enqueue_batch`], once per idempotency `key`
    /// of the tenant within `lifetime`: a repeat gets the first answer back
    /// (`replayed`) instead of enqueueing again, even when it races the
    /// first.
    pub async fn enqueue_once(
        &self,
        tenant_id: TenantId,
        key: &str,
        jobs: &[NewJob],
        lifetime: Duration,
    ) -> Result<Once, StoreError> {
        let once = dispatch!(
            self,
            idempotency::enqueue_once(tenant_id, key, jobs, lifetime)
        )?;
        if !once.replayed {
            let queued = signals::queued_by_queue(jobs, self.now());
            dispatch!(self, signals::wake(tenant_id, &queued));
        }
        Ok(once)
    }

    /// Deletes up to `limit` idempotency keys older than `lifetime`.
    pub async fn delete_old_idempotency_keys(
        &self,
        lifetime: Duration,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        dispatch!(self, idempotency::forget_old(lifetime, limit, fence))
    }

    /// A waiting claim of `agent` for up to `capacity` jobs queued from now
    /// on, by any replica, on its queues (`only` some of them): jobs queued
    /// wake about as many waiting claims as they need, oldest first. Take it
    /// before looking for work.
    pub async fn queued_waiter(
        &self,
        agent: AgentId,
        only: Option<&[String]>,
        capacity: u32,
    ) -> Result<QueueWaiter, StoreError> {
        #[cfg(feature = "postgres")]
        #[allow(irrefutable_let_patterns)]
        if let Store::Postgres(s) = self {
            s.listen();
        }
        dispatch!(self, signals::waiter(agent, only, capacity))
    }

    /// Returns once waiting claims hear of jobs queued by other replicas
    /// (PostgreSQL's listener connected; at once on SQLite). Waiting claims
    /// start listening themselves; a server waits for this before it
    /// answers, so that no early claim misses an announcement.
    pub async fn listening(&self) {
        #[cfg(feature = "postgres")]
        #[allow(irrefutable_let_patterns)]
        if let Store::Postgres(s) = self {
            s.listening().await;
        }
    }

    /// Writes this replica's readiness row: `Ok` when writes succeed now
    /// (a full disk, a read-only database or a lost primary fail it).
    pub async fn probe_write(&self, replica: &str) -> Result<(), StoreError> {
        dispatch!(self, health::probe_write(replica))
    }

    /// Whether the connection that hears other replicas (queued jobs,
    /// released leases) listens now; `None` on SQLite, which has none, and
    /// before it is started ([`Store::listening`]).
    pub fn listener_connected(&self) -> Option<bool> {
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => None,
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => s.listener_connected(),
        }
    }

    /// How many claims wait on this store now.
    pub fn waiting_claims(&self) -> usize {
        use backend::Backend;
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => s.signals().waiting(),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => s.signals().waiting(),
        }
    }

    /// Wakes waiting claims for the jobs `swept` moved back to `queued`.
    async fn woken(&self, swept: Result<Swept, StoreError>) -> Result<Swept, StoreError> {
        if let Ok(swept) = &swept {
            for (tenant, queued) in swept.queued_by_tenant() {
                dispatch!(self, signals::wake(tenant, &queued));
            }
        }
        swept
    }

    /// Wakes waiting claims for one job queued again.
    async fn woken_job(&self, job: Result<Job, StoreError>) -> Result<Job, StoreError> {
        if let Ok(job) = &job
            && job.state == JobState::Queued
        {
            dispatch!(
                self,
                signals::wake(job.tenant_id, &[(job.queue.clone(), 1)])
            );
        }
        job
    }

    /// Enqueues `job` for cron slot `slot` of periodic schedule `schedule`,
    /// unless that slot or a later one was already enqueued (by any
    /// replica): claiming the slot and enqueueing are one transaction.
    /// `None` when the slot was taken. Audited.
    pub async fn enqueue_periodic(
        &self,
        periodic: &PeriodicEnqueue<'_>,
        fence: Option<&Fence>,
    ) -> Result<Option<Enqueued>, StoreError> {
        let enqueued = dispatch!(self, jobs::enqueue_periodic(periodic, fence))?;
        if enqueued.is_some() {
            let queued = signals::queued_by_queue(std::slice::from_ref(periodic.job), self.now());
            dispatch!(self, signals::wake(periodic.tenant_id, &queued));
        }
        Ok(enqueued)
    }

    /// Claims up to `limit` queued jobs from the agent's queues (its tenant's
    /// only, unless it is a platform agent), highest effective priority then
    /// oldest, each under a lease of `lease` with a new fencing token.
    pub async fn claim(
        &self,
        agent_id: AgentId,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        dispatch!(self.claim(agent_id, None, limit, lease))
    }

    /// [`Store::claim`] from some of the agent's queues only (queues it
    /// was not registered for are ignored).
    pub async fn claim_from(
        &self,
        agent_id: AgentId,
        queues: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        dispatch!(self.claim(agent_id, Some(queues), limit, lease))
    }

    /// Extends the lease `agent` holds on a running job; refused for a stale
    /// token or a job another agent holds.
    pub async fn heartbeat_job(
        &self,
        agent: AgentId,
        id: JobId,
        lease_token: i64,
        lease: Duration,
    ) -> Result<Timestamp, StoreError> {
        dispatch!(self, jobs::heartbeat_job(agent, id, lease_token, lease))
    }

    /// Completes the jobs `agent` holds, in one statement. A completion
    /// whose lease token is not the job's current one (the job was
    /// reclaimed, or is no longer running), or of a job another agent holds,
    /// changes nothing and is reported as stale, by id.
    pub async fn complete_batch(
        &self,
        agent: AgentId,
        completions: &[Completion],
    ) -> Result<CompletedBatch, StoreError> {
        let mut out = CompletedBatch::default();
        if completions.is_empty() {
            return Ok(out);
        }
        let accepted = dispatch!(self.complete_batch(agent, completions))?;
        for (c, accepted) in completions.iter().zip(accepted) {
            if accepted {
                out.completed.push(c.id);
            } else {
                out.stale.push(c.id);
            }
        }
        dispatch!(self, tally::succeeded(out.completed.len()));
        Ok(out)
    }

    /// Completes one job `agent` holds; a stale token is an error.
    pub async fn complete(
        &self,
        agent: AgentId,
        id: JobId,
        lease_token: i64,
        result: Option<serde_json::Value>,
    ) -> Result<(), StoreError> {
        let done = self
            .complete_batch(
                agent,
                &[Completion {
                    id,
                    lease_token,
                    result,
                }],
            )
            .await?;
        if done.stale.is_empty() {
            Ok(())
        } else {
            Err(StoreError::StaleLease {
                operation: "completing a job",
                job: id,
                token: lease_token,
            })
        }
    }

    /// Records a failed attempt: retried (`scheduled` after the backoff)
    /// while attempts are left and the error is not permanent, else `dead`.
    pub async fn fail(&self, failure: &Failure<'_>) -> Result<FailOutcome, StoreError> {
        dispatch!(self, jobs::fail(failure))
    }

    /// Extends the leases `agent` holds on running jobs, in one statement:
    /// for each `(id, lease token)`, whether its lease was extended (false
    /// when the token is stale, the job is no longer running, or another
    /// agent holds it).
    pub async fn heartbeat_jobs(
        &self,
        agent: AgentId,
        held: &[(JobId, i64)],
        lease: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        dispatch!(self, jobs::heartbeat_jobs(agent, held, lease))
    }

    /// Gives a running job `agent` holds back to its queue without using up
    /// its attempt (the agent is shutting down); refused for a stale token
    /// or a job another agent holds.
    pub async fn release_job(
        &self,
        agent: AgentId,
        id: JobId,
        lease_token: i64,
    ) -> Result<(), StoreError> {
        let (tenant, queue) = dispatch!(self, jobs::release(agent, id, lease_token))?;
        dispatch!(self, signals::wake(tenant, &[(queue, 1)]));
        Ok(())
    }

    /// Cancels a live job (audited).
    pub async fn cancel(&self, id: JobId, actor: &str) -> Result<Job, StoreError> {
        dispatch!(
            self,
            jobs::transition(id, JobState::Cancelled, AuditAction::JobCancelled, actor)
        )
    }

    /// Approves a job awaiting approval (audited).
    pub async fn approve(&self, id: JobId, actor: &str) -> Result<Job, StoreError> {
        self.woken_job(dispatch!(
            self,
            jobs::transition(id, JobState::Queued, AuditAction::JobApproved, actor)
        ))
        .await
    }

    /// Re-queues a dead or expired job with fresh attempts (audited).
    pub async fn retry(&self, id: JobId, actor: &str) -> Result<Job, StoreError> {
        self.woken_job(dispatch!(
            self,
            jobs::transition(id, JobState::Queued, AuditAction::JobRetried, actor)
        ))
        .await
    }

    /// One job.
    pub async fn get_job(&self, id: JobId) -> Result<Job, StoreError> {
        dispatch!(self, jobs::get_job(id))
    }

    /// The tenant's live job with this fingerprint, if any.
    pub async fn live_job_by_fingerprint(
        &self,
        tenant_id: TenantId,
        fingerprint: &str,
    ) -> Result<Option<Job>, StoreError> {
        dispatch!(self, jobs::live_job_by_fingerprint(tenant_id, fingerprint))
    }

    /// Live jobs by state and queue, each queue's backlog and oldest
    /// waiting job, agents by status: what metrics and dashboards read. The
    /// cost follows the live jobs (each count reads a live state's partial
    /// index), not the finished jobs kept for retention; a backlog too large
    /// to count at every read is counted behind the reads, and
    /// `counted_at` says when (the module `stats`).
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        dispatch!(self, stats::stats())
    }

    /// Each tenant's live jobs by queue, counted now (one grouped count of
    /// the live jobs: its cost follows the backlog, so callers keep it).
    pub async fn live_by_tenant(
        &self,
    ) -> Result<std::collections::HashMap<TenantId, Vec<(String, u64)>>, StoreError> {
        dispatch!(self, stats::live_by_tenant())
    }

    /// Agents by status, counted now.
    pub async fn agent_counts(&self) -> Result<Vec<AgentCount>, StoreError> {
        dispatch!(self, stats::agent_counts())
    }

    /// Jobs finished per minute from the minute that holds `since`
    /// (succeeded; dead or expired), oldest minute first; minutes without
    /// any are absent. Succeeded jobs are counted as stores complete them:
    /// this store's counts are exact, another replica's up to a few seconds
    /// late; counts are kept a day.
    pub async fn finished_per_minute(
        &self,
        since: Timestamp,
    ) -> Result<Vec<MinuteOutcomes>, StoreError> {
        dispatch!(self, attention::finished_per_minute(time::ms(since)))
    }

    /// The newest `limit` dead jobs, and how many dead jobs there are.
    pub async fn dead_jobs(&self, limit: u32) -> Result<(Vec<Job>, u64), StoreError> {
        dispatch!(self, attention::dead_jobs(limit))
    }

    /// `limit` jobs waiting for approval, those whose approval expires
    /// soonest first.
    pub async fn awaiting_approval(&self, limit: u32) -> Result<Vec<Job>, StoreError> {
        dispatch!(self, attention::awaiting_approval(limit))
    }

    /// How many running jobs each agent holds (agents holding none are
    /// absent).
    pub async fn running_by_agent(
        &self,
    ) -> Result<std::collections::BTreeMap<AgentId, u64>, StoreError> {
        dispatch!(self, attention::running_by_agent())
    }

    /// A page of jobs, newest first; pass the previous page's
    /// `next_cursor` as `after`.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: u32,
    ) -> Result<Page<Job>, StoreError> {
        dispatch!(self, jobs::list_jobs(filter, after, limit))
    }

    // --- sweeps (controllers) -----------------------------------------------

    /// Agents silent for `stale_after` go offline.
    pub async fn mark_silent_agents_offline(
        &self,
        stale_after: Duration,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Vec<AgentId>, StoreError> {
        dispatch!(
            self,
            registry::mark_silent_agents_offline(stale_after, limit, fence)
        )
    }

    /// Running jobs of offline agents: re-queued, or dead with no attempts left.
    pub async fn reclaim_offline_agent_jobs(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        self.woken(dispatch!(
            self,
            sweeps::run_due(&sweeps::AGENT_OFFLINE, limit, fence)
        ))
        .await
    }

    /// Running jobs whose lease expired: re-queued, or dead with no attempts
    /// left. Only leases that ran out at or after `counted_from` count (all
    /// for `None`): after an outage of the control plane, leases that ran
    /// out while no agent could renew them wait until their agents have had
    /// the chance to.
    pub async fn requeue_expired_leases(
        &self,
        limit: u32,
        counted_from: Option<Timestamp>,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        let from = counted_from.map_or(i64::MIN, time::ms);
        self.woken(dispatch!(self, sweeps::requeue_expired(limit, from, fence)))
            .await
    }

    /// Queued jobs never started by their deadline: expired.
    pub async fn expire_overdue_queued(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        dispatch!(
            self,
            sweeps::run_due(&sweeps::DEADLINE_PASSED, limit, fence)
        )
    }

    /// Running jobs past their own timeout: a failed attempt (scheduled for
    /// retry after the backoff, or dead).
    pub async fn time_out_running(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        dispatch!(self, sweeps::time_out_running(limit, fence))
    }

    /// Scheduled jobs whose time has come: queued.
    pub async fn promote_scheduled(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        self.woken(dispatch!(
            self,
            sweeps::run_due(&sweeps::PROMOTED, limit, fence)
        ))
        .await
    }

    /// Effective priority of queued jobs = tier base + job priority + whole
    /// minutes waited × the ageing bonus, but never above its cap (nor below
    /// the job's own base). Jobs of every tier that waited long enough meet
    /// at the ceiling, where the oldest goes first: no tenant starves.
    pub async fn recompute_priorities(
        &self,
        ageing: Ageing,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        dispatch!(self, sweeps::recompute_priorities(ageing, limit, fence))
    }

    /// Jobs awaiting an approval that expired: expired.
    pub async fn expire_approvals(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        dispatch!(
            self,
            sweeps::run_due(&sweeps::APPROVAL_EXPIRED, limit, fence)
        )
    }

    /// Deletes expired, used-up and revoked tokens.
    pub async fn delete_dead_tokens(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        dispatch!(self, registry::delete_dead_tokens(limit, fence))
    }

    /// Deletes up to `limit` agents offline and unheard for `offline_for`,
    /// oldest first, and revokes their credentials; their past jobs keep
    /// their ids. Audited as `agents.forgotten`.
    pub async fn forget_departed_agents(
        &self,
        offline_for: Duration,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        dispatch!(
            self,
            registry::forget_departed_agents(offline_for, limit, fence)
        )
    }

    /// Deletes finished jobs past retention.
    pub async fn delete_finished_jobs(
        &self,
        retention: JobRetention,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        dispatch!(self, sweeps::delete_finished_jobs(retention, limit, fence))
    }

    /// Deletes up to a batch of the oldest audit events past retention (or,
    /// on a dry run, counts them), keeping the chain verifiable; the
    /// deletion itself is audited.
    pub async fn delete_old_audit_events(
        &self,
        run: AuditRetentionRun,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        let now = self.now();
        let run = audit_log::Retention {
            cutoff_ms: time::ms(now) - time::dur_ms(run.retention),
            batch: run.batch,
            dry_run: run.dry_run,
            now_ms: time::ms(now),
            fence,
        };
        let actor = decisions::actor_for(fence);
        dispatch!(self, audit_log::delete_old(run, &actor))
    }

    /// What a sweep would change at `now`, without changing it: the count
    /// and the first `sample` rows.
    pub async fn plan(&self, kind: PlanKind, sample: u32) -> Result<SweepPlan, StoreError> {
        dispatch!(self, plan::plan(kind, sample))
    }

    /// Which replica (lease holder) leads each exclusive controller now.
    pub async fn lease_holders(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        dispatch!(self, leases::holders())
    }

    /// The last cron slot enqueued for a periodic schedule.
    pub async fn periodic_last_slot(
        &self,
        schedule: &str,
    ) -> Result<Option<Timestamp>, StoreError> {
        dispatch!(self, jobs::periodic_last_slot(schedule))
    }

    // --- audit ------------------------------------------------------------

    /// Appends events to the audit log (for state changes made outside the
    /// store's own operations).
    pub async fn append_audit(&self, events: &[NewAuditEvent]) -> Result<(), StoreError> {
        dispatch!(self, audit_log::append_events(events, time::ms(self.now())))
    }

    /// Audit events after `after_seq`, oldest first.
    pub async fn audit_events(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<homeostat_model::AuditEvent>, StoreError> {
        let events = dispatch!(self, audit_log::events(after_seq, limit))?;
        Ok(events.into_iter().map(public_event).collect())
    }

    /// The audit events about one subject (`job:<id>`, `agent:<id>`, …),
    /// oldest first.
    pub async fn audit_events_of(
        &self,
        subject: &str,
        limit: u32,
    ) -> Result<Vec<homeostat_model::AuditEvent>, StoreError> {
        let events = dispatch!(self, audit_log::events_of(subject, limit))?;
        Ok(events.into_iter().map(public_event).collect())
    }

    /// Audit events before `before_seq` (from the newest when `None`),
    /// newest first, matching `filter`.
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<homeostat_model::AuditEvent>, StoreError> {
        let events = dispatch!(self, attention::audit_page(filter, before_seq, limit))?;
        Ok(events.into_iter().map(public_event).collect())
    }

    /// How many events the retained audit chain holds (what a verification
    /// walks).
    pub async fn audit_len(&self) -> Result<u64, StoreError> {
        let (first, next) = dispatch!(self, attention::audit_span())?;
        Ok(u64::try_from(next - first).unwrap_or(0))
    }

    /// Walks the whole chain, calling `progress` with the count checked after
    /// each page, and reports the first broken link.
    pub async fn verify_audit_chain(
        &self,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<VerifyReport, StoreError> {
        dispatch!(self, audit_log::verify(progress))
    }

    // --- notifications ----------------------------------------------------

    /// Queues a notification for delivery.
    pub async fn add_notification(
        &self,
        event: &str,
        payload: &serde_json::Value,
    ) -> Result<NotificationId, StoreError> {
        dispatch!(self, notifications::add_notification(event, payload))
    }

    /// Takes up to `limit` due notifications for sending, hiding them from
    /// other senders for `hold`.
    pub async fn claim_due_notifications(
        &self,
        limit: u32,
        hold: Duration,
        fence: Option<&Fence>,
    ) -> Result<Vec<Notification>, StoreError> {
        dispatch!(self, notifications::claim_due(limit, hold, fence))
    }

    /// Records a delivery attempt: sent; or retried after min(2^n min, 1 h);
    /// or dead after 5 attempts or a permanent failure.
    pub async fn record_delivery(
        &self,
        id: NotificationId,
        delivery: &Delivery,
    ) -> Result<NotificationState, StoreError> {
        dispatch!(self, notifications::record_delivery(id, delivery))
    }

    /// A page of the notifications in one state (`dead` ones, for an
    /// operator), newest first, after the notification `after`.
    pub async fn list_notifications(
        &self,
        state: NotificationState,
        after: Option<NotificationId>,
        limit: u32,
    ) -> Result<Page<Notification, NotificationId>, StoreError> {
        dispatch!(self, notifications::list(state, after, limit))
    }

    /// Sends a dead notification again, with fresh attempts (audited).
    pub async fn redrive_notification(
        &self,
        id: NotificationId,
        actor: &str,
    ) -> Result<Notification, StoreError> {
        dispatch!(self, notifications::redrive(id, actor))
    }

    /// One notification.
    pub async fn get_notification(&self, id: NotificationId) -> Result<Notification, StoreError> {
        dispatch!(self, notifications::get(id))
    }
}

impl Store {
    /// Leases given up from now on, by name: this replica's own, and on
    /// PostgreSQL every replica's (a peer that stops releases its leases).
    /// A follower that tries to take a released lease at once takes over
    /// within about a second instead of at its next tick
    /// ([`homeostat_runtime::Manager::lease_released`]).
    pub fn lease_releases(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<str>> {
        use backend::Backend;
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => s.releases().subscribe(),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => s.releases().subscribe(),
        }
    }
}

impl LeaseStore for Store {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        dispatch!(self, leases::acquire(name, holder, ttl))
            .map_err(|e| lease_error("acquire", name, e))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, LeaseError> {
        dispatch!(self, leases::renew(lease, ttl)).map_err(|e| lease_error("renew", &lease.name, e))
    }

    async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        dispatch!(self, leases::release(lease)).map_err(|e| lease_error("release", &lease.name, e))
    }

    async fn publish(
        &self,
        lease: &Lease,
        status: &homeostat_runtime::ControllerStatus,
    ) -> Result<(), LeaseError> {
        dispatch!(self, leases::publish(lease, status))
            .map_err(|e| lease_error("publish", &lease.name, e))
    }

    async fn published(
        &self,
    ) -> Result<std::collections::HashMap<String, homeostat_runtime::ControllerStatus>, LeaseError>
    {
        dispatch!(self, leases::published()).map_err(|e| lease_error("read", "*", e))
    }
}

fn public_event(e: audit::ChainedEvent) -> homeostat_model::AuditEvent {
    homeostat_model::AuditEvent {
        seq: e.seq,
        at: time::ts(e.at_ms),
        actor: e.actor,
        action: e.action,
        subject: e.subject,
        details: serde_json::from_str(&e.details).unwrap_or(serde_json::Value::Null),
        prev_hash: hex::encode(&e.prev_hash),
        hash: hex::encode(&e.hash),
    }
}

fn lease_error(operation: &'static str, name: &str, e: StoreError) -> LeaseError {
    LeaseError {
        operation,
        name: name.to_owned(),
        source: Box::new(e),
    }
}
