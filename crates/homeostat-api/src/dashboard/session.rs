//! Signing in to the dashboard. A sign-in proves an API key once and gets a
//! session kept by the server: the HttpOnly, SameSite=Strict cookie holds a
//! random session id (stored hashed), not the key, so a copy of it is no
//! API credential and stops working at sign-out, after
//! `api.session_idle`, at `api.session_max_age`, or when the key is revoked
//! or expires. Every form carries a CSRF token derived from the session id
//! (HMAC), which a page elsewhere cannot compute. The sign-in form's own
//! double-submit token is bound to a secret of the server's, so a sibling
//! origin that can set this site's cookies still cannot make a valid pair
//! and sign a browser in with a key of its choosing.

use axum::extract::{FromRequestParts, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, KeyInit, Mac};
use homeostat_store::SessionLimits;
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::extract::Form;
use super::problem::{Problem, render_login};
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
    /// The session's id (the cookie's value).
    id: String,
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

/// HMAC-SHA-256 of `message` under `key`, in hex.
fn mac(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// The CSRF token of a session's forms.
fn csrf_token(session: &str) -> String {
    mac(session.as_bytes(), b"homeostat dashboard form")
}

/// The server's key for sign-in form tokens.
const LOGIN_SECRET: &str = "dashboard-login";

fn limits(state: &ApiState) -> SessionLimits {
    SessionLimits {
        idle: state.settings.session_idle,
        max_age: state.settings.session_max_age,
    }
}

/// `; Secure` when the dashboard is served over TLS (`api.secure_cookies`).
fn secure(state: &ApiState) -> &'static str {
    if state.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    }
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
fn session_id(headers: &HeaderMap) -> Option<String> {
    cookie(headers, COOKIE_NAME)
}

/// The sign-in page with a fresh form token: a random nonce in a cookie
/// that only `/login` receives, and in the form its MAC under the server's
/// secret.
async fn login_form(state: &ApiState, error: Option<&str>, status: StatusCode) -> Response {
    let key = match state.store.server_secret(LOGIN_SECRET).await {
        Ok(key) => key,
        Err(e) => return Problem::from(e).into_response(),
    };
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    let nonce = hex::encode(bytes);
    let mut r = render_login(error, status, &mac(&key, nonce.as_bytes()));
    let cookie = format!(
        "{LOGIN_COOKIE}={nonce}; Path=/login; HttpOnly; SameSite=Strict{}",
        secure(state)
    );
    r.headers_mut().append(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a hex nonce is a header value"),
    );
    r
}

/// Whether the form's token is the MAC of the cookie's nonce.
async fn login_token_holds(state: &ApiState, nonce: &str, token: &str) -> bool {
    let Ok(key) = state.store.server_secret(LOGIN_SECRET).await else {
        return false;
    };
    !nonce.is_empty()
        && bool::from(
            mac(&key, nonce.as_bytes())
                .as_bytes()
                .ct_eq(token.as_bytes()),
        )
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
        let Some(id) = session_id(&parts.headers) else {
            return Err(to_login(&parts.headers));
        };
        match state.store.session(&id, limits(state)).await {
            Ok(identity) => Ok(Session {
                caller: Caller::from_identity(&identity),
                csrf: csrf_token(&id),
                id,
            }),
            Err(e) if e.code() == homeostat_model::ErrorCode::Unauthorized => {
                Err(to_login(&parts.headers))
            }
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
pub(crate) async fn login_page(State(state): State<ApiState>) -> Response {
    login_form(&state, None, StatusCode::OK).await
}

/// `POST /login`: a live API key starts a session; anything else is the
/// form again with why.
pub(crate) async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    let nonce = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !login_token_holds(&state, &nonce, &form.csrf).await {
        return login_form(
            &state,
            Some("This sign-in form was not this site's, or it expired: enter the key again."),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    let key = form.key.trim();
    if key.is_empty() {
        return login_form(
            &state,
            Some("Enter an API key."),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let identity = match state.store.authenticate_api_key(key).await {
        Ok(identity) => identity,
        Err(e) if e.code() == homeostat_model::ErrorCode::Unauthorized => {
            return login_form(
                &state,
                Some("That API key is unknown, revoked or expired."),
                StatusCode::UNAUTHORIZED,
            )
            .await;
        }
        Err(e) => return Problem::from(e).into_response(),
    };
    // Sessions that idled or aged out go as others begin: their number
    // follows the sign-ins, not the time the server has run.
    if let Err(e) = state.store.delete_ended_sessions(limits(&state), 100).await {
        tracing::warn!(error = %e, "ended dashboard sessions were not deleted");
    }
    let id = match state.store.start_session(identity.token_id).await {
        Ok(id) => id,
        Err(e) => return Problem::from(e).into_response(),
    };
    let mut r = Redirect::to("/").into_response();
    let cookie = format!(
        "{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict{}",
        secure(&state)
    );
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a session id is a header value"),
    );
    r
}

/// A form that carries only its CSRF token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub(crate) csrf: String,
}

/// `POST /logout`: ends the session and clears the cookie.
pub(crate) async fn logout(
    State(state): State<ApiState>,
    session: Session,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    session.check_csrf(&form.csrf)?;
    state.store.end_session(&session.id).await?;
    let mut r = Redirect::to("/login").into_response();
    let cookie = format!(
        "{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure(&state)
    );
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a constant is a header value"),
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
        assert_eq!(session_id(&h).as_deref(), Some("hs_key_x"));
        h.insert(COOKIE, HeaderValue::from_static("homeostat_session="));
        assert_eq!(session_id(&h), None);
    }

    #[test]
    fn the_csrf_token_depends_on_the_session() {
        assert_ne!(csrf_token("one"), csrf_token("two"));
        assert_eq!(csrf_token("one"), csrf_token("one"));
    }
}
