//! What every handler shares: the store, the controller manager, the
//! server's settings, its metrics and its shutdown signal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use homeostat_model::TenantId;
use homeostat_runtime::Manager;
use homeostat_store::Store;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::http_metrics::HttpMetrics;

/// The server's protocol settings and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// How often agents heartbeat (told in every heartbeat reply).
    #[serde(with = "homeostat_model::duration")]
    pub heartbeat_interval: Duration,
    /// How often the heartbeats this replica heard are written (in one
    /// statement); agent-health sees an agent up to this much late.
    #[serde(with = "homeostat_model::duration")]
    pub heartbeat_flush: Duration,
    /// How long a job's lease lasts after its claim or heartbeat.
    #[serde(with = "homeostat_model::duration")]
    pub lease_ttl: Duration,
    /// How long a claim waits for work when it does not say.
    #[serde(with = "homeostat_model::duration")]
    pub default_claim_wait: Duration,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest job result, in bytes of JSON.
    pub max_result_bytes: usize,
    /// Longest a request may take (above the longest claim wait).
    #[serde(with = "homeostat_model::duration")]
    pub request_timeout: Duration,
    /// A connection sends a request's headers within this of opening or of
    /// its last answer, or is closed (silent, trickling, idle keep-alive).
    /// At least twice `heartbeat_interval`: an agent's heartbeat connection
    /// idles one interval between beats, and closed then, every beat would
    /// open a new connection and some would race the close and fail.
    #[serde(with = "homeostat_model::duration")]
    pub header_read_timeout: Duration,
    /// Connections open at once (0: as many as the open-file limit allows);
    /// at the bound a new one takes the place of the oldest idle one.
    pub max_open_connections: usize,
    /// Claims one agent may hold open (waiting) at once; beyond, 429.
    pub max_claims_per_agent: u32,
    /// A dashboard session ends after this long without a request.
    #[serde(with = "homeostat_model::duration")]
    pub session_idle: Duration,
    /// A dashboard session ends this long after its sign-in.
    #[serde(with = "homeostat_model::duration")]
    pub session_max_age: Duration,
    /// The dashboard's cookies are `Secure` (sent over HTTPS only): set it
    /// when a TLS proxy serves the dashboard.
    pub secure_cookies: bool,
    /// How Alertmanager's alerts become jobs: the first route whose
    /// matchers all hold.
    pub alert_routes: Vec<AlertRoute>,
    /// Each tenant's quotas: defaults, and overrides by tenant id.
    pub quotas: Quotas,
    /// Queues with series of their own in `/metrics` (the most loaded);
    /// the rest are summed as the queue `_other`.
    pub metrics_max_queues: usize,
    /// `/metrics` needs an admin or viewer API key (else anyone who reaches
    /// the port reads it).
    pub metrics_need_key: bool,
    /// Serve the probes (`/healthz`, `/readyz`) and `/metrics` on this
    /// address too, and `/metrics` only there: a loopback or internal port
    /// for the kubelet and Prometheus.
    pub probes_listen: Option<String>,
}

/// Quotas every tenant has (0: no limit), and overrides by tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Live jobs at once: scheduled, awaiting approval, pending on their
    /// workflow needs, waiting for their limits, queued or running.
    pub live_jobs: u64,
    /// Queues with live jobs at once.
    pub live_queues: u64,
    /// Jobs enqueued a second, on each replica…
    pub enqueue_rate: u64,
    /// …with bursts up to this many.
    pub enqueue_burst: u64,
    /// Per tenant: any of the above, in place of the default.
    pub tenants: BTreeMap<TenantId, QuotaOverride>,
}

/// A tenant's own quotas, where they differ from the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaOverride {
    /// Live jobs at once.
    pub live_jobs: Option<u64>,
    /// Queues with live jobs at once.
    pub live_queues: Option<u64>,
    /// Jobs enqueued a second, on each replica.
    pub enqueue_rate: Option<u64>,
    /// Bursts up to this many.
    pub enqueue_burst: Option<u64>,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            live_jobs: 1_000_000,
            live_queues: 1_000,
            enqueue_rate: 1_000,
            enqueue_burst: 20_000,
            tenants: BTreeMap::new(),
        }
    }
}

impl Quotas {
    /// The limits of `tenant`.
    pub fn of(&self, tenant: TenantId) -> homeostat_model::operator::QuotaLimits {
        let own = self.tenants.get(&tenant).copied().unwrap_or_default();
        homeostat_model::operator::QuotaLimits {
            live_jobs: own.live_jobs.unwrap_or(self.live_jobs),
            live_queues: own.live_queues.unwrap_or(self.live_queues),
            enqueue_rate: own.enqueue_rate.unwrap_or(self.enqueue_rate),
            enqueue_burst: own.enqueue_burst.unwrap_or(self.enqueue_burst),
        }
    }
}

