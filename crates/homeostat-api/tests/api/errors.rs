//! Bad input: every refusal is JSON `{"code", "message"}` with a 4xx that
//! fits, and writes nothing.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use homeostat_api::ApiSettings;
use homeostat_store::Store;
use homeostat_testkit::on_both_backends;
use serde_json::json;

use crate::Api;

async fn credentials_are_required_and_checked(store: &Store) {
    let api = Api::new(store).await;
    let none = api.call(Method::GET, "/v1/jobs", None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.code(), "unauthorized");
    let wrong = api.get("/v1/jobs", "hsk_not_a_key").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let basic = api
        .send(
            Request::get("/v1/jobs")
                .header("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    // An agent credential is not an API key, nor the reverse.
    let (_, cred) = api.agent(None, &["q"]).await;
    assert_eq!(
        api.get("/v1/jobs", &cred).await.status,
        StatusCode::UNAUTHORIZED
    );
    let hb = api.post("/v1/agent/heartbeat", &api.admin, json!({})).await;
    assert_eq!(hb.status, StatusCode::UNAUTHORIZED);
    api.stop().await;
}

async fn malformed_bodies_are_400_naming_the_problem(store: &Store) {
    let api = Api::new(store).await;
    let (_, key) = api.tenant("acme").await;
    let syntax = api
        .send(
            Request::post("/v1/jobs")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(Body::from("{\"queue\": "))
                .unwrap(),
        )
        .await;
    assert_eq!(syntax.status, StatusCode::BAD_REQUEST, "{}", syntax.text);
    assert_eq!(syntax.code(), "malformed");
    let unknown = api
        .post(
            "/v1/jobs",
            &key,
            json!({"queue": "q", "kind": "a", "priorty": 5}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.text);
    assert!(
        unknown.body["message"]
            .as_str()
            .unwrap()
            .contains("priorty"),
        "{}",
        unknown.text
    );
    let not_json = api
        .send(
            Request::post("/v1/tenants")
                .header("authorization", format!("Bearer {}", api.admin))
                .header("content-type", "text/plain")
                .body(Body::from("name=acme"))
                .unwrap(),
        )
        .await;
    assert_eq!(
        not_json.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        not_json.text
    );
    let bad_id = api.get("/v1/jobs/not-a-uuid", &key).await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST, "{}", bad_id.text);
    assert_eq!(bad_id.code(), "malformed");
    let missing = api
        .get(&format!("/v1/jobs/{}", homeostat_model::new_id()), &key)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.code(), "not_found");
    let nowhere = api.get("/v1/nowhere", &key).await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert_eq!(nowhere.code(), "not_found");
    let method = api.call(Method::DELETE, "/v1/jobs", Some(&key), None).await;
    assert_eq!(method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(method.code(), "method_not_allowed");
    api.stop().await;
}

async fn out_of_range_values_are_422(store: &Store) {
    let api = Api::new(store).await;
    let (_, key) = api.tenant("acme").await;
    let timeout = api
        .post(
            "/v1/jobs",
            &key,
            json!({"queue": "q", "kind": "a", "timeout_secs": 999999999}),
        )
        .await;
    assert_eq!(
        timeout.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        timeout.text
    );
    assert!(
        timeout.body["message"]
            .as_str()
            .unwrap()
            .contains("timeout_secs")
    );
    let token = api
        .post("/v1/bootstrap-tokens", &api.admin, json!({"ttl_secs": 0}))
        .await;
    assert_eq!(token.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(token.body["message"].as_str().unwrap().contains("ttl_secs"));
    api.stop().await;
}

/// The tenant's jobs (a first page).
async fn jobs_of(api: &Api, tenant: homeostat_model::TenantId) -> Vec<homeostat_model::Job> {
    let filter = homeostat_store::JobFilter {
        tenant_id: Some(tenant),
        ..Default::default()
    };
    api.store.list_jobs(&filter, None, 10).await.unwrap().items
}

async fn an_oversized_body_is_413_and_writes_nothing(store: &Store) {
    let settings = ApiSettings {
        max_body_bytes: 4096,
        ..ApiSettings::default()
    };
    let api = Api::with_settings(store, settings).await;
    let (tenant, key) = api.tenant("acme").await;
    let big = "x".repeat(8192);
    let res = api
        .post(
            "/v1/jobs",
            &key,
            json!({"queue": "q", "kind": "a", "payload": {"blob": big}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", res.text);
    assert_eq!(res.code(), "too_large");
    assert!(jobs_of(&api, tenant).await.is_empty());
    api.stop().await;
}

async fn a_request_past_its_deadline_is_408_with_an_error_body(store: &Store) {
    let settings = ApiSettings {
        request_timeout: std::time::Duration::from_millis(200),
        ..ApiSettings::default()
    };
    let api = Api::with_settings(store, settings).await;
    let (_, cred) = api.agent(None, &["q"]).await;
    let res = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 1, "wait_secs": 30}),
        )
        .await;
    assert_eq!(res.status, StatusCode::REQUEST_TIMEOUT, "{}", res.text);
    assert_eq!(res.code(), "timeout");
    api.stop().await;
}

async fn a_body_sent_where_none_is_taken_is_refused(store: &Store) {
    let api = Api::new(store).await;
    let (_, key) = api.tenant("acme").await;
    let id = api.enqueue(&key, json!({"queue": "q", "kind": "a"})).await;
    let path = format!("/v1/jobs/{id}/cancel");
    let refused = api.post(&path, &key, json!({"reason": "nope"})).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert_eq!(refused.code(), "malformed");
    let job = api.store.get_job(id.parse().unwrap()).await.unwrap();
    assert_eq!(
        job.state,
        homeostat_model::JobState::Queued,
        "the refused cancel cancelled"
    );
    // None, or `{}`, is taken.
    let empty = api.call(Method::POST, &path, Some(&key), None).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.text);
    api.stop().await;
}

/// Sends `body` as it is written (a `json!` value cannot hold a duplicate
/// key) to `path` with `key`.
async fn post_raw(api: &Api, path: &str, key: &str, body: &str) -> crate::Answer {
    api.send(
        Request::post(path)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap(),
    )
    .await
}

/// serde_json's laxness is not the API's: an array where an object belongs
/// (at any depth), a duplicate key, a lifetime past any sense — refused,
/// and nothing is created.
async fn lax_shapes_are_refused_and_create_nothing(store: &Store) {
    let api = Api::new(store).await;
    let admin = api.admin.clone();
    let cases = [
        ("/v1/bootstrap-tokens", "[]", "expected an object"),
        (
            "/v1/bootstrap-tokens",
            "[null, 600, 1]",
            "expected an object",
        ),
        (
            "/v1/bootstrap-tokens",
            r#"{"uses": 1, "uses": 5}"#,
            "duplicate key",
        ),
        (
            "/v1/api-keys",
            r#"{"role": "viewer", "role": "admin"}"#,
            "duplicate key",
        ),
        (
            "/v1/agent/register",
            r#"{"bootstrap_token": "hsb_x", "agent": ["n1", {}, ["q"]]}"#,
            "expected an object",
        ),
        (
            "/v1/jobs",
            r#"{"queue": "q", "kind": "k", "payload": {"a": 1, "a": 2}}"#,
            "duplicate key",
        ),
    ];
    for (path, body, says) in cases {
        let res = post_raw(&api, path, &admin, body).await;
        assert_eq!(
            res.status,
            StatusCode::BAD_REQUEST,
            "{path} {body}: {}",
            res.text
        );
        assert_eq!(res.code(), "malformed");
        assert!(res.text.contains(says), "{path} {body}: {}", res.text);
    }
    let huge = api
        .post(
            "/v1/api-keys",
            &admin,
            json!({"role": "viewer", "ttl_secs": 1u64 << 63}),
        )
        .await;
    assert_eq!(
        huge.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        huge.text
    );
    assert!(huge.text.contains("ttl_secs"), "{}", huge.text);
    let tokens = api.get("/v1/bootstrap-tokens", &admin).await;
    assert_eq!(
        tokens.body,
        json!({"items": [], "next_cursor": null}),
        "a refused body created a token"
    );
    let keys = api.get("/v1/api-keys", &admin).await;
    assert_eq!(
        keys.body["items"].as_array().unwrap().len(),
        1,
        "only the first admin key: {}",
        keys.text
    );
    api.stop().await;
}

/// PostgreSQL cannot store a NUL in text or JSON: what a client sends with
/// one is refused naming the field, on both backends alike; what an agent
/// reports is kept, the NUL made U+FFFD, so a failure is never lost.
async fn nul_characters_are_refused_by_field_or_made_storable(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, key) = api.tenant("acme").await;
    let refused = [
        (
            r#"{"queue": "q", "kind": "k", "payload": {"log": "a\u0000b"}}"#,
            "payload.log",
        ),
        (
            r#"{"queue": "q", "kind": "k", "fingerprint": "x\u0000"}"#,
            "fingerprint",
        ),
        (
            r#"{"jobs": [{"queue": "q", "kind": "k"}, {"queue": "q", "kind": "k\u0000"}]}"#,
            "jobs[1].kind",
        ),
    ];
    for (body, field) in refused {
        let res = post_raw(&api, "/v1/jobs", &key, body).await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            res.text
        );
        assert_eq!(res.code(), "invalid");
        assert!(
            res.body["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}: ")),
            "{}",
            res.text
        );
    }
    let filter = api.get("/v1/jobs?queue=a%00b", &key).await;
    assert_eq!(
        filter.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        filter.text
    );
    assert!(filter.text.contains("queue"), "{}", filter.text);
    assert!(
        jobs_of(&api, tenant).await.is_empty(),
        "a refused enqueue wrote a job"
    );

    // An agent's reports: a failure whose stderr held a NUL, a result too.
    let (_, cred) = api.agent(Some(tenant), &["q"]).await;
    for _ in 0..2 {
        api.enqueue(&key, json!({"queue": "q", "kind": "k", "max_attempts": 1}))
            .await;
    }
    let claim = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 2, "wait_secs": 0}),
        )
        .await;
    let jobs = claim.body["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 2, "{}", claim.text);
    let (failed, done) = (&jobs[0], &jobs[1]);
    let fail = post_raw(
        &api,
        &format!("/v1/agent/jobs/{}/fail", failed["id"].as_str().unwrap()),
        &cred,
        &format!(
            r#"{{"lease_token": {}, "error": "exit 1: \u0000 in stderr", "retryable": false}}"#,
            failed["lease_token"]
        ),
    )
    .await;
    assert_eq!(fail.status, StatusCode::OK, "{}", fail.text);
    let complete = post_raw(
        &api,
        &format!("/v1/agent/jobs/{}/complete", done["id"].as_str().unwrap()),
        &cred,
        &format!(
            r#"{{"lease_token": {}, "result": {{"out": "a\u0000b"}}}}"#,
            done["lease_token"]
        ),
    )
    .await;
    assert_eq!(complete.status, StatusCode::OK, "{}", complete.text);
    let failed = api
        .store
        .get_job(failed["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        failed.last_error.as_deref(),
        Some("exit 1: \u{fffd} in stderr")
    );
    let done = api
        .store
        .get_job(done["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(done.result, Some(json!({"out": "a\u{fffd}b"})));
    api.stop().await;
}

/// Before any handler: a declared body too large is 413, any case of
/// `Bearer` is the scheme, a caller's request id is kept only when short
/// and plain; and every answer carries the browser hardening headers, with
/// `no-store` unless it chose its own caching.
async fn the_head_is_checked_and_every_answer_hardened(store: &Store) {
    let api = Api::new(store).await;
    let declared = api
        .send(
            Request::post("/v1/tenants")
                .header("authorization", format!("Bearer {}", api.admin))
                .header("content-type", "application/json")
                .header("content-length", "1000000000")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        declared.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        declared.text
    );
    assert_eq!(declared.code(), "too_large");
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let res = api
            .send(
                Request::get("/v1/tenants")
                    .header("authorization", format!("{scheme} {}", api.admin))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(res.status, StatusCode::OK, "{scheme}: {}", res.text);
    }
    let id_of = |id: &str| {
        Request::get("/healthz")
            .header("x-request-id", id)
            .body(Body::empty())
            .unwrap()
    };
    let kept = api.send(id_of("trace-42")).await;
    assert_eq!(kept.headers["x-request-id"], "trace-42");
    for bad in ["x".repeat(65), "<script>alert(1)</script>".to_owned()] {
        let replaced = api.send(id_of(&bad)).await;
        let id = replaced.headers["x-request-id"].to_str().unwrap();
        assert!(id != bad && id.len() == 36, "{id}");
    }
    let key = api
        .post("/v1/api-keys", &api.admin, json!({"role": "viewer"}))
        .await;
    assert_eq!(key.status, StatusCode::CREATED);
    let sign_in = api.call(Method::GET, "/", None, None).await;
    for answer in [&key, &sign_in, &declared] {
        let h = &answer.headers;
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    }
    let css = api
        .call(Method::GET, "/assets/dashboard.css", None, None)
        .await;
    assert_eq!(css.headers["cache-control"], "public, max-age=3600");
    api.stop().await;
}

on_both_backends!(
    the_head_is_checked_and_every_answer_hardened,
    lax_shapes_are_refused_and_create_nothing,
    nul_characters_are_refused_by_field_or_made_storable,
    a_body_sent_where_none_is_taken_is_refused,
    a_request_past_its_deadline_is_408_with_an_error_body,
    credentials_are_required_and_checked,
    malformed_bodies_are_400_naming_the_problem,
    out_of_range_values_are_422,
    an_oversized_body_is_413_and_writes_nothing,
);
