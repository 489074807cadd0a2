//! Jobs (`/v1/jobs`): enqueue (one or a batch, optionally under an
//! `Idempotency-Key`), list, show with history, and the operator's
//! transitions: cancel, retry, approve.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use homeostat_model::operator::{
    BatchEnqueueRequest, BatchEnqueueResponse, EnqueueResponse, JobDetail,
};
use homeostat_model::{Job, JobId, JobState, NewJob, Page, TenantId};
use homeostat_store::{IDEMPOTENCY_LIFETIME, JobFilter, MAX_IDEMPOTENCY_KEY_LEN};
use serde::Deserialize;

use crate::auth::{Caller, Writer};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, JsonValue, NoBody, Path, Query};
use crate::state::ApiState;
use crate::strict_json;

/// Most jobs in one batch enqueue.
pub const MAX_BATCH: usize = 1000;

/// `POST /v1/jobs`: one job, or `{"jobs": [...]}`; a tenant key enqueues
/// for its tenant, an admin key names `tenant_id`.
#[derive(Debug)]
pub(crate) enum EnqueueBody {
    Batch(BatchEnqueueRequest),
    One(Box<OneBody>),
}

/// The request body of `POST /v1/jobs`, as documented: one job (its
/// fields, and `tenant_id` from an admin key) or a batch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // the handler parses the body itself, naming bad fields
pub(crate) enum EnqueueRequest {
    One(Box<EnqueueOne>),
    Batch(BatchEnqueueRequest),
}

/// One job to enqueue.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct EnqueueOne {
    /// The tenant (admin keys only; a tenant key enqueues for its own).
    tenant_id: Option<TenantId>,
    #[serde(flatten)]
    job: NewJob,
}

/// One job: its fields and, from an admin, `tenant_id`. (Not a flattened
/// struct: flattening would accept unknown fields silently.)
#[derive(Debug)]
pub(crate) struct OneBody {
    tenant_id: Option<TenantId>,
    job: NewJob,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::malformed("Idempotency-Key: must be visible ASCII"))?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::invalid(format!(
            "Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"
        )));
    }
    Ok(Some(key.to_owned()))
}

pub(crate) fn target_tenant(
    caller: &Caller,
    named: Option<TenantId>,
) -> Result<TenantId, ApiError> {
    match (caller.tenant(), named) {
        (Some(own), None) => Ok(own),
        (Some(own), Some(t)) if t == own => Ok(own),
        (Some(_), Some(_)) => Err(ApiError::forbidden(
            "tenant_id: a tenant key enqueues for its own tenant only",
        )),
        (None, Some(t)) => Ok(t),
        (None, None) => Err(ApiError::invalid(
            "tenant_id: an admin key must name the tenant",
        )),
    }
}

#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body = EnqueueRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "the same key from the same tenant within 24 h returns the first answer"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context: given to the jobs that name none (an invalid one is ignored)"),
    ),
    responses(
        (status = 201, description = "created (one job: EnqueueResponse; a batch: BatchResponse)", body = EnqueueResponse),
        (status = 200, description = "deduplicated by fingerprint: the live job, its occurrences increased", body = EnqueueResponse),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn enqueue(
    State(state): State<ApiState>,
    Writer(caller): Writer,
    headers: HeaderMap,
    JsonValue(body): JsonValue,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let body: EnqueueBody = parse_json(body)?;
    let (tenant, mut jobs, batch) = match body {
        EnqueueBody::Batch(b) => (b.tenant_id, b.jobs, true),
        EnqueueBody::One(o) => {
            let OneBody { tenant_id, job } = *o;
            (tenant_id, vec![job], false)
        }
    };
    crate::trace_context::inherit(&headers, &mut jobs);
    let tenant = target_tenant(&caller, tenant)?;
    if jobs.is_empty() || jobs.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "jobs: 1 to {MAX_BATCH} per batch"
        )));
    }
    for (i, job) in jobs.iter().enumerate() {
        job.validate().map_err(|e| {
            let at = if batch {
                format!("jobs[{i}].")
            } else {
                String::new()
            };
            ApiError::invalid(format!("{at}{}: {}", e.field, e.message))
        })?;
    }
    let key = idempotency_key(&headers)?;
    let enqueued = enqueue_within_quotas(&state, tenant, &jobs, key.as_deref()).await?;
    crate::trace_context::enqueued(tenant, &jobs, &enqueued);
    if batch {
        let created = enqueued.iter().any(|e| !e.deduplicated);
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((status, Json(BatchEnqueueResponse { jobs: enqueued })).into_response());
    }
    let first = enqueued[0];
    let job = state.store.get_job(first.id).await?;
    let status = if first.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(EnqueueResponse {
            enqueued: first,
            job,
        }),
    )
        .into_response())
}

/// Enqueues `jobs` for `tenant` if its quotas admit them (429
/// `quota_exceeded` otherwise), once per idempotency key when one is given.
/// An unknown tenant (an admin's typo) is the store's 404: the enqueue looks
/// up the tenant's tier as it writes, and writes nothing for an unknown one.
pub(crate) async fn enqueue_within_quotas(
    state: &ApiState,
    tenant: TenantId,
    jobs: &[NewJob],
    idempotency_key: Option<&str>,
) -> Result<Vec<homeostat_model::Enqueued>, ApiError> {
    crate::quotas::within(state, tenant, jobs, async {
        let enqueued = match idempotency_key {
            Some(key) => {
                state
                    .store
                    .enqueue_once(tenant, key, jobs, IDEMPOTENCY_LIFETIME)
                    .await?
                    .enqueued
            }
            None => state.store.enqueue_batch(tenant, jobs).await?,
        };
        let created = enqueued.iter().filter(|e| !e.deduplicated).count() as u64;
        Ok((enqueued, created))
    })
    .await
}

