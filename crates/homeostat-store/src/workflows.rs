//! Workflows: steps that are jobs needing other steps (docs/workflows.md).
//!
//! A workflow is created in one transaction: its row, a job per step
//! (`pending` when it needs steps, else in the state its job asks), the
//! steps' conditions and counts, and the edges. From then on the database
//! moves it: the trigger of migrations `workflows` runs in the transaction
//! that finishes a step, whatever finishes it, and releases or skips the
//! steps whose last need that was. Here are creation, reading and cancel.

use std::collections::HashMap;

use homeostat_model::{
    AuditAction, JobId, JobState, MAX_NEEDS_RESULTS_BYTES, NeedOutcome, NewAuditEvent, NewWorkflow,
    StepCondition, StepContext, TenantId, ValidationError, Workflow, WorkflowId, WorkflowState,
    WorkflowStep, WorkflowSummary,
};
use serde_json::json;

use crate::audit_log;
use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::error::{Context, StoreError};
use crate::time::{dur_ms, ms, ts};

/// `$1` id, `$2` tenant, `$3` name, `$4` now.
const INSERT_WORKFLOW: Sql =
    Sql::both("INSERT INTO workflows (id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)");

/// `$1` the steps' jobs as a JSON array, `$2` tenant, `$3` now, `$4` the
/// workflow.
const INSERT_JOBS: Sql = Sql::pair(
    "INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, base_priority,
       effective_priority, state, max_attempts, timeout_ms, run_at, queued_at, fair_at,
       deadline_at, approval_expires_at, created_at, updated_at, workflow_id, needed, limit_keys,
       traceparent, root_step)
     SELECT value->>'id', $2, value->>'queue', value->>'kind', value->>'payload',
       value->>'priority', value->>'priority', value->>'priority', value->>'state',
       value->>'max_attempts', value->>'timeout_ms', value->>'run_at', value->>'run_at',
       value->>'run_at', value->>'deadline_at', value->>'approval', $3, $3, $4, value->>'needed',
       value->>'limit_keys', value->>'traceparent', value->>'root_step'
     FROM json_each($1)",
    "INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, base_priority,
       effective_priority, state, max_attempts, timeout_ms, run_at, queued_at, fair_at,
       deadline_at, approval_expires_at, created_at, updated_at, workflow_id, needed, limit_keys,
       traceparent, root_step, step)
     SELECT t.id, $2, t.queue, t.kind, t.payload, t.priority, t.priority, t.priority,
       t.state::job_state, t.max_attempts, t.timeout_ms, t.run_at, t.run_at, t.run_at,
       t.deadline_at, t.approval, $3, $3, $4, t.needed, t.limit_keys, t.traceparent, t.root_step,
       t.step
     FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, queue text, kind text, payload text,
       priority bigint, state text, max_attempts bigint, timeout_ms bigint, run_at bigint,
       deadline_at bigint, approval bigint, needed boolean, limit_keys text, traceparent text,
       root_step text, step text)",
);

/// `$1` the steps as a JSON array, `$2` the workflow, `$3` the default
/// deadline (ms after release).
const INSERT_STEPS: Sql = Sql::pair(
    "INSERT INTO workflow_steps (job_id, workflow_id, name, ord, cond, needs_left, deadline_ms)
     SELECT value->>'job_id', $2, value->>'name', value->>'ord', value->>'cond',
       value->>'needs_left', $3
     FROM json_each($1)",
    "INSERT INTO workflow_steps (job_id, workflow_id, name, ord, cond, needs_left, deadline_ms)
     SELECT t.job_id, $2, t.name, t.ord, t.cond, t.needs_left, $3
     FROM jsonb_to_recordset($1::jsonb) AS t(job_id uuid, name text, ord bigint, cond text,
       needs_left bigint)",
);

/// `$1` the edges as a JSON array.
const INSERT_NEEDS: Sql = Sql::pair(
    "INSERT INTO workflow_needs (job_id, parent_id)
     SELECT value->>'job_id', value->>'parent_id' FROM json_each($1)",
    "INSERT INTO workflow_needs (job_id, parent_id)
     SELECT t.job_id, t.parent_id FROM jsonb_to_recordset($1::jsonb) AS t(job_id uuid, parent_id uuid)",
);

const GET: Sql =
    Sql::both("SELECT id, tenant_id, name, created_at, cancelled_at FROM workflows WHERE id = $1");

const STEPS: Sql = Sql::pair(
    "SELECT s.name AS name, s.job_id AS job_id, j.state AS state, s.skipped AS skipped,
       s.cond AS cond
     FROM workflow_steps s JOIN jobs j ON j.id = s.job_id
     WHERE s.workflow_id = $1 ORDER BY s.ord",
    "SELECT s.name AS name, s.job_id AS job_id, j.state::text AS state, s.skipped AS skipped,
       s.cond AS cond
     FROM workflow_steps s JOIN jobs j ON j.id = s.job_id
     WHERE s.workflow_id = $1 ORDER BY s.ord",
);

const NEEDS: Sql = Sql::both(
    "SELECT c.name AS step, p.name AS need
     FROM workflow_steps c
     JOIN workflow_needs n ON n.job_id = c.job_id
     JOIN workflow_steps p ON p.job_id = n.parent_id
     WHERE c.workflow_id = $1 ORDER BY c.ord, p.ord",
);

/// `$1` workflow, `$2` now.
const MARK_CANCELLED: Sql =
    Sql::both("UPDATE workflows SET cancelled_at = COALESCE(cancelled_at, $2) WHERE id = $1");

/// `$1` workflow, `$2` now: every step not finished is cancelled (a running
/// one's agent hears of it at its next heartbeat, as for any job); their
/// queues and kinds.
const CANCEL_STEPS: Sql = Sql::both(
    "UPDATE jobs SET state = 'cancelled', finished_at = $2, updated_at = $2,
       last_error = 'cancelled with its workflow', lease_expires_at = NULL, timeout_at = NULL
     WHERE id IN (SELECT job_id FROM workflow_steps WHERE workflow_id = $1)
       AND state NOT IN ('succeeded', 'dead', 'cancelled', 'expired')
     RETURNING queue, kind",
);

