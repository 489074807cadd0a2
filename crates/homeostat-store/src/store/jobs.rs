//! The store's jobs: enqueue, claim, complete, fail, and what reads them.

use std::time::Duration;

use homeostat_model::{AgentId, AuditAction, Job, JobId, JobState, NewJob, TenantId};
use homeostat_runtime::Fence;
use jiff::Timestamp;

use super::{Db, Store};
use crate::{
    AgentCount, ClaimedJob, CompletedBatch, Completion, Enqueued, FailOutcome, Failure, JobFilter,
    MinuteOutcomes, Once, Page, PeriodicEnqueue, QueueWaiter, Stats, StoreError, Swept, attention,
    backend, decisions, health, idempotency, jobs, registry, signals, stats, tally, time,
};

impl Store {
    // --- jobs -------------------------------------------------------------

    /// Enqueues one job (see [`Store::enqueue_batch`]).
    pub async fn enqueue(&self, tenant_id: TenantId, job: &NewJob) -> Result<Enqueued, StoreError> {
        let mut out = self
            .enqueue_batch(tenant_id, std::slice::from_ref(job))
            .await?;
        Ok(out.remove(0))
    }

    /// Enqueues jobs in one transaction, all or none. A job whose fingerprint
    /// matches a live job of the tenant returns that job, its occurrences
    /// increased.
    pub async fn enqueue_batch(
        &self,
        tenant_id: TenantId,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let jobs = self.resolve_limits(tenant_id, jobs).await?;
        let enqueued = dispatch!(
            self,
            signals::enqueue(&self.local.signals, tenant_id, &jobs)
        )?;
        self.admit_enqueued(&jobs).await?;
        Ok(enqueued)
    }

    /// Admits at once what an enqueue left waiting for its limits, so a
    /// job whose keys have room is claimable when the enqueue answers.
    async fn admit_enqueued(&self, jobs: &[NewJob]) -> Result<(), StoreError> {
        if jobs.iter().any(|j| !j.limits.is_empty()) {
            self.admit_waiting("system").await?;
        }
        Ok(())
    }

    /// Enqueues like [`Store::enqueue_batch`], once per idempotency `key`
    /// of the tenant within `lifetime`: a repeat gets the first answer back
    /// (`replayed`) instead of enqueueing again, even when it races the
    /// first.
    pub async fn enqueue_once(
        &self,
        tenant_id: TenantId,
        key: &str,
        jobs: &[NewJob],
        lifetime: Duration,
    ) -> Result<Once, StoreError> {
        let jobs = self.resolve_limits(tenant_id, jobs).await?;
        let once = dispatch!(
            self,
            idempotency::enqueue_once(tenant_id, key, &jobs, lifetime)
        )?;
        if !once.replayed {
            let queued = signals::queued_by_queue(&jobs, self.now());
            dispatch!(self, signals::wake(&self.local.signals, tenant_id, &queued));
            self.admit_enqueued(&jobs).await?;
        }
        Ok(once)
    }

    /// Deletes up to `limit` idempotency keys older than `lifetime`.
    pub async fn delete_old_idempotency_keys(
        &self,
        lifetime: Duration,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        dispatch!(self, idempotency::forget_old(lifetime, limit, fence))
    }

    /// A waiting claim of `agent` for up to `capacity` jobs queued from now
    /// on, by any replica, on its queues (`only` some of them): jobs queued
    /// wake about as many waiting claims as they need, oldest first. Take it
    /// before looking for work.
    pub async fn queued_waiter(
        &self,
        agent: AgentId,
        only: Option<&[String]>,
        capacity: u32,
    ) -> Result<QueueWaiter, StoreError> {
        let op = "waiting for queued jobs";
        self.listen();
        let facts = self.agent_facts(agent, op).await?;
        let queues = decisions::claim_queues(&facts.queues, only);
        Ok(self.local.signals.waiter(facts.tenant, &queues, capacity))
    }

