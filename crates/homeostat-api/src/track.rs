//! Every request counted, timed, logged and traced by its route template
//! (never its path: ids would make a series per job) and its request id;
//! never a header, so no credential reaches a log line. Every request ends
//! by `api.request_timeout`: past it the answer is 408 with the API's error
//! body (and the handler is dropped, which rolls back what it had not
//! committed).
//!
//! A `tower::Layer` written out rather than an `axum::middleware::from_fn`:
//! a `from_fn` boxes its future and a copy of every service inside it, for
//! each request, and a long poll keeps them for its whole wait (this one's
//! future alone was 2,144 bytes; written out, this layer and the guard
//! saved an idle long poll about 5.5 KiB: docs/benchmarks.md). Here the
//! bookkeeping is a few fields around the inner future, in the same
//! allocation.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::http_metrics::HttpMetrics;

/// Wraps the routes in [`Track`].
#[derive(Debug, Clone)]
pub(crate) struct TrackLayer {
    http: Arc<HttpMetrics>,
    limit: Duration,
}

impl TrackLayer {
    /// Counts into `http`; ends every request by `limit`.
    pub(crate) fn new(http: Arc<HttpMetrics>, limit: Duration) -> Self {
        Self { http, limit }
    }
}

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            http: self.http.clone(),
            limit: self.limit,
        }
    }
}

/// See the module's documentation.
#[derive(Debug, Clone)]
pub(crate) struct Track<S> {
    inner: S,
    http: Arc<HttpMetrics>,
    limit: Duration,
}

impl<S> tower::Service<Request> for Track<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        let request_id = req.headers().get("x-request-id").cloned();
        let span = request_span(&method, route_of(route.as_ref()), req.headers());
        let inner = {
            let _entered = span.enter();
            tokio::time::timeout(self.limit, self.inner.call(req))
        };
        Tracked {
            inner,
            span,
            request: Some(Seen {
                route,
                method,
                request_id,
                started: Instant::now(),
                http: self.http.clone(),
                limit: self.limit,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, counted and logged once it comes.
    pub(crate) struct Tracked<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        span: tracing::Span,
        request: Option<Seen>,
    }
}

/// What is known of a request before its answer.
struct Seen {
    route: Option<MatchedPath>,
    method: Method,
    request_id: Option<HeaderValue>,
    started: Instant,
    http: Arc<HttpMetrics>,
    limit: Duration,
}

impl<F> Future for Tracked<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        let seen = this
            .request
            .take()
            .expect("a request's future is not polled after its answer");
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => ApiError::new(
                homeostat_model::ErrorCode::Timeout,
                format!("the request took longer than {} s", seen.limit.as_secs()),
            )
            .into_response(),
        };
        seen.answered(this.span, &response);
        Poll::Ready(Ok(response))
    }
}

impl Seen {
    fn answered(self, span: &tracing::Span, response: &Response) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let status = response.status().as_u16();
        // As a signed integer: OpenTelemetry has no unsigned one.
        span.record("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.record("otel.status_code", "error");
        }
        let route = route_of(self.route.as_ref());
        let method = self.method.as_str();
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // A probe's "not ready" is its answer, not a fault: the failing
        // check is logged where it fails, not once per probe.
        let answered = route == "/readyz";
        if let Some(cause) = response.extensions().get::<crate::error::FailureCause>() {
            tracing::error!(%method, %route, status, ms = elapsed * 1e3, %request_id, cause = %cause.0, "request failed");
        } else if status >= 500 && !answered {
            tracing::warn!(%method, %route, status, ms = elapsed * 1e3, %request_id, "request failed");
        } else {
            tracing::debug!(%method, %route, status, ms = elapsed * 1e3, %request_id, "request");
        }
        self.http
            .answered(route.to_owned(), method.to_owned(), status, elapsed);
    }
}

fn route_of(route: Option<&MatchedPath>) -> &str {
    route.map_or("unmatched", MatchedPath::as_str)
}

/// The span of a request, exported when tracing is on (docs/telemetry.md):
/// a child of the caller's `traceparent`, named by its route template, with
/// its tenant or agent recorded once authenticated. Probes and scrapes have
/// none, nor do heartbeats: they would be most of what is exported (a
/// fleet's agents beat every few seconds) and tell nothing of a job.
fn request_span(method: &Method, route: &str, headers: &axum::http::HeaderMap) -> tracing::Span {
    if matches!(
        route,
        "/healthz" | "/readyz" | "/metrics" | "/v1/agent/heartbeat"
    ) {
        return tracing::Span::none();
    }
    let method = method.as_str();
    let span = tracing::info_span!(
        target: homeostat_model::trace::SPANS,
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        homeostat.tenant.id = tracing::field::Empty,
        homeostat.agent.id = tracing::field::Empty,
        homeostat.job.id = tracing::field::Empty,
        homeostat.queue = tracing::field::Empty,
        homeostat.job.kind = tracing::field::Empty,
    );
    if let Some(tp) = crate::trace_context::traceparent(headers) {
        homeostat_model::trace::continue_from(&span, &tp);
    }
    span
}
