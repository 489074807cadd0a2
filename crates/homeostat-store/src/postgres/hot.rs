//! The hot path on PostgreSQL, tuned per backend (see docs/benchmarks.md):
//! batch enqueue, claim and batch completion.

use std::collections::HashMap;
use std::time::Duration;

use homeostat_model::{
    AgentId, Id, JobId, MAX_NEEDS_RESULTS_BYTES, NewJob, PlanTier, TenantId, ids_at,
};
use sqlx::Row;

use super::PgStore;
use crate::backend::{At, Backend, pg_judged};
use crate::error::{Context, StoreError, corrupt, in_range};
use crate::job_metrics::Ended;
use crate::signals::Look;
use crate::time::{dur_ms, ms, ts};
use crate::{ClaimedJob, Completion, Enqueued};

/// What a claim returns of each job it took.
macro_rules! claim_returning {
    () => {
        "id, tenant_id, queue, kind, payload, attempt, max_attempts, lease_token, timeout_ms,
         effective_priority, fair_at, lease_expires_at, workflow_id, traceparent, root_step, needed,
         step_context"
    };
}

/// What a claim sets by the judged time `$3` (the database's clock unless a
/// test gives one), with the lease `$2` (ms).
macro_rules! claim_times {
    () => {
        concat!(
            "started_at = ",
            pg_judged!(3),
            ", lease_expires_at = ",
            pg_judged!(3),
            " + $2, timeout_at = ",
            pg_judged!(3),
            " + timeout_ms, updated_at = ",
            pg_judged!(3)
        )
    };
}

/// The claim's gate, a one-time filter evaluated before the locking scan:
/// true, or an error (`REFUSED`) whose message is the agent's status. An
/// empty claim (a long poll's usual answer) so says in its one statement
/// why it was empty when the agent is the reason, and the claimed rows
/// come straight from `RETURNING` (migration 0008).
macro_rules! agent_may_claim {
    () => {
        "(SELECT agent_may_claim($1))"
    };
}

/// The SQLSTATE of `agent_may_claim`'s refusal.
const REFUSED: &str = "QH001";

/// How long a job queued for a woken claim is kept for woken claims (ms),
/// written as the queued job's `lease_expires_at` (a queued job has no
/// lease otherwise; this one is the woken claims', and the claim that takes
/// the job writes its own). An early fixed-width column: the filter reads
/// every row a claim passes over up to that column, and on a new column,
/// last in the row, the store bench's claims cost the database about 7 %
/// more CPU a job; on this one, nothing measurable.
/// A woken claim looks within milliseconds; this bounds the delay of a job
/// whose woken claim never comes (its replica died): claims that were not
/// woken take it after this.
const PROMISED_MS: i64 = 250;

impl PgStore {
    pub(super) async fn enqueue_batch_now(
        &self,
        tenant_id: TenantId,
        jobs: &[NewJob],
        announce: &[String],
        promised: &[bool],
    ) -> Result<Vec<Enqueued>, StoreError> {
        let op = "enqueueing jobs";
        for job in jobs {
            job.validate()?;
        }
        // The statement tells the other replicas (`NOTIFY`, delivered at
        // commit).
        let mut conn = self.watch(self.pool.acquire().await).op(op)?;
        self.enqueue_on(&mut conn, tenant_id, jobs, announce, promised)
            .await
    }

