//! Jobs outside the tuned hot path: periodic enqueues, lease extension,
//! failures, operator transitions, reads and listings.

use std::collections::HashMap;
use std::time::Duration;

use homeostat_model::{AgentId, AuditAction, Id, Job, JobId, JobState, NewAuditEvent, TenantId};
use homeostat_runtime::Fence;
use jiff::Timestamp;
use serde_json::json;

use crate::backend::{
    Backend, RowExt, Sql, Stmt, pg_failed_attempt, pg_judged, pg_running, sqlite_failed_attempt,
    sqlite_running,
};
use crate::decisions::{fail_outcome, operator_transition, periodic_event, truncate};
use crate::error::{Context, StoreError, db_error};
use crate::leases::check_fence;
use crate::rows::{self, job_columns, terminal};
use crate::time::{dur_ms, ms, ts};
use crate::{Enqueued, FailOutcome, Failure, JobFilter, Page, PeriodicEnqueue, audit_log};

/// Takes cron slot `$2` of schedule `$1` unless it or a later one was taken.
const TAKE_SLOT: Sql = Sql::both(
    "INSERT INTO periodic_slots (name, last_slot) VALUES ($1, $2)
     ON CONFLICT (name) DO UPDATE SET last_slot = excluded.last_slot
     WHERE periodic_slots.last_slot < excluded.last_slot
     RETURNING last_slot",
);
const LAST_SLOT: Sql = Sql::both("SELECT last_slot FROM periodic_slots WHERE name = $1");

/// Extends the leases of running jobs that agent `$5` holds: `$1` ids, `$2`
/// their lease tokens (in the same order), `$3` now (judged), `$4` the lease
/// (ms); the jobs whose lease was extended, with its new expiry. Lease
/// tokens are claim counters, easy to guess: the holder is what proves the
/// lease. The tokens are
/// materialized on SQLite, as in `registry::agents::HEARTBEATS`: a join on positions
/// to `json_each` itself re-reads the list for every id.
const EXTEND_LEASES: Sql = Sql::pair(
    concat!(
        "WITH t AS MATERIALIZED (SELECT key, value FROM json_each($2))
         UPDATE jobs SET lease_expires_at = $3 + $4
         FROM (SELECT i.value AS id, t.value AS token
               FROM json_each($1) AS i JOIN t ON t.key = i.key) AS h
         WHERE jobs.id = h.id AND jobs.lease_token = h.token AND jobs.lease_agent = $5 AND ",
        sqlite_running!(),
        " RETURNING jobs.id, jobs.lease_expires_at"
    ),
    concat!(
        "UPDATE jobs SET lease_expires_at = ",
        pg_judged!(3),
        " + $4 FROM UNNEST((SELECT $1::uuid[]), $2::bigint[]) AS h(id, token)
         WHERE jobs.id = h.id AND jobs.lease_token = h.token AND jobs.lease_agent = $5
           AND jobs.",
        pg_running!(),
        " RETURNING jobs.id, jobs.lease_expires_at"
    ),
);

/// `$3` now, `$4` the agent holding the lease. The attempt is given back: a
/// release is not a failure. A job under limits waits for them again
/// (docs/flow-control.md), as every job that goes back to be run does.
const RELEASE: Sql = Sql::pair(
    concat!(
        "UPDATE jobs SET state = (CASE WHEN limit_keys IS NULL THEN 'queued' ELSE 'waiting' END), attempt = MAX(attempt - 1, 0),
           queued_at = $3, fair_at = $3,
           updated_at = $3, lease_expires_at = NULL, timeout_at = NULL
         WHERE id = $1 AND lease_token = $2 AND lease_agent = $4 AND ",
        sqlite_running!(),
        " RETURNING tenant_id, queue"
    ),
    concat!(
        "UPDATE jobs SET state = (CASE WHEN limit_keys IS NULL THEN 'queued'::job_state ELSE 'waiting'::job_state END),
           attempt = GREATEST(attempt - 1, 0), queued_at = $3, fair_at = $3,
           updated_at = $3, lease_expires_at = NULL, timeout_at = NULL
         WHERE id = $1 AND lease_token = $2 AND lease_agent = $4 AND ",
        pg_running!(),
        " RETURNING tenant_id, queue"
    ),
);

