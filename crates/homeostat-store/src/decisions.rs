//! Decisions both backends share, kept out of SQL so they are written and
//! tested once: what an operator's transition becomes, where a failed
//! attempt leaves a job, a notification's next attempt, and what the audit
//! log says about each.

use std::collections::HashMap;

use homeostat_model::{AuditAction, Job, JobId, JobState, NewAuditEvent, NewJob};
use homeostat_runtime::Fence;
use jiff::Timestamp;

use crate::error::{self, StoreError};
use crate::rows::EnqueuedRow;
use crate::{
    Delivery, Enqueued, NOTIFICATION_MAX_ATTEMPTS, StoreOptions, Swept, notification_backoff, time,
};
use homeostat_model::NotificationState;

/// The audit actor of a sweep: the controller and epoch when fenced.
pub(crate) fn actor_for(fence: Option<&Fence>) -> String {
    match fence {
        Some(f) => format!("controller:{}@{}", f.name, f.epoch),
        None => "system".to_owned(),
    }
}

/// The audit event of a periodic enqueue.
pub(crate) fn periodic_event(
    fence: Option<&Fence>,
    schedule: &str,
    slot: Timestamp,
    enqueued: &Enqueued,
) -> NewAuditEvent {
    NewAuditEvent {
        actor: actor_for(fence),
        action: AuditAction::JobsPeriodic.into(),
        subject: format!("job:{}", enqueued.id),
        details: serde_json::json!({
            "schedule": schedule,
            "slot": slot,
            "deduplicated": enqueued.deduplicated,
        }),
    }
}

/// One audit event describing a sweep.
pub(crate) fn sweep_event(actor: &str, action: &str, reason: &str, swept: &Swept) -> NewAuditEvent {
    NewAuditEvent {
        actor: actor.to_owned(),
        action: action.to_owned(),
        subject: "jobs".into(),
        details: serde_json::json!({
            "count": swept.changed,
            "ids": swept.ids,
            "dead": swept.dead,
            "reason": reason,
        }),
    }
}

/// Pairs each enqueued job with the row it became: by fingerprint when it
/// has one (the live job of that fingerprint, as last updated), else by the
/// id generated for it. `generated[i]` is the id input `i` would have had
/// as a new job; any other id means it was deduplicated.
pub(crate) fn match_enqueued(
    jobs: &[NewJob],
    generated: &[JobId],
    stored: Vec<EnqueuedRow>,
) -> Result<Vec<Enqueued>, StoreError> {
    let mut by_id = HashMap::with_capacity(stored.len());
    let mut by_fp: HashMap<String, EnqueuedRow> = HashMap::new();
    for row in stored {
        if let Some(fp) = &row.fingerprint {
            let newer = by_fp
                .get(fp)
                .is_none_or(|seen| row.occurrences >= seen.occurrences);
            if newer {
                by_fp.insert(fp.clone(), row.clone());
            }
        }
        by_id.insert(row.id, row);
    }
    jobs.iter()
        .zip(generated)
        .map(|(job, generated)| {
            let stored = match &job.fingerprint {
                Some(fp) => by_fp.get(fp),
                None => by_id.get(generated),
            }
            .ok_or_else(|| error::corrupt("enqueueing jobs", "an enqueued job was not returned"))?;
            Ok(Enqueued {
                id: stored.id,
                deduplicated: stored.id != *generated,
                occurrences: stored.occurrences,
            })
        })
        .collect()
}

/// What an operator's `to` becomes for `current` (an approved job not yet
/// due is scheduled, not queued), checked against the state machine; and
/// whether it is a redrive (a terminal job coming back with fresh attempts).
pub(crate) fn operator_transition(
    current: &Job,
    to: JobState,
    action: AuditAction,
    now: Timestamp,
) -> Result<(JobState, bool), StoreError> {
    let to = if to == JobState::Queued && current.run_at > now && action == AuditAction::JobApproved
    {
        JobState::Scheduled
    } else {
        to
    };
    current
        .state
        .check_transition(to)
        .map_err(|e| StoreError::Conflict {
            operation: action.as_str(),
            entity: "job",
            id: current.id.to_string(),
            reason: e.message,
        })?;
    Ok((to, current.state.is_terminal()))
}

/// Where a failed attempt (`attempt` of `max_attempts`) leaves a job:
/// `scheduled` for a retry after the returned delay, or `dead`.
pub(crate) fn fail_outcome(
    options: &StoreOptions,
    attempt: u32,
    max_attempts: u32,
    permanent: bool,
) -> (JobState, Option<std::time::Duration>) {
    match options
        .retry_policy(max_attempts)
        .decide(attempt, permanent, 0.5)
    {
        homeostat_runtime::RetryDecision::RetryAfter(delay) => (JobState::Scheduled, Some(delay)),
        homeostat_runtime::RetryDecision::GiveUp => (JobState::Dead, None),
    }
}

/// A notification's state, next attempt time (epoch ms) and error after
/// delivery attempt number `attempts`.
pub(crate) fn delivery_outcome(
    delivery: &Delivery,
    attempts: u32,
    now: Timestamp,
) -> (NotificationState, i64, Option<String>) {
    match delivery {
        Delivery::Sent => (NotificationState::Sent, time::ms(now), None),
        Delivery::Failed { error, permanent } => {
            let state = if *permanent || attempts >= NOTIFICATION_MAX_ATTEMPTS {
                NotificationState::Dead
            } else {
                NotificationState::Pending
            };
            (
                state,
                time::add(now, notification_backoff(attempts)),
                Some(truncate(error)),
            )
        }
    }
}

/// The audit event of a token change: its metadata, never its secret.
pub(crate) fn token_event(
    actor: &str,
    action: &str,
    info: &homeostat_model::TokenInfo,
) -> NewAuditEvent {
    NewAuditEvent {
        actor: actor.to_owned(),
        action: action.to_owned(),
        subject: format!("token:{}", info.id),
        details: serde_json::json!({
            "kind": info.kind,
            "tenant_id": info.tenant_id,
            "agent_id": info.agent_id,
            "admin": info.admin,
            "expires_at": info.expires_at,
            "uses_left": info.uses_left,
        }),
    }
}

/// The smallest UUID v7 of a job created at or after `ms`: every id below
/// it was created before `ms`.
pub(crate) fn id_before(ms: i64) -> JobId {
    JobId::from_uuid(uuid::Uuid::from_u128((ms.max(0) as u128) << 80))
}

/// Error texts from agents are kept, but bounded.
pub(crate) fn truncate(text: &str) -> String {
    const MAX: usize = 4096;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
