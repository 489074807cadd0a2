//! The dashboard in a real browser: headless Chromium driven over
//! WebDriver (chromedriver), against `homeostat run` and a `homeostat
//! agent` as processes on loopback. An operator signs in, sees a dead job
//! on the overview, opens it, retries it, and watches it succeed after the
//! agent runs it, without the page reloading. Every page is photographed;
//! `UPDATE_SCREENSHOTS=1` writes the pictures to docs/screenshots/.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, data_dir, free_port, get_json, post_json, ready, tenant_and_bootstrap};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const SCRIPT: &str = r#"
case "$HOMEOSTAT_JOB_KIND" in
  flaky) if [ ! -e "$MARK" ]; then touch "$MARK"; echo 'disk full on /var/cache' >&2; exit 3; fi
         echo '{"built": true}';;
  *) cat > /dev/null; echo '{"ok": true}';;
esac
"#;

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver(port: u16) -> Killed {
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver runs (Debian's chromium-driver; .ci/run installs it)");
    Killed(child)
}

async fn browser(port: u16, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no WebDriver session: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Where screenshots go: docs/screenshots/ when asked, else beside the
/// test's data.
fn shots_dir(data: &Path) -> PathBuf {
    match std::env::var("UPDATE_SCREENSHOTS").as_deref() {
        Ok("1") => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots"),
        _ => data.join("screenshots"),
    }
}

async fn shot(b: &Client, dir: &Path, name: &str) {
    let png = b.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Waits (with a deadline) until `css` matches an element.
async fn until_found(b: &Client, css: &str, within: Duration) -> fantoccini::elements::Element {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(e) = b.find(Locator::Css(css)).await {
            return e;
        }
        if Instant::now() > deadline {
            let url = b
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            let text = match b.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("nothing matches {css} within {within:?} at {url}; the page says:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The text of the first element `css` selects.
async fn text_of(b: &Client, css: &str) -> String {
    b.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn job_state(c: &reqwest::Client, s: &common::Server, key: &str, id: &str) -> Value {
    get_json(c, s.url(&format!("/v1/jobs/{id}")), key).await["state"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retries_a_dead_job_and_watches_it_succeed() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let server = common::start(&dir);
    let c = client();
    ready(&c, &server).await;
    let admin = server.admin_key().unwrap();
    let (tenant, bootstrap) = tenant_and_bootstrap(&c, &server, &admin, "acme", 2).await;

    // One job that fails for good on its only attempt; others for a busy
    // picture: done, waiting for approval, queued where no agent listens.
    let jobs_url = server.url("/v1/jobs");
    let enqueue = |body: Value| {
        let (c, url, admin) = (&c, jobs_url.clone(), admin.clone());
        async move { post_json(c, url, Some(&admin), &body).await }
    };
    let flaky = enqueue(
        json!({"tenant_id": tenant["id"], "queue": "builds", "kind": "flaky",
        "payload": {"repo": "web", "ref": "main"}, "max_attempts": 1, "fingerprint": "web@main"}),
    )
    .await;
    let flaky_id = flaky["id"].as_str().unwrap().to_owned();
    for n in 0..6 {
        enqueue(
            json!({"tenant_id": tenant["id"], "queue": "builds", "kind": "compile",
            "payload": {"n": n}}),
        )
        .await;
    }
    for n in 0..3 {
        enqueue(
            json!({"tenant_id": tenant["id"], "queue": "reports", "kind": "render",
            "payload": {"n": n}}),
        )
        .await;
    }
    // A limit of one scan per repository at a time, and three scans of one
    // repository where no agent listens: one holds the slot, two wait.
    let limit = c
        .put(server.url("/v1/limits/per-repo"))
        .bearer_auth(&admin)
        .json(&json!({"max_running": 1, "key_from": "/repo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(limit.status(), 201);
    let mut waiting_id = String::new();
    for n in 0..3 {
        let e = enqueue(
            json!({"tenant_id": tenant["id"], "queue": "scans", "kind": "scan",
            "payload": {"repo": "web", "n": n}, "limits": [{"limit": "per-repo"}]}),
        )
        .await;
        waiting_id = e["id"].as_str().unwrap().to_owned();
    }
    // A release pipeline no agent serves: the build queued, the rest
    // pending on it.
    let step = |name: &str, needs: &[&str]| json!({"name": name, "job": {"queue": "releases", "kind": name}, "needs": needs});
    let workflow: Value = c
        .post(server.url("/v1/workflows"))
        .bearer_auth(&admin)
        .json(
            &json!({"tenant_id": tenant["id"], "name": "release-1.4", "steps": [
                step("build", &[]),
                step("test-unit", &["build"]),
                step("test-e2e", &["build"]),
                step("lint", &["build"]),
                step("deploy", &["test-unit", "test-e2e", "lint"]),
            ]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let workflow_id = workflow["id"].as_str().unwrap().to_owned();
    let approval = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2)).to_string();
    enqueue(
        json!({"tenant_id": tenant["id"], "queue": "deploys", "kind": "rollout",
        "payload": {"to": "production"}, "approval_expires_at": approval}),
    )
    .await;

    let mut agent = Command::new(assert_cmd::cargo::cargo_bin("homeostat"));
    agent
        .args(["agent", "--server", &server.url(""), "--queue", "builds"])
        .args(["--name", "builder-1", "--label", "zone=eu-west"])
        .args(["--bootstrap-token", &bootstrap, "--state-file"])
        .arg(dir.join("agent.json"))
        .env("MARK", dir.join("flaky.mark"))
        .args(["--exec", "sh", "-c", SCRIPT])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _agent = Killed(agent.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while job_state(&c, &server, &admin, &flaky_id).await != "dead" {
        assert!(Instant::now() < deadline, "the flaky job never died");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let port = free_port();
    let _driver = chromedriver(port);
    let b = browser(port, &dir.join("chromium")).await;
    let shots = shots_dir(&dir);
    std::fs::create_dir_all(&shots).unwrap();

    // Signed out, the dashboard sends the browser to sign in.
    b.goto(&server.url("/")).await.unwrap();
    until_found(&b, "form.login", Duration::from_secs(10)).await;
    assert_eq!(b.current_url().await.unwrap().path(), "/login");
    shot(&b, &shots, "login").await;
    let key = b.find(Locator::Css("input#key")).await.unwrap();
    key.send_keys(&admin).await.unwrap();
    click(&b, "form.login button").await;

    // The overview lists the dead job under "needs attention".
    let link = format!("section.attention a[href=\"/jobs/{flaky_id}\"]");
    until_found(&b, &link, Duration::from_secs(10)).await;
    let attention = text_of(&b, "section.attention").await;
    assert!(attention.contains("Dead jobs"), "{attention}");
    assert!(attention.contains("disk full on /var/cache"), "{attention}");
    assert!(attention.contains("Waiting for approval"), "{attention}");
    let htmx: Value = b.execute("return typeof htmx", vec![]).await.unwrap();
    assert_eq!(htmx, "object", "the vendored htmx loaded");
    shot(&b, &shots, "overview").await;

    // Open it: its error and its failed attempt.
    click(&b, &link).await;
    until_found(&b, ".job-head .st-dead", Duration::from_secs(10)).await;
    let page = text_of(&b, "main").await;
    assert!(page.contains("disk full on /var/cache"), "{page}");
    shot(&b, &shots, "job-dead").await;

    // Retry it; the page follows the job to success by polling, without a
    // reload (a mark left on the window survives).
    b.execute("window.homeostatMark = 'still here'", vec![])
        .await
        .unwrap();
    click(&b, "form[action$=\"/retry\"] button").await;
    until_found(&b, ".job-head .st-succeeded", Duration::from_secs(30)).await;
    let mark: Value = b
        .execute("return window.homeostatMark || null", vec![])
        .await
        .unwrap();
    assert_eq!(mark, "still here", "the page reloaded");
    assert_eq!(job_state(&c, &server, &admin, &flaky_id).await, "succeeded");
    let page = text_of(&b, "main").await;
    assert!(
        page.contains("job.retried"),
        "the history shows the retry: {page}"
    );
    shot(&b, &shots, "job-succeeded").await;

    // The retry is an audit event naming the key that signed in.
    let events =
        get_json(&c, server.url(&format!("/v1/jobs/{flaky_id}")), &admin).await["history"].clone();
    let retry = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "job.retried")
        .expect("a job.retried event");
    assert!(
        retry["actor"].as_str().unwrap().starts_with("api_key:"),
        "{retry}"
    );

    // Every other page, photographed.
    for (path, name, ready_css) in [
        ("/jobs", "jobs", "table.jobs"),
        ("/agents", "agents", "main table"),
        ("/limits", "limits", "section.limit table"),
        ("/workflows", "workflows", "main table"),
        ("/controllers", "controllers", "main table"),
        ("/controllers/job-recovery/plan", "plan", "main .actions"),
        ("/notifications", "notifications", "main"),
    ] {
        b.goto(&server.url(path)).await.unwrap();
        until_found(&b, ready_css, Duration::from_secs(10)).await;
        shot(&b, &shots, name).await;
    }

    // The limits page shows the full key and what waits; the waiting job's
    // page says what it waits for and links to the limit.
    b.goto(&server.url("/limits")).await.unwrap();
    until_found(&b, "#limit-per-repo span.tag", Duration::from_secs(10)).await;
    let limits = text_of(&b, "#limit-per-repo").await;
    assert!(limits.contains("full"), "{limits}");
    b.goto(&server.url(&format!("/jobs/{waiting_id}")))
        .await
        .unwrap();
    until_found(&b, ".job-head .st-waiting", Duration::from_secs(10)).await;
    let waits = text_of(&b, "dd.limit").await;
    assert_eq!(waits, "per-repo:web, 1 of 1 running");
    shot(&b, &shots, "job-waiting").await;
    click(&b, "dd.limit a").await;
    until_found(&b, "#limit-per-repo", Duration::from_secs(10)).await;
    assert_eq!(b.current_url().await.unwrap().path(), "/limits");

    // The workflow's graph: a box per step, a curve per need; a box leads
    // to its step's job, whose page leads back.
    b.goto(&server.url(&format!("/workflows/{workflow_id}")))
        .await
        .unwrap();
    until_found(&b, "svg a.node", Duration::from_secs(10)).await;
    let nodes = b.find_all(Locator::Css("svg a.node")).await.unwrap();
    assert_eq!(nodes.len(), 5);
    let edges = b.find_all(Locator::Css("svg path.edge")).await.unwrap();
    assert_eq!(edges.len(), 6);
    shot(&b, &shots, "workflow").await;
    let build = workflow["steps"][0]["job_id"].as_str().unwrap().to_owned();
    b.goto(&server.url(&format!("/jobs/{build}")))
        .await
        .unwrap();
    until_found(&b, ".job-head .st-queued", Duration::from_secs(10)).await;
    click(&b, &format!("a[href='/workflows/{workflow_id}']")).await;
    until_found(&b, "svg a.node", Duration::from_secs(10)).await;
    assert_eq!(
        b.current_url().await.unwrap().path(),
        format!("/workflows/{workflow_id}")
    );

    // Bulk cancel: a preview says how many, the confirmation does it.
    b.goto(&server.url("/jobs?queue=reports")).await.unwrap();
    until_found(&b, "form.bulk", Duration::from_secs(10)).await;
    click(&b, "form.bulk button[value=cancel]").await;
    let confirm = until_found(&b, "p.confirm", Duration::from_secs(10)).await;
    let text = confirm.text().await.unwrap();
    assert!(text.contains("cancel 3 jobs"), "{text}");
    shot(&b, &shots, "bulk-preview").await;
    click(&b, "main button.danger").await;
    let notice = until_found(&b, "p.notice", Duration::from_secs(10)).await;
    assert_eq!(notice.text().await.unwrap(), "3 jobs cancelled.");

    // The audit log, and its verification with progress to the end.
    b.goto(&server.url("/audit")).await.unwrap();
    until_found(&b, ".verify-box form button", Duration::from_secs(10))
        .await
        .click()
        .await
        .unwrap();
    // The page shows the latest walk and swaps it in place while it runs
    // (an element read may go stale): read it again until it is the
    // operator's own walk, finished.
    let deadline = Instant::now() + Duration::from_secs(60);
    let verdict = loop {
        let text = match b.find(Locator::Css("#verify")).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains("by api_key:") && !text.contains("waiting") && !text.contains("Verifying")
        {
            break text;
        }
        assert!(Instant::now() < deadline, "the walk never ended: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(verdict.starts_with("The chain is intact"), "{verdict}");
    shot(&b, &shots, "audit").await;

    b.close().await.unwrap();
}
