//! Jobs on PostgreSQL: the hot path, operator actions, listing and sweeps.

use std::collections::HashMap;
use std::time::Duration;

use homeostat_model::{Id, Job, JobState, NewAuditEvent, NewJob, ids_at};
use homeostat_runtime::Fence;
use jiff::Timestamp;
use serde_json::json;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PgStore;
use crate::error::{Context, StoreError, corrupt};
use crate::time::{add, dur_ms, ms, ts};
use crate::truncate;
use crate::{ClaimedJob, Completion, Enqueued, FailOutcome, JobFilter, Page};

macro_rules! job_columns {
    () => {
        "id, tenant_id, queue, kind, payload, priority, effective_priority, fingerprint, \
         occurrences, state::text AS state, attempt, max_attempts, timeout_ms, run_at, deadline_at, \
         approval_expires_at, lease_agent, lease_token, lease_expires_at, last_error, result, \
         created_at, updated_at, started_at, finished_at"
    };
}

/// "The job is running", for statements that find jobs by id, written so
/// that it does not imply the predicate of the running-jobs partial index.
/// With statistics that show few running jobs, the planner would otherwise
/// read the jobs through that index (every running job, and every entry left
/// behind by jobs that stopped running, for each statement) instead of the
/// primary key.
macro_rules! running {
    () => {
        "state IS NOT DISTINCT FROM 'running'"
    };
}

macro_rules! terminal {
    () => {
        "('succeeded', 'dead', 'cancelled', 'expired')"
    };
}

fn job_from_row(r: &PgRow) -> Result<Job, StoreError> {
    let op = "reading a job";
    let json = |col: &str| -> Result<Option<serde_json::Value>, StoreError> {
        let text: Option<String> = r.try_get(col).op(op)?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(op, e)))
            .transpose()
    };
    let opt_ts = |col: &str| -> Result<Option<Timestamp>, StoreError> {
        Ok(r.try_get::<Option<i64>, _>(col).op(op)?.map(ts))
    };
    let state: String = r.try_get("state").op(op)?;
    Ok(Job {
        id: r.try_get("id").op(op)?,
        tenant_id: r.try_get("tenant_id").op(op)?,
        queue: r.try_get("queue").op(op)?,
        kind: r.try_get("kind").op(op)?,
        payload: json("payload")?.unwrap_or_default(),
        priority: r.try_get::<i64, _>("priority").op(op)? as i32,
        effective_priority: r.try_get("effective_priority").op(op)?,
        fingerprint: r.try_get("fingerprint").op(op)?,
        occurrences: r.try_get::<i64, _>("occurrences").op(op)? as u32,
        state: state.parse().map_err(|e| corrupt(op, e))?,
        attempt: r.try_get::<i64, _>("attempt").op(op)? as u32,
        max_attempts: r.try_get::<i64, _>("max_attempts").op(op)? as u32,
        timeout_secs: (r.try_get::<i64, _>("timeout_ms").op(op)? / 1000) as u64,
        run_at: ts(r.try_get("run_at").op(op)?),
        deadline: opt_ts("deadline_at")?,
        approval_expires_at: opt_ts("approval_expires_at")?,
        lease_agent: r.try_get("lease_agent").op(op)?,
        lease_token: r.try_get("lease_token").op(op)?,
        lease_expires_at: opt_ts("lease_expires_at")?,
        last_error: r.try_get("last_error").op(op)?,
        result: json("result")?,
        created_at: ts(r.try_get("created_at").op(op)?),
        updated_at: ts(r.try_get("updated_at").op(op)?),
        started_at: opt_ts("started_at")?,
        finished_at: opt_ts("finished_at")?,
    })
}

impl PgStore {
    pub(crate) async fn enqueue_batch(
        &self,
        tenant_id: Id,
        jobs: &[NewJob],
        now: Timestamp,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let op = "enqueueing jobs";
        for job in jobs {
            job.validate()?;
        }
        let mut conn = self.pool.acquire().await.op(op)?;
        self.enqueue_on(&mut conn, tenant_id, jobs, now).await
    }