/// `$3` the agent holding the lease.
const FAILING: Sql = Sql::pair(
    concat!(
        "SELECT attempt, max_attempts, queue, kind, queued_at, started_at FROM jobs
         WHERE id = $1 AND lease_token = $2 AND lease_agent = $3 AND ",
        sqlite_running!()
    ),
    concat!(
        "SELECT attempt, max_attempts, queue, kind, queued_at, started_at FROM jobs
         WHERE id = $1 AND lease_token = $2 AND lease_agent = $3 AND ",
        pg_running!(),
        " FOR UPDATE"
    ),
);

/// The live job of a tenant with a fingerprint (at most one: the dedup index).
const LIVE_BY_FINGERPRINT: Sql = Sql::both(concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE tenant_id = $1 AND fingerprint = $2 AND state NOT IN ",
    terminal!()
));

/// `$3` the delay before the retry (ms; none when the job dies), `$6`
/// now, `$7` now (judged: the retry is due by it).
const FAIL: Sql = Sql::pair(
    concat!(
        "UPDATE jobs SET state = $2, run_at = COALESCE($7 + $3, run_at), last_error = $4,
           finished_at = $5, updated_at = $6, lease_expires_at = NULL, timeout_at = NULL, ",
        sqlite_failed_attempt!("$6", "$4"),
        " WHERE id = $1 RETURNING run_at"
    ),
    concat!(
        "UPDATE jobs SET state = $2::job_state, run_at = COALESCE(",
        pg_judged!(7),
        " + $3, run_at), last_error = $4,
           finished_at = $5, updated_at = $6, lease_expires_at = NULL, timeout_at = NULL, ",
        pg_failed_attempt!("$6", "$4::text"),
        " WHERE id = $1 RETURNING run_at"
    ),
);

const JOB: Sql = Sql::both(concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE id = $1"
));

const JOB_FOR_UPDATE: Sql = Sql::pair(
    concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"),
    concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE id = $1 FOR UPDATE"
    ),
);

/// `$2` the new state, `$3` now, `$4` whether attempts start over, `$5`
/// how far the start-by deadline moves (ms: an approval's wait). A
/// cancelled job keeps the agent that last held it, as a finished one does:
/// that agent's next heartbeat learns of the cancel, and no other agent
/// can.
const TRANSITION: Sql = Sql::pair(
    concat!(
        "UPDATE jobs SET state = $2, updated_at = $3, queued_at = $3, fair_at = $3,
           finished_at = CASE WHEN $2 IN ",
        terminal!(),
        " THEN $3 ELSE NULL END,
           attempt = CASE WHEN $4 THEN 0 ELSE attempt END,
           deadline_at = CASE WHEN $4 THEN NULL ELSE deadline_at + $5 END,
           lease_agent = CASE WHEN $2 = 'cancelled' THEN lease_agent ELSE NULL END,
           lease_expires_at = NULL, timeout_at = NULL
         WHERE id = $1 RETURNING ",
        job_columns!()
    ),
    concat!(
        "UPDATE jobs SET state = $2::job_state, updated_at = $3, queued_at = $3, fair_at = $3,
           finished_at = CASE WHEN $2 IN ",
        terminal!(),
        " THEN $3 ELSE NULL END,
           attempt = CASE WHEN $4 THEN 0 ELSE attempt END,
           deadline_at = CASE WHEN $4 THEN NULL ELSE deadline_at + $5 END,
           lease_agent = CASE WHEN $2 = 'cancelled' THEN lease_agent ELSE NULL END,
           lease_expires_at = NULL, timeout_at = NULL
         WHERE id = $1 RETURNING ",
        job_columns!()
    ),
);

/// The filters of a job list after its `WHERE`, in SQLite's dialect.
macro_rules! list_filters_sqlite {
    () => {
        "($1 IS NULL OR tenant_id = $1) AND ($2 IS NULL OR state = $2)
           AND ($3 IS NULL OR queue = $3) AND ($4 IS NULL OR id < $4)
           AND ($6 IS NULL OR kind = $6) AND ($7 IS NULL OR lease_agent = $7)
           AND ($8 IS NULL OR instr(fingerprint, $8) > 0)
         ORDER BY id DESC LIMIT CAST($5 AS BIGINT)"
    };
}

