//! Rows into model types, once for both backends (each backend's
//! [`RowExt`] decodes its own storage of ids, flags and lists).

use homeostat_model::{Agent, Job, JobId, JobState, Notification, Tenant};

use crate::audit::ChainedEvent;
use crate::backend::RowExt;
use crate::error::{StoreError, corrupt};
use crate::time::ts;

/// The columns [`job`] reads, with the state as text on both backends (it
/// is an enum on PostgreSQL).
macro_rules! job_columns {
    () => {
        "id, tenant_id, queue, kind, payload, priority, effective_priority, fingerprint, \
         occurrences, CAST(state AS TEXT) AS state, attempt, max_attempts, timeout_ms, run_at, \
         deadline_at, approval_expires_at, lease_agent, lease_token, lease_expires_at, \
         last_error, result, created_at, updated_at, started_at, finished_at, attempts, \
         limit_keys, traceparent"
    };
}
pub(crate) use job_columns;

/// The terminal whitelist, as SQL: every other state, including states
/// added later, counts as live for fingerprint dedup.
macro_rules! terminal {
    () => {
        "('succeeded', 'dead', 'cancelled', 'expired')"
    };
}
pub(crate) use terminal;

/// The columns [`agent`] reads.
macro_rules! agent_columns {
    () => {
        "id, tenant_id, name, labels, queues, status, last_heartbeat_at, registered_at"
    };
}
pub(crate) use agent_columns;

/// The columns [`notification`] reads.
macro_rules! notification_columns {
    () => {
        "id, event, payload, state, attempts, next_attempt_at, last_error, created_at"
    };
}
pub(crate) use notification_columns;

pub(crate) fn parsed<T: std::str::FromStr>(col: &str, text: String) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| corrupt("reading a stored row", format!("column {col}: {e}")))
}

fn json(col: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    json_as(col, text)
}

fn json_as<T: serde::de::DeserializeOwned>(col: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| corrupt("reading a stored row", format!("column {col}: {e}")))
}

pub(crate) fn tenant(r: &impl RowExt) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: r.id("id")?,
        name: r.text("name")?,
        tier: parsed("tier", r.text("tier")?)?,
        created_at: ts(r.int("created_at")?),
    })
}

pub(crate) fn agent(r: &impl RowExt) -> Result<Agent, StoreError> {
    let labels = r.text("labels")?;
    Ok(Agent {
        id: r.id("id")?,
        tenant_id: r.opt_id("tenant_id")?,
        name: r.text("name")?,
        labels: serde_json::from_str(&labels)
            .map_err(|e| corrupt("reading a stored row", format!("column labels: {e}")))?,
        queues: r.list("queues")?,
        status: parsed("status", r.text("status")?)?,
        last_heartbeat_at: ts(r.int("last_heartbeat_at")?),
        registered_at: ts(r.int("registered_at")?),
    })
}

