//! The API through its router (no socket), on both backends: every route's
//! success and its error codes, roles and tenant isolation, the agent
//! protocol with long-poll claims.

mod agent;
mod dashboard;
mod errors;
mod fleet;
mod jobs;
mod limits;
mod openapi;
mod operators;
mod quotas;
mod signals;
mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use homeostat_api::{ApiSettings, ApiState, router};
use homeostat_model::{ApiScope, PlanTier, TenantId};
use homeostat_runtime::Manager;
use homeostat_store::{NewBootstrapToken, Store};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// A router over a store, with an admin key.
pub(crate) struct Api {
    pub(crate) store: Store,
    pub(crate) state: ApiState,
    pub(crate) app: Router,
    pub(crate) admin: String,
    /// The dashboard session signed in with each key (see `session_of`).
    pub(crate) sessions: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// An answer: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: Value,
    pub(crate) text: String,
}

impl Answer {
    /// The error code of an error answer.
    pub(crate) fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("<no code>")
    }

    /// Asserts a refusal for passing the tenant's quota `quota`
    /// (`live_jobs`, `live_queues`): 429 `quota_exceeded`, naming it.
    pub(crate) fn refused_by_quota(&self, quota: &str) {
        assert_eq!(self.status, StatusCode::TOO_MANY_REQUESTS, "{}", self.text);
        assert_eq!(self.code(), "quota_exceeded");
        assert!(
            self.text.contains(&format!("quotas.{quota}")),
            "{}",
            self.text
        );
    }
}

/// Settings where a tenant may have `n` live jobs.
pub(crate) fn live_jobs_quota(n: u64) -> ApiSettings {
    ApiSettings {
        quotas: homeostat_api::Quotas {
            live_jobs: n,
            ..homeostat_api::Quotas::default()
        },
        ..ApiSettings::default()
    }
}

impl Api {
    pub(crate) async fn new(store: &Store) -> Self {
        Self::with_settings(store, ApiSettings::default()).await
    }

    pub(crate) async fn with_settings(store: &Store, settings: ApiSettings) -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let manager = Manager::builder()
            .lease_store(Arc::new(store.clone()))
            .metrics(&mut registry);
        let mut manager = manager;
        // The dispatcher would race the tests that look at notifications.
        let mut controllers = homeostat_controllers::ControllersConfig::default();
        controllers.notification_dispatch.enabled = false;
        homeostat_controllers::register_builtin(
            &mut manager,
            store,
            &controllers,
            homeostat_controllers::Notifier::Log,
        )
        .unwrap();
        let manager = manager.start().unwrap();
        let state = ApiState::new(store.clone(), settings, Some(manager), registry);
        state.readiness_checked().await;
        let admin = store
            .issue_api_key(ApiScope::Admin, None, "operator:test")
            .await
            .unwrap()
            .secret;
        Self {
            store: store.clone(),
            app: router(state.clone()),
            state,
            admin,
            sessions: Default::default(),
        }
    }

    pub(crate) async fn send(&self, req: Request<Body>) -> Answer {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.unwrap()).await
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// A tenant and a tenant key for it.
    pub(crate) async fn tenant(&self, name: &str) -> (TenantId, String) {
        let t = self
            .store
            .create_tenant(name, PlanTier::Standard, "operator:test")
            .await
            .unwrap();
        let key = self
            .store
            .issue_api_key(ApiScope::Tenant(t.id), None, "operator:test")
            .await
            .unwrap()
            .secret;
        (t.id, key)
    }

    /// An agent registered through the API: its id and credential.
    pub(crate) async fn agent(
        &self,
        tenant: Option<TenantId>,
        queues: &[&str],
    ) -> (String, String) {
        let token = self
            .store
            .issue_bootstrap_token(
                &NewBootstrapToken {
                    tenant_id: tenant,
                    ttl: std::time::Duration::from_secs(3600),
                    uses: 1,
                },
                "operator:test",
            )
            .await
            .unwrap()
            .secret;
        let a = self
            .call(
                Method::POST,
                "/v1/agent/register",
                None,
                Some(json!({"bootstrap_token": token, "agent": {"name": "a1", "queues": queues}})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        (
            a.body["agent_id"].as_str().unwrap().to_owned(),
            a.body["credential"].as_str().unwrap().to_owned(),
        )
    }

    /// Enqueues one job with a tenant key; returns its id.
    pub(crate) async fn enqueue(&self, key: &str, job: Value) -> String {
        let a = self.post("/v1/jobs", key, job).await;
        assert!(a.status.is_success(), "{}", a.text);
        a.body["id"].as_str().unwrap().to_owned()
    }

    /// A claim of one job waiting up to `wait_secs`, on a task of its own:
    /// how long it took, and its answer.
    pub(crate) fn long_poll(
        &self,
        cred: &str,
        wait_secs: u32,
    ) -> tokio::task::JoinHandle<(std::time::Duration, Value)> {
        let (app, cred) = (self.app.clone(), cred.to_owned());
        tokio::spawn(async move {
            let req = Request::post("/v1/agent/claim")
                .header("authorization", format!("Bearer {cred}"))
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"capacity": 1, "wait_secs": wait_secs}).to_string(),
                ))
                .unwrap();
            let started = std::time::Instant::now();
            let res = app.oneshot(req).await.unwrap();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            (started.elapsed(), serde_json::from_slice(&bytes).unwrap())
        })
    }

    /// The verification `id` once its walk is over (the manager's
    /// audit-chain-verify walks it), polled through the API.
    pub(crate) async fn finished_verification(&self, id: &str) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let v = self
                .get(&format!("/v1/audit/verifications/{id}"), &self.admin)
                .await;
            assert_eq!(v.status, StatusCode::OK, "{}", v.text);
            if !["pending", "running"].contains(&v.body["state"].as_str().unwrap()) {
                return v.body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the verification never finished: {}",
                v.text
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits for the walk audit-chain-verify asks for itself at its first
    /// run (none was ever asked for) to be over, so that the next request
    /// opens its own instead of joining it.
    pub(crate) async fn first_walk_over(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let list = self.get("/v1/audit/verifications", &self.admin).await;
            let items = list.body["items"].as_array().unwrap();
            if let Some(v) = items.last() {
                self.finished_verification(v["id"].as_str().unwrap()).await;
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "audit-chain-verify never asked for its first walk"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn stop(self) {
        if let Some(m) = &self.state_manager() {
            m.shutdown(std::time::Duration::from_secs(5)).await;
        }
    }

    fn state_manager(&self) -> Option<Manager> {
        self.state.manager().cloned()
    }
}