/// [`list_filters_sqlite!`] in PostgreSQL's dialect.
macro_rules! list_filters_pg {
    () => {
        "($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR state = $2::job_state)
           AND ($3::text IS NULL OR queue = $3) AND ($4::uuid IS NULL OR id < $4)
           AND ($6::text IS NULL OR kind = $6) AND ($7::uuid IS NULL OR lease_agent = $7)
           AND ($8::text IS NULL OR strpos(fingerprint, $8) > 0)
         ORDER BY id DESC LIMIT $5"
    };
}

/// Jobs newest first, filtered (`$1` tenant, `$2` state, `$3` queue,
/// `$4` before this id, `$5` limit, `$6` kind, `$7` agent, `$8` part of
/// the fingerprint; each `NULL` for any).
const LIST: Sql = Sql::pair(
    concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE ",
        list_filters_sqlite!()
    ),
    concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE ",
        list_filters_pg!()
    ),
);

/// [`LIST`] of the jobs in one state, the state a literal of the text.
macro_rules! list_in {
    ($state:literal) => {
        Sql::pair(
            concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE state = '",
                $state,
                "' AND ",
                list_filters_sqlite!()
            ),
            concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE state = '",
                $state,
                "' AND ",
                list_filters_pg!()
            ),
        )
    };
}

/// The list of the jobs in `state`. With the state as a literal, the
/// planner can read that state's partial index (dead jobs newest first
/// from `jobs_dead`) instead of walking every newer job to find a rare
/// state; the generic `$2 IS NULL OR …` form matches no partial index.
fn list_in_state(state: JobState) -> Sql {
    match state {
        JobState::Pending => list_in!("pending"),
        JobState::Scheduled => list_in!("scheduled"),
        JobState::AwaitingApproval => list_in!("awaiting_approval"),
        JobState::Waiting => list_in!("waiting"),
        JobState::Queued => list_in!("queued"),
        JobState::Running => list_in!("running"),
        JobState::Succeeded => list_in!("succeeded"),
        JobState::Dead => list_in!("dead"),
        JobState::Cancelled => list_in!("cancelled"),
        JobState::Expired => list_in!("expired"),
    }
}

pub(crate) async fn enqueue_periodic<B: Backend>(
    b: &B,
    p: &PeriodicEnqueue<'_>,
    fence: Option<&Fence>,
) -> Result<Option<Enqueued>, StoreError> {
    let now = b.now();
    let op = AuditAction::JobsPeriodic.as_str();
    p.job.validate()?;
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, fence, op).await?;
    let stmt = Stmt::new::<B>(TAKE_SLOT).arg(p.schedule).arg(ms(p.slot));
    if B::fetch_in(&mut tx, stmt).await.op(op)?.is_empty() {
        return Ok(None);
    }
    let enqueued = b
        .enqueue_in(&mut tx, p.tenant_id, std::slice::from_ref(p.job))
        .await?
        .remove(0);
    let event = periodic_event(fence, p.schedule, p.slot, &enqueued);
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    Ok(Some(enqueued))
}

pub(crate) async fn periodic_last_slot<B: Backend>(
    b: &B,
    schedule: &str,
) -> Result<Option<Timestamp>, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(LAST_SLOT).arg(schedule))
        .await
        .op("reading a periodic schedule")?;
    Ok(rows
        .first()
        .map(|r| r.int("last_slot"))
        .transpose()?
        .map(ts))
}

pub(crate) async fn heartbeat_job<B: Backend>(
    b: &B,
    agent: AgentId,
    id: JobId,
    lease_token: i64,
    lease: Duration,
) -> Result<Timestamp, StoreError> {
    let op = "extending a job lease";
    let extended = extend_leases(b, agent, &[(id, lease_token)], lease, op).await?;
    match extended.get(&id) {
        Some(expires) => Ok(ts(*expires)),
        None => Err(StoreError::StaleLease {
            operation: op,
            job: id,
            token: lease_token,
        }),
    }
}

