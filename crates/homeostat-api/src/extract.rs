//! Axum's JSON and query extractors, answering with the API's error body
//! instead of plain text.

use axum::extract::{FromRequest, FromRequestParts};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;

/// A JSON body: a malformed one, an unknown field or a wrong type is 400
/// naming it.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct Json<T>(pub(crate) T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query parameters, refused by name like a body's fields.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub(crate) T);

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
