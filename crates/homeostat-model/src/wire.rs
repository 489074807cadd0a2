//! What travels between the server and its clients (agents, CLIs, the
//! dashboard): requests, responses and errors, defined once so that the
//! server (`homeostat-api`) and the client (`homeostat-client`) share them.
//! Requests refuse unknown fields, so a misspelt key is an error naming it
//! rather than a silently ignored setting.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{AgentId, JobId, JobState, NewAgent, TenantId, ValidationError};

/// The result of an enqueue: the job's id and whether it was new, not the
/// whole row (the store's `get_job` reads it when needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enqueued {
    /// The new job, or the live job with the same fingerprint.
    pub id: JobId,
    /// Whether an existing job was returned (its occurrences increased).
    pub deduplicated: bool,
    /// How many enqueues the job now stands for.
    pub occurrences: u32,
}

/// A job handed to an agent by a claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedJob {
    /// The job.
    pub id: JobId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// Its input.
    pub payload: serde_json::Value,
    /// This attempt's number (1-based).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Fencing token: present it to heartbeat, complete or fail.
    pub lease_token: i64,
    /// When the lease runs out unless heartbeated.
    pub lease_expires_at: Timestamp,
    /// Timeout of this attempt in seconds.
    pub timeout_secs: u64,
    /// A workflow step: its workflow, its name and how the steps it needs
    /// ended, with their results (docs/workflows.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<crate::StepContext>,
    /// The W3C trace context to continue in the job's work: the one it was
    /// enqueued with, or, when the server exports traces, its claim's span
    /// (`homeostat agent` continues it, and sets `TRACEPARENT` for its
    /// program).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// One completion in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Completion {
    /// The job.
    pub id: JobId,
    /// The lease token from the claim.
    pub lease_token: i64,
    /// Output to keep on the job.
    pub result: Option<serde_json::Value>,
}

/// What a batch of completions did, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompletedBatch {
    /// Jobs now succeeded.
    pub completed: Vec<JobId>,
    /// Completions refused: the lease token was not the job's current one.
    pub stale: Vec<JobId>,
}

/// What a failure did to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailOutcome {
    /// `scheduled` (to be retried at `retry_at`) or `dead`.
    pub state: JobState,
    /// When the retry is due.
    pub retry_at: Option<Timestamp>,
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T, C = JobId> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    // Every cursor is an id (a UUID); stated so, since the derive loses the
    // `Option` of a type parameter.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<uuid::Uuid>))]
    pub next_cursor: Option<C>,
}

impl<T, C> Page<T, C> {
    /// The page of `items` read with one more than `limit` asked for: a
    /// page follows if that extra item came, from the last kept item's
    /// `cursor`.
    pub fn of_one_more(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> C) -> Self {
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(cursor)
        } else {
            None
        };
        Self { items, next_cursor }
    }

    /// A list that is whole: no page follows.
    pub fn whole(items: Vec<T>) -> Self {
        Self {
            items,
            next_cursor: None,
        }
    }
}

/// One page of the audit log, oldest first: the shape of every listing,
/// with the event sequence number as its cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    /// The events.
    pub items: Vec<crate::AuditEvent>,
    /// Pass as `after` to get the next page; `None` when no event follows
    /// (yet).
    pub next_cursor: Option<i64>,
}

/// An error as the API returns it: a stable code ([`crate::ErrorCode`]) and
/// a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable, snake_case; clients branch on it.
    pub code: crate::ErrorCode,
    /// What went wrong, naming the field or the entity.
    pub message: String,
}

/// An agent's registration: a bootstrap token and what the agent says
/// about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The bootstrap token (spent by one use).
    pub bootstrap_token: String,
    /// The agent.
    pub agent: NewAgent,
}

/// A registered agent and its credential, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    /// The agent's id.
    pub agent_id: AgentId,
    /// Its tenant; `None` for a platform agent.
    pub tenant_id: Option<TenantId>,
    /// The credential it authenticates with from now on.
    pub credential: String,
}

/// A job an agent holds, and the lease token it holds it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeldJob {
    /// The job.
    pub id: JobId,
    /// The lease token from its claim.
    pub lease_token: i64,
}

/// One heartbeat: the agent is alive, and still working on these jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The jobs whose leases to extend (at most 1,000).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 1000))]
    pub jobs: Vec<HeldJob>,
    /// The agent process: a random id it makes when it starts and sends
    /// in every heartbeat. A new one means the agent restarted: the jobs
    /// leased to its previous process that this heartbeat does not name
    /// are reclaimed at once (their attempt counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<uuid::Uuid>,
}

/// The server's answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// Seconds until the next heartbeat is due.
    pub heartbeat_interval_secs: u64,
    /// Seconds a job's lease lasts after each heartbeat.
    pub lease_ttl_secs: u64,
    /// An operator drained the agent: finish what it holds, claim nothing.
    pub drain: bool,
    /// Held jobs whose lease the agent no longer holds: stop them.
    pub lost: Vec<JobId>,
    /// Held jobs whose cancellation was requested: stop them.
    pub cancelled: Vec<JobId>,
}

