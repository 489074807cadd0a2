//! What the healing tests share: agents as `homeostat agent --exec`
//! processes, and settings that make healing quick enough to watch. Each
//! healing test is a test binary of its own: `cargo test` runs binaries one
//! at a time, so one test's processes never slow another's controllers.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Appends "<job id> <attempt>" to $LOG once it has worked 0–200 ms.
pub const WORK: &str = r#"
sleep "$(awk 'BEGIN { srand(); printf "%.3f", rand() * 0.2 }')"
echo "$HOMEOSTAT_JOB_ID $HOMEOSTAT_JOB_ATTEMPT" >> "$LOG"
"#;

pub const INTERVAL: Duration = Duration::from_secs(1);
pub const STALE: Duration = Duration::from_secs(4);
/// The controllers' lease TTL (the manager's default).
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// Settings that make healing quick enough to watch.
pub const QUICK: &[(&str, &str)] = &[
    ("HOMEOSTAT_API__HEARTBEAT_INTERVAL", "1s"),
    ("HOMEOSTAT_API__LEASE_TTL", "5s"),
    ("HOMEOSTAT_CONTROLLERS__AGENT_HEALTH__INTERVAL", "1s"),
    ("HOMEOSTAT_CONTROLLERS__AGENT_HEALTH__STALE_AFTER", "4s"),
    ("HOMEOSTAT_CONTROLLERS__JOB_RECOVERY__INTERVAL", "1s"),
    ("HOMEOSTAT_JOBS__RETRY_INITIAL", "1s"),
];

pub fn agent(server: &str, dir: &Path, n: usize, bootstrap: &str) -> Child {
    agent_running(server, dir, n, bootstrap, 4, WORK)
}

/// Agent `n` on the queue `work` of `servers` (comma-separated replicas),
/// running `script` under `sh -c` for each job, `concurrency` at a time,
/// with `$LOG` the directory's `work.log`.
pub fn agent_running(
    servers: &str,
    dir: &Path,
    n: usize,
    bootstrap: &str,
    concurrency: u32,
    script: &str,
) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
        .args(["agent", "--server", servers, "--queue", "work"])
        .args(["--concurrency", &concurrency.to_string()])
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
        .args(["--exec", "sh", "-c", script])
        .spawn()
        .unwrap()
}

/// Waits until agents `0..count` have registered (each saved its state
/// file).
pub async fn until_registered(dir: &Path, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (0..count).any(|n| !dir.join(format!("agent-{n}.json")).exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agents never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent id an agent process saved.
pub fn agent_id(dir: &Path, n: usize) -> String {
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("agent-{n}.json"))).unwrap(),
    )
    .unwrap();
    state["agent_id"].as_str().unwrap().to_owned()
}

pub fn timestamp(v: &serde_json::Value) -> jiff::Timestamp {
    v.as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
}
