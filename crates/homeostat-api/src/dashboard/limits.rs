//! `/limits`: each limit, what holds and waits under it, and its busiest
//! keys with what waits on them.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use homeostat_model::{KeyUsage, LimitUsage};

use super::page::{Page, fragment};
use super::problem::Problem;
use super::session::Session;
use crate::state::ApiState;

/// One limit, formatted.
struct LimitRow {
    name: String,
    /// "2 running at once per key", "10 starts per 60 s per key".
    bounds: String,
    strategy: &'static str,
    key_from: String,
    scope: &'static str,
    applies_to: String,
    running: u64,
    holding: u64,
    waiting: u64,
    delayed_by_rate: u64,
    active_keys: u64,
    keys: Vec<KeyRow>,
}

/// One key of a limit, formatted.
struct KeyRow {
    key: String,
    /// The tenant whose own key it is; empty for a shared key.
    tenant: String,
    running: u64,
    queued: u64,
    stopping: u64,
    waiting: u64,
    recent_starts: u64,
    /// Whether the key is at its running maximum or out of starts.
    full: bool,
}

fn key_row(usage: &LimitUsage, k: &KeyUsage) -> KeyRow {
    let spec = &usage.limit.spec;
    let holding = k.running + k.queued + k.stopping;
    KeyRow {
        key: k.key.clone(),
        tenant: k.tenant.map_or_else(String::new, |t| t.to_string()),
        running: k.running,
        queued: k.queued,
        stopping: k.stopping,
        waiting: k.waiting,
        recent_starts: k.recent_starts,
        full: spec.max_running.is_some_and(|m| holding >= u64::from(m))
            || spec
                .rate
                .is_some_and(|r| k.queued + k.recent_starts >= u64::from(r.starts)),
    }
}

fn row(usage: &LimitUsage) -> LimitRow {
    let spec = &usage.limit.spec;
    let mut bounds = Vec::new();
    if let Some(m) = spec.max_running {
        bounds.push(format!("{m} at once"));
    }
    if let Some(r) = spec.rate {
        bounds.push(format!("{} starts per {} s", r.starts, r.per_secs));
    }
    LimitRow {
        name: usage.limit.name.clone(),
        bounds: format!("{} per key", bounds.join(", ")),
        strategy: spec.strategy.as_str(),
        key_from: spec.key_from.to_string(),
        scope: spec.scope.as_str(),
        applies_to: spec.applies_to.as_ref().map_or_else(String::new, |s| {
            format!(
                "queue {} · kind {}",
                s.queue.as_deref().unwrap_or("any"),
                s.kind.as_deref().unwrap_or("any")
            )
        }),
        running: usage.running,
        holding: usage.holding,
        waiting: usage.waiting,
        delayed_by_rate: usage.delayed_by_rate,
        active_keys: usage.active_keys,
        keys: usage.hottest.iter().map(|k| key_row(usage, k)).collect(),
    }
}

#[derive(Template)]
#[template(path = "limits.html")]
struct Limits {
    rows: Vec<LimitRow>,
}

/// `GET /limits`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    session: Session,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    session.require_operator()?;
    let usage = state.store.limits_usage().await?;
    let view = Limits {
        rows: usage.iter().map(row).collect(),
    };
    Ok(Page::live("Limits", "Limits", "/limits", fragment(&view)?).respond(&session, &headers))
}