/// `$1` workflow: the counts of its steps that did not finish well start
/// over, from their needs as they stand (a need that succeeded stays met).
const RESET_STEPS: Sql = Sql::both(
    "UPDATE workflow_steps SET skipped = false, not_succeeded = 0,
       needs_left = (SELECT COUNT(*) FROM workflow_needs n JOIN jobs p ON p.id = n.parent_id
                      WHERE n.job_id = workflow_steps.job_id AND p.state <> 'succeeded')
     WHERE workflow_id = $1 AND EXISTS (
       SELECT 1 FROM jobs j WHERE j.id = workflow_steps.job_id
         AND j.state IN ('dead', 'expired', 'cancelled'))",
);

/// `$1` workflow, `$2` now: its steps that did not finish well run again,
/// their attempts starting over; those whose needs are all met at once.
const RERUN_STEPS: Sql = Sql::pair(
    "UPDATE jobs SET
       state = CASE WHEN s.needs_left > 0 THEN 'pending'
                    WHEN jobs.approval_expires_at IS NOT NULL THEN 'awaiting_approval'
                    WHEN jobs.limit_keys IS NOT NULL THEN 'waiting'
                    ELSE 'queued' END,
       attempt = 0, finished_at = NULL, last_error = NULL, lease_agent = NULL,
       lease_expires_at = NULL, timeout_at = NULL, run_at = $2, queued_at = $2, fair_at = $2,
       updated_at = $2,
       deadline_at = CASE WHEN s.needs_left > 0 THEN NULL ELSE $2 + s.deadline_ms END
     FROM workflow_steps s
     WHERE s.job_id = jobs.id AND s.workflow_id = $1
       AND jobs.state IN ('dead', 'expired', 'cancelled')
     RETURNING jobs.tenant_id AS tenant_id, jobs.queue AS queue, jobs.state AS state",
    "UPDATE jobs SET
       state = CASE WHEN s.needs_left > 0 THEN 'pending'::job_state
                    WHEN jobs.approval_expires_at IS NOT NULL THEN 'awaiting_approval'::job_state
                    WHEN jobs.limit_keys IS NOT NULL THEN 'waiting'::job_state
                    ELSE 'queued'::job_state END,
       attempt = 0, finished_at = NULL, last_error = NULL, lease_agent = NULL,
       lease_expires_at = NULL, timeout_at = NULL, run_at = $2, queued_at = $2, fair_at = $2,
       updated_at = $2, step_context = NULL,
       deadline_at = CASE WHEN s.needs_left > 0 THEN NULL ELSE $2 + s.deadline_ms END
     FROM workflow_steps s
     WHERE s.job_id = jobs.id AND s.workflow_id = $1
       AND jobs.state IN ('dead', 'expired', 'cancelled')
     RETURNING jobs.tenant_id AS tenant_id, jobs.queue AS queue, jobs.state::text AS state",
);

const UNCANCEL: Sql = Sql::both("UPDATE workflows SET cancelled_at = NULL WHERE id = $1");

/// `$1` jobs just finished: their dependents queued now, by tenant and
/// queue.
const RELEASED: Sql = Sql::pair(
    "SELECT j.tenant_id AS tenant_id, j.queue AS queue, COUNT(*) AS n
     FROM workflow_needs n JOIN jobs j ON j.id = n.job_id
     WHERE n.parent_id IN (SELECT value FROM json_each($1)) AND j.state = 'queued'
     GROUP BY j.tenant_id, j.queue",
    "SELECT j.tenant_id AS tenant_id, j.queue AS queue, COUNT(*) AS n
     FROM workflow_needs n JOIN jobs j ON j.id = n.job_id
     WHERE n.parent_id = ANY($1) AND j.state = 'queued'
     GROUP BY j.tenant_id, j.queue",
);

/// `$1` claimed steps: each one's name, and how each of its needs ended
/// (a row per need, in submitted order; one row with no need for a step
/// that has none).
const CONTEXTS: Sql = Sql::pair(
    "SELECT s.job_id AS job_id, s.name AS name, ps.name AS need, p.state AS state,
       ps.skipped AS skipped, p.result AS result
     FROM workflow_steps s
     LEFT JOIN workflow_needs n ON n.job_id = s.job_id
     LEFT JOIN workflow_steps ps ON ps.job_id = n.parent_id
     LEFT JOIN jobs p ON p.id = n.parent_id
     WHERE s.job_id IN (SELECT value FROM json_each($1))
     ORDER BY s.job_id, ps.ord",
    "SELECT s.job_id AS job_id, s.name AS name, ps.name AS need, p.state::text AS state,
       ps.skipped AS skipped, p.result AS result
     FROM workflow_steps s
     LEFT JOIN workflow_needs n ON n.job_id = s.job_id
     LEFT JOIN workflow_steps ps ON ps.job_id = n.parent_id
     LEFT JOIN jobs p ON p.id = n.parent_id
     WHERE s.job_id = ANY($1)
     ORDER BY s.job_id, ps.ord",
);

/// `$1` tenant or NULL, `$2` before this id or NULL, `$3` how many: newest
/// first, each with its steps counted by how they stand.
const LIST: Sql = Sql::pair(
    "SELECT w.id AS id, w.tenant_id AS tenant_id, w.name AS name, w.created_at AS created_at,
       w.cancelled_at AS cancelled_at, COUNT(*) AS steps,
       SUM(CASE WHEN j.state IN ('succeeded', 'dead', 'cancelled', 'expired') THEN 0 ELSE 1 END)
         AS unfinished,
       SUM(CASE WHEN j.state IN ('dead', 'expired') OR (j.state = 'cancelled' AND NOT s.skipped)
         THEN 1 ELSE 0 END) AS failed
     FROM workflows w
     JOIN workflow_steps s ON s.workflow_id = w.id
     JOIN jobs j ON j.id = s.job_id
     WHERE w.id IN (SELECT id FROM workflows WHERE ($1 IS NULL OR tenant_id = $1)
                      AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT CAST($3 AS BIGINT))
     GROUP BY w.id ORDER BY w.id DESC",
    "SELECT w.id AS id, w.tenant_id AS tenant_id, w.name AS name, w.created_at AS created_at,
       w.cancelled_at AS cancelled_at, COUNT(*) AS steps,
       SUM(CASE WHEN j.state IN ('succeeded', 'dead', 'cancelled', 'expired') THEN 0 ELSE 1 END)
         AS unfinished,
       SUM(CASE WHEN j.state IN ('dead', 'expired') OR (j.state = 'cancelled' AND NOT s.skipped)
         THEN 1 ELSE 0 END) AS failed
     FROM workflows w
     JOIN workflow_steps s ON s.workflow_id = w.id
     JOIN jobs j ON j.id = s.job_id
     WHERE w.id IN (SELECT id FROM workflows WHERE ($1::uuid IS NULL OR tenant_id = $1)
                      AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3)
     GROUP BY w.id ORDER BY w.id DESC",
);

