//! `/audit`: the log newest first with filters; verifying the chain in the
//! background, its progress polled by the page.

use std::sync::{Arc, Mutex};

use askama::Template;
use axum::extract::State;

use super::extract::{Form, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use homeostat_store::AuditFilter;
use jiff::Timestamp;
use serde::Deserialize;

use super::jobs::EventRow;
use super::notice::{Done, NoticeQuery};
use super::page::{Page, Problem, ago, fragment, query};
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

/// A verification of the chain that this server ran or runs.
#[derive(Debug, Clone)]
pub(crate) struct Verification {
    started_at: Timestamp,
    by: String,
    checked: u64,
    total: u64,
    outcome: Option<Result<String, String>>,
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
    v: Option<Verification>,
    percent: u64,
    since: String,
}

fn verify_fragment(state: &ApiState) -> Result<String, Problem> {
    let v = state.verification.lock().unwrap().clone();
    let percent = v.as_ref().map_or(0, |v| {
        (v.checked * 100)
            .checked_div(v.total)
            .unwrap_or(100)
            .min(100)
    });
    let since = v
        .as_ref()
        .map(|v| ago(state.store.now(), v.started_at))
        .unwrap_or_default();
    fragment(&VerifyView { v, percent, since })
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
        verify: verify_fragment(&state)?,
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
    Ok(Html(verify_fragment(&state)?).into_response())
}

/// `POST /audit/verify` (admin keys): starts walking the chain, unless a
/// walk already runs.
pub(crate) async fn start(
    State(state): State<ApiState>,
    session: Session,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    session.check_csrf(&form.csrf)?;
    session.caller.require_admin()?;
    let total = state.store.audit_len().await?;
    {
        let mut slot = state.verification.lock().unwrap();
        if slot.as_ref().is_some_and(|v| v.outcome.is_none()) {
            return Ok(Redirect::to("/audit").into_response());
        }
        *slot = Some(Verification {
            started_at: state.store.now(),
            by: session.caller.actor(),
            checked: 0,
            total,
            outcome: None,
        });
    }
    let slot: Arc<Mutex<Option<Verification>>> = state.verification.clone();
    let store = state.store.clone();
    tokio::spawn(async move {
        let progress_slot = slot.clone();
        let mut progress = move |checked: u64| {
            if let Some(v) = progress_slot.lock().unwrap().as_mut() {
                v.checked = checked;
            }
        };
        let outcome = match store.verify_audit_chain(&mut progress).await {
            Ok(report) => match report.first_break {
                None => Ok(format!(
                    "The chain is intact: {} events from #{} on.",
                    report.checked, report.first_seq
                )),
                Some(b) => Err(format!(
                    "The chain is broken at event #{}: {}",
                    b.seq, b.reason
                )),
            },
            Err(e) => Err(format!("The verification stopped: {e}")),
        };
        if let Some(v) = slot.lock().unwrap().as_mut() {
            v.outcome = Some(outcome);
        }
    });
    Ok(NoticeQuery::redirect("/audit", Done::Verified, None))
}
