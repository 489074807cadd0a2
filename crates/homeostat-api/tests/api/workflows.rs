//! Workflows over the API: submit, run through the agent protocol, show,
//! cancel; errors that name the step; who may see and change what.

use axum::http::{Method, StatusCode};
use homeostat_store::Store;
use homeostat_testkit::on_both_backends;
use serde_json::{Value, json};

use crate::Api;

fn pipeline() -> Value {
    json!({
        "name": "release",
        "steps": [
            {"name": "build", "job": {"queue": "ci", "kind": "build"}},
            {"name": "test", "job": {"queue": "ci", "kind": "test"}, "needs": ["build"]},
            {"name": "report", "job": {"queue": "ci", "kind": "report"}, "needs": ["test"],
             "when": "on_failure"},
        ]
    })
}

/// A step that finds work and a summary that needs it, whatever its end.
fn scan() -> Value {
    json!({"name": "scan", "steps": [
        {"name": "discover", "job": {"queue": "ci", "kind": "discover"}},
        {"name": "summary", "job": {"queue": "ci", "kind": "summary"},
         "needs": ["discover"], "when": "always"},
    ]})
}

fn step_state<'a>(wf: &'a Value, name: &str) -> &'a str {
    wf["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["state"]
        .as_str()
        .unwrap()
}

/// Claims one job as `cred`; its id and lease token.
async fn claim(api: &Api, cred: &str) -> (String, i64) {
    let a = api
        .post(
            "/v1/agent/claim",
            cred,
            json!({"capacity": 1, "wait_secs": 0}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let job = &a.body["jobs"][0];
    (
        job["id"].as_str().unwrap().to_owned(),
        job["lease_token"].as_i64().unwrap(),
    )
}

async fn a_workflow_runs_through_the_agent_protocol(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant), &["ci"]).await;
    let made = api.post("/v1/workflows", &key, pipeline()).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    assert_eq!(made.body["state"], "running");
    assert_eq!(step_state(&made.body, "test"), "pending");
    let id = made.body["id"].as_str().unwrap().to_owned();

    for kind in ["build", "test"] {
        let (job, token) = claim(&api, &cred).await;
        let shown = api.get(&format!("/v1/jobs/{job}"), &key).await;
        assert_eq!(shown.body["kind"], kind);
        let done = api
            .post(
                &format!("/v1/agent/jobs/{job}/complete"),
                &cred,
                json!({"lease_token": token}),
            )
            .await;
        assert!(done.status.is_success(), "{}", done.text);
    }
    let wf = api.get(&format!("/v1/workflows/{id}"), &key).await;
    assert_eq!(wf.status, StatusCode::OK, "{}", wf.text);
    assert_eq!(step_state(&wf.body, "report"), "cancelled", "skipped");
    assert_eq!(wf.body["steps"][2]["skipped"], true);
    assert_eq!(wf.body["state"], "succeeded");
    assert_eq!(wf.body["steps"][1]["needs"], json!(["build"]));

    let listed = api.get("/v1/workflows", &key).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.body["items"][0]["id"], id.as_str());
    assert_eq!(listed.body["items"][0]["state"], "succeeded");
    assert_eq!(listed.body["items"][0]["steps"], 3);
    assert_eq!(listed.body["items"][0]["unfinished"], 0);
    let bad = api.get("/v1/workflows?limit=0", &key).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    let unknown = api.get("/v1/workflows?state=running", &key).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.text);

    // Another tenant sees nothing of it; an admin does.
    let (_, other) = api.tenant("globex").await;
    let theirs = api.get("/v1/workflows", &other).await;
    assert_eq!(theirs.body["items"], json!([]));
    let hidden = api.get(&format!("/v1/workflows/{id}"), &other).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND, "{}", hidden.text);
    let cancel = api
        .call(
            Method::POST,
            &format!("/v1/workflows/{id}/cancel"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND, "{}", cancel.text);
    assert_eq!(
        api.get(&format!("/v1/workflows/{id}"), &api.admin)
            .await
            .status,
        StatusCode::OK
    );
}