/// Longest a claim may wait for work (a long poll).
pub const MAX_CLAIM_WAIT_SECS: u32 = 50;
/// Most jobs one claim may take.
pub const MAX_CLAIM_CAPACITY: u32 = 100;

/// A claim: up to `capacity` jobs from the agent's queues, waiting up to
/// `wait_secs` for one to be enqueued when none is queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Jobs wanted (1 to 100).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub capacity: u32,
    /// Seconds to wait for work (default 30, at most 50; 0 answers at once).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 50))]
    pub wait_secs: Option<u32>,
    /// Only these of the agent's queues (default: all it registered).
    #[serde(default)]
    pub queues: Option<Vec<String>>,
}

impl ClaimRequest {
    /// Checks every field; the error names the first that is wrong.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(1..=MAX_CLAIM_CAPACITY).contains(&self.capacity) {
            return Err(ValidationError::new(
                "capacity",
                format!("must be 1 to {MAX_CLAIM_CAPACITY}, got {}", self.capacity),
            ));
        }
        if let Some(wait) = self.wait_secs.filter(|w| *w > MAX_CLAIM_WAIT_SECS) {
            return Err(ValidationError::new(
                "wait_secs",
                format!("must be at most {MAX_CLAIM_WAIT_SECS}, got {wait}"),
            ));
        }
        if self.queues.as_ref().is_some_and(Vec::is_empty) {
            return Err(ValidationError::new(
                "queues",
                "names at least one queue (or is left out for all)",
            ));
        }
        Ok(())
    }
}

/// The jobs a claim took (none when the wait ran out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimResponse {
    /// Best first.
    pub jobs: Vec<ClaimedJob>,
}

/// A job's completion, safe to resend with the same lease token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The lease token from the claim.
    pub lease_token: i64,
    /// Output to keep on the job (bounded JSON).
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

/// A failed attempt, safe to resend with the same lease token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    /// The lease token from the claim.
    pub lease_token: i64,
    /// What went wrong (never a secret; at most 8,192 characters).
    #[cfg_attr(feature = "openapi", schema(max_length = 8192))]
    pub error: String,
    /// Whether another attempt may succeed; `false` sends the job to `dead`.
    pub retryable: bool,
}

/// Steps a running workflow step adds to its workflow (fan-out at run
/// time): they may need the step that adds them and one another; the
/// steps that need the adding step wait for them too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddStepsRequest {
    /// The lease token from the claim of the adding step.
    pub lease_token: i64,
    /// The new steps (1 to 1,000), named apart from every step of the
    /// workflow.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 1000))]
    pub steps: Vec<crate::NewStep>,
}

/// Completions of many jobs in one call, safe to resend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteBatchRequest {
    /// The jobs, each with its lease token and result (at most 1,000).
    #[cfg_attr(feature = "openapi", schema(max_items = 1000))]
    pub completions: Vec<Completion>,
}

/// Most completions in one batch.
pub const MAX_COMPLETION_BATCH: usize = 1000;

/// Why an agent gives a job back unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The agent is stopping: the job goes back to its queue and the attempt
    /// does not count.
    Shutdown,
}

/// A job given back unfinished, safe to resend with the same lease token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The lease token from the claim.
    pub lease_token: i64,
    /// Why.
    pub reason: ReleaseReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields_by_name() {
        let err =
            serde_json::from_str::<ClaimRequest>(r#"{"capacity": 1, "wiat_secs": 5}"#).unwrap_err();
        assert!(err.to_string().contains("wiat_secs"), "{err}");
    }

    #[test]
    fn claims_are_bounded() {
        let ok = ClaimRequest {
            capacity: 10,
            wait_secs: Some(50),
            queues: None,
        };
        assert_eq!(ok.validate(), Ok(()));
        let too_many = ClaimRequest {
            capacity: 101,
            ..ok.clone()
        };
        assert_eq!(too_many.validate().unwrap_err().field, "capacity");
        let too_long = ClaimRequest {
            wait_secs: Some(51),
            ..ok.clone()
        };
        assert_eq!(too_long.validate().unwrap_err().field, "wait_secs");
        let no_queue = ClaimRequest {
            queues: Some(vec![]),
            ..ok.clone()
        };
        assert_eq!(no_queue.validate().unwrap_err().field, "queues");
    }

    #[test]
    fn a_claimed_job_round_trips() {
        let job = ClaimedJob {
            id: JobId::from_uuid(crate::new_id()),
            tenant_id: TenantId::from_uuid(crate::new_id()),
            queue: "builds".into(),
            kind: "compile".into(),
            payload: serde_json::json!({"ref": "main"}),
            attempt: 1,
            max_attempts: 3,
            lease_token: 7,
            lease_expires_at: Timestamp::from_second(1_767_225_600).unwrap(),
            timeout_secs: 600,
            workflow: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        let json = serde_json::to_string(&ClaimResponse {
            jobs: vec![job.clone()],
        })
        .unwrap();
        assert_eq!(
            serde_json::from_str::<ClaimResponse>(&json).unwrap().jobs,
            vec![job]
        );
    }
}
