//! `/audit`: the log newest first with filters; the latest verification of
//! the chain (walked by the audit-chain-verify leader), its progress polled
//! by the page.

use askama::Template;
use axum::extract::State;

use super::extract::{Form, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use homeostat_model::operator::{AuditVerification, VerificationState};
use homeostat_store::AuditFilter;
use serde::Deserialize;

use super::jobs::EventRow;
use super::notice::{Done, NoticeQuery};
use super::page::{Page, ago, fragment, query};
use super::problem::Problem;
use super::session::{CsrfForm, Session};
use crate::state::ApiState;

const PAGE: u32 = 100;

/// The log's filters, as the form sends them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filters {
    #[serde(default)]
    action: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    before: String,
}

#[derive(Template)]
#[template(path = "audit_filters.html")]
struct FiltersView<'a> {
    f: &'a Filters,
    can_verify: bool,
    csrf: &'a str,
    verify: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditView {
    rows: Vec<EventRow>,
    older: Option<String>,
}

#[derive(Template)]
#[template(path = "verify.html")]
struct VerifyView {
    v: Option<AuditVerification>,
    percent: u64,
    asked: String,
    walked: String,
}

/// The latest verification of the chain, as every replica reads it.
async fn verify_fragment(state: &ApiState) -> Result<String, Problem> {
    let v = state.store.audit_verifications(1).await?.into_iter().next();
    let percent = v.as_ref().map_or(0, |v| {
        (v.checked * 100)
            .checked_div(v.total)
            .unwrap_or(100)
            .min(100)
    });
    let now = state.store.now();
    let asked = v
        .as_ref()
        .map(|v| ago(now, v.requested_at))
        .unwrap_or_default();
    let walked = v
        .as_ref()
        .and_then(|v| v.finished_at)
        .map(|at| ago(now, at))
        .unwrap_or_default();
    fragment(&VerifyView {
        v,
        percent,
        asked,
        walked,
    })
}

/// `GET /audit`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
    Query(f): Query<Filters>,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, Problem> {
    session.require_operator()?;
    let opt = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let before = opt(&f.before)
        .map(|s| s.parse::<i64>())
        .transpose()
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("before: {e}")))?;
    let filter = AuditFilter {
        action: opt(&f.action),
        subject: opt(&f.subject),
        actor: opt(&f.actor),
    };
    let events = state.store.audit_page(&filter, before, PAGE).await?;
    let pairs = |before: Option<String>| {
        query(&[
            ("action", filter.action.clone()),
            ("subject", filter.subject.clone()),
            ("actor", filter.actor.clone()),
            ("before", before),
        ])
    };
    let older = (events.len() == PAGE as usize)
        .then(|| {
            events
                .last()
                .map(|e| format!("/audit{}", pairs(Some(e.seq.to_string()))))
        })
        .flatten();
    let view = AuditView {
        rows: events.iter().map(EventRow::new).collect(),
        older,
    };
    let head = FiltersView {
        f: &f,
        can_verify: session.caller.is_admin(),
        csrf: &session.csrf,
        verify: verify_fragment(&state).await?,
    };
    Ok(Page {
        title: "Audit log".into(),
        section: "Audit",
        notice: notice.message(),
        head: fragment(&head)?,
        body: fragment(&view)?,
        live: before.is_none(),
        self_url: format!("/audit{}", pairs(before.map(|b| b.to_string()))),
    }
    .respond(&session, &headers))
}

/// `GET /audit/verify`: the verification's progress (a fragment the page
/// polls while it runs).
pub(crate) async fn progress(
    State(state): State<ApiState>,
    session: Session,
) -> Result<Response, Problem> {
    session.require_operator()?;
    Ok(Html(verify_fragment(&state).await?).into_response())
}

/// `POST /audit/verify` (admin keys): asks for a walk of the chain (or
/// joins the one open), which the audit-chain-verify leader runs.
pub(crate) async fn start(
    State(state): State<ApiState>,
    session: Session,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    session.check_csrf(&form.csrf)?;
    session.caller.require_admin()?;
    state
        .store
        .request_audit_verification(&session.caller.actor())
        .await?;
    crate::routes::audit::wake_the_walker(&state);
    Ok(NoticeQuery::redirect("/audit", Done::Verified, None))
}
