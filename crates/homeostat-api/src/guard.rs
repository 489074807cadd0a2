//! What every exchange gets around its handler: a request that declares a
//! body larger than the server takes is refused before a byte of it is read,
//! a caller's request id is kept only when it is short and plain, and every
//! answer carries the headers a browser needs to keep it to itself.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, HeaderName, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The longest caller's request id kept (a UUID is 36).
pub(crate) const MAX_REQUEST_ID: usize = 64;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Self only: the dashboard and the API docs load nothing from elsewhere,
/// run no inline script, and are framed by no one. `data:` images are the
/// API docs' icons.
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// Wraps the routes in [`Guard`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardLayer {
    max_body_bytes: usize,
}

impl GuardLayer {
    /// Refuses declared bodies above `max_body_bytes`.
    pub(crate) fn new(max_body_bytes: usize) -> Self {
        Self { max_body_bytes }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// Before the handler: a declared `Content-Length` above `max_body_bytes`
/// is 413 at once (else the server would wait for a body it will refuse),
/// and a caller's `X-Request-Id` that is long or not plain text is dropped,
/// so a new one is made (it is echoed and logged). After it: browser
/// hardening, and `no-store` on every answer that did not choose its own
/// caching (signed-in pages and answers that carry secrets among them).
///
/// A `tower::Service` written out rather than an `axum::middleware::from_fn`,
/// which would box its future and a copy of the services inside it for
/// every request, kept by a long poll for its whole wait.
#[derive(Debug, Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    max_body_bytes: usize,
}

impl<S, B> tower::Service<Request> for Guard<S>
where
    S: tower::Service<Request, Response = Response<B>, Error = Infallible>,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Guarded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let max = self.max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(declared) = declared.filter(|&n| n > max as u64) {
            let refused = ApiError::too_large(format!(
                "the request body is {declared} bytes; at most {max} are accepted"
            ))
            .into_response();
            return Guarded::Refused {
                response: Some(refused),
            };
        }
        let plain_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .is_none_or(|v| plain_request_id(v.as_bytes()));
        if !plain_id {
            req.headers_mut().remove(&X_REQUEST_ID);
        }
        Guarded::Admitted {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// An answer, hardened once it comes.
    #[project = GuardedProj]
    pub(crate) enum Guarded<F> {
        Refused { response: Option<Response> },
        Admitted { #[pin] inner: F },
    }
}

impl<F, B> Future for Guarded<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = match self.project() {
            GuardedProj::Refused { response } => response
                .take()
                .expect("a request's future is not polled after its answer"),
            GuardedProj::Admitted { inner } => match ready!(inner.poll(cx)) {
                Ok(response) => response.map(axum::body::Body::new),
                Err(never) => match never {},
            },
        };
        harden(&mut response);
        Poll::Ready(Ok(response))
    }
}

fn plain_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

fn harden(res: &mut Response) {
    let headers = res.headers_mut();
    for (name, value) in [
        (CONTENT_SECURITY_POLICY, CSP),
        (X_FRAME_OPTIONS, "DENY"),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::plain_request_id;

    #[test]
    fn a_request_id_is_kept_when_short_and_plain() {
        assert!(plain_request_id(b"3f2c9a1e-8b7d-4c6e-9f0a-1b2c3d4e5f60"));
        assert!(plain_request_id(b"trace:abc_1.2"));
        assert!(!plain_request_id(b""));
        assert!(!plain_request_id(&[b'a'; 65]));
        assert!(!plain_request_id(b"a b"));
        assert!(!plain_request_id(b"<script>"));
        assert!(!plain_request_id("é".as_bytes()));
    }
}