/// Extends the leases of running jobs in one statement; for each, whether
/// its lease was extended (false: the token is stale, or the job is no
/// longer running).
pub(crate) async fn heartbeat_jobs<B: Backend>(
    b: &B,
    agent: AgentId,
    held: &[(JobId, i64)],
    lease: Duration,
) -> Result<Vec<bool>, StoreError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let extended = extend_leases(b, agent, held, lease, "extending job leases").await?;
    Ok(held
        .iter()
        .map(|(id, _)| extended.contains_key(id))
        .collect())
}

/// The jobs of `held` whose lease was extended, with its new expiry (ms).
async fn extend_leases<B: Backend>(
    b: &B,
    agent: AgentId,
    held: &[(JobId, i64)],
    lease: Duration,
    op: &'static str,
) -> Result<HashMap<JobId, i64>, StoreError> {
    let ids: Vec<Id> = held.iter().map(|(id, _)| id.as_uuid()).collect();
    let tokens: Vec<i64> = held.iter().map(|(_, token)| *token).collect();
    let stmt = Stmt::new::<B>(EXTEND_LEASES)
        .arg(ids.as_slice())
        .arg(tokens.as_slice())
        .arg(b.judged_ms(b.now()))
        .arg(dur_ms(lease))
        .arg(agent);
    b.fetch_write(stmt)
        .await
        .op(op)?
        .iter()
        .map(|r| Ok((r.id::<JobId>("id")?, r.int("lease_expires_at")?)))
        .collect()
}

pub(crate) async fn release<B: Backend>(
    b: &B,
    agent: AgentId,
    id: JobId,
    lease_token: i64,
) -> Result<(TenantId, String), StoreError> {
    let op = "releasing a job";
    let stmt = Stmt::new::<B>(RELEASE)
        .arg(id)
        .arg(lease_token)
        .arg(ms(b.now()))
        .arg(agent);
    let rows = b.fetch_write(stmt).await.op(op)?;
    let row = rows.first().ok_or(StoreError::StaleLease {
        operation: op,
        job: id,
        token: lease_token,
    })?;
    Ok((row.id("tenant_id")?, row.text("queue")?))
}

pub(crate) async fn fail<B: Backend>(
    b: &B,
    failure: &Failure<'_>,
) -> Result<(FailOutcome, crate::job_metrics::Ended), StoreError> {
    let now = b.now();
    let op = "failing a job";
    let Failure {
        agent,
        id,
        lease_token,
        error,
        permanent,
    } = *failure;
    let mut tx = b.begin(op).await?;
    let rows = B::fetch_in(
        &mut tx,
        Stmt::new::<B>(FAILING).arg(id).arg(lease_token).arg(agent),
    )
    .await
    .op(op)?;
    let row = rows.first().ok_or(StoreError::StaleLease {
        operation: op,
        job: id,
        token: lease_token,
    })?;
    let (attempt, max) = (row.num::<u32>("attempt")?, row.num::<u32>("max_attempts")?);
    let ended = crate::job_metrics::Ended {
        queue: row.text("queue")?,
        kind: row.text("kind")?,
        queued_at: row.int("queued_at")?,
        started_at: row.opt_int("started_at")?,
    };
    let (state, retry_after) = fail_outcome(b.options(), attempt, max, permanent);
    let dead = state == JobState::Dead;
    let error = truncate(error);
    let stmt = Stmt::new::<B>(FAIL)
        .arg(id)
        .arg(state.as_str())
        .arg(retry_after.map(dur_ms))
        .arg(&error)
        .arg(dead.then_some(ms(now)))
        .arg(ms(now))
        .arg(b.judged_ms(now));
    let rows = B::fetch_in(&mut tx, stmt).await.op(op)?;
    let run_at = rows.first().map(|r| r.int("run_at")).transpose()?;
    if dead {
        // Every way a job dies is told; the error text is not in it (a
        // program's output may hold anything).
        let reason = if permanent {
            "its agent reported a permanent failure"
        } else {
            "its attempts are used up"
        };
        let payload = json!({"job_id": id, "reason": reason, "attempt": attempt});
        crate::notifications::add_in::<B>(&mut tx, "job.dead", &payload, ms(now)).await?;
    }
    B::commit(tx, op).await?;
    let outcome = FailOutcome {
        state,
        retry_at: retry_after.and(run_at).map(ts),
    };
    Ok((outcome, ended))
}

