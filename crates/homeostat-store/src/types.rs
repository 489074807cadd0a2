//! Inputs and outputs of store operations.

use std::sync::Arc;
use std::time::Duration;

use homeostat_model::{AgentId, ApiScope, JobId, JobState, TenantId, TokenId, TokenInfo};
use homeostat_runtime::{Backoff, Clock, ManualClock, SystemClock};
use jiff::Timestamp;
use serde::Serialize;

/// Where the store's operations take their time from.
///
/// In production a replica's own clock stamps what it writes, and on
/// PostgreSQL the decisions that compare times written by different
/// replicas — a job's lease expiry and timeout, an agent's last heartbeat,
/// a queued job's due time and deadline — are judged by the database's
/// clock, so replicas whose clocks disagree still agree on them. A test
/// gives the store a [`ManualClock`] instead, which then judges everything,
/// on both backends.
#[derive(Debug, Clone)]
pub struct StoreClock {
    clock: Arc<dyn Clock>,
    manual: Option<ManualClock>,
    database_judges: bool,
}

impl StoreClock {
    /// The system clock; the database judges expiry on PostgreSQL.
    pub fn system() -> Self {
        Self::replica(Arc::new(SystemClock))
    }

    /// A replica's own clock, which may be skewed; the database judges
    /// expiry on PostgreSQL.
    pub fn replica(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            manual: None,
            database_judges: true,
        }
    }

    /// A clock a test moves: it stamps and judges everything.
    pub fn manual(clock: ManualClock) -> Self {
        Self {
            clock: Arc::new(clock.clone()),
            manual: Some(clock),
            database_judges: false,
        }
    }

    /// The test's clock, when this is one.
    pub fn as_manual(&self) -> Option<&ManualClock> {
        self.manual.as_ref()
    }

    /// The time now, by this clock.
    pub fn now(&self) -> Timestamp {
        Timestamp::try_from(self.clock.now()).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// The time (epoch ms) that judges expiry on this backend: `None` when
    /// the database's own clock does.
    pub(crate) fn judged_ms(&self, now: Timestamp, postgres: bool) -> Option<i64> {
        (!(postgres && self.database_judges)).then(|| now.as_millisecond())
    }
}

impl Default for StoreClock {
    fn default() -> Self {
        Self::system()
    }
}

/// Store-wide policies.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A queued job that has not started this long after it became due
    /// expires, unless it carries its own deadline.
    pub default_queue_deadline: Duration,
    /// Fair share between tenants: how far a tenant's turn in a queue moves
    /// per job it enqueues, at weight 1 (a free tier; standard moves half
    /// as far, premium a quarter). Zero turns it off: jobs of one priority
    /// are claimed in the order they were queued.
    pub fair_share_turn: Duration,
    /// Delay before the first retry of a failed attempt; it doubles with each
    /// attempt (the runtime's [`Backoff`]) up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Where operations take their time from.
    pub clock: StoreClock,
    /// The longest a count of the live jobs may take and still be repeated
    /// at every read of [`Store::stats`](crate::Store::stats); a costlier
    /// count is taken behind the reads.
    pub cheap_count: Duration,
    /// Once counting is not cheap, how old the last count may grow before a
    /// read starts a new one.
    pub recount_after: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            default_queue_deadline: Duration::from_secs(3600),
            fair_share_turn: Duration::from_secs(1),
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(3600),
            max_connections: 16,
            clock: StoreClock::default(),
            cheap_count: Duration::from_millis(10),
            recount_after: Duration::from_secs(5),
        }
    }
}

impl StoreOptions {
    /// The retry policy of a job allowing `max_attempts` attempts.
    pub fn retry_policy(&self, max_attempts: u32) -> Backoff {
        Backoff::new(self.retry_initial)
            .max_delay(self.retry_max)
            .max_attempts(max_attempts)
    }

    /// The same policy for set-based SQL: (initial, cap) in milliseconds;
    /// the delay before retry `n` is `min(cap, initial << (n - 1))`.
    pub(crate) fn retry_bounds_ms(&self) -> (i64, i64) {
        (
            crate::time::dur_ms(self.retry_initial),
            crate::time::dur_ms(self.retry_max),
        )
    }
}

/// What a sweep changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    /// Rows changed.
    pub changed: u64,
    /// Their ids.
    pub ids: Vec<JobId>,
    /// Those of them that went dead (for notifications).
    pub dead: Vec<JobId>,
    /// The tenant and queue of each of them that was queued (whose waiting
    /// claims to wake).
    pub(crate) queued: Vec<(TenantId, String)>,
    /// Queue, kind and new state of each (for the job metrics).
    pub(crate) moved: Vec<(String, String, String)>,
}

impl Swept {
    /// Whether a sweep that requeues jobs (or dead-letters them) requeued
    /// any.
    pub fn requeued_any(&self) -> bool {
        self.changed > self.dead.len() as u64
    }

