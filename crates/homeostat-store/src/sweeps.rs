//! The set-based sweeps the controllers call: each one statement, limited
//! to a batch, fenced by the caller's lease and audited, in one
//! transaction. Each sweep's SQLite and PostgreSQL texts stand side by
//! side: PostgreSQL skips rows other replicas hold (`SKIP LOCKED`) and
//! casts to its state enum; SQLite names the index its planner would miss.

use homeostat_model::{AuditAction, NewAuditEvent};
use homeostat_runtime::Fence;
use serde_json::json;

use crate::backend::{
    At, Backend, RowExt, Sql, Stmt, pg_failed_attempt, pg_judged, sqlite_failed_attempt,
};
use crate::decisions::{actor_for, id_before, sweep_event};
use crate::error::{Context, StoreError};
use crate::leases::check_fence;
use crate::time::{dur_ms, ms};
use crate::{Ageing, JobRetention, Swept, audit_log};

/// A sweep statement returning `(id, state, tenant_id, queue, kind)` of the
/// rows it changed, with
/// the audit action and reason that describe it.
pub(crate) struct Sweep {
    action: &'static str,
    reason: &'static str,
    sql: Sql,
}

/// `$1` now (judged), `$2` limit, `$3` the earliest expiry that counts
/// (ms; leases that ran out before it wait: see [`requeue_expired`]).
pub(crate) const LEASE_EXPIRED: Sweep = Sweep {
    action: AuditAction::JobsLeaseExpired.as_str(),
    reason: "lease expired",
    sql: Sql::pair(
        concat!(
            "UPDATE jobs SET
           state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE (CASE WHEN limit_keys IS NULL THEN 'queued' ELSE 'waiting' END) END,
           finished_at = CASE WHEN attempt >= max_attempts THEN $1 ELSE NULL END,
           queued_at = $1, fair_at = $1, updated_at = $1, last_error = 'lease expired: the agent stopped heartbeating the job', ",
            sqlite_failed_attempt!("$1", "'lease expired: the agent stopped heartbeating the job'"),
            ", lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
         WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < $1
                        AND lease_expires_at >= $3 LIMIT CAST($2 AS BIGINT))
         RETURNING id, state, tenant_id, queue, kind"
        ),
        concat!(
            "WITH t(now) AS (SELECT ",
            pg_judged!(1),
            ")
         UPDATE jobs SET
           state = CASE WHEN attempt >= max_attempts THEN 'dead'::job_state ELSE (CASE WHEN limit_keys IS NULL THEN 'queued'::job_state ELSE 'waiting'::job_state END) END,
           finished_at = CASE WHEN attempt >= max_attempts THEN t.now ELSE NULL END,
           queued_at = t.now, fair_at = t.now, updated_at = t.now, last_error = 'lease expired: the agent stopped heartbeating the job', ",
            pg_failed_attempt!("t.now", "'lease expired: the agent stopped heartbeating the job'::text"),
            ", lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
         FROM t
         WHERE id IN (SELECT id FROM jobs, t WHERE state = 'running' AND lease_expires_at < t.now
                        AND lease_expires_at >= $3
                      LIMIT $2 FOR UPDATE OF jobs SKIP LOCKED)
         RETURNING id, state::text AS state, tenant_id, queue, kind"
        ),
    ),
};

