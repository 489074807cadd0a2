//! The agent runtime: claims jobs from the server up to its free capacity
//! (long polls), runs each with a [`JobHandler`], heartbeats itself and its
//! running jobs in one call at the server's interval, stops a job whose
//! cancellation arrives or whose lease is lost, and on shutdown stops
//! claiming, lets running jobs finish until a deadline, then releases the
//! rest (the attempt does not count). Outcomes the server cannot take yet
//! are sent again while the job is still the agent's, and, kept in a file
//! ([`AgentBuilder::keep_outcomes_in`]), by the next process after a
//! restart.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeostat_model::wire::{ClaimRequest, HeartbeatRequest, HeldJob, MAX_CLAIM_CAPACITY};
use homeostat_model::{ClaimedJob, ErrorCode, JobId};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::outbox::{Outbox, Outcome, Pending};
use crate::{Client, ClientError};

/// Why a job failed, and whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// What went wrong (kept on the job; never a secret).
    pub message: String,
    /// Whether to retry it (after the server's backoff).
    pub retryable: bool,
}

impl JobError {
    /// A failure another attempt may not have.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure every attempt would have: the job goes dead.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Runs jobs. `stop` is cancelled when the job must stop: it was cancelled
/// by an operator, its lease was lost, its timeout passed, or the agent is
/// shutting down past its grace; the result is then ignored.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one job: its result (kept on the job), or why it failed.
    fn handle(
        &self,
        job: ClaimedJob,
        stop: CancellationToken,
    ) -> impl Future<Output = Result<Option<Value>, JobError>> + Send;
}

/// Configures an agent.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    client: Client,
    queues: Option<Vec<String>>,
    concurrency: u32,
    claim_wait: u32,
    grace: Duration,
    abort: CancellationToken,
    outcomes_file: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// Jobs completed.
    pub completed: u64,
    /// Jobs reported failed.
    pub failed: u64,
    /// Jobs stopped: cancelled, lease lost, or timed out.
    pub stopped: u64,
    /// Jobs given back at shutdown.
    pub released: u64,
}

/// The agent runtime.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// An agent on `client`, whose token is the agent's credential.
    pub fn builder(client: Client) -> AgentBuilder {
        AgentBuilder {
            client,
            queues: None,
            concurrency: 1,
            claim_wait: 30,
            grace: Duration::from_secs(30),
            abort: CancellationToken::new(),
            outcomes_file: None,
        }
    }
}

/// One running job.
#[derive(Debug)]
struct Running {
    lease_token: i64,
    stop: CancellationToken,
    /// Its outcome is decided and being sent: not released at shutdown
    /// when kept for the next process.
    decided: bool,
    /// When its lease runs out at the earliest, as this agent knows it
    /// (from when the claim was answered, or the last heartbeat that
    /// extended it was sent): the job is stopped before, so that it never
    /// runs on once the server may give it to another agent.
    lease_until: tokio::time::Instant,
}

type RunningJobs = Arc<Mutex<HashMap<JobId, Running>>>;

/// The server's lease, from its heartbeat replies (milliseconds).
type LeaseTtl = Arc<std::sync::atomic::AtomicU64>;

/// How long before its lease runs out a job this agent could not extend
/// is stopped: a quarter of the lease, at least a second (the program's
/// stop takes a moment; the clocks of agent and server may run apart).
fn stop_margin(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_secs(1)).min(ttl / 2)
}

