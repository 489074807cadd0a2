//! Jobs on SQLite: the hot path (enqueue, claim, heartbeat, complete, fail),
//! operator actions, listing, and the set-based sweeps controllers call.

use std::time::Duration;

use homeostat_model::{Id, Job, JobState, NewAuditEvent, NewJob, ids_at};
use homeostat_runtime::Fence;
use jiff::Timestamp;
use serde_json::json;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, Tx, id_of, opt_id_of};
use crate::error::{Context, StoreError, corrupt};
use crate::time::{add, dur_ms, ms, ts};
use crate::truncate;
use crate::{ClaimedJob, Completion, Enqueued, FailOutcome, JobFilter, Page};

macro_rules! job_columns {
    () => {
        "id, tenant_id, queue, kind, payload, priority, effective_priority, fingerprint, \
         occurrences, state, attempt, max_attempts, timeout_ms, run_at, deadline_at, \
         approval_expires_at, lease_agent, lease_token, lease_expires_at, last_error, result, \
         created_at, updated_at, started_at, finished_at"
    };
}

/// What a claim sets: ?1 agent, ?2 lease expiry, ?3 now.
macro_rules! claim_set {
    () => {
        "state = 'running', attempt = attempt + 1, lease_agent = ?1,
         lease_token = lease_token + 1, lease_expires_at = ?2, started_at = ?3,
         timeout_at = ?3 + timeout_ms, updated_at = ?3"
    };
}

/// "The job is running", for statements that find jobs by id: the unary plus
/// keeps it from matching the partial index of running jobs. With
/// statistics, SQLite would otherwise scan that index for every completion
/// instead of looking the ids up (measured: batch completions of 100 became
/// twenty times slower).
macro_rules! running {
    () => {
        "+state = 'running'"
    };
}

macro_rules! claim_returning {
    () => {
        "id, tenant_id, queue, kind, payload, attempt, max_attempts, lease_token,
         lease_expires_at, timeout_ms, effective_priority, queued_at"
    };
}

/// The terminal whitelist, as SQL.
macro_rules! terminal {
    () => {
        "('succeeded', 'dead', 'cancelled', 'expired')"
    };
}

