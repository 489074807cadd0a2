//! The API's one error: an HTTP status and the JSON body
//! `{"code", "message"}`, the code from the shared vocabulary
//! ([`ErrorCode`]). Turning an error into a response has no side effect:
//! an internal error's cause travels on the response ([`FailureCause`]) and
//! is logged once, by the request layer, with the request's id.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use homeostat_model::wire::ErrorBody;
use homeostat_model::{ErrorCode, ValidationError};
use homeostat_store::StoreError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What kind of error, for clients to branch on.
    pub code: ErrorCode,
    /// For people: names the field or the entity.
    pub message: String,
    /// For a 429: when to try again (`Retry-After`, seconds).
    pub retry_after_secs: Option<u64>,
    /// For the server's log only: why it failed.
    cause: Option<String>,
}

/// Why a request failed on the server's side, carried on its response for
/// the request layer to log with the request's id; never sent.
#[derive(Debug, Clone)]
pub(crate) struct FailureCause(pub(crate) String);

impl ApiError {
    /// An error with this code (and its status) and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
            retry_after_secs: None,
            cause: None,
        }
    }

    /// The same error answered with another status (415 for a body that is
    /// not JSON, which is `malformed`).
    pub fn with_status(self, status: StatusCode) -> Self {
        Self { status, ..self }
    }

    /// 429: a limit is reached; `Retry-After` says when to try again.
    pub fn limited(code: ErrorCode, message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(code, message).with_status(StatusCode::TOO_MANY_REQUESTS)
        }
    }

    /// 400: the request could not be read (syntax, unknown field, type).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Malformed, message)
    }

    /// 422: a value is out of range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    /// 401: no credential, or not a live one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// 403: a credential whose role may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 413: a body or a field past its bound.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    /// 503, retryable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// Why it failed, for the log (internal errors only).
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    /// 500: the server failed. The client reads `message`; `cause` goes to
    /// the log only.
    pub fn internal(message: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        Self {
            cause: Some(cause.to_string()),
            ..Self::new(ErrorCode::Internal, message)
        }
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
            code: self.code,
            message: self.message,
        };
        let mut res = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        if let Some(cause) = self.cause {
            res.extensions_mut().insert(FailureCause(cause));
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = e.code();
        if code.http_status() >= 500 && code != ErrorCode::Unavailable {
            // The cause stays in the log; the client learns what failed,
            // not why (a corrupt row's detail is the row's data).
            let cause = match std::error::Error::source(&e) {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            };
            let message = match (code, e.operation()) {
                (ErrorCode::SchemaTooNew, _) => e.to_string(),
                (_, Some(op)) => format!("{op} failed on the server (its log says why)"),
                (_, None) => "the server failed (its log says why)".to_owned(),
            };
            return Self {
                code,
                ..Self::internal(message, cause)
            };
        }
        match e {
            StoreError::Invalid(e) => e.into(),
            e => Self::new(code, e.to_string()),
        }
    }
}

impl From<homeostat_runtime::ManagerError> for ApiError {
    fn from(e: homeostat_runtime::ManagerError) -> Self {
        use homeostat_runtime::ManagerError as M;
        match e {
            M::UnknownController(_) => Self::not_found(e.to_string()),
            M::Plan { ref source, .. } => {
                let cause = format!("{e}: {source}");
                Self::internal(e.to_string(), cause)
            }
            _ => Self::invalid(e.to_string()),
        }
    }
}

/// "field: what is wrong", as the API's own checks word it (the code,
/// `invalid`, already says the rest).
impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::invalid(format!("{}: {}", e.field, e.message))
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
    #[response(status = 409, description = "conflict, stale_lease or fenced")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_errors_cause_travels_on_the_response_not_in_its_body() {
        let e = StoreError::Corrupt {
            operation: "reading a job",
            detail: "state 'bogus' is not a job state".into(),
        };
        let res = ApiError::from(e).into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let cause = res
            .extensions()
            .get::<FailureCause>()
            .expect("the cause is on the response");
        assert!(cause.0.contains("bogus"), "{cause:?}");
        let body = body_of(res);
        assert_eq!(body.code, ErrorCode::Internal);
        assert!(!body.message.contains("bogus"), "{}", body.message);
    }

    #[test]
    fn a_clients_error_carries_no_cause() {
        let res = ApiError::from(StoreError::NotFound {
            entity: "job",
            id: "x".into(),
        })
        .into_response();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(res.extensions().get::<FailureCause>().is_none());
    }

    #[test]
    fn a_rule_the_store_checks_reads_as_the_apis_own_checks() {
        let rule = || ValidationError::new("limits[0].key", "must not hold control characters");
        for res in [
            ApiError::from(StoreError::from(rule())),
            ApiError::from(rule()),
        ] {
            let res = res.into_response();
            assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
            let body = body_of(res);
            assert_eq!(body.code, ErrorCode::Invalid);
            assert_eq!(
                body.message,
                "limits[0].key: must not hold control characters"
            );
        }
    }

    fn body_of(res: Response) -> ErrorBody {
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(res.into_body(), 1 << 16))
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}
