//! `/metrics` in the OpenMetrics text format: what others registered (the
//! controller manager's reconcile metrics), the API's own
//! (http_metrics.rs; counted by track.rs, every request's layer), and the
//! store read at scrape time (live jobs by state and queue, each queue's backlog and the
//! age of its oldest job, agents by status).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::ApiError;
use crate::state::ApiState;

/// Marks a request that came through the probes listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbesListener;

/// The queue label of the queues past `api.metrics_max_queues`, summed.
pub const OTHER_QUEUES: &str = "_other";

/// The queues that get series of their own: the `max` with the most live
/// jobs (ties by name); the rest are summed as [`OTHER_QUEUES`], so the
/// number of series does not follow what tenants name their queues.
fn kept_queues(stats: &homeostat_store::Stats, max: usize) -> std::collections::HashSet<String> {
    let mut live: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for c in &stats.jobs {
        *live.entry(c.queue.as_str()).or_default() += c.count;
    }
    let mut queues: Vec<(&str, u64)> = live.into_iter().collect();
    queues.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    queues
        .into_iter()
        .take(max)
        .map(|(q, _)| q.to_owned())
        .collect()
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateQueue {
    state: &'static str,
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// `GET /metrics`: OpenMetrics to a scraper that asks for it (Prometheus
/// does), the Prometheus text format otherwise (`promtool check metrics`,
/// curl, older scrapers).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    responses(
        (status = 200, description = "OpenMetrics when asked for (Accept: application/openmetrics-text), else the Prometheus text format", content_type = "text/plain"),
    ),
)]
pub(crate) async fn serve(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    let openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if state.settings.probes_listen.is_some() && extensions.get::<ProbesListener>().is_none() {
        return Err(ApiError::not_found(
            "/metrics is served on the probes listener (api.probes_listen)",
        ));
    }
    if state.settings.metrics_need_key {
        let caller = crate::auth::Caller::from_request_parts_of(&headers, &state).await?;
        caller.require_operator("/metrics")?;
    }
    let stats = state.store.stats().await?;
    let now = state.store.now();
    let kept = kept_queues(&stats, state.settings.metrics_max_queues);
    let label_of = |queue: &str| {
        if kept.contains(queue) {
            queue.to_owned()
        } else {
            OTHER_QUEUES.to_owned()
        }
    };
    let mut snapshot = Registry::default();
    let jobs = Family::<StateQueue, Gauge>::default();
    for c in &stats.jobs {
        jobs.get_or_create(&StateQueue {
            state: c.state.as_str(),
            queue: label_of(&c.queue),
        })
        .inc_by(i64::try_from(c.count).unwrap_or(i64::MAX));
    }
    snapshot.register("homeostat_jobs", "Live jobs by state and queue", jobs);
    let backlog = Family::<QueueLabel, Gauge>::default();
    let oldest = Family::<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for q in &stats.queues {
        let label = QueueLabel {
            queue: label_of(&q.queue),
        };
        backlog
            .get_or_create(&label)
            .inc_by(i64::try_from(q.queued).unwrap_or(i64::MAX));
        let age = now
            .duration_since(q.oldest_queued_at)
            .as_secs_f64()
            .max(0.0);
        let gauge = oldest.get_or_create(&label);
        if age > gauge.get() {
            gauge.set(age);
        }
    }
    snapshot.register(
        "homeostat_queue_backlog",
        "Jobs waiting to be claimed, by queue",
        backlog,
    );
    snapshot.register(
        "homeostat_queue_oldest_job_age_seconds",
        "How long the longest-waiting queued job of each queue has waited",
        oldest,
    );
    let agents = Family::<StatusLabel, Gauge>::default();
    for a in &stats.agents {
        agents
            .get_or_create(&StatusLabel {
                status: a.status.as_str(),
            })
            .set(i64::try_from(a.count).unwrap_or(i64::MAX));
    }
    snapshot.register("homeostat_agents", "Agents by status", agents);
    let workflows = Gauge::<i64>::default();
    workflows.set(i64::try_from(stats.workflows_running).unwrap_or(i64::MAX));
    snapshot.register(
        "homeostat_workflows_running",
        "Workflows with a step not finished (not cancelled)",
        workflows,
    );
    let oldest_workflow = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    if let Some(at) = stats.oldest_workflow_at {
        oldest_workflow.set(now.duration_since(at).as_secs_f64().max(0.0));
    }
    snapshot.register(
        "homeostat_workflow_oldest_running_age_seconds",
        "How long ago the oldest running workflow was submitted (0 when none runs)",
        oldest_workflow,
    );
    let counted = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    counted.set(now.duration_since(stats.counted_at).as_secs_f64().max(0.0));
    snapshot.register(
        "homeostat_jobs_counted_age_seconds",
        "How old the live job counts are: about 0 (this scrape's own count) while counting is cheap, up to the recount interval and a count's time when the backlog is too large to count at every scrape",
        counted,
    );
    let waiting = Gauge::<i64>::default();
    waiting.set(i64::try_from(state.waiting_claims()).unwrap_or(i64::MAX));
    snapshot.register(
        "homeostat_claims_waiting",
        "Claims of this replica waiting for work now (long polls)",
        waiting,
    );

    limit_metrics(&state, &mut snapshot).await?;
    health_metrics(&state, &mut snapshot).await?;

    let mut body = String::new();
    let written = encode_registry(&mut body, &state.registry)
        .and_then(|()| encode_registry(&mut body, &snapshot))
        .and_then(|()| encode_eof(&mut body));
    if written.is_err() {
        return Err(ApiError::internal(
            "encoding the metrics failed",
            "the OpenMetrics encoder failed",
        ));
    }
    if openmetrics {
        return Ok((
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response());
    }
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        prometheus_text(&body),
    )
        .into_response())
}

