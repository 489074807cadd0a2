//! The agent protocol (`/v1/agent/…`): register with a bootstrap token, then
//! heartbeat, claim (a long poll), complete and fail with the agent's
//! credential. Completions and failures are safe to resend with the same
//! lease token: the first answer comes back again.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use homeostat_model::wire::{
    ClaimRequest, ClaimResponse, CompleteBatchRequest, CompleteRequest, FailRequest,
    HeartbeatRequest, HeartbeatResponse, MAX_COMPLETION_BATCH, RegisterRequest, RegisterResponse,
    ReleaseRequest,
};
use homeostat_model::{AgentStatus, CompletedBatch, FailOutcome, Job, JobId, JobState};
use homeostat_store::{Failure, StoreError};

use crate::auth::AgentCaller;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, Path, ReportJson};
use crate::state::ApiState;

/// `POST /v1/agent/register`: spends one use of a bootstrap token; the
/// credential in the answer is shown this once.
#[utoipa::path(
    post,
    path = "/v1/agent/register",
    tag = "agent",
    request_body = homeostat_model::wire::RegisterRequest,
    responses(
        (status = 201, description = "registered; the credential is shown this once", body = homeostat_model::wire::RegisterResponse),
        ErrorResponses,
    ),
)]
pub(crate) async fn register(
    State(state): State<ApiState>,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    req.agent.validate()?;
    let (agent, credential) = state
        .store
        .register_agent(&req.bootstrap_token, &req.agent)
        .await?;
    tracing::info!(agent = %agent.id, name = %agent.name, "agent registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            agent_id: agent.id,
            tenant_id: agent.tenant_id,
            credential: credential.secret,
        }),
    ))
}

/// `POST /v1/agent/heartbeat`: the agent is alive; the leases of the jobs it
/// names are extended. The reply tells which of them it no longer holds
/// (lost, or cancelled by an operator) and whether it is drained.
#[utoipa::path(
    post,
    path = "/v1/agent/heartbeat",
    tag = "agent",
    request_body = homeostat_model::wire::HeartbeatRequest,
    responses(
        (status = 200, description = "intervals, drain, lost and cancelled jobs", body = homeostat_model::wire::HeartbeatResponse),
        ErrorResponses,
    ),
    security(("agent_credential" = [])),
)]
pub(crate) async fn heartbeat(
    State(state): State<ApiState>,
    agent: AgentCaller,
    Json(req): Json<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    if req.jobs.len() > homeostat_model::wire::MAX_CLAIM_CAPACITY as usize * 10 {
        return Err(ApiError::invalid(format!(
            "jobs: at most {} per heartbeat",
            homeostat_model::wire::MAX_CLAIM_CAPACITY * 10
        )));
    }
    // Written with the others heard within the second; the status is the
    // one the last write returned.
    let status = state
        .presence
        .heard(&state.store, agent.id, state.store.now())
        .await?;
    if let Some(incarnation) = req.incarnation {
        let held: Vec<JobId> = req.jobs.iter().map(|h| h.id).collect();
        state
            .presence
            .incarnation(&state.store, agent.id, incarnation, &held)
            .await?;
    }
    let settings = &state.settings;
    let mut reply = HeartbeatResponse {
        heartbeat_interval_secs: settings.heartbeat_interval.as_secs(),
        lease_ttl_secs: settings.lease_ttl.as_secs(),
        drain: status == AgentStatus::Draining,
        lost: Vec::new(),
        cancelled: Vec::new(),
    };
    if req.jobs.is_empty() {
        return Ok(Json(reply));
    }
    // Every lease the agent holds, in one statement; only the ones it did
    // not extend are looked at again, to tell a cancelled job from a lost
    // one. A job is reported cancelled only to the agent whose lease the
    // cancel ended: to any other it is lost, whatever it is.
    let held: Vec<(JobId, i64)> = req.jobs.iter().map(|h| (h.id, h.lease_token)).collect();
    let extended = state
        .store
        .heartbeat_jobs(agent.id, &held, settings.lease_ttl)
        .await?;
    for (&(id, token), extended) in held.iter().zip(extended) {
        if extended {
            continue;
        }
        let cancelled = state.store.get_job(id).await.is_ok_and(|j| {
            j.state == JobState::Cancelled
                && j.lease_agent == Some(agent.id)
                && j.lease_token == token
        });
        if cancelled {
            reply.cancelled.push(id);
        } else {
            reply.lost.push(id);
        }
    }
    Ok(Json(reply))
}

