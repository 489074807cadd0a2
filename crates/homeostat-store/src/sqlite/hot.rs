//! The hot path on SQLite, tuned per backend (see docs/benchmarks.md):
//! batch enqueue, claim and batch completion.

use std::time::Duration;

use homeostat_model::{AgentId, JobId, NewJob, TenantId, ids_at};
use serde_json::json;
use sqlx::Row;

use super::{SqliteStore, Tx};
use crate::backend::{Backend, RowExt};
use crate::error::{Context, StoreError, corrupt, in_range};
use crate::job_metrics::Ended;
use crate::registry;
use crate::signals::Look;
use crate::time::{add, dur_ms, ms, ts};
use crate::{ClaimedJob, Completion, Enqueued};

/// What a claim sets: ?1 agent, ?2 lease expiry, ?3 now.
macro_rules! claim_set {
    () => {
        "state = 'running', attempt = attempt + 1, lease_agent = ?1,
         lease_token = lease_token + 1, lease_expires_at = ?2, started_at = ?3,
         timeout_at = ?3 + timeout_ms, updated_at = ?3"
    };
}

macro_rules! claim_returning {
    () => {
        "id, tenant_id, queue, kind, payload, attempt, max_attempts, lease_token,
         lease_expires_at, timeout_ms, effective_priority, fair_at, workflow_id, traceparent,
         root_step"
    };
}

