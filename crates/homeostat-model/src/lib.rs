//! Domain types of homeostat: jobs, agents, tenants, tokens, audit events and
//! notifications, with their state machines and validation.
//!
//! Times are [`jiff::Timestamp`]s; stores keep them as integer Unix epoch
//! milliseconds, so they round-trip at millisecond precision.

mod agent;
pub mod alertmanager;
mod audit;
pub mod duration;
mod error;
mod error_code;
mod id;
mod job;
pub mod limit;
mod notification;
pub mod operator;
#[cfg(feature = "openapi")]
mod schema;
mod tenant;
mod token;
#[cfg(feature = "trace")]
pub mod trace;
pub mod wire;
mod workflow;

pub use agent::{Agent, AgentStatus, NewAgent};
pub use audit::{AuditAction, AuditEvent, NewAuditEvent};
pub use error::{ValidationError, clipped};
pub use error_code::ErrorCode;
pub use id::{AgentId, JobId, NotificationId, TenantId, TokenId, VerificationId, WorkflowId};
pub use job::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT, FailedAttempt, Job, JobState, KEY_FIELDS, LIMIT_FIELDS,
    MAX_PAYLOAD_BYTES, MAX_TIMEOUT, NewJob, validate_traceparent,
};
pub use limit::{
    JobLimit, JobLimitStatus, KeySource, KeyUsage, Limit, LimitKey, LimitScope, LimitSelector,
    LimitSpec, LimitStrategy, LimitUsage, Rate, split_stored_key, stored_key,
};
pub use notification::{Notification, NotificationState};
pub use tenant::{PlanTier, Tenant};
pub use token::{ApiScope, TokenInfo, TokenKind};
pub use wire::{AuditPage, ClaimedJob, CompletedBatch, Completion, Enqueued, FailOutcome, Page};
pub use workflow::{
    MAX_NEEDS_RESULTS_BYTES, MAX_STEPS, NeedOutcome, NewStep, NewWorkflow, StepCondition,
    StepContext, Workflow, WorkflowState, WorkflowStep, WorkflowSummary,
};

/// A raw identifier: UUID v7, unique without coordination and ordered by
/// creation time. Entities are named by typed ids ([`JobId`], [`AgentId`],
/// …) built from it.
pub type Id = uuid::Uuid;

/// A new, time-ordered identifier.
pub fn new_id() -> Id {
    uuid::Uuid::now_v7()
}

/// A time-ordered identifier for something created at `at` (the caller's
/// clock, so ids and stored times agree even under a test clock).
pub fn id_at(at: jiff::Timestamp) -> Id {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        // Before 1970 (never, but not a wrapped number if so): the epoch.
        u64::try_from(at.as_second()).unwrap_or(0),
        u32::try_from(at.subsec_nanosecond()).unwrap_or(0),
    );
    uuid::Uuid::new_v7(ts)
}

/// `n` time-ordered identifiers for things created together at `at` (a
/// batch): consecutive, so they sort in the order given and sit side by side
/// in an index instead of being scattered across it by their random bits.
pub fn ids_at(at: jiff::Timestamp, n: usize) -> impl Iterator<Item = Id> {
    // The low 62 bits are random; with their top bit cleared, adding up to
    // 2^61 cannot carry into the variant bits above them (RFC 9562, 6.2,
    // method 3: a random starting value, then increments).
    let first = id_at(at).as_u128() & !(1u128 << 61);
    (0..n as u128).map(move |i| Id::from_u128(first + i))
}

/// Checks a name used as a queue, job kind, agent name or tenant name:
/// 1–100 characters of `[A-Za-z0-9._:/-]`.
pub fn validate_name(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() || value.len() > 100 {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to 100 characters, got {}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-')))
    {
        return Err(ValidationError::new(
            field,
            format!("contains {bad:?}; allowed are letters, digits and . _ : / -"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_are_v7_consecutive_and_carry_their_time() {
        let at = jiff::Timestamp::from_millisecond(1_767_225_600_123).unwrap();
        let ids: Vec<Id> = ids_at(at, 1000).collect();
        assert_eq!(ids.len(), 1000);
        for pair in ids.windows(2) {
            assert_eq!(pair[1].as_u128(), pair[0].as_u128() + 1);
        }
        for id in [ids[0], ids[999]] {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            assert_eq!((secs, nanos / 1_000_000), (1_767_225_600, 123));
        }
        // Two batches of the same millisecond start at different places.
        assert_ne!(ids_at(at, 1).next(), ids_at(at, 1).next());
    }
}
