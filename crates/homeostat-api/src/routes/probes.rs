//! Probes: `/healthz` answers while the process runs; `/readyz` only while
//! the database answers, its schema is this build's, the controller manager
//! runs and the server is not stopping.

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
        (status = 200, description = "ready"),
        (status = 503, description = "not ready, with the reason"),
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
    if state.manager.is_none() {
        return not_ready("no controller manager runs".into());
    }
    if let Err(e) = state.store.check_schema().await {
        return not_ready(e.to_string());
    }
    (
        StatusCode::OK,
        Json(json!({"status": "ready", "backend": state.store.backend()})),
    )
}
