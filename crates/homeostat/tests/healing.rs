//! End to end on SQLite, as a user runs it: `homeostat run`, three
//! `homeostat agent --exec` processes, 300 jobs, and an agent killed with
//! SIGKILL four times. Every job ends succeeded, completed once; each killed
//! agent is marked offline within agent-health's interval + stale threshold
//! + 1 s, and its jobs run elsewhere; the audit chain verifies.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, data_dir, get_json, post_json, ready};
use serde_json::json;

/// Appends "<job id> <attempt>" to $LOG once it has worked 0–200 ms.
const WORK: &str = r#"
sleep "$(awk 'BEGIN { srand(); printf "%.3f", rand() * 0.2 }')"
echo "$HOMEOSTAT_JOB_ID $HOMEOSTAT_JOB_ATTEMPT" >> "$LOG"
"#;

const INTERVAL: Duration = Duration::from_secs(1);
const STALE: Duration = Duration::from_secs(3);

fn agent(server: &str, dir: &Path, n: usize, bootstrap: &str) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
        .args([
            "agent",
            "--server",
            server,
            "--queue",
            "work",
            "--concurrency",
            "4",
        ])
        .args([
            "--name",
            &format!("agent-{n}"),
            "--bootstrap-token",
            bootstrap,
        ])
        .arg("--state-file")
        .arg(dir.join(format!("agent-{n}.json")))
        .env("LOG", dir.join("work.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .args(["--exec", "sh", "-c", WORK])
        .spawn()
        .unwrap()
}

/// The agent id an agent process saved.
fn agent_id(dir: &Path, n: usize) -> String {
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("agent-{n}.json"))).unwrap(),
    )
    .unwrap();
    state["agent_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agents_are_healed_around_and_every_job_completes_once() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let c = client();
    let server = common::start_with(
        &dir.join("data"),
        &[
            ("HOMEOSTAT_API__HEARTBEAT_INTERVAL", "1s"),
            ("HOMEOSTAT_API__LEASE_TTL", "5s"),
            ("HOMEOSTAT_CONTROLLERS__AGENT_HEALTH__INTERVAL", "1s"),
            ("HOMEOSTAT_CONTROLLERS__AGENT_HEALTH__STALE_AFTER", "3s"),
            ("HOMEOSTAT_CONTROLLERS__JOB_RECOVERY__INTERVAL", "1s"),
            ("HOMEOSTAT_JOBS__RETRY_INITIAL", "1s"),
        ],
    );
    ready(&c, &server).await;
    let admin = server.admin_key().unwrap();
    let tenant = post_json(
        &c,
        server.url("/v1/tenants"),
        Some(&admin),
        &json!({"name": "acme"}),
    )
    .await;
    let bootstrap = post_json(
        &c,
        server.url("/v1/bootstrap-tokens"),
        Some(&admin),
        &json!({"tenant_id": tenant["id"], "uses": 3}),
    )
    .await;
    let bootstrap = bootstrap["secret"].as_str().unwrap().to_owned();
    let url = server.url("");
    let mut agents: Vec<Child> = (0..3).map(|n| agent(&url, &dir, n, &bootstrap)).collect();
    // Each has registered (its state file) before jobs arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..3).any(|n| !dir.join(format!("agent-{n}.json")).exists()) {
        assert!(Instant::now() < deadline, "the agents never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let jobs: Vec<_> = (0..300)
        .map(|i| json!({"queue": "work", "kind": "step", "payload": {"i": i}}))
        .collect();
    let enqueued = post_json(
        &c,
        server.url("/v1/jobs"),
        Some(&admin),
        &json!({"tenant_id": tenant["id"], "jobs": jobs}),
    )
    .await;
    let ids: Vec<String> = enqueued["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 300);

    // Four times: SIGKILL an agent, see it go offline within the bound,
    // start it again (it resumes with its saved credential).
    let mut seed = 7u64;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = (seed >> 33) as usize % 3;
        let id = agent_id(&dir, n);
        agents[n].kill().unwrap();
        agents[n].wait().unwrap();
        let killed = Instant::now();
        loop {
            let a = get_json(&c, server.url(&format!("/v1/agents/{id}")), &admin).await;
            if a["status"] == "offline" {
                break;
            }
            assert!(
                killed.elapsed() < INTERVAL + STALE + Duration::from_secs(1),
                "agent {n} still {} {:?} after SIGKILL",
                a["status"],
                killed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        agents[n] = agent(&url, &dir, n, &bootstrap);
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let page = get_json(&c, server.url("/v1/jobs?state=succeeded&limit=500"), &admin).await;
        if page["items"].as_array().unwrap().len() == 300 {
            break;
        }
        assert!(Instant::now() < deadline, "not every job succeeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for a in &mut agents {
        Command::new("kill")
            .args(["-TERM", &a.id().to_string()])
            .status()
            .unwrap();
    }
    for a in &mut agents {
        a.wait().unwrap();
    }

    // Every job's command finished at least once; a job that ran more than
    // once did so because an attempt was reclaimed, which its record shows.
    let log = std::fs::read_to_string(dir.join("work.log")).unwrap();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in log.lines() {
        *runs
            .entry(line.split_whitespace().next().unwrap())
            .or_default() += 1;
    }
    for id in &ids {
        let n = runs.get(id.as_str()).copied().unwrap_or(0);
        assert!(n >= 1, "job {id} never ran to its end");
        if n > 1 {
            let job = get_json(&c, server.url(&format!("/v1/jobs/{id}")), &admin).await;
            assert!(
                !job["attempts"].as_array().unwrap().is_empty(),
                "job {id} ran {n} times with no attempt reclaimed: {job}"
            );
        }
    }
    // Completed once: one success each, never a stale completion accepted.
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("status=\"500\""),
        "a server error: {metrics}"
    );
    let verify = Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
        .args(["audit", "verify", "--server", &url, "--token", &admin])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