/// Operator transitions: cancel, approve, redrive. Audited.
pub(crate) async fn transition<B: Backend>(
    b: &B,
    id: JobId,
    to: JobState,
    action: AuditAction,
    actor: &str,
) -> Result<Job, StoreError> {
    let now = b.now();
    let op = action.as_str();
    let mut tx = b.begin(op).await?;
    let rows = B::fetch_in(&mut tx, Stmt::new::<B>(JOB_FOR_UPDATE).arg(id))
        .await
        .op(op)?;
    let current = rows::job(rows.first().ok_or_else(|| StoreError::NotFound {
        entity: "job",
        id: id.to_string(),
    })?)?;
    let (to, redrive) = operator_transition(&current, to, action, now)?;
    // A job under limits goes back to wait for them, not to its queue.
    let to = if to == JobState::Queued && !current.limits.is_empty() {
        JobState::Waiting
    } else {
        to
    };
    // A job's start-by deadline bounds its wait to start once it may, not
    // a person's wait to approve it: approving moves the deadline by the
    // time the job waited, due, for its approval. Approving never expires
    // a job.
    let approval_wait = if action == AuditAction::JobApproved {
        ms(now) - ms(current.created_at.max(current.run_at))
    } else {
        0
    };
    let stmt = Stmt::new::<B>(TRANSITION)
        .arg(id)
        .arg(to.as_str())
        .arg(ms(now))
        .arg(redrive)
        .arg(approval_wait.max(0));
    let rows = B::fetch_in(&mut tx, stmt).await.map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict {
            operation: op,
            entity: "job",
            id: id.to_string(),
            reason: "another live job has the same fingerprint".into(),
        },
        e => db_error(op, e),
    })?;
    let job = rows::job(rows.first().ok_or_else(|| StoreError::NotFound {
        entity: "job",
        id: id.to_string(),
    })?)?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: action.into(),
        subject: format!("job:{id}"),
        details: json!({"from": current.state, "to": to, "tenant_id": job.tenant_id}),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    Ok(job)
}

pub(crate) async fn get_job<B: Backend>(b: &B, id: JobId) -> Result<Job, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(JOB).arg(id))
        .await
        .op("reading a job")?;
    rows::job(rows.first().ok_or_else(|| StoreError::NotFound {
        entity: "job",
        id: id.to_string(),
    })?)
}

pub(crate) async fn live_job_by_fingerprint<B: Backend>(
    b: &B,
    tenant_id: TenantId,
    fingerprint: &str,
) -> Result<Option<Job>, StoreError> {
    let stmt = Stmt::new::<B>(LIVE_BY_FINGERPRINT)
        .arg(tenant_id)
        .arg(fingerprint);
    let rows = b.fetch(stmt).await.op("reading a job")?;
    rows.first().map(rows::job).transpose()
}

pub(crate) async fn list_jobs<B: Backend>(
    b: &B,
    filter: &JobFilter,
    after: Option<JobId>,
    limit: u32,
) -> Result<Page<Job>, StoreError> {
    let limit = limit.clamp(1, 1000);
    let stmt = Stmt::new::<B>(filter.state.map_or(LIST, list_in_state))
        .arg(filter.tenant_id)
        .arg(filter.state.map(|s| s.as_str()))
        .arg(filter.queue.as_deref())
        .arg(after)
        .arg(i64::from(limit) + 1)
        .arg(filter.kind.as_deref())
        .arg(filter.agent_id)
        .arg(filter.fingerprint.as_deref());
    let items = b
        .fetch(stmt)
        .await
        .op("listing jobs")?
        .iter()
        .map(rows::job)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::of_one_more(items, limit, |j| j.id))
}
