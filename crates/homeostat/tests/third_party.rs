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

/// The alert rules shipped in `deploy/prometheus` pass promtool's check and
/// their own unit tests, and read only metrics a server serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_pass_promtool_and_read_only_served_metrics() {
    let promtool = require("promtool", "prometheus");
    let rules_dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    for args in [
        ["check", "rules", "homeostat-alerts.yml"],
        ["test", "rules", "homeostat-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&rules_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "promtool {args:?}: {out:?}");
    }

    let dir = data_dir();
    let client = client();
    let server = start(&dir);
    ready(&client, &server).await;
    // A job through its life and one left queued: every family the rules
    // read has a series.
    let key = server.admin_key().unwrap();
    let (tenant, bootstrap) = common::tenant_and_bootstrap(&client, &server, &key, "acme", 1).await;
    let agent = post_json(
        &client,
        server.url("/v1/agent/register"),
        None,
        &json!({"bootstrap_token": bootstrap, "agent": {"name": "a", "queues": ["builds"]}}),
    )
    .await;
    let cred = agent["credential"].as_str().unwrap();
    let jobs = json!({"tenant_id": tenant["id"], "jobs": [
        {"queue": "builds", "kind": "k"}, {"queue": "builds", "kind": "k"}]});
    post_json(&client, server.url("/v1/jobs"), Some(&key), &jobs).await;
    let claimed = post_json(
        &client,
        server.url("/v1/agent/claim"),
        Some(cred),
        &json!({"capacity": 1, "wait_secs": 0}),
    )
    .await;
    let job = &claimed["jobs"][0];
    post_json(
        &client,
        server.url(&format!(
            "/v1/agent/jobs/{}/complete",
            job["id"].as_str().unwrap()
        )),
        Some(cred),
        &json!({"lease_token": job["lease_token"]}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = common::metrics(&client, &server).await;
        // Once this replica leads its controllers, their health is shown.
        if text.contains("homeostat_controller_healthy{") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let served: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let rules = std::fs::read_to_string(rules_dir.join("homeostat-alerts.yml")).unwrap();
    let mut read = 0;
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("homeostat_") || word.ends_with('_') {
                continue;
            }
            let family = ["_count", "_sum", "_bucket"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word);
            assert!(
                served.contains(&word) || served.contains(&family),
                "the rules read {word}, which /metrics does not serve:\n{text}"
            );
            read += 1;
        }
    }
    assert!(read >= 6, "only {read} metric names found in the rules");
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
