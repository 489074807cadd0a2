//! Jobs: enqueue (one, batch, deduplicated, idempotent), list, show,
//! cancel, retry, approve; roles and tenant isolation.

use axum::http::{Method, Request, StatusCode};
use homeostat_store::Store;
use homeostat_testkit::on_both_backends;
use serde_json::json;

use crate::Api;

async fn enqueue_creates_then_deduplicates_by_fingerprint(store: &Store) {
    let api = Api::new(store).await;
    let (_, key) = api.tenant("acme").await;
    let job = json!({"queue": "alerts", "kind": "remediate", "fingerprint": "disk-full-db1"});
    let first = api.post("/v1/jobs", &key, job.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.body["deduplicated"], false);
    assert_eq!(first.body["job"]["state"], "queued");
    let again = api.post("/v1/jobs", &key, job).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["deduplicated"], true);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.body["occurrences"], 2);
    assert_eq!(again.body["job"]["occurrences"], 2);
    api.stop().await;
}

async fn a_batch_enqueues_all_or_names_the_bad_job(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, key) = api.tenant("acme").await;
    let ok = api
        .post(
            "/v1/jobs",
            &key,
            json!({"jobs": [{"queue": "q", "kind": "a"}, {"queue": "q", "kind": "b"}]}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    assert_eq!(ok.body["jobs"].as_array().unwrap().len(), 2);
    let bad = api
        .post(
            "/v1/jobs",
            &key,
            json!({"jobs": [{"queue": "q", "kind": "a"}, {"queue": "", "kind": "b"}]}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert!(
        bad.body["message"]
            .as_str()
            .unwrap()
            .contains("jobs[1].queue"),
        "{}",
        bad.text
    );
    let listed = api
        .store
        .list_jobs(&tenant_filter(tenant), None, 100)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2, "the refused batch wrote something");
    api.stop().await;
}

fn tenant_filter(t: homeostat_model::TenantId) -> homeostat_store::JobFilter {
    homeostat_store::JobFilter {
        tenant_id: Some(t),
        ..Default::default()
    }
}

async fn the_same_idempotency_key_returns_the_first_answer(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, key) = api.tenant("acme").await;
    let send = |k: &'static str| {
        Request::builder()
            .method(Method::POST)
            .uri("/v1/jobs")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .header("idempotency-key", k)
            .body(axum::body::Body::from(
                json!({"queue": "q", "kind": "deploy"}).to_string(),
            ))
            .unwrap()
    };
    let first = api.send(send("deploy-42")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let retry = api.send(send("deploy-42")).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(retry.body["id"], first.body["id"]);
    let other = api.send(send("deploy-43")).await;
    assert_ne!(other.body["id"], first.body["id"]);
    let listed = api
        .store
        .list_jobs(&tenant_filter(tenant), None, 100)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2);
    // Another tenant's same key is its own.
    let (_, key2) = api.tenant("globex").await;
    let theirs = api
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/jobs")
                .header("authorization", format!("Bearer {key2}"))
                .header("content-type", "application/json")
                .header("idempotency-key", "deploy-42")
                .body(axum::body::Body::from(
                    json!({"queue": "q", "kind": "deploy"}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_ne!(theirs.body["id"], first.body["id"]);
    api.stop().await;
}

async fn a_tenant_sees_only_its_own_jobs(store: &Store) {
    let api = Api::new(store).await;
    let (_, acme) = api.tenant("acme").await;
    let (_, globex) = api.tenant("globex").await;
    let mine = api.enqueue(&acme, json!({"queue": "q", "kind": "a"})).await;
    let theirs = api
        .enqueue(&globex, json!({"queue": "q", "kind": "b"}))
        .await;
    let list = api.get("/v1/jobs", &acme).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let ids: Vec<_> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![mine.clone()]);
    let hidden = api.get(&format!("/v1/jobs/{theirs}"), &acme).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND, "{}", hidden.text);
    let cancel = api
        .post(&format!("/v1/jobs/{theirs}/cancel"), &acme, json!({}))
        .await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    // The admin sees both.
    let all = api.get("/v1/jobs", &api.admin).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
    api.stop().await;
}

async fn listing_filters_and_pages(store: &Store) {
    let api = Api::new(store).await;
    let (_, key) = api.tenant("acme").await;
    for i in 0..5 {
        api.enqueue(
            &key,
            json!({"queue": "q", "kind": if i % 2 == 0 { "even" } else { "odd" }}),
        )
        .await;
    }
    let even = api.get("/v1/jobs?kind=even", &key).await;
    assert_eq!(even.body["items"].as_array().unwrap().len(), 3);
    let page = api.get("/v1/jobs?limit=2", &key).await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = api
        .get(&format!("/v1/jobs?limit=10&after={cursor}"), &key)
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 3);
    assert_eq!(rest.body["next_cursor"], serde_json::Value::Null);
    let bad = api.get("/v1/jobs?limit=0", &key).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = api.get("/v1/jobs?colour=red", &key).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.text);
    let state = api.get("/v1/jobs?state=sleeping", &key).await;
    assert_eq!(state.status, StatusCode::BAD_REQUEST, "{}", state.text);
    api.stop().await;
}