/// Alerts whose labels match become jobs of this queue and kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRoute {
    /// Labels the alert must carry with these values (none: every alert).
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    /// The job's queue.
    pub queue: String,
    /// The job's kind.
    pub kind: String,
    /// The jobs' tenant when an admin key posts (a tenant key posts for its
    /// own tenant).
    #[serde(default)]
    pub tenant_id: Option<TenantId>,
    /// The jobs' priority.
    #[serde(default)]
    pub priority: i32,
}

impl AlertRoute {
    /// Whether an alert with these labels takes this route.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_flush: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(60),
            default_claim_wait: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            max_result_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(30),
            max_open_connections: 0,
            max_claims_per_agent: 4,
            session_idle: Duration::from_secs(30 * 60),
            session_max_age: Duration::from_secs(12 * 3600),
            secure_cookies: false,
            alert_routes: vec![AlertRoute {
                matchers: BTreeMap::new(),
                queue: "alerts".into(),
                kind: "alert".into(),
                tenant_id: None,
                priority: 0,
            }],
            quotas: Quotas::default(),
            metrics_max_queues: 100,
            metrics_need_key: false,
            probes_listen: None,
        }
    }
}

/// Shared by every handler; cheap to clone: one pointer, since a request's
/// future holds its copies (two, in a handler's) for the request's whole
/// life, a long poll's for its whole wait.
#[derive(Debug, Clone)]
pub struct ApiState(Arc<Shared>);

/// What [`ApiState`] points to (nothing in it is public).
#[derive(Debug)]
pub struct Shared {
    pub(crate) store: Store,
    pub(crate) settings: Arc<ApiSettings>,
    pub(crate) manager: Option<Manager>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) http: Arc<HttpMetrics>,
    pub(crate) registry: Arc<prometheus_client::registry::Registry>,
    /// Agents heard, written about once a second.
    pub(crate) presence: crate::presence::Presence,
    /// The claims each agent holds open here.
    pub(crate) claims: crate::claim_slots::ClaimSlots,
    /// Each tenant's use of its quotas, as this replica knows it.
    pub(crate) quotas: Arc<crate::quotas::QuotaGate>,
    /// When this server started: the dashboard's baseline for a controller
    /// that never succeeded.
    pub(crate) started_at: std::time::SystemTime,
    /// Readiness, checked every second in the background.
    pub(crate) readiness: crate::readiness::Readiness,
}

impl std::ops::Deref for ApiState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl ApiState {
    /// A state over `store`. `registry` holds the metrics others (the
    /// controller manager) registered; `/metrics` serves them with the
    /// API's own.
    pub fn new(
        store: Store,
        settings: ApiSettings,
        manager: Option<Manager>,
        mut registry: prometheus_client::registry::Registry,
    ) -> Self {
        let http = Arc::new(HttpMetrics::register(&mut registry));
        store.register_metrics(&mut registry);
        let presence = crate::presence::Presence::start(store.clone(), settings.heartbeat_flush);
        let shutdown = CancellationToken::new();
        let replica = match &manager {
            Some(m) => m.holder().to_owned(),
            None => format!("api-{}", homeostat_model::new_id()),
        };
        let readiness = crate::readiness::Readiness::start(
            store.clone(),
            replica,
            manager.is_some(),
            shutdown.clone(),
        );
        Self(Arc::new(Shared {
            readiness,
            presence,
            claims: crate::claim_slots::ClaimSlots::default(),
            quotas: Arc::default(),
            store,
            settings: Arc::new(settings),
            manager,
            shutdown,
            http,
            registry: Arc::new(registry),
            started_at: std::time::SystemTime::now(),
        }))
    }

    /// Returns once readiness has been checked (so that the first probe
    /// gets an answer of substance): call it before serving.
    pub async fn readiness_checked(&self) {
        self.readiness.first_checked().await;
    }

    /// Cancelled when the server stops: waiting claims answer at once
    /// (empty) and readiness fails.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Writes every agent heartbeat heard so far, now (they are otherwise
    /// written every `heartbeat_flush`).
    pub async fn checkpoint_heartbeats(&self) -> Result<usize, homeostat_runtime::BoxError> {
        self.presence.checkpoint().await
    }

    /// Stops writing heartbeats periodically and writes what is left: call
    /// it once the server has stopped answering, before closing the store.
    pub async fn close(&self) {
        if let Err(e) = self.presence.close().await {
            tracing::warn!(error = %e, "the last heartbeats could not be written");
        }
    }

    /// How many claims wait for work now.
    pub fn waiting_claims(&self) -> usize {
        self.store.waiting_claims()
    }

    /// The controller manager, if one runs in this server.
    pub fn manager(&self) -> Option<&Manager> {
        self.manager.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}
