//! End to end with PostgreSQL: two `homeostat run` replicas, agents split
//! between them; the replica leading agent-health and job-recovery is
//! killed by SIGKILL midway. The other runs both within an interval + 1 s of the dead leader's leases running out (the
//! lease rows' expiry against the runs' start times), no controller ever
//! wrote under two leaders at once (audit epochs), and every job still
//! ends succeeded. Wall clocks only guard against hangs.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::fleet::{INTERVAL, LEASE_TTL, QUICK, agent, until_registered};
use common::{client, data_dir, get_json, post_json, ready};
use serde_json::json;

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
    let Some(test) = homeostat_testkit::postgres().await else {
        return;
    };
    let db = common::database_url(&test);
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
    until_registered(&dir, 3).await;
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
