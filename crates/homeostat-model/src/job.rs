//! Jobs and their state machine.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::limit::{JobLimit, LimitKey, MAX_LIMITS_PER_JOB, validate_key};
use crate::{AgentId, JobId, TenantId, ValidationError, validate_name};

/// Attempts a job gets unless it says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// How long a running attempt may take unless the job says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest timeout a job may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Largest payload (serialized JSON) a job may carry.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// A workflow step waiting for the steps it needs to finish.
    Pending,
    /// Waiting for its `run_at` (delayed, or backing off after a failure).
    Scheduled,
    /// Waiting for an operator's approval.
    AwaitingApproval,
    /// Waiting for a slot or a start under its limits (flow control).
    Waiting,
    /// Ready to be claimed.
    Queued,
    /// Claimed by an agent under a lease.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Attempts exhausted or failed permanently.
    Dead,
    /// Cancelled by an operator or tenant.
    Cancelled,
    /// Waited past its deadline, or its approval expired.
    Expired,
}

impl JobState {
    /// States from which a job never moves by itself. Everything else,
    /// including states added later, is live (for fingerprint dedup too).
    pub const TERMINAL: [JobState; 4] = [
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Expired,
    ];

    /// Every state.
    pub const ALL: [JobState; 10] = [
        JobState::Pending,
        JobState::Scheduled,
        JobState::AwaitingApproval,
        JobState::Waiting,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Expired,
    ];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Scheduled => "scheduled",
            JobState::AwaitingApproval => "awaiting_approval",
            JobState::Waiting => "waiting",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        }
    }

    /// Whether the job is finished.
    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// Whether an operator may run the job again: it finished without
    /// succeeding or being cancelled (dead, expired).
    pub fn is_retryable(self) -> bool {
        self.is_terminal() && self.can_become(JobState::Queued)
    }

    /// Whether `self → to` is a legal transition.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (
                Pending,
                Queued | Waiting | Scheduled | AwaitingApproval | Cancelled
            ) | (Scheduled, Queued | Waiting | Cancelled | Expired)
                | (
                    AwaitingApproval,
                    Queued | Waiting | Scheduled | Cancelled | Expired
                )
                | (Waiting, Queued | Cancelled | Expired)
                | (Queued, Running | Cancelled | Expired)
                | (Running, Succeeded | Scheduled | Queued | Dead | Cancelled)
                | (Dead | Expired, Queued | Waiting)
        )
    }

    /// `Ok(())` if `self → to` is legal, else an error naming both.
    pub fn check_transition(self, to: JobState) -> Result<(), ValidationError> {
        if self.can_become(to) {
            Ok(())
        } else {
            Err(ValidationError::new(
                "state",
                format!("a {self} job cannot become {to}"),
            ))
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "state",
                    format!("unknown job state {}", crate::error::shown(s)),
                )
            })
    }
}

/// Checks the form of a W3C `traceparent` (trace-context level 1):
/// version, trace id, parent id and flags in lowercase hex, as the OpenAPI
/// document's pattern says. homeostat keeps and hands it on; it does not
/// judge the ids.
pub fn validate_traceparent(value: &str) -> Result<(), ValidationError> {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = matches!(parts.as_slice(), [version, trace, parent, flags]
        if hex(version, 2) && hex(trace, 32) && hex(parent, 16) && hex(flags, 2));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "traceparent",
            format!(
                "{} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)",
                crate::error::shown(value)
            ),
        ))
    }
}

/// A job as submitted by a tenant or operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// Queue agents pull from.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._:/-]+$")
    )]
    pub queue: String,
    /// What the job does, for the agent.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._:/-]+$")
    )]
    pub kind: String,
    /// Job input; at most [`MAX_PAYLOAD_BYTES`] serialized.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Priority (−1000 to 1000): higher goes first; ageing raises it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = -1000, maximum = 1000))]
    pub priority: i32,
    /// While a live job of the tenant has this fingerprint, enqueueing again
    /// returns that job (its occurrence count increased) instead.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub fingerprint: Option<String>,
    /// Attempts allowed, the first included (1 to 100).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub max_attempts: Option<u32>,
    /// Longest a running attempt may take, in seconds (1 s to 24 h).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub timeout_secs: Option<u64>,
    /// Do not run before this time.
    #[serde(default)]
    pub run_at: Option<Timestamp>,
    /// Expire if not started by this time.
    #[serde(default)]
    pub deadline: Option<Timestamp>,
    /// Wait for an operator's approval; expire if none comes by this time.
    #[serde(default)]
    pub approval_expires_at: Option<Timestamp>,
    /// Limits the job is under, with its keys (at most 4, together with
    /// the limits that apply to it by themselves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(max_items = 4))]
    pub limits: Vec<JobLimit>,
    /// The W3C trace context of the enqueue (`00-<trace id>-<parent id>-<flags>`):
    /// kept with the job and handed to the agent that claims it, so the
    /// job's work continues the enqueuer's trace. The `traceparent` header
    /// of an enqueue gives it to the jobs that do not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
    )]
    pub traceparent: Option<String>,
}