    /// Adds what another sweep of the same run changed.
    pub(crate) fn merge(&mut self, other: Swept) {
        self.changed += other.changed;
        self.ids.extend(other.ids);
        self.dead.extend(other.dead);
        self.queued.extend(other.queued);
        self.moved.extend(other.moved);
    }

    /// The queued jobs by tenant, then queue.
    pub(crate) fn queued_by_tenant(
        &self,
    ) -> std::collections::BTreeMap<TenantId, Vec<(String, u32)>> {
        let mut out: std::collections::BTreeMap<TenantId, Vec<(String, u32)>> = Default::default();
        for (tenant, queue) in &self.queued {
            let queues = out.entry(*tenant).or_default();
            match queues.iter_mut().find(|(q, _)| q == queue) {
                Some((_, n)) => *n += 1,
                None => queues.push((queue.clone(), 1)),
            }
        }
        out
    }
}

/// A job for one slot of a periodic (cron) schedule.
#[derive(Debug, Clone, Copy)]
pub struct PeriodicEnqueue<'a> {
    /// The schedule's name.
    pub schedule: &'a str,
    /// The slot's time: enqueued once, by one replica.
    pub slot: Timestamp,
    /// The tenant whose job it is.
    pub tenant_id: TenantId,
    /// The job.
    pub job: &'a homeostat_model::NewJob,
}

/// One failed attempt, as an agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure<'a> {
    /// The agent reporting it: only the lease it holds is failed.
    pub agent: AgentId,
    /// The job.
    pub id: JobId,
    /// The lease token from the claim.
    pub lease_token: i64,
    /// What went wrong (kept on the job, bounded; never a secret).
    pub error: &'a str,
    /// Whether retrying is pointless: the job goes dead at once.
    pub permanent: bool,
}

/// A bootstrap token to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewBootstrapToken {
    /// The tenant whose agents it registers; `None` for platform agents.
    pub tenant_id: Option<TenantId>,
    /// How long it stays valid.
    pub ttl: Duration,
    /// How many registrations it allows.
    pub uses: u32,
}

/// How queued jobs age: the effective priority grows by
/// `bonus_per_minute` for every whole minute waited, up to `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ageing {
    /// Points per minute waited.
    pub bonus_per_minute: i64,
    /// The ceiling.
    pub cap: i64,
}

/// One run of audit retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetentionRun {
    /// Events older than this go.
    pub retention: Duration,
    /// At most this many in one run.
    pub batch: u32,
    /// Count them instead.
    pub dry_run: bool,
}

/// What an authenticated API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKeyIdentity {
    /// The key's id (for audit actors).
    pub token_id: TokenId,
    /// Its scope.
    pub scope: ApiScope,
}

/// A freshly created secret: shown once, never stored.
#[derive(Debug, Clone)]
pub struct IssuedSecret {
    /// The token's metadata.
    pub info: TokenInfo,
    /// The secret itself.
    pub secret: String,
}

/// Filters for listing jobs.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this tenant's jobs.
    pub tenant_id: Option<TenantId>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs in this queue.
    pub queue: Option<String>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs whose lease this agent holds or held last.
    pub agent_id: Option<AgentId>,
    /// Only jobs whose fingerprint contains this text.
    pub fingerprint: Option<String>,
}

/// Filters for reading the audit log; each is an exact match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events with this action (`job.cancelled`, …).
    pub action: Option<String>,
    /// Only events about this subject (`job:<id>`, `agent:<id>`, …).
    pub subject: Option<String>,
    /// Only events by this actor (`api_key:<id>`, `controller:<name>`, …).
    pub actor: Option<String>,
}

/// How long finished jobs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct JobRetention {
    /// Succeeded and cancelled jobs.
    #[serde(with = "homeostat_model::duration")]
    pub succeeded: Duration,
    /// Dead and expired jobs.
    #[serde(with = "homeostat_model::duration")]
    pub failed: Duration,
}

impl Default for JobRetention {
    fn default() -> Self {
        Self {
            succeeded: Duration::from_secs(24 * 3600),
            failed: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// How a notification delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered.
    Sent,
    /// Not delivered; `permanent` failures are not retried.
    Failed {
        /// Why (never secrets).
        error: String,
        /// Whether retrying is pointless.
        permanent: bool,
    },
}

/// Attempts after which a notification goes dead.
pub const NOTIFICATION_MAX_ATTEMPTS: u32 = 5;

/// Delay before notification attempt `n + 1` after `n` failures:
/// min(2^n minutes, 1 hour).
pub fn notification_backoff(failures: u32) -> Duration {
    Backoff::new(Duration::from_secs(120))
        .max_delay(Duration::from_secs(3600))
        .delay(failures)
}

/// An enqueue made with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    /// What the enqueue did (the first time).
    pub enqueued: Vec<crate::Enqueued>,
    /// Whether this is the answer to an earlier request with the same key.
    pub replayed: bool,
}

/// Which agents a list shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentFilter {
    /// One tenant's agents only.
    pub tenant_id: Option<TenantId>,
    /// Agents in this status only.
    pub status: Option<homeostat_model::AgentStatus>,
}
