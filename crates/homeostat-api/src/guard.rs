//! What every exchange gets around its handler: a request that declares a
//! body larger than the server takes is refused before a byte of it is read,
//! a caller's request id is kept only when it is short and plain, and every
//! answer carries the headers a browser needs to keep it to itself.

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, HeaderName, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::middleware::Next;
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

/// Before the handler: a declared `Content-Length` above `max_body_bytes`
/// is 413 at once (else the server would wait for a body it will refuse),
/// and a caller's `X-Request-Id` that is long or not plain text is dropped,
/// so a new one is made (it is echoed and logged). After it: browser
/// hardening, and `no-store` on every answer that did not choose its own
/// caching (signed-in pages and answers that carry secrets among them).
pub(crate) async fn guard(
    State(max_body_bytes): State<usize>,
    mut req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body_bytes as u64) {
        let mut res = ApiError::too_large(format!(
            "the request body is {} bytes; at most {max_body_bytes} are accepted",
            declared.unwrap_or_default()
        ))
        .into_response();
        harden(&mut res);
        return res;
    }
    let plain_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .is_none_or(|v| plain_request_id(v.as_bytes()));
    if !plain_id {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    let mut res = next.run(req).await;
    harden(&mut res);
    res
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