    /// Enqueues validated jobs on `conn` (a transaction, or not), sending
    /// the `announce` payloads with them; those `promised` (by index; none
    /// past its end) kept for woken claims for [`PROMISED_MS`].
    pub(super) async fn enqueue_on(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant_id: TenantId,
        jobs: &[NewJob],
        announce: &[String],
        promised: &[bool],
    ) -> Result<Vec<Enqueued>, StoreError> {
        let op = "enqueueing jobs";
        let At { now, judged } = self.at();
        // The tenant's step (`crate::fair`) is looked up by the statement
        // itself, from its tier, rather than by a statement of its own
        // before it: one round trip less for every enqueue.
        let turn = Backend::options(self).fair_share_turn;
        let (tiers, steps): (Vec<&str>, Vec<i64>) = PlanTier::ALL
            .iter()
            .map(|&t| (t.as_str(), crate::fair::step_ms(turn, t)))
            .unzip();
        // Fold same-fingerprint jobs of the batch into one row (PostgreSQL
        // refuses to upsert one row twice in a statement). Each input has an
        // id; those of the inputs folded into an earlier row are never
        // stored, so they match nothing and come back deduplicated.
        let generated: Vec<JobId> = ids_at(now, jobs.len()).map(JobId::from).collect();
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut rows: Vec<(usize, JobId, i64)> = Vec::new(); // (input index, id, occurrences)
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
            // Due no earlier than now, by the clock that judges it (the
            // database's, unless a test gives one): the statement takes the
            // later of the two.
            let run_at = job.run_at.map(ms);
            c.id.push(id.as_uuid());
            c.queue.push(job.queue.clone());
            c.kind.push(job.kind.clone());
            c.payload.push(job.payload.to_string());
            c.priority.push(i64::from(job.priority));
            c.base.push(i64::from(job.priority));
            c.fingerprint.push(job.fingerprint.clone());
            c.occurrences.push(*occurrences);
            c.state.push(job.initial_state(now).as_str().to_owned());
            c.max_attempts.push(i64::from(job.max_attempts()));
            c.timeout.push(dur_ms(job.timeout()));
            c.run_at.push(run_at);
            c.deadline.push(job.deadline.map(ms));
            c.approval.push(job.approval_expires_at.map(ms));
            c.limit_keys.push(crate::limits::stored_keys(job));
            c.traceparent.push(job.traceparent.clone());
            c.promised.push(promised.get(*i).copied().unwrap_or(false));
        }
        let flows = crate::fair::Flows::of(c.state.iter().zip(&c.queue).zip(&c.base).map(
            |((state, queue), base)| {
                (dur_ms(turn) > 0 && state == "queued").then_some((queue.as_str(), *base))
            },
        ));
        // The statement also sends the announcements to the other replicas'
        // waiting claims (`NOTIFY`, delivered at commit; an uncorrelated
        // subquery, so it runs once per statement, and none for an empty
        // list). The rows entering a queue take turns from the later of now,
        // the head of the queue at their priority and the tenant's last
        // queued turn in it plus a step (`crate::fair`): two index probes
        // per queue and priority of the batch, in an uncorrelated subquery
        // (run once, before the rows), none when fair share is off. The
        // tenant's step comes from its tier (`tenant`, read once); an
        // unknown tenant inserts nothing, and nothing comes back.
        let stored = sqlx::query(concat!(
            "WITH tenant AS MATERIALIZED (
               SELECT s.step FROM tenants te
                 JOIN UNNEST((SELECT $29::text[]), $22::bigint[]) AS s(tier, step) ON s.tier = te.tier
                WHERE te.id = $1),
             ins AS (INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, base_priority,
               effective_priority, fingerprint, occurrences, state, max_attempts, timeout_ms, run_at,
               queued_at, fair_at, deadline_at, approval_expires_at, created_at, updated_at,
               limit_keys, traceparent, lease_expires_at)
             SELECT id, $1, queue, kind, payload, priority, base, base, fingerprint, occurrences,
               state::job_state, max_attempts, timeout_ms, GREATEST(run_at, ",
            pg_judged!(17),
            "), GREATEST(run_at, ",
            pg_judged!(17),
            "), CASE WHEN flow > 0 AND (SELECT step FROM tenant) > 0 THEN (SELECT array_agg(GREATEST(",
            pg_judged!(17),
            ",
                   (SELECT j.fair_at FROM jobs j
                     WHERE j.state = 'queued' AND j.queue = f.queue AND j.effective_priority = f.base
                     ORDER BY j.fair_at LIMIT 1),
                   (SELECT j.fair_at + (SELECT step FROM tenant) FROM jobs j
                     WHERE j.state = 'queued' AND j.tenant_id = $1 AND j.queue = f.queue
                     ORDER BY j.fair_at DESC LIMIT 1)) ORDER BY f.i)
                 FROM UNNEST((SELECT $23::text[]), $24::bigint[]) WITH ORDINALITY AS f(queue, base, i)
               )[flow] + rank * (SELECT step FROM tenant) ELSE GREATEST(run_at, ",
            pg_judged!(17),
            ") END, COALESCE(deadline_at, GREATEST(run_at, ",
            pg_judged!(17),
            ") + $18), approval, $2, $2, limit_keys, traceparent,
               CASE WHEN promised THEN ",
            pg_judged!(17),
            " + $28 END
             FROM UNNEST((SELECT $3::uuid[]), $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[],
                         $9::text[], $10::bigint[], $11::text[], $12::bigint[], $13::bigint[],
                         $14::bigint[], $15::bigint[], $16::bigint[], $20::text[], $21::bigint[],
                         $25::bigint[], $26::text[], $27::bool[])
               AS t(id, queue, kind, payload, priority, base, fingerprint, occurrences, state,
                    max_attempts, timeout_ms, run_at, deadline_at, approval, limit_keys, rank, flow,
                    traceparent, promised)
             WHERE EXISTS (SELECT 1 FROM tenant)
             ON CONFLICT (tenant_id, fingerprint)
               WHERE fingerprint IS NOT NULL AND state NOT IN ",
            crate::rows::terminal!(),
            " DO UPDATE SET occurrences = jobs.occurrences + excluded.occurrences,
                            updated_at = excluded.updated_at
             RETURNING id, fingerprint, occurrences)
             SELECT id, fingerprint, occurrences FROM ins,
               (SELECT count(pg_notify('homeostat_queued', p)) AS announced
                FROM UNNEST((SELECT $19::text[])) AS p) AS n"
        ))
        .bind(tenant_id.as_uuid())
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
        .bind(judged)
        .bind(dur_ms(Backend::options(self).default_queue_deadline))
        .bind(announce)
        .bind(&c.limit_keys)
        .bind(&flows.rank)
        .bind(&steps)
        .bind(&flows.queues)
        .bind(&flows.priorities)
        .bind(&flows.flow)
        .bind(&c.traceparent)
        .bind(&c.promised)
        .bind(PROMISED_MS)
        .bind(&tiers)
        .fetch_all(&mut *conn)
        .await;
        let stored = self.watch(stored).op(op)?;
        if stored.is_empty() && !jobs.is_empty() {
            // Every row comes back, inserted or folded into a live one,
            // unless the tenant is unknown.
            return Err(StoreError::NotFound {
                entity: "tenant",
                id: tenant_id.to_string(),
            });
        }
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
        // Opened once a connection is had: claims that finished while this
        // one waited for it have withdrawn what they took. Claims run side
        // by side here, so the look's names are a good guess, not exact,
        // and a wrong guess costs a claim that finds nothing.
        let mut conn = self.watch(self.pool.acquire().await).op(op)?;
        if !look.open() {
            return Ok(Vec::new());
        }
        let judged = self.at().judged;
        let tenant = tenant.map(Id::from);
        // A claim that was not woken passes by jobs kept for woken claims
        // (a queued job's `lease_expires_at`, see `PROMISED_MS`): claims run
        // side by side here, so a woken claim's names cannot be withdrawn in
        // time, and an agent back on its own, on any replica, would take its
        // job and leave it a look that finds nothing.
        let woken = !look.is_fresh();
        // The limit (and the list of queues) is a subquery, which the
        // planner does not look into: given the value, it costs a claim of
        // `limit` rows, and the cached generic plan (a tenth of the queue,
        // for all it knows) always looked dearer, so every claim was planned
        // anew (about a tenth of a millisecond). Hidden from both, the two
        // costs agree and the cached plan is reused (`tests/plans.rs`).
        let rows = if let [queue] = queues {
            // The usual case, shaped like the minimal claim. The rows are
            // updated by the address the locking scan found them at (no
            // second walk down the primary key): the lock keeps that version
            // current. A job another transaction changed after this
            // statement's snapshot is locked at its new address, which the
            // snapshot cannot see: it stays queued for the next claim.
            sqlx::query(concat!(
                "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_agent = $1,
                   lease_token = lease_token + 1, ",
                claim_times!(),
                "
                 WHERE ",
                agent_may_claim!(),
                " AND ctid = ANY(ARRAY(
                   SELECT ctid FROM jobs
                   WHERE state = 'queued' AND queue = $4 AND ($5::uuid IS NULL OR tenant_id = $5)
                     AND ($7 OR lease_expires_at IS NULL OR lease_expires_at <= ",
                pg_judged!(3),
                ")
                   ORDER BY effective_priority DESC, fair_at
                   LIMIT (SELECT $6::bigint)
                   FOR UPDATE SKIP LOCKED))
                 RETURNING ",
                claim_returning!()
            ))
            .bind(agent_id.as_uuid())
            .bind(dur_ms(lease))
            .bind(judged)
            .bind(queue)
            .bind(tenant)
            .bind(i64::from(limit))
            .bind(woken)
            .fetch_all(&mut *conn)
            .await
        } else {
            // Per queue an index-ordered scan that skips locked rows, then
            // the best `limit` across queues; one statement (the gate has
            // checked that the agent is online).
            sqlx::query(concat!(
                "WITH agent AS (SELECT tenant_id FROM agents WHERE id = $1),
                 picked AS (
                   SELECT c.id, c.effective_priority, c.fair_at
                   FROM agent a, unnest((SELECT $5::text[])) AS q(name),
                   LATERAL (
                     SELECT j.id, j.effective_priority, j.fair_at FROM jobs j
                     WHERE j.state = 'queued' AND j.queue = q.name
                       AND (a.tenant_id IS NULL OR j.tenant_id = a.tenant_id)
                       AND ($6 OR j.lease_expires_at IS NULL OR j.lease_expires_at <= ",
                pg_judged!(3),
                ")
                     ORDER BY j.effective_priority DESC, j.fair_at
                     LIMIT (SELECT $4::bigint)
                     FOR UPDATE SKIP LOCKED) c
                   ORDER BY c.effective_priority DESC, c.fair_at
                   LIMIT (SELECT $4::bigint))
                 UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_agent = $1,
                   lease_token = lease_token + 1, ",
                claim_times!(),
                "
                 WHERE ",
                agent_may_claim!(),
                " AND id = ANY(ARRAY(SELECT id FROM picked))
                 RETURNING ",
                claim_returning!()
            ))
            .bind(agent_id.as_uuid())
            .bind(dur_ms(lease))
            .bind(judged)
            .bind(i64::from(limit))
            .bind(queues)
            .bind(woken)
            .fetch_all(&mut *conn)
            .await
        };
        drop(conn);
        let rows = match rows {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(REFUSED) => {
                let status = Some(e.message()).filter(|s| *s != "missing");
                // Refuses every status but `online`, which the gate never reports.
                crate::decisions::claim_refusal(op, agent_id, status)?;
                return Ok(Vec::new());
            }
            rows => self.watch(rows).op(op)?,
        };
        // Unchecked decoding: the statement above fixes each column's type,
        // and checking it again per value is a tenth of the claim's client
        // time. A wrong width still fails to decode, as an error.
        let mut claimed = Vec::with_capacity(rows.len());
        let mut needed = Vec::new();
        for r in &rows {
            let int = |i: usize| r.try_get_unchecked::<i64, _>(i).op(op);
            let payload: &str = r.try_get_unchecked(4).op(op)?;
            let root_step: Option<String> = r.try_get_unchecked(14).op(op)?;
            let job = ClaimedJob {
                id: JobId::from(r.try_get_unchecked::<Id, _>(0).op(op)?),
                tenant_id: TenantId::from(r.try_get_unchecked::<Id, _>(1).op(op)?),
                queue: r.try_get_unchecked(2).op(op)?,
                kind: r.try_get_unchecked(3).op(op)?,
                payload: serde_json::from_str(payload).map_err(|e| corrupt(op, e))?,
                attempt: in_range(op, "attempt", int(5)?)?,
                max_attempts: in_range(op, "max_attempts", int(6)?)?,
                lease_token: int(7)?,
                lease_expires_at: ts(int(11)?),
                timeout_secs: in_range::<u64>(op, "timeout_ms", int(8)?)? / 1000,
                workflow: match r.try_get_unchecked::<Option<Id>, _>(12).op(op)? {
                    None => None,
                    Some(w) => Some(match r.try_get_unchecked::<Option<&str>, _>(16).op(op)? {
                        Some(written) => crate::workflows::written_context(w.into(), written)
                            .map_err(|e| corrupt(op, e))?,
                        None => crate::workflows::context_of(w.into(), root_step),
                    }),
                },
                traceparent: r.try_get_unchecked(13).op(op)?,
            };
            if r.try_get_unchecked::<Option<bool>, _>(15).op(op)? == Some(true) {
                needed.push(job.id.as_uuid());
            }
            claimed.push(((-int(9)?, int(10)?), job));
        }
        self.leased_steps.leased(&needed, ms(self.now()));
        let taken: Vec<JobId> = claimed.iter().map(|(_, job)| job.id).collect();
        look.took(&taken);
        claimed.sort_by_key(|(key, _)| *key);
        Ok(claimed.into_iter().map(|(_, job)| job).collect())
    }

    pub(super) async fn complete_batch_now(
        &self,
        agent: AgentId,
        completions: &[Completion],
    ) -> Result<Vec<Option<Ended>>, StoreError> {
        let op = "completing jobs";
        let now = self.now();
        let ids: Vec<Id> = completions.iter().map(|c| c.id.as_uuid()).collect();
        let tokens: Vec<i64> = completions.iter().map(|c| c.lease_token).collect();
        let results: Vec<Option<String>> = completions
            .iter()
            .map(|c| c.result.as_ref().map(|v| v.to_string()))
            .collect();
        let statement = if self.leased_steps.take_any(&ids) {
            COMPLETE_STEPS
        } else {
            COMPLETE
        };
        let done = sqlx::query_as::<_, (Id, String, String, i64, Option<i64>)>(statement)
            .bind(&ids)
            .bind(&tokens)
            .bind(&results)
            .bind(ms(now))
            .bind(agent.as_uuid())
            .fetch_all(&self.pool)
            .await;
        let done = self.watch(done).op(op)?;
        let mut done = crate::job_metrics::ended_by_id(done);
        Ok(ids.iter().map(|id| done.remove(id)).collect())
    }
}

