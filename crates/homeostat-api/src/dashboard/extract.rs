//! Axum's form and query extractors, answering a bad form or address with
//! the dashboard's error page (naming the field) instead of plain text.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};

use super::page::Problem;

/// A form body (`application/x-www-form-urlencoded`).
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Form), rejection(Problem))]
pub(crate) struct Form<T>(pub(crate) T);

/// Query parameters.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub(crate) struct Query<T>(pub(crate) T);

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
