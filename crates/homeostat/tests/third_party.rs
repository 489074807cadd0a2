//! Real third-party programs pointed at `homeostat run`: Prometheus's
//! `promtool` checks `/metrics`, and Alertmanager delivers alerts to the
//! intake through its own webhook. Both come from Debian's packages
//! (`prometheus`, `prometheus-alertmanager`); `.ci/run` installs them.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, data_dir, free_port, get_json, post_json, ready, start};
use serde_json::json;

fn require(program: &str, package: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{program} is missing: install Debian's {package} package (.ci/run does)"
    );
    String::from_utf8(found.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_no_problem_in_the_metrics() {
    let promtool = require("promtool", "prometheus");
    let dir = data_dir();
    let client = client();
    let server = start(&dir);
    ready(&client, &server).await;
    let key = server.admin_key().unwrap();
    // Some traffic, so that every family has samples.
    let tenant = post_json(
        &client,
        server.url("/v1/tenants"),
        Some(&key),
        &json!({"name": "acme"}),
    )
    .await;
    client
        .post(server.url("/v1/jobs"))
        .bearer_auth(&key)
        .json(&json!({"tenant_id": tenant["id"], "queue": "builds", "kind": "k"}))
        .send()
        .await
        .unwrap();
    // Prometheus asks for OpenMetrics and gets it…
    let res = client
        .get(server.url("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    // …promtool reads the Prometheus text format, served when not asked for
    // OpenMetrics.
    let res = client.get(server.url("/metrics")).send().await.unwrap();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = res.text().await.unwrap();
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool: {said}\n--- metrics ---\n{text}"
    );
    assert!(said.trim().is_empty(), "promtool found problems: {said}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Alertmanager, configured to send its webhook to homeostat with a tenant
/// key; alerts posted to Alertmanager's own API.
struct Alertmanager {
    child: std::process::Child,
    url: String,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alertmanager(dir: &std::path::Path, webhook: &str, key: &str) -> Alertmanager {
    let binary = require("prometheus-alertmanager", "prometheus-alertmanager");
    let port = free_port();
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:
  receiver: homeostat
  group_by: ['alertname']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: homeostat
    webhook_configs:
      - url: {webhook}
        send_resolved: true
        http_config:
          authorization:
            credentials: {key}
"
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Alertmanager {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Polls (with a deadline) until `f` returns `Some`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_alerts_become_jobs_and_their_resolution_cancels_them() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let client = client();
    let server = start(&dir.join("data"));
    ready(&client, &server).await;
    let admin = server.admin_key().unwrap();
    let tenant = post_json(
        &client,
        server.url("/v1/tenants"),
        Some(&admin),
        &json!({"name": "ops"}),
    )
    .await;
    let key = post_json(
        &client,
        server.url("/v1/api-keys"),
        Some(&admin),
        &json!({"role": "tenant", "tenant_id": tenant["id"]}),
    )
    .await;
    let key = key["secret"].as_str().unwrap().to_owned();
    let am = alertmanager(&dir, &server.url("/v1/signals/alertmanager"), &key);
    eventually("Alertmanager to be ready", || {
        let client = client.clone();
        let url = format!("{}/-/ready", am.url);
        async move {
            let res = client.get(url).send().await.ok()?;
            res.status().is_success().then_some(())
        }
    })
    .await;

    let post_alert = |ends: Option<String>, instance: &'static str| {
        let client = client.clone();
        let url = format!("{}/api/v2/alerts", am.url);
        async move {
            let mut alert = json!({
                "labels": {"alertname": "DiskFull", "instance": instance},
                "annotations": {"summary": "disk almost full"},
            });
            if let Some(ends) = ends {
                alert["endsAt"] = json!(ends);
            }
            let res = client.post(url).json(&json!([alert])).send().await.unwrap();
            assert!(res.status().is_success(), "{}", res.text().await.unwrap());
        }
    };
    let jobs = |query: &'static str| {
        let client = client.clone();
        let url = server.url(&format!("/v1/jobs?{query}"));
        let key = key.clone();
        async move {
            let page = get_json(&client, url, &key).await;
            page["items"].as_array().unwrap().clone()
        }
    };

    post_alert(None, "db1").await;
    let first = eventually("the firing alert's job", || async {
        jobs("queue=alerts").await.into_iter().next()
    })
    .await;
    assert_eq!(first["state"], "queued");
    assert_eq!(first["payload"]["labels"]["instance"], "db1");
    let id = first["id"].as_str().unwrap().to_owned();

    // A second alert of the group: Alertmanager sends the group again, the
    // first alert re-firing with it; the first job counts it, no new job.
    post_alert(None, "db2").await;
    let again = eventually("the re-fired group", || async {
        let all = jobs("queue=alerts").await;
        (all.len() == 2).then_some(all)
    })
    .await;
    let first_now = again.iter().find(|j| j["id"] == id.as_str()).unwrap();
    assert_eq!(first_now["occurrences"], 2, "{again:?}");

    // Resolve db1: Alertmanager sends it resolved; its job had not started.
    let now = jiff::Timestamp::now().to_string();
    post_alert(Some(now), "db1").await;
    eventually("the resolved alert's job to be cancelled", || async {
        let all = jobs("state=cancelled").await;
        all.iter().any(|j| j["id"] == id.as_str()).then_some(())
    })
    .await;
    drop(am);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
