//! The controllers (`/v1/controllers`): status on every replica, a run on
//! demand, a dry run's plan.

use axum::extract::State;
use axum::http::StatusCode;
use homeostat_model::Page;
use homeostat_model::operator::{
    ControllerKeys, ControllerPlan, ControllerRun, ControllerView, PlannedChange,
};
use homeostat_runtime::{ControllerStatus, Manager};

use crate::auth::{Admin, Operator};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Json, NoBody, Path};
use crate::state::ApiState;

pub(crate) fn manager(state: &ApiState) -> Result<&Manager, ApiError> {
    state
        .manager
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("no controller manager runs in this server"))
}

#[utoipa::path(
    get,
    path = "/v1/controllers",
    tag = "controllers",
    responses(
        (status = 200, description = "{items, next_cursor}: each controller's last run, outcome, items, error, next run, leader (the whole list)", body = homeostat_model::Page<ControllerView, String>),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn list_controllers(
    State(state): State<ApiState>,
    _: Operator,
) -> Result<Json<Page<ControllerView, String>>, ApiError> {
    let statuses = manager(&state)?.cluster_status().await;
    let mut holders = state.store.lease_holders().await?;
    Ok(Json(Page::whole(
        statuses
            .into_iter()
            .map(|status| {
                let leader = holders.remove(&status.name);
                controller_view(status, leader)
            })
            .collect(),
    )))
}

/// A controller as this replica's manager sees it (with the runs as its
/// leader published them, for an exclusive controller another replica
/// leads), and which replica leads it now.
fn controller_view(s: ControllerStatus, leader_replica: Option<String>) -> ControllerView {
    let ms = homeostat_runtime::unix_millis;
    let to_ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ControllerView {
        interval_ms: to_ms(s.interval),
        exclusive: s.exclusive,
        leader: s.leader,
        running: s.running,
        last_run: s.last_run.map(|r| ControllerRun {
            started_at: ms(r.started_at),
            duration_ms: to_ms(r.duration),
            outcome: r.outcome.as_str().to_owned(),
            items: r.items,
            error: r.error,
        }),
        last_success_at: s.last_success_at.map(ms),
        consecutive_failures: s.consecutive_failures,
        next_run: s.next_run.map(ms),
        leader_replica,
        keys: s.keys.map(|k| ControllerKeys {
            waiting: k.waiting as u64,
            active: k.active as u64,
        }),
        tasks: s.tasks as u64,
        name: s.name,
    }
}

#[utoipa::path(
    post,
    path = "/v1/controllers/{name}/trigger",
    tag = "controllers",
    params(("name" = String, Path, description = "controller name")),
    responses(
        (status = 202, description = "a run is due now (coalesced with one already due)"),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn trigger_controller(
    State(state): State<ApiState>,
    admin: Admin,
    Path(name): Path<String>,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    trigger(&state, &admin, &name).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Makes a run of `name` due now (admin keys), audited as the caller.
pub(crate) async fn trigger(state: &ApiState, admin: &Admin, name: &str) -> Result<(), ApiError> {
    let caller = &admin.0;
    manager(state)?.trigger(name)?;
    state
        .store
        .append_audit(&[homeostat_model::NewAuditEvent {
            actor: caller.actor(),
            action: homeostat_model::AuditAction::ControllerTriggered.into(),
            subject: format!("controller:{name}"),
            details: serde_json::json!({}),
        }])
        .await?;
    Ok(())
}

#[utoipa::path(
    get,
    path = "/v1/controllers/{name}/plan",
    tag = "controllers",
    params(("name" = String, Path, description = "controller name")),
    responses(
        (status = 200, description = "what a run would change now (a dry run)", body = ControllerPlan),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn plan_controller(
    State(state): State<ApiState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Json<ControllerPlan>, ApiError> {
    // A plan names the jobs and agents a run would touch, of every tenant.
    let plan = manager(&state)?.plan(&name).await?;
    Ok(Json(ControllerPlan {
        count: plan.count,
        items: plan
            .items
            .into_iter()
            .map(|c| PlannedChange {
                subject: c.subject,
                from: c.from,
                to: c.to,
                why: c.why,
            })
            .collect(),
        note: plan.note,
    }))
}