/// `POST /v1/agent/claim`: up to `capacity` jobs at once, or, when none is
/// queued, a wait of up to `wait_secs` (ending at a random point of its last
/// fifth) that an enqueue on one of the agent's queues ends at once (on any
/// replica).
#[utoipa::path(
    post,
    path = "/v1/agent/claim",
    tag = "agent",
    request_body = homeostat_model::wire::ClaimRequest,
    responses(
        (status = 200, description = "the jobs claimed (none when the wait ran out)", body = homeostat_model::wire::ClaimResponse),
        ErrorResponses,
    ),
    security(("agent_credential" = [])),
)]
pub(crate) async fn claim(
    State(state): State<ApiState>,
    agent: AgentCaller,
    Json(req): Json<ClaimRequest>,
) -> Result<Json<ClaimResponse>, ApiError> {
    req.validate()?;
    let max = state.settings.max_claims_per_agent;
    let _slot = state.claims.take(agent.id, max).ok_or_else(|| {
        ApiError::limited(
            homeostat_model::ErrorCode::TooManyClaims,
            format!("the agent has {max} claims open already (api.max_claims_per_agent)"),
            1,
        )
    })?;
    let wait = req
        .wait_secs
        .map_or(state.settings.default_claim_wait, |s| {
            Duration::from_secs(u64::from(s))
        });
    // Claims that began together (a fleet reconnecting after a restart)
    // would end their waits together and come back as one burst of claim
    // transactions, again at every wait: each wait ends at a random point
    // of its last fifth, and the burst spreads out within a few waits.
    let wait = wait.mul_f64(1.0 - 0.2 * fastrand::f64());
    let started = tokio::time::Instant::now();
    let answer = |jobs: Vec<homeostat_model::ClaimedJob>| {
        state.http.claimed(!jobs.is_empty(), started.elapsed());
        Json(ClaimResponse { jobs })
    };
    // Boxed: see long_poll.rs.
    if let Some(only) = &req.queues {
        let registered = Box::pin(state.store.get_agent(agent.id)).await?.queues;
        if let Some(q) = only.iter().find(|q| !registered.contains(q)) {
            return Err(ApiError::invalid(format!(
                "queues: the agent is not registered for queue {q:?}"
            )));
        }
    }
    let mut jobs =
        crate::long_poll::claim(&state, agent.id, req.queues.as_deref(), req.capacity, wait)
            .await?;
    crate::trace_context::claimed(&mut jobs);
    Ok(answer(jobs))
}

/// A lease token that is not the job's current one, or a job another
/// agent holds.
fn stale(operation: &'static str, job: JobId, token: i64) -> ApiError {
    StoreError::StaleLease {
        operation,
        job,
        token,
    }
    .into()
}

/// The job, if `agent` holds or held its lease with `token`: a resend of an
/// outcome it already reported, or a job it no longer holds.
async fn held_job(
    state: &ApiState,
    agent: AgentCaller,
    id: JobId,
    token: i64,
) -> Result<Job, ApiError> {
    // A job the agent never held answers as a stale lease, whether or not
    // it exists: the agent learns nothing about jobs that are not its own.
    let job = match state.store.get_job(id).await {
        Ok(job) => job,
        Err(StoreError::NotFound { .. }) => return Err(stale("reporting on a job", id, token)),
        Err(e) => return Err(e.into()),
    };
    if job.lease_agent != Some(agent.id) || job.lease_token != token {
        return Err(stale("reporting on a job", id, token));
    }
    Ok(job)
}