/// Stops every job whose lease this agent could not extend in time, until
/// `shutdown` (checked every 100 ms).
async fn keep_to_leases(running: RunningJobs, ttl: LeaseTtl, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let ttl = lease(&ttl);
        if ttl.is_zero() {
            continue; // not heard yet
        }
        let margin = stop_margin(ttl);
        let now = tokio::time::Instant::now();
        let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
        let late: Vec<JobId> = running
            .iter()
            .filter(|(_, r)| {
                !r.decided && r.lease_until.checked_sub(margin).is_none_or(|at| at <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(job) = running.remove(&id) {
                tracing::warn!(job = %id, "its lease could not be extended in time: stopping the job before the server may give it to another agent");
                job.stop.cancel();
            }
        }
    }
}

/// How long a handler told to stop may take to return.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long an outcome the server could not take is sent again (while the
/// job is still this agent's: its heartbeats keep its lease, and say when
/// it was lost). Finished work is not dropped for a replica restarting or
/// the database being down for minutes.
const REPORT_FOR: Duration = Duration::from_secs(15 * 60);
/// The longest pause between two sends of an outcome.
const REPORT_BACKOFF_MAX: Duration = Duration::from_secs(10);

impl AgentBuilder {
    /// Claim from these of the agent's queues only (default: all).
    pub fn queues(mut self, queues: Vec<String>) -> Self {
        self.queues = Some(queues);
        self
    }

    /// Jobs run at once (1 to 100).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.clamp(1, MAX_CLAIM_CAPACITY);
        self
    }

    /// Seconds a claim waits for work (0 to 50).
    pub fn claim_wait(mut self, secs: u32) -> Self {
        self.claim_wait = secs.min(homeostat_model::wire::MAX_CLAIM_WAIT_SECS);
        self
    }

    /// How long running jobs may finish after shutdown is asked.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Keeps outcomes the server has not taken yet in `path`, so that the
    /// next agent started with the same path sends them: a job that
    /// finished while the control plane was out of reach does not run
    /// again because its agent was restarted. One file per agent; written
    /// before each outcome is sent, readable by its owner only.
    pub fn keep_outcomes_in(mut self, path: impl Into<PathBuf>) -> Self {
        self.outcomes_file = Some(path.into());
        self
    }

    /// When cancelled during a shutdown, running jobs are stopped and
    /// released at once (a second signal).
    pub fn abort_on(mut self, abort: CancellationToken) -> Self {
        self.abort = abort;
        self
    }

    /// Runs until `shutdown` is cancelled (or the server drains the agent),
    /// then drains.
    pub async fn run<H: JobHandler>(
        self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<AgentReport, ClientError> {
        let handler = Arc::new(handler);
        let running: RunningJobs = Arc::default();
        let report = Arc::new(Mutex::new(AgentReport::default()));
        let drained = CancellationToken::new();
        // What a previous process decided and could not send: held (its
        // heartbeats keep the leases, or say they were lost) and sent
        // again.
        let outbox = Arc::new(Outbox::open(self.outcomes_file.clone()));
        let left = outbox.pending();
        {
            let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
            for (id, pending) in &left {
                running.insert(
                    *id,
                    Running {
                        lease_token: pending.lease_token,
                        stop: CancellationToken::new(),
                        decided: true,
                        lease_until: tokio::time::Instant::now(),
                    },
                );
            }
        }
        // This process, told in every heartbeat: after a restart the server
        // reclaims at once what the previous process held and this one
        // does not.
        let incarnation = homeostat_model::new_id();
        // The first heartbeat proves the credential before anything else;
        // a control plane out of reach is waited for (an agent may start
        // before its server, or during an outage), a refusal is final.
        let lease_ttl: LeaseTtl = Arc::default();
        let beat = Beat {
            client: self.client.clone(),
            incarnation,
            running: running.clone(),
            drained: drained.clone(),
            lease_ttl: lease_ttl.clone(),
        };
        let mut pause = Duration::from_secs(1);
        let first = loop {
            match beat.beat().await {
                Ok(every) => break every,
                Err(e) if e.code().is_out_of_reach() => {
                    tracing::warn!(error = %e, "the control plane is out of reach; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(AgentReport::default()),
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e),
            }
        };
        // Heartbeats go on through the drain: running jobs keep their
        // leases while they finish within the grace.
        let beating = CancellationToken::new();
        let beats = tokio::spawn(heartbeats(beat, beating.clone(), first));
        let watch = tokio::spawn(keep_to_leases(
            running.clone(),
            lease_ttl.clone(),
            beating.clone(),
        ));
        let free = Arc::new(Semaphore::new(self.concurrency as usize));
        let mut jobs = JoinSet::new();
        if !left.is_empty() {
            tracing::info!(
                jobs = left.len(),
                "sending the outcomes a previous process could not"
            );
        }
        for (id, pending) in left {
            let delivery = Delivery {
                client: self.client.clone(),
                running: running.clone(),
                report: report.clone(),
                outbox: outbox.clone(),
            };
            jobs.spawn(async move { delivery.send(id, pending).await });
        }
        let stopping = CancellationToken::new();
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                () = drained.cancelled() => break,
                p = free.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let mut permits = vec![permit];
            while let Ok(p) = free.clone().try_acquire_owned() {
                permits.push(p);
            }
            let req = ClaimRequest {
                // At most `concurrency` (a u32).
                capacity: u32::try_from(permits.len()).unwrap_or(u32::MAX),
                wait_secs: Some(self.claim_wait),
                queues: self.queues.clone(),
            };
            let claimed = tokio::select! {
                () = shutdown.cancelled() => break,
                () = drained.cancelled() => break,
                c = self.client.claim(&req) => c,
            };
            // A long poll waits before the server claims: the leases start
            // when it answers (their transit is within the stop margin).
            let answered = tokio::time::Instant::now();
            let claimed = match claimed {
                Ok(c) => c.jobs,
                // A refused credential will not come back: stop.
                Err(e) if e.code() == ErrorCode::Unauthorized => {
                    shutdown.cancel();
                    beating.cancel();
                    let _ = beats.await;
                    let _ = watch.await;
                    return Err(e);
                }
                // The server unreachable, or refusing claims for now (the
                // agent was marked offline: its next heartbeat brings it
                // back): try again shortly.
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            for job in claimed {
                let Some(permit) = permits.pop() else { break };
                let stop = stopping.child_token();
                running.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    job.id,
                    Running {
                        lease_token: job.lease_token,
                        stop: stop.clone(),
                        decided: false,
                        lease_until: answered + lease(&lease_ttl),
                    },
                );
                let delivery = Delivery {
                    client: self.client.clone(),
                    running: running.clone(),
                    report: report.clone(),
                    outbox: outbox.clone(),
                };
                let handler = handler.clone();
                let span = work_span(&job);
                jobs.spawn(
                    async move {
                        run_one(handler, job, stop, delivery).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
        // Draining: no more claims; running jobs get the grace.
        let grace = tokio::time::sleep(self.grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = jobs.join_next() => if next.is_none() { break },
                () = &mut grace => break,
                () = self.abort.cancelled() => break,
            }
        }
        // Past the grace: stop what still runs and give it back. Every job
        // leaves `running` before any is told to stop: a stopped handler
        // returns at once, and one still found there would report its stop
        // as a failure (an attempt counted) before its release went out.
        // A finished job whose outcome is kept for the next process is not
        // given back: it would run again.
        let left: Vec<(JobId, i64)> = running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .filter(|(_, r)| !(r.decided && outbox.persistent()))
            .map(|(id, r)| (id, r.lease_token))
            .collect();
        stopping.cancel();
        for (id, token) in left {
            match self.client.release(id, token).await {
                Ok(_) => report.lock().unwrap_or_else(|e| e.into_inner()).released += 1,
                Err(e) => tracing::warn!(job = %id, error = %e, "could not release a job"),
            }
        }
        jobs.shutdown().await;
        shutdown.cancel();
        beating.cancel();
        let _ = beats.await;
        let _ = watch.await;
        let report = report.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(report)
    }
}

/// The lease this agent may count on for what it sends now.
fn lease(ttl: &LeaseTtl) -> Duration {
    Duration::from_millis(ttl.load(std::sync::atomic::Ordering::Relaxed))
}

/// What a heartbeat needs.
struct Beat {
    client: Client,
    incarnation: uuid::Uuid,
    running: RunningJobs,
    drained: CancellationToken,
    lease_ttl: LeaseTtl,
}

impl Beat {
    /// One heartbeat: extends the leases of what runs (as of when it was
    /// sent), stops the jobs the server says we no longer hold, notes a
    /// drain, and returns the server's interval.
    async fn beat(&self) -> Result<Duration, ClientError> {
        let held: Vec<HeldJob> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, r)| HeldJob {
                id: *id,
                lease_token: r.lease_token,
            })
            .collect();
        let sent = tokio::time::Instant::now();
        let reply = self
            .client
            .heartbeat(&HeartbeatRequest {
                jobs: held.clone(),
                incarnation: Some(self.incarnation),
            })
            .await?;
        let ttl = Duration::from_secs(reply.lease_ttl_secs);
        self.lease_ttl.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            for id in reply.lost.iter().chain(&reply.cancelled) {
                if let Some(job) = running.remove(id) {
                    tracing::info!(job = %id, "stopping a job: cancelled, or its lease was lost");
                    job.stop.cancel();
                }
            }
            // The server extended the leases of the rest from when it read
            // this heartbeat: from when it was sent, at the latest.
            for h in &held {
                if let Some(r) = running.get_mut(&h.id)
                    && r.lease_token == h.lease_token
                {
                    r.lease_until = r.lease_until.max(sent + ttl);
                }
            }
        }
        if reply.drain && !self.drained.is_cancelled() {
            tracing::info!("drained by an operator: finishing running jobs, claiming no more");
            self.drained.cancel();
        }
        Ok(Duration::from_secs(reply.heartbeat_interval_secs.max(1)))
    }
}

/// After a failed heartbeat, the next is sent this soon (the client has
/// moved to another server), then later and later up to the interval.
const HEARTBEAT_RETRY: Duration = Duration::from_millis(250);

async fn heartbeats(beat: Beat, stop: CancellationToken, mut every: Duration) {
    let mut interval = every;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match beat.beat().await {
            Ok(next) => {
                interval = next;
                every = next;
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed; retrying");
                every = if every >= interval {
                    HEARTBEAT_RETRY
                } else {
                    (every * 2).min(interval)
                };
            }
        }
    }
}

