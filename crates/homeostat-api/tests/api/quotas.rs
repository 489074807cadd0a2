//! Each tenant's quotas: live jobs, queues with live jobs and the enqueue
//! rate, with overrides by tenant; a refusal is 429 `quota_exceeded` with
//! `Retry-After`, writes nothing, and the usage is readable.

use axum::http::StatusCode;
use homeostat_api::{ApiSettings, QuotaOverride, Quotas};
use homeostat_model::{ApiScope, PlanTier};
use homeostat_store::Store;
use homeostat_testkit::on_both_backends;
use serde_json::json;

use crate::Api;

async fn quotas_refuse_past_their_bound_and_show_the_usage(store: &Store) {
    // Tenants with quotas of their own, made before the server starts: a
    // larger live quota for one, a slow rate for the other.
    let tenant_with_key = |name: &'static str| async move {
        let t = store
            .create_tenant(name, PlanTier::Standard, "operator:test")
            .await
            .unwrap();
        let key = store
            .issue_api_key(ApiScope::Tenant(t.id), None, "operator:test")
            .await
            .unwrap()
            .secret;
        (t.id, key)
    };
    let (big, big_key) = tenant_with_key("big").await;
    let (slow, slow_key) = tenant_with_key("slow").await;
    let settings = ApiSettings {
        quotas: Quotas {
            live_jobs: 3,
            live_queues: 2,
            enqueue_rate: 1000,
            enqueue_burst: 1000,
            tenants: [
                (
                    big,
                    QuotaOverride {
                        live_jobs: Some(10),
                        ..QuotaOverride::default()
                    },
                ),
                (
                    slow,
                    QuotaOverride {
                        enqueue_rate: Some(1),
                        enqueue_burst: Some(2),
                        ..QuotaOverride::default()
                    },
                ),
            ]
            .into(),
        },
        ..ApiSettings::default()
    };
    let api = Api::with_settings(store, settings).await;
    let job = |queue: &str| json!({"queue": queue, "kind": "k"});

    // Live jobs: three, then refused, and nothing written.
    let (acme, key) = api.tenant("acme").await;
    for _ in 0..3 {
        let ok = api.post("/v1/jobs", &key, job("q1")).await;
        assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    }
    let refused = api.post("/v1/jobs", &key, job("q1")).await;
    refused.refused_by_quota("live_jobs");
    assert!(refused.headers.contains_key("retry-after"));
    let usage = api.get(&format!("/v1/tenants/{acme}/usage"), &key).await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.text);
    assert_eq!(usage.body["live_jobs"], 3, "{}", usage.text);
    assert_eq!(usage.body["live_queues"], 1);
    assert_eq!(usage.body["limits"]["live_jobs"], 3);

    // Queues: two, a third refused; the two still take jobs.
    let (_, key) = api.tenant("queues").await;
    for q in ["a", "b"] {
        assert_eq!(
            api.post("/v1/jobs", &key, job(q)).await.status,
            StatusCode::CREATED
        );
    }
    let third = api.post("/v1/jobs", &key, job("c")).await;
    third.refused_by_quota("live_queues");
    assert_eq!(
        api.post("/v1/jobs", &key, job("a")).await.status,
        StatusCode::CREATED
    );

    // Rate: a burst of two, then refused until tokens come back.
    for _ in 0..2 {
        let ok = api.post("/v1/jobs", &slow_key, job("r")).await;
        assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    }
    let fast = api.post("/v1/jobs", &slow_key, job("r")).await;
    assert_eq!(fast.status, StatusCode::TOO_MANY_REQUESTS, "{}", fast.text);
    assert!(fast.text.contains("quotas.enqueue_rate"), "{}", fast.text);
    assert_eq!(fast.headers["retry-after"], "1");

    // The override: ten live jobs for `big`.
    let many = json!({"jobs": (0..6).map(|_| job("q")).collect::<Vec<_>>()});
    let ok = api.post("/v1/jobs", &big_key, many).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    let usage = api
        .get(&format!("/v1/tenants/{}/usage", big), &big_key)
        .await;
    assert_eq!(usage.body["limits"]["live_jobs"], 10, "{}", usage.text);
    assert_eq!(usage.body["limits"]["live_queues"], 2, "the default stands");
    // Another tenant's usage is not this key's to read.
    let theirs = api
        .get(&format!("/v1/tenants/{acme}/usage"), &big_key)
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    api.stop().await;
}

on_both_backends!(quotas_refuse_past_their_bound_and_show_the_usage);
