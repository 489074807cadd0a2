//! End to end, as a user runs it, with processes killed by SIGKILL.
//!
//! SQLite: `homeostat run`, three `homeostat agent --exec` processes, 300
//! jobs, an agent killed four times. Every job ends succeeded, completed
//! once; each killed agent is marked offline within agent-health's interval
//! plus its stale threshold plus 1 s of its last heartbeat (the audited
//! time against the agent's last heartbeat, both the server's), and its
//! jobs run elsewhere; the audit chain verifies.
//!
//! PostgreSQL: two replicas, agents split between them; the replica leading
//! agent-health and job-recovery is killed midway. The other runs both
//! within an interval + 1 s of the dead leader's leases running out (the
//! lease rows' expiry against the runs' start times), no controller ever
//! wrote under two leaders at once (audit epochs), and every job still
//! ends succeeded. Wall clocks only guard against hangs.

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

/// Both tests time how fast healing happens, each with its own server,
/// agents and (PostgreSQL) replicas; run side by side on two cores, one's
/// processes delayed the other's controllers past the bound. One at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const INTERVAL: Duration = Duration::from_secs(1);
const STALE: Duration = Duration::from_secs(4);
/// The controllers' lease TTL (the manager's default).
const LEASE_TTL: Duration = Duration::from_secs(15);