/// Running jobs whose agent is gone, picked by `$pick` (a subquery of ids
/// under `$1` now (judged) and `$2` the batch), queued again with the
/// attempt counted, or dead with none left; `$error` (a quoted SQL
/// literal, typed `::text` on PostgreSQL) is their last error.
macro_rules! reclaim_running {
    ($sqlite_error:literal, $sqlite_pick:literal, $pg_error:literal, $pg_pick:literal) => {
        Sql::pair(
            concat!(
                "UPDATE jobs SET
           state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE (CASE WHEN limit_keys IS NULL THEN 'queued' ELSE 'waiting' END) END,
           finished_at = CASE WHEN attempt >= max_attempts THEN $1 ELSE NULL END,
           queued_at = $1, fair_at = $1, updated_at = $1, last_error = ",
                $sqlite_error,
                ", ",
                sqlite_failed_attempt!("$1", $sqlite_error),
                ", lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
         WHERE id IN (",
                $sqlite_pick,
                ")
         RETURNING id, state, tenant_id, queue, kind"
            ),
            concat!(
                "WITH t(now) AS (SELECT ",
                pg_judged!(1),
                ")
         UPDATE jobs SET
           state = CASE WHEN attempt >= max_attempts THEN 'dead'::job_state ELSE (CASE WHEN limit_keys IS NULL THEN 'queued'::job_state ELSE 'waiting'::job_state END) END,
           finished_at = CASE WHEN attempt >= max_attempts THEN t.now ELSE NULL END,
           queued_at = t.now, fair_at = t.now, updated_at = t.now, last_error = ",
                $pg_error,
                ", ",
                pg_failed_attempt!("t.now", $pg_error),
                ", lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
         FROM t
         WHERE id IN (",
                $pg_pick,
                ")
         RETURNING id, state::text AS state, tenant_id, queue, kind"
            ),
        )
    };
}

/// `$1` now (judged), `$2` limit. A job under limits is left to its lease:
/// an agent taken offline may only be unheard (a replica that crashed lost
/// its last heartbeats) and still run it, and a slot freed before the
/// agent stops would let a key run one job more than its limit. It keeps
/// to its lease (it stops a job it could not extend in time), so once the
/// lease has run out the job is no longer run.
pub(crate) const AGENT_OFFLINE: Sweep = Sweep {
    action: AuditAction::JobsAgentOffline.as_str(),
    reason: "agent offline",
    sql: reclaim_running!(
        "'reclaimed: the agent went offline'",
        "SELECT j.id FROM jobs j INDEXED BY jobs_running_lease
                      JOIN agents a ON a.id = j.lease_agent
                      WHERE j.state = 'running' AND a.status = 'offline'
                        AND (j.limit_keys IS NULL OR j.lease_expires_at < $1) LIMIT CAST($2 AS BIGINT)",
        "'reclaimed: the agent went offline'::text",
        "SELECT j.id FROM jobs j JOIN agents a ON a.id = j.lease_agent, t
                      WHERE j.state = 'running' AND a.status = 'offline'
                        AND (j.limit_keys IS NULL OR j.lease_expires_at < t.now)
                      LIMIT $2 FOR UPDATE OF j SKIP LOCKED"
    ),
};

/// `$1` now (judged), `$2` limit, `$3` the agent: its running jobs, as
/// [`AGENT_OFFLINE`] reclaims them, when an operator revoked it.
pub(crate) const AGENT_REVOKED: Sweep = Sweep {
    action: AuditAction::JobsAgentOffline.as_str(),
    reason: "the agent's credentials were revoked",
    sql: reclaim_running!(
        "'reclaimed: the agent was revoked'",
        "SELECT id FROM jobs WHERE state = 'running' AND lease_agent = $3 LIMIT CAST($2 AS BIGINT)",
        "'reclaimed: the agent was revoked'::text",
        "SELECT id FROM jobs WHERE state = 'running' AND lease_agent = $3
                      LIMIT $2 FOR UPDATE SKIP LOCKED"
    ),
};

/// `$1` now (judged), `$2` limit, `$3` the agent, `$4` the jobs its new
/// process holds: the others it was leased, reclaimed as [`AGENT_OFFLINE`]
/// reclaims them, when the agent restarted.
pub(crate) const AGENT_RESTARTED: Sweep = Sweep {
    action: AuditAction::JobsAgentOffline.as_str(),
    reason: "the agent restarted without them",
    sql: reclaim_running!(
        "'reclaimed: the agent restarted without it'",
        "SELECT id FROM jobs WHERE state = 'running' AND lease_agent = $3
                        AND id NOT IN (SELECT value FROM json_each($4)) LIMIT CAST($2 AS BIGINT)",
        "'reclaimed: the agent restarted without it'::text",
        "SELECT id FROM jobs WHERE state = 'running' AND lease_agent = $3
                        AND NOT (id = ANY($4::uuid[]))
                      LIMIT $2 FOR UPDATE SKIP LOCKED"
    ),
};

/// Jobs in `$state` never started by their deadline, expired with
/// `$error` as their last error (a quoted SQL literal); `$1` now (judged),
/// `$2` limit.
macro_rules! deadline_passed {
    ($state:literal, $error:literal) => {
        Sql::pair(
            concat!(
                "UPDATE jobs SET state = 'expired', finished_at = $1, updated_at = $1,
           last_error = ",
                $error,
                "
         WHERE id IN (SELECT id FROM jobs WHERE state = '",
                $state,
                "' AND attempt = 0
                      AND deadline_at < $1 LIMIT CAST($2 AS BIGINT))
         RETURNING id, state, tenant_id, queue, kind"
            ),
            concat!(
                "WITH t(now) AS (SELECT ",
                pg_judged!(1),
                ")
         UPDATE jobs SET state = 'expired', finished_at = t.now, updated_at = t.now,
           last_error = ",
                $error,
                "
         FROM t
         WHERE id IN (SELECT id FROM jobs, t WHERE state = '",
                $state,
                "' AND attempt = 0
                      AND deadline_at < t.now LIMIT $2 FOR UPDATE OF jobs SKIP LOCKED)
         RETURNING id, state::text AS state, tenant_id, queue, kind"
            ),
        )
    };
}

/// `$1` now (judged), `$2` limit.
pub(crate) const DEADLINE_PASSED: Sweep = Sweep {
    action: AuditAction::JobsDeadlinePassed.as_str(),
    reason: "deadline passed",
    sql: deadline_passed!("queued", "'not started before its deadline'"),
};

/// `$1` now (judged), `$2` limit: jobs waiting for their limits past their
/// start-by deadline, as [`DEADLINE_PASSED`] expires queued ones (each
/// state's own partial index).
pub(crate) const WAITING_DEADLINE_PASSED: Sweep = Sweep {
    action: AuditAction::JobsDeadlinePassed.as_str(),
    reason: "deadline passed while waiting for its limits",
    sql: deadline_passed!(
        "waiting",
        "'not started before its deadline (waiting for its limits)'"
    ),
};

/// `$1` now (judged), `$2` limit, `$3` first retry delay, `$4` longest
/// delay (ms).
const TIMED_OUT: Sweep = Sweep {
    action: AuditAction::JobsTimedOut.as_str(),
    reason: "attempt timed out",
    sql: Sql::pair(
        concat!(
            "UPDATE jobs SET
           state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'scheduled' END,
           finished_at = CASE WHEN attempt >= max_attempts THEN $1 ELSE NULL END,
           run_at = $1 + MIN($4, $3 << MIN(MAX(attempt - 1, 0), 40)),
           updated_at = $1, last_error = 'attempt timed out', ",
            sqlite_failed_attempt!("$1", "'attempt timed out'"),
            ", lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
         WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_running_lease
                      WHERE state = 'running' AND timeout_at < $1 LIMIT CAST($2 AS BIGINT))
         RETURNING id, state, tenant_id, queue, kind"
        ),
        concat!(
            "WITH t(now) AS (SELECT ",
            pg_judged!(1),
            ")
         UPDATE jobs SET
           state = CASE WHEN attempt >= max_attempts THEN 'dead'::job_state ELSE 'scheduled' END,
           finished_at = CASE WHEN attempt >= max_attempts THEN t.now ELSE NULL END,
           run_at = t.now + LEAST($4, $3 << LEAST(GREATEST(attempt - 1, 0), 40)::int),
           updated_at = t.now, last_error = 'attempt timed out', ",
            pg_failed_attempt!("t.now", "'attempt timed out'::text"),
            ", lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
         FROM t
         WHERE id IN (SELECT id FROM jobs, t WHERE state = 'running' AND timeout_at < t.now
                      LIMIT $2 FOR UPDATE OF jobs SKIP LOCKED)
         RETURNING id, state::text AS state, tenant_id, queue, kind"
        ),
    ),
};

/// `$1` now (judged), `$2` limit.
pub(crate) const PROMOTED: Sweep = Sweep {
    action: AuditAction::JobsPromoted.as_str(),
    reason: "run time reached",
    sql: Sql::pair(
        "UPDATE jobs SET state = CASE WHEN limit_keys IS NULL THEN 'queued' ELSE 'waiting' END,
           queued_at = $1, fair_at = $1, updated_at = $1
         WHERE id IN (SELECT id FROM jobs WHERE state = 'scheduled' AND run_at <= $1 LIMIT CAST($2 AS BIGINT))
         RETURNING id, state, tenant_id, queue, kind",
        concat!(
            "WITH t(now) AS (SELECT ",
            pg_judged!(1),
            ")
         UPDATE jobs SET state = CASE WHEN limit_keys IS NULL THEN 'queued'::job_state
                                      ELSE 'waiting' END,
           queued_at = t.now, fair_at = t.now, updated_at = t.now
         FROM t
         WHERE id IN (SELECT id FROM jobs, t WHERE state = 'scheduled' AND run_at <= t.now
                      LIMIT $2 FOR UPDATE OF jobs SKIP LOCKED)
         RETURNING id, state::text AS state, tenant_id, queue, kind"
        ),
    ),
};

/// `$1` now (judged), `$2` limit.
pub(crate) const APPROVAL_EXPIRED: Sweep = Sweep {
    action: AuditAction::JobsApprovalExpired.as_str(),
    reason: "approval expired",
    sql: Sql::pair(
        "UPDATE jobs SET state = 'expired', finished_at = $1, updated_at = $1,
           last_error = 'approval expired'
         WHERE id IN (SELECT id FROM jobs WHERE state = 'awaiting_approval'
                      AND approval_expires_at < $1 LIMIT CAST($2 AS BIGINT))
         RETURNING id, state, tenant_id, queue, kind",
        concat!(
            "WITH t(now) AS (SELECT ",
            pg_judged!(1),
            ")
         UPDATE jobs SET state = 'expired', finished_at = t.now, updated_at = t.now,
           last_error = 'approval expired'
         FROM t
         WHERE id IN (SELECT id FROM jobs, t WHERE state = 'awaiting_approval'
                      AND approval_expires_at < t.now LIMIT $2 FOR UPDATE OF jobs SKIP LOCKED)
         RETURNING id, state::text AS state, tenant_id, queue, kind"
        ),
    ),
};

/// `$1` succeeded/cancelled cutoff, `$2` dead/expired cutoff, `$3` limit,
/// `$4` the smallest id created after the older cutoff: every job below it
/// is old enough to look at, so the scan walks the primary key's prefix (in
/// its order, which keeps that plan even without statistics).
const DELETED: Sweep = Sweep {
    action: AuditAction::JobsDeleted.as_str(),
    reason: "past retention",
    sql: Sql::pair(
        "DELETE FROM jobs WHERE id IN (
           SELECT id FROM jobs WHERE id < $4 AND (
             (state IN ('succeeded', 'cancelled') AND finished_at < $1)
             OR (state IN ('dead', 'expired') AND finished_at < $2))
           ORDER BY id LIMIT CAST($3 AS BIGINT))
         RETURNING id, state, tenant_id, queue, kind",
        "DELETE FROM jobs WHERE id IN (
           SELECT id FROM jobs WHERE id < $4 AND (
             (state IN ('succeeded', 'cancelled') AND finished_at < $1)
             OR (state IN ('dead', 'expired') AND finished_at < $2))
           ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING id, state::text AS state, tenant_id, queue, kind",
    ),
};

