//! The homeostat HTTP server: the agent protocol (`/v1/agent/…`), the
//! tenant and operator API (`/v1/…`), probes (`/healthz`, `/readyz`) and
//! metrics (`/metrics`), and the dashboard at `/` for people.
//!
//! [`router`] builds the whole service over an [`ApiState`]; the `homeostat
//! run` command serves it, tests call it without a socket. Every error is
//! JSON `{"code", "message"}` with the store's stable codes ([`ApiError`]);
//! every route has a body-size limit and a request timeout.

mod auth;
mod claim_slots;
mod dashboard;
mod error;
mod extract;
mod guard;
mod http_metrics;
mod long_poll;
mod metrics;
mod presence;
mod quotas;
mod readiness;
mod routes;
mod serve;
mod state;
mod strict_json;
mod trace_context;
mod track;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use homeostat_model::ErrorCode;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use auth::{Admin, AgentCaller, Caller, Operator, Role, Writer};
pub use dashboard::MAX_BULK;
pub use error::ApiError;
pub use metrics::OTHER_QUEUES;
pub use routes::jobs::{MAX_BATCH, MAX_PAGE};
pub use serve::{Limits, serve, serve_router};
pub use state::{AlertRoute, ApiSettings, ApiState, QuotaOverride, Quotas};

/// The OpenAPI document's frame; the paths come from the handlers' own
/// annotations as the router registers them, so none is missing.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "homeostat",
        description = "A self-healing control plane for fleets of agents that run jobs. \
            Agents authenticate with their credential, tenants and operators with an API key, \
            both as `Authorization: Bearer …`. Every error is JSON `{\"code\", \"message\"}`. \
            Bodies are JSON objects with no duplicate keys; text never holds U+0000 \
            (refused with 422 naming the field; in an agent's error or result it is stored as U+FFFD)."
    ),
    modifiers(&BearerSchemes),
    components(schemas(homeostat_model::wire::ErrorBody)),
    tags(
        (name = "agent", description = "The agent protocol: register, heartbeat, claim, complete, fail, release"),
        (name = "jobs", description = "Enqueue, list, show, cancel, retry, approve"),
        (name = "workflows", description = "Steps that are jobs needing other steps: submit, list, show, cancel, retry"),
        (name = "limits", description = "Concurrency and rate limits by key"),
        (name = "agents", description = "The fleet"),
        (name = "tenants", description = "Tenants and their plan tier (the weight of their fair share)"),
        (name = "tokens", description = "Bootstrap tokens and API keys"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "notifications", description = "Notifications that could not be delivered"),
        (name = "controllers", description = "The reconciliation controllers"),
        (name = "signals", description = "Alertmanager intake"),
        (name = "probes", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

struct BearerSchemes;

impl utoipa::Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("api_key", "An API key (role admin, tenant or viewer)"),
            (
                "agent_credential",
                "The credential an agent received at registration",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// The routes and their OpenAPI document.
fn routes() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    use routes::{
        agent, agents, audit, controllers, jobs, limits, notifications, probes, signals, tenants,
        tokens, workflows,
    };
    use utoipa::OpenApi;
    use utoipa_axum::{router::OpenApiRouter, routes};
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(agent::register))
        .routes(routes!(agent::heartbeat))
        .routes(routes!(agent::claim))
        .routes(routes!(agent::complete_batch))
        .routes(routes!(agent::complete))
        .routes(routes!(agent::fail))
        .routes(routes!(agent::release))
        .routes(routes!(agent::add_steps))
        .routes(routes!(jobs::enqueue, jobs::list))
        .routes(routes!(jobs::show))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::retry))
        .routes(routes!(jobs::approve))
        .routes(routes!(
            workflows::submit_workflow,
            workflows::list_workflows
        ))
        .routes(routes!(workflows::show_workflow))
        .routes(routes!(workflows::cancel_workflow))
        .routes(routes!(workflows::retry_workflow))
        .routes(routes!(limits::list_limits))
        .routes(routes!(
            limits::show_limit,
            limits::set_limit,
            limits::delete_limit
        ))
        .routes(routes!(agents::list_agents))
        .routes(routes!(agents::show_agent, agents::remove_agent))
        .routes(routes!(agents::drain_agent))
        .routes(routes!(agents::resume_agent))
        .routes(routes!(agents::agent_credentials))
        .routes(routes!(agents::revoke_agent))
        .routes(routes!(tenants::create_tenant, tenants::list_tenants))
        .routes(routes!(tenants::tenant_usage))
        .routes(routes!(
            tokens::create_bootstrap_token,
            tokens::list_bootstrap_tokens
        ))
        .routes(routes!(tokens::create_api_key, tokens::list_api_keys))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(signals::alertmanager))
        .routes(routes!(audit::list_audit))
        .routes(routes!(audit::verify_audit))
        .routes(routes!(audit::list_verifications))
        .routes(routes!(audit::get_verification))
        .routes(routes!(notifications::list_notifications))
        .routes(routes!(notifications::redrive_notification))
        .routes(routes!(controllers::list_controllers))
        .routes(routes!(controllers::trigger_controller))
        .routes(routes!(controllers::plan_controller))
        .routes(routes!(probes::healthz))
        .routes(routes!(probes::readyz))
        .routes(routes!(metrics::serve))
        .split_for_parts()
}

/// The OpenAPI document of every route (served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// The whole API, with `/openapi.json` and its Swagger UI at `/docs`
/// (vendored: no CDN at build or run time).
pub fn router(state: ApiState) -> Router {
    let settings = state.settings.clone();
    let (api, doc) = routes();
    let api = api
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", doc))
        .merge(dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // One stack, applied once, of layers with no box inside: each
    // `Router::layer` call wraps every route in a boxed service of its own,
    // which a request clones and whose future it boxes, and so does each
    // `from_fn` inside; an idle long poll keeps them all for its whole wait
    // (docs/benchmarks.md). As one stack, a request's middleware is one
    // future in one allocation.
    api.layer(
        tower::ServiceBuilder::new()
            // Outside all: a caller's request id is checked before it is kept.
            .layer(guard::GuardLayer::new(settings.max_body_bytes))
            // Every request has an id (the caller's, or a new one), and the
            // answer carries it back.
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            // A handler that panics answers 500 with the API's error body
            // instead of dropping the connection (and logs where).
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
            .layer(DefaultBodyLimit::max(settings.max_body_bytes))
            .layer(track::TrackLayer::new(
                state.http.clone(),
                settings.request_timeout,
            )),
    )
    .with_state(state)
}

/// The probes (`/healthz`, `/readyz`) and `/metrics` alone, for a listener
/// of their own (`api.probes_listen`): a loopback or internal port for the
/// kubelet and Prometheus, while the API's port may face tenants.
pub fn probes_router(state: ApiState) -> Router {
    use axum::routing::get;
    use routes::probes;
    Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(metrics::serve))
        .fallback(not_found)
        .layer(axum::Extension(metrics::ProbesListener))
        .with_state(state)
}

fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = what, "a request's handler panicked");
    ApiError::new(
        ErrorCode::Internal,
        "the server failed to answer this request",
    )
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}
