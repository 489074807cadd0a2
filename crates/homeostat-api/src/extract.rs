//! Axum's JSON and query extractors, answering with the API's error body
//! instead of plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::strict_json::{self, Nul};

/// A JSON body, read by [`strict_json`]: a malformed one, an unknown field,
/// a wrong type, a duplicate key or an array where an object belongs is 400
/// naming it; a NUL character is 422 naming the field.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Json<T>(pub(crate) T);

/// A JSON body an agent reports about a job: as [`Json`], but a NUL in its
/// error text or result becomes U+FFFD rather than losing the report.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReportJson<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = json_body(req, state).await?;
        strict_json::from_slice(&bytes, Nul::Refuse).map(Json)
    }
}

/// A JSON body as a value, read by [`strict_json`] under [`Json`]'s rules,
/// for a handler that picks its shape itself: read once, not rebuilt.
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonValue(pub(crate) serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonValue {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = json_body(req, state).await?;
        strict_json::parse(&bytes, Nul::Refuse).map(JsonValue)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ReportJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = json_body(req, state).await?;
        strict_json::from_slice(&bytes, Nul::Replace).map(ReportJson)
    }
}

/// The bytes of a body declared as JSON (`application/json`, or
/// `application/…+json`): 415 for another type, 413 past the body limit.
pub(crate) async fn json_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if !is_json(req.headers()) {
        return Err(
            ApiError::malformed("the body must be JSON (Content-Type: application/json)")
                .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        );
    }
    Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("the request body is larger than the server accepts")
        } else {
            ApiError::malformed(r.body_text())
        }
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .get(..12)
            .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
            && essence.len() > 17
            && essence[essence.len() - 5..].eq_ignore_ascii_case("+json")
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query parameters, refused by name like a body's fields; a NUL in one is
/// 422 naming it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Query<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if let Some(name) = nul_parameter(&parts.uri) {
            return Err(ApiError::invalid(format!(
                "{name}: contains a NUL character (U+0000), which cannot be stored"
            )));
        }
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|r| ApiError::malformed(r.body_text()))
    }
}

/// The first query parameter whose name or value holds a NUL once decoded
/// (PostgreSQL refuses one in any text it is given, a filter's too).
pub(crate) fn nul_parameter(uri: &Uri) -> Option<String> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    pairs
        .0
        .into_iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        .map(|(k, _)| k.replace('\0', "\u{fffd}"))
}

/// A path parameter (an id): a malformed one is 400.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub(crate) T);

/// The body of a request that takes none (`POST …/cancel`): empty or `{}`.
/// Anything else is refused, as an unknown field would be, rather than
/// ignored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoBody;

impl<S: Send + Sync> axum::extract::FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large("the request body is larger than the server accepts")
                } else {
                    ApiError::malformed(r.body_text())
                }
            })?;
        let text = std::str::from_utf8(&bytes).unwrap_or("\u{fffd}").trim();
        if text.is_empty() || text == "{}" || text == "null" {
            return Ok(NoBody);
        }
        Err(ApiError::malformed(
            "this request takes no body (send none, or {})",
        ))
    }
}
