//! How a dashboard page answers: the whole document for a navigation, only
//! the live part for htmx's polling. Also the formatting every view shares
//! (times, ids).

use askama::Template;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use jiff::Timestamp;

use super::problem::{Problem, html};
use super::session::Session;

/// The navigation: label and address.
const NAV: [(&str, &str); 8] = [
    ("Overview", "/"),
    ("Jobs", "/jobs"),
    ("Workflows", "/workflows"),
    ("Agents", "/agents"),
    ("Limits", "/limits"),
    ("Controllers", "/controllers"),
    ("Audit", "/audit"),
    ("Notifications", "/notifications"),
];

#[derive(Template)]
#[template(path = "layout.html")]
struct Layout<'a> {
    title: &'a str,
    nav: &'a [(&'a str, &'a str)],
    active: &'a str,
    who: String,
    csrf: &'a str,
    notice: Option<&'a str>,
    head: &'a str,
    live: bool,
    self_url: &'a str,
    body: &'a str,
}

/// One page: its title, the navigation entry it belongs to, a part that
/// stays (filters, forms) and a part that refreshes itself every few
/// seconds when `live`.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) title: String,
    pub(crate) section: &'static str,
    pub(crate) notice: Option<String>,
    pub(crate) head: String,
    pub(crate) body: String,
    pub(crate) live: bool,
    pub(crate) self_url: String,
}

impl Page {
    /// A page whose `body` refreshes itself from `self_url`.
    pub(crate) fn live(
        title: impl Into<String>,
        section: &'static str,
        self_url: impl Into<String>,
        body: String,
    ) -> Self {
        Self {
            title: title.into(),
            section,
            body,
            live: true,
            self_url: self_url.into(),
            ..Self::default()
        }
    }

    /// With the sentence an action left for it.
    pub(crate) fn notice(mut self, notice: Option<String>) -> Self {
        self.notice = notice;
        self
    }

    /// The document, or for htmx's own requests (polling, not a boosted
    /// navigation) only the live part.
    pub(crate) fn respond(self, session: &Session, headers: &HeaderMap) -> Response {
        let htmx = headers.contains_key("hx-request");
        let boosted = headers.contains_key("hx-boosted");
        if htmx && !boosted {
            return Html(self.body).into_response();
        }
        let layout = Layout {
            title: &self.title,
            nav: &NAV,
            active: self.section,
            who: session.who(),
            csrf: &session.csrf,
            notice: self.notice.as_deref(),
            head: &self.head,
            live: self.live,
            self_url: &self.self_url,
            body: &self.body,
        };
        html(layout.render())
    }
}

/// Renders a template's fragment (a 500 page if the template fails).
pub(crate) fn fragment(t: &impl Template) -> Result<String, Problem> {
    t.render()
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// An id from the address; one that does not parse names no entity (404).
pub(crate) fn parse_id<T>(what: &str, raw: &str) -> Result<T, Problem>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    raw.parse()
        .map_err(|e| Problem::new(StatusCode::NOT_FOUND, format!("no {what} {raw}: {e}")))
}

/// `t` relative to `now`: "12 s ago", "in 3 min".
pub(crate) fn ago(now: Timestamp, t: Timestamp) -> String {
    let secs = now.as_second() - t.as_second();
    let (n, past) = (secs.unsigned_abs(), secs >= 0);
    let amount = match n {
        0..=119 => format!("{n} s"),
        120..=7199 => format!("{} min", n / 60),
        7200..=172_799 => format!("{} h", n / 3600),
        _ => format!("{} d", n / 86_400),
    };
    if past {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// `t` to the second, in UTC.
pub(crate) fn when(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// An optional time to the second, or a dash.
pub(crate) fn when_opt(t: Option<Timestamp>) -> String {
    t.map(when).unwrap_or_else(|| "—".into())
}

/// The last eight digits of a UUID: enough to tell ids apart on a page.
/// (Its first digits are the time it was made, alike for ids made
/// together.)
pub(crate) fn short(id: impl std::fmt::Display) -> String {
    let s = id.to_string();
    s[s.len().saturating_sub(8)..].to_owned()
}

/// A query string of the pairs whose value is set.
pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            out.push(if out.is_empty() { '?' } else { '&' });
            out.push_str(k);
            out.push('=');
            out.extend(form_urlencoded::byte_serialize(v.as_bytes()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(ago(now, at("2026-01-01T11:59:48Z")), "12 s ago");
        assert_eq!(ago(now, at("2026-01-01T12:05:00Z")), "in 5 min");
        assert_eq!(ago(now, at("2025-12-30T12:00:00Z")), "2 d ago");
    }

    #[test]
    fn a_query_keeps_only_set_values_and_encodes_them() {
        let q = query(&[
            ("state", Some("dead".into())),
            ("queue", None),
            ("fingerprint", Some("a b&c".into())),
        ]);
        assert_eq!(q, "?state=dead&fingerprint=a+b%26c");
        assert_eq!(query(&[("queue", Some(String::new()))]), "");
    }
}