/// `$1` how many: steps still pending though every need has finished (or
/// is gone): what the trigger should have released or skipped.
const STRAGGLERS: Sql = Sql::both(
    "SELECT s.job_id AS job_id, s.name AS name, s.workflow_id AS workflow_id
     FROM workflow_steps s JOIN jobs j ON j.id = s.job_id
     WHERE j.state = 'pending' AND NOT EXISTS (
       SELECT 1 FROM workflow_needs n JOIN jobs p ON p.id = n.parent_id
       WHERE n.job_id = s.job_id AND p.state NOT IN ('succeeded', 'dead', 'cancelled', 'expired'))
     ORDER BY s.job_id LIMIT CAST($1 AS BIGINT)",
);

/// The count of a step's needs that did not succeed (a need gone counts:
/// nothing says it did).
macro_rules! not_succeeded {
    () => {
        "(SELECT COUNT(*) FROM workflow_needs n LEFT JOIN jobs p ON p.id = n.parent_id
           WHERE n.job_id = workflow_steps.job_id AND (p.state IS NULL OR p.state <> 'succeeded'))"
    };
}

/// `$1` stragglers: their counts from their needs as they stand.
const RECOUNT: Sql = Sql::pair(
    concat!(
        "UPDATE workflow_steps SET needs_left = 0, not_succeeded = ",
        not_succeeded!(),
        ", skipped = NOT (cond = 'always' OR (cond = 'on_success' AND ",
        not_succeeded!(),
        " = 0) OR (cond = 'on_failure' AND ",
        not_succeeded!(),
        " > 0)) WHERE job_id IN (SELECT value FROM json_each($1))"
    ),
    concat!(
        "UPDATE workflow_steps SET needs_left = 0, not_succeeded = ",
        not_succeeded!(),
        ", skipped = NOT (cond = 'always' OR (cond = 'on_success' AND ",
        not_succeeded!(),
        " = 0) OR (cond = 'on_failure' AND ",
        not_succeeded!(),
        " > 0)) WHERE job_id = ANY($1)"
    ),
);

