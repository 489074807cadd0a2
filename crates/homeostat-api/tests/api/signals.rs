//! Alertmanager intake, with bodies in Alertmanager's documented webhook
//! format: firing, re-firing, resolved.

use axum::http::StatusCode;
use homeostat_model::JobState;
use homeostat_store::Store;
use homeostat_testkit::on_both_backends;
use serde_json::{Value, json};

use crate::Api;

fn alert(status: &str, name: &str, fingerprint: &str) -> Value {
    json!({
        "status": status,
        "labels": {"alertname": name, "instance": "db1", "severity": "page"},
        "annotations": {"summary": "disk 95% full"},
        "startsAt": "2026-11-28T10:00:00Z",
        "endsAt": if status == "firing" { "0001-01-01T00:00:00Z" } else { "2026-11-28T10:30:00Z" },
        "generatorURL": "http://prometheus:9090/graph?g0.expr=disk",
        "fingerprint": fingerprint
    })
}

fn webhook(status: &str, alerts: Vec<Value>) -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"DiskFull\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "homeostat",
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {"alertname": "DiskFull"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts
    })
}

async fn firing_refiring_and_resolved_alerts(store: &Store) {
    let api = Api::new(store).await;
    let (_, key) = api.tenant("acme").await;
    let path = "/v1/signals/alertmanager";
    let first = api
        .post(
            path,
            &key,
            webhook("firing", vec![alert("firing", "DiskFull", "fp1")]),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let id = first.body["enqueued"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(first.body["enqueued"][0]["deduplicated"], false);
    let job = api.store.get_job(id.parse().unwrap()).await.unwrap();
    assert_eq!((job.queue.as_str(), job.kind.as_str()), ("alerts", "alert"));
    assert_eq!(job.fingerprint.as_deref(), Some("fp1"));
    assert_eq!(job.payload["labels"]["instance"], "db1");
    // Re-firing (with a second alert in the group): the live job counts it.
    let again = api
        .post(
            path,
            &key,
            webhook(
                "firing",
                vec![
                    alert("firing", "DiskFull", "fp1"),
                    alert("firing", "DiskFull", "fp2"),
                ],
            ),
        )
        .await;
    assert_eq!(
        again.body["enqueued"][0]["id"],
        id.as_str(),
        "{}",
        again.text
    );
    assert_eq!(again.body["enqueued"][0]["occurrences"], 2);
    assert_eq!(again.body["enqueued"][1]["deduplicated"], false);
    // Resolved while still queued: cancelled.
    let resolved = api
        .post(
            path,
            &key,
            webhook("resolved", vec![alert("resolved", "DiskFull", "fp1")]),
        )
        .await;
    assert_eq!(resolved.body["cancelled"], json!([id]), "{}", resolved.text);
    let job = api.store.get_job(id.parse().unwrap()).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    // Firing again after resolution: a new job.
    let refired = api
        .post(
            path,
            &key,
            webhook("firing", vec![alert("firing", "DiskFull", "fp1")]),
        )
        .await;
    assert_ne!(refired.body["enqueued"][0]["id"], id.as_str());
    api.stop().await;
}

async fn a_resolved_alert_leaves_a_running_job_alone(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant), &["alerts"]).await;
    let path = "/v1/signals/alertmanager";
    api.post(
        path,
        &key,
        webhook("firing", vec![alert("firing", "DiskFull", "fp1")]),
    )
    .await;
    let claim = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 1, "wait_secs": 0}),
        )
        .await;
    let id = claim.body["jobs"][0]["id"].as_str().unwrap().to_owned();
    let resolved = api
        .post(
            path,
            &key,
            webhook("resolved", vec![alert("resolved", "DiskFull", "fp1")]),
        )
        .await;
    assert_eq!(resolved.body["cancelled"], json!([]));
    assert_eq!(resolved.body["ignored"], 1);
    let job = api.store.get_job(id.parse().unwrap()).await.unwrap();
    assert_eq!(job.state, JobState::Running);
    api.stop().await;
}

async fn routes_choose_queue_and_kind_and_admins_need_a_tenant(store: &Store) {
    let mut settings = homeostat_api::ApiSettings::default();
    let api0 = Api::new(store).await;
    let (tenant, _) = api0.tenant("acme").await;
    api0.stop().await;
    settings.alert_routes = vec![homeostat_api::AlertRoute {
        matchers: [("severity".to_owned(), "page".to_owned())].into(),
        queue: "pager".into(),
        kind: "remediate".into(),
        tenant_id: Some(tenant),
        priority: 5,
    }];
    let api = Api::with_settings(store, settings).await;
    let mut quiet = alert("firing", "Quiet", "fp9");
    quiet["labels"]["severity"] = json!("info");
    let res = api
        .post(
            "/v1/signals/alertmanager",
            &api.admin,
            webhook("firing", vec![alert("firing", "DiskFull", "fp1"), quiet]),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["ignored"], 1);
    let id = res.body["enqueued"][0]["id"].as_str().unwrap();
    let job = api.store.get_job(id.parse().unwrap()).await.unwrap();
    assert_eq!(
        (
            job.queue.as_str(),
            job.kind.as_str(),
            job.tenant_id,
            job.priority
        ),
        ("pager", "remediate", tenant, 5)
    );
    let not_a_hook = api
        .post("/v1/signals/alertmanager", &api.admin, json!({"hello": 1}))
        .await;
    assert_eq!(not_a_hook.status, StatusCode::BAD_REQUEST);
    api.stop().await;
}

on_both_backends!(
    firing_refiring_and_resolved_alerts,
    a_resolved_alert_leaves_a_running_job_alone,
    routes_choose_queue_and_kind_and_admins_need_a_tenant,
);