impl NewJob {
    /// A job for `queue` doing `kind`, with defaults for everything else.
    pub fn new(queue: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            kind: kind.into(),
            payload: serde_json::Value::Null,
            priority: 0,
            fingerprint: None,
            max_attempts: None,
            timeout_secs: None,
            run_at: None,
            deadline: None,
            approval_expires_at: None,
            limits: Vec::new(),
            traceparent: None,
        }
    }

    /// Checks every field; the error names the first that is wrong.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("queue", &self.queue)?;
        validate_name("kind", &self.kind)?;
        let size = serde_json::to_vec(&self.payload)
            .map(|v| v.len())
            .unwrap_or(0);
        if size > MAX_PAYLOAD_BYTES {
            return Err(ValidationError::new(
                "payload",
                format!("is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}"),
            ));
        }
        if !(-1000..=1000).contains(&self.priority) {
            return Err(ValidationError::new(
                "priority",
                format!("{} is outside -1000..=1000", self.priority),
            ));
        }
        if let Some(fp) = &self.fingerprint
            && (fp.is_empty() || fp.chars().count() > 200)
        {
            return Err(ValidationError::new(
                "fingerprint",
                "must be 1 to 200 characters",
            ));
        }
        if let Some(n) = self.max_attempts
            && !(1..=100).contains(&n)
        {
            return Err(ValidationError::new(
                "max_attempts",
                format!("{n} is outside 1..=100"),
            ));
        }
        if let Some(t) = self.timeout_secs
            && !(1..=MAX_TIMEOUT.as_secs()).contains(&t)
        {
            return Err(ValidationError::new(
                "timeout_secs",
                format!("{t} is outside 1..={}", MAX_TIMEOUT.as_secs()),
            ));
        }
        if self.limits.len() > MAX_LIMITS_PER_JOB {
            return Err(ValidationError::new(
                "limits",
                format!(
                    "names {} limits; a job may be under at most {MAX_LIMITS_PER_JOB}",
                    self.limits.len()
                ),
            ));
        }
        for (i, l) in self.limits.iter().enumerate() {
            crate::limit::validate_limit_name(LIMIT_FIELDS[i], &l.limit)?;
            if let Some(key) = &l.key {
                // A resolved job's key may be a tenant's own (prefixed with
                // the tenant); the store refuses a key that a job names
                // with the prefix's separator before it scopes one.
                validate_key(KEY_FIELDS[i], crate::limit::split_stored_key(key).1)?;
            }
            if self.limits[..i].iter().any(|o| o.limit == l.limit) {
                return Err(ValidationError::new(
                    LIMIT_FIELDS[i],
                    format!("names limit {:?} twice", l.limit),
                ));
            }
        }
        if let Some(tp) = &self.traceparent {
            validate_traceparent(tp)?;
        }
        Ok(())
    }

    /// Attempts allowed.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
    }

    /// Timeout of one attempt.
    pub fn timeout(&self) -> Duration {
        self.timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The state the job starts in at `now`: a job under limits waits for
    /// them to admit it rather than being queued.
    pub fn initial_state(&self, now: Timestamp) -> JobState {
        if self.approval_expires_at.is_some() {
            JobState::AwaitingApproval
        } else if self.run_at.is_some_and(|at| at > now) {
            JobState::Scheduled
        } else if self.limits.is_empty() {
            JobState::Queued
        } else {
            JobState::Waiting
        }
    }
}