fn bounded_result(state: &ApiState, result: &Option<serde_json::Value>) -> Result<(), ApiError> {
    let Some(value) = result else { return Ok(()) };
    let len = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if len > state.settings.max_result_bytes {
        return Err(ApiError::too_large(format!(
            "result: {len} bytes of JSON, at most {} accepted",
            state.settings.max_result_bytes
        )));
    }
    Ok(())
}

/// `POST /v1/agent/jobs/{id}/complete`.
#[utoipa::path(
    post,
    path = "/v1/agent/jobs/{id}/complete",
    tag = "agent",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    request_body = homeostat_model::wire::CompleteRequest,
    responses(
        (status = 200, description = "the job, succeeded (again, for a resend)", body = homeostat_model::Job),
        ErrorResponses,
    ),
    security(("agent_credential" = [])),
)]
pub(crate) async fn complete(
    State(state): State<ApiState>,
    agent: AgentCaller,
    Path(id): Path<JobId>,
    ReportJson(req): ReportJson<CompleteRequest>,
) -> Result<Json<Job>, ApiError> {
    bounded_result(&state, &req.result)?;
    let job = held_job(&state, agent, id, req.lease_token).await?;
    crate::trace_context::reporting_on(&job);
    if job.state == JobState::Succeeded {
        // The reply to the first completion was lost: answer it again.
        return Ok(Json(job));
    }
    let done = state
        .store
        .complete_batch(
            agent.id,
            &[homeostat_model::Completion {
                id,
                lease_token: req.lease_token,
                result: req.result,
            }],
        )
        .await?;
    if !done.stale.is_empty() {
        return Err(stale("completing a job", id, req.lease_token));
    }
    Ok(Json(state.store.get_job(id).await?))
}

/// `POST /v1/agent/jobs/complete`: many completions in one statement. A
/// completion already recorded under the same token (a resend) counts as
/// completed; one whose lease the agent no longer holds is `stale`.
#[utoipa::path(
    post,
    path = "/v1/agent/jobs/complete",
    tag = "agent",
    request_body = homeostat_model::wire::CompleteBatchRequest,
    responses(
        (status = 200, description = "completed and stale jobs", body = homeostat_model::CompletedBatch),
        ErrorResponses,
    ),
    security(("agent_credential" = [])),
)]
pub(crate) async fn complete_batch(
    State(state): State<ApiState>,
    agent: AgentCaller,
    ReportJson(req): ReportJson<CompleteBatchRequest>,
) -> Result<Json<CompletedBatch>, ApiError> {
    if req.completions.len() > MAX_COMPLETION_BATCH {
        return Err(ApiError::invalid(format!(
            "completions: at most {MAX_COMPLETION_BATCH} per batch"
        )));
    }
    for (i, c) in req.completions.iter().enumerate() {
        bounded_result(&state, &c.result)
            .map_err(|e| ApiError::too_large(format!("completions[{i}].{}", e.message)))?;
    }
    let mut done = state
        .store
        .complete_batch(agent.id, &req.completions)
        .await?;
    if !done.stale.is_empty() {
        let tokens: std::collections::HashMap<JobId, i64> = req
            .completions
            .iter()
            .map(|c| (c.id, c.lease_token))
            .collect();
        let mut stale = Vec::new();
        for id in std::mem::take(&mut done.stale) {
            let resent = match state.store.get_job(id).await {
                Ok(job) => {
                    job.state == JobState::Succeeded
                        && job.lease_agent == Some(agent.id)
                        && Some(&job.lease_token) == tokens.get(&id)
                }
                Err(StoreError::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            if resent {
                done.completed.push(id);
            } else {
                stale.push(id);
            }
        }
        done.stale = stale;
    }
    Ok(Json(done))
}

/// `POST /v1/agent/jobs/{id}/fail`: a failed attempt; retried after the
/// backoff while attempts are left and it is `retryable`, else dead.
#[utoipa::path(
    post,
    path = "/v1/agent/jobs/{id}/fail",
    tag = "agent",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    request_body = homeostat_model::wire::FailRequest,
    responses(
        (status = 200, description = "retried (scheduled) or dead", body = homeostat_model::FailOutcome),
        ErrorResponses,
    ),
    security(("agent_credential" = [])),
)]
pub(crate) async fn fail(
    State(state): State<ApiState>,
    agent: AgentCaller,
    Path(id): Path<JobId>,
    ReportJson(req): ReportJson<FailRequest>,
) -> Result<Json<FailOutcome>, ApiError> {
    if req.error.chars().count() > 8 * 1024 {
        return Err(ApiError::too_large("error: at most 8192 characters"));
    }
    let job = held_job(&state, agent, id, req.lease_token).await?;
    crate::trace_context::reporting_on(&job);
    if job.state != JobState::Running {
        // A resend of a failure already recorded under this lease.
        if matches!(job.state, JobState::Scheduled | JobState::Dead)
            && job.last_error.as_deref() == Some(req.error.as_str())
        {
            return Ok(Json(FailOutcome {
                state: job.state,
                retry_at: (job.state == JobState::Scheduled).then_some(job.run_at),
            }));
        }
        return Err(stale("failing a job", id, req.lease_token));
    }
    let outcome = state
        .store
        .fail(&Failure {
            agent: agent.id,
            id,
            lease_token: req.lease_token,
            error: &req.error,
            permanent: !req.retryable,
        })
        .await?;
    Ok(Json(outcome))
}

