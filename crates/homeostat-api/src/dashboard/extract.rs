//! Axum's form and query extractors, answering a bad form or address with
//! the dashboard's error page (naming the field) instead of plain text.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};

use super::problem::Problem;

/// A form body (`application/x-www-form-urlencoded`). Every form of the
/// dashboard carries a CSRF token: one without it is refused (403) before
/// its other fields are read, so a forged form learns nothing from why its
/// fields would not do. The handler checks the token's value.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Form<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Form<T> {
    type Rejection = Problem;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Problem> {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                Problem::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is larger than the dashboard takes.",
                )
            })?;
        if !form_urlencoded::parse(&bytes).any(|(k, v)| k == "csrf" && !v.is_empty()) {
            return Err(Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or wrong: reload the page and try again.",
            ));
        }
        let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
        let form = axum::Form::<T>::from_request(req, state).await?;
        Ok(Form(form.0))
    }
}

/// The largest form the dashboard takes (its largest is a bulk action's
/// filters).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Query parameters; a NUL in one is refused naming it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Query<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Problem> {
        if let Some(name) = crate::extract::nul_parameter(&parts.uri) {
            return Err(Problem::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("{name}: contains a NUL character, which cannot be stored"),
            ));
        }
        Ok(Query(axum::extract::Query::try_from_uri(&parts.uri)?.0))
    }
}

impl From<FormRejection> for Problem {
    fn from(e: FormRejection) -> Self {
        Problem::new(e.status(), e.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(e: QueryRejection) -> Self {
        Problem::new(e.status(), e.body_text())
    }
}