/// The update that completes `$1` ids under `$2` lease tokens with `$3`
/// results, at `$4`, held by agent `$5`, setting `$set` too and returning
/// `$returning` after what [`crate::job_metrics::ended_by_id`] reads.
macro_rules! complete_update {
    ($set:literal, $returning:literal) => {
        concat!(
            "UPDATE jobs SET state = 'succeeded', result = c.result, finished_at = $4,
               updated_at = $4, lease_expires_at = NULL, timeout_at = NULL",
            $set,
            "
             FROM UNNEST((SELECT $1::uuid[]), $2::bigint[], $3::text[]) AS c(id, token, result)
             WHERE jobs.id = c.id AND jobs.lease_token = c.token
               AND jobs.lease_agent = $5 AND jobs.",
            crate::backend::pg_running!(),
            "
             RETURNING jobs.id, jobs.queue, jobs.kind, jobs.queued_at, jobs.started_at",
            $returning
        )
    };
}

/// [`MAX_NEEDS_RESULTS_BYTES`] in SQL.
macro_rules! max_needs_results_bytes {
    () => {
        "262144"
    };
}
const _: () = assert!(MAX_NEEDS_RESULTS_BYTES == 262_144);

/// Completes the jobs ([`complete_update`]).
const COMPLETE: &str = complete_update!("", "");

