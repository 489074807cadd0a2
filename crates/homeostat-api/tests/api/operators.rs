//! The operator's API: tenants, tokens, agents, audit, controllers, probes
//! and metrics.

use axum::http::{Method, StatusCode};
use homeostat_store::Store;
use homeostat_testkit::on_both_backends;
use serde_json::json;

use crate::Api;

async fn tenants_and_keys_need_an_admin(store: &Store) {
    let api = Api::new(store).await;
    let created = api
        .post(
            "/v1/tenants",
            &api.admin,
            json!({"name": "acme", "tier": "premium"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let tenant = created.body["id"].as_str().unwrap().to_owned();
    let dup = api
        .post("/v1/tenants", &api.admin, json!({"name": "acme"}))
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.text);
    let key = api
        .post(
            "/v1/api-keys",
            &api.admin,
            json!({"role": "tenant", "tenant_id": tenant}),
        )
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let secret = key.body["secret"].as_str().unwrap().to_owned();
    let forbidden = api
        .post("/v1/tenants", &secret, json!({"name": "globex"}))
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    // Listing shows metadata, never a secret or a hash.
    let keys = api.get("/v1/api-keys", &api.admin).await;
    assert_eq!(keys.status, StatusCode::OK);
    assert!(!keys.text.contains(&secret));
    assert!(!keys.text.contains("hash"));
    // Revoked, the key stops working at once.
    let id = key.body["id"].as_str().unwrap();
    let revoke = api
        .post(&format!("/v1/tokens/{id}/revoke"), &api.admin, json!({}))
        .await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT, "{}", revoke.text);
    assert_eq!(
        api.get("/v1/jobs", &secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A tenant key without its tenant, an admin key with one: refused.
    let bad = api
        .post("/v1/api-keys", &api.admin, json!({"role": "tenant"}))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let role = api
        .post("/v1/api-keys", &api.admin, json!({"role": "root"}))
        .await;
    assert_eq!(role.status, StatusCode::BAD_REQUEST, "{}", role.text);
    api.stop().await;
}

async fn agents_are_listed_by_tenant_and_drained_by_admins(store: &Store) {
    let api = Api::new(store).await;
    let (acme, acme_key) = api.tenant("acme").await;
    let (globex, _) = api.tenant("globex").await;
    let (mine, _) = api.agent(Some(acme), &["q"]).await;
    let (theirs, _) = api.agent(Some(globex), &["q"]).await;
    let listed = api.get("/v1/agents", &acme_key).await;
    let ids: Vec<_> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(mine)]);
    assert_eq!(
        api.get(&format!("/v1/agents/{theirs}"), &acme_key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let drain = api
        .post(&format!("/v1/agents/{mine}/drain"), &acme_key, json!({}))
        .await;
    assert_eq!(drain.status, StatusCode::FORBIDDEN);
    let drain = api
        .post(&format!("/v1/agents/{mine}/drain"), &api.admin, json!({}))
        .await;
    assert_eq!(drain.body["status"], "draining", "{}", drain.text);
    // A drain is undone by an admin, audited; a tenant key may not.
    let path = format!("/v1/agents/{mine}/resume");
    assert_eq!(
        api.post(&path, &acme_key, json!({})).await.status,
        StatusCode::FORBIDDEN
    );
    let resumed = api.post(&path, &api.admin, json!({})).await;
    assert_eq!(resumed.body["status"], "online", "{}", resumed.text);
    let events = api
        .store
        .audit_events_of(&format!("agent:{mine}"), 10)
        .await
        .unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"agent.draining") && actions.contains(&"agent.resumed"),
        "{actions:?}"
    );
    // An offline agent comes back by heartbeating, not by a resume.
    api.store
        .revoke_agent(theirs.parse().unwrap(), "operator:test")
        .await
        .unwrap();
    let offline = api
        .post(
            &format!("/v1/agents/{theirs}/resume"),
            &api.admin,
            json!({}),
        )
        .await;
    assert_eq!(offline.status, StatusCode::CONFLICT, "{}", offline.text);
    // Removal: admins only, offline agents only, audited.
    let remove = |id: &str, key: &str| {
        let (path, key) = (format!("/v1/agents/{id}"), key.to_owned());
        let api = &api;
        async move { api.call(Method::DELETE, &path, Some(&key), None).await }
    };
    assert_eq!(remove(&mine, &acme_key).await.status, StatusCode::FORBIDDEN);
    let online = remove(&mine, &api.admin).await;
    assert_eq!(online.status, StatusCode::CONFLICT, "{}", online.text);
    assert!(
        online.text.contains("only an offline agent"),
        "{}",
        online.text
    );
    let removed = remove(&theirs, &api.admin).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    assert_eq!(removed.body["id"], json!(theirs));
    assert_eq!(
        api.get(&format!("/v1/agents/{theirs}"), &api.admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        remove(&theirs, &api.admin).await.status,
        StatusCode::NOT_FOUND
    );
    let events = api
        .store
        .audit_events_of(&format!("agent:{theirs}"), 10)
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e.action == "agent.removed"),
        "{events:?}"
    );
    api.stop().await;
}