/// `POST /v1/agent/jobs/{id}/steps`: a running workflow step adds steps to
/// its workflow (fan-out at run time, e.g. one test per file it found).
#[utoipa::path(
    post,
    path = "/v1/agent/jobs/{id}/steps",
    tag = "agent",
    params(("id" = uuid::Uuid, Path, description = "the running step's job id")),
    request_body = homeostat_model::wire::AddStepsRequest,
    responses(
        (status = 200, description = "added: the new steps may need the adding step and one another; the steps that need the adding step wait for them too", body = homeostat_model::Workflow),
        ErrorResponses,
    ),
    security(("agent_credential" = [])),
)]
pub(crate) async fn add_steps(
    State(state): State<ApiState>,
    agent: AgentCaller,
    Path(id): Path<JobId>,
    Json(req): Json<homeostat_model::wire::AddStepsRequest>,
) -> Result<Json<homeostat_model::Workflow>, ApiError> {
    // The steps are the tenant's jobs: its quotas count them as any others
    // (an agent could otherwise enqueue past them).
    let tenant = held_job(&state, agent, id, req.lease_token)
        .await?
        .tenant_id;
    let jobs: Vec<homeostat_model::NewJob> = req.steps.iter().map(|s| s.job.clone()).collect();
    let add = async {
        let workflow = state
            .store
            .add_workflow_steps(
                agent.id,
                id,
                req.lease_token,
                &req.steps,
                &format!("agent:{}", agent.id),
            )
            .await?;
        Ok((workflow, jobs.len() as u64))
    };
    Ok(Json(
        crate::quotas::within(&state, tenant, &jobs, add).await?,
    ))
}

/// `POST /v1/agent/jobs/{id}/release`: an agent that shuts down gives its
/// unfinished jobs back; they are queued again at once and the attempt does
/// not count.
#[utoipa::path(
    post,
    path = "/v1/agent/jobs/{id}/release",
    tag = "agent",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    request_body = homeostat_model::wire::ReleaseRequest,
    responses(
        (status = 200, description = "the job, queued again; the attempt does not count", body = homeostat_model::Job),
        ErrorResponses,
    ),
    security(("agent_credential" = [])),
)]
pub(crate) async fn release(
    State(state): State<ApiState>,
    agent: AgentCaller,
    Path(id): Path<JobId>,
    Json(req): Json<ReleaseRequest>,
) -> Result<Json<Job>, ApiError> {
    let job = held_job(&state, agent, id, req.lease_token).await?;
    if job.state == JobState::Running {
        state
            .store
            .release_job(agent.id, id, req.lease_token)
            .await?;
    } else if job.state != JobState::Queued {
        return Err(stale("releasing a job", id, req.lease_token));
    }
    // Queued under this token: released already (a resend), unless another
    // agent claimed it since, which moved the token on.
    Ok(Json(state.store.get_job(id).await?))
}