    /// An agent's tenant and queues, cached after the first look.
    async fn agent_facts(
        &self,
        agent: AgentId,
        op: &'static str,
    ) -> Result<registry::agents::AgentFacts, StoreError> {
        dispatch!(
            self,
            registry::agents::agent_facts(&self.local.agent_facts, agent, op)
        )
    }

    /// Claims for `agent` from its queues (`only` some of them), with
    /// `look` (see [`signals::Look`]).
    async fn claim_in(
        &self,
        agent: AgentId,
        only: Option<&[String]>,
        limit: u32,
        lease: Duration,
        look: &mut signals::Look,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let facts = self.agent_facts(agent, "claiming jobs").await?;
        let queues = decisions::claim_queues(&facts.queues, only);
        let mut claimed = dispatch!(self.claim(agent, facts.tenant, &queues, limit, lease, look))?;
        if claimed.iter().any(|c| c.workflow.is_some()) {
            // The jobs are claimed: failing the claim now would leave them
            // leased to an agent that never heard of them. The workflow is
            // still there to read (`GET /v1/workflows/{id}`).
            if let Err(e) = dispatch!(self, crate::workflows::fill_contexts(&mut claimed)) {
                tracing::warn!(error = %e, "claimed workflow steps go out without their needs");
            }
        }
        Ok(claimed)
    }

    /// Returns once waiting claims hear of jobs queued by other replicas
    /// (PostgreSQL's listener connected; at once on SQLite). Waiting claims
    /// start listening themselves; a server waits for this before it
    /// answers, so that no early claim misses an announcement.
    pub async fn listening(&self) {
        self.listen();
        dispatch!(self.listening())
    }

    /// Writes this replica's readiness row: `Ok` when writes succeed now
    /// (a full disk, a read-only database or a lost primary fail it).
    pub async fn probe_write(&self, replica: &str) -> Result<(), StoreError> {
        dispatch!(self, health::probe_write(replica))
    }

