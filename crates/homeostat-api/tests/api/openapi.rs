//! `/openapi.json` documents every route, and `/docs` serves the vendored
//! Swagger UI.

use axum::http::{Method, StatusCode};
use homeostat_store::Store;
use homeostat_testkit::on_both_backends;

use crate::Api;

/// Every route the server answers, by method and path template.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/agent/register"),
    ("post", "/v1/agent/heartbeat"),
    ("post", "/v1/agent/claim"),
    ("post", "/v1/agent/jobs/complete"),
    ("post", "/v1/agent/jobs/{id}/complete"),
    ("post", "/v1/agent/jobs/{id}/fail"),
    ("post", "/v1/agent/jobs/{id}/steps"),
    ("post", "/v1/agent/jobs/{id}/release"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("post", "/v1/jobs/{id}/retry"),
    ("post", "/v1/jobs/{id}/approve"),
    ("get", "/v1/limits"),
    ("get", "/v1/limits/{name}"),
    ("put", "/v1/limits/{name}"),
    ("delete", "/v1/limits/{name}"),
    ("post", "/v1/workflows"),
    ("get", "/v1/workflows"),
    ("get", "/v1/workflows/{id}"),
    ("post", "/v1/workflows/{id}/cancel"),
    ("post", "/v1/workflows/{id}/retry"),
    ("get", "/v1/agents"),
    ("get", "/v1/agents/{id}"),
    ("delete", "/v1/agents/{id}"),
    ("post", "/v1/agents/{id}/drain"),
    ("post", "/v1/agents/{id}/resume"),
    ("get", "/v1/agents/{id}/credentials"),
    ("post", "/v1/agents/{id}/revoke"),
    ("post", "/v1/tenants"),
    ("get", "/v1/tenants"),
    ("get", "/v1/tenants/{id}/usage"),
    ("post", "/v1/bootstrap-tokens"),
    ("get", "/v1/bootstrap-tokens"),
    ("post", "/v1/api-keys"),
    ("get", "/v1/api-keys"),
    ("post", "/v1/tokens/{id}/revoke"),
    ("post", "/v1/signals/alertmanager"),
    ("get", "/v1/audit"),
    ("post", "/v1/audit/verify"),
    ("get", "/v1/audit/verifications"),
    ("get", "/v1/audit/verifications/{id}"),
    ("get", "/v1/notifications"),
    ("post", "/v1/notifications/{id}/redrive"),
    ("get", "/v1/controllers"),
    ("post", "/v1/controllers/{name}/trigger"),
    ("get", "/v1/controllers/{name}/plan"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

async fn the_document_covers_every_route_and_the_ui_is_served(store: &Store) {
    let api = Api::new(store).await;
    let doc = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let paths = doc.body["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut expected: Vec<_> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected);
    // Every documented route answers (not the router's 404 fallback), and
    // errors are documented with the error body.
    for (method, path) in &expected {
        let uri = path
            .replace("{id}", &homeostat_model::new_id().to_string())
            .replace("{name}", "job-recovery");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let res = api.call(m, &uri, None, None).await;
        assert!(
            !(res.status == StatusCode::NOT_FOUND && res.text.contains("no such route")),
            "{method} {path} is documented but not routed"
        );
    }
    let schemas = doc.body["components"]["schemas"].as_object().unwrap();
    for schema in [
        "Job",
        "ClaimRequest",
        "ErrorBody",
        "HeartbeatResponse",
        "AlertmanagerWebhook",
    ] {
        assert!(schemas.contains_key(schema), "no {schema} schema");
    }
    let ui = api.call(Method::GET, "/docs/", None, None).await;
    assert_eq!(ui.status, StatusCode::OK, "{}", ui.text);
    assert!(ui.text.contains("swagger-ui"), "{}", ui.text);
    assert!(
        !ui.text.contains("unpkg.com") && !ui.text.contains("cdn"),
        "a CDN: {}",
        ui.text
    );
    api.stop().await;
}

on_both_backends!(the_document_covers_every_route_and_the_ui_is_served);
/// The wire contract does not change unnoticed: the whole document is
/// kept beside this test (`snapshots/`); a change to a route, a schema or
/// an error shows as a diff to review (`cargo insta review`, or
/// `INSTA_UPDATE=always cargo test -p homeostat-api --test api openapi`).
#[test]
fn the_document_is_the_reviewed_one() {
    let doc = homeostat_api::openapi().to_pretty_json().unwrap();
    // The version moves with every release; the contract does not.
    let doc = doc.replacen(
        &format!("\"version\": \"{}\"", env!("CARGO_PKG_VERSION")),
        "\"version\": \"[version]\"",
        1,
    );
    insta::assert_snapshot!("openapi", doc);
}

/// The document passes a validator of the OpenAPI specification
/// (`openapi-spec-validator`, from PyPI; `.ci/run` installs it), as a
/// client generator would need.
#[test]
fn the_document_is_valid_openapi() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v openapi-spec-validator"])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "openapi-spec-validator is missing: pip install openapi-spec-validator (.ci/run does)"
    );
    let path = std::env::temp_dir().join(format!(
        "homeostat-openapi-{}.json",
        homeostat_model::new_id().simple()
    ));
    std::fs::write(&path, homeostat_api::openapi().to_pretty_json().unwrap()).unwrap();
    let out = std::process::Command::new("openapi-spec-validator")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
