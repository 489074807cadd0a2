//! Domain types of homeostat: jobs, agents, tenants, tokens, audit events and
//! notifications, with their state machines and validation.
//!
//! Times are [`jiff::Timestamp`]s; stores keep them as integer Unix epoch
//! milliseconds, so they round-trip at millisecond precision.

mod agent;
mod audit;
mod error;
mod job;
mod notification;
mod tenant;
mod token;

pub use agent::{Agent, AgentStatus, NewAgent};
pub use audit::{AuditEvent, NewAuditEvent};
pub use error::ValidationError;
pub use job::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT, Job, JobState, MAX_PAYLOAD_BYTES, MAX_TIMEOUT, NewJob,
};
pub use notification::{Notification, NotificationState};
pub use tenant::{PlanTier, Tenant};
pub use token::{ApiScope, TokenInfo, TokenKind};

/// Identifiers are UUID v7: unique without coordination and ordered by
/// creation time, which cursor pagination relies on.
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
        at.as_second().max(0) as u64,
        at.subsec_nanosecond().max(0) as u32,
    );
    uuid::Uuid::new_v7(ts)
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
