//! A workflow end to end with real agents, one SIGKILLed midway: build,
//! then three tests in parallel, then a deploy that waits for an approval.
//! The agent running a test is killed; its step is reclaimed and runs on
//! another agent; the deploy runs once, after every test, with how each
//! ended on its standard input; each step's successful attempt ran once.
//! Wall clocks only guard against hangs.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::fleet::{QUICK, agent_id, agent_running, until_registered};
use common::{client, data_dir, get_json, post_json, ready};
use serde_json::{Value, json};

/// Records each step's start and end, keeps what it read on standard
/// input, and makes the tests last long enough to kill one midway.
const STEP: &str = r#"
echo "start $HOMEOSTAT_WORKFLOW_STEP $HOMEOSTAT_JOB_ATTEMPT" >> "$LOG"
cat > "$LOG.$HOMEOSTAT_WORKFLOW_STEP.$HOMEOSTAT_JOB_ATTEMPT"
case "$HOMEOSTAT_WORKFLOW_STEP" in test-*) sleep 3 ;; esac
echo "end $HOMEOSTAT_WORKFLOW_STEP $HOMEOSTAT_JOB_ATTEMPT" >> "$LOG"
echo "{\"step\": \"$HOMEOSTAT_WORKFLOW_STEP\"}"
"#;

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let hang_guard = Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(Instant::now() < hang_guard, "{what}: not within 90 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("work.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_survives_a_killed_agent_and_runs_each_step_once() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let c = client();
    let server = common::start_with(&dir.join("data"), QUICK);
    ready(&c, &server).await;
    let admin = server.admin_key().unwrap();
    let (tenant, bootstrap) = common::tenant_and_bootstrap(&c, &server, &admin, "acme", 3).await;
    let url = server.url("");
    let mut agents: Vec<Child> = (0..3)
        .map(|n| agent_running(&url, &dir, n, &bootstrap, 1, STEP))
        .collect();
    until_registered(&dir, 3).await;

    let step = |name: &str, needs: &[&str]| json!({"name": name, "job": {"queue": "work", "kind": name}, "needs": needs});
    let mut deploy = step("deploy", &["test-1", "test-2", "test-3"]);
    deploy["job"]["approval_expires_at"] = json!("2099-01-01T00:00:00Z");
    let wf = post_json(
        &c,
        server.url("/v1/workflows"),
        Some(&admin),
        &json!({
            "tenant_id": tenant["id"],
            "name": "release",
            "steps": [
                step("build", &[]),
                step("test-1", &["build"]),
                step("test-2", &["build"]),
                step("test-3", &["build"]),
                deploy,
            ],
        }),
    )
    .await;
    let id = wf["id"].as_str().unwrap().to_owned();
    let job_of = |wf: &Value, name: &str| -> String {
        wf["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // The three tests run at once, one on each agent: kill test-2's.
    until("the three tests started", || async {
        let lines = log(&dir);
        (1..=3).all(|i| lines.contains(&format!("start test-{i} 1")))
    })
    .await;
    let test2 = get_json(
        &c,
        server.url(&format!("/v1/jobs/{}", job_of(&wf, "test-2"))),
        &admin,
    )
    .await;
    let holder = test2["lease_agent"].as_str().unwrap().to_owned();
    let n = (0..3).find(|&n| agent_id(&dir, n) == holder).unwrap();
    agents[n].kill().unwrap();
    agents[n].wait().unwrap();

    // The deploy waits for its approval once every test has succeeded.
    let deploy_job = job_of(&wf, "deploy");
    until("the deploy awaits its approval", || async {
        let j = get_json(&c, server.url(&format!("/v1/jobs/{deploy_job}")), &admin).await;
        j["state"] == "awaiting_approval"
    })
    .await;
    assert!(
        !log(&dir).iter().any(|l| l.starts_with("start deploy")),
        "the deploy started before its approval"
    );
    post_json(
        &c,
        server.url(&format!("/v1/jobs/{deploy_job}/approve")),
        Some(&admin),
        &json!(null),
    )
    .await;
    until("the workflow succeeded", || async {
        let w = get_json(&c, server.url(&format!("/v1/workflows/{id}")), &admin).await;
        w["state"] == "succeeded"
    })
    .await;
    for a in &mut agents {
        let _ = Command::new("kill")
            .args(["-TERM", &a.id().to_string()])
            .status();
    }
    for a in &mut agents {
        let _ = a.wait();
    }

    let lines = log(&dir);
    let position = |line: &str| lines.iter().position(|l| l == line);
    // Each step's successful attempt ran once, to its end.
    for name in ["build", "test-1", "test-2", "test-3", "deploy"] {
        let ends = lines
            .iter()
            .filter(|l| l.starts_with(&format!("end {name} ")))
            .count();
        assert_eq!(ends, 1, "{name} ended {ends} times: {lines:?}");
    }
    // The killed attempt never ended; its second attempt did, elsewhere.
    assert_eq!(position("end test-2 1"), None, "{lines:?}");
    let rerun = position("end test-2 2").expect("test-2 ran again");
    // Order: the tests after the build, the deploy after every test.
    let built = position("end build 1").unwrap();
    for i in 1..=3 {
        assert!(position(&format!("start test-{i} 1")).unwrap() > built);
    }
    let deployed = position("start deploy 1").unwrap();
    assert!(deployed > rerun && deployed > position("end test-1 1").unwrap());
    assert!(deployed > position("end test-3 1").unwrap());
    // The deploy read how its needs ended beside its payload.
    let input: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("work.log.deploy.1")).unwrap())
            .unwrap();
    assert_eq!(input["workflow"]["step"], "deploy");
    assert_eq!(input["workflow"]["succeeded"], 3, "{input}");
    assert_eq!(
        input["workflow"]["needs"]["test-2"]["result"],
        json!({"step": "test-2"})
    );
    let _ = std::fs::remove_dir_all(&dir);
}