/// What a step's job becomes when its last need finishes at `$now` (a
/// parameter), on PostgreSQL: the job's row is `jobs`, its step's moved
/// row `s` (`skipped` says whether its condition failed). The trigger of
/// migration `workflows` writes the same.
macro_rules! pg_release_set {
    ($now:literal) => {
        concat!(
            "state = CASE WHEN s.skipped THEN 'cancelled'::job_state
                WHEN jobs.approval_expires_at IS NOT NULL THEN 'awaiting_approval'::job_state
                WHEN jobs.run_at > ",
            $now,
            " THEN 'scheduled'::job_state
                WHEN jobs.limit_keys IS NOT NULL THEN 'waiting'::job_state
                ELSE 'queued'::job_state END,
             queued_at = GREATEST(jobs.run_at, ",
            $now,
            "),
             fair_at = GREATEST(jobs.run_at, ",
            $now,
            "),
             deadline_at = CASE WHEN s.skipped THEN jobs.deadline_at
                ELSE COALESCE(jobs.deadline_at, GREATEST(jobs.run_at, ",
            $now,
            ") + s.deadline_ms) END,
             finished_at = CASE WHEN s.skipped THEN ",
            $now,
            " END,
             last_error = CASE WHEN s.skipped
                THEN 'skipped: its condition (' || s.cond || ') did not hold' END,
             updated_at = ",
            $now
        )
    };
}

#[cfg(feature = "postgres")]
pub(crate) use pg_release_set;

/// `$1` stragglers, `$2` now: released or skipped, as the trigger does.
const RELEASE: Sql = Sql::pair(
    "UPDATE jobs
       SET state = CASE WHEN s.skipped THEN 'cancelled'
                        WHEN jobs.approval_expires_at IS NOT NULL THEN 'awaiting_approval'
                        WHEN jobs.run_at > $2 THEN 'scheduled'
                        WHEN jobs.limit_keys IS NOT NULL THEN 'waiting'
                        ELSE 'queued' END,
           queued_at = MAX(jobs.run_at, $2), fair_at = MAX(jobs.run_at, $2),
           deadline_at = CASE WHEN s.skipped THEN jobs.deadline_at
                              ELSE COALESCE(jobs.deadline_at, MAX(jobs.run_at, $2) + s.deadline_ms) END,
           finished_at = CASE WHEN s.skipped THEN $2 END,
           last_error = CASE WHEN s.skipped THEN 'skipped: its condition (' || s.cond || ') did not hold' END,
           updated_at = $2
      FROM workflow_steps s
     WHERE s.job_id = jobs.id AND jobs.state = 'pending'
       AND jobs.id IN (SELECT value FROM json_each($1))
     RETURNING jobs.tenant_id AS tenant_id, jobs.queue AS queue, jobs.state AS state",
    concat!(
        "UPDATE jobs SET ",
        pg_release_set!("$2"),
        "
      FROM workflow_steps s
     WHERE s.job_id = jobs.id AND jobs.state = 'pending' AND jobs.id = ANY($1)
     RETURNING jobs.tenant_id AS tenant_id, jobs.queue AS queue, jobs.state::text AS state"
    ),
);

/// `$1` the adding step: whether it runs under `$2` agent's `$3` lease,
/// and its workflow (locked on PostgreSQL, so it cannot finish meanwhile).
const ADDER: Sql = Sql::pair(
    "SELECT j.tenant_id AS tenant_id, s.workflow_id AS workflow_id
     FROM jobs j JOIN workflow_steps s ON s.job_id = j.id
     WHERE j.id = $1 AND j.state = 'running' AND j.lease_agent = $2 AND j.lease_token = $3",
    "SELECT j.tenant_id AS tenant_id, s.workflow_id AS workflow_id
     FROM jobs j JOIN workflow_steps s ON s.job_id = j.id
     WHERE j.id = $1 AND j.state = 'running' AND j.lease_agent = $2 AND j.lease_token = $3
     FOR UPDATE OF j",
);

const TENANT_OF: Sql = Sql::both("SELECT tenant_id FROM jobs WHERE id = $1");

/// `$1` workflow: every step's name.
const NAMES: Sql = Sql::both("SELECT name FROM workflow_steps WHERE workflow_id = $1");

/// The needs one addition of steps may create for the adding step's
/// dependents (each needs each new step): 100 dependents of 1,000 steps.
const MAX_ADDED_NEEDS: u64 = 100_000;

/// `$1` the adding step, `$2` how many steps it adds: the steps that need
/// it wait for them too.
const WAIT_MORE: Sql = Sql::both(
    "UPDATE workflow_steps SET needs_left = needs_left + $2
     WHERE job_id IN (SELECT job_id FROM workflow_needs WHERE parent_id = $1)",
);

/// `$1` the adding step, `$2` the new steps: the edges from its dependents.
const MORE_NEEDS: Sql = Sql::pair(
    "INSERT INTO workflow_needs (job_id, parent_id)
     SELECT n.job_id, v.value FROM workflow_needs n, json_each($2) v WHERE n.parent_id = $1",
    "INSERT INTO workflow_needs (job_id, parent_id)
     SELECT n.job_id, v FROM workflow_needs n, UNNEST((SELECT $2::uuid[])) v WHERE n.parent_id = $1",
);

/// `$1` jobs others now need.
const NEEDED: Sql = Sql::pair(
    "UPDATE jobs SET needed = 1 WHERE id IN (SELECT value FROM json_each($1))",
    "UPDATE jobs SET needed = true WHERE id = ANY($1)",
);

const STEP_OF: Sql = Sql::both("SELECT workflow_id, name FROM workflow_steps WHERE job_id = $1");

const ANY_WORKFLOW: Sql = Sql::both("SELECT 1 AS one FROM workflows LIMIT 1");

/// `$1` a workflow: the queue of each step a retry would run again.
const RERUN: Sql = Sql::both(
    "SELECT j.queue AS queue FROM workflow_steps s JOIN jobs j ON j.id = s.job_id
     WHERE s.workflow_id = $1 AND j.state IN ('dead', 'expired', 'cancelled')",
);

/// What a new workflow queued at once, for the claims that wait: per
/// queue, how many.
pub(crate) type Queued = Vec<(String, u32)>;

/// A page of workflows, newest first (`tenant`'s alone, if named).
pub(crate) async fn list<B: Backend>(
    b: &B,
    tenant: Option<TenantId>,
    after: Option<WorkflowId>,
    limit: u32,
) -> Result<homeostat_model::Page<WorkflowSummary, WorkflowId>, StoreError> {
    let op = "listing workflows";
    let rows = b
        .fetch(
            Stmt::new::<B>(LIST)
                .arg(tenant)
                .arg(after)
                .arg(i64::from(limit)),
        )
        .await
        .op(op)?;
    let items = rows
        .iter()
        .map(|r| {
            let unfinished: u32 = r.num("unfinished")?;
            let state = if r.opt_int("cancelled_at")?.is_some() {
                WorkflowState::Cancelled
            } else if unfinished > 0 {
                WorkflowState::Running
            } else if r.int("failed")? > 0 {
                WorkflowState::Failed
            } else {
                WorkflowState::Succeeded
            };
            Ok(WorkflowSummary {
                id: r.id("id")?,
                tenant_id: r.id("tenant_id")?,
                name: r.text("name")?,
                state,
                steps: r.num("steps")?,
                unfinished,
                created_at: ts(r.int("created_at")?),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|w| w.id))
        .flatten();
    Ok(homeostat_model::Page { items, next_cursor })
}

/// Of the steps a statement moved (`tenant_id`, `queue`, `state`), those
/// it queued, by tenant and queue: the claims to wake.
fn queued_of<R: RowExt>(rows: &[R]) -> Result<Vec<(TenantId, String, u32)>, StoreError> {
    let mut queued: HashMap<(TenantId, String), u32> = HashMap::new();
    for r in rows {
        if r.text("state")? == "queued" {
            *queued
                .entry((r.id("tenant_id")?, r.text("queue")?))
                .or_insert(0) += 1;
        }
    }
    Ok(queued.into_iter().map(|((t, q), n)| (t, q, n)).collect())
}

/// A step left pending with every need finished.
#[derive(Debug, Clone)]
pub struct Straggler {
    /// Its job.
    pub job_id: JobId,
    /// Its name.
    pub name: String,
    /// Its workflow.
    pub workflow_id: WorkflowId,
}

/// Up to `limit` steps the trigger left pending though every need has
/// finished (what a repair would release or skip).
pub(crate) async fn stragglers<B: Backend>(
    b: &B,
    limit: u32,
) -> Result<Vec<Straggler>, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(STRAGGLERS).arg(i64::from(limit)))
        .await
        .op("looking for pending workflow steps")?;
    rows.iter()
        .map(|r| {
            Ok(Straggler {
                job_id: r.id("job_id")?,
                name: r.text("name")?,
                workflow_id: r.id("workflow_id")?,
            })
        })
        .collect()
}

/// Releases or skips up to `limit` stragglers, fenced and audited; what
/// was queued, by tenant and queue, and how many were repaired.
pub(crate) async fn repair<B: Backend>(
    b: &B,
    limit: u32,
    fence: Option<&homeostat_runtime::Fence>,
    actor: &str,
) -> Result<(Vec<(TenantId, String, u32)>, usize), StoreError> {
    let op = "repairing workflows";
    let found = stragglers(b, limit).await?;
    if found.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let ids: Vec<homeostat_model::Id> = found.iter().map(|s| s.job_id.as_uuid()).collect();
    let now = ms(b.now());
    let mut tx = b.begin(op).await?;
    crate::leases::check_fence::<B>(&mut tx, fence, op).await?;
    B::execute_in(&mut tx, Stmt::new::<B>(RECOUNT).arg(ids.as_slice()))
        .await
        .op(op)?;
    let rows = B::fetch_in(
        &mut tx,
        Stmt::new::<B>(RELEASE).arg(ids.as_slice()).arg(now),
    )
    .await
    .op(op)?;
    let queued = queued_of(&rows)?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::WorkflowsRepaired.into(),
        subject: "workflows".into(),
        details: json!({"steps": found.iter().map(|s| json!({
            "workflow_id": s.workflow_id, "step": s.name, "job_id": s.job_id,
        })).collect::<Vec<_>>()}),
    };
    audit_log::append::<B>(&mut tx, &[event], now).await?;
    B::commit(tx, op).await?;
    Ok((queued, rows.len()))
}

/// The workflow and step a job is, if it is one.
pub(crate) async fn step_of<B: Backend>(
    b: &B,
    job: JobId,
) -> Result<Option<(WorkflowId, String)>, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(STEP_OF).arg(job))
        .await
        .op("reading a job's workflow step")?;
    rows.first()
        .map(|r| Ok((r.id("workflow_id")?, r.text("name")?)))
        .transpose()
}

/// The queue of each step a retry of `id` would run again (what did not
/// finish well), for the tenant's quotas to weigh before it does.
pub(crate) async fn rerun_queues<B: Backend>(
    b: &B,
    id: WorkflowId,
) -> Result<Vec<String>, StoreError> {
    b.fetch(Stmt::new::<B>(RERUN).arg(id))
        .await
        .op("reading what a workflow's retry would run")?
        .iter()
        .map(|r| r.text("queue"))
        .collect()
}

/// Whether any workflow exists.
pub(crate) async fn any<B: Backend>(b: &B) -> Result<bool, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(ANY_WORKFLOW))
        .await
        .op("looking for workflows")?;
    Ok(!rows.is_empty())
}

