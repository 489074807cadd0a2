//! `Client`: one typed call per endpoint of the API, over reqwest with
//! rustls. Calls that are safe to repeat are retried with jittered backoff
//! when the server is unreachable or says it is unavailable; a call whose
//! repetition could do twice what it did once is retried only when the
//! server answered that it did nothing (503).

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use homeostat_model::operator::{
    AuditVerification, BatchEnqueueRequest, BatchEnqueueResponse, ControllerPlan, ControllerView,
    CreatedSecret, EnqueueResponse, JobDetail, NewApiKeyRequest, NewBootstrapTokenRequest,
    NewTenantRequest,
};
use homeostat_model::wire::{
    ClaimRequest, ClaimResponse, CompleteBatchRequest, CompleteRequest, ErrorBody, FailRequest,
    HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse, ReleaseReason,
    ReleaseRequest,
};
use homeostat_model::{
    Agent, AgentId, AuditPage, CompletedBatch, Completion, FailOutcome, Job, JobId, Limit,
    LimitSpec, LimitUsage, NewJob, NewWorkflow, Notification, NotificationId, Page, Tenant,
    TenantId, TokenId, TokenInfo, VerificationId, Workflow, WorkflowId, WorkflowSummary,
};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ClientError;

/// How a call may be repeated after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Doing it twice is doing it once (reads, heartbeats, completions and
    /// failures with their lease token, enqueues with an idempotency key).
    Safe,
    /// Only when the server said it did nothing (503 unavailable).
    IfNothingHappened,
}

/// Filters of [`Client::list_jobs`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobQuery {
    /// Only jobs in this state (`queued`, `running`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only this queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only this kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only this tenant's (admin and viewer keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    /// Only jobs this agent holds or held last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    /// The previous page's `next_cursor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<JobId>,
    /// Page size (1 to 500; default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A client of a homeostat control plane (one server, or replicas it fails
/// over between), with one credential; cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The servers: replicas of one control plane, tried in turn.
    bases: Arc<[Arc<str>]>,
    /// The one in use (clones share it).
    current: Arc<std::sync::atomic::AtomicUsize>,
    token: Option<Arc<str>>,
    retries: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client")
            .field("servers", &self.bases)
            .field("authenticated", &self.token.is_some())
            .finish()
    }
}

/// Configures a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    others: Vec<String>,
    token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    user_agent: String,
    retries: usize,
}

impl ClientBuilder {
    /// Other replicas of the same control plane: when the server in use
    /// cannot be reached or answers 502, 503 or 504, calls go to the next.
    pub fn failover(mut self, servers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.others.extend(servers.into_iter().map(Into::into));
        self
    }

    /// The bearer credential: an API key, or an agent's credential.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Longest a call may take (long-poll claims get their wait on top).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Longest connecting may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `User-Agent` header.
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = agent.into();
        self
    }

    /// How many times a failed call that may be repeated is tried again
    /// (default 4; 0 never).
    pub fn retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, ClientError> {
        // reqwest's rustls needs a crypto provider; install ring's once
        // (a no-op when the process already has one).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut bases: Vec<Arc<str>> = Vec::new();
        for base in std::iter::once(&self.base).chain(&self.others) {
            let base = base.trim_end_matches('/').to_owned();
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(ClientError::Config(format!(
                    "the server URL must start with http:// or https://, got {base:?}"
                )));
            }
            bases.push(base.into());
        }
        let mut http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent);
        if bases.iter().all(|b| b.starts_with("http://")) {
            // No TLS to verify: the platform's certificate store, which a
            // minimal container or a health check's chroot may not have,
            // is not asked for.
            http = http.tls_certs_only(std::iter::empty());
        }
        let http = http
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Client {
            http,
            bases: bases.into(),
            current: Arc::default(),
            token: self.token.map(Into::into),
            retries: self.retries,
        })
    }
}

impl Client {
    /// A builder for a client of the server at `base` (`http://host:8080`).
    pub fn builder(base: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base.into(),
            others: Vec::new(),
            token: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            user_agent: concat!("homeostat-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            retries: 4,
        }
    }

    /// The same client with another credential (an agent's, after it
    /// registered).
    pub fn with_token(&self, token: impl Into<String>) -> Client {
        Client {
            token: Some(token.into().into()),
            ..self.clone()
        }
    }