fn job_from_row(r: &SqliteRow) -> Result<Job, StoreError> {
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
        id: id_of(r, "id")?,
        tenant_id: id_of(r, "tenant_id")?,
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
        lease_agent: opt_id_of(r, "lease_agent")?,
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

impl SqliteStore {
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
        let mut tx = self.write(op).await?;
        let out = self.enqueue_in(&mut tx, tenant_id, jobs, now).await?;
        tx.commit().await.op(op)?;
        Ok(out)
    }

    /// Enqueues validated jobs inside `tx`.
    async fn enqueue_in(
        &self,
        tx: &mut Tx,
        tenant_id: Id,
        jobs: &[NewJob],
        now: Timestamp,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let op = "enqueueing jobs";
        let generated: Vec<Id> = ids_at(now, jobs.len()).collect();
        let tier = tenant_tier(tx, tenant_id, op).await?;
        // The whole batch travels as one JSON array into one statement;
        // SQLite applies the upsert row by row, so duplicates within the
        // batch fold into the first.
        let rows: Vec<serde_json::Value> = jobs
            .iter()
            .zip(&generated)
            .map(|(job, id)| {
                let run_at = job.run_at.map(ms).unwrap_or(ms(now)).max(ms(now));
                json!({
                    "id": id.to_string(),
                    "queue": job.queue,
                    "kind": job.kind,
                    "payload": job.payload.to_string(),
                    "priority": job.priority,
                    "base": tier + i64::from(job.priority),
                    "fp": job.fingerprint,
                    "state": job.initial_state(now).as_str(),
                    "max": job.max_attempts(),
                    "timeout": dur_ms(job.timeout()),
                    "run_at": run_at,
                    "deadline": job.deadline.map(ms).unwrap_or_else(|| {
                        run_at + dur_ms(self.options().default_queue_deadline)
                    }),
                    "approval": job.approval_expires_at.map(ms),
                })
            })
            .collect();
        let stored = sqlx::query(concat!(
            "INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, base_priority,
               effective_priority, fingerprint, state, max_attempts, timeout_ms, run_at,
               queued_at, deadline_at, approval_expires_at, created_at, updated_at)
             SELECT j->>'id', ?1, j->>'queue', j->>'kind', j->>'payload', j->>'priority',
               j->>'base', j->>'base', j->>'fp', j->>'state', j->>'max', j->>'timeout',
               j->>'run_at', j->>'run_at', j->>'deadline', j->>'approval', ?2, ?2
             FROM (SELECT value AS j FROM json_each(?3) ORDER BY key) WHERE true
             ON CONFLICT (tenant_id, fingerprint)
               WHERE fingerprint IS NOT NULL AND state NOT IN ",
            terminal!(),
            " DO UPDATE SET occurrences = occurrences + 1, updated_at = excluded.updated_at
             RETURNING ",
            job_columns!()
        ))
        .bind(tenant_id.to_string())
        .bind(ms(now))
        .bind(serde_json::Value::Array(rows).to_string())
        .fetch_all(&mut **tx)
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
            "INSERT INTO periodic_slots (name, last_slot) VALUES (?1, ?2)
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
            .enqueue_in(&mut tx, tenant_id, std::slice::from_ref(job), now)
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
        let facts = self.agent_facts(agent_id, op).await?;
        let rows = if let [queue] = facts.queues.as_slice() {
            // The usual case: one statement, which SQLite runs as its own
            // transaction on the single write connection.
            sqlx::query(concat!(
                "UPDATE jobs SET ",
                claim_set!(),
                " WHERE rowid IN (
                   SELECT rowid FROM jobs INDEXED BY jobs_claim
                   WHERE state = 'queued' AND queue = ?4 AND (?5 IS NULL OR tenant_id = ?5)
                   ORDER BY effective_priority DESC, queued_at LIMIT ?6)
                 AND EXISTS (SELECT 1 FROM agents WHERE id = ?1 AND status = 'online')
                 RETURNING ",
                claim_returning!()
            ))
            .bind(agent_id.to_string())
            .bind(add(now, lease))
            .bind(ms(now))
            .bind(queue)
            .bind(&facts.tenant)
            .bind(i64::from(limit))
            .fetch_all(self.writer())
            .await
            .op(op)?
        } else {
            // One index-ordered scan per queue, merged here: a single query
            // over all queues would sort every queued job.
            let mut tx = self.write(op).await?;
            let mut candidates: Vec<(i64, i64, String)> = Vec::new();
            for queue in &facts.queues {
                let rows = sqlx::query(
                    "SELECT id, effective_priority, queued_at FROM jobs INDEXED BY jobs_claim
                     WHERE state = 'queued' AND queue = ?1 AND (?2 IS NULL OR tenant_id = ?2)
                     ORDER BY effective_priority DESC, queued_at LIMIT ?3",
                )
                .bind(queue)
                .bind(&facts.tenant)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await
                .op(op)?;
                candidates.extend(
                    rows.iter()
                        .map(|r| (-r.get::<i64, _>(1), r.get(2), r.get(0))),
                );
            }
            candidates.sort();
            candidates.truncate(limit as usize);
            let ids: Vec<String> = candidates.into_iter().map(|(_, _, id)| id).collect();
            let rows = sqlx::query(concat!(
                "UPDATE jobs SET ",
                claim_set!(),
                " WHERE id IN (SELECT value FROM json_each(?4))
                 AND EXISTS (SELECT 1 FROM agents WHERE id = ?1 AND status = 'online')
                 RETURNING ",
                claim_returning!()
            ))
            .bind(agent_id.to_string())
            .bind(add(now, lease))
            .bind(ms(now))
            .bind(serde_json::to_string(&ids).unwrap_or_default())
            .fetch_all(&mut *tx)
            .await
            .op(op)?;
            tx.commit().await.op(op)?;
            rows
        };
        if rows.is_empty() {
            self.require_online(agent_id, op).await?;
        }
        let mut claimed = Vec::with_capacity(rows.len());
        let mut order = Vec::with_capacity(rows.len());
        for r in &rows {
            let payload: String = r.get(4);
            claimed.push(ClaimedJob {
                id: id_of(r, "id")?,
                tenant_id: id_of(r, "tenant_id")?,
                queue: r.get(2),
                kind: r.get(3),
                payload: serde_json::from_str(&payload).map_err(|e| corrupt(op, e))?,
                attempt: r.get::<i64, _>(5) as u32,
                max_attempts: r.get::<i64, _>(6) as u32,
                lease_token: r.get(7),
                lease_expires_at: ts(r.get(8)),
                timeout_secs: (r.get::<i64, _>(9) / 1000) as u64,
            });
            order.push((-r.get::<i64, _>(10), r.get::<i64, _>(11)));
        }
        // RETURNING gives no order; hand them out in claim order.
        let mut indexed: Vec<_> = order.into_iter().zip(claimed).collect();
        indexed.sort_by_key(|(key, _)| *key);
        Ok(indexed.into_iter().map(|(_, job)| job).collect())
    }

    pub(crate) async fn heartbeat_job(
        &self,
        id: Id,
        lease_token: i64,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Timestamp, StoreError> {
        let op = "extending a job lease";
        // One statement: its own transaction on the single write connection.
        let expires: Option<i64> = sqlx::query_scalar(concat!(
            "UPDATE jobs SET lease_expires_at = ?3 WHERE id = ?1 AND lease_token = ?2 AND ",
            running!(),
            " RETURNING lease_expires_at"
        ))
        .bind(id.to_string())
        .bind(lease_token)
        .bind(add(now, lease))
        .fetch_optional(self.writer())
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
        // [[id, token, result], …]: positional, cheaper for SQLite to take
        // apart than objects.
        let batch: Vec<(String, i64, Option<String>)> = completions
            .iter()
            .map(|c| {
                (
                    c.id.to_string(),
                    c.lease_token,
                    c.result.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        // One statement: its own transaction on the single write connection.
        let done: Vec<String> = sqlx::query_scalar(concat!(
            "UPDATE jobs SET state = 'succeeded', result = c.r, finished_at = ?2, updated_at = ?2,
               lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
             FROM (SELECT value->>0 AS id, value->>1 AS t, value->>2 AS r
                   FROM json_each(?1)) AS c
             WHERE jobs.id = c.id AND jobs.lease_token = c.t AND ",
            running!(),
            " RETURNING jobs.id"
        ))
        .bind(serde_json::to_string(&batch).map_err(|e| corrupt(op, e))?)
        .bind(ms(now))
        .fetch_all(self.writer())
        .await
        .op(op)?;
        let done: std::collections::HashSet<String> = done.into_iter().collect();
        Ok(completions
            .iter()
            .map(|c| done.contains(&c.id.to_string()))
            .collect())
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
            "SELECT attempt, max_attempts FROM jobs WHERE id = ? AND lease_token = ? AND ",
            running!()
        ))
        .bind(id.to_string())
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
            "UPDATE jobs SET state = ?2, run_at = COALESCE(?3, run_at), last_error = ?4,
               finished_at = ?5, updated_at = ?6, lease_agent = NULL, lease_expires_at = NULL,
               timeout_at = NULL
             WHERE id = ?1",
        )
        .bind(id.to_string())
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

    /// Operator transitions: cancel, approve, redrive. Audited.
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
        let current = self.job_in(&mut tx, id, op).await?;
        let (to, redrive) = crate::operator_transition(&current, to, action, now)?;
        let row = sqlx::query(concat!(
            "UPDATE jobs SET state = ?2, updated_at = ?3, queued_at = ?3,
               finished_at = CASE WHEN ?2 IN ",
            terminal!(),
            " THEN ?3 ELSE NULL END,
               attempt = CASE WHEN ?4 THEN 0 ELSE attempt END,
               deadline_at = CASE WHEN ?4 THEN NULL ELSE deadline_at END,
               lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
             WHERE id = ?1 RETURNING ",
            job_columns!()
        ))
        .bind(id.to_string())
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

    async fn job_in(&self, tx: &mut Tx, id: Id, op: &'static str) -> Result<Job, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await
        .op(op)?
        .ok_or_else(|| StoreError::NotFound {
            entity: "job",
            id: id.to_string(),
        })?;
        job_from_row(&row)
    }

    pub(crate) async fn get_job(&self, id: Id) -> Result<Job, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = ?"
        ))
        .bind(id.to_string())
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
             WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR state = ?2)
               AND (?3 IS NULL OR queue = ?3) AND (?4 IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?5"
        ))
        .bind(filter.tenant_id.map(|t| t.to_string()))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.queue.as_deref())
        .bind(after.map(|a| a.to_string()))
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

async fn tenant_tier(tx: &mut Tx, tenant_id: Id, op: &'static str) -> Result<i64, StoreError> {
    let tier: Option<String> = sqlx::query_scalar("SELECT tier FROM tenants WHERE id = ?")
        .bind(tenant_id.to_string())
        .fetch_optional(&mut **tx)
        .await
        .op(op)?;
    let tier = tier.ok_or_else(|| StoreError::NotFound {
        entity: "tenant",
        id: tenant_id.to_string(),
    })?;
    let tier: homeostat_model::PlanTier = tier.parse().map_err(|e| corrupt(op, e))?;
    Ok(tier.base_priority())
}
