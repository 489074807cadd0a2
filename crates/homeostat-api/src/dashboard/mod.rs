//! The dashboard at `/`: server-rendered pages (askama) whose live parts
//! refresh by polling fragments (htmx, vendored: nothing is fetched from
//! elsewhere at build or run time). Signing in takes an API key; a viewer
//! key sees everything and acts on nothing; every action is the API's own
//! operation, audited as the key.

mod agents;
mod audit;
pub(crate) mod controllers;
mod extract;
mod jobs;
mod limits;
mod names;
mod notice;
mod notifications;
mod overview;
mod page;
mod problem;
mod session;
mod workflows;

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::{get, post};

pub use jobs::MAX_BULK;

use crate::state::ApiState;

const HTMX: &str = include_str!("../../assets/htmx.min.js");
const CSS: &str = include_str!("../../assets/dashboard.css");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
}

/// The dashboard's routes.
pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(overview::overview))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/jobs", get(jobs::list))
        .route("/jobs/bulk", post(jobs::bulk))
        .route("/jobs/{id}", get(jobs::show))
        .route("/jobs/{id}/{action}", post(jobs::act))
        .route("/agents", get(agents::list))
        .route("/agents/{id}/drain", post(agents::drain))
        .route("/limits", get(limits::list))
        .route("/workflows", get(workflows::list))
        .route("/workflows/{id}", get(workflows::show))
        .route("/controllers", get(controllers::list))
        .route("/controllers/{name}/plan", get(controllers::plan))
        .route("/controllers/{name}/trigger", post(controllers::trigger))
        .route("/audit", get(audit::list))
        .route("/audit/verify", get(audit::progress).post(audit::start))
        .route("/notifications", get(notifications::list))
        .route("/notifications/{id}/redrive", post(notifications::redrive))
        .route(
            "/assets/htmx.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", HTMX) }),
        )
        .route(
            "/assets/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
}
