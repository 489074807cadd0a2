//! End to end, as a user runs it, with processes killed by SIGKILL.
//!
//! SQLite: `homeostat run`, three `homeostat agent --exec` processes, 300
//! jobs, an agent killed four times. Every job ends succeeded, completed
//! once; each killed agent is marked offline within agent-health's interval
//! plus its stale threshold plus 1 s of its last heartbeat (the audited
//! time against the agent's last heartbeat, both the server's), and its
//! jobs run elsewhere; the audit chain verifies. Wall clocks only guard against hangs. The PostgreSQL failover is
//! `failover.rs`.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::fleet::{INTERVAL, QUICK, STALE, agent, agent_id, timestamp, until_registered};
use common::{client, data_dir, get_json, post_json, ready};
use serde_json::json;

/// What agent-health's own records show that documentedly lengthens the
/// time to judge an agent silent: a failed run (silence is judged again
/// from a full stale timeout after the next run reaches the store), a run
/// cut at its timeout (the judgement waits a run), a brake on a mass
/// silence (the next run decides).
#[derive(Debug, Default, Clone, Copy)]
struct Delays {
    failed: u64,
    timed_out: u64,
    braked: u64,
}

impl Delays {
    fn since(self, before: &Delays) -> Delays {
        Delays {
            failed: self.failed - before.failed,
            timed_out: self.timed_out - before.timed_out,
            braked: self.braked - before.braked,
        }
    }

    fn allowance(self) -> Duration {
        let after_failure = if self.failed > 0 {
            STALE + INTERVAL * 3
        } else {
            Duration::ZERO
        };
        after_failure + INTERVAL * u32::try_from(self.timed_out + self.braked).unwrap_or(u32::MAX)
    }
}

async fn delays(c: &reqwest::Client, server: &common::Server, admin: &str) -> Delays {
    let text = common::metrics(c, server).await;
    let runs = |outcome: &str| -> u64 {
        let series = format!(
            "homeostat_controller_reconcile_total{{controller=\"agent-health\",outcome=\"{outcome}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    let mut braked = 0;
    for state in ["pending", "sent"] {
        let page = get_json(
            c,
            server.url(&format!("/v1/notifications?state={state}&limit=500")),
            admin,
        )
        .await;
        braked += page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["event"] == "agents.mass_silence")
            .count() as u64;
    }
    Delays {
        failed: runs("error") + runs("panic"),
        timed_out: runs("timeout"),
        braked,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agents_are_healed_around_and_every_job_completes_once() {
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
    until_registered(&dir, 3).await;

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
        let before = delays(&c, &server, &admin).await;
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
        let delayed = delays(&c, &server, &admin).await.since(&before);
        let bound = INTERVAL + STALE + Duration::from_secs(1) + delayed.allowance();
        assert!(
            silence <= jiff::SignedDuration::try_from(bound).unwrap(),
            "agent {n} marked offline {silence:?} after its last heartbeat \
             (bound {bound:?}; agent-health meanwhile: {delayed:?})"
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
    let metrics = common::metrics(&c, &server).await;
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