async fn show_carries_the_audit_history(store: &Store) {
    let api = Api::new(store).await;
    let (_, key) = api.tenant("acme").await;
    let id = api.enqueue(&key, json!({"queue": "q", "kind": "a"})).await;
    let cancel = api
        .post(&format!("/v1/jobs/{id}/cancel"), &key, json!({}))
        .await;
    assert_eq!(cancel.body["state"], "cancelled", "{}", cancel.text);
    let shown = api.get(&format!("/v1/jobs/{id}"), &key).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["state"], "cancelled");
    let history = shown.body["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{}", shown.text);
    assert_eq!(history[0]["action"], "job.cancelled");
    assert!(
        history[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("api_key:")
    );
    // Cancelling again is a conflict.
    let again = api
        .post(&format!("/v1/jobs/{id}/cancel"), &key, json!({}))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert_eq!(again.code(), "conflict");
    api.stop().await;
}

async fn approval_and_retry(store: &Store) {
    let api = Api::new(store).await;
    let (_, key) = api.tenant("acme").await;
    let expires = (api.store.now() + jiff::SignedDuration::from_hours(1)).to_string();
    let id = api
        .enqueue(
            &key,
            json!({"queue": "q", "kind": "a", "approval_expires_at": expires}),
        )
        .await;
    let shown = api.get(&format!("/v1/jobs/{id}"), &key).await;
    assert_eq!(shown.body["state"], "awaiting_approval", "{}", shown.text);
    let approved = api
        .post(&format!("/v1/jobs/{id}/approve"), &key, json!({}))
        .await;
    assert_eq!(approved.body["state"], "queued", "{}", approved.text);
    // Retry is for dead or expired jobs only.
    let early = api
        .post(&format!("/v1/jobs/{id}/retry"), &key, json!({}))
        .await;
    assert_eq!(early.status, StatusCode::CONFLICT, "{}", early.text);
    api.stop().await;
}

async fn a_viewer_reads_but_changes_nothing(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, key) = api.tenant("acme").await;
    let id = api.enqueue(&key, json!({"queue": "q", "kind": "a"})).await;
    let viewer = api
        .post("/v1/api-keys", &api.admin, json!({"role": "viewer"}))
        .await;
    assert_eq!(viewer.status, StatusCode::CREATED, "{}", viewer.text);
    let viewer = viewer.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        api.get(&format!("/v1/jobs/{id}"), &viewer).await.status,
        StatusCode::OK
    );
    let cancel = api
        .post(&format!("/v1/jobs/{id}/cancel"), &viewer, json!({}))
        .await;
    assert_eq!(cancel.status, StatusCode::FORBIDDEN);
    assert_eq!(cancel.code(), "forbidden");
    let enqueue = api
        .post(
            "/v1/jobs",
            &viewer,
            json!({"queue": "q", "kind": "a", "tenant_id": tenant}),
        )
        .await;
    assert_eq!(enqueue.status, StatusCode::FORBIDDEN);
    api.stop().await;
}