    /// Enqueues validated jobs on `conn` (a transaction, or not).
    async fn enqueue_on(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant_id: Id,
        jobs: &[NewJob],
        now: Timestamp,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let op = "enqueueing jobs";
        let tier = tenant_tier(&mut *conn, tenant_id, op).await?;
        // Fold same-fingerprint jobs of the batch into one row (PostgreSQL
        // refuses to upsert one row twice in a statement). Each input has an
        // id; those of the inputs folded into an earlier row are never
        // stored, so they match nothing and come back deduplicated.
        let generated: Vec<Id> = ids_at(now, jobs.len()).collect();
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut rows: Vec<(usize, Id, i64)> = Vec::new(); // (input index, id, occurrences)
        for (i, job) in jobs.iter().enumerate() {
            if let Some(fp) = job.fingerprint.as_deref() {
                if let Some(&row) = first_of.get(fp) {
                    rows[row].2 += 1;
                    continue;
                }
                first_of.insert(fp, rows.len());
            }
            rows.push((i, generated[i], 1));
        }
        let n = rows.len();
        let mut c = Columns::with_capacity(n);
        for (i, id, occurrences) in &rows {
            let job = &jobs[*i];
            let run_at = job.run_at.map(ms).unwrap_or(ms(now)).max(ms(now));
            c.id.push(*id);
            c.queue.push(job.queue.clone());
            c.kind.push(job.kind.clone());
            c.payload.push(job.payload.to_string());
            c.priority.push(i64::from(job.priority));
            c.base.push(tier + i64::from(job.priority));
            c.fingerprint.push(job.fingerprint.clone());
            c.occurrences.push(*occurrences);
            c.state.push(job.initial_state(now).as_str().to_owned());
            c.max_attempts.push(i64::from(job.max_attempts()));
            c.timeout.push(dur_ms(job.timeout()));
            c.run_at.push(run_at);
            c.deadline.push(
                job.deadline
                    .map(ms)
                    .unwrap_or_else(|| run_at + dur_ms(self.options().default_queue_deadline)),
            );
            c.approval.push(job.approval_expires_at.map(ms));
        }
        let stored = sqlx::query(concat!(
            "INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, base_priority,
               effective_priority, fingerprint, occurrences, state, max_attempts, timeout_ms, run_at,
               queued_at, deadline_at, approval_expires_at, created_at, updated_at)
             SELECT id, $1, queue, kind, payload, priority, base, base, fingerprint, occurrences,
               state::job_state, max_attempts, timeout_ms, run_at, run_at, deadline_at, approval, $2, $2
             FROM UNNEST($3::uuid[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[],
                         $9::text[], $10::bigint[], $11::text[], $12::bigint[], $13::bigint[],
                         $14::bigint[], $15::bigint[], $16::bigint[])
               AS t(id, queue, kind, payload, priority, base, fingerprint, occurrences, state,
                    max_attempts, timeout_ms, run_at, deadline_at, approval)
             ON CONFLICT (tenant_id, fingerprint)
               WHERE fingerprint IS NOT NULL AND state NOT IN ",
            terminal!(),
            " DO UPDATE SET occurrences = jobs.occurrences + excluded.occurrences,
                            updated_at = excluded.updated_at
             RETURNING ",
            job_columns!()
        ))
        .bind(tenant_id)
        .bind(ms(now))
        .bind(&c.id)
        .bind(&c.queue)
        .bind(&c.kind)
        .bind(&c.payload)
        .bind(&c.priority)
        .bind(&c.base)
        .bind(&c.fingerprint)
        .bind(&c.occurrences)
        .bind(&c.state)
        .bind(&c.max_attempts)
        .bind(&c.timeout)
        .bind(&c.run_at)
        .bind(&c.deadline)
        .bind(&c.approval)
        .fetch_all(&mut *conn)
        .await
        .op(op)?;
        let stored = stored
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        crate::match_enqueued(jobs, &generated, stored)
    }

