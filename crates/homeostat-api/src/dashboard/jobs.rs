//! `/jobs`: the filterable, cursor-paged list; one job with its payload,
//! result or error, attempts and audit history; cancel, retry, approve;
//! bulk cancel or retry of a filtered set after a preview of its size.

use askama::Template;
use axum::extract::{Path, State};

use super::extract::{Form, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use homeostat_model::{AgentId, ErrorCode, Job, JobId, JobState, TenantId};
use homeostat_store::JobFilter;
use serde::Deserialize;

use super::names::{Named, Names};
use super::notice::{Done, NoticeQuery};
use super::page::{Page, ago, fragment, parse_id, query, short, when, when_opt};
use super::problem::Problem;
use super::session::{CsrfForm, Session};
use crate::routes::jobs::{Operation, operate_job, visible_job};
use crate::state::ApiState;

/// Jobs on one page of the list.
const PAGE: u32 = 50;
/// Most jobs one bulk action touches.
pub const MAX_BULK: u64 = 10_000;

/// The list's filters as the form sends them: every field optional, empty
/// meaning "any".
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct Filters {
    #[serde(default)]
    state: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    fingerprint: String,
}

impl Filters {
    /// The store's filter, confined to the key's tenant; a value that does
    /// not parse is refused by name.
    fn to_filter(&self, session: &Session) -> Result<JobFilter, Problem> {
        let bad =
            |field: &str, e: String| Problem::new(StatusCode::BAD_REQUEST, format!("{field}: {e}"));
        let opt = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let state = opt(&self.state)
            .map(|s| s.parse::<JobState>())
            .transpose()
            .map_err(|e| bad("state", e.to_string()))?;
        let tenant = opt(&self.tenant)
            .map(|s| s.parse::<TenantId>())
            .transpose()
            .map_err(|e| bad("tenant", e.to_string()))?;
        let agent = opt(&self.agent)
            .map(|s| s.parse::<AgentId>())
            .transpose()
            .map_err(|e| bad("agent", e.to_string()))?;
        let tenant_id = match session.caller.tenant() {
            Some(own) => Some(own),
            None => tenant,
        };
        Ok(JobFilter {
            tenant_id,
            state,
            queue: opt(&self.queue),
            kind: opt(&self.kind),
            agent_id: agent,
            fingerprint: opt(&self.fingerprint),
        })
    }

    fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("state", Some(self.state.clone())),
            ("queue", Some(self.queue.clone())),
            ("kind", Some(self.kind.clone())),
            ("tenant", Some(self.tenant.clone())),
            ("agent", Some(self.agent.clone())),
            ("fingerprint", Some(self.fingerprint.clone())),
        ]
    }

    /// `/jobs` with these filters.
    fn url(&self) -> String {
        format!("/jobs{}", query(&self.pairs()))
    }

    fn is_empty(&self) -> bool {
        self.pairs()
            .iter()
            .all(|(_, v)| v.as_deref().is_none_or(|v| v.trim().is_empty()))
    }
}

/// `GET /jobs`'s cursor.
#[derive(Debug, Deserialize)]
pub(crate) struct Cursor {
    #[serde(default)]
    after: String,
}

/// One job in the list.
struct Row {
    id: String,
    short: String,
    state: &'static str,
    queue: String,
    kind: String,
    tenant: Named,
    attempts: String,
    agent: Named,
    updated: String,
    fingerprint: String,
}

fn row(job: &Job, names: &Names, now: jiff::Timestamp) -> Row {
    Row {
        id: job.id.to_string(),
        short: short(job.id),
        state: job.state.as_str(),
        queue: job.queue.clone(),
        kind: job.kind.clone(),
        tenant: names.tenant(Some(job.tenant_id)),
        attempts: format!("{}/{}", job.attempt, job.max_attempts),
        agent: names.agent(job.lease_agent),
        updated: ago(now, job.updated_at),
        fingerprint: job.fingerprint.clone().unwrap_or_default(),
    }
}

#[derive(Template)]
#[template(path = "jobs_filters.html")]
struct FiltersView<'a> {
    f: &'a Filters,
    states: Vec<&'static str>,
    can_act: bool,
    csrf: &'a str,
    tenant_key: bool,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct ListView {
    rows: Vec<Row>,
    next: Option<String>,
    first: Option<String>,
    /// A tenant key's own quotas, and where the tenant stands.
    usage: Option<homeostat_model::operator::TenantUsage>,
}