/// Settings that make healing quick enough to watch.
const QUICK: &[(&str, &str)] = &[
    ("HOMEOSTAT_API__HEARTBEAT_INTERVAL", "1s"),
    ("HOMEOSTAT_API__LEASE_TTL", "5s"),
    ("HOMEOSTAT_CONTROLLERS__AGENT_HEALTH__INTERVAL", "1s"),
    ("HOMEOSTAT_CONTROLLERS__AGENT_HEALTH__STALE_AFTER", "4s"),
    ("HOMEOSTAT_CONTROLLERS__JOB_RECOVERY__INTERVAL", "1s"),
    ("HOMEOSTAT_JOBS__RETRY_INITIAL", "1s"),
];

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
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let c = client();
    let server = common::start_with(&dir.join("data"), QUICK);
    ready(&c, &server).await;
    let admin = server.admin_key().unwrap();
    let (tenant, bootstrap) = common::tenant_and_bootstrap(&c, &server, &admin, "acme", 3).await;
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
        // A wall clock only guards against a hang; the bound is checked on
        // the server's own times: its last heartbeat from the agent, and
        // the audited moment agent-health marked it offline.
        let hang_guard = Instant::now() + Duration::from_secs(60);
        let last_heard = loop {
            let a = get_json(&c, server.url(&format!("/v1/agents/{id}")), &admin).await;
            if a["status"] == "offline" {
                break timestamp(&a["last_heartbeat_at"]);
            }
            assert!(
                Instant::now() < hang_guard,
                "agent {n} still {} a minute after SIGKILL",
                a["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let offline = offline_at(&c, &server, &admin, &id).await;
        let silence = offline.duration_since(last_heard);
        assert!(
            silence
                <= jiff::SignedDuration::try_from(INTERVAL + STALE + Duration::from_secs(1))
                    .unwrap(),
            "agent {n} marked offline {silence:?} after its last heartbeat"
        );
        agents[n] = agent(&url, &dir, n, &bootstrap);
    }

    common::until_succeeded(&c, &server, &admin, 300, Duration::from_secs(120)).await;
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

/// Who leads `name`, by `server`'s account.
fn timestamp(v: &serde_json::Value) -> jiff::Timestamp {
    v.as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
}

/// When the audit log says agent-health last marked agent `id` offline.
async fn offline_at(
    c: &reqwest::Client,
    server: &common::Server,
    key: &str,
    id: &str,
) -> jiff::Timestamp {
    let mut after = 0;
    let mut at = None;
    loop {
        let url = server.url(&format!("/v1/audit?limit=1000&after={after}"));
        let page = get_json(c, url, key).await;
        for e in page["items"].as_array().unwrap() {
            let ids = e["details"]["ids"].as_array();
            if e["action"] == "agents.offline" && ids.is_some_and(|ids| ids.iter().any(|x| x == id))
            {
                at = Some(timestamp(&e["at"]));
            }
        }
        match page["next_cursor"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    at.unwrap_or_else(|| panic!("no agents.offline event names agent {id}"))
}

async fn leader(
    c: &reqwest::Client,
    server: &common::Server,
    key: &str,
    name: &str,
) -> Option<String> {
    controller(c, server, key, name).await["leader_replica"]
        .as_str()
        .map(str::to_owned)
}

/// Controller `name` as `server` lists it.
async fn controller(
    c: &reqwest::Client,
    server: &common::Server,
    key: &str,
    name: &str,
) -> serde_json::Value {
    let all = get_json(c, server.url("/v1/controllers"), key).await;
    all["items"]
        .as_array()
        .and_then(|items| items.iter().find(|x| x["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no controller {name}: {all}"))
}

/// When controller `name`'s lease runs out, as the database has it (ms).
fn lease_expiry(test: &homeostat_testkit::TestStore, name: &str) -> i64 {
    let out = Command::new("psql")
        .args([&homeostat_testkit::pg_url().unwrap(), "-qAtc"])
        .arg(format!(
            "SELECT expires_at FROM {}.leases WHERE name = '{name}'",
            test.schema().unwrap()
        ))
        .output()
        .expect("psql runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no lease {name}: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_hands_its_controllers_over_and_no_job_is_lost() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(test) = homeostat_testkit::postgres().await else {
        return;
    };
    let db = format!(
        "{}?options[search_path]={}",
        homeostat_testkit::pg_url().unwrap(),
        test.schema().unwrap()
    );
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let c = client();
    let mut env = QUICK.to_vec();
    env.push(("HOMEOSTAT_DATABASE_URL", db.as_str()));
    let mut one = common::start_with(&dir.join("one"), &env);
    ready(&c, &one).await;
    let admin = one.admin_key().unwrap();
    let two = common::start_with(&dir.join("two"), &env);
    ready(&c, &two).await;
    // The first replica leads agent-health and job-recovery.
    let holder_one = loop {
        if let (Some(a), Some(b)) = (
            leader(&c, &one, &admin, "agent-health").await,
            leader(&c, &one, &admin, "job-recovery").await,
        ) && a == b
        {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (tenant, bootstrap) = common::tenant_and_bootstrap(&c, &one, &admin, "acme", 3).await;
    // Two agents on the first replica, one on the second.
    let (url_one, url_two) = (one.url(""), two.url(""));
    let mut agents: Vec<Child> = vec![
        agent(&url_one, &dir, 0, &bootstrap),
        agent(&url_one, &dir, 1, &bootstrap),
        agent(&url_two, &dir, 2, &bootstrap),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..3).any(|n| !dir.join(format!("agent-{n}.json")).exists()) {
        assert!(Instant::now() < deadline, "the agents never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let jobs: Vec<_> = (0..300)
        .map(|i| json!({"queue": "work", "kind": "step", "payload": {"i": i}}))
        .collect();
    post_json(
        &c,
        two.url("/v1/jobs"),
        Some(&admin),
        &json!({"tenant_id": tenant["id"], "jobs": jobs}),
    )
    .await;
    // Midway, the leader dies.
    common::until_succeeded(&c, &two, &admin, 100, Duration::from_secs(60)).await;
    one.child.kill().unwrap();
    one.child.wait().unwrap();
    // The dead leader's leases run out when the database says; the other
    // replica's first run of each controller comes within an interval of
    // that, never before (both on the server's clocks). A wall clock only
    // guards against a hang.
    let expiries: Vec<(&str, i64)> = ["agent-health", "job-recovery"]
        .into_iter()
        .map(|name| (name, lease_expiry(&test, name)))
        .collect();
    let hang_guard = Instant::now() + LEASE_TTL + Duration::from_secs(60);
    for (name, expires_ms) in expiries {
        let first_run_ms = loop {
            let status = controller(&c, &two, &admin, name).await;
            let led_here = status["leader_replica"]
                .as_str()
                .is_some_and(|h| h != holder_one);
            let started = status["last_run"]["started_at"].as_i64();
            if let Some(started) = started.filter(|s| led_here && *s >= expires_ms - 1_000) {
                break started;
            }
            assert!(Instant::now() < hang_guard, "{name} never taken over");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let late = first_run_ms - expires_ms;
        assert!(
            (0..=i64::try_from((INTERVAL + Duration::from_secs(1)).as_millis()).unwrap())
                .contains(&late),
            "{name}: the new leader's first run started {late} ms after the dead leader's lease ran out"
        );
    }
    // Every job ends succeeded: the first replica's agents are cut off,
    // their jobs come back when their leases expire or they go offline.
    common::until_succeeded(&c, &two, &admin, 300, Duration::from_secs(120)).await;
    for a in &mut agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    // No controller wrote under two leaders at once: in the audit log, each
    // controller's epochs never go back.
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let url = two.url(&format!("/v1/audit?limit=1000&after={after}"));
        let page = get_json(&c, url, &admin).await;
        events.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    let mut last: HashMap<String, u64> = HashMap::new();
    for e in &events {
        let actor = e["actor"].as_str().unwrap();
        let Some(rest) = actor.strip_prefix("controller:") else {
            continue;
        };
        let (name, epoch) = rest.rsplit_once('@').unwrap();
        let epoch: u64 = epoch.parse().unwrap();
        let prev = last.insert(name.to_owned(), epoch).unwrap_or(0);
        assert!(
            epoch >= prev,
            "{name} wrote at epoch {epoch} after epoch {prev}"
        );
    }
    let verify = common::verify_audit(&c, &two, &admin).await;
    assert_eq!(verify["state"], json!("intact"), "{verify}");
    drop(two);
    test.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}
