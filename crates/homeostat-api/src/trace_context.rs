//! The W3C trace context an enqueue arrives with (`traceparent` header):
//! given to the jobs it creates that do not name one, so their work
//! continues the caller's trace. An invalid header is ignored, as the
//! trace-context recommendation asks (a broken header must not fail the
//! request); an invalid `traceparent` field in the body is bad input.

use axum::http::HeaderMap;
use homeostat_model::NewJob;

/// The request's `traceparent`, if it has a valid one.
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?.trim();
    homeostat_model::validate_traceparent(value).ok()?;
    Some(value.to_owned())
}

/// Gives the request's trace context to the jobs without one of their own.
pub(crate) fn inherit<'a>(headers: &HeaderMap, jobs: impl IntoIterator<Item = &'a mut NewJob>) {
    if let Some(tp) = traceparent(headers) {
        for job in jobs {
            if job.traceparent.is_none() {
                job.traceparent = Some(tp.clone());
            }
        }
    }
}
