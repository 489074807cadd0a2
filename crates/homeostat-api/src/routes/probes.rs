//! Probes: `/healthz` answers while the process runs; `/readyz` only while
//! the server is not stopping and its named checks pass (the database
//! answers with this build's schema, writes succeed, the listener for other
//! replicas is connected, the controller manager runs), as last checked in
//! the background ([`crate::readiness`]): it answers at once.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::ApiState;

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    responses(
        (status = 200, description = "the process is alive"),
    ),
)]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "ready, with each check"),
        (status = 503, description = "not ready: the failing check named in `reason`, and each check"),
    ),
)]
pub(crate) async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Value>) {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
    };
    if state.shutdown.is_cancelled() {
        return not_ready("the server is stopping".into());
    }
    let verdict = state.readiness.verdict();
    let status = if verdict.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if verdict.ready { "ready" } else { "not_ready" },
            "reason": verdict.reason,
            "backend": state.store.backend(),
            "checks": verdict.checks,
        })),
    )
}