/// `GET /jobs`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
    Query(cursor): Query<Cursor>,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, Problem> {
    let filter = filters.to_filter(&session)?;
    let after = Some(cursor.after.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<JobId>())
        .transpose()
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("after: {e}")))?;
    let page = state.store.list_jobs(&filter, after, PAGE).await?;
    let now = state.store.now();
    let mut pairs = filters.pairs();
    let next = page.next_cursor.map(|c| {
        pairs.push(("after", Some(c.to_string())));
        format!("/jobs{}", query(&pairs))
    });
    let usage = match session.caller.tenant() {
        Some(t) => {
            let limits = state.settings.quotas.of(t);
            Some(state.quotas.usage(&state.store, t, limits).await?)
        }
        None => None,
    };
    let names = Names::load(&state, page.items.iter().filter_map(|j| j.lease_agent)).await?;
    let view = ListView {
        rows: page.items.iter().map(|j| row(j, &names, now)).collect(),
        next,
        first: after.map(|_| filters.url()),
        usage,
    };
    let head = FiltersView {
        f: &filters,
        states: JobState::ALL.iter().map(|s| s.as_str()).collect(),
        can_act: session.caller.may_write(),
        csrf: &session.csrf,
        tenant_key: session.caller.tenant().is_some(),
    };
    let self_url = match after {
        Some(a) => {
            let mut p = filters.pairs();
            p.push(("after", Some(a.to_string())));
            format!("/jobs{}", query(&p))
        }
        None => filters.url(),
    };
    Ok(Page {
        title: "Jobs".into(),
        section: "Jobs",
        notice: notice.message(),
        head: fragment(&head)?,
        body: fragment(&view)?,
        live: true,
        self_url,
    }
    .respond(&session, &headers))
}

/// A failed attempt, formatted.
struct AttemptRow {
    attempt: u32,
    agent: Named,
    started: String,
    failed: String,
    error: String,
}

/// An audit event, formatted.
pub(crate) struct EventRow {
    pub(crate) seq: i64,
    pub(crate) at: String,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) subject: String,
    pub(crate) details: String,
}

impl EventRow {
    pub(crate) fn new(e: &homeostat_model::AuditEvent) -> Self {
        Self {
            seq: e.seq,
            at: when(e.at),
            actor: e.actor.clone(),
            action: e.action.clone(),
            subject: e.subject.clone(),
            details: if e.details.is_null() {
                String::new()
            } else {
                e.details.to_string()
            },
        }
    }
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobView {
    id: String,
    state: &'static str,
    queue: String,
    kind: String,
    tenant: Named,
    priority: i32,
    attempts: String,
    fingerprint: String,
    created: String,
    run_at: String,
    deadline: String,
    /// When an approval must come by (empty: none needed).
    approval_expires: String,
    /// Enqueues this job stands for (1 + deduplicated ones).
    occurrences: u32,
    agent: Named,
    started: String,
    finished: String,
    lease_expires: String,
    payload: String,
    result: String,
    error: String,
    failed: Vec<AttemptRow>,
    history: Vec<EventRow>,
    /// Each limit the job is under: `limit:key, n of m running`, its
    /// limit's name, and whether it keeps the job waiting.
    /// Its workflow and step, if it is one.
    workflow: Option<(String, String)>,
    limits: Vec<(String, String, bool)>,
    can_cancel: bool,
    can_retry: bool,
    can_approve: bool,
    csrf: String,
}

/// `GET /jobs/{id}`.
pub(crate) async fn show(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, Problem> {
    let id: JobId = parse_id("job", &id)?;
    let job = visible_job(&state, &session.caller, id).await?;
    let history = state
        .store
        .audit_events_of(&format!("job:{id}"), 1000)
        .await?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let act = session.caller.may_write();
    let agents = job.lease_agent.into_iter();
    let names = Names::load(
        &state,
        agents.chain(job.attempts.iter().filter_map(|a| a.agent_id)),
    )
    .await?;
    let view = JobView {
        id: job.id.to_string(),
        state: job.state.as_str(),
        queue: job.queue.clone(),
        kind: job.kind.clone(),
        tenant: names.tenant(Some(job.tenant_id)),
        priority: job.priority,
        attempts: format!("{} of {}", job.attempt, job.max_attempts),
        fingerprint: job.fingerprint.clone().unwrap_or_default(),
        created: when(job.created_at),
        run_at: when(job.run_at),
        deadline: when_opt(job.deadline),
        approval_expires: job.approval_expires_at.map(when).unwrap_or_default(),
        occurrences: job.occurrences,
        agent: names.agent(job.lease_agent),
        started: when_opt(job.started_at),
        finished: when_opt(job.finished_at),
        lease_expires: when_opt(job.lease_expires_at),
        payload: pretty(&job.payload),
        result: job.result.as_ref().map(pretty).unwrap_or_default(),
        error: job.last_error.clone().unwrap_or_default(),
        failed: job
            .attempts
            .iter()
            .map(|a| AttemptRow {
                attempt: a.attempt,
                agent: names.agent(a.agent_id),
                started: when_opt(a.started_at),
                failed: when(a.failed_at),
                error: a.error.clone(),
            })
            .collect(),
        history: history.iter().map(EventRow::new).collect(),
        workflow: state
            .store
            .workflow_step_of(job.id)
            .await?
            .map(|(w, step)| (w.to_string(), step)),
        limits: state
            .store
            .job_limits(&job)
            .await?
            .iter()
            .map(|s| (s.describe(), s.key.limit.clone(), s.blocking))
            .collect(),
        can_cancel: act && job.state.can_become(JobState::Cancelled),
        can_retry: act && job.state.is_retryable(),
        can_approve: act && job.state == JobState::AwaitingApproval,
        csrf: session.csrf.clone(),
    };
    Ok(Page::live(
        format!("Job {}", short(job.id)),
        "Jobs",
        format!("/jobs/{id}"),
        fragment(&view)?,
    )
    .notice(notice.message())
    .respond(&session, &headers))
}

/// What one action does to one job.
fn operation(action: &str) -> Result<(Operation, Done), Problem> {
    match action {
        "cancel" => Ok((Operation::Cancel, Done::Cancelled)),
        "retry" => Ok((Operation::Retry, Done::Retried)),
        "approve" => Ok((Operation::Approve, Done::Approved)),
        other => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no action {other:?}: cancel, retry or approve"),
        )),
    }
}

