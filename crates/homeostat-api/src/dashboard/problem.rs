//! Pages outside the layout: the sign-in page, and a problem (an error) as
//! a page with its status and a sentence for a person.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use homeostat_store::StoreError;

use crate::error::ApiError;

#[derive(Template)]
#[template(path = "bare.html")]
struct Bare<'a> {
    title: &'a str,
    error: Option<&'a str>,
    login: bool,
    csrf: &'a str,
}

pub(super) fn html(rendered: askama::Result<String>) -> Response {
    match rendered {
        Ok(body) => Html(body).into_response(),
        Err(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The sign-in page, with why the last attempt failed and the form's token.
pub(crate) fn render_login(error: Option<&str>, status: StatusCode, csrf: &str) -> Response {
    let page = Bare {
        title: "Sign in",
        error,
        login: true,
        csrf,
    };
    (status, html(page.render())).into_response()
}

/// What went wrong, as a page: the status and a sentence for a person.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    message: String,
    /// An internal error's cause, for the request layer's log.
    cause: Option<String>,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            cause: None,
        }
    }
}

impl From<ApiError> for Problem {
    fn from(e: ApiError) -> Self {
        Self {
            cause: e.cause().map(str::to_owned),
            ..Self::new(e.status, e.message)
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self
            .status
            .canonical_reason()
            .unwrap_or("Something went wrong");
        let page = Bare {
            title,
            error: Some(&self.message),
            login: false,
            csrf: "",
        };
        let mut res = (self.status, html(page.render())).into_response();
        if let Some(cause) = self.cause {
            res.extensions_mut()
                .insert(crate::error::FailureCause(cause));
        }
        res
    }
}
