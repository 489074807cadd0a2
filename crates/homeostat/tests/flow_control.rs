//! Limits by key as a user runs them, with processes killed by SIGKILL.
//!
//! PostgreSQL: three `homeostat run` replicas, sixteen `homeostat agent
//! --exec` processes, 5,000 jobs over 200 keys under a limit of 2 running
//! per key, a quarter of them also under a rate of 5 starts a second per key. Agents and replicas are
//! SIGKILLed and started again while the jobs run. Checked: from the
//! agents' own records of when each job's command started and ended, never
//! more than 2 commands of a key at once; from the server's start times of
//! every attempt, never more starts of a rated key in any window than its
//! rate; every job succeeds. Wall clocks only guard against hangs.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::fleet::QUICK;
use common::{client, data_dir, get_json, post_json, ready};
use serde_json::{Value, json};

const JOBS: usize = 5_000;
const KEYS: usize = 200;
const AGENTS: usize = 16;
const RATED_KEYS: usize = 10;
const RATE_STARTS: usize = 5;
const RATE_WINDOW_MS: i64 = 1_000;
/// Jobs of a key are enqueued this many in a row, so that the head of the
/// queue always holds more of a key than its limit lets run: the limit is
/// contended by construction, not by the luck of a reclaim.
const RUN: usize = 5;

/// Records "start|end <key> <nanoseconds> <job> <agent's pid>" around
/// 10–40 ms of work; the key is the payload's. A command its agent stops
/// (a lost lease, one it could not extend in time) gets SIGTERM first and
/// records its end then; one whose agent is SIGKILLed dies with it
/// (`--pdeathsig`) and records no end.
const WORK: &str = r#"
key=$(sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
echo "start $key $(date +%s%N) $HOMEOSTAT_JOB_ID $PPID" >> "$LOG"
trap 'echo "end $key $(date +%s%N) $HOMEOSTAT_JOB_ID $PPID" >> "$LOG"; exit 143' TERM
sleep "0.0$(( $$ % 3 + 1 ))" & wait $!
echo "end $key $(date +%s%N) $HOMEOSTAT_JOB_ID $PPID" >> "$LOG"
"#;

fn agent(servers: &str, dir: &Path, n: usize, bootstrap: &str) -> Child {
    common::fleet::agent_running(servers, dir, n, bootstrap, 2, WORK)
}

/// The most commands of one key running at once, per key, from the
/// agents' records (an end before a start at the same instant). A command
/// that recorded no end ran until its agent was killed (`killed`: agent
/// pid to each time the test saw an agent of that pid dead, same clock as
/// `date +%s%N`; a pid may be reused by a later agent, so the run ended at
/// the first kill after its start), or for ever if its agent was not.
fn most_at_once(log: &str, killed: &HashMap<u32, Vec<u128>>) -> HashMap<String, usize> {
    struct Run {
        key: String,
        job: String,
        agent: u32,
        start: u128,
        end: Option<u128>,
    }
    let mut runs: Vec<Run> = Vec::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [what, key, at, job, agent] = f[..] else {
            continue;
        };
        let (Ok(at), Ok(agent)) = (at.parse::<u128>(), agent.parse::<u32>()) else {
            continue;
        };
        if what == "start" {
            runs.push(Run {
                key: key.to_owned(),
                job: job.to_owned(),
                agent,
                start: at,
                end: None,
            });
        } else if let Some(run) = runs
            .iter_mut()
            .rev()
            .find(|r| r.job == job && r.agent == agent && r.end.is_none())
        {
            run.end = Some(at);
        }
    }
    let mut events: Vec<(u128, u8, String)> = Vec::new();
    for run in runs {
        let end = run.end.unwrap_or_else(|| {
            killed
                .get(&run.agent)
                .and_then(|kills| kills.iter().copied().filter(|k| *k >= run.start).min())
                .unwrap_or(u128::MAX)
        });
        events.push((run.start, 1, run.key.clone()));
        events.push((end, 0, run.key));
    }
    events.sort();
    let (mut now, mut most): (HashMap<String, usize>, HashMap<String, usize>) = Default::default();
    for (_, start, key) in events {
        let n = now.entry(key.clone()).or_default();
        if start == 1 {
            *n += 1;
            let m = most.entry(key).or_default();
            *m = (*m).max(*n);
        } else {
            *n = n.saturating_sub(1);
        }
    }
    most
}