async fn a_cancelled_workflow_starts_nothing(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant), &["ci"]).await;
    let made = api.post("/v1/workflows", &key, pipeline()).await;
    let id = made.body["id"].as_str().unwrap().to_owned();
    let (build, _) = claim(&api, &cred).await;
    let cancelled = api
        .call(
            Method::POST,
            &format!("/v1/workflows/{id}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(cancelled.body["state"], "cancelled");
    // The running step's agent learns of it at its next heartbeat.
    let beat = api
        .post("/v1/agent/heartbeat", &cred, json!({"jobs": []}))
        .await;
    assert!(beat.status.is_success(), "{}", beat.text);
    let job = api.get(&format!("/v1/jobs/{build}"), &key).await;
    assert_eq!(job.body["state"], "cancelled");
    let empty = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 5, "wait_secs": 0}),
        )
        .await;
    assert_eq!(empty.body["jobs"], json!([]));

    // Retried: what was cancelled runs again, from where it stands.
    let retried = api
        .call(
            Method::POST,
            &format!("/v1/workflows/{id}/retry"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert_eq!(retried.body["state"], "running");
    assert_eq!(step_state(&retried.body, "build"), "queued");
    assert_eq!(step_state(&retried.body, "test"), "pending");
    let again = api
        .call(
            Method::POST,
            &format!("/v1/workflows/{id}/retry"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let history = api.get("/v1/audit?limit=100", &api.admin).await;
    let actions: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == format!("workflow:{id}"))
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.len(),
        3,
        "submitted, cancelled, retried: {actions:?}"
    );
}

async fn bad_workflows_are_refused_naming_the_step(store: &Store) {
    let api = Api::new(store).await;
    let (_, key) = api.tenant("acme").await;
    for (body, named) in [
        (
            json!({"name": "w", "steps": [
                {"name": "a", "job": {"queue": "q", "kind": "k"}, "needs": ["b"]},
                {"name": "b", "job": {"queue": "q", "kind": "k"}, "needs": ["a"]}]}),
            "needs itself",
        ),
        (
            json!({"name": "w", "steps": [
                {"name": "deploy", "job": {"queue": "q", "kind": "k"}, "needs": ["bild"]}]}),
            "\\\"deploy\\\" needs \\\"bild\\\"",
        ),
        (json!({"name": "w", "steps": []}), "steps"),
        (
            json!({"name": "w", "steps": [
                {"name": "a", "job": {"queue": "q", "kind": "k", "priority": 5000}}]}),
            "job.priority",
        ),
    ] {
        let a = api.post("/v1/workflows", &key, body.clone()).await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            a.text
        );
        assert!(a.text.contains(named), "{body}: {}", a.text);
    }
    // Bodies that do not parse: 400 naming the field.
    for (body, named) in [
        (
            json!({"name": "w", "steps": [{"name": "a", "job": {"queue": "q", "kind": "k"}, "after": []}]}),
            "after",
        ),
        (
            json!({"name": "w", "steps": [{"name": "a", "job": {"queue": "q", "kind": "k"}, "when": "sometimes"}]}),
            "sometimes",
        ),
    ] {
        let a = api.post("/v1/workflows", &key, body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
        assert!(a.text.contains(named), "{}", a.text);
    }
    // An admin must name the tenant.
    let a = api.post("/v1/workflows", &api.admin, pipeline()).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(a.text.contains("tenant_id"), "{}", a.text);
    let jobs = api.get("/v1/jobs", &key).await;
    assert_eq!(jobs.body["items"], json!([]), "nothing was created");
}

async fn a_running_step_adds_steps_through_the_agent_protocol(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant), &["ci"]).await;
    let made = api.post("/v1/workflows", &key, scan()).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let (job, token) = claim(&api, &cred).await;
    let added = api
        .post(
            &format!("/v1/agent/jobs/{job}/steps"),
            &cred,
            json!({"lease_token": token, "steps": [
                {"name": "scan-a", "job": {"queue": "ci", "kind": "scan"}},
                {"name": "scan-b", "job": {"queue": "ci", "kind": "scan"}},
            ]}),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.text);
    assert_eq!(added.body["steps"].as_array().unwrap().len(), 4);
    assert_eq!(step_state(&added.body, "scan-a"), "queued");
    let summary = added.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "summary")
        .unwrap();
    assert_eq!(summary["needs"], json!(["discover", "scan-a", "scan-b"]));
    // A stale lease, a name taken, an unknown field.
    let stale = api
        .post(
            &format!("/v1/agent/jobs/{job}/steps"),
            &cred,
            json!({"lease_token": token + 1, "steps": [
                {"name": "x", "job": {"queue": "ci", "kind": "scan"}}]}),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.text);
    assert_eq!(stale.code(), "stale_lease");
    let taken = api
        .post(
            &format!("/v1/agent/jobs/{job}/steps"),
            &cred,
            json!({"lease_token": token, "steps": [
                {"name": "summary", "job": {"queue": "ci", "kind": "scan"}}]}),
        )
        .await;
    assert_eq!(
        taken.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        taken.text
    );
    let unknown = api
        .post(
            &format!("/v1/agent/jobs/{job}/steps"),
            &cred,
            json!({"lease_token": token, "steps": [], "more": 1}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.text);
}