pub(crate) fn job(r: &impl RowExt) -> Result<Job, StoreError> {
    let opt_ts = |col: &str| -> Result<_, StoreError> { Ok(r.opt_int(col)?.map(ts)) };
    let state = parsed("state", r.text("state")?)?;
    Ok(Job {
        id: r.id("id")?,
        tenant_id: r.id("tenant_id")?,
        queue: r.text("queue")?,
        kind: r.text("kind")?,
        payload: json("payload", &r.text("payload")?)?,
        priority: r.num::<i32>("priority")?,
        effective_priority: r.int("effective_priority")?,
        fingerprint: r.opt_text("fingerprint")?,
        occurrences: r.num::<u32>("occurrences")?,
        state,
        attempt: r.num::<u32>("attempt")?,
        max_attempts: r.num::<u32>("max_attempts")?,
        timeout_secs: r.num::<u64>("timeout_ms")? / 1000,
        run_at: ts(r.int("run_at")?),
        deadline: opt_ts("deadline_at")?,
        approval_expires_at: opt_ts("approval_expires_at")?,
        lease_agent: r.opt_id("lease_agent")?,
        lease_token: r.int("lease_token")?,
        // A queued job holds no lease. On PostgreSQL the column keeps a
        // job queued for a woken claim for woken claims, a moment
        // (`postgres::hot::PROMISED_MS`): not a lease to show.
        lease_expires_at: if state == JobState::Queued {
            None
        } else {
            opt_ts("lease_expires_at")?
        },
        last_error: r.opt_text("last_error")?,
        result: r
            .opt_text("result")?
            .map(|t| json("result", &t))
            .transpose()?,
        created_at: ts(r.int("created_at")?),
        updated_at: ts(r.int("updated_at")?),
        started_at: opt_ts("started_at")?,
        finished_at: opt_ts("finished_at")?,
        attempts: match r.opt_text("attempts")? {
            Some(text) => failed_attempts(&text)?,
            None => Vec::new(),
        },
        limits: match r.opt_text("limit_keys")? {
            Some(text) => limit_keys(&text)?,
            None => Vec::new(),
        },
        traceparent: r.opt_text("traceparent")?,
    })
}

/// The `limit_keys` column: a JSON array of `[limit, key]` pairs.
pub(crate) fn limit_keys(text: &str) -> Result<Vec<homeostat_model::LimitKey>, StoreError> {
    let pairs: Vec<(String, String)> = json_as("limit_keys", text)?;
    Ok(pairs
        .into_iter()
        .map(|(limit, key)| homeostat_model::LimitKey::from_stored(limit, &key))
        .collect())
}

/// The `attempts` column: JSON objects with times in epoch milliseconds.
fn failed_attempts(text: &str) -> Result<Vec<homeostat_model::FailedAttempt>, StoreError> {
    #[derive(serde::Deserialize)]
    struct Stored {
        attempt: u32,
        agent_id: Option<homeostat_model::AgentId>,
        started_at: Option<i64>,
        failed_at: i64,
        error: String,
    }
    let stored: Vec<Stored> = serde_json::from_str(text)
        .map_err(|e| crate::error::corrupt("reading a job", format!("column attempts: {e}")))?;
    Ok(stored
        .into_iter()
        .map(|a| homeostat_model::FailedAttempt {
            attempt: a.attempt,
            agent_id: a.agent_id,
            started_at: a.started_at.map(ts),
            failed_at: ts(a.failed_at),
            error: a.error,
        })
        .collect())
}

/// What an enqueue returns of each row it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnqueuedRow {
    pub(crate) id: JobId,
    pub(crate) fingerprint: Option<String>,
    pub(crate) occurrences: u32,
}

pub(crate) fn enqueued(r: &impl RowExt) -> Result<EnqueuedRow, StoreError> {
    Ok(EnqueuedRow {
        id: r.id("id")?,
        fingerprint: r.opt_text("fingerprint")?,
        occurrences: r.num::<u32>("occurrences")?,
    })
}

pub(crate) fn notification(r: &impl RowExt) -> Result<Notification, StoreError> {
    Ok(Notification {
        id: r.id("id")?,
        event: r.text("event")?,
        payload: json("payload", &r.text("payload")?)?,
        state: parsed("state", r.text("state")?)?,
        attempts: r.num::<u32>("attempts")?,
        next_attempt_at: ts(r.int("next_attempt_at")?),
        last_error: r.opt_text("last_error")?,
        created_at: ts(r.int("created_at")?),
    })
}

pub(crate) fn chained_event(r: &impl RowExt) -> Result<ChainedEvent, StoreError> {
    Ok(ChainedEvent {
        seq: r.int("seq")?,
        at_ms: r.int("at")?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        subject: r.text("subject")?,
        details: r.text("details")?,
        prev_hash: r.bytes("prev_hash")?,
        hash: r.bytes("hash")?,
    })
}
