//! `/controllers`: each controller's interval, leading replica, last run
//! (outcome, items, error) and next run, flagged by the watchdog's rule;
//! a run's dry-run plan shown before "Run now".

use std::time::SystemTime;

use askama::Template;
use axum::extract::{Path, State};

use super::extract::{Form, Query};
use axum::http::HeaderMap;
use axum::response::Response;
use homeostat_runtime::ControllerStatus;
use jiff::Timestamp;

use super::notice::{Done, NoticeQuery};
use super::page::{Page, ago, fragment};
use super::problem::Problem;
use super::session::{CsrfForm, Session};
use crate::routes::controllers::manager;
use crate::state::ApiState;

/// How many intervals without success flag a controller here and in
/// `homeostat_controller_healthy` (the watchdog's
/// default).
pub(crate) const FLAG_AFTER_INTERVALS: u32 = 3;

/// One controller, formatted.
#[derive(Debug, Clone)]
pub(crate) struct ControllerRow {
    pub(crate) name: String,
    pub(crate) interval: String,
    pub(crate) leader: String,
    pub(crate) running: bool,
    pub(crate) last_run: String,
    pub(crate) outcome: String,
    pub(crate) items: String,
    pub(crate) error: String,
    pub(crate) next_run: String,
    /// A keyed controller's queue.
    pub(crate) keys: Option<String>,
    /// Why the watchdog's rule flags it, if it does.
    pub(crate) flag: Option<String>,
}

fn timestamp(t: SystemTime) -> Option<Timestamp> {
    Timestamp::try_from(t).ok()
}

fn row(
    s: &ControllerStatus,
    leader: Option<String>,
    now: Timestamp,
    since: SystemTime,
) -> ControllerRow {
    let wall = SystemTime::from(now);
    let last = s.last_run.as_ref();
    ControllerRow {
        name: s.name.clone(),
        interval: format!("{} s", s.interval.as_secs_f64()),
        leader: match (s.exclusive, leader) {
            (false, _) => "every replica".into(),
            (true, Some(replica)) => replica,
            (true, None) => "none now".into(),
        },
        running: s.running,
        last_run: last
            .and_then(|r| timestamp(r.started_at))
            .map_or_else(|| "never".into(), |t| ago(now, t)),
        outcome: last.map_or_else(String::new, |r| r.outcome.as_str().to_owned()),
        items: last.map_or_else(String::new, |r| r.items.to_string()),
        error: last.and_then(|r| r.error.clone()).unwrap_or_default(),
        next_run: s
            .next_run
            .and_then(timestamp)
            .map_or_else(|| "stopped".into(), |t| ago(now, t)),
        keys: s.keys.map(|k| {
            format!(
                "keyed: {} waiting, {} reconciling, {} tasks",
                k.waiting, k.active, s.tasks
            )
        }),
        flag: s.unhealthy(wall, since, FLAG_AFTER_INTERVALS),
    }
}

/// Every controller of this replica's manager, with the replica leading it
/// and the runs as its leader published them.
pub(crate) async fn controller_rows(
    state: &ApiState,
    now: Timestamp,
) -> Result<Vec<ControllerRow>, Problem> {
    let Some(manager) = state.manager.as_ref() else {
        return Ok(Vec::new());
    };
    let mut holders = state.store.lease_holders().await?;
    Ok(manager
        .cluster_status()
        .await
        .iter()
        .map(|s| row(s, holders.remove(&s.name), now, state.started_at))
        .collect())
}

#[derive(Template)]
#[template(path = "controllers.html")]
struct Controllers {
    rows: Vec<ControllerRow>,
    has_manager: bool,
}

/// `GET /controllers`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, Problem> {
    session.require_operator()?;
    let now = state.store.now();
    let view = Controllers {
        rows: controller_rows(&state, now).await?,
        has_manager: state.manager.is_some(),
    };
    Ok(Page::live(
        "Controllers",
        "Controllers",
        "/controllers",
        fragment(&view)?,
    )
    .notice(notice.message())
    .respond(&session, &headers))
}

/// One planned change, formatted.
struct Change {
    subject: String,
    from: String,
    to: String,
    why: String,
}

#[derive(Template)]
#[template(path = "plan.html")]
struct PlanView {
    name: String,
    count: u64,
    changes: Vec<Change>,
    note: String,
    can_run: bool,
    csrf: String,
}

/// `GET /controllers/{name}/plan`: what a run would change now.
pub(crate) async fn plan(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    session.require_operator()?;
    let plan = manager(&state)?
        .plan(&name)
        .await
        .map_err(crate::ApiError::from)?;
    let view = PlanView {
        name: name.clone(),
        count: plan.count,
        changes: plan
            .items
            .into_iter()
            .map(|c| Change {
                subject: c.subject,
                from: c.from,
                to: c.to,
                why: c.why,
            })
            .collect(),
        note: plan.note.unwrap_or_default(),
        can_run: session.caller.is_admin(),
        csrf: session.csrf.clone(),
    };
    Ok(Page {
        title: format!("Plan of {name}"),
        section: "Controllers",
        body: fragment(&view)?,
        ..Page::default()
    }
    .respond(&session, &headers))
}

/// `POST /controllers/{name}/trigger`: run now (admin keys).
pub(crate) async fn trigger(
    State(state): State<ApiState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    session.check_csrf(&form.csrf)?;
    // The operation refuses what the key may not do, as the API does.
    let admin = crate::Admin::try_from(session.caller)?;
    crate::routes::controllers::trigger(&state, &admin, &name).await?;
    Ok(NoticeQuery::redirect("/controllers", Done::Triggered, None))
}