/// The steps that `finished` released into their queues (they may have
/// been claimed since), by tenant and queue.
pub(crate) async fn released<B: Backend>(
    b: &B,
    finished: &[homeostat_model::Id],
) -> Result<Vec<(TenantId, String, u32)>, StoreError> {
    let op = "looking for released workflow steps";
    let rows = b
        .fetch(Stmt::new::<B>(RELEASED).arg(finished))
        .await
        .op(op)?;
    rows.iter()
        .map(|r| Ok((r.id("tenant_id")?, r.text("queue")?, r.num("n")?)))
        .collect()
}

/// What a claim knows of a step from its job's row: its workflow, and its
/// name if it needs no other step (`jobs.root_step`: then that is all
/// there is to know). [`fill_contexts`] reads the rest for the others.
pub(crate) fn context_of(workflow_id: WorkflowId, root_step: Option<String>) -> StepContext {
    StepContext {
        workflow_id,
        step: root_step.unwrap_or_default(),
        succeeded: 0,
        not_succeeded: 0,
        needs: std::collections::BTreeMap::new(),
        truncated: false,
    }
}

/// A step's context as the completion that released it wrote it
/// (`jobs.step_context` on PostgreSQL): its name, and each need — all
/// succeeded, their results within [`MAX_NEEDS_RESULTS_BYTES`] — as a pair
/// of its name and its result's JSON text.
#[cfg(feature = "postgres")]
pub(crate) fn written_context(
    workflow_id: WorkflowId,
    written: &str,
) -> Result<StepContext, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Written {
        step: String,
        needs: Vec<(String, Option<String>)>,
    }
    let Written { step, needs } = serde_json::from_str(written)?;
    let succeeded = u32::try_from(needs.len()).unwrap_or(u32::MAX);
    let needs = needs
        .into_iter()
        .map(|(name, result)| {
            let result = result.map(|r| serde_json::from_str(&r)).transpose()?;
            let outcome = NeedOutcome {
                state: JobState::Succeeded,
                skipped: false,
                result,
            };
            Ok((name, outcome))
        })
        .collect::<Result<_, serde_json::Error>>()?;
    Ok(StepContext {
        workflow_id,
        step,
        succeeded,
        not_succeeded: 0,
        needs,
        truncated: false,
    })
}

/// Fills in the claimed workflow steps' names and how their needs ended,
/// their results up to [`MAX_NEEDS_RESULTS_BYTES`] a step: one read, only
/// when a claim took a step whose row holds neither its whole context
/// (`written_context`, on PostgreSQL) nor the name of a step that needs nothing (a
/// sixth of such a step's cost was this read).
pub(crate) async fn fill_contexts<B: Backend>(
    b: &B,
    claimed: &mut [homeostat_model::ClaimedJob],
) -> Result<(), StoreError> {
    let ids: Vec<homeostat_model::Id> = claimed
        .iter()
        .filter(|c| c.workflow.as_ref().is_some_and(|w| w.step.is_empty()))
        .map(|c| c.id.as_uuid())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let op = "reading claimed workflow steps";
    let mut by_id: HashMap<JobId, &mut StepContext> = claimed
        .iter_mut()
        .filter_map(|c| Some((c.id, c.workflow.as_mut()?)))
        .collect();
    let mut used: HashMap<JobId, usize> = HashMap::new();
    for r in b
        .fetch(Stmt::new::<B>(CONTEXTS).arg(ids.as_slice()))
        .await
        .op(op)?
    {
        let job: JobId = r.id("job_id")?;
        let Some(ctx) = by_id.get_mut(&job) else {
            continue;
        };
        if ctx.step.is_empty() {
            ctx.step = r.text("name")?;
        }
        let Some(need) = r.opt_text("need")? else {
            continue;
        };
        let state: JobState = r
            .text("state")?
            .parse()
            .map_err(|e| crate::error::corrupt(op, e))?;
        if state == JobState::Succeeded {
            ctx.succeeded += 1;
        } else {
            ctx.not_succeeded += 1;
        }
        let result = r.opt_text("result")?;
        let size = used.entry(job).or_insert(0);
        *size += result.as_ref().map_or(0, String::len);
        if *size > MAX_NEEDS_RESULTS_BYTES {
            ctx.truncated = true;
            continue;
        }
        let result = result
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| crate::error::corrupt(op, e))?;
        ctx.needs.insert(
            need,
            NeedOutcome {
                state,
                skipped: r.flag("skipped")?,
                result,
            },
        );
    }
    Ok(())
}