impl SqliteStore {
    pub(super) async fn enqueue_batch_now(
        &self,
        tenant_id: TenantId,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>, StoreError> {
        let op = "enqueueing jobs";
        for job in jobs {
            job.validate()?;
        }
        let mut tx = self.begin(op).await?;
        let out = self.enqueue_batch_in(&mut tx, tenant_id, jobs).await?;
        tx.commit().await.op(op)?;
        Ok(out)
    }

    /// The turn of each job that enters a queue now (`crate::fair`), from
    /// two index probes per queue and priority of the batch.
    async fn turns(
        &self,
        tx: &mut Tx,
        tenant_id: TenantId,
        tier: homeostat_model::PlanTier,
        now: jiff::Timestamp,
        jobs: &[NewJob],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let op = "enqueueing jobs";
        let step = crate::fair::step_ms(Backend::options(self).fair_share_turn, tier);
        let flows = crate::fair::Flows::of(jobs.iter().map(|job| {
            (step > 0 && job.initial_state(now) == homeostat_model::JobState::Queued)
                .then_some((job.queue.as_str(), i64::from(job.priority)))
        }));
        let mut starts = Vec::with_capacity(flows.queues.len());
        for (queue, base) in flows.queues.iter().zip(&flows.priorities) {
            let (head, last): (Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT (SELECT fair_at FROM jobs INDEXED BY jobs_claim
                          WHERE state = 'queued' AND queue = ?1 AND effective_priority = ?2
                          ORDER BY fair_at LIMIT 1),
                        (SELECT fair_at FROM jobs INDEXED BY jobs_fair_flow
                          WHERE state = 'queued' AND tenant_id = ?3 AND queue = ?1
                          ORDER BY fair_at DESC LIMIT 1)",
            )
            .bind(queue)
            .bind(base)
            .bind(tenant_id.to_string())
            .fetch_one(&mut **tx)
            .await
            .op(op)?;
            starts.push(crate::fair::start(ms(now), head, last, step));
        }
        Ok(flows
            .flow
            .iter()
            .zip(&flows.rank)
            .map(|(&flow, rank)| {
                usize::try_from(flow - 1)
                    .ok()
                    .map(|f| starts[f] + rank * step)
            })
            .collect())
    }

    /// Enqueues validated jobs inside `tx`.
    pub(super) async fn enqueue_batch_in(
        &self,
        tx: &mut Tx,
        tenant_id: TenantId,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>, StoreError> {
        let op = "enqueueing jobs";
        let now = self.now();
        let generated: Vec<JobId> = ids_at(now, jobs.len()).map(JobId::from).collect();
        let tier = tenant_tier(tx, tenant_id, op).await?;
        let turns = self.turns(tx, tenant_id, tier, now, jobs).await?;
        // The whole batch travels as one JSON array into one statement;
        // SQLite applies the upsert row by row, so duplicates within the
        // batch fold into the first.
        let rows: Vec<serde_json::Value> = jobs
            .iter()
            .zip(&generated)
            .zip(turns)
            .map(|((job, id), turn)| {
                let run_at = job.run_at.map(ms).unwrap_or(ms(now)).max(ms(now));
                json!({
                    "id": id.to_string(),
                    "queue": job.queue,
                    "kind": job.kind,
                    "payload": job.payload.to_string(),
                    "priority": job.priority,
                    "base": i64::from(job.priority),
                    "fp": job.fingerprint,
                    "state": job.initial_state(now).as_str(),
                    "max": job.max_attempts(),
                    "timeout": dur_ms(job.timeout()),
                    "run_at": run_at,
                    "turn": turn.unwrap_or(run_at),
                    "deadline": job.deadline.map(ms).unwrap_or_else(|| {
                        run_at + dur_ms(Backend::options(self).default_queue_deadline)
                    }),
                    "approval": job.approval_expires_at.map(ms),
                    "limits": crate::limits::stored_keys(job),
                    "traceparent": job.traceparent,
                })
            })
            .collect();
        let stored = sqlx::query(concat!(
            "INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, base_priority,
               effective_priority, fingerprint, state, max_attempts, timeout_ms, run_at,
               queued_at, fair_at, deadline_at, approval_expires_at, created_at, updated_at,
               limit_keys, traceparent)
             SELECT j->>'id', ?1, j->>'queue', j->>'kind', j->>'payload', j->>'priority',
               j->>'base', j->>'base', j->>'fp', j->>'state', j->>'max', j->>'timeout',
               j->>'run_at', j->>'run_at', j->>'turn', j->>'deadline', j->>'approval', ?2, ?2, j->>'limits',
               j->>'traceparent'
             FROM (SELECT value AS j FROM json_each(?3) ORDER BY key) WHERE true
             ON CONFLICT (tenant_id, fingerprint)
               WHERE fingerprint IS NOT NULL AND state NOT IN ",
            crate::rows::terminal!(),
            " DO UPDATE SET occurrences = occurrences + 1, updated_at = excluded.updated_at
             RETURNING ",
            "id, fingerprint, occurrences"
        ))
        .bind(tenant_id.to_string())
        .bind(ms(now))
        .bind(serde_json::Value::Array(rows).to_string())
        .fetch_all(&mut **tx)
        .await
        .op(op)?;
        let stored = stored
            .iter()
            .map(crate::rows::enqueued)
            .collect::<Result<Vec<_>, _>>()?;
        crate::decisions::match_enqueued(jobs, &generated, stored)
    }

    pub(super) async fn claim_now(
        &self,
        agent_id: AgentId,
        tenant: Option<TenantId>,
        queues: &[String],
        limit: u32,
        lease: Duration,
        look: &mut Look,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let op = "claiming jobs";
        let tenant = tenant.map(|t| t.to_string());
        let rows = if let [queue] = queues {
            // A claim that was not woken, on a queue whose last claim found
            // less than it asked for, reads first whether anything is
            // queued: an agent's long poll begins with such a look, and in
            // a large fleet thousands of them a second find nothing. Read
            // beside the writer, they leave it to the claims that find
            // work. A job queued after the read wakes the waiter its claim
            // took before looking, as one queued after the claim would.
            if look.is_fresh() && !self.busy_queues.lock().unwrap().contains(queue) {
                let any: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_claim
                     WHERE state = 'queued' AND queue = ?1 AND (?2 IS NULL OR tenant_id = ?2))",
                )
                .bind(queue)
                .bind(&tenant)
                .fetch_one(&self.pool)
                .await
                .op(op)?;
                if !any {
                    registry::agents::require_online(self, agent_id, op).await?;
                    return Ok(Vec::new());
                }
            }
            // One statement, which SQLite runs as its own transaction on
            // the single write connection, held until the look knows what
            // it took (claims run one at a time here, so the look's names
            // are exact).
            let mut writer = self.take_writer(op).await.op(op)?;
            if !look.open() {
                return Ok(Vec::new());
            }
            let now = self.now();
            // The limit goes through a cast: bound bare, SQLite would
            // prepare the claim, and every trigger on jobs, again on each
            // run (`bare_limit` in mod.rs).
            let rows = sqlx::query(concat!(
                "UPDATE jobs SET ",
                claim_set!(),
                " WHERE rowid IN (
                   SELECT rowid FROM jobs INDEXED BY jobs_claim
                   WHERE state = 'queued' AND queue = ?4 AND (?5 IS NULL OR tenant_id = ?5)
                   ORDER BY effective_priority DESC, fair_at LIMIT CAST(?6 AS INTEGER))
                 AND EXISTS (SELECT 1 FROM agents WHERE id = ?1 AND status = 'online')
                 RETURNING ",
                claim_returning!()
            ))
            .bind(agent_id.to_string())
            .bind(add(now, lease))
            .bind(ms(now))
            .bind(queue)
            .bind(&tenant)
            .bind(i64::from(limit))
            .fetch_all(&mut *writer)
            .await
            .op(op)?;
            look.took(&taken_ids(&rows)?);
            let mut busy = self.busy_queues.lock().unwrap();
            if rows.len() >= limit as usize {
                if !busy.contains(queue) {
                    busy.insert(queue.clone());
                }
            } else {
                busy.remove(queue);
            }
            drop(busy);
            rows
        } else {
            // One index-ordered scan per queue, merged here: a single query
            // over all queues would sort every queued job.
            let mut tx = self.begin(op).await?;
            if !look.open() {
                return Ok(Vec::new());
            }
            let now = self.now();
            let mut candidates: Vec<(i64, i64, String)> = Vec::new();
            for queue in queues {
                let rows = sqlx::query(
                    "SELECT id, effective_priority, fair_at FROM jobs INDEXED BY jobs_claim
                     WHERE state = 'queued' AND queue = ?1 AND (?2 IS NULL OR tenant_id = ?2)
                     ORDER BY effective_priority DESC, fair_at LIMIT CAST(?3 AS INTEGER)",
                )
                .bind(queue)
                .bind(&tenant)
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
            look.took(&taken_ids(&rows)?);
            rows
        };
        if rows.is_empty() {
            registry::agents::require_online(self, agent_id, op).await?;
        }
        let mut claimed = Vec::with_capacity(rows.len());
        let mut order = Vec::with_capacity(rows.len());
        for r in &rows {
            // By position, as the statement returns them; a value of
            // another type or range is a corrupt row, not a panic.
            let int = |i: usize| r.try_get::<i64, _>(i).op(op);
            let payload: String = r.try_get(4).op(op)?;
            let root_step = r.opt_text("root_step")?;
            claimed.push(ClaimedJob {
                id: r.id("id")?,
                tenant_id: r.id("tenant_id")?,
                queue: r.try_get(2).op(op)?,
                kind: r.try_get(3).op(op)?,
                payload: serde_json::from_str(&payload).map_err(|e| corrupt(op, e))?,
                attempt: in_range(op, "attempt", int(5)?)?,
                max_attempts: in_range(op, "max_attempts", int(6)?)?,
                lease_token: int(7)?,
                lease_expires_at: ts(int(8)?),
                timeout_secs: in_range::<u64>(op, "timeout_ms", int(9)?)? / 1000,
                workflow: r
                    .opt_id::<homeostat_model::WorkflowId>("workflow_id")?
                    .map(|w| crate::workflows::context_of(w, root_step)),
                traceparent: r.opt_text("traceparent")?,
            });
            order.push((-int(10)?, int(11)?));
        }
        // RETURNING gives no order; hand them out in claim order.
        let mut indexed: Vec<_> = order.into_iter().zip(claimed).collect();
        indexed.sort_by_key(|(key, _)| *key);
        Ok(indexed.into_iter().map(|(_, job)| job).collect())
    }

    pub(super) async fn complete_batch_now(
        &self,
        agent: AgentId,
        completions: &[Completion],
    ) -> Result<Vec<Option<Ended>>, StoreError> {
        let op = "completing jobs";
        let now = self.now();
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
        let done: Vec<(String, String, String, i64, Option<i64>)> = sqlx::query_as(concat!(
            "UPDATE jobs SET state = 'succeeded', result = c.r, finished_at = ?2, updated_at = ?2,
               lease_expires_at = NULL, timeout_at = NULL
             FROM (SELECT value->>0 AS id, value->>1 AS t, value->>2 AS r
                   FROM json_each(?1)) AS c
             WHERE jobs.id = c.id AND jobs.lease_token = c.t
               AND jobs.lease_agent = ?3 AND ",
            crate::backend::sqlite_running!(),
            " RETURNING jobs.id, jobs.queue, jobs.kind, jobs.queued_at, jobs.started_at"
        ))
        .bind(serde_json::to_string(&batch).map_err(|e| corrupt(op, e))?)
        .bind(ms(now))
        .bind(agent.to_string())
        .fetch_all(&self.writer)
        .await
        .op(op)?;
        let mut done = crate::job_metrics::ended_by_id(done);
        Ok(completions
            .iter()
            .map(|c| done.remove(&c.id.to_string()))
            .collect())
    }
}

async fn tenant_tier(
    tx: &mut Tx,
    tenant_id: TenantId,
    op: &'static str,
) -> Result<homeostat_model::PlanTier, StoreError> {
    let tier: Option<String> = sqlx::query_scalar("SELECT tier FROM tenants WHERE id = ?")
        .bind(tenant_id.to_string())
        .fetch_optional(&mut **tx)
        .await
        .op(op)?;
    let tier = tier.ok_or_else(|| StoreError::NotFound {
        entity: "tenant",
        id: tenant_id.to_string(),
    })?;
    tier.parse().map_err(|e| corrupt(op, e))
}

/// The jobs a claim's rows took.
fn taken_ids(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<JobId>, StoreError> {
    rows.iter().map(|r| r.id("id")).collect()
}
