//! Workflows (`/v1/workflows`): steps that are jobs needing other steps,
//! submitted at once (docs/workflows.md); read with each step's state,
//! cancelled and retried.

use axum::extract::State;
use axum::http::StatusCode;
use homeostat_model::{NewJob, NewWorkflow, Page, TenantId, Workflow, WorkflowId, WorkflowSummary};
use serde::Deserialize;

use crate::auth::{Caller, Writer};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, JsonValue, NoBody, Path, Query};
use crate::routes::jobs::target_tenant;
use crate::state::ApiState;
use crate::strict_json;

/// The request body of `POST /v1/workflows`, as documented: the workflow
/// and, from an admin key, `tenant_id`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // the handler parses the body itself, naming bad fields
pub(crate) struct SubmitWorkflow {
    /// The tenant (admin keys only; a tenant key submits for its own).
    tenant_id: Option<TenantId>,
    #[serde(flatten)]
    workflow: NewWorkflow,
}

#[utoipa::path(
    post,
    path = "/v1/workflows",
    tag = "workflows",
    request_body = SubmitWorkflow,
    params(("traceparent" = Option<String>, Header, description = "W3C trace context: given to the steps whose jobs name none (an invalid one is ignored)")),
    responses(
        (status = 201, description = "created, every step at once: the steps that need none start as their jobs ask, the others are pending", body = Workflow),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn submit_workflow(
    State(state): State<ApiState>,
    Writer(caller): Writer,
    headers: axum::http::HeaderMap,
    JsonValue(mut body): JsonValue,
) -> Result<(StatusCode, Json<Workflow>), ApiError> {
    let tenant_id = match body.as_object_mut().and_then(|o| o.remove("tenant_id")) {
        Some(t) => Some(
            strict_json::from_value(&t)
                .map_err(|e| ApiError::malformed(format!("tenant_id: {}", e.message)))?,
        ),
        None => None,
    };
    let mut workflow: NewWorkflow = strict_json::from_value(&body)?;
    crate::trace_context::inherit(&headers, workflow.steps.iter_mut().map(|s| &mut s.job));
    let tenant = target_tenant(&caller, tenant_id)?;
    workflow.validate()?;
    // Its steps are jobs: the tenant's quotas count them as any others.
    let jobs: Vec<NewJob> = workflow.steps.iter().map(|s| s.job.clone()).collect();
    let created = crate::quotas::within(&state, tenant, &jobs, async {
        let created = state
            .store
            .submit_workflow(tenant, &workflow, &caller.actor())
            .await?;
        let live = created.steps.len() as u64;
        Ok((created, live))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Filters and paging of `GET /v1/workflows`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only this tenant's (a tenant key sees its own alone).
    tenant_id: Option<TenantId>,
    /// The page after this workflow (`next_cursor`).
    after: Option<WorkflowId>,
    /// Workflows in one page (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/v1/workflows",
    tag = "workflows",
    params(ListQuery),
    responses(
        (status = 200, description = "a page of workflows, newest first, each with its state and how many steps have not finished", body = homeostat_model::Page<WorkflowSummary, uuid::Uuid>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_workflows(
    State(state): State<ApiState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<WorkflowSummary, WorkflowId>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=crate::MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit: must be 1 to {}",
            crate::MAX_PAGE
        )));
    }
    let Some(tenant) = caller.list_scope(q.tenant_id) else {
        return Ok(Json(Page::whole(vec![])));
    };
    Ok(Json(
        state.store.list_workflows(tenant, q.after, limit).await?,
    ))
}

/// The workflow, if the caller may see it: another tenant's is 404.
async fn visible(state: &ApiState, caller: &Caller, id: WorkflowId) -> Result<Workflow, ApiError> {
    let workflow = state.store.workflow(id).await?;
    if !caller.sees(Some(workflow.tenant_id)) {
        return Err(ApiError::not_found(format!("workflow {id} not found")));
    }
    Ok(workflow)
}

#[utoipa::path(
    get,
    path = "/v1/workflows/{id}",
    tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "workflow id")),
    responses(
        (status = 200, description = "the workflow, its state from its steps, each step with its job and state", body = Workflow),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn show_workflow(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<WorkflowId>,
) -> Result<Json<Workflow>, ApiError> {
    Ok(Json(visible(&state, &caller, id).await?))
}

#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/cancel",
    tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "workflow id")),
    responses(
        (status = 200, description = "cancelled: its steps not finished are cancelled (a running one's agent learns it at its next heartbeat) and none starts; again, nothing changes", body = Workflow),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn cancel_workflow(
    State(state): State<ApiState>,
    writer: Writer,
    Path(id): Path<WorkflowId>,
    _: NoBody,
) -> Result<Json<Workflow>, ApiError> {
    visible(&state, &writer.0, id).await?;
    Ok(Json(
        state.store.cancel_workflow(id, &writer.0.actor()).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/retry",
    tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "workflow id")),
    responses(
        (status = 200, description = "retried: its steps that did not finish well (dead, expired, cancelled, skipped) run again, each once its needs have; succeeded steps keep their results. 409 while it runs, or when every step succeeded", body = Workflow),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn retry_workflow(
    State(state): State<ApiState>,
    writer: Writer,
    Path(id): Path<WorkflowId>,
    _: NoBody,
) -> Result<Json<Workflow>, ApiError> {
    let tenant = visible(&state, &writer.0, id).await?.tenant_id;
    // What runs again is live again: the tenant's quotas weigh it first.
    let queues = state.store.workflow_rerun_queues(id).await?;
    let again: Vec<NewJob> = queues.iter().map(|q| NewJob::new(q, "retry")).collect();
    let retry = async {
        let retried = state.store.retry_workflow(id, &writer.0.actor()).await?;
        Ok((retried, again.len() as u64))
    };
    Ok(Json(
        crate::quotas::within(&state, tenant, &again, retry).await?,
    ))
}
