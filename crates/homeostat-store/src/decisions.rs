//! Decisions both backends share, kept out of SQL so they are written and
//! tested once: what an operator's transition becomes, where a failed
//! attempt leaves a job, a notification's next attempt, and what the audit
//! log says about each.

use std::collections::HashMap;

use homeostat_model::{AgentId, AuditAction, Job, JobId, JobState, NewAuditEvent, NewJob};
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

/// Whether an agent whose claim took nothing was the reason: fine when it
/// is online; not found without a status; a conflict naming its status
/// otherwise.
pub(crate) fn claim_refusal(
    op: &'static str,
    agent: AgentId,
    status: Option<&str>,
) -> Result<(), StoreError> {
    match status {
        None => Err(StoreError::NotFound {
            entity: "agent",
            id: agent.to_string(),
        }),
        Some("online") => Ok(()),
        Some(status) => Err(StoreError::Conflict {
            operation: op,
            entity: "agent",
            id: agent.to_string(),
            reason: format!("the agent is {status}; only online agents claim jobs"),
        }),
    }
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
    JobId::from_uuid(uuid::Uuid::from_u128(u128::try_from(ms).unwrap_or(0) << 80))
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

/// The queues a claim looks at: the agent's, or those of them it named.
pub(crate) fn claim_queues(registered: &[String], only: Option<&[String]>) -> Vec<String> {
    match only {
        None => registered.to_vec(),
        Some(only) => registered
            .iter()
            .filter(|q| only.contains(q))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use homeostat_model::{NewJob, TenantId, ids_at};

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_767_225_600 + secs).unwrap()
    }

    fn job(state: JobState, run_at: Timestamp) -> Job {
        Job {
            id: JobId::at(at(0)),
            tenant_id: TenantId::at(at(0)),
            queue: "q".into(),
            kind: "k".into(),
            payload: serde_json::Value::Null,
            priority: 0,
            effective_priority: 0,
            fingerprint: None,
            occurrences: 1,
            state,
            attempt: 0,
            max_attempts: 3,
            timeout_secs: 60,
            run_at,
            deadline: None,
            approval_expires_at: None,
            lease_agent: None,
            lease_token: 0,
            lease_expires_at: None,
            last_error: None,
            result: None,
            created_at: at(0),
            updated_at: at(0),
            started_at: None,
            finished_at: None,
            attempts: Vec::new(),
            limits: Vec::new(),
            traceparent: None,
        }
    }

    #[test]
    fn an_approved_job_not_yet_due_is_scheduled_a_due_one_queued() {
        let gated = job(JobState::AwaitingApproval, at(100));
        let approve =
            |now| operator_transition(&gated, JobState::Queued, AuditAction::JobApproved, now);
        assert_eq!(approve(at(10)).unwrap(), (JobState::Scheduled, false));
        assert_eq!(approve(at(100)).unwrap(), (JobState::Queued, false));
    }

    #[test]
    fn a_redrive_brings_a_terminal_job_back_and_says_so() {
        let dead = job(JobState::Dead, at(0));
        let out = operator_transition(&dead, JobState::Queued, AuditAction::JobRetried, at(5));
        assert_eq!(out.unwrap(), (JobState::Queued, true));
    }

    #[test]
    fn an_illegal_transition_is_a_conflict_naming_the_job() {
        let done = job(JobState::Succeeded, at(0));
        let err = operator_transition(&done, JobState::Cancelled, AuditAction::JobCancelled, at(5))
            .unwrap_err();
        assert_eq!(err.code(), homeostat_model::ErrorCode::Conflict);
        assert!(err.to_string().contains(&done.id.to_string()), "{err}");
    }

    #[test]
    fn failures_back_off_doubling_then_die() {
        let options = StoreOptions::default();
        assert_eq!(
            fail_outcome(&options, 1, 3, false),
            (JobState::Scheduled, Some(Duration::from_secs(10)))
        );
        assert_eq!(
            fail_outcome(&options, 2, 3, false),
            (JobState::Scheduled, Some(Duration::from_secs(20)))
        );
        assert_eq!(fail_outcome(&options, 3, 3, false), (JobState::Dead, None));
        assert_eq!(fail_outcome(&options, 1, 3, true), (JobState::Dead, None));
    }

    #[test]
    fn deliveries_retry_then_go_dead_after_five_attempts() {
        let failed = Delivery::Failed {
            error: "503".into(),
            permanent: false,
        };
        let (state, next, error) = delivery_outcome(&failed, 1, at(0));
        assert_eq!(state, NotificationState::Pending);
        assert_eq!(next, at(120).as_millisecond());
        assert_eq!(error.as_deref(), Some("503"));
        assert_eq!(
            delivery_outcome(&failed, 5, at(0)).0,
            NotificationState::Dead
        );
        assert_eq!(
            delivery_outcome(&Delivery::Sent, 1, at(0)).0,
            NotificationState::Sent
        );
    }

    #[test]
    fn enqueued_jobs_pair_with_their_rows_by_fingerprint_or_id() {
        let mut fp = NewJob::new("q", "k");
        fp.fingerprint = Some("alert-1".into());
        let plain = NewJob::new("q", "k");
        let jobs = [fp.clone(), plain, fp];
        let generated: Vec<JobId> = ids_at(at(0), 3).map(JobId::from).collect();
        let live = JobId::at(at(-60));
        let stored = vec![
            EnqueuedRow {
                id: live,
                fingerprint: Some("alert-1".into()),
                occurrences: 3,
            },
            EnqueuedRow {
                id: generated[1],
                fingerprint: None,
                occurrences: 1,
            },
        ];
        let out = match_enqueued(&jobs, &generated, stored).unwrap();
        assert_eq!((out[0].id, out[0].deduplicated), (live, true));
        assert_eq!((out[1].id, out[1].deduplicated), (generated[1], false));
        assert_eq!((out[2].id, out[2].occurrences), (live, 3));
    }

    #[test]
    fn errors_are_kept_bounded_on_a_character_boundary() {
        let long = "é".repeat(3000);
        let kept = truncate(&long);
        assert!(kept.len() <= 4096 + "…".len());
        assert!(kept.ends_with('…'));
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn ids_below_the_bound_were_made_before_it() {
        let bound = id_before(at(100).as_millisecond());
        assert!(JobId::at(at(99)) < bound);
        assert!(JobId::at(at(100)) >= bound);
    }
}