/// The rows that store new steps — their jobs, the steps themselves and
/// their edges, as JSON arrays for `INSERT_JOBS`, `INSERT_STEPS` and
/// `INSERT_NEEDS` — and what they queue at once, by queue.
struct StepRows<'a> {
    jobs: String,
    steps: String,
    needs: String,
    queued: HashMap<&'a str, u32>,
}

impl<'a> StepRows<'a> {
    /// `steps` with the ids `ids`, ordered from `first_ord`; a need names
    /// a step of `parents`; `needed` says whether others need a step. A
    /// step with needs starts pending, and its start-by deadline (unless
    /// its job sets one) runs from its release.
    fn new(
        steps: &'a [homeostat_model::NewStep],
        ids: &[JobId],
        first_ord: i64,
        parents: &HashMap<&str, JobId>,
        needed: impl Fn(&str) -> bool,
        now: jiff::Timestamp,
        default_deadline: i64,
    ) -> Self {
        let now_ms = ms(now);
        let (mut jobs, mut rows, mut needs) = (Vec::new(), Vec::new(), Vec::new());
        let mut queued: HashMap<&str, u32> = HashMap::new();
        for ((step, id), ord) in steps.iter().zip(ids).zip(first_ord..) {
            let job = &step.job;
            let run_at = job.run_at.map_or(now_ms, ms).max(now_ms);
            let state = if step.needs.is_empty() {
                job.initial_state(now)
            } else {
                JobState::Pending
            };
            if state == JobState::Queued {
                *queued.entry(job.queue.as_str()).or_insert(0) += 1;
            }
            let deadline = job
                .deadline
                .map(ms)
                .or_else(|| (state != JobState::Pending).then_some(run_at + default_deadline));
            jobs.push(json!({
                "id": id.to_string(),
                "queue": job.queue,
                "kind": job.kind,
                "payload": job.payload.to_string(),
                "priority": job.priority,
                "state": state.as_str(),
                "max_attempts": job.max_attempts(),
                "timeout_ms": dur_ms(job.timeout()),
                "run_at": run_at,
                "deadline_at": deadline,
                "approval": job.approval_expires_at.map(ms),
                // NULL, not false, for a leaf: as for every other job.
                "needed": needed(&step.name).then_some(true),
                "limit_keys": crate::limits::stored_keys(job),
                "traceparent": job.traceparent,
                "root_step": step.needs.is_empty().then_some(&step.name),
                "step": step.name,
            }));
            rows.push(json!({
                "job_id": id.to_string(),
                "name": step.name,
                "ord": ord,
                "cond": step.when.as_str(),
                "needs_left": step.needs.len(),
            }));
            for need in &step.needs {
                needs.push(json!({
                    "job_id": id.to_string(),
                    "parent_id": parents[need.as_str()].to_string(),
                }));
            }
        }
        Self {
            jobs: serde_json::Value::Array(jobs).to_string(),
            steps: serde_json::Value::Array(rows).to_string(),
            needs: serde_json::Value::Array(needs).to_string(),
            queued,
        }
    }

    /// Inserts them into `workflow` of `tenant`.
    async fn insert<B: Backend>(
        &self,
        tx: &mut B::Tx,
        tenant: TenantId,
        workflow: WorkflowId,
        now_ms: i64,
        default_deadline: i64,
        op: &'static str,
    ) -> Result<(), StoreError> {
        let stmts = [
            Stmt::new::<B>(INSERT_JOBS)
                .arg(self.jobs.as_str())
                .arg(tenant)
                .arg(now_ms)
                .arg(workflow),
            Stmt::new::<B>(INSERT_STEPS)
                .arg(self.steps.as_str())
                .arg(workflow)
                .arg(default_deadline),
            Stmt::new::<B>(INSERT_NEEDS).arg(self.needs.as_str()),
        ];
        for stmt in stmts {
            B::execute_in(tx, stmt).await.op(op)?;
        }
        Ok(())
    }

    /// What they queued at once, by queue.
    fn queued(&self) -> Queued {
        self.queued
            .iter()
            .map(|(q, n)| ((*q).to_owned(), *n))
            .collect()
    }
}

/// The tenant of job `id`, if it exists.
pub(crate) async fn tenant_of<B: Backend>(
    b: &B,
    id: JobId,
) -> Result<Option<TenantId>, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(TENANT_OF).arg(id))
        .await
        .op("reading a job's tenant")?;
    rows.first().map(|r| r.id("tenant_id")).transpose()
}