/// A gauge family of limits: name, help, and the value of one limit.
type LimitFamily = (
    &'static str,
    &'static str,
    fn(&homeostat_model::LimitUsage) -> u64,
);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

/// Each limit's jobs: running, holding a slot, waiting, waiting for the
/// rate alone, and its keys in use (a series per limit, never per key).
async fn limit_metrics(state: &ApiState, snapshot: &mut Registry) -> Result<(), ApiError> {
    let usage = state.store.limits_usage().await?;
    let families: [LimitFamily; 5] = [
        (
            "homeostat_limit_running",
            "Jobs running under each limit",
            |u| u.running,
        ),
        (
            "homeostat_limit_holding",
            "Jobs holding a slot of each limit (queued, running, or cancelled and stopping)",
            |u| u.holding,
        ),
        (
            "homeostat_limit_waiting",
            "Jobs waiting for each limit to admit them",
            |u| u.waiting,
        ),
        (
            "homeostat_limit_delayed_by_rate",
            "Jobs waiting only for each limit's rate (their key has a free slot)",
            |u| u.delayed_by_rate,
        ),
        (
            "homeostat_limit_active_keys",
            "Keys of each limit with jobs holding or waiting",
            |u| u.active_keys,
        ),
    ];
    for (name, help, value) in families {
        let family = Family::<LimitLabel, Gauge>::default();
        for u in &usage {
            family
                .get_or_create(&LimitLabel {
                    limit: u.limit.name.clone(),
                })
                .set(i64::try_from(value(u)).unwrap_or(i64::MAX));
        }
        snapshot.register(name, help, family);
    }
    Ok(())
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

/// Whether the controllers this replica runs are healthy by the
/// watchdog's rule (a series per controller it leads, or runs on every
/// replica), and what the latest walk of the audit chain found.
async fn health_metrics(state: &ApiState, snapshot: &mut Registry) -> Result<(), ApiError> {
    if let Some(manager) = &state.manager {
        let now = std::time::SystemTime::now();
        let healthy = Family::<ControllerLabel, Gauge>::default();
        for s in manager.status().iter().filter(|s| s.leader) {
            let ok = s
                .unhealthy(
                    now,
                    state.started_at,
                    crate::dashboard::controllers::FLAG_AFTER_INTERVALS,
                )
                .is_none();
            healthy
                .get_or_create(&ControllerLabel {
                    controller: s.name.clone(),
                })
                .set(i64::from(ok));
        }
        snapshot.register(
            "homeostat_controller_healthy",
            "1 while a controller this replica runs is healthy by the watchdog's rule (fewer than 3 failed runs in a row, a success within 3 intervals), else 0",
            healthy,
        );
    }
    let walks = state.store.audit_verifications(20).await?;
    let last = walks.iter().find(|w| {
        matches!(
            w.state,
            homeostat_model::operator::VerificationState::Intact
                | homeostat_model::operator::VerificationState::Broken
        )
    });
    let broken = Gauge::<i64>::default();
    broken.set(i64::from(last.is_some_and(|w| {
        w.state == homeostat_model::operator::VerificationState::Broken
    })));
    snapshot.register(
        "homeostat_audit_chain_broken",
        "1 when the latest walk of the audit log's hash chain to its end found a break, else 0",
        broken,
    );
    let walked = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    if let Some(at) = last.and_then(|w| w.finished_at) {
        walked.set(at.as_millisecond() as f64 / 1000.0);
    }
    snapshot.register(
        "homeostat_audit_chain_walked_timestamp_seconds",
        "When the latest walk of the audit chain to its end finished (Unix seconds; 0 before the first)",
        walked,
    );
    Ok(())
}

/// OpenMetrics text as the Prometheus text format: a counter's family is
/// named with its `_total` suffix, and there is no `# EOF` or `# UNIT`.
fn prometheus_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut out = String::with_capacity(openmetrics.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line == "# EOF" || line.starts_with("# UNIT ") {
            i += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            let counter = lines
                .get(i + 1)
                .is_some_and(|next| *next == format!("# TYPE {name} counter"));
            if counter {
                out.push_str(&format!("# HELP {name}_total{}\n", &rest[name.len()..]));
                out.push_str(&format!("# TYPE {name}_total counter\n"));
                i += 2;
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::prometheus_text;

    #[test]
    fn counters_are_named_with_their_suffix_in_the_prometheus_format() {
        let om = "# HELP jobs Jobs.\n# TYPE jobs counter\njobs_total{q=\"a\"} 3\n\
                  # HELP depth Depth.\n# TYPE depth gauge\n# UNIT depth seconds\ndepth 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total{q=\"a\"} 3\n\
             # HELP depth Depth.\n# TYPE depth gauge\ndepth 1\n"
        );
    }
}