    pub(crate) async fn enqueue_periodic(
        &self,
        schedule: &str,
        slot: Timestamp,
        tenant_id: Id,
        job: &NewJob,
        now: Timestamp,
        fence: Option<&Fence>,
    ) -> Result<Option<Enqueued>, StoreError> {
        let op = "jobs.periodic";
        job.validate()?;
        let mut tx = self.write(op).await?;
        Self::check_fence(&mut tx, fence, op).await?;
        let claimed = sqlx::query(
            "INSERT INTO periodic_slots (name, last_slot) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET last_slot = excluded.last_slot
             WHERE periodic_slots.last_slot < excluded.last_slot
             RETURNING last_slot",
        )
        .bind(schedule)
        .bind(ms(slot))
        .fetch_optional(&mut *tx)
        .await
        .op(op)?;
        if claimed.is_none() {
            return Ok(None);
        }
        let enqueued = self
            .enqueue_on(&mut tx, tenant_id, std::slice::from_ref(job), now)
            .await?
            .remove(0);
        Self::append_audit(
            &mut tx,
            &[crate::periodic_event(fence, schedule, slot, &enqueued)],
            ms(now),
        )
        .await?;
        tx.commit().await.op(op)?;
        Ok(Some(enqueued))
    }

    pub(crate) async fn claim(
        &self,
        agent_id: Id,
        limit: u32,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let op = "claiming jobs";
        let (tenant, queues) = self.agent_facts(agent_id, op).await?;
        let rows = if let [queue] = queues.as_slice() {
            // The usual case, shaped like the minimal claim. The rows are
            // updated by the address the locking scan found them at (no
            // second walk down the primary key): the lock keeps that version
            // current. A job another transaction changed after this
            // statement's snapshot is locked at its new address, which the
            // snapshot cannot see: it stays queued for the next claim.
            sqlx::query(
                "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_agent = $1,
                   lease_token = lease_token + 1, lease_expires_at = $2, started_at = $3,
                   timeout_at = $3 + timeout_ms, updated_at = $3
                 WHERE ctid = ANY(ARRAY(
                   SELECT ctid FROM jobs
                   WHERE state = 'queued' AND queue = $4 AND ($5::uuid IS NULL OR tenant_id = $5)
                   ORDER BY effective_priority DESC, queued_at
                   LIMIT $6
                   FOR UPDATE SKIP LOCKED))
                 AND EXISTS (SELECT 1 FROM agents WHERE id = $1 AND status = 'online')
                 RETURNING id, tenant_id, queue, kind, payload, attempt, max_attempts, lease_token,
                   timeout_ms, effective_priority, queued_at",
            )
            .bind(agent_id)
            .bind(add(now, lease))
            .bind(ms(now))
            .bind(queue)
            .bind(tenant)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .op(op)?
        } else {
            // Per queue an index-ordered scan that skips locked rows, then
            // the best `limit` across queues; one statement.
            sqlx::query(
                "WITH agent AS (
                   SELECT tenant_id, queues FROM agents WHERE id = $1 AND status = 'online'),
                 picked AS (
                   SELECT c.id, c.effective_priority, c.queued_at
                   FROM agent a, unnest(a.queues) AS q(name),
                   LATERAL (
                     SELECT j.id, j.effective_priority, j.queued_at FROM jobs j
                     WHERE j.state = 'queued' AND j.queue = q.name
                       AND (a.tenant_id IS NULL OR j.tenant_id = a.tenant_id)
                     ORDER BY j.effective_priority DESC, j.queued_at
                     LIMIT $4
                     FOR UPDATE SKIP LOCKED) c
                   ORDER BY c.effective_priority DESC, c.queued_at
                   LIMIT $4)
                 UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_agent = $1,
                   lease_token = lease_token + 1, lease_expires_at = $2, started_at = $3,
                   timeout_at = $3 + timeout_ms, updated_at = $3
                 WHERE id = ANY(ARRAY(SELECT id FROM picked))
                 RETURNING id, tenant_id, queue, kind, payload, attempt, max_attempts, lease_token,
                   timeout_ms, effective_priority, queued_at",
            )
            .bind(agent_id)
            .bind(add(now, lease))
            .bind(ms(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .op(op)?
        };
        if rows.is_empty() {
            // Nothing claimed: say why when the agent is the reason.
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM agents WHERE id = $1")
                    .bind(agent_id)
                    .fetch_optional(&self.pool)
                    .await
                    .op(op)?;
            match status.as_deref() {
                None => {
                    return Err(StoreError::NotFound {
                        entity: "agent",
                        id: agent_id.to_string(),
                    });
                }
                Some("online") => {}
                Some(status) => {
                    return Err(StoreError::Conflict {
                        operation: op,
                        entity: "agent",
                        id: agent_id.to_string(),
                        reason: format!("the agent is {status}; only online agents claim jobs"),
                    });
                }
            }
        }
        // Unchecked decoding: the statement above fixes each column's type,
        // and checking it again per value is a tenth of the claim's client
        // time. A wrong width still fails to decode, as an error.
        let lease_expires_at = ts(add(now, lease));
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            let int = |i: usize| r.try_get_unchecked::<i64, _>(i).op(op);
            let payload: &str = r.try_get_unchecked(4).op(op)?;
            let job = ClaimedJob {
                id: r.try_get_unchecked(0).op(op)?,
                tenant_id: r.try_get_unchecked(1).op(op)?,
                queue: r.try_get_unchecked(2).op(op)?,
                kind: r.try_get_unchecked(3).op(op)?,
                payload: serde_json::from_str(payload).map_err(|e| corrupt(op, e))?,
                attempt: int(5)? as u32,
                max_attempts: int(6)? as u32,
                lease_token: int(7)?,
                lease_expires_at,
                timeout_secs: (int(8)? / 1000) as u64,
            };
            claimed.push(((-int(9)?, int(10)?), job));
        }
        claimed.sort_by_key(|(key, _)| *key);
        Ok(claimed.into_iter().map(|(_, job)| job).collect())
    }

