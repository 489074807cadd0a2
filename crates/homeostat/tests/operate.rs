//! The operator's commands as real processes against `homeostat run`:
//! tables (snapshots, ids and times masked) and JSON, and the documented
//! exit codes with a message saying what to do.

mod common;

use std::process::Output;

use common::{client, data_dir, ready};
use serde_json::Value;

struct Cli {
    server: String,
    token: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
            .args(args)
            .env("HOMEOSTAT_SERVER", &self.server)
            .env("HOMEOSTAT_TOKEN", &self.token)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed: its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// [`Cli::json`] with `input` on standard input.
    fn json_with_stdin(&self, args: &[&str], input: &str) -> Value {
        use std::io::Write;
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
            .args(args)
            .args(["-o", "json"])
            .env("HOMEOSTAT_SERVER", &self.server)
            .env("HOMEOSTAT_TOKEN", &self.token)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A server on a fresh directory, and the CLI against it with its admin
/// key.
async fn cli_on_a_new_server() -> (std::path::PathBuf, common::Server, Cli) {
    let dir = data_dir();
    let server = common::start(&dir);
    ready(&client(), &server).await;
    let cli = Cli {
        server: server.url(""),
        token: server.admin_key().unwrap(),
    };
    (dir, server, cli)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_commands() {
    let (dir, server, cli) = cli_on_a_new_server().await;
    let c = client();
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[id]",
    );
    settings.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[time]");
    settings.add_filter(r"hs[bk]_[0-9a-f]{64}", "[secret]");
    let _guard = settings.bind_to_scope();

    let tenant = cli.json(&["tenants", "create", "acme", "--tier", "premium"]);
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    insta::assert_snapshot!("tenants_list", cli.ok(&["tenants", "list"]));
    let usage = cli.json(&["tenants", "usage", &tenant_id]);
    assert_eq!(usage["live_jobs"], 0, "{usage}");
    assert_eq!(usage["limits"]["live_queues"], 1000, "{usage}");

    let created = cli.ok(&[
        "jobs",
        "enqueue",
        "--queue",
        "builds",
        "--kind",
        "compile",
        "--tenant",
        &tenant_id,
        "--payload",
        r#"{"ref":"main"}"#,
        "--fingerprint",
        "main",
    ]);
    let job_id = created.split_whitespace().next().unwrap().to_owned();
    insta::assert_snapshot!("jobs_enqueue", created);
    insta::assert_snapshot!(
        "jobs_enqueue_again",
        cli.ok(&[
            "jobs",
            "enqueue",
            "--queue",
            "builds",
            "--kind",
            "compile",
            "--tenant",
            &tenant_id,
            "--fingerprint",
            "main"
        ])
    );
    // Every field the API takes: a schedule, an approval, a deadline, and a
    // key that makes a rerun harmless.
    let later = cli.json(&[
        "jobs",
        "enqueue",
        "--queue",
        "reports",
        "--kind",
        "nightly",
        "--tenant",
        &tenant_id,
        "--run-at",
        "2099-01-01T00:00:00Z",
        "--deadline",
        "2099-01-01T06:00:00Z",
        "--idempotency-key",
        "nightly-2099-01-01",
    ]);
    assert_eq!(later["job"]["state"], "scheduled", "{later}");
    assert_eq!(later["job"]["deadline"], "2099-01-01T06:00:00Z", "{later}");
    let again = cli.json(&[
        "jobs",
        "enqueue",
        "--queue",
        "reports",
        "--kind",
        "nightly",
        "--tenant",
        &tenant_id,
        "--run-at",
        "2099-01-01T00:00:00Z",
        "--idempotency-key",
        "nightly-2099-01-01",
    ]);
    assert_eq!(
        again["job"]["id"], later["job"]["id"],
        "the key enqueued twice"
    );
    let gated = cli.json(&[
        "jobs",
        "enqueue",
        "--queue",
        "deploys",
        "--kind",
        "prod",
        "--tenant",
        &tenant_id,
        "--approval-expires-at",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(gated["job"]["state"], "awaiting_approval", "{gated}");
    for id in [&later["job"]["id"], &gated["job"]["id"]] {
        cli.ok(&["jobs", "cancel", id.as_str().unwrap()]);
    }
    insta::assert_snapshot!("jobs_list", cli.ok(&["jobs", "list", "--queue", "builds"]));
    let lines = cli.ok(&["jobs", "list", "--queue", "builds", "-o", "jsonl"]);
    assert_eq!(lines.lines().count(), 1);
    let shown = cli.json(&["jobs", "show", &job_id]);
    assert_eq!(shown["payload"], serde_json::json!({"ref": "main"}));
    assert_eq!(shown["occurrences"], 2);
    insta::assert_snapshot!("jobs_cancel", cli.ok(&["jobs", "cancel", &job_id]));
    insta::assert_snapshot!("jobs_show", cli.ok(&["jobs", "show", &job_id]));

    // Documented exit codes, with what to do next.
    let again = cli.run(&["jobs", "cancel", &job_id]);
    assert_eq!(again.status.code(), Some(4), "a conflict");
    assert!(String::from_utf8_lossy(&again.stderr).contains("conflict"));
    let missing = cli.run(&["jobs", "show", &homeostat_model::new_id().to_string()]);
    assert_eq!(missing.status.code(), Some(3), "not found");
    let bad_id = cli.run(&["jobs", "show", "not-an-id"]);
    assert_eq!(bad_id.status.code(), Some(2), "a usage error");
    let wrong = Cli {
        server: cli.server.clone(),
        token: "hsk_wrong".into(),
    };
    let denied = wrong.run(&["jobs", "list"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("HOMEOSTAT_TOKEN"));
    let nowhere = Cli {
        server: "http://127.0.0.1:9".into(),
        token: cli.token.clone(),
    };
    let unreachable = nowhere.run(&["jobs", "list"]);
    assert_eq!(unreachable.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("is the server running"));

    // A job watched to its end: exit 1, it was cancelled.
    let watch = cli.run(&["jobs", "watch", &job_id]);
    assert_eq!(watch.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&watch.stdout).contains("cancelled"));

    let key = cli.ok(&[
        "tokens", "create", "--type", "api_key", "--tenant", &tenant_id,
    ]);
    insta::assert_snapshot!("tokens_create", key);
    let keys = cli.json(&["tokens", "list"]);
    assert_eq!(
        keys.as_array().unwrap().len(),
        2,
        "the admin key and the new one"
    );
    assert!(
        !serde_json::to_string(&keys).unwrap().contains("hsk_"),
        "a secret in a listing"
    );

    // A compromised agent, revoked: refused at its next request, its job
    // queued again at once.
    let bootstrap = common::post_json(
        &c,
        server.url("/v1/bootstrap-tokens"),
        Some(&cli.token),
        &serde_json::json!({"tenant_id": tenant_id}),
    )
    .await;
    let agent = common::post_json(
        &c,
        server.url("/v1/agent/register"),
        None,
        &serde_json::json!({"bootstrap_token": bootstrap["secret"], "agent": {"name": "n1", "queues": ["builds"]}}),
    )
    .await;
    let (agent_id, credential) = (
        agent["agent_id"].as_str().unwrap().to_owned(),
        agent["credential"].as_str().unwrap().to_owned(),
    );
    let running = cli.ok(&[
        "jobs", "enqueue", "--queue", "builds", "--kind", "compile", "--tenant", &tenant_id,
    ]);
    let running = running.split_whitespace().next().unwrap().to_owned();
    let claimed = common::post_json(
        &c,
        server.url("/v1/agent/claim"),
        Some(&credential),
        &serde_json::json!({"capacity": 1, "wait_secs": 0}),
    )
    .await;
    assert_eq!(claimed["jobs"][0]["id"], running.as_str(), "{claimed}");
    let credentials = cli.json(&["agents", "credentials", &agent_id]);
    assert_eq!(credentials.as_array().unwrap().len(), 1, "{credentials}");
    assert!(credentials[0]["revoked_at"].is_null());
    assert_eq!(
        cli.ok(&["agents", "revoke", &agent_id]).trim(),
        format!("{agent_id}: 1 credential(s) revoked, offline; 1 running job(s) reclaimed")
    );
    let heartbeat = c
        .post(server.url("/v1/agent/heartbeat"))
        .bearer_auth(&credential)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(heartbeat.status(), 401);
    assert_eq!(cli.json(&["jobs", "show", &running])["state"], "queued");
    let credentials = cli.json(&["agents", "credentials", &agent_id]);
    assert!(!credentials[0]["revoked_at"].is_null(), "{credentials}");
    // Offline now, so it can be removed; its job keeps its id.
    assert_eq!(
        cli.ok(&["agents", "remove", &agent_id]).trim(),
        format!("{agent_id} (n1) removed")
    );
    assert_eq!(
        cli.run(&["agents", "show", &agent_id]).status.code(),
        Some(3),
        "removed"
    );
    assert_eq!(
        cli.run(&["agents", "remove", &agent_id]).status.code(),
        Some(3)
    );

    let controllers = cli.ok(&["controllers", "list"]);
    assert!(controllers.contains("job-scheduler"), "{controllers}");
    let plan = cli.ok(&["controllers", "plan", "job-recovery"]);
    assert!(
        plan.starts_with("job-recovery would change 0 item(s)"),
        "{plan}"
    );
    assert_eq!(
        cli.run(&["controllers", "trigger", "nope"]).status.code(),
        Some(3)
    );
    insta::assert_snapshot!("notifications_dead", cli.ok(&["notifications", "dead"]));
    insta::assert_snapshot!("audit_verify", cli.ok(&["audit", "verify"]));
    let walks = cli.ok(&["audit", "verifications"]);
    assert!(
        walks.starts_with("ID") && walks.contains("intact"),
        "{walks}"
    );
    let asked = cli.ok(&["audit", "verify", "--no-wait", "-o", "json"]);
    let asked: serde_json::Value = serde_json::from_str(&asked).unwrap();
    assert!(asked["id"].is_string(), "{asked}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The JSON example of docs/workflows.md, as written there.
/// docs/workflows.md's example in `lang` (its first such block).
fn the_documented_pipeline(lang: &str) -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/workflows.md"
    ))
    .unwrap();
    let fence = format!("```{lang}\n");
    let start = doc
        .find(&fence)
        .unwrap_or_else(|| panic!("docs/workflows.md has a {lang} example"))
        + fence.len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflows_commands() {
    let (dir, server, cli) = cli_on_a_new_server().await;
    let tenant = cli.json(&["tenants", "create", "acme"]);
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    let file = dir.join("release.json");
    std::fs::write(&file, the_documented_pipeline("json")).unwrap();
    let file = file.to_str().unwrap();
    let made = cli.json(&["workflows", "submit", file, "--tenant", &tenant_id]);
    assert_eq!(made["state"], "running", "{made}");
    assert_eq!(made["steps"][0]["state"], "queued", "{made}");
    assert_eq!(
        made["steps"][3]["needs"],
        serde_json::json!(["test-unit", "test-e2e"])
    );
    let id = made["id"].as_str().unwrap().to_owned();
    let shown = cli.ok(&["workflows", "show", &id]);
    assert!(shown.contains("release-1.4: running"), "{shown}");
    assert!(shown.contains("STEP"), "{shown}");
    assert!(shown.contains("test-unit,test-e2e"), "{shown}");
    assert!(shown.contains("on_failure"), "{shown}");
    let listed = cli.ok(&["workflows", "list"]);
    assert!(listed.starts_with("ID"), "{listed}");
    assert!(
        listed.contains("release-1.4") && listed.contains("running"),
        "{listed}"
    );
    let cancelled = cli.ok(&["workflows", "cancel", &id]);
    assert!(cancelled.contains("release-1.4: cancelled"), "{cancelled}");
    let retried = cli.json(&["workflows", "retry", &id]);
    assert_eq!(retried["state"], "running", "{retried}");
    let running = cli.run(&["workflows", "retry", &id]);
    assert_eq!(running.status.code(), Some(4), "a conflict: it runs");

    // The YAML example is the same workflow, from a file or standard input.
    let yaml = dir.join("release.yaml");
    std::fs::write(&yaml, the_documented_pipeline("yaml")).unwrap();
    let from_yaml = cli.json(&[
        "workflows",
        "submit",
        yaml.to_str().unwrap(),
        "--tenant",
        &tenant_id,
    ]);
    let shape = |w: &serde_json::Value| -> Vec<(String, String, String, String)> {
        w["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].to_string(),
                    s["needs"].to_string(),
                    s["when"].to_string(),
                    s["state"].to_string(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&from_yaml), shape(&made), "{from_yaml}");
    let piped = cli.json_with_stdin(
        &["workflows", "submit", "-", "--tenant", &tenant_id],
        &the_documented_pipeline("yaml"),
    );
    assert_eq!(shape(&piped), shape(&made), "{piped}");
    let bad_yaml = dir.join("bad.yml");
    std::fs::write(
        &bad_yaml,
        "name: x\nsteps:\n  - name: a\n    job: [unclosed\n",
    )
    .unwrap();
    let refused = cli.run(&["workflows", "submit", bad_yaml.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("not a workflow") && said.contains("line"),
        "{said}"
    );

    // A file that is not a workflow is a usage error naming the step.
    let bad = dir.join("loop.json");
    std::fs::write(
        &bad,
        r#"{"name": "loop", "steps": [
            {"name": "a", "job": {"queue": "q", "kind": "k"}, "needs": ["b"]},
            {"name": "b", "job": {"queue": "q", "kind": "k"}, "needs": ["a"]}]}"#,
    )
    .unwrap();
    let refused = cli.run(&["workflows", "submit", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("needs itself"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let missing = cli.run(&["workflows", "show", "0190a8f0-0000-7000-8000-000000000000"]);
    assert_eq!(missing.status.code(), Some(3), "not found");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_commands() {
    let (dir, server, cli) = cli_on_a_new_server().await;
    let tenant = cli.json(&["tenants", "create", "acme"]);
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();
    let set = cli.ok(&["limits", "set", "per-customer", "--max-running", "1"]);
    assert_eq!(set.trim(), "limit per-customer set");
    let rated = cli.ok(&[
        "limits",
        "set",
        "github",
        "--rate",
        "10/60",
        "--key-from",
        "tenant",
        "--queue",
        "sync",
    ]);
    assert_eq!(rated.trim(), "limit github set");
    let bad = cli.run(&["limits", "set", "x", "--rate", "ten"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("STARTS/SECONDS"));
    let refused = cli.run(&["limits", "set", "x"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("max_running"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let mut ids = Vec::new();
    for _ in 0..2 {
        let e = cli.json(&[
            "jobs",
            "enqueue",
            "--queue",
            "builds",
            "--kind",
            "compile",
            "--tenant",
            &tenant_id,
            "--limit",
            "per-customer=42",
        ]);
        ids.push(e["id"].as_str().unwrap().to_owned());
    }
    let second = cli.ok(&["jobs", "show", &ids[1]]);
    assert!(
        second.contains("waiting for per-customer:42, 1 of 1 running"),
        "{second}"
    );
    let listed = cli.ok(&["limits", "list"]);
    assert!(listed.starts_with("NAME"), "{listed}");
    assert!(listed.contains("10/60s"), "{listed}");
    let shown = cli.ok(&["limits", "show", "per-customer"]);
    assert!(shown.contains("busiest keys"), "{shown}");
    assert!(shown.contains(&tenant_id), "whose key it is: {shown}");
    let json = cli.json(&["limits", "show", "per-customer"]);
    assert_eq!(json["waiting"], 1, "{json}");
    assert_eq!(json["hottest"][0]["key"], "42", "{json}");
    assert_eq!(json["hottest"][0]["tenant"], tenant_id.as_str(), "{json}");
    assert_eq!(json["spec"]["scope"], "tenant", "the default: {json}");
    let shared = cli.json(&[
        "limits",
        "set",
        "upstream",
        "--max-running",
        "5",
        "--scope",
        "shared",
    ]);
    assert_eq!(shared["spec"]["scope"], "shared", "{shared}");
    let bad_scope = cli.run(&["limits", "set", "x", "--max-running", "1", "--scope", "all"]);
    assert_eq!(bad_scope.status.code(), Some(2), "a usage error");
    assert!(
        String::from_utf8_lossy(&bad_scope.stderr).contains("tenant, shared"),
        "{}",
        String::from_utf8_lossy(&bad_scope.stderr)
    );

    assert_eq!(
        cli.ok(&["limits", "delete", "per-customer"]).trim(),
        "limit per-customer deleted"
    );
    let job = cli.json(&["jobs", "show", &ids[1]]);
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(
        cli.run(&["limits", "delete", "per-customer"]).status.code(),
        Some(3)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
