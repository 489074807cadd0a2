//! `/notifications`: notifications that could not be delivered; redrive.

use askama::Template;
use axum::extract::{Path, State};

use super::extract::{Form, Query};
use axum::http::HeaderMap;
use axum::response::Response;
use homeostat_model::{NotificationId, NotificationState};

use super::notice::{Done, NoticeQuery};
use super::page::{Page, ago, fragment, parse_id, short};
use super::problem::Problem;
use super::session::{CsrfForm, Session};
use crate::state::ApiState;

struct Row {
    id: String,
    short: String,
    event: String,
    payload: String,
    attempts: u32,
    error: String,
    created: String,
}

#[derive(Template)]
#[template(path = "notifications.html")]
struct Notifications {
    rows: Vec<Row>,
    can_redrive: bool,
    csrf: String,
}

/// `GET /notifications`: the dead ones, newest first.
pub(crate) async fn list(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, Problem> {
    session.require_operator()?;
    let now = state.store.now();
    let dead = state
        .store
        .list_notifications(NotificationState::Dead, None, 200)
        .await?
        .items;
    let view = Notifications {
        rows: dead
            .iter()
            .map(|n| Row {
                id: n.id.to_string(),
                short: short(n.id),
                event: n.event.clone(),
                payload: n.payload.to_string(),
                attempts: n.attempts,
                error: n.last_error.clone().unwrap_or_default(),
                created: ago(now, n.created_at),
            })
            .collect(),
        can_redrive: session.caller.is_admin(),
        csrf: session.csrf.clone(),
    };
    Ok(Page::live(
        "Dead notifications",
        "Notifications",
        "/notifications",
        fragment(&view)?,
    )
    .notice(notice.message())
    .respond(&session, &headers))
}

/// `POST /notifications/{id}/redrive` (admin keys).
pub(crate) async fn redrive(
    State(state): State<ApiState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    session.check_csrf(&form.csrf)?;
    let id: NotificationId = parse_id("notification", &id)?;
    let admin = crate::Admin::try_from(session.caller)?;
    crate::routes::notifications::redrive(&state, &admin, id).await?;
    Ok(NoticeQuery::redirect(
        "/notifications",
        Done::Redriven,
        None,
    ))
}