    pub(crate) async fn heartbeat_job(
        &self,
        id: Id,
        lease_token: i64,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Timestamp, StoreError> {
        let op = "extending a job lease";
        let expires: Option<i64> = sqlx::query_scalar(concat!(
            "UPDATE jobs SET lease_expires_at = $3
                 WHERE id = $1 AND lease_token = $2 AND ",
            running!(),
            " RETURNING lease_expires_at"
        ))
        .bind(id)
        .bind(lease_token)
        .bind(add(now, lease))
        .fetch_optional(&self.pool)
        .await
        .op(op)?;
        expires.map(ts).ok_or(StoreError::StaleLease {
            operation: op,
            job: id,
            token: lease_token,
        })
    }

    pub(crate) async fn complete_batch(
        &self,
        completions: &[Completion],
        now: Timestamp,
    ) -> Result<Vec<bool>, StoreError> {
        let op = "completing jobs";
        let ids: Vec<Id> = completions.iter().map(|c| c.id).collect();
        let tokens: Vec<i64> = completions.iter().map(|c| c.lease_token).collect();
        let results: Vec<Option<String>> = completions
            .iter()
            .map(|c| c.result.as_ref().map(|v| v.to_string()))
            .collect();
        let done: Vec<Id> = sqlx::query_scalar(concat!(
            "UPDATE jobs SET state = 'succeeded', result = c.result, finished_at = $4,
                   updated_at = $4, lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
                 FROM UNNEST($1::uuid[], $2::bigint[], $3::text[]) AS c(id, token, result)
                 WHERE jobs.id = c.id AND jobs.lease_token = c.token AND jobs.",
            running!(),
            " RETURNING jobs.id"
        ))
        .bind(&ids)
        .bind(&tokens)
        .bind(&results)
        .bind(ms(now))
        .fetch_all(&self.pool)
        .await
        .op(op)?;
        let done: std::collections::HashSet<Id> = done.into_iter().collect();
        Ok(ids.iter().map(|id| done.contains(id)).collect())
    }

    pub(crate) async fn fail(
        &self,
        id: Id,
        lease_token: i64,
        error: &str,
        permanent: bool,
        now: Timestamp,
    ) -> Result<FailOutcome, StoreError> {
        let op = "failing a job";
        let mut tx = self.write(op).await?;
        let row = sqlx::query(concat!(
            "SELECT attempt, max_attempts FROM jobs WHERE id = $1 AND lease_token = $2 AND ",
            running!(),
            " FOR UPDATE"
        ))
        .bind(id)
        .bind(lease_token)
        .fetch_optional(&mut *tx)
        .await
        .op(op)?
        .ok_or(StoreError::StaleLease {
            operation: op,
            job: id,
            token: lease_token,
        })?;
        let (attempt, max) = (row.get::<i64, _>(0) as u32, row.get::<i64, _>(1) as u32);
        let outcome = crate::fail_outcome(self.options(), attempt, max, permanent, now);
        let dead = outcome.state == JobState::Dead;
        sqlx::query(
            "UPDATE jobs SET state = $2::job_state, run_at = COALESCE($3, run_at), last_error = $4,
               finished_at = $5, updated_at = $6, lease_agent = NULL, lease_expires_at = NULL,
               timeout_at = NULL
             WHERE id = $1",
        )
        .bind(id)
        .bind(outcome.state.as_str())
        .bind(outcome.retry_at.map(ms))
        .bind(truncate(error))
        .bind(dead.then_some(ms(now)))
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .op(op)?;
        tx.commit().await.op(op)?;
        Ok(outcome)
    }

    pub(crate) async fn transition(
        &self,
        id: Id,
        to: JobState,
        action: &'static str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Job, StoreError> {
        let op = action;
        let mut tx = self.write(op).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .op(op)?
        .ok_or_else(|| StoreError::NotFound {
            entity: "job",
            id: id.to_string(),
        })?;
        let current = job_from_row(&row)?;
        let (to, redrive) = crate::operator_transition(&current, to, action, now)?;
        let row = sqlx::query(concat!(
            "UPDATE jobs SET state = $2::job_state, updated_at = $3, queued_at = $3,
               finished_at = CASE WHEN $2 IN ",
            terminal!(),
            " THEN $3 ELSE NULL END,
               attempt = CASE WHEN $4 THEN 0 ELSE attempt END,
               deadline_at = CASE WHEN $4 THEN NULL ELSE deadline_at END,
               lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
             WHERE id = $1 RETURNING ",
            job_columns!()
        ))
        .bind(id)
        .bind(to.as_str())
        .bind(ms(now))
        .bind(redrive)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict {
                operation: op,
                entity: "job",
                id: id.to_string(),
                reason: "another live job has the same fingerprint".into(),
            },
            e => crate::error::db_error(op, e),
        })?;
        let job = job_from_row(&row)?;
        Self::append_audit(
            &mut tx,
            &[NewAuditEvent {
                actor: actor.to_owned(),
                action: action.to_owned(),
                subject: format!("job:{id}"),
                details: json!({"from": current.state, "to": to, "tenant_id": job.tenant_id}),
            }],
            ms(now),
        )
        .await?;
        tx.commit().await.op(op)?;
        Ok(job)
    }

    pub(crate) async fn get_job(&self, id: Id) -> Result<Job, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .op("reading a job")?
        .ok_or_else(|| StoreError::NotFound {
            entity: "job",
            id: id.to_string(),
        })?;
        job_from_row(&row)
    }

    pub(crate) async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<Id>,
        limit: u32,
    ) -> Result<Page<Job>, StoreError> {
        let limit = limit.clamp(1, 1000);
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR state = $2::job_state)
               AND ($3::text IS NULL OR queue = $3) AND ($4::uuid IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(filter.tenant_id)
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.queue.as_deref())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .op("listing jobs")?;
        let mut items = rows
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|j| j.id)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }
}

/// Column arrays of a batch insert.
#[derive(Default)]
struct Columns {
    id: Vec<Id>,
    queue: Vec<String>,
    kind: Vec<String>,
    payload: Vec<String>,
    priority: Vec<i64>,
    base: Vec<i64>,
    fingerprint: Vec<Option<String>>,
    occurrences: Vec<i64>,
    state: Vec<String>,
    max_attempts: Vec<i64>,
    timeout: Vec<i64>,
    run_at: Vec<i64>,
    deadline: Vec<i64>,
    approval: Vec<Option<i64>>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            id: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            ..Self::default()
        }
    }
}

async fn tenant_tier(
    conn: &mut sqlx::PgConnection,
    tenant_id: Id,
    op: &'static str,
) -> Result<i64, StoreError> {
    let tier: Option<String> = sqlx::query_scalar("SELECT tier FROM tenants WHERE id = $1")
        .bind(tenant_id)
        .fetch_optional(conn)
        .await
        .op(op)?;
    let tier = tier.ok_or_else(|| StoreError::NotFound {
        entity: "tenant",
        id: tenant_id.to_string(),
    })?;
    let tier: homeostat_model::PlanTier = tier.parse().map_err(|e| corrupt(op, e))?;
    Ok(tier.base_priority())
}
