//! Limits over the API: set, read, delete; jobs enqueued under them; what
//! a waiting job waits on; errors that name the field; who may do what.

use axum::http::{Method, StatusCode};
use homeostat_model::ApiScope;
use homeostat_store::Store;
use homeostat_testkit::on_both_backends;
use serde_json::json;

use crate::Api;

async fn limits_are_set_shown_enforced_and_deleted(store: &Store) {
    let api = Api::new(store).await;
    let (_, tenant_key) = api.tenant("acme").await;
    let put = |body: serde_json::Value| {
        api.call(
            Method::PUT,
            "/v1/limits/per-customer",
            Some(&api.admin),
            Some(body),
        )
    };
    let made = put(json!({"max_running": 1, "key_from": "/customer"})).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    assert_eq!(made.body["name"], "per-customer");
    assert_eq!(made.body["spec"]["strategy"], "wait");
    let changed = put(json!({"max_running": 2, "key_from": "/customer"})).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.body["spec"]["max_running"], 2);

    // Bad specs are refused whole, naming the field.
    for (body, field) in [
        (json!({}), "max_running"),
        (json!({"max_running": 0}), "max_running"),
        (
            json!({"rate": {"starts": 5, "per_secs": 0}}),
            "rate.per_secs",
        ),
        (
            json!({"rate": {"starts": 5, "per_secs": 60}, "strategy": "cancel_newest"}),
            "strategy",
        ),
    ] {
        let a = api
            .call(
                Method::PUT,
                "/v1/limits/bad",
                Some(&api.admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            a.text
        );
        assert!(a.text.contains(field), "{body}: {}", a.text);
    }
    // Bodies that do not parse as a limit: 400, naming what is wrong.
    for (body, named) in [
        (json!({"max_running": 1, "maximum": 3}), "maximum"),
        (
            json!({"max_running": 1, "key_from": "customer"}),
            "key_from",
        ),
        (json!({"max_running": 1, "strategy": "lifo"}), "lifo"),
        (
            json!({"max_running": 1, "key_from": "/customer~2id"}),
            "not a JSON pointer",
        ),
    ] {
        let a = api
            .call(Method::PUT, "/v1/limits/bad", Some(&api.admin), Some(body))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
        assert!(a.text.contains(named), "{}", a.text);
    }
    assert_eq!(
        api.get("/v1/limits/bad", &api.admin).await.status,
        StatusCode::NOT_FOUND,
        "nothing was written"
    );
    // Names a client resolves out of a path (`..`) or a CLI reads as a
    // flag (`-x`): refused, naming the name.
    for name in ["..", ".", "-x"] {
        let a = api
            .call(
                Method::PUT,
                &format!("/v1/limits/{name}"),
                Some(&api.admin),
                Some(json!({"max_running": 1})),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name}: {}",
            a.text
        );
        assert!(a.text.contains("may not be . or .."), "{name}: {}", a.text);
    }
    let listed = api.get("/v1/limits", &api.admin).await;
    assert!(!listed.text.contains("\"-x\""), "{}", listed.text);
    // Tenants neither set nor read limits (their keys span tenants).
    let a = api
        .call(
            Method::PUT,
            "/v1/limits/mine",
            Some(&tenant_key),
            Some(json!({"max_running": 1})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(
        api.get("/v1/limits", &tenant_key).await.status,
        StatusCode::FORBIDDEN
    );
    let viewer = store
        .issue_api_key(ApiScope::Viewer, None, "operator:test")
        .await
        .unwrap()
        .secret;
    assert_eq!(api.get("/v1/limits", &viewer).await.status, StatusCode::OK);

    // Three jobs of customer 42: two run, the third waits and says why.
    let job = json!({"queue": "scans", "kind": "scan", "payload": {"customer": 42},
                     "limits": [{"limit": "per-customer"}]});
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(api.enqueue(&tenant_key, job.clone()).await);
    }
    let (_, cred) = api.agent(None, &["scans"]).await;
    let claimed = api
        .post("/v1/agent/claim", &cred, json!({"capacity": 10}))
        .await;
    assert_eq!(claimed.status, StatusCode::OK, "{}", claimed.text);
    assert_eq!(claimed.body["jobs"].as_array().unwrap().len(), 2);
    let third = api.get(&format!("/v1/jobs/{}", ids[2]), &tenant_key).await;
    assert_eq!(third.body["state"], "waiting", "{}", third.text);
    assert_eq!(third.body["limits"][0]["key"], "42");
    assert_eq!(third.body["limit_status"][0]["holding"], 2);
    assert_eq!(third.body["limit_status"][0]["blocking"], true);
    let shown = api.get("/v1/limits/per-customer", &api.admin).await;
    assert_eq!(shown.body["waiting"], 1, "{}", shown.text);
    assert_eq!(shown.body["hottest"][0]["key"], "42");
    assert_eq!(shown.body["hottest"][0]["running"], 2);
    let metrics = api.get("/metrics", &api.admin).await;
    for series in [
        "homeostat_limit_waiting{limit=\"per-customer\"} 1",
        "homeostat_limit_running{limit=\"per-customer\"} 2",
        "homeostat_limit_holding{limit=\"per-customer\"} 2",
        "homeostat_limit_delayed_by_rate{limit=\"per-customer\"} 0",
        "homeostat_limit_active_keys{limit=\"per-customer\"} 1",
    ] {
        assert!(
            metrics.text.contains(series),
            "{series} in {}",
            metrics.text
        );
    }
    let listed = api.get("/v1/limits", &api.admin).await;
    assert_eq!(listed.body["items"][0]["name"], "per-customer");

    // A job naming an unknown limit, or without the key its limit needs.
    for (bad, field) in [
        (
            json!({"queue": "scans", "kind": "scan", "limits": [{"limit": "nope", "key": "1"}]}),
            "limits[0].limit",
        ),
        (
            json!({"queue": "scans", "kind": "scan", "payload": {},
                   "limits": [{"limit": "per-customer"}]}),
            "limits[0].key",
        ),
    ] {
        let a = api.post("/v1/jobs", &tenant_key, bad).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
        assert!(a.text.contains(field), "{}", a.text);
    }

    // Deleted: the waiting job is queued.
    let gone = api
        .call(
            Method::DELETE,
            "/v1/limits/per-customer",
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text);
    let third = api.get(&format!("/v1/jobs/{}", ids[2]), &tenant_key).await;
    assert_eq!(third.body["state"], "queued", "{}", third.text);
    let again = api
        .call(
            Method::DELETE,
            "/v1/limits/per-customer",
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

async fn a_tenant_neither_fills_nor_sees_another_tenants_keys(store: &Store) {
    let api = Api::new(store).await;
    let (acme, acme_key) = api.tenant("acme").await;
    let (bolt, bolt_key) = api.tenant("bolt").await;
    let made = api
        .call(
            Method::PUT,
            "/v1/limits/per-customer",
            Some(&api.admin),
            Some(json!({"max_running": 1})),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    assert_eq!(made.body["spec"]["scope"], "tenant", "the default");
    let job = |key: &str| {
        json!({"queue": "scans", "kind": "scan",
               "limits": [{"limit": "per-customer", "key": key}]})
    };
    // acme fills its key 42 and more wait behind it.
    let first = api.enqueue(&acme_key, job("42")).await;
    let second = api.enqueue(&acme_key, job("42")).await;
    // bolt's key 42 is its own: not held back, and acme's jobs are not
    // counted in what bolt is shown.
    let bolts = api.enqueue(&bolt_key, job("42")).await;
    for (id, key, state) in [
        (&first, &acme_key, "queued"),
        (&second, &acme_key, "waiting"),
        (&bolts, &bolt_key, "queued"),
    ] {
        let shown = api.get(&format!("/v1/jobs/{id}"), key).await;
        assert_eq!(shown.body["state"], state, "{}", shown.text);
    }
    let shown = api.get(&format!("/v1/jobs/{bolts}"), &bolt_key).await;
    assert_eq!(shown.body["limits"][0]["key"], "42");
    assert_eq!(shown.body["limits"][0]["tenant"], bolt.to_string());
    assert_eq!(shown.body["limit_status"][0]["holding"], 1);
    // A key spelled as another tenant's own is refused, naming the field,
    // and nothing is enqueued.
    let forged = format!("{acme}\u{1f}42");
    let refused = api.post("/v1/jobs", &bolt_key, job(&forged)).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert!(refused.text.contains("limits[0].key"), "{}", refused.text);
    let listed = api.get("/v1/jobs?state=waiting", &bolt_key).await;
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        0,
        "{}",
        listed.text
    );
    // The operator's view tells the two keys apart by tenant.
    let usage = api.get("/v1/limits/per-customer", &api.admin).await;
    let mut owners: Vec<String> = usage.body["hottest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            format!(
                "{}:{}",
                k["tenant"].as_str().unwrap(),
                k["key"].as_str().unwrap()
            )
        })
        .collect();
    owners.sort();
    let mut expected = vec![format!("{acme}:42"), format!("{bolt}:42")];
    expected.sort();
    assert_eq!(owners, expected, "{}", usage.text);
    // A scope the server does not know is refused, naming it.
    let bad = api
        .call(
            Method::PUT,
            "/v1/limits/other",
            Some(&api.admin),
            Some(json!({"max_running": 1, "scope": "everyone"})),
        )
        .await;
    assert!(bad.status.is_client_error(), "{}", bad.text);
    assert!(bad.text.contains("scope"), "{}", bad.text);
}

on_both_backends!(
    limits_are_set_shown_enforced_and_deleted,
    a_tenant_neither_fills_nor_sees_another_tenants_keys,
);