/// `POST /jobs/{id}/{action}`: cancel, retry or approve one job, audited
/// as the signed-in key.
pub(crate) async fn act(
    State(state): State<ApiState>,
    session: Session,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    session.check_csrf(&form.csrf)?;
    // The operation refuses what the key may not do, as the API does.
    let (op, done) = operation(&action)?;
    let id: JobId = parse_id("job", &id)?;
    let writer = crate::Writer::try_from(session.caller)?;
    operate_job(&state, &writer, id, op).await?;
    Ok(NoticeQuery::redirect(&format!("/jobs/{id}"), done, None))
}

/// The bulk form: the action, the list's filters, and whether the preview
/// was confirmed.
#[derive(Debug, Deserialize)]
pub(crate) struct BulkForm {
    #[serde(default)]
    csrf: String,
    action: String,
    #[serde(default)]
    confirm: Option<String>,
    #[serde(flatten)]
    filters: Filters,
}

#[derive(Template)]
#[template(path = "bulk.html")]
struct BulkPreview<'a> {
    action: &'a str,
    verb: &'a str,
    label: &'a str,
    applies: u64,
    matching: u64,
    capped: bool,
    max: u64,
    f: &'a Filters,
    back: String,
    csrf: &'a str,
}

/// The ids of jobs matching `filter` that `action` applies to (at most
/// `MAX_BULK`), and how many jobs were read.
async fn bulk_targets(
    state: &ApiState,
    filter: &JobFilter,
    applies: fn(JobState) -> bool,
) -> Result<(Vec<JobId>, u64, bool), Problem> {
    let mut ids = Vec::new();
    let mut read = 0u64;
    let mut after = None;
    loop {
        let page = state.store.list_jobs(filter, after, 500).await?;
        read += page.items.len() as u64;
        for job in &page.items {
            if applies(job.state) {
                ids.push(job.id);
                if ids.len() as u64 >= MAX_BULK {
                    return Ok((ids, read, true));
                }
            }
        }
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => return Ok((ids, read, false)),
        }
    }
}

/// `POST /jobs/bulk`: without `confirm`, a preview of how many jobs the
/// action would touch; with it, the action on each (each audited as the
/// signed-in key).
pub(crate) async fn bulk(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<BulkForm>,
) -> Result<Response, Problem> {
    session.check_csrf(&form.csrf)?;
    // Before the preview too: a viewer is offered no bulk action.
    let writer = crate::Writer::try_from(session.caller)?;
    let (op, done, verb, applies): (_, _, _, fn(JobState) -> bool) = match form.action.as_str() {
        "cancel" => (Operation::Cancel, Done::Cancelled, "cancel", |s| {
            s.can_become(JobState::Cancelled)
        }),
        "retry" => (
            Operation::Retry,
            Done::Retried,
            "retry",
            JobState::is_retryable,
        ),
        other => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("action: {other:?} is not a bulk action (cancel or retry)"),
            ));
        }
    };
    if form.filters.is_empty() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "A bulk action needs at least one filter: it will not touch every job.",
        ));
    }
    let filter = form.filters.to_filter(&session)?;
    let (ids, read, capped) = bulk_targets(&state, &filter, applies).await?;
    if form.confirm.as_deref() != Some("yes") {
        let view = BulkPreview {
            action: &form.action,
            verb,
            label: if verb == "cancel" { "Cancel" } else { "Retry" },
            applies: ids.len() as u64,
            matching: read,
            capped,
            max: MAX_BULK,
            f: &form.filters,
            back: form.filters.url(),
            csrf: &session.csrf,
        };
        return Ok(Page {
            title: format!("Bulk {verb}"),
            section: "Jobs",
            body: fragment(&view)?,
            ..Page::default()
        }
        .respond(&session, &headers));
    }
    let (mut done_count, mut refused) = (0u64, 0u64);
    for id in ids {
        match operate_job(&state, &writer, id, op).await {
            Ok(_) => done_count += 1,
            // It moved since it was listed (finished, cancelled by someone
            // else): not an error of this action.
            Err(e) if matches!(e.code, ErrorCode::Conflict | ErrorCode::NotFound) => {}
            // Its tenant is at its quota of live jobs: the set spans
            // tenants, and the others' jobs are still retried.
            Err(e) if e.code == ErrorCode::QuotaExceeded => refused += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(NoticeQuery::redirect_bulk(
        &form.filters.url(),
        done,
        done_count,
        refused,
    ))
}