/// `$1` now (judged), `$2` bonus per minute, `$3` ceiling, `$4` limit.
const REPRIORITIZE: Sql = Sql::pair(
    "UPDATE jobs SET effective_priority = MAX(base_priority, MIN($3, base_priority + (($1 - fair_at) / 60000) * $2))
     WHERE id IN (SELECT id FROM jobs WHERE state = 'queued'
         AND effective_priority <> MAX(base_priority, MIN($3, base_priority + (($1 - fair_at) / 60000) * $2))
         LIMIT CAST($4 AS BIGINT))",
    concat!(
        "WITH t(now) AS (SELECT ",
        pg_judged!(1),
        ")
     UPDATE jobs SET effective_priority = GREATEST(base_priority, LEAST($3, base_priority + ((t.now - fair_at) / 60000) * $2))
     FROM t
     WHERE id IN (SELECT id FROM jobs, t WHERE state = 'queued'
         AND effective_priority <> GREATEST(base_priority, LEAST($3, base_priority + ((t.now - fair_at) / 60000) * $2))
         LIMIT $4 FOR UPDATE OF jobs SKIP LOCKED)"
    ),
);

/// Runs one sweep, fenced and audited in one transaction. `args` binds
/// the statement's arguments for the moment it runs at.
async fn run<'a, B: Backend>(
    b: &B,
    sweep: &Sweep,
    args: impl FnOnce(Stmt<'a>, At) -> Stmt<'a>,
    fence: Option<&Fence>,
) -> Result<Swept, StoreError> {
    let at = b.at();
    let op = sweep.action;
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, fence, op).await?;
    let rows = B::fetch_in(&mut tx, args(Stmt::new::<B>(sweep.sql), at))
        .await
        .op(op)?;
    let mut swept = Swept::default();
    for r in &rows {
        let id = r.id("id")?;
        let (state, queue) = (r.text("state")?, r.text("queue")?);
        match state.as_str() {
            "dead" => swept.dead.push(id),
            "queued" => swept.queued.push((r.id("tenant_id")?, queue.clone())),
            _ => {}
        }
        swept.moved.push((queue, r.text("kind")?, state));
        swept.ids.push(id);
    }
    swept.changed = swept.ids.len() as u64;
    if swept.changed > 0 {
        let event = sweep_event(&actor_for(fence), op, sweep.reason, &swept);
        audit_log::append::<B>(&mut tx, &[event], ms(at.now)).await?;
    }
    B::commit(tx, op).await?;
    Ok(swept)
}

