//! `POST /v1/signals/alertmanager`: Alertmanager's webhook body, unchanged.
//! Each firing alert becomes a job (queue and kind from the first matching
//! route), its fingerprint the alert's, so a re-firing alert raises the live
//! job's occurrence count instead of queueing twice. A resolved alert
//! cancels its job while the job has not started.

use std::collections::BTreeMap;

use axum::extract::State;
use homeostat_model::alertmanager::{Alert, AlertmanagerWebhook};
use homeostat_model::operator::SignalOutcome;
use homeostat_model::{JobState, NewJob, TenantId};
use serde_json::json;

use crate::auth::{Caller, Writer};
use crate::error::{ApiError, ErrorResponses};
use crate::extract::Json;
use crate::state::{AlertRoute, ApiState};

fn tenant_of(caller: &Caller, route: &AlertRoute) -> Result<TenantId, ApiError> {
    match (caller.tenant(), route.tenant_id) {
        (Some(own), _) => Ok(own),
        (None, Some(t)) => Ok(t),
        (None, None) => Err(ApiError::invalid(format!(
            "alert route for queue {:?}: an admin key needs the route's tenant_id",
            route.queue
        ))),
    }
}

fn job_of(alert: &Alert, route: &AlertRoute) -> NewJob {
    let mut job = NewJob::new(route.queue.clone(), route.kind.clone());
    job.priority = route.priority;
    job.fingerprint = Some(alert.fingerprint.clone());
    job.payload = json!({
        "source": "alertmanager",
        "labels": alert.labels,
        "annotations": alert.annotations,
        "starts_at": alert.starts_at,
        "generator_url": alert.generator_url,
        "fingerprint": alert.fingerprint,
    });
    job
}

#[utoipa::path(
    post,
    path = "/v1/signals/alertmanager",
    tag = "signals",
    request_body = homeostat_model::alertmanager::AlertmanagerWebhook,
    responses(
        (status = 200, description = "jobs enqueued, jobs cancelled, alerts ignored", body = SignalOutcome),
        ErrorResponses,
    ),
    security(("api_key" = [])),
)]
pub(crate) async fn alertmanager(
    State(state): State<ApiState>,
    Writer(caller): Writer,
    Json(hook): Json<AlertmanagerWebhook>,
) -> Result<Json<SignalOutcome>, ApiError> {
    let mut out = SignalOutcome::default();
    let mut firing: BTreeMap<TenantId, Vec<NewJob>> = BTreeMap::new();
    let mut resolved = Vec::new();
    for alert in &hook.alerts {
        let route = state
            .settings
            .alert_routes
            .iter()
            .find(|r| r.matches(&alert.labels));
        let Some(route) = route.filter(|_| !alert.fingerprint.is_empty()) else {
            out.ignored += 1;
            continue;
        };
        let tenant = tenant_of(&caller, route)?;
        if alert.is_firing() {
            let job = job_of(alert, route);
            job.validate()
                .map_err(|e| ApiError::invalid(format!("alert {}: {e}", alert.fingerprint)))?;
            firing.entry(tenant).or_default().push(job);
        } else {
            resolved.push((tenant, alert.fingerprint.as_str()));
        }
    }
    for (tenant, jobs) in firing {
        out.enqueued
            .extend(super::jobs::enqueue_within_quotas(&state, tenant, &jobs, None).await?);
    }
    let actor = format!("{}:alertmanager", caller.actor());
    for (tenant, fingerprint) in resolved {
        let job = state
            .store
            .live_job_by_fingerprint(tenant, fingerprint)
            .await?;
        match job {
            Some(job)
                if matches!(
                    job.state,
                    JobState::Queued | JobState::Scheduled | JobState::AwaitingApproval
                ) =>
            {
                // It may have been claimed since the read: then it runs.
                match state.store.cancel(job.id, &actor).await {
                    Ok(_) => out.cancelled.push(job.id),
                    Err(homeostat_store::StoreError::Conflict { .. }) => out.ignored += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            _ => out.ignored += 1,
        }
    }
    Ok(Json(out))
}
