//! The API's one error: an HTTP status and the JSON body
//! `{"code", "message"}`, with the store's stable codes and a few of the
//! API's own (`malformed`, `forbidden`, `too_large`, `timeout`).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use homeostat_model::ValidationError;
use homeostat_model::wire::ErrorBody;
use homeostat_store::StoreError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable, snake_case.
    pub code: &'static str,
    /// For people: names the field or the entity.
    pub message: String,
    /// For a 429: when to try again (`Retry-After`, seconds).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// 429: a limit is reached; `Retry-After` says when to try again.
    pub fn limited(code: &'static str, message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// 400: the request could not be read (syntax, unknown field, type).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", message)
    }

    /// 422: a value is out of range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 401: no credential, or not a live one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a credential whose role may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413: a body or a field past its bound.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 503, retryable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        let mut res = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e.code() {
            "invalid" => StatusCode::UNPROCESSABLE_ENTITY,
            "not_found" => StatusCode::NOT_FOUND,
            "conflict" | "stale_lease" | "fenced" => StatusCode::CONFLICT,
            "unauthorized" => StatusCode::UNAUTHORIZED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The cause stays in the log; the client learns only that it was
            // the server's fault.
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "request failed");
            return Self::new(status, "internal", e.to_string());
        }
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::invalid(e.to_string())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::malformed(r.body_text())
    }
}

/// The error answers of the API's routes, documented once in the OpenAPI
/// document (every one is an [`ErrorBody`]).
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only: handlers answer with `ApiError`
pub(crate) enum ErrorResponses {
    /// Not JSON, a syntax error, an unknown field or a wrong type.
    #[response(
        status = 400,
        description = "malformed: not JSON, an unknown field, a wrong type"
    )]
    Malformed(ErrorBody),
    /// No credential, or not a live one of the right kind.
    #[response(
        status = 401,
        description = "unauthorized: no credential, or not a live one"
    )]
    Unauthorized(ErrorBody),
    /// The key's role may not do this.
    #[response(
        status = 403,
        description = "forbidden: the key's role may not do this"
    )]
    Forbidden(ErrorBody),
    /// No such entity, or another tenant's.
    #[response(
        status = 404,
        description = "not_found: no such entity, or another tenant's"
    )]
    NotFound(ErrorBody),
    /// The entity's state does not allow it, or a stale lease token.
    #[response(status = 409, description = "conflict or stale_lease")]
    Conflict(ErrorBody),
    /// A body or a result past its bound.
    #[response(
        status = 413,
        description = "too_large: a body or a result past its bound"
    )]
    TooLarge(ErrorBody),
    /// A body that is not declared as JSON.
    #[response(
        status = 415,
        description = "malformed: the body is not application/json"
    )]
    UnsupportedMediaType(ErrorBody),
    /// A value out of range.
    #[response(
        status = 422,
        description = "invalid: a value out of range, or text with a NUL, named"
    )]
    Invalid(ErrorBody),
    /// A limit reached: `Retry-After` says when to try again.
    #[response(
        status = 429,
        description = "a limit reached (too_many_claims, quota_exceeded); Retry-After says when to try again"
    )]
    TooMany(ErrorBody),
    /// The request took longer than `api.request_timeout`.
    #[response(status = 408, description = "timeout: the request took too long")]
    Timeout(ErrorBody),
    /// The server failed.
    #[response(status = 500, description = "internal: the server failed")]
    Internal(ErrorBody),
    /// The database is unreachable: retry.
    #[response(status = 503, description = "unavailable: retry")]
    Unavailable(ErrorBody),
}