/// What sending an outcome needs.
struct Delivery {
    client: Client,
    running: RunningJobs,
    report: Arc<Mutex<AgentReport>>,
    outbox: Arc<Outbox>,
}

impl Delivery {
    /// Whether the job is still this agent's (a heartbeat may have taken it
    /// away, or the shutdown).
    fn ours(&self, id: JobId) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id)
    }

    fn forget(&self, id: JobId) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    fn count(&self, f: fn(&mut AgentReport)) {
        f(&mut self.report.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Sends an outcome, again while the server cannot take it and the job
    /// is still ours (a report is resend-safe: its lease token), then
    /// forgets the job.
    async fn send(&self, id: JobId, pending: Pending) {
        let token = pending.lease_token;
        let deadline = tokio::time::Instant::now() + REPORT_FOR;
        let mut pause = Duration::from_secs(1);
        loop {
            let sent = match &pending.outcome {
                Outcome::Completed { result } => self
                    .client
                    .complete(id, token, result.clone())
                    .await
                    .map(|_| true),
                Outcome::Failed { message, retryable } => self
                    .client
                    .fail(id, token, message.clone(), *retryable)
                    .await
                    .map(|_| false),
            };
            match sent {
                Ok(true) => self.count(|r| r.completed += 1),
                Ok(false) => self.count(|r| r.failed += 1),
                Err(e)
                    if e.code().is_out_of_reach()
                        && self.ours(id)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::warn!(job = %id, error = %e, "could not report a job's outcome; sending it again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(REPORT_BACKOFF_MAX);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "could not report a job's outcome");
                    self.count(|r| r.stopped += 1);
                }
            }
            self.outbox.sent(id);
            self.forget(id);
            return;
        }
    }
}

/// The span of a job's work and the delivery of its outcome, exported when
/// tracing is on: a child of the claim's span (the job's trace context), so
/// the handler's own spans, a program's `TRACEPARENT` and the outcome's
/// request continue the job's trace.
fn work_span(job: &ClaimedJob) -> tracing::Span {
    let span = tracing::info_span!(
        target: homeostat_model::trace::SPANS,
        "job",
        otel.name = "job.run",
        otel.kind = "consumer",
        homeostat.job.id = %job.id,
        homeostat.tenant.id = %job.tenant_id,
        homeostat.queue = job.queue.as_str(),
        homeostat.job.kind = job.kind.as_str(),
        homeostat.job.attempt = i64::from(job.attempt),
        homeostat.job.outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(tp) = &job.traceparent {
        homeostat_model::trace::continue_from(&span, tp);
    }
    span
}

async fn run_one<H: JobHandler>(
    handler: Arc<H>,
    job: ClaimedJob,
    stop: CancellationToken,
    delivery: Delivery,
) {
    let (id, token) = (job.id, job.lease_token);
    let timeout = Duration::from_secs(job.timeout_secs.max(1));
    // A stopped handler gets a moment to wind down (kill its process,
    // clean up) before it is dropped.
    let abandoned = async {
        stop.cancelled().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    let mut job = job;
    if let Some(tp) = homeostat_model::trace::current() {
        job.traceparent = Some(tp);
    }
    let handling = handler.handle(job, stop.clone());
    tokio::pin!(handling);
    let outcome = tokio::select! {
        r = &mut handling => Some(r),
        () = tokio::time::sleep(timeout) => {
            // Told to stop, the handler winds down (kills its process)
            // before its attempt is reported as timed out.
            stop.cancel();
            let _ = tokio::time::timeout(STOP_GRACE, &mut handling).await;
            Some(Err(JobError::retryable(format!("timed out after {} s", timeout.as_secs()))))
        }
        () = abandoned => None,
    };
    let span = tracing::Span::current();
    match &outcome {
        Some(Ok(_)) => span.record("homeostat.job.outcome", "succeeded"),
        Some(Err(_)) => span
            .record("homeostat.job.outcome", "failed")
            .record("otel.status_code", "error"),
        None => span.record("homeostat.job.outcome", "stopped"),
    };
    // Still ours? It stays among the running jobs until its outcome is
    // delivered; decided, it is kept (on disk if asked) before it is sent.
    let decided = outcome.and_then(|outcome| {
        let mut running = delivery.running.lock().unwrap_or_else(|e| e.into_inner());
        let job = running.get_mut(&id)?;
        job.decided = true;
        Some(Pending {
            lease_token: token,
            outcome: outcome.into(),
        })
    });
    // Stopped before it finished, or no longer ours to report on.
    let Some(pending) = decided else {
        delivery.forget(id);
        delivery.count(|r| r.stopped += 1);
        return;
    };
    delivery.outbox.keep(id, pending.clone());
    delivery.send(id, pending).await;
}
