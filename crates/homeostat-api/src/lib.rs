//! The homeostat HTTP server: the agent protocol (`/v1/agent/…`), the
//! tenant and operator API (`/v1/…`), probes (`/healthz`, `/readyz`) and
//! metrics (`/metrics`).
//!
//! [`router`] builds the whole service over an [`ApiState`]; the `homeostat
//! run` command serves it, tests call it without a socket. Every error is
//! JSON `{"code", "message"}` with the store's stable codes ([`ApiError`]);
//! every route has a body-size limit and a request timeout.

mod auth;
mod error;
mod extract;
mod metrics;
mod routes;
mod state;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tower_http::timeout::TimeoutLayer;

pub use auth::{AgentCaller, Caller, Role};
pub use error::ApiError;
pub use routes::admin::CreatedSecret;
pub use routes::jobs::{
    BatchResponse, EnqueueResponse, IDEMPOTENCY_LIFETIME, JobDetail, MAX_BATCH, MAX_PAGE,
};
pub use routes::signals::SignalOutcome;
pub use state::{AlertRoute, ApiSettings, ApiState};

/// The whole API.
pub fn router(state: ApiState) -> Router {
    use routes::{admin, agent, jobs, probes, signals};
    let settings = state.settings.clone();
    let api = Router::new()
        .route("/v1/agent/register", post(agent::register))
        .route("/v1/agent/heartbeat", post(agent::heartbeat))
        .route("/v1/agent/claim", post(agent::claim))
        .route("/v1/agent/jobs/complete", post(agent::complete_batch))
        .route("/v1/agent/jobs/{id}/complete", post(agent::complete))
        .route("/v1/agent/jobs/{id}/fail", post(agent::fail))
        .route("/v1/agent/jobs/{id}/release", post(agent::release))
        .route("/v1/jobs", post(jobs::enqueue).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::show))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/approve", post(jobs::approve))
        .route("/v1/agents", get(admin::list_agents))
        .route("/v1/agents/{id}", get(admin::show_agent))
        .route("/v1/agents/{id}/drain", post(admin::drain_agent))
        .route(
            "/v1/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route(
            "/v1/bootstrap-tokens",
            post(admin::create_bootstrap_token).get(admin::list_bootstrap_tokens),
        )
        .route(
            "/v1/api-keys",
            post(admin::create_api_key).get(admin::list_api_keys),
        )
        .route("/v1/tokens/{id}/revoke", post(admin::revoke_token))
        .route("/v1/signals/alertmanager", post(signals::alertmanager))
        .route("/v1/audit", get(admin::list_audit))
        .route("/v1/audit/verify", post(admin::verify_audit))
        .route("/v1/notifications", get(admin::list_notifications))
        .route(
            "/v1/notifications/{id}/redrive",
            post(admin::redrive_notification),
        )
        .route("/v1/controllers", get(admin::list_controllers))
        .route(
            "/v1/controllers/{name}/trigger",
            post(admin::trigger_controller),
        )
        .route("/v1/controllers/{name}/plan", get(admin::plan_controller))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(metrics::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    api.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        metrics::track,
    ))
    .layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        settings.request_timeout,
    ))
    .layer(DefaultBodyLimit::max(settings.max_body_bytes))
    .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