async fn the_audit_log_lists_and_verifies_without_secrets(store: &Store) {
    let api = Api::new(store).await;
    let token = api
        .post("/v1/bootstrap-tokens", &api.admin, json!({"uses": 3}))
        .await;
    let secret = token.body["secret"].as_str().unwrap();
    let events = api.get("/v1/audit?limit=1000", &api.admin).await;
    assert_eq!(events.status, StatusCode::OK, "{}", events.text);
    assert!(
        events.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "token.created")
    );
    assert_eq!(events.body["next_cursor"], json!(null), "the whole log");
    // Page by page: the cursor is the last event's sequence number.
    let first = api.get("/v1/audit?limit=1", &api.admin).await;
    let cursor = first.body["next_cursor"].as_i64().unwrap();
    assert_eq!(json!(cursor), first.body["items"][0]["seq"]);
    let second = api
        .get(&format!("/v1/audit?limit=1&after={cursor}"), &api.admin)
        .await;
    assert_eq!(second.body["items"][0]["seq"], json!(cursor + 1));
    assert!(
        !events.text.contains(secret),
        "a secret reached the audit log"
    );
    api.first_walk_over().await;
    let verify = api.post("/v1/audit/verify", &api.admin, json!({})).await;
    assert_eq!(verify.status, StatusCode::ACCEPTED, "{}", verify.text);
    let id = verify.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        verify.headers["location"],
        format!("/v1/audit/verifications/{id}").as_str()
    );
    assert!(
        verify.body["requested_by"]
            .as_str()
            .unwrap()
            .starts_with("api_key:"),
        "{}",
        verify.text
    );
    // A second request while it is open joins it.
    let again = api.post("/v1/audit/verify", &api.admin, json!({})).await;
    let joined = again.body["id"].as_str().unwrap();
    let walked = api.finished_verification(&id).await;
    if joined != id {
        // The first finished before the second came: it opened another.
        api.finished_verification(joined).await;
    }
    assert_eq!(walked["state"], json!("intact"), "{walked}");
    assert_eq!(walked["first_break"], serde_json::Value::Null);
    assert!(walked["checked"].as_u64().unwrap() > 0, "{walked}");
    assert_eq!(walked["checked"], walked["total"], "{walked}");
    let listed = api.get("/v1/audit/verifications", &api.admin).await;
    assert!(
        listed.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["id"] == json!(id)),
        "{}",
        listed.text
    );
    assert_eq!(listed.body["next_cursor"], serde_json::Value::Null);
    let unknown = api
        .get(
            "/v1/audit/verifications/00000000-0000-7000-8000-000000000000",
            &api.admin,
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let malformed = api.get("/v1/audit/verifications/nope", &api.admin).await;
    assert_eq!(
        malformed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        malformed.text
    );
    let (_, tenant_key) = api.tenant("acme").await;
    for path in ["/v1/audit", "/v1/audit/verifications"] {
        assert_eq!(
            api.get(path, &tenant_key).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    api.stop().await;
}

async fn controllers_report_trigger_and_plan(store: &Store) {
    let api = Api::new(store).await;
    let list = api.get("/v1/controllers", &api.admin).await;
    assert_eq!(list.status, StatusCode::OK);
    let names: Vec<_> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert!(names.contains(&json!("job-recovery")), "{names:?}");
    // The lease holder is named: this replica, once it leads.
    let holder = api.state.manager().unwrap().holder().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let list = api.get("/v1/controllers", &api.admin).await;
        let scheduler = list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "job-scheduler")
            .unwrap()
            .clone();
        if scheduler["leader_replica"] == json!(holder) {
            assert_eq!(scheduler["leader"], true);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader named: {scheduler}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let trigger = api
        .post(
            "/v1/controllers/job-recovery/trigger",
            &api.admin,
            json!({}),
        )
        .await;
    assert_eq!(trigger.status, StatusCode::ACCEPTED, "{}", trigger.text);
    let unknown = api
        .post("/v1/controllers/nope/trigger", &api.admin, json!({}))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let plan = api
        .get("/v1/controllers/job-recovery/plan", &api.admin)
        .await;
    assert_eq!(plan.status, StatusCode::OK, "{}", plan.text);
    assert_eq!(plan.body["count"], 0);
    api.stop().await;
}

async fn probes_and_metrics(store: &Store) {
    let api = Api::new(store).await;
    let health = api
        .call(axum::http::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = api
        .call(axum::http::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    let checks: Vec<&str> = ready.body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == true)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let expected: &[&str] = match api.store.listener_connected() {
        Some(_) => &["database", "writes", "listener", "controllers"],
        None => &["database", "writes", "controllers"],
    };
    assert_eq!(checks, expected, "{}", ready.text);
    let (_, key) = api.tenant("acme").await;
    api.enqueue(&key, json!({"queue": "builds", "kind": "a"}))
        .await;
    let metrics = api
        .send(
            axum::http::Request::get("/metrics")
                .header(
                    "accept",
                    "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
                )
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(metrics.status, StatusCode::OK);
    for needle in [
        "homeostat_jobs{state=\"queued\",queue=\"builds\"} 1",
        "homeostat_queue_backlog{queue=\"builds\"} 1",
        "homeostat_http_requests_total{route=\"/v1/jobs\",method=\"POST\",status=\"201\"} 1",
        "# TYPE homeostat_controller_reconcile counter",
        "# EOF",
    ] {
        assert!(
            metrics.text.contains(needle),
            "no {needle} in\n{}",
            metrics.text
        );
    }
    // Without asking for OpenMetrics: the Prometheus text format.
    let plain = api
        .call(axum::http::Method::GET, "/metrics", None, None)
        .await;
    assert!(
        plain
            .text
            .contains("# TYPE homeostat_controller_reconcile_total counter")
    );
    assert!(!plain.text.contains("# EOF"));
    api.state.shutdown_token().cancel();
    let stopping = api
        .call(axum::http::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(stopping.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(stopping.text.contains("stopping"));
    api.stop().await;
}

/// What happens to jobs is counted where it happens: finished by queue,
/// kind and outcome (succeeded, dead, cancelled), retries, reclaims, and
/// how long each reported attempt waited and ran.
async fn job_metrics_count_outcomes_retries_and_reclaims(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (agent_id, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    for _ in 0..5 {
        api.enqueue(
            &key,
            json!({"queue": "builds", "kind": "compile", "max_attempts": 3}),
        )
        .await;
    }
    let (ok, token) = crate::agent::claim_one(&api, &cred).await;
    let done = api
        .post(
            &format!("/v1/agent/jobs/{ok}/complete"),
            &cred,
            json!({"lease_token": token}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    for retryable in [true, false] {
        let (id, token) = crate::agent::claim_one(&api, &cred).await;
        let failed = api
            .post(
                &format!("/v1/agent/jobs/{id}/fail"),
                &cred,
                json!({"lease_token": token, "error": "exit 1", "retryable": retryable}),
            )
            .await;
        assert_eq!(failed.status, StatusCode::OK, "{}", failed.text);
    }
    // One running when its agent is revoked, one queued and cancelled.
    let (_, _) = crate::agent::claim_one(&api, &cred).await;
    let revoked = api
        .post(
            &format!("/v1/agents/{agent_id}/revoke"),
            &api.admin,
            json!({}),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    let queued = api.get("/v1/jobs?state=queued&limit=10", &api.admin).await;
    let last = queued.body["items"][0]["id"].as_str().unwrap().to_owned();
    let cancelled = api
        .post(&format!("/v1/jobs/{last}/cancel"), &api.admin, json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);

    let metrics = api.call(Method::GET, "/metrics", None, None).await;
    let labels = "queue=\"builds\",kind=\"compile\"";
    for needle in [
        format!("homeostat_jobs_finished_total{{{labels},outcome=\"succeeded\"}} 1"),
        format!("homeostat_jobs_finished_total{{{labels},outcome=\"dead\"}} 1"),
        format!("homeostat_jobs_finished_total{{{labels},outcome=\"cancelled\"}} 1"),
        format!("homeostat_job_retries_total{{{labels}}} 1"),
        format!("homeostat_job_reclaims_total{{{labels},reason=\"agent_revoked\"}} 1"),
        format!("homeostat_job_running_seconds_count{{{labels}}} 3"),
        format!("homeostat_job_queued_seconds_count{{{labels}}} 3"),
    ] {
        assert!(
            metrics.text.contains(&needle),
            "no {needle} in\n{}",
            metrics.text
        );
    }
    api.stop().await;
}

async fn dead_notifications_are_listed_and_redriven(store: &Store) {
    let api = Api::new(store).await;
    let id = api
        .store
        .add_notification("job.dead", &json!({"job_id": "x"}))
        .await
        .unwrap();
    api.store
        .record_delivery(
            id,
            &homeostat_store::Delivery::Failed {
                error: "410 Gone".into(),
                permanent: true,
            },
        )
        .await
        .unwrap();
    let dead = api.get("/v1/notifications?state=dead", &api.admin).await;
    assert_eq!(dead.status, StatusCode::OK, "{}", dead.text);
    assert_eq!(dead.body["items"][0]["id"], json!(id));
    assert_eq!(dead.body["items"][0]["last_error"], "410 Gone");
    // Pending ones, page by page, newest first.
    let mut pending = Vec::new();
    for n in 0..3 {
        pending.push(
            api.store
                .add_notification("job.dead", &json!({"job_id": n}))
                .await
                .unwrap(),
        );
    }
    let mut seen = Vec::new();
    let mut path = "/v1/notifications?state=pending&limit=2".to_owned();
    loop {
        let page = api.get(&path, &api.admin).await;
        for n in page.body["items"].as_array().unwrap() {
            seen.push(n["id"].clone());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => path = format!("/v1/notifications?state=pending&limit=2&after={next}"),
            None => break,
        }
    }
    pending.reverse();
    assert_eq!(seen, json!(pending).as_array().unwrap().clone());
    let redriven = api
        .post(
            &format!("/v1/notifications/{id}/redrive"),
            &api.admin,
            json!({}),
        )
        .await;
    assert_eq!(redriven.status, StatusCode::OK, "{}", redriven.text);
    assert_eq!(redriven.body["state"], "pending");
    assert_eq!(redriven.body["attempts"], 0);
    let again = api
        .post(
            &format!("/v1/notifications/{id}/redrive"),
            &api.admin,
            json!({}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let (_, tenant_key) = api.tenant("acme").await;
    let hidden = api.get("/v1/notifications", &tenant_key).await;
    assert_eq!(hidden.status, StatusCode::FORBIDDEN);
    api.stop().await;
}

/// Every listing answers one shape, `{items, next_cursor}`.
async fn every_list_answers_items_and_a_cursor(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, _) = api.tenant("acme").await;
    let (agent, _) = api.agent(Some(tenant), &["q"]).await;
    let lists = [
        "/v1/jobs".to_owned(),
        "/v1/agents".to_owned(),
        format!("/v1/agents/{agent}/credentials"),
        "/v1/tenants".to_owned(),
        "/v1/bootstrap-tokens".to_owned(),
        "/v1/api-keys".to_owned(),
        "/v1/audit".to_owned(),
        "/v1/notifications".to_owned(),
        "/v1/controllers".to_owned(),
    ];
    for path in &lists {
        let list = api.get(path, &api.admin).await;
        assert_eq!(list.status, StatusCode::OK, "{path}: {}", list.text);
        let fields: Vec<&String> = list.body.as_object().unwrap().keys().collect();
        assert_eq!(fields, ["items", "next_cursor"], "{path}: {}", list.text);
        assert!(list.body["items"].is_array(), "{path}");
    }
    api.stop().await;
}

/// Who reads what across tenants: a tenant key is refused (403) every
/// listing that spans tenants, a viewer reads them all, and neither
/// changes anything an admin alone may change.
async fn roles_read_and_change_what_the_role_table_says(store: &Store) {
    let api = Api::new(store).await;
    let (_, tenant_key) = api.tenant("acme").await;
    let viewer = api
        .post("/v1/api-keys", &api.admin, json!({"role": "viewer"}))
        .await;
    let viewer = viewer.body["secret"].as_str().unwrap().to_owned();
    let spanning = [
        "/v1/controllers",
        "/v1/controllers/job-recovery/plan",
        "/v1/bootstrap-tokens",
        "/v1/api-keys",
        "/v1/audit",
        "/v1/notifications",
    ];
    for path in spanning {
        let refused = api.get(path, &tenant_key).await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            refused.text
        );
        assert_eq!(refused.code(), "forbidden");
        for key in [&viewer, &api.admin] {
            let read = api.get(path, key).await;
            assert_eq!(read.status, StatusCode::OK, "{path}: {}", read.text);
        }
    }
    let admin_only = [
        ("/v1/controllers/job-recovery/trigger", json!({})),
        ("/v1/bootstrap-tokens", json!({"uses": 1})),
        ("/v1/tenants", json!({"name": "globex"})),
        ("/v1/audit/verify", json!({})),
    ];
    for (path, body) in admin_only {
        for key in [&viewer, &tenant_key] {
            let refused = api.post(path, key, body.clone()).await;
            assert_eq!(
                refused.status,
                StatusCode::FORBIDDEN,
                "{path}: {}",
                refused.text
            );
        }
    }
    api.stop().await;
}

/// `/metrics` keeps its series bounded whatever tenants name their queues
/// (the most loaded have their own, the rest are summed as `_other`), and
/// can be kept for operators' keys.
async fn metrics_are_bounded_and_may_need_a_key(store: &Store) {
    let settings = homeostat_api::ApiSettings {
        metrics_max_queues: 2,
        metrics_need_key: true,
        ..homeostat_api::ApiSettings::default()
    };
    let api = Api::with_settings(store, settings).await;
    let (_, key) = api.tenant("acme").await;
    for (queue, n) in [("big", 3), ("mid", 2), ("small", 1), ("tiny", 1)] {
        for _ in 0..n {
            api.enqueue(&key, json!({"queue": queue, "kind": "k"}))
                .await;
        }
    }
    let anonymous = api
        .call(axum::http::Method::GET, "/metrics", None, None)
        .await;
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        anonymous.text
    );
    let tenant = api.get("/metrics", &key).await;
    assert_eq!(tenant.status, StatusCode::FORBIDDEN, "{}", tenant.text);
    let text = api.get("/metrics", &api.admin).await.text;
    let backlog: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("homeostat_queue_backlog{"))
        .collect();
    assert_eq!(backlog.len(), 3, "{backlog:?}");
    assert!(
        text.contains("homeostat_queue_backlog{queue=\"big\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("homeostat_queue_backlog{queue=\"mid\"} 2"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "homeostat_queue_backlog{{queue=\"{}\"}} 2",
            homeostat_api::OTHER_QUEUES
        )),
        "{text}"
    );
    assert!(!text.contains("tiny") && !text.contains("small"), "{text}");
    api.stop().await;
}

on_both_backends!(
    every_list_answers_items_and_a_cursor,
    metrics_are_bounded_and_may_need_a_key,
    roles_read_and_change_what_the_role_table_says,
    dead_notifications_are_listed_and_redriven,
    tenants_and_keys_need_an_admin,
    agents_are_listed_by_tenant_and_drained_by_admins,
    the_audit_log_lists_and_verifies_without_secrets,
    controllers_report_trigger_and_plan,
    probes_and_metrics,
    job_metrics_count_outcomes_retries_and_reclaims,
);
