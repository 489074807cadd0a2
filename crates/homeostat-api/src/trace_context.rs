//! The W3C trace context of enqueues, claims and outcomes
//! (docs/telemetry.md).
//!
//! An enqueue's `traceparent` header is given to the jobs it creates that
//! do not name one, so their work continues the caller's trace; with
//! tracing on, the enqueue request's own span (the header's child) is given
//! instead, so a job's trace runs enqueue → claim → work → outcome. An
//! invalid header is ignored, as the trace-context recommendation asks (a
//! broken header must not fail the request); an invalid `traceparent`
//! field in the body is bad input.

use axum::http::HeaderMap;
use homeostat_model::{ClaimedJob, Enqueued, Job, NewJob, TenantId};

/// The request's `traceparent`, if it has a valid one.
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?.trim();
    homeostat_model::validate_traceparent(value).ok()?;
    Some(value.to_owned())
}

/// Gives the request's trace context to the jobs without one of their own.
pub(crate) fn inherit<'a>(headers: &HeaderMap, jobs: impl IntoIterator<Item = &'a mut NewJob>) {
    if let Some(tp) = homeostat_model::trace::current().or_else(|| traceparent(headers)) {
        for job in jobs {
            if job.traceparent.is_none() {
                job.traceparent = Some(tp.clone());
            }
        }
    }
}

/// A span about one job, in the job's own trace: a child of its trace
/// context (the request's span when it has none).
fn job_span(
    name: &'static str,
    traceparent: Option<&str>,
    id: homeostat_model::JobId,
    tenant: TenantId,
    queue: &str,
    kind: &str,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: homeostat_model::trace::SPANS,
        "job",
        otel.name = name,
        homeostat.job.id = %id,
        homeostat.tenant.id = %tenant,
        homeostat.queue = queue,
        homeostat.job.kind = kind,
        homeostat.job.attempt = tracing::field::Empty,
    );
    if let Some(tp) = traceparent {
        homeostat_model::trace::continue_from(&span, tp);
    }
    span
}

/// Records each created job's enqueue in its trace.
pub(crate) fn enqueued(tenant: TenantId, jobs: &[NewJob], enqueued: &[Enqueued]) {
    if tracing::Span::current().is_disabled() {
        return;
    }
    for (job, e) in jobs.iter().zip(enqueued) {
        if !e.deduplicated {
            let _ = job_span(
                "job.enqueue",
                job.traceparent.as_deref(),
                e.id,
                tenant,
                &job.queue,
                &job.kind,
            );
        }
    }
}

/// Records each claimed job's claim in its trace, and hands the agent the
/// claim's span as the job's trace context (its work is the claim's child).
pub(crate) fn claimed(jobs: &mut [ClaimedJob]) {
    if tracing::Span::current().is_disabled() {
        return;
    }
    for job in jobs {
        let span = job_span(
            "job.claim",
            job.traceparent.as_deref(),
            job.id,
            job.tenant_id,
            &job.queue,
            &job.kind,
        );
        span.record("homeostat.job.attempt", i64::from(job.attempt));
        if let Some(tp) = homeostat_model::trace::traceparent(&span) {
            job.traceparent = Some(tp);
        }
    }
}

/// Names the job an outcome request reports on, on the request's span (a
/// child of the agent's work when the agent sends its trace context).
pub(crate) fn reporting_on(job: &Job) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("homeostat.job.id", tracing::field::display(job.id));
    span.record(
        "homeostat.tenant.id",
        tracing::field::display(job.tenant_id),
    );
    span.record("homeostat.queue", job.queue.as_str());
    span.record("homeostat.job.kind", job.kind.as_str());
}
