//! `/agents`: the fleet with labels, queues, last heartbeat and running
//! jobs; drain.

use askama::Template;
use axum::extract::{Path, State};

use super::extract::{Form, Query};
use axum::http::HeaderMap;
use axum::response::Response;
use homeostat_model::AgentId;

use super::notice::{Done, NoticeQuery};
use super::page::{Page, Problem, ago, fragment, parse_id, short, when};
use super::session::{CsrfForm, Session};
use crate::state::ApiState;

struct Row {
    id: String,
    short: String,
    name: String,
    status: &'static str,
    tenant: String,
    labels: String,
    queues: String,
    heartbeat: String,
    heartbeat_at: String,
    running: u64,
    can_drain: bool,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct Agents {
    rows: Vec<Row>,
    csrf: String,
}

/// `GET /agents`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, Problem> {
    let now = state.store.now();
    let agents = crate::routes::admin::visible_agents(&state, &session.caller).await?;
    let running = state.store.running_by_agent().await?;
    let admin = session.caller.is_admin();
    let rows = agents
        .iter()
        .map(|a| Row {
            id: a.id.to_string(),
            short: short(a.id),
            name: a.name.clone(),
            status: a.status.as_str(),
            tenant: a.tenant_id.map_or_else(|| "platform".into(), short),
            labels: a
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            queues: a.queues.join(", "),
            heartbeat: ago(now, a.last_heartbeat_at),
            heartbeat_at: when(a.last_heartbeat_at),
            running: running.get(&a.id).copied().unwrap_or(0),
            can_drain: admin && a.status == homeostat_model::AgentStatus::Online,
        })
        .collect();
    let view = Agents {
        rows,
        csrf: session.csrf.clone(),
    };
    Ok(Page::live("Agents", "Agents", "/agents", fragment(&view)?)
        .notice(notice.message())
        .respond(&session, &headers))
}

/// `POST /agents/{id}/drain` (admin keys).
pub(crate) async fn drain(
    State(state): State<ApiState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    session.check_csrf(&form.csrf)?;
    let id: AgentId = parse_id("agent", &id)?;
    crate::routes::admin::drain(&state, &session.caller, id).await?;
    Ok(NoticeQuery::redirect("/agents", Done::Drained, None))
}