/// Steps an agent adds are the tenant's jobs: its quotas count them, and a
/// refusal adds none.
async fn steps_added_at_run_time_count_against_the_tenants_quotas(store: &Store) {
    let api = Api::with_settings(store, crate::live_jobs_quota(3)).await;
    let (tenant, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant), &["ci"]).await;
    let made = api.post("/v1/workflows", &key, scan()).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let (job, token) = claim(&api, &cred).await;
    let add = |names: &[&str]| {
        json!({"lease_token": token, "steps": names.iter().map(|n| json!(
            {"name": n, "job": {"queue": "ci", "kind": "scan"}})).collect::<Vec<_>>()})
    };
    let path = format!("/v1/agent/jobs/{job}/steps");
    let refused = api.post(&path, &cred, add(&["scan-a", "scan-b"])).await;
    refused.refused_by_quota("live_jobs");
    let wf = api
        .get(
            &format!("/v1/workflows/{}", made.body["id"].as_str().unwrap()),
            &key,
        )
        .await;
    assert_eq!(wf.body["steps"].as_array().unwrap().len(), 2, "none added");
    let one = api.post(&path, &cred, add(&["scan-a"])).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.body["steps"].as_array().unwrap().len(), 3);
}

/// A workflow's pending steps are live jobs: `/metrics` shows them and the
/// workflow, and a tenant's quotas count them when they are counted afresh
/// (a server that did not see the submit).
async fn pending_steps_are_live_for_quotas_and_metrics(store: &Store) {
    let api = Api::with_settings(store, crate::live_jobs_quota(3)).await;
    let (_, key) = api.tenant("acme").await;
    let made = api
        .post(
            "/v1/workflows",
            &key,
            json!({"name": "ci", "steps": [
                {"name": "build", "job": {"queue": "ci", "kind": "build"}},
                {"name": "test", "job": {"queue": "ci", "kind": "test"}, "needs": ["build"]},
                {"name": "deploy", "job": {"queue": "ci", "kind": "deploy"}, "needs": ["test"]},
            ]}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let metrics = api.call(Method::GET, "/metrics", None, None).await.text;
    for needle in [
        "homeostat_jobs{state=\"pending\",queue=\"ci\"} 2",
        "homeostat_jobs{state=\"queued\",queue=\"ci\"} 1",
        "homeostat_workflows_running 1",
        "# TYPE homeostat_workflow_oldest_running_age_seconds gauge",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }
    // Another server counts the tenant's live jobs from the store: the two
    // pending steps with the queued one fill its quota of three.
    let other = Api::with_settings(store, crate::live_jobs_quota(3)).await;
    let refused = other
        .post("/v1/jobs", &key, json!({"queue": "ci", "kind": "more"}))
        .await;
    refused.refused_by_quota("live_jobs");
    // Cancelled, the workflow is no longer running.
    let id = made.body["id"].as_str().unwrap();
    let cancelled = api
        .call(
            Method::POST,
            &format!("/v1/workflows/{id}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    // A count that took long (a loaded machine) is answered while the next
    // runs behind the reads: poll, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = other.call(Method::GET, "/metrics", None, None).await.text;
        if metrics.contains("homeostat_workflows_running 0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// What a retry makes live again, a job's or a workflow's, is weighed by
/// the tenant's quotas as an enqueue: refused past them, nothing changed.
async fn retries_count_against_the_tenants_quotas(store: &Store) {
    let api = Api::with_settings(store, crate::live_jobs_quota(3)).await;
    let (tenant, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant), &["ci"]).await;
    let fail = |job: String, token: i64| {
        let api = &api;
        let cred = &cred;
        async move {
            let failed = api
                .post(
                    &format!("/v1/agent/jobs/{job}/fail"),
                    cred,
                    json!({"lease_token": token, "error": "broken", "retryable": false}),
                )
                .await;
            assert_eq!(failed.status, StatusCode::OK, "{}", failed.text);
        }
    };
    // A workflow whose first step dies: both steps finish (the second
    // skipped), nothing of it is live.
    let made = api
        .post(
            "/v1/workflows",
            &key,
            json!({"name": "ci", "steps": [
                {"name": "build", "job": {"queue": "ci", "kind": "build"}},
                {"name": "test", "job": {"queue": "ci", "kind": "test"}, "needs": ["build"]},
            ]}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let (build, token) = claim(&api, &cred).await;
    fail(build, token).await;
    // A job that dies too.
    let single = api
        .post("/v1/jobs", &key, json!({"queue": "ci", "kind": "once"}))
        .await;
    assert_eq!(single.status, StatusCode::CREATED, "{}", single.text);
    let (dead, token) = claim(&api, &cred).await;
    fail(dead.clone(), token).await;
    // A server that counts afresh (a server keeps its count for a moment
    // and does not see jobs die): two live jobs of the three allowed.
    let api = Api::with_settings(store, crate::live_jobs_quota(3)).await;
    for _ in 0..2 {
        let ok = api
            .post("/v1/jobs", &key, json!({"queue": "other", "kind": "k"}))
            .await;
        assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    }
    let id = made.body["id"].as_str().unwrap();
    let refused = api
        .call(
            Method::POST,
            &format!("/v1/workflows/{id}/retry"),
            Some(&key),
            None,
        )
        .await;
    // Two steps would run again.
    refused.refused_by_quota("live_jobs");
    let wf = api.get(&format!("/v1/workflows/{id}"), &key).await;
    assert_eq!(wf.body["state"], "failed", "nothing ran again: {}", wf.text);
    // One more fits: the dead job runs again; then the quota is full.
    let retried = api
        .call(
            Method::POST,
            &format!("/v1/jobs/{dead}/retry"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    let (again, token) = claim(&api, &cred).await;
    assert_eq!(again, dead);
    fail(again, token).await;
    let api = Api::with_settings(store, crate::live_jobs_quota(3)).await;
    let third = api
        .post("/v1/jobs", &key, json!({"queue": "other", "kind": "k"}))
        .await;
    assert_eq!(third.status, StatusCode::CREATED, "{}", third.text);
    let refused = api
        .call(
            Method::POST,
            &format!("/v1/jobs/{dead}/retry"),
            Some(&key),
            None,
        )
        .await;
    refused.refused_by_quota("live_jobs");
    let job = api.get(&format!("/v1/jobs/{dead}"), &key).await;
    assert_eq!(job.body["state"], "dead", "{}", job.text);
}

on_both_backends!(
    retries_count_against_the_tenants_quotas,
    pending_steps_are_live_for_quotas_and_metrics,
    steps_added_at_run_time_count_against_the_tenants_quotas,
    a_running_step_adds_steps_through_the_agent_protocol,
    a_workflow_runs_through_the_agent_protocol,
    a_cancelled_workflow_starts_nothing,
    bad_workflows_are_refused_naming_the_step,
);