    /// Whether the connection that hears other replicas (queued jobs,
    /// released leases) listens now; `None` on SQLite, which has none, and
    /// before it is started ([`Store::listening`]).
    pub fn listener_connected(&self) -> Option<bool> {
        match &self.db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(s) => backend::Backend::listener_connected(s),
            #[cfg(feature = "postgres")]
            Db::Postgres(s) => backend::Backend::listener_connected(s),
        }
    }

    /// Starts hearing other replicas' announcements, once.
    fn listen(&self) {
        match &self.db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(s) => backend::Backend::listen(s, &self.local.hearing),
            #[cfg(feature = "postgres")]
            Db::Postgres(s) => backend::Backend::listen(s, &self.local.hearing),
        }
    }

    /// How many claims wait on this store now.
    pub fn waiting_claims(&self) -> usize {
        self.local.signals.waiting()
    }

    /// Wakes waiting claims for the jobs `swept` moved back to `queued`.
    pub(super) async fn woken(
        &self,
        swept: Result<Swept, StoreError>,
    ) -> Result<Swept, StoreError> {
        self.limits_moved();
        if let Ok(swept) = &swept {
            for (tenant, queued) in swept.queued_by_tenant() {
                dispatch!(self, signals::wake(&self.local.signals, tenant, &queued));
            }
        }
        swept
    }

    /// Registers this store's job metrics (jobs finished by queue, kind
    /// and outcome, retries, reclaims, time queued and running) in
    /// `registry`: what happens to jobs through this store, counted as it
    /// happens.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.local.jobs.register(registry);
    }

    /// [`Store::woken`], with what the sweep did counted in the job
    /// metrics (and as reclaims, for `reclaim`).
    pub(super) async fn counted(
        &self,
        swept: Result<Swept, StoreError>,
        reclaim: Option<crate::job_metrics::Reclaim>,
    ) -> Result<Swept, StoreError> {
        if let Ok(s) = &swept {
            self.local.jobs.swept(&s.moved, reclaim);
        }
        self.woken(swept).await
    }

    /// A batch of reclaimed jobs, counted.
    pub(super) fn counted_reclaims(
        &self,
        swept: Result<Swept, StoreError>,
        why: crate::job_metrics::Reclaim,
    ) -> Result<Swept, StoreError> {
        if let Ok(s) = &swept {
            self.local.jobs.swept(&s.moved, Some(why));
        }
        swept
    }

    /// Wakes waiting claims for one job queued again.
    pub(super) async fn woken_job(&self, job: Result<Job, StoreError>) -> Result<Job, StoreError> {
        self.limits_moved();
        if let Ok(job) = &job
            && job.state == JobState::Queued
        {
            dispatch!(
                self,
                signals::wake(
                    &self.local.signals,
                    job.tenant_id,
                    &[(job.queue.clone(), 1)]
                )
            );
        }
        job
    }

    /// Enqueues `job` for cron slot `slot` of periodic schedule `schedule`,
    /// unless that slot or a later one was already enqueued (by any
    /// replica): claiming the slot and enqueueing are one transaction.
    /// `None` when the slot was taken. Audited.
    pub async fn enqueue_periodic(
        &self,
        periodic: &PeriodicEnqueue<'_>,
        fence: Option<&Fence>,
    ) -> Result<Option<Enqueued>, StoreError> {
        let resolved = self
            .resolve_limits(periodic.tenant_id, std::slice::from_ref(periodic.job))
            .await?;
        let periodic = &PeriodicEnqueue {
            job: &resolved[0],
            ..*periodic
        };
        let enqueued = dispatch!(self, jobs::enqueue_periodic(periodic, fence))?;
        if enqueued.is_some() {
            self.admit_enqueued(&resolved).await?;
            let queued = signals::queued_by_queue(std::slice::from_ref(periodic.job), self.now());
            dispatch!(
                self,
                signals::wake(&self.local.signals, periodic.tenant_id, &queued)
            );
        }
        Ok(enqueued)
    }

    /// Claims up to `limit` queued jobs from the agent's queues (its tenant's
    /// only, unless it is a platform agent), highest effective priority then
    /// oldest, each under a lease of `lease` with a new fencing token.
    pub async fn claim(
        &self,
        agent_id: AgentId,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let mut look = signals::Look::fresh(&self.local.signals, limit);
        self.claim_in(agent_id, None, limit, lease, &mut look).await
    }

    /// [`Store::claim`] from some of the agent's queues only (queues it
    /// was not registered for are ignored).
    pub async fn claim_from(
        &self,
        agent_id: AgentId,
        queues: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let mut look = signals::Look::fresh(&self.local.signals, limit);
        self.claim_in(agent_id, Some(queues), limit, lease, &mut look)
            .await
    }

    /// Claims like [`Store::claim_from`] (every queue of the agent's when
    /// `only` is `None`) for a claim that `woken`'s wake-up started. `None`
    /// when it does not look: every job queued by this replica that woke
    /// it was taken by other claims meanwhile (it would find nothing; keep
    /// waiting). Drop `woken` after this, not before: a waiter dropped
    /// before its claim looked hands its jobs on to the next one.
    pub async fn claim_woken(
        &self,
        woken: &QueueWaiter,
        agent_id: AgentId,
        only: Option<&[String]>,
        limit: u32,
        lease: Duration,
    ) -> Result<Option<Vec<ClaimedJob>>, StoreError> {
        let mut look = signals::Look::woken(&self.local.signals, woken, limit);
        let claimed = self
            .claim_in(agent_id, only, limit, lease, &mut look)
            .await?;
        Ok((!look.withdrawn()).then_some(claimed))
    }

    /// Extends the lease `agent` holds on a running job; refused for a stale
    /// token or a job another agent holds.
    pub async fn heartbeat_job(
        &self,
        agent: AgentId,
        id: JobId,
        lease_token: i64,
        lease: Duration,
    ) -> Result<Timestamp, StoreError> {
        dispatch!(self, jobs::heartbeat_job(agent, id, lease_token, lease))
    }

    /// Completes the jobs `agent` holds, in one statement. A completion
    /// whose lease token is not the job's current one (the job was
    /// reclaimed, or is no longer running), or of a job another agent holds,
    /// changes nothing and is reported as stale, by id.
    pub async fn complete_batch(
        &self,
        agent: AgentId,
        completions: &[Completion],
    ) -> Result<CompletedBatch, StoreError> {
        let mut out = CompletedBatch::default();
        if completions.is_empty() {
            return Ok(out);
        }
        let accepted = dispatch!(self.complete_batch(agent, completions))?;
        let now = crate::time::ms(self.now());
        for (c, ended) in completions.iter().zip(accepted) {
            match ended {
                Some(ended) => {
                    self.local.jobs.reported(&ended, now, Some("succeeded"));
                    out.completed.push(c.id);
                }
                None => out.stale.push(c.id),
            }
        }
        dispatch!(
            self,
            tally::succeeded(&self.local.tally, out.completed.len())
        );
        self.limits_moved();
        self.workflows_moved(&out.completed).await;
        Ok(out)
    }

    /// Completes one job `agent` holds; a stale token is an error.
    pub async fn complete(
        &self,
        agent: AgentId,
        id: JobId,
        lease_token: i64,
        result: Option<serde_json::Value>,
    ) -> Result<(), StoreError> {
        let done = self
            .complete_batch(
                agent,
                &[Completion {
                    id,
                    lease_token,
                    result,
                }],
            )
            .await?;
        if done.stale.is_empty() {
            Ok(())
        } else {
            Err(StoreError::StaleLease {
                operation: "completing a job",
                job: id,
                token: lease_token,
            })
        }
    }

    /// Records a failed attempt: retried (`scheduled` after the backoff)
    /// while attempts are left and the error is not permanent, else `dead`.
    pub async fn fail(&self, failure: &Failure<'_>) -> Result<FailOutcome, StoreError> {
        let out = dispatch!(self, jobs::fail(failure));
        self.limits_moved();
        let (out, ended) = out?;
        let dead = out.state == JobState::Dead;
        self.local
            .jobs
            .reported(&ended, crate::time::ms(self.now()), dead.then_some("dead"));
        if dead {
            self.workflows_moved(&[failure.id]).await;
        }
        Ok(out)
    }

    /// Extends the leases `agent` holds on running jobs, in one statement:
    /// for each `(id, lease token)`, whether its lease was extended (false
    /// when the token is stale, the job is no longer running, or another
    /// agent holds it).
    pub async fn heartbeat_jobs(
        &self,
        agent: AgentId,
        held: &[(JobId, i64)],
        lease: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        dispatch!(self, jobs::heartbeat_jobs(agent, held, lease))
    }

    /// Gives a running job `agent` holds back to its queue without using up
    /// its attempt (the agent is shutting down); refused for a stale token
    /// or a job another agent holds.
    pub async fn release_job(
        &self,
        agent: AgentId,
        id: JobId,
        lease_token: i64,
    ) -> Result<(), StoreError> {
        let (tenant, queue) = dispatch!(self, jobs::release(agent, id, lease_token))?;
        self.limits_moved();
        dispatch!(
            self,
            signals::wake(&self.local.signals, tenant, &[(queue, 1)])
        );
        Ok(())
    }

    /// Cancels a live job (audited).
    pub async fn cancel(&self, id: JobId, actor: &str) -> Result<Job, StoreError> {
        let job = dispatch!(
            self,
            jobs::transition(id, JobState::Cancelled, AuditAction::JobCancelled, actor)
        );
        self.limits_moved();
        if let Ok(job) = &job {
            self.local.jobs.finished(&job.queue, &job.kind, "cancelled");
        }
        self.workflows_moved(&[id]).await;
        job
    }

    /// Approves a job awaiting approval (audited).
    pub async fn approve(&self, id: JobId, actor: &str) -> Result<Job, StoreError> {
        self.woken_job(dispatch!(
            self,
            jobs::transition(id, JobState::Queued, AuditAction::JobApproved, actor)
        ))
        .await
    }

    /// Re-queues a dead or expired job with fresh attempts (audited).
    pub async fn retry(&self, id: JobId, actor: &str) -> Result<Job, StoreError> {
        self.woken_job(dispatch!(
            self,
            jobs::transition(id, JobState::Queued, AuditAction::JobRetried, actor)
        ))
        .await
    }

    /// One job.
    pub async fn get_job(&self, id: JobId) -> Result<Job, StoreError> {
        dispatch!(self, jobs::get_job(id))
    }

    /// The tenant's live job with this fingerprint, if any.
    pub async fn live_job_by_fingerprint(
        &self,
        tenant_id: TenantId,
        fingerprint: &str,
    ) -> Result<Option<Job>, StoreError> {
        dispatch!(self, jobs::live_job_by_fingerprint(tenant_id, fingerprint))
    }

    /// Live jobs by state and queue, each queue's backlog and oldest
    /// waiting job, agents by status: what metrics and dashboards read. The
    /// cost follows the live jobs (each count reads a live state's partial
    /// index), not the finished jobs kept for retention; a backlog too large
    /// to count at every read is counted behind the reads, and
    /// `counted_at` says when (the module `stats`).
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        dispatch!(self, stats::stats(&self.local.counts))
    }

    /// Each tenant's live jobs by queue, counted now (one grouped count of
    /// the live jobs: its cost follows the backlog, so callers keep it).
    pub async fn live_by_tenant(
        &self,
    ) -> Result<std::collections::HashMap<TenantId, Vec<(String, u64)>>, StoreError> {
        dispatch!(self, stats::live_by_tenant())
    }

    /// Agents by status, counted now.
    pub async fn agent_counts(&self) -> Result<Vec<AgentCount>, StoreError> {
        dispatch!(self, stats::agent_counts())
    }

    /// Jobs finished per minute from the minute that holds `since`
    /// (succeeded; dead or expired), oldest minute first; minutes without
    /// any are absent. Succeeded jobs are counted as stores complete them:
    /// this store's counts are exact, another replica's up to a few seconds
    /// late; counts are kept a day.
    pub async fn finished_per_minute(
        &self,
        since: Timestamp,
    ) -> Result<Vec<MinuteOutcomes>, StoreError> {
        dispatch!(
            self,
            attention::finished_per_minute(&self.local.tally, time::ms(since))
        )
    }

    /// The newest `limit` dead jobs, and how many dead jobs there are.
    pub async fn dead_jobs(&self, limit: u32) -> Result<(Vec<Job>, u64), StoreError> {
        dispatch!(self, attention::dead_jobs(limit))
    }

    /// `limit` jobs waiting for approval, those whose approval expires
    /// soonest first.
    pub async fn awaiting_approval(&self, limit: u32) -> Result<Vec<Job>, StoreError> {
        dispatch!(self, attention::awaiting_approval(limit))
    }

    /// How many running jobs each agent holds (agents holding none are
    /// absent).
    pub async fn running_by_agent(
        &self,
    ) -> Result<std::collections::BTreeMap<AgentId, u64>, StoreError> {
        dispatch!(self, attention::running_by_agent())
    }

    /// A page of jobs, newest first; pass the previous page's
    /// `next_cursor` as `after`.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: u32,
    ) -> Result<Page<Job>, StoreError> {
        dispatch!(self, jobs::list_jobs(filter, after, limit))
    }
}