/// Adds `steps` to the workflow of `adder`, a step `agent` runs under
/// `lease_token` (fan-out at run time). The new steps may need `adder`
/// and one another; the steps that need `adder` wait for them too.
pub(crate) async fn add_steps<B: Backend>(
    b: &B,
    agent: homeostat_model::AgentId,
    adder: JobId,
    lease_token: i64,
    steps: &[homeostat_model::NewStep],
    actor: &str,
) -> Result<(Workflow, Queued, TenantId), StoreError> {
    let op = "adding workflow steps";
    if steps.is_empty() || steps.len() > 1000 {
        return Err(ValidationError::new("steps", "1 to 1,000 steps may be added at once").into());
    }
    let mut tx = b.begin(op).await?;
    let rows = B::fetch_in(
        &mut tx,
        Stmt::new::<B>(ADDER).arg(adder).arg(agent).arg(lease_token),
    )
    .await
    .op(op)?;
    let Some(row) = rows.first() else {
        return Err(StoreError::StaleLease {
            operation: op,
            job: adder,
            token: lease_token,
        });
    };
    let tenant: TenantId = row.id("tenant_id")?;
    let workflow: WorkflowId = row.id("workflow_id")?;
    let existing: std::collections::HashSet<String> =
        B::fetch_in(&mut tx, Stmt::new::<B>(NAMES).arg(workflow))
            .await
            .op(op)?
            .iter()
            .map(|r| r.text("name"))
            .collect::<Result<_, _>>()?;
    let adder_name = B::fetch_in(&mut tx, Stmt::new::<B>(STEP_OF).arg(adder))
        .await
        .op(op)?
        .first()
        .map(|r| r.text("name"))
        .transpose()?
        .unwrap_or_default();
    // The new steps on their own: names, jobs, and their graph among
    // themselves (a need on the adding step is set aside here).
    let own = NewWorkflow {
        name: "added".into(),
        steps: steps
            .iter()
            .map(|s| homeostat_model::NewStep {
                needs: s
                    .needs
                    .iter()
                    .filter(|n| **n != adder_name)
                    .cloned()
                    .collect(),
                ..s.clone()
            })
            .collect(),
    };
    // A workflow grown at run time keeps the bound a submitted one has.
    if existing.len() + steps.len() > homeostat_model::MAX_STEPS {
        return Err(ValidationError::new(
            "steps",
            format!(
                "the workflow has {} steps; with {} more it would pass the {} a workflow may have",
                existing.len(),
                steps.len(),
                homeostat_model::MAX_STEPS
            ),
        )
        .into());
    }
    for s in steps {
        if existing.contains(&s.name) {
            return Err(ValidationError::new(
                "steps",
                format!("step {:?} is already a step of the workflow", s.name),
            )
            .into());
        }
        if s.job.fingerprint.is_some() {
            return Err(ValidationError::new(
                "steps",
                format!("step {:?}: a step's job cannot have a fingerprint", s.name),
            )
            .into());
        }
        if let Some(n) = s
            .needs
            .iter()
            .find(|n| **n != adder_name && existing.contains(n.as_str()))
        {
            return Err(ValidationError::new(
                "steps",
                format!(
                    "step {:?} needs {n:?}: a step added at run time may need only the step that adds it ({adder_name:?}) and the steps added with it",
                    s.name
                ),
            )
            .into());
        }
    }
    own.validate()?;
    let now = b.now();
    let now_ms = ms(now);
    let ids: Vec<JobId> = homeostat_model::ids_at(now, steps.len())
        .map(JobId::from)
        .collect();
    let mut by_name: HashMap<&str, JobId> = steps
        .iter()
        .zip(&ids)
        .map(|(s, id)| (s.name.as_str(), *id))
        .collect();
    by_name.insert(adder_name.as_str(), adder);
    let default_deadline = dur_ms(b.options().default_queue_deadline);
    // The adding step's dependents wait for every new step.
    let rows = StepRows::new(
        steps,
        &ids,
        i64::try_from(existing.len()).unwrap_or(i64::MAX),
        &by_name,
        |_| true,
        now,
        default_deadline,
    );
    // Its dependents first, while the only edges from the adding step are
    // theirs.
    let new_ids: Vec<homeostat_model::Id> = ids.iter().map(|i| i.as_uuid()).collect();
    let added = i64::try_from(steps.len()).unwrap_or(i64::MAX);
    let dependents = B::execute_in(&mut tx, Stmt::new::<B>(WAIT_MORE).arg(adder).arg(added))
        .await
        .op(op)?;
    // Each dependent needs each new step: a few new steps from a step many
    // others need would write an edge per pair, far more than the request
    // names. Refused (the transaction rolls back) past the bound.
    let edges = dependents.saturating_mul(steps.len() as u64);
    if edges > MAX_ADDED_NEEDS {
        return Err(ValidationError::new(
            "steps",
            format!(
                "{} steps added by {adder_name:?}, which {dependents} steps need, would add {edges} needs; at most {MAX_ADDED_NEEDS} at once",
                steps.len()
            ),
        )
        .into());
    }
    B::execute_in(
        &mut tx,
        Stmt::new::<B>(MORE_NEEDS)
            .arg(adder)
            .arg(new_ids.as_slice()),
    )
    .await
    .op(op)?;
    rows.insert::<B>(&mut tx, tenant, workflow, now_ms, default_deadline, op)
        .await?;
    if steps.iter().any(|s| s.needs.contains(&adder_name)) {
        let adder_id = [adder.as_uuid()];
        B::execute_in(&mut tx, Stmt::new::<B>(NEEDED).arg(adder_id.as_slice()))
            .await
            .op(op)?;
    }
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::WorkflowStepsAdded.into(),
        subject: format!("workflow:{workflow}"),
        details: json!({"by": adder_name, "steps": steps.iter().map(|s| &s.name).collect::<Vec<_>>()}),
    };
    audit_log::append::<B>(&mut tx, &[event], now_ms).await?;
    B::commit(tx, op).await?;
    Ok((get(b, workflow).await?, rows.queued(), tenant))
}