/// An untagged enum loses serde's messages; parse once as each shape so an
/// error names the field.
fn parse_json(value: serde_json::Value) -> Result<EnqueueBody, ApiError> {
    if value.get("jobs").is_some() {
        return strict_json::from_value(&value).map(EnqueueBody::Batch);
    }
    let mut value = value;
    let tenant_id = match value.as_object_mut().and_then(|o| o.remove("tenant_id")) {
        Some(t) => Some(
            strict_json::from_value(&t)
                .map_err(|e| ApiError::malformed(format!("tenant_id: {}", e.message)))?,
        ),
        None => None,
    };
    let job = strict_json::from_value(&value)?;
    Ok(EnqueueBody::One(Box::new(OneBody { tenant_id, job })))
}

/// Filters and paging of `GET /v1/jobs`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    state: Option<JobState>,
    queue: Option<String>,
    kind: Option<String>,
    tenant_id: Option<TenantId>,
    agent_id: Option<homeostat_model::AgentId>,
    /// Only jobs whose fingerprint contains this text.
    fingerprint: Option<String>,
    after: Option<JobId>,
    /// Jobs in one page (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// Most jobs in one page.
pub const MAX_PAGE: u32 = 500;

#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "a page of jobs, newest first", body = homeostat_model::Page<homeostat_model::Job>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<Job>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit: must be 1 to {MAX_PAGE}")));
    }
    let Some(tenant_id) = caller.list_scope(q.tenant_id) else {
        return Ok(Json(Page::whole(vec![])));
    };
    let filter = JobFilter {
        tenant_id,
        state: q.state,
        queue: q.queue,
        kind: q.kind,
        agent_id: q.agent_id,
        fingerprint: q.fingerprint.filter(|f| !f.is_empty()),
    };
    Ok(Json(state.store.list_jobs(&filter, q.after, limit).await?))
}

/// The job, if the caller may see it: another tenant's job is 404.
pub(crate) async fn visible_job(
    state: &ApiState,
    caller: &Caller,
    id: JobId,
) -> Result<Job, ApiError> {
    let job = state.store.get_job(id).await?;
    if !caller.sees(Some(job.tenant_id)) {
        return Err(ApiError::not_found(format!("job {id} not found")));
    }
    Ok(job)
}

/// What an operator does to one job.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation {
    Cancel,
    Retry,
    Approve,
}

/// Does `op` to a job the caller may change (another tenant's is 404).
pub(crate) async fn operate_job(
    state: &ApiState,
    writer: &Writer,
    id: JobId,
    op: Operation,
) -> Result<Job, ApiError> {
    let caller = &writer.0;
    let job = visible_job(state, caller, id).await?;
    let actor = caller.actor();
    let job = match op {
        Operation::Cancel => state.store.cancel(id, &actor).await?,
        Operation::Retry => {
            // A retried job is live again: the tenant's quotas weigh it as
            // an enqueue (a tenant could otherwise hold past them by
            // retrying what died).
            let retry = async { Ok((state.store.retry(id, &actor).await?, 1)) };
            if job.state.is_retryable() {
                let again = [NewJob::new(&job.queue, &job.kind)];
                crate::quotas::within(state, job.tenant_id, &again, retry).await?
            } else {
                // The store refuses it (409): no quota is weighed.
                retry.await?.0
            }
        }
        Operation::Approve => state.store.approve(id, &actor).await?,
    };
    Ok(job)
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "the job, its failed attempts and its audit history", body = JobDetail),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<JobId>,
) -> Result<Json<JobDetail>, ApiError> {
    let job = visible_job(&state, &caller, id).await?;
    let history = state
        .store
        .audit_events_of(&format!("job:{id}"), 1000)
        .await?;
    let limit_status = state.store.job_limits(&job).await?;
    Ok(Json(JobDetail {
        job,
        history,
        limit_status,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "cancelled (a running job's agent learns it at its next heartbeat)", body = homeostat_model::Job),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn cancel(
    State(state): State<ApiState>,
    writer: Writer,
    Path(id): Path<JobId>,
    _: NoBody,
) -> Result<Json<Job>, ApiError> {
    operate_job(&state, &writer, id, Operation::Cancel)
        .await
        .map(Json)
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "a dead or expired job queued again with fresh attempts", body = homeostat_model::Job),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn retry(
    State(state): State<ApiState>,
    writer: Writer,
    Path(id): Path<JobId>,
    _: NoBody,
) -> Result<Json<Job>, ApiError> {
    operate_job(&state, &writer, id, Operation::Retry)
        .await
        .map(Json)
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/approve",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    responses(
        (status = 200, description = "approved: queued", body = homeostat_model::Job),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn approve(
    State(state): State<ApiState>,
    writer: Writer,
    Path(id): Path<JobId>,
    _: NoBody,
) -> Result<Json<Job>, ApiError> {
    operate_job(&state, &writer, id, Operation::Approve)
        .await
        .map(Json)
}