/// Running jobs whose lease ran out at or after `counted_from` (ms):
/// re-queued, or dead with no attempts left.
pub(crate) async fn requeue_expired<B: Backend>(
    b: &B,
    limit: u32,
    counted_from: i64,
    fence: Option<&Fence>,
) -> Result<Swept, StoreError> {
    let args = |s: Stmt<'static>, at: At| s.arg(at.judged).arg(i64::from(limit)).arg(counted_from);
    run(b, &LEASE_EXPIRED, args, fence).await
}

/// A sweep whose only arguments are the judged time and the batch limit:
/// [`AGENT_OFFLINE`], [`DEADLINE_PASSED`], [`PROMOTED`],
/// [`APPROVAL_EXPIRED`].
pub(crate) async fn run_due<B: Backend>(
    b: &B,
    sweep: &Sweep,
    limit: u32,
    fence: Option<&Fence>,
) -> Result<Swept, StoreError> {
    let args = |s: Stmt<'static>, at: At| s.arg(at.judged).arg(i64::from(limit));
    run(b, sweep, args, fence).await
}

pub(crate) async fn time_out_running<B: Backend>(
    b: &B,
    limit: u32,
    fence: Option<&Fence>,
) -> Result<Swept, StoreError> {
    let (initial, cap) = b.options().retry_bounds_ms();
    let args =
        |s: Stmt<'static>, at: At| s.arg(at.judged).arg(i64::from(limit)).arg(initial).arg(cap);
    run(b, &TIMED_OUT, args, fence).await
}