/// Creates `wf` for `tenant`: every step or none.
pub(crate) async fn create<B: Backend>(
    b: &B,
    tenant: TenantId,
    wf: &NewWorkflow,
    actor: &str,
) -> Result<(Workflow, Queued), StoreError> {
    wf.validate()?;
    for step in &wf.steps {
        // A fingerprint could fold a step into another live job.
        if step.job.fingerprint.is_some() {
            return Err(ValidationError::new(
                "steps",
                format!(
                    "step {:?}: a step's job cannot have a fingerprint",
                    step.name
                ),
            )
            .into());
        }
    }
    let op = "submitting a workflow";
    let now = b.now();
    let now_ms = ms(now);
    let id = WorkflowId::from(homeostat_model::id_at(now));
    let ids: Vec<JobId> = homeostat_model::ids_at(now, wf.steps.len())
        .map(JobId::from)
        .collect();
    let by_name: HashMap<&str, JobId> = wf
        .steps
        .iter()
        .zip(&ids)
        .map(|(s, id)| (s.name.as_str(), *id))
        .collect();
    let default_deadline = dur_ms(b.options().default_queue_deadline);
    let needed: std::collections::HashSet<&str> = wf
        .steps
        .iter()
        .flat_map(|s| s.needs.iter().map(String::as_str))
        .collect();
    let rows = StepRows::new(
        &wf.steps,
        &ids,
        0,
        &by_name,
        |name| needed.contains(name),
        now,
        default_deadline,
    );
    let mut tx = b.begin(op).await?;
    B::execute_in(
        &mut tx,
        Stmt::new::<B>(INSERT_WORKFLOW)
            .arg(id)
            .arg(tenant)
            .arg(wf.name.as_str())
            .arg(now_ms),
    )
    .await
    .op(op)?;
    rows.insert::<B>(&mut tx, tenant, id, now_ms, default_deadline, op)
        .await?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::WorkflowSubmitted.into(),
        subject: format!("workflow:{id}"),
        details: json!({"name": wf.name, "tenant_id": tenant, "steps": wf.steps.len()}),
    };
    audit_log::append::<B>(&mut tx, &[event], now_ms).await?;
    B::commit(tx, op).await?;
    Ok((get(b, id).await?, rows.queued()))
}

/// One workflow, with its steps in the order they were submitted.
pub(crate) async fn get<B: Backend>(b: &B, id: WorkflowId) -> Result<Workflow, StoreError> {
    let op = "reading a workflow";
    let rows = b.fetch(Stmt::new::<B>(GET).arg(id)).await.op(op)?;
    let row = rows.first().ok_or_else(|| StoreError::NotFound {
        entity: "workflow",
        id: id.to_string(),
    })?;
    let cancelled_at = row.opt_int("cancelled_at")?;
    let mut needs: HashMap<String, Vec<String>> = HashMap::new();
    for r in b.fetch(Stmt::new::<B>(NEEDS).arg(id)).await.op(op)? {
        needs
            .entry(r.text("step")?)
            .or_default()
            .push(r.text("need")?);
    }
    let mut steps = Vec::new();
    for r in b.fetch(Stmt::new::<B>(STEPS).arg(id)).await.op(op)? {
        let name = r.text("name")?;
        steps.push(WorkflowStep {
            needs: needs.remove(&name).unwrap_or_default(),
            name,
            job_id: r.id("job_id")?,
            state: r
                .text("state")?
                .parse()
                .map_err(|e| crate::error::corrupt(op, e))?,
            skipped: r.flag("skipped")?,
            when: r
                .text("cond")?
                .parse::<StepCondition>()
                .map_err(|e| crate::error::corrupt(op, e))?,
        });
    }
    Ok(Workflow {
        id,
        tenant_id: row.id("tenant_id")?,
        name: row.text("name")?,
        state: WorkflowState::of(cancelled_at.is_some(), &steps),
        created_at: ts(row.int("created_at")?),
        cancelled_at: cancelled_at.map(ts),
        steps,
    })
}

/// Cancels a workflow: every step not finished is cancelled, and none
/// starts from now on. Cancelling it again changes nothing (and is not
/// audited again).
pub(crate) async fn cancel<B: Backend>(
    b: &B,
    id: WorkflowId,
    actor: &str,
) -> Result<(Workflow, Vec<(String, String)>), StoreError> {
    let op = "cancelling a workflow";
    let now = ms(b.now());
    let before = get(b, id).await?;
    let mut tx = b.begin(op).await?;
    B::execute_in(&mut tx, Stmt::new::<B>(MARK_CANCELLED).arg(id).arg(now))
        .await
        .op(op)?;
    let rows = B::fetch_in(&mut tx, Stmt::new::<B>(CANCEL_STEPS).arg(id).arg(now))
        .await
        .op(op)?;
    let steps = rows
        .iter()
        .map(|r| Ok((r.text("queue")?, r.text("kind")?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let cancelled = steps.len();
    if before.cancelled_at.is_none() {
        let event = NewAuditEvent {
            actor: actor.to_owned(),
            action: AuditAction::WorkflowCancelled.into(),
            subject: format!("workflow:{id}"),
            details: json!({"steps_cancelled": cancelled}),
        };
        audit_log::append::<B>(&mut tx, &[event], now).await?;
    }
    B::commit(tx, op).await?;
    Ok((get(b, id).await?, steps))
}

/// Retries a workflow: its steps that did not finish well (dead, expired,
/// cancelled or skipped) run again with their attempts starting over,
/// each once its needs have; steps that succeeded keep their results. A
/// cancelled workflow runs again too. Nothing to retry is a conflict.
pub(crate) async fn retry<B: Backend>(
    b: &B,
    id: WorkflowId,
    actor: &str,
) -> Result<(Workflow, Vec<(TenantId, String, u32)>), StoreError> {
    let op = "retrying a workflow";
    let now = ms(b.now());
    let before = get(b, id).await?;
    if before.state == WorkflowState::Running {
        return Err(StoreError::Conflict {
            operation: op,
            entity: "workflow",
            id: id.to_string(),
            reason: "it is still running (cancel it first)".into(),
        });
    }
    let mut tx = b.begin(op).await?;
    B::execute_in(&mut tx, Stmt::new::<B>(UNCANCEL).arg(id))
        .await
        .op(op)?;
    B::execute_in(&mut tx, Stmt::new::<B>(RESET_STEPS).arg(id))
        .await
        .op(op)?;
    let rows = B::fetch_in(&mut tx, Stmt::new::<B>(RERUN_STEPS).arg(id).arg(now))
        .await
        .op(op)?;
    if rows.is_empty() {
        return Err(StoreError::Conflict {
            operation: op,
            entity: "workflow",
            id: id.to_string(),
            reason: "every step succeeded: nothing to retry".into(),
        });
    }
    let queued = queued_of(&rows)?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::WorkflowRetried.into(),
        subject: format!("workflow:{id}"),
        details: json!({"steps_rerun": rows.len()}),
    };
    audit_log::append::<B>(&mut tx, &[event], now).await?;
    B::commit(tx, op).await?;
    Ok((get(b, id).await?, queued))
}
