//! What travels on the tenant and operator API (`/v1/jobs`, `/v1/tenants`,
//! tokens, signals): requests and responses, defined once for the server and
//! its clients. (The agent protocol's are in [`crate::wire`].)

use serde::{Deserialize, Serialize};

use crate::{
    Agent, AuditEvent, Enqueued, Job, JobId, NewJob, PlanTier, TenantId, TokenId, TokenInfo,
};

/// A batch to enqueue (`POST /v1/jobs` with `jobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchEnqueueRequest {
    /// The tenant (admin keys only; a tenant key enqueues for its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    /// The jobs (1 to 1,000), all or none.
    pub jobs: Vec<NewJob>,
}

/// The answer to an enqueue of one job: 201 when created, 200 with the live
/// job when its fingerprint deduplicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnqueueResponse {
    /// What was done.
    #[serde(flatten)]
    pub enqueued: Enqueued,
    /// The job as it is now.
    pub job: Job,
}

/// The answer to a batch enqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchEnqueueResponse {
    /// One per job given, in order.
    pub jobs: Vec<Enqueued>,
}

/// A job with its audit history (`GET /v1/jobs/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobDetail {
    /// The job, with its failed attempts.
    #[serde(flatten)]
    pub job: Job,
    /// What operators and controllers did to it, oldest first.
    pub history: Vec<AuditEvent>,
    /// How each limit the job is under stands now, and which keep it
    /// waiting (empty for a job under none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limit_status: Vec<crate::JobLimitStatus>,
}

/// A tenant to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewTenantRequest {
    /// Unique name.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._:/-]+$")
    )]
    pub name: String,
    /// Plan tier (default `standard`).
    #[serde(default = "standard")]
    pub tier: PlanTier,
}

fn standard() -> PlanTier {
    PlanTier::Standard
}

/// A bootstrap token to create: agents register with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewBootstrapTokenRequest {
    /// The tenant whose agents it registers; none for platform agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    /// Lifetime in seconds (default a day, at most 30 days).
    #[serde(default = "day")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2592000))]
    pub ttl_secs: u64,
    /// Registrations it allows (default 1, at most 10,000).
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    pub uses: u32,
}

fn day() -> u64 {
    24 * 3600
}

fn one() -> u32 {
    1
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// Everything, every tenant.
    Admin,
    /// One tenant's jobs and agents.
    Tenant,
    /// Read everything, change nothing.
    Viewer,
}

/// An API key to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewApiKeyRequest {
    /// Its role.
    pub role: KeyRole,
    /// Its tenant (tenant keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    /// Lifetime in seconds (default: until revoked; at most 10 years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 315360000))]
    pub ttl_secs: Option<u64>,
}

/// A created secret: its metadata and the secret itself, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedSecret {
    /// Metadata.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The secret: store it now, it is never shown again.
    pub secret: String,
}

/// What the Alertmanager intake did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignalOutcome {
    /// One per firing alert that took a route.
    pub enqueued: Vec<Enqueued>,
    /// Jobs cancelled because their alert resolved before they started.
    pub cancelled: Vec<JobId>,
    /// Alerts that took no route, had no fingerprint, or resolved with no
    /// job left to cancel.
    pub ignored: usize,
}

/// What revoking an agent did (`POST /v1/agents/{id}/revoke`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokedAgent {
    /// The agent, now offline.
    pub agent: Agent,
    /// The credentials revoked (the live ones; none when revoked before).
    pub credentials: Vec<TokenId>,
    /// Its running jobs, queued again (or dead, with no attempts left).
    pub reclaimed: Vec<JobId>,
}

/// A tenant's use of its quotas (`GET /v1/tenants/{id}/usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantUsage {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Live jobs (scheduled, awaiting approval, queued, running): the last
    /// count plus what this replica enqueued since.
    pub live_jobs: u64,
    /// Queues with live jobs.
    pub live_queues: u64,
    /// The limits that apply to it (0: none).
    pub limits: QuotaLimits,
}

/// The quotas of one tenant; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaLimits {
    /// Live jobs at once.
    pub live_jobs: u64,
    /// Queues with live jobs at once.
    pub live_queues: u64,
    /// Jobs enqueued a second, on each replica (a token bucket)…
    pub enqueue_rate: u64,
    /// …with bursts up to this many.
    pub enqueue_burst: u64,
}

/// The first broken link of the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChainBreak {
    /// Sequence number of the first event that does not verify.
    pub seq: i64,
    /// What is wrong there.
    pub reason: String,
}

