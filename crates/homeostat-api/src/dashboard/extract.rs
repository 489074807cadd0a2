//! Axum's form and query extractors, answering a bad form or address with
//! the dashboard's error page (naming the field) instead of plain text.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};

use super::page::Problem;

/// A form body (`application/x-www-form-urlencoded`).
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Form), rejection(Problem))]
pub(crate) struct Form<T>(pub(crate) T);

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