    /// The base URL of the server in use.
    pub fn base_url(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    /// Moves to the next server after `failed` (the index a call used), if
    /// no other call moved already.
    fn fail_over(&self, failed: usize) {
        if self.bases.len() > 1 {
            let next = (failed + 1) % self.bases.len();
            let moved = self.current.compare_exchange(
                failed,
                next,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
            if moved.is_ok() {
                tracing::warn!(from = %self.bases[failed], to = %self.bases[next], "failing over to another server");
            }
        }
    }

    async fn once<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        extra: &[(&'static str, String)],
        wait: Option<Duration>,
    ) -> Result<T, ClientError> {
        let used = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len();
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.bases[used]));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        for (name, value) in extra {
            req = req.header(*name, value);
        }
        // A call made inside an exported span continues its trace on the
        // server (an outcome, the agent's work; an enqueue, the caller's).
        if let Some(tp) = homeostat_model::trace::current() {
            req = req.header("traceparent", tp);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(wait) = wait {
            // A long poll: the server holds the request up to `wait`.
            req = req.timeout(wait + Duration::from_secs(15));
        }
        let res = req.send().await.map_err(|source| {
            self.fail_over(used);
            ClientError::Transport { operation, source }
        })?;
        let status = res.status();
        if matches!(status.as_u16(), 502..=504) {
            self.fail_over(used);
        }
        let bytes = res
            .bytes()
            .await
            .map_err(|source| ClientError::Transport { operation, source })?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => (e.code, e.message),
                Err(_) => (
                    homeostat_model::ErrorCode::Unknown,
                    String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                ),
            };
            return Err(ClientError::Api {
                operation,
                status: status.as_u16(),
                code,
                message,
            });
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            operation,
            detail: e.to_string(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn call<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
        extra: Vec<(&'static str, String)>,
        repeat: Repeat,
        wait: Option<Duration>,
    ) -> Result<T, ClientError> {
        let attempt = || self.once(operation, &method, path, body.as_ref(), &extra, wait);
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(self.retries)
                    .with_jitter(),
            )
            .when(move |e: &ClientError| match repeat {
                Repeat::Safe => e.is_transient(),
                // Refused or unresolved: the request never left.
                Repeat::IfNothingHappened => e.status() == Some(503) || e.never_sent(),
            })
            .notify(|e, after| {
                tracing::debug!(operation, error = %e, ?after, "retrying");
            })
            .await
    }

    /// Whether the server is ready (`GET /readyz`, once, no retry): its
    /// checks when it is; a server that is not answers 503 with the
    /// failing check (a [`ClientError::Api`]).
    pub async fn ready(&self) -> Result<Value, ClientError> {
        self.once(
            "checking readiness",
            &Method::GET,
            "/readyz",
            None,
            &[],
            None,
        )
        .await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
    ) -> Result<T, ClientError> {
        self.call(
            operation,
            Method::GET,
            path,
            None,
            vec![],
            Repeat::Safe,
            None,
        )
        .await
    }

    /// The items of a whole list (`{items, next_cursor}` with no page after).
    async fn list<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
    ) -> Result<Vec<T>, ClientError> {
        let page: Page<T, Value> = self.get(operation, path).await?;
        Ok(page.items)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        body: impl Serialize,
        repeat: Repeat,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_value(body).map_err(|e| ClientError::Decode {
            operation,
            detail: e.to_string(),
        })?;
        self.call(
            operation,
            Method::POST,
            path,
            Some(body),
            vec![],
            repeat,
            None,
        )
        .await
    }

    // --- the agent protocol ----------------------------------------------

    /// Registers an agent with a bootstrap token; the credential in the
    /// answer is shown this once.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.post(
            "registering",
            "/v1/agent/register",
            req,
            Repeat::IfNothingHappened,
        )
        .await
    }

    /// Proves the agent alive and extends the leases of the jobs it names.
    pub async fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.post("heartbeating", "/v1/agent/heartbeat", req, Repeat::Safe)
            .await
    }

    /// Claims jobs, waiting up to `req.wait_secs` for one (a long poll).
    pub async fn claim(&self, req: &ClaimRequest) -> Result<ClaimResponse, ClientError> {
        let body = serde_json::to_value(req).map_err(|e| ClientError::Decode {
            operation: "claiming",
            detail: e.to_string(),
        })?;
        let wait = Duration::from_secs(u64::from(req.wait_secs.unwrap_or(30)));
        // A claim whose answer was lost leased its jobs to nobody who knows:
        // they come back when their leases expire. Repeat it only when the
        // server says it did nothing.
        self.call(
            "claiming",
            Method::POST,
            "/v1/agent/claim",
            Some(body),
            vec![],
            Repeat::IfNothingHappened,
            Some(wait),
        )
        .await
    }

    /// Completes a job (safe to resend: the server answers the first
    /// completion again).
    pub async fn complete(
        &self,
        job: JobId,
        lease_token: i64,
        result: Option<Value>,
    ) -> Result<Job, ClientError> {
        let path = format!("/v1/agent/jobs/{job}/complete");
        let req = CompleteRequest {
            lease_token,
            result,
        };
        self.post("completing a job", &path, req, Repeat::Safe)
            .await
    }

    /// Completes many jobs in one call.
    pub async fn complete_batch(
        &self,
        completions: Vec<Completion>,
    ) -> Result<CompletedBatch, ClientError> {
        let req = CompleteBatchRequest { completions };
        self.post(
            "completing jobs",
            "/v1/agent/jobs/complete",
            req,
            Repeat::Safe,
        )
        .await
    }

    /// Reports a failed attempt.
    pub async fn fail(
        &self,
        job: JobId,
        lease_token: i64,
        error: impl Into<String>,
        retryable: bool,
    ) -> Result<FailOutcome, ClientError> {
        let path = format!("/v1/agent/jobs/{job}/fail");
        let req = FailRequest {
            lease_token,
            error: error.into(),
            retryable,
        };
        self.post("failing a job", &path, req, Repeat::Safe).await
    }

    /// Gives a job back unfinished: the agent is shutting down.
    pub async fn release(&self, job: JobId, lease_token: i64) -> Result<Job, ClientError> {
        let path = format!("/v1/agent/jobs/{job}/release");
        let req = ReleaseRequest {
            lease_token,
            reason: ReleaseReason::Shutdown,
        };
        self.post("releasing a job", &path, req, Repeat::Safe).await
    }

    // --- jobs ------------------------------------------------------------

    /// Enqueues a job (for `tenant` with an admin key). The call carries an
    /// idempotency key, so a retry after a lost answer does not enqueue
    /// twice.
    pub async fn enqueue(
        &self,
        tenant: Option<TenantId>,
        job: &NewJob,
    ) -> Result<EnqueueResponse, ClientError> {
        let key = uuid::Uuid::now_v7().to_string();
        self.enqueue_once(tenant, job, &key).await
    }

    /// Enqueues one job under the caller's idempotency key: the same key
    /// within 24 h answers the first enqueue again instead of another job.
    pub async fn enqueue_once(
        &self,
        tenant: Option<TenantId>,
        job: &NewJob,
        idempotency_key: &str,
    ) -> Result<EnqueueResponse, ClientError> {
        let mut body = serde_json::to_value(job).map_err(|e| ClientError::Decode {
            operation: "enqueueing",
            detail: e.to_string(),
        })?;
        if let (Some(t), Some(map)) = (tenant, body.as_object_mut()) {
            map.insert("tenant_id".into(), Value::String(t.to_string()));
        }
        self.call(
            "enqueueing",
            Method::POST,
            "/v1/jobs",
            Some(body),
            vec![("idempotency-key", idempotency_key.to_owned())],
            Repeat::Safe,
            None,
        )
        .await
    }

    /// Enqueues jobs all or none, with an idempotency key.
    pub async fn enqueue_batch(
        &self,
        req: &BatchEnqueueRequest,
    ) -> Result<BatchEnqueueResponse, ClientError> {
        let body = serde_json::to_value(req).map_err(|e| ClientError::Decode {
            operation: "enqueueing",
            detail: e.to_string(),
        })?;
        self.call(
            "enqueueing",
            Method::POST,
            "/v1/jobs",
            Some(body),
            vec![("idempotency-key", uuid::Uuid::now_v7().to_string())],
            Repeat::Safe,
            None,
        )
        .await
    }

    /// A page of jobs, newest first.
    pub async fn list_jobs(&self, query: &JobQuery) -> Result<Page<Job>, ClientError> {
        let query = serde_json::to_value(query)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join("&");
        let path = if query.is_empty() {
            "/v1/jobs".to_owned()
        } else {
            format!("/v1/jobs?{query}")
        };
        self.get("listing jobs", &path).await
    }

    /// A job, its failed attempts and its audit history.
    pub async fn job(&self, id: JobId) -> Result<JobDetail, ClientError> {
        self.get("reading a job", &format!("/v1/jobs/{id}")).await
    }

    /// Cancels a live job.
    pub async fn cancel(&self, id: JobId) -> Result<Job, ClientError> {
        let path = format!("/v1/jobs/{id}/cancel");
        self.post(
            "cancelling a job",
            &path,
            Value::Null,
            Repeat::IfNothingHappened,
        )
        .await
    }

    /// Queues a dead or expired job again with fresh attempts.
    pub async fn retry(&self, id: JobId) -> Result<Job, ClientError> {
        let path = format!("/v1/jobs/{id}/retry");
        self.post(
            "retrying a job",
            &path,
            Value::Null,
            Repeat::IfNothingHappened,
        )
        .await
    }

    /// Approves a job awaiting approval.
    pub async fn approve(&self, id: JobId) -> Result<Job, ClientError> {
        let path = format!("/v1/jobs/{id}/approve");
        self.post(
            "approving a job",
            &path,
            Value::Null,
            Repeat::IfNothingHappened,
        )
        .await
    }

    // --- operators -------------------------------------------------------

    /// Every agent the key sees, page by page (see [`Client::agents_page`]).
    pub async fn agents(&self) -> Result<Vec<Agent>, ClientError> {
        self.agents_in(None).await
    }

    /// Every agent the key sees in `status` (all, for `None`), page by page.
    pub async fn agents_in(
        &self,
        status: Option<homeostat_model::AgentStatus>,
    ) -> Result<Vec<Agent>, ClientError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.agents_page(status, after, 1000).await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// A page of the agents the key sees, by name: those in `status` only,
    /// if given; pass the previous page's `next_cursor` as `after`.
    pub async fn agents_page(
        &self,
        status: Option<homeostat_model::AgentStatus>,
        after: Option<AgentId>,
        limit: u32,
    ) -> Result<Page<Agent, AgentId>, ClientError> {
        let mut path = format!("/v1/agents?limit={limit}");
        if let Some(s) = status {
            path.push_str(&format!("&status={}", s.as_str()));
        }
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        self.get("listing agents", &path).await
    }

    /// One agent.
    pub async fn agent(&self, id: AgentId) -> Result<Agent, ClientError> {
        self.get("reading an agent", &format!("/v1/agents/{id}"))
            .await
    }

    /// Drains an agent: it finishes its jobs and claims no more.
    pub async fn drain(&self, id: AgentId) -> Result<Agent, ClientError> {
        let path = format!("/v1/agents/{id}/drain");
        self.post("draining an agent", &path, Value::Null, Repeat::Safe)
            .await
    }

    /// Undoes a drain: the agent claims again.
    pub async fn resume(&self, id: AgentId) -> Result<Agent, ClientError> {
        let path = format!("/v1/agents/{id}/resume");
        self.post("resuming an agent", &path, Value::Null, Repeat::Safe)
            .await
    }

    /// Removes an offline agent: deleted, its credentials revoked.
    pub async fn remove_agent(&self, id: AgentId) -> Result<Agent, ClientError> {
        let path = format!("/v1/agents/{id}");
        self.call(
            "removing an agent",
            Method::DELETE,
            &path,
            None,
            vec![],
            Repeat::IfNothingHappened,
            None,
        )
        .await
    }

    /// An agent's credentials: metadata, never a secret; revoked ones too.
    pub async fn agent_credentials(&self, id: AgentId) -> Result<Vec<TokenInfo>, ClientError> {
        let path = format!("/v1/agents/{id}/credentials");
        self.list("listing an agent's credentials", &path).await
    }

    /// Revokes an agent's credentials: its next request is refused, it is
    /// offline, and its running jobs are reclaimed at once.
    pub async fn revoke_agent(
        &self,
        id: AgentId,
    ) -> Result<homeostat_model::operator::RevokedAgent, ClientError> {
        let path = format!("/v1/agents/{id}/revoke");
        self.post("revoking an agent", &path, Value::Null, Repeat::Safe)
            .await
    }

    /// Creates a tenant.
    pub async fn create_tenant(&self, req: &NewTenantRequest) -> Result<Tenant, ClientError> {
        self.post(
            "creating a tenant",
            "/v1/tenants",
            req,
            Repeat::IfNothingHappened,
        )
        .await
    }

    /// Tenants the key sees.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, ClientError> {
        self.list("listing tenants", "/v1/tenants").await
    }

    /// A tenant's live jobs and queues, and its quotas.
    pub async fn tenant_usage(
        &self,
        id: TenantId,
    ) -> Result<homeostat_model::operator::TenantUsage, ClientError> {
        let path = format!("/v1/tenants/{id}/usage");
        self.get("reading a tenant's usage", &path).await
    }

    /// Creates a bootstrap token (its secret is in the answer, once).
    pub async fn create_bootstrap_token(
        &self,
        req: &NewBootstrapTokenRequest,
    ) -> Result<CreatedSecret, ClientError> {
        self.post(
            "creating a bootstrap token",
            "/v1/bootstrap-tokens",
            req,
            Repeat::IfNothingHappened,
        )
        .await
    }

    /// Bootstrap tokens (metadata).
    pub async fn bootstrap_tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.list("listing bootstrap tokens", "/v1/bootstrap-tokens")
            .await
    }

    /// Creates an API key (its secret is in the answer, once).
    pub async fn create_api_key(
        &self,
        req: &NewApiKeyRequest,
    ) -> Result<CreatedSecret, ClientError> {
        self.post(
            "creating an API key",
            "/v1/api-keys",
            req,
            Repeat::IfNothingHappened,
        )
        .await
    }

    /// API keys (metadata).
    pub async fn api_keys(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.list("listing API keys", "/v1/api-keys").await
    }

    /// Revokes a token or key.
    pub async fn revoke(&self, id: TokenId) -> Result<(), ClientError> {
        let path = format!("/v1/tokens/{id}/revoke");
        self.post("revoking a token", &path, Value::Null, Repeat::Safe)
            .await
    }

    /// A page of audit events after `after`, oldest first.
    pub async fn audit(&self, after: i64, limit: u32) -> Result<AuditPage, ClientError> {
        self.get(
            "reading the audit log",
            &format!("/v1/audit?after={after}&limit={limit}"),
        )
        .await
    }

    /// Asks for the audit chain to be walked (by the server's
    /// audit-chain-verify leader): the verification, pending, or the one
    /// already open, which the request joins.
    pub async fn request_audit_verification(&self) -> Result<AuditVerification, ClientError> {
        self.post(
            "asking for an audit verification",
            "/v1/audit/verify",
            Value::Null,
            Repeat::Safe,
        )
        .await
    }

    /// One verification of the audit chain: its state, progress and outcome.
    pub async fn audit_verification(
        &self,
        id: VerificationId,
    ) -> Result<AuditVerification, ClientError> {
        self.get(
            "reading an audit verification",
            &format!("/v1/audit/verifications/{id}"),
        )
        .await
    }

    /// The latest verifications of the audit chain, newest first.
    pub async fn audit_verifications(&self) -> Result<Vec<AuditVerification>, ClientError> {
        let page: Page<AuditVerification, VerificationId> = self
            .get("listing audit verifications", "/v1/audit/verifications")
            .await?;
        Ok(page.items)
    }

    /// Asks for the audit chain to be walked and waits until the walk is
    /// over, calling `progress` with the verification at each look (every
    /// `every`); the finished verification (intact, broken or failed).
    pub async fn verify_audit(
        &self,
        every: Duration,
        mut progress: impl FnMut(&AuditVerification),
    ) -> Result<AuditVerification, ClientError> {
        let mut v = self.request_audit_verification().await?;
        loop {
            progress(&v);
            if v.state.is_finished() {
                return Ok(v);
            }
            tokio::time::sleep(every).await;
            v = self.audit_verification(v.id).await?;
        }
    }

    /// Every dead notification, newest first, page by page.
    pub async fn dead_notifications(&self) -> Result<Vec<Notification>, ClientError> {
        let mut all = Vec::new();
        let mut path = "/v1/notifications?state=dead&limit=1000".to_owned();
        loop {
            let page: Page<Notification, NotificationId> =
                self.get("listing notifications", &path).await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(next) => {
                    path = format!("/v1/notifications?state=dead&limit=1000&after={next}")
                }
                None => return Ok(all),
            }
        }
    }

    /// Sends a dead notification again.
    pub async fn redrive_notification(
        &self,
        id: NotificationId,
    ) -> Result<Notification, ClientError> {
        let path = format!("/v1/notifications/{id}/redrive");
        self.post(
            "redriving a notification",
            &path,
            Value::Null,
            Repeat::IfNothingHappened,
        )
        .await
    }

    /// Delivers an Alertmanager webhook body, as Alertmanager would.
    pub async fn alertmanager(
        &self,
        hook: &homeostat_model::alertmanager::AlertmanagerWebhook,
    ) -> Result<homeostat_model::operator::SignalOutcome, ClientError> {
        // Re-sending a firing alert only counts an occurrence; a resolved one
        // cancels nothing twice.
        self.post(
            "delivering alerts",
            "/v1/signals/alertmanager",
            hook,
            Repeat::Safe,
        )
        .await
    }

    /// Submits a workflow: every step at once (`tenant` from an admin key;
    /// a tenant key submits for its own). Not repeated unless the server
    /// said it did nothing: a second submit is a second workflow.
    pub async fn submit_workflow(
        &self,
        tenant: Option<TenantId>,
        workflow: &NewWorkflow,
    ) -> Result<Workflow, ClientError> {
        let operation = "submitting a workflow";
        let mut body = serde_json::to_value(workflow).map_err(|e| ClientError::Decode {
            operation,
            detail: e.to_string(),
        })?;
        if let (Some(t), Some(map)) = (tenant, body.as_object_mut()) {
            map.insert("tenant_id".into(), Value::String(t.to_string()));
        }
        self.post(operation, "/v1/workflows", body, Repeat::IfNothingHappened)
            .await
    }

    /// The newest workflows (up to `limit`), with their states.
    pub async fn workflows(&self, limit: u32) -> Result<Vec<WorkflowSummary>, ClientError> {
        let page: Page<WorkflowSummary, WorkflowId> = self
            .get("listing workflows", &format!("/v1/workflows?limit={limit}"))
            .await?;
        Ok(page.items)
    }

    /// One workflow with each step's state.
    pub async fn workflow(&self, id: WorkflowId) -> Result<Workflow, ClientError> {
        self.get("reading a workflow", &format!("/v1/workflows/{id}"))
            .await
    }

    /// Cancels a workflow (again: nothing changes).
    pub async fn cancel_workflow(&self, id: WorkflowId) -> Result<Workflow, ClientError> {
        self.post(
            "cancelling a workflow",
            &format!("/v1/workflows/{id}/cancel"),
            Value::Null,
            Repeat::Safe,
        )
        .await
    }

    /// Retries a finished workflow's steps that did not finish well.
    pub async fn retry_workflow(&self, id: WorkflowId) -> Result<Workflow, ClientError> {
        self.post(
            "retrying a workflow",
            &format!("/v1/workflows/{id}/retry"),
            Value::Null,
            Repeat::IfNothingHappened,
        )
        .await
    }

    /// Every limit, with what holds and waits under it.
    pub async fn limits(&self) -> Result<Vec<LimitUsage>, ClientError> {
        self.list("listing limits", "/v1/limits").await
    }

    /// One limit, with what holds and waits under it and its busiest keys.
    pub async fn limit(&self, name: &str) -> Result<LimitUsage, ClientError> {
        self.get("reading a limit", &format!("/v1/limits/{name}"))
            .await
    }

    /// Creates or changes a limit (a repeat sets the same values).
    pub async fn set_limit(&self, name: &str, spec: &LimitSpec) -> Result<Limit, ClientError> {
        let operation = "setting a limit";
        let body = serde_json::to_value(spec).map_err(|e| ClientError::Decode {
            operation,
            detail: e.to_string(),
        })?;
        self.call(
            operation,
            Method::PUT,
            &format!("/v1/limits/{name}"),
            Some(body),
            vec![],
            Repeat::Safe,
            None,
        )
        .await
    }

    /// Deletes a limit: jobs waiting on it alone are queued.
    pub async fn delete_limit(&self, name: &str) -> Result<(), ClientError> {
        self.call(
            "deleting a limit",
            Method::DELETE,
            &format!("/v1/limits/{name}"),
            None,
            vec![],
            Repeat::IfNothingHappened,
            None,
        )
        .await
    }

    /// Every controller's status: last run, next run, leader.
    pub async fn controllers(&self) -> Result<Vec<ControllerView>, ClientError> {
        self.list("listing controllers", "/v1/controllers").await
    }

    /// Asks for a controller's run now.
    pub async fn trigger(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/controllers/{name}/trigger");
        self.post("triggering a controller", &path, Value::Null, Repeat::Safe)
            .await
    }

    /// What a controller's run would change now.
    pub async fn plan(&self, name: &str) -> Result<ControllerPlan, ClientError> {
        self.get(
            "planning a controller",
            &format!("/v1/controllers/{name}/plan"),
        )
        .await
    }
}