/// The field names of a job's limits, for errors that name them.
pub const LIMIT_FIELDS: [&str; MAX_LIMITS_PER_JOB] = [
    "limits[0].limit",
    "limits[1].limit",
    "limits[2].limit",
    "limits[3].limit",
];
/// The field names of a job's limits' keys, for errors that name them.
pub const KEY_FIELDS: [&str; MAX_LIMITS_PER_JOB] = [
    "limits[0].key",
    "limits[1].key",
    "limits[2].key",
    "limits[3].key",
];

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// Identifier.
    pub id: JobId,
    /// Owner.
    pub tenant_id: TenantId,
    /// Queue.
    pub queue: String,
    /// Kind.
    pub kind: String,
    /// Input.
    pub payload: serde_json::Value,
    /// Priority as submitted (before ageing).
    pub priority: i32,
    /// Priority claims order by: submitted + ageing bonus.
    pub effective_priority: i64,
    /// Dedup fingerprint.
    pub fingerprint: Option<String>,
    /// How many enqueues this job stands for (1 + deduplicated ones).
    pub occurrences: u32,
    /// State.
    pub state: JobState,
    /// Attempts started so far.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Timeout of one attempt, in seconds.
    pub timeout_secs: u64,
    /// When it may run (scheduled jobs).
    pub run_at: Timestamp,
    /// Start-by deadline.
    pub deadline: Option<Timestamp>,
    /// Approval expiry (jobs awaiting approval).
    pub approval_expires_at: Option<Timestamp>,
    /// Agent holding the lease (running jobs); after an attempt the agent
    /// completed or failed, or that was running it when it was cancelled,
    /// the one that ran it (so a resent outcome can be recognised as its
    /// own, and only that agent learns of the cancel).
    pub lease_agent: Option<AgentId>,
    /// Fencing token of the current lease; grows with every claim.
    pub lease_token: i64,
    /// When the lease runs out unless heartbeated.
    pub lease_expires_at: Option<Timestamp>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Output reported on success.
    pub result: Option<serde_json::Value>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Current or last attempt started.
    pub started_at: Option<Timestamp>,
    /// Reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// Each failed attempt, oldest first (as River keeps its `errors`).
    #[serde(default)]
    pub attempts: Vec<FailedAttempt>,
    /// The limits the job is under, with its keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitKey>,
    /// The W3C trace context it was enqueued with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// One attempt that failed: reported by its agent, timed out, or reclaimed
/// when its lease expired or its agent went offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailedAttempt {
    /// Its number (1-based).
    pub attempt: u32,
    /// The agent that ran it.
    pub agent_id: Option<AgentId>,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it failed.
    pub failed_at: Timestamp,
    /// Why.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_a_whitelist() {
        let live: Vec<_> = JobState::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(
            live,
            [
                JobState::Pending,
                JobState::Scheduled,
                JobState::AwaitingApproval,
                JobState::Waiting,
                JobState::Queued,
                JobState::Running
            ]
        );
    }

    #[test]
    fn illegal_transitions_are_errors_naming_both_states() {
        assert!(JobState::Queued.can_become(JobState::Running));
        assert!(JobState::Dead.can_become(JobState::Queued));
        let err = JobState::Succeeded
            .check_transition(JobState::Queued)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid state: a succeeded job cannot become queued"
        );
        assert!(!JobState::Cancelled.can_become(JobState::Running));
        assert!(!JobState::Scheduled.can_become(JobState::Running));
    }

    #[test]
    fn only_dead_and_expired_jobs_are_retried() {
        let retryable: Vec<JobState> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_retryable())
            .collect();
        assert_eq!(retryable, [JobState::Dead, JobState::Expired]);
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
        }
        assert!("paused".parse::<JobState>().is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut job = NewJob::new("builds", "compile");
        assert!(job.validate().is_ok());
        job.payload = serde_json::json!({"blob": "x".repeat(MAX_PAYLOAD_BYTES)});
        assert_eq!(job.validate().unwrap_err().field, "payload");
        let mut job = NewJob::new("builds", "compile");
        job.timeout_secs = Some(MAX_TIMEOUT.as_secs() + 1);
        assert_eq!(job.validate().unwrap_err().field, "timeout_secs");
        let job = NewJob::new("bad queue!", "compile");
        assert_eq!(job.validate().unwrap_err().field, "queue");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<NewJob>(r#"{"queue":"q","kind":"k","colour":"red"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn initial_state_follows_approval_then_run_at() {
        let now = Timestamp::from_second(1_767_225_600).unwrap();
        let mut job = NewJob::new("q", "k");
        assert_eq!(job.initial_state(now), JobState::Queued);
        job.run_at = Some(now + jiff::SignedDuration::from_secs(60));
        assert_eq!(job.initial_state(now), JobState::Scheduled);
        job.approval_expires_at = Some(now + jiff::SignedDuration::from_secs(3600));
        assert_eq!(job.initial_state(now), JobState::AwaitingApproval);
    }
}

#[cfg(test)]
mod traceparent_tests {
    use super::validate_traceparent;

    #[test]
    fn only_w3c_traceparents_are_taken() {
        validate_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let err = validate_traceparent(bad).unwrap_err();
            assert_eq!(err.field, "traceparent", "{bad}");
        }
    }
}
