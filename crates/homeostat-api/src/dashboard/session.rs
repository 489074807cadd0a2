//! Signing in to the dashboard: the API key lives in an HttpOnly,
//! SameSite=Strict cookie (scripts cannot read it, other sites cannot send
//! it), every request authenticates it as the API does, and every form
//! carries a CSRF token derived from the key (HMAC), so it needs no server
//! state and holds across replicas; a page elsewhere cannot compute it.

use axum::extract::{FromRequestParts, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::extract::Form;
use super::page::{Problem, render_login};
use crate::auth::{Caller, Role};
use crate::state::ApiState;

const COOKIE_NAME: &str = "homeostat_session";
/// The sign-in form's own token (double-submit: the cookie and the form
/// must agree), so that another site cannot sign a browser in with a key
/// of its choosing.
const LOGIN_COOKIE: &str = "homeostat_login";

/// A signed-in operator: the key's identity and the CSRF token its forms
/// carry.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) caller: Caller,
    pub(crate) csrf: String,
}

impl Session {
    /// Who this is, for the page header: the role and the key's id (never
    /// the secret).
    pub(crate) fn who(&self) -> String {
        let role = match self.caller.role {
            Role::Admin => "admin".to_owned(),
            Role::Tenant(t) => format!("tenant {t}"),
            Role::Viewer => "viewer".to_owned(),
        };
        format!("{role} · key {}", self.caller.token_id)
    }

    /// Refuses a tenant key a page that spans tenants.
    pub(crate) fn require_operator(&self) -> Result<(), Problem> {
        Ok(self.caller.require_operator("This page")?)
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub(crate) fn check_csrf(&self, presented: &str) -> Result<(), Problem> {
        if bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or wrong: reload the page and try again.",
            ))
        }
    }
}

fn csrf_token(secret: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(b"homeostat dashboard form");
    hex::encode(mac.finalize().into_bytes())
}

/// The value of cookie `wanted`, if the request carries it.
fn cookie(headers: &HeaderMap, wanted: &str) -> Option<String> {
    // A Cookie header is `name=value; name=value`; the values this site
    // sets (keys, hex tokens) need no decoding.
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == wanted)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The session cookie's value, if the request carries one.
fn session_secret(headers: &HeaderMap) -> Option<String> {
    cookie(headers, COOKIE_NAME)
}

/// The sign-in page with a fresh form token, in the form and in a cookie
/// that only `/login` receives.
fn login_form(error: Option<&str>, status: StatusCode) -> Response {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    let token = hex::encode(bytes);
    let mut r = render_login(error, status, &token);
    let cookie = format!("{LOGIN_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict");
    r.headers_mut().append(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a hex token is a header value"),
    );
    r
}

/// Where an unauthenticated request goes: the sign-in page (for htmx, by
/// its redirect header, since it follows no 303 for a whole page).
pub(crate) fn to_login(parts_headers: &HeaderMap) -> Response {
    if parts_headers.contains_key("hx-request") {
        let mut r = StatusCode::UNAUTHORIZED.into_response();
        r.headers_mut()
            .insert("hx-redirect", HeaderValue::from_static("/login"));
        r
    } else {
        Redirect::to("/login").into_response()
    }
}

impl FromRequestParts<ApiState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let Some(secret) = session_secret(&parts.headers) else {
            return Err(to_login(&parts.headers));
        };
        match state.store.authenticate_api_key(&secret).await {
            Ok(identity) => Ok(Session {
                caller: Caller::from_identity(&identity),
                csrf: csrf_token(&secret),
            }),
            Err(e) if e.code() == "unauthorized" => Err(to_login(&parts.headers)),
            Err(e) => Err(Problem::from(e).into_response()),
        }
    }
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    key: String,
    #[serde(default)]
    csrf: String,
}

/// `GET /login`.
pub(crate) async fn login_page() -> Response {
    login_form(None, StatusCode::OK)
}

/// `POST /login`: a live API key sets the cookie; anything else is the
/// form again with why.
pub(crate) async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    let issued = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if issued.is_empty() || !bool::from(issued.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return login_form(
            Some("This sign-in form was not this site's, or it expired: enter the key again."),
            StatusCode::FORBIDDEN,
        );
    }
    let key = form.key.trim();
    if key.is_empty() {
        return login_form(Some("Enter an API key."), StatusCode::UNPROCESSABLE_ENTITY);
    }
    match state.store.authenticate_api_key(key).await {
        Ok(_) => {
            let mut r = Redirect::to("/").into_response();
            let cookie = format!("{COOKIE_NAME}={key}; Path=/; HttpOnly; SameSite=Strict");
            match HeaderValue::from_str(&cookie) {
                Ok(v) => {
                    r.headers_mut().insert(SET_COOKIE, v);
                    r
                }
                Err(_) => login_form(
                    Some("That is not an API key."),
                    StatusCode::UNPROCESSABLE_ENTITY,
                ),
            }
        }
        Err(e) if e.code() == "unauthorized" => login_form(
            Some("That API key is unknown, revoked or expired."),
            StatusCode::UNAUTHORIZED,
        ),
        Err(e) => Problem::from(e).into_response(),
    }
}

/// A form that carries only its CSRF token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub(crate) csrf: String,
}

/// `POST /logout`: clears the cookie.
pub(crate) async fn logout(
    session: Session,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    session.check_csrf(&form.csrf)?;
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static(
            "homeostat_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; homeostat_session=hs_key_x; b=2"),
        );
        assert_eq!(session_secret(&h).as_deref(), Some("hs_key_x"));
        h.insert(COOKIE, HeaderValue::from_static("homeostat_session="));
        assert_eq!(session_secret(&h), None);
    }

    #[test]
    fn the_csrf_token_depends_on_the_key() {
        assert_ne!(csrf_token("one"), csrf_token("two"));
        assert_eq!(csrf_token("one"), csrf_token("one"));
    }
}