async fn an_admin_enqueues_for_a_named_tenant(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, _) = api.tenant("acme").await;
    let none = api
        .post("/v1/jobs", &api.admin, json!({"queue": "q", "kind": "a"}))
        .await;
    assert_eq!(none.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(none.body["message"].as_str().unwrap().contains("tenant_id"));
    let named = api
        .post(
            "/v1/jobs",
            &api.admin,
            json!({"queue": "q", "kind": "a", "tenant_id": tenant}),
        )
        .await;
    assert_eq!(named.status, StatusCode::CREATED, "{}", named.text);
    let ghost = api
        .post(
            "/v1/jobs",
            &api.admin,
            json!({"queue": "q", "kind": "a", "tenant_id": homeostat_model::new_id()}),
        )
        .await;
    assert_eq!(ghost.status, StatusCode::NOT_FOUND, "{}", ghost.text);
    api.stop().await;
}

/// The trace context of an enqueue: a job's own `traceparent`, else the
/// request's `traceparent` header; a bad field is refused by name, a bad
/// header ignored (as the W3C recommendation asks).
async fn a_trace_context_comes_from_the_job_or_the_request(store: &Store) {
    let api = Api::new(store).await;
    let (_, key) = api.tenant("acme").await;
    let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let enqueue = |body: serde_json::Value, traceparent: &str| {
        Request::post("/v1/jobs")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .header("traceparent", traceparent)
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    };
    let from_header = api
        .send(enqueue(json!({"queue": "q", "kind": "k"}), header))
        .await;
    assert_eq!(
        from_header.status,
        StatusCode::CREATED,
        "{}",
        from_header.text
    );
    assert_eq!(from_header.body["job"]["traceparent"], header);
    let batch = json!({"jobs": [{"queue": "q", "kind": "k", "traceparent": own}, {"queue": "q", "kind": "k"}]});
    let both = api.send(enqueue(batch, header)).await;
    assert_eq!(both.status, StatusCode::CREATED, "{}", both.text);
    let ids: Vec<&str> = both.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    let first = api.get(&format!("/v1/jobs/{}", ids[0]), &key).await;
    assert_eq!(first.body["traceparent"], own, "the job's own wins");
    let second = api.get(&format!("/v1/jobs/{}", ids[1]), &key).await;
    assert_eq!(second.body["traceparent"], header);
    let bad_header = api
        .send(enqueue(json!({"queue": "q", "kind": "k"}), "not-a-trace"))
        .await;
    assert_eq!(
        bad_header.status,
        StatusCode::CREATED,
        "{}",
        bad_header.text
    );
    assert!(bad_header.body["job"].get("traceparent").is_none());
    let bad_field = api
        .post(
            "/v1/jobs",
            &key,
            json!({"queue": "q", "kind": "k", "traceparent": "00-zz"}),
        )
        .await;
    assert_eq!(
        bad_field.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        bad_field.text
    );
    assert!(
        bad_field.body["message"]
            .as_str()
            .unwrap()
            .starts_with("traceparent")
    );
    api.stop().await;
}

on_both_backends!(
    a_trace_context_comes_from_the_job_or_the_request,
    enqueue_creates_then_deduplicates_by_fingerprint,
    a_batch_enqueues_all_or_names_the_bad_job,
    the_same_idempotency_key_returns_the_first_answer,
    a_tenant_sees_only_its_own_jobs,
    listing_filters_and_pages,
    show_carries_the_audit_history,
    approval_and_retry,
    a_viewer_reads_but_changes_nothing,
    an_admin_enqueues_for_a_named_tenant,
);
