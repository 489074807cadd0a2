//! The API's own metrics, kept in the server's state: requests by route
//! and status with their durations, claims and their waits, wake-ups of
//! waiting claims. `/metrics` (metrics.rs) serves them with the rest.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteMethod {
    route: String,
    method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    outcome: &'static str,
}

/// The API's own metrics.
#[derive(Debug)]
pub(crate) struct HttpMetrics {
    requests: Family<RouteLabels, Counter>,
    durations: Family<RouteMethod, Histogram>,
    claims: Family<ClaimLabels, Counter>,
    wakeups: Family<ClaimLabels, Counter>,
    claim_wait: Histogram,
}

impl HttpMetrics {
    /// The API's own metrics, registered in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 4.0, 10))
            }),
            claims: Family::default(),
            wakeups: Family::default(),
            claim_wait: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
        };
        registry.register(
            "homeostat_http_requests",
            "HTTP requests by route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "homeostat_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method",
            m.durations.clone(),
        );
        registry.register(
            "homeostat_claims",
            "Agent claims, by outcome: jobs (answered with work) or empty (the wait ran out)",
            m.claims.clone(),
        );
        registry.register(
            "homeostat_claim_wakeups",
            "Waiting claims woken by queued jobs, by what their next look found: jobs, or empty (a wasted wake-up: another claim was faster); withdrawn: not looked again, every job that woke it went to another claim first",
            m.wakeups.clone(),
        );
        registry.register(
            "homeostat_claim_wait_seconds",
            "Time a claim waited before it was answered",
            m.claim_wait.clone(),
        );
        m
    }

    /// A request answered: counted and timed by route and method.
    pub(crate) fn answered(&self, route: String, method: String, status: u16, secs: f64) {
        self.requests
            .get_or_create(&RouteLabels {
                route: route.clone(),
                method: method.clone(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteMethod { route, method })
            .observe(secs);
    }

    /// A claim answered, with jobs or empty, after `waited`.
    pub(crate) fn claimed(&self, got_jobs: bool, waited: Duration) {
        let outcome = if got_jobs { "jobs" } else { "empty" };
        self.claims.get_or_create(&ClaimLabels { outcome }).inc();
        self.claim_wait.observe(waited.as_secs_f64());
    }

    /// A woken claim's look: the jobs it found, or `None` when it did not
    /// look (the jobs that woke it went to other claims first).
    pub(crate) fn woken(&self, looked: Option<&[homeostat_model::ClaimedJob]>) {
        let outcome = match looked {
            Some([]) => "empty",
            Some(_) => "jobs",
            None => "withdrawn",
        };
        self.wakeups.get_or_create(&ClaimLabels { outcome }).inc();
    }
}