/// The running jobs of a revoked agent, a batch of them, audited as the
/// operator who revoked it.
pub(crate) async fn reclaim_revoked<B: Backend>(
    b: &B,
    agent: homeostat_model::AgentId,
    limit: u32,
) -> Result<Swept, StoreError> {
    let args = move |s: Stmt<'static>, at: At| s.arg(at.judged).arg(i64::from(limit)).arg(agent);
    run(b, &AGENT_REVOKED, args, None).await
}

/// The running jobs an agent was leased that its new process does not
/// hold (`held`), a batch of them.
pub(crate) async fn reclaim_restarted<'a, B: Backend>(
    b: &B,
    agent: homeostat_model::AgentId,
    held: &'a [homeostat_model::Id],
    limit: u32,
) -> Result<Swept, StoreError> {
    let args =
        move |s: Stmt<'a>, at: At| s.arg(at.judged).arg(i64::from(limit)).arg(agent).arg(held);
    run(b, &AGENT_RESTARTED, args, None).await
}

/// Finished jobs are kept for days: the store's clock judges them.
pub(crate) async fn delete_finished_jobs<B: Backend>(
    b: &B,
    retention: JobRetention,
    limit: u32,
    fence: Option<&Fence>,
) -> Result<Swept, StoreError> {
    let args = |s: Stmt<'static>, at: At| {
        let now = ms(at.now);
        let oldest = now - dur_ms(retention.succeeded.min(retention.failed));
        s.arg(now - dur_ms(retention.succeeded))
            .arg(now - dur_ms(retention.failed))
            .arg(i64::from(limit))
            .arg(id_before(oldest))
    };
    // Outside the fenced transaction: forgetting old counts is the same
    // whoever does it, and twice is once.
    crate::tally::forget_old(b).await?;
    run(b, &DELETED, args, fence).await
}

pub(crate) async fn recompute_priorities<B: Backend>(
    b: &B,
    ageing: Ageing,
    limit: u32,
    fence: Option<&Fence>,
) -> Result<u64, StoreError> {
    let at = b.at();
    let Ageing {
        bonus_per_minute,
        cap,
    } = ageing;
    let op = AuditAction::JobsReprioritized.as_str();
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, fence, op).await?;
    let stmt = Stmt::new::<B>(REPRIORITIZE)
        .arg(at.judged)
        .arg(bonus_per_minute)
        .arg(cap)
        .arg(i64::from(limit));
    let changed = B::execute_in(&mut tx, stmt).await.op(op)?;
    if changed > 0 {
        let event = NewAuditEvent {
            actor: actor_for(fence),
            action: op.into(),
            subject: "jobs".into(),
            details: json!({"count": changed, "bonus_per_minute": bonus_per_minute, "cap": cap}),
        };
        audit_log::append::<B>(&mut tx, &[event], ms(at.now)).await?;
    }
    B::commit(tx, op).await?;
    Ok(changed)
}
