//! `/agents`: the fleet with labels, queues, last heartbeat and running
//! jobs; drain.

use askama::Template;
use axum::extract::{Path, State};

use super::extract::{Form, Query};
use axum::http::HeaderMap;
use axum::response::Response;
use homeostat_model::AgentId;

use super::names::{Named, Names};
use super::notice::{Done, NoticeQuery};
use super::page::{Page, ago, fragment, parse_id, short, when};
use super::problem::Problem;
use super::session::{CsrfForm, Session};
use crate::state::ApiState;

struct Row {
    id: String,
    short: String,
    name: String,
    status: &'static str,
    tenant: Named,
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
    /// The status shown (`""`: all).
    status: &'static str,
    /// The next page's link, if there is one.
    next: Option<String>,
}

/// Agents shown in one page.
const PAGE: u32 = 200;

/// `/agents`' query: a status, the page, and an action's notice.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentsPageQuery {
    status: Option<String>,
    after: Option<AgentId>,
    done: Option<super::notice::Done>,
    n: Option<u64>,
}

/// `GET /agents`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<AgentsPageQuery>,
) -> Result<Response, Problem> {
    let now = state.store.now();
    let notice = NoticeQuery {
        done: q.done,
        n: q.n,
        refused: None,
    };
    let wanted = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<homeostat_model::AgentStatus>().map_err(|_| {
            Problem::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!("status: no agent status {s:?}"),
            )
        })?),
    };
    let query = crate::routes::agents::AgentsQuery {
        status: wanted,
        tenant_id: None,
        after: q.after,
        limit: Some(PAGE),
    };
    let agents = crate::routes::agents::visible_agents(&state, &session.caller, &query).await?;
    let status = wanted.map_or("", homeostat_model::AgentStatus::as_str);
    let next = agents
        .next_cursor
        .map(|after| format!("/agents?status={status}&after={after}"));
    let agents = agents.items;
    let running = state.store.running_by_agent().await?;
    let names = Names::load(&state, []).await?;
    let admin = session.caller.is_admin();
    let rows = agents
        .iter()
        .map(|a| Row {
            id: a.id.to_string(),
            short: short(a.id),
            name: a.name.clone(),
            status: a.status.as_str(),
            tenant: names.tenant(a.tenant_id),
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
        status,
        next,
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
    let admin = crate::Admin::try_from(session.caller)?;
    crate::routes::agents::drain(&state, &admin, id).await?;
    Ok(NoticeQuery::redirect("/agents", Done::Drained, None))
}