/// [`COMPLETE`], and the workflow steps whose needs the completed jobs
/// were move in the same statement, for all of them at once, instead of
/// the row trigger of migration `workflows` once each (its call was most
/// of what a workflow step cost beyond a job). The completed rows that
/// others need are marked `needed = false` — done, their dependents moved
/// — which the trigger's `WHEN` skips; every other end of a step, and a
/// completion by the plain statement, still goes through the trigger.
/// The moves are the trigger's for a success (see its comments).
///
/// A released step whose every need is among the completed rows has its
/// context — its name, its needs' names and results — written on its job
/// (`jobs.step_context`, migration 0026), and its claim reads nothing
/// more; the count of its needs is read to know that (a running step may
/// have added needs). Over [`MAX_NEEDS_RESULTS_BYTES`] of results, or
/// with needs finished by other statements, it is left NULL, and the
/// claim reads the context as before.
const COMPLETE_STEPS: &str = concat!(
    "WITH done AS (",
    complete_update!(
        ", needed = CASE WHEN jobs.needed THEN false END",
        ", jobs.needed, jobs.step, jobs.result"
    ),
    "),
     finished AS (
       SELECT n.job_id, count(*) AS n,
              CASE WHEN bool_and(d.step IS NOT NULL)
                    AND coalesce(sum(octet_length(d.result)), 0) <= ",
    max_needs_results_bytes!(),
    "
                   THEN json_agg(json_build_array(d.step, d.result))::text END AS context
         FROM done d JOIN workflow_needs n ON n.parent_id = d.id
        WHERE d.needed = false GROUP BY n.job_id),
     moved AS (
       UPDATE workflow_steps s
          SET needs_left = s.needs_left - e.n,
              skipped = s.needs_left = e.n AND NOT (
                  s.cond = 'always'
                  OR (s.cond = 'on_success' AND s.not_succeeded = 0)
                  OR (s.cond = 'on_failure' AND s.not_succeeded > 0))
         FROM finished e
        WHERE s.job_id = e.job_id
       RETURNING s.job_id, s.name, s.needs_left, s.skipped, s.cond, s.deadline_ms, e.n, e.context),
     released AS (
       UPDATE jobs SET ",
    crate::workflows::pg_release_set!("$4"),
    ",
             step_context = CASE WHEN NOT s.skipped AND s.context IS NOT NULL
                AND s.n = (SELECT count(*) FROM workflow_needs n WHERE n.job_id = s.job_id)
                THEN '{\"step\":' || to_json(s.name) || ',\"needs\":' || s.context || '}' END
         FROM moved s
        WHERE jobs.id = s.job_id AND s.needs_left = 0 AND jobs.state = 'pending'
       RETURNING jobs.tenant_id, jobs.queue, jobs.state),
     announced AS (
       SELECT count(pg_notify('homeostat_queued', '0 ' || r.n || ' ' || r.tenant_id || ' ' || r.queue))
         FROM (SELECT tenant_id, queue, count(*) AS n FROM released
                WHERE state = 'queued' GROUP BY tenant_id, queue) r)
     SELECT d.id, d.queue, d.kind, d.queued_at, d.started_at FROM done d, announced"
);

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
    run_at: Vec<Option<i64>>,
    deadline: Vec<Option<i64>>,
    approval: Vec<Option<i64>>,
    limit_keys: Vec<Option<String>>,
    traceparent: Vec<Option<String>>,
    promised: Vec<bool>,
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