/// The outcome of one walk of the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyReport {
    /// Events checked.
    pub checked: u64,
    /// Sequence number the retained chain starts at.
    pub first_seq: i64,
    /// The first break, if any.
    pub first_break: Option<ChainBreak>,
}

/// Where a verification of the audit chain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VerificationState {
    /// Requested; the audit-chain-verify leader picks it up on its next run.
    Pending,
    /// Being walked; `checked` grows.
    Running,
    /// Walked to the head: every event verifies.
    Intact,
    /// Walked to the first break (`first_break`).
    Broken,
    /// Stopped before the end (`error` says why); request another.
    Failed,
}

impl VerificationState {
    /// The state's wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Intact => "intact",
            Self::Broken => "broken",
            Self::Failed => "failed",
        }
    }

    /// Whether the walk is over (intact, broken or failed).
    pub const fn is_finished(self) -> bool {
        matches!(self, Self::Intact | Self::Broken | Self::Failed)
    }
}

impl std::str::FromStr for VerificationState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::Pending,
            Self::Running,
            Self::Intact,
            Self::Broken,
            Self::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown verification state {}", crate::error::shown(s)))
    }
}

/// A verification of the audit chain (`POST /v1/audit/verify`, `GET
/// /v1/audit/verifications/{id}`): requested by an operator or by the
/// audit-chain-verify controller's own schedule, walked by that
/// controller's leader, its progress stored so every replica reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditVerification {
    /// The verification's id.
    pub id: crate::VerificationId,
    /// Where it is.
    pub state: VerificationState,
    /// Who asked: an API key's actor, or `controller:audit-chain-verify`.
    pub requested_by: String,
    /// When it was asked for.
    pub requested_at: jiff::Timestamp,
    /// When the walk began (the latest start, if a leader's loss restarted it).
    pub started_at: Option<jiff::Timestamp>,
    /// When the walk ended.
    pub finished_at: Option<jiff::Timestamp>,
    /// Events checked so far.
    pub checked: u64,
    /// Events in the chain when the walk began (0 before).
    pub total: u64,
    /// Sequence number the retained chain started at, once walked.
    pub first_seq: Option<i64>,
    /// The first break, when broken.
    pub first_break: Option<ChainBreak>,
    /// Why the walk stopped, when failed.
    pub error: Option<String>,
}

/// What a controller's run would change now (`GET
/// /v1/controllers/{name}/plan`, a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControllerPlan {
    /// How many items a run would change.
    pub count: u64,
    /// The first of them.
    pub items: Vec<PlannedChange>,
    /// Anything else to know (that the controller cannot plan, say).
    pub note: Option<String>,
}

/// One item a controller's run would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedChange {
    /// `job:<id>`, `agent:<id>`, `token:<id>`, ….
    pub subject: String,
    /// Its state now.
    pub from: String,
    /// Its state after the run (`deleted` for removals).
    pub to: String,
    /// Why.
    pub why: String,
}

/// A controller as a replica lists it (`GET /v1/controllers`): for an
/// exclusive controller another replica leads, the runs as its leader
/// published them. Times are Unix epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControllerView {
    /// The controller's name.
    pub name: String,
    /// Its interval before jitter.
    pub interval_ms: u64,
    /// Whether it runs under a lease (one replica at a time).
    pub exclusive: bool,
    /// Whether the answering replica holds its lease.
    pub leader: bool,
    /// Whether a run is going now (on the answering replica).
    pub running: bool,
    /// The most recent run.
    pub last_run: Option<ControllerRun>,
    /// When it last succeeded.
    pub last_success_at: Option<i64>,
    /// Failed runs since the last success.
    pub consecutive_failures: u32,
    /// When its next run is due.
    pub next_run: Option<i64>,
    /// The replica holding its lease (none when not exclusive, or between
    /// leaders).
    pub leader_replica: Option<String>,
    /// A keyed controller's queue (none for a periodic one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<ControllerKeys>,
    /// Tasks its runs left going (a keyed controller's task per object).
    #[serde(default)]
    pub tasks: u64,
}

/// A keyed controller's queue, as its leader last showed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControllerKeys {
    /// Keys changed or due, waiting for a reconcile.
    pub waiting: u64,
    /// Keys being reconciled now.
    pub active: u64,
}

/// A controller's most recent run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControllerRun {
    /// When it started.
    pub started_at: i64,
    /// How long it took.
    pub duration_ms: u64,
    /// How it ended: `success`, `error`, `timeout`, `panic`,
    /// `skipped_overlap`, `not_leader`.
    pub outcome: String,
    /// Items changed (0 unless it succeeded).
    pub items: u64,
    /// The error, timeout or panic message.
    pub error: Option<String>,
}