/// Now on the clock of the agents' records, in nanoseconds.
fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_replicas_and_agents_killed_midway() {
    let Some(test) = homeostat_testkit::postgres().await else {
        return;
    };
    let url = common::database_url(&test);
    let mut env: Vec<(&str, &str)> = QUICK.to_vec();
    env.push(("HOMEOSTAT_DATABASE_URL", url.as_str()));
    let c = client();
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut replicas = Vec::new();
    for i in 0..3 {
        let r = common::start_with(&dir.join(format!("replica-{i}")), &env);
        ready(&c, &r).await;
        replicas.push(r);
    }
    let admin = replicas[0].admin_key().unwrap();
    let addresses: Vec<String> = replicas.iter().map(|r| r.address.clone()).collect();
    let servers = replicas
        .iter()
        .map(|r| r.url(""))
        .collect::<Vec<_>>()
        .join(",");

    for (name, spec) in [
        ("per-key", json!({"max_running": 2, "key_from": "/key"})),
        (
            "api",
            json!({"rate": {"starts": RATE_STARTS, "per_secs": RATE_WINDOW_MS / 1000},
                   "key_from": "/api"}),
        ),
    ] {
        let put = c
            .put(replicas[1].url(&format!("/v1/limits/{name}")))
            .bearer_auth(&admin)
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    }
    let (tenant, bootstrap) =
        common::tenant_and_bootstrap(&c, &replicas[0], &admin, "acme", 16).await;
    let mut agents: Vec<Child> = (0..AGENTS)
        .map(|n| agent(&servers, &dir, n, &bootstrap))
        .collect();

    // Enqueued through every replica, a thousand at a time.
    for chunk in 0..JOBS / 1000 {
        let jobs: Vec<Value> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| {
                let mut limits = vec![json!({"limit": "per-key"})];
                let mut payload = json!({"key": format!("k{}", (i / RUN) % KEYS)});
                if i % 4 == 0 {
                    payload["api"] = json!(format!("a{}", i % RATED_KEYS));
                    limits.push(json!({"limit": "api"}));
                }
                json!({"queue": "work", "kind": "step", "payload": payload, "limits": limits})
            })
            .collect();
        let r = &replicas[chunk % 3];
        let answer = post_json(
            &c,
            r.url("/v1/jobs"),
            Some(&admin),
            &json!({"tenant_id": tenant["id"], "jobs": jobs}),
        )
        .await;
        assert_eq!(answer["jobs"].as_array().unwrap().len(), 1000, "{answer}");
    }

    // Chaos: agents and replicas SIGKILLed and started again.
    let mut killed: HashMap<u32, Vec<u128>> = HashMap::new();
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let n = (round * 5 + 3) % AGENTS;
        let pid = agents[n].id();
        agents[n].kill().unwrap();
        agents[n].wait().unwrap();
        killed.entry(pid).or_default().push(nanos_now());
        agents[n] = agent(&servers, &dir, n, &bootstrap);
        if round % 2 == 1 {
            let i = 1 + (round / 2) % 2;
            replicas[i].child.kill().unwrap();
            replicas[i].child.wait().unwrap();
            let again = common::start_at(&dir.join(format!("replica-{i}")), &addresses[i], &env);
            ready(&c, &again).await;
            replicas[i] = again;
        }
    }

    // Every job succeeds.
    let hang_guard = Instant::now() + Duration::from_secs(600);
    loop {
        let stats = get_json(&c, replicas[0].url("/v1/limits/per-key"), &admin).await;
        let retrying = get_json(
            &c,
            replicas[0].url("/v1/jobs?state=scheduled&limit=1"),
            &admin,
        )
        .await;
        let idle = retrying["items"].as_array().unwrap().is_empty();
        if stats["holding"] == 0 && stats["waiting"] == 0 && idle {
            break;
        }
        assert!(
            Instant::now() < hang_guard,
            "jobs still under limits after 10 minutes: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut succeeded = 0;
    let mut starts: HashMap<String, Vec<i64>> = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/jobs?limit=500&after={a}"),
            None => "/v1/jobs?limit=500".to_owned(),
        };
        let page = get_json(&c, replicas[0].url(&path), &admin).await;
        for job in page["items"].as_array().unwrap() {
            assert_eq!(job["state"], "succeeded", "{job}");
            succeeded += 1;
            if let Some(api) = job["payload"]["api"].as_str() {
                let at = |v: &Value| common::fleet::timestamp(v).as_millisecond();
                let mut all: Vec<i64> = job["attempts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| !a["started_at"].is_null())
                    .map(|a| at(&a["started_at"]))
                    .collect();
                all.push(at(&job["started_at"]));
                starts.entry(api.to_owned()).or_default().extend(all);
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(succeeded, JOBS);
    for a in &mut agents {
        let _ = Command::new("kill")
            .args(["-TERM", &a.id().to_string()])
            .status();
    }
    for a in &mut agents {
        let _ = a.wait();
    }

    // Never more than 2 commands of a key at once, by the agents' records.
    let log = std::fs::read_to_string(dir.join("work.log")).unwrap();
    let most = most_at_once(&log, &killed);
    assert_eq!(most.len(), KEYS, "every key ran");
    let worst = most.values().copied().max().unwrap();
    assert!(worst <= 2, "a key ran {worst} commands at once");
    assert_eq!(
        worst, 2,
        "no key ever used both its slots: the test proved nothing"
    );

    // Never more starts of a rated key in any window than its rate, by the
    // server's start time of every attempt; and the rate did hold jobs back
    // (some key started as many as it may within little more than a window).
    let mut bound = false;
    for (api, mut at) in starts {
        at.sort_unstable();
        bound |= at
            .windows(RATE_STARTS)
            .any(|w| w[RATE_STARTS - 1] - w[0] < RATE_WINDOW_MS * 3 / 2);
        for w in at.windows(RATE_STARTS + 1) {
            assert!(
                w[RATE_STARTS] - w[0] >= RATE_WINDOW_MS,
                "{} starts of {api} within {} ms",
                RATE_STARTS + 1,
                w[RATE_STARTS] - w[0]
            );
        }
    }
    assert!(
        bound,
        "no rated key ever used its rate: the test proved nothing"
    );
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
    test.cleanup().await;
}
