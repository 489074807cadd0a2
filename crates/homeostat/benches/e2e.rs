//! End-to-end figures, real processes on loopback:
//!
//! - jobs/s of `homeostat agent --exec true` against the Rust `Agent` with a
//!   no-op handler, each draining the same number of queued jobs from a
//!   fresh `homeostat run` (`--backend sqlite|postgres`);
//! - with `--kill`: the time from `kill -9` of the agent running a job to
//!   that job running on another agent (agent-health every 1 s, stale after
//!   4 s), over `--runs` kills; with `--restart` the killed agent is started
//!   again at once on its state file, and the time is to the job running
//!   again (its next attempt, on either agent);
//! - with `--outage SECS` (PostgreSQL): six 40 s jobs, the database stopped
//!   for SECS (longer than the 10 s lease) while they run, and how many ran
//!   again (0 is the goal: healthy work is not undone by an outage).
//!
//! `cargo bench -p homeostat --bench e2e -- [--backend sqlite|postgres] [--jobs N] [--runs N] [--kill [--restart]] [--outage SECS]`

// Percentiles, rates and scaled sizes: float arithmetic on measured
// figures, converted back where a value cannot leave its range.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use homeostat_client::{Agent, Client, JobError, JobHandler};
use homeostat_model::ClaimedJob;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Server {
    child: Child,
    url: String,
    key: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn homeostat() -> PathBuf {
    // The bench runs from target/release/deps; the binary is beside it.
    let me = std::env::current_exe().unwrap();
    let bin = me.parent().unwrap().parent().unwrap().join("homeostat");
    assert!(
        bin.exists(),
        "build the binary first: cargo build --release -p homeostat"
    );
    bin
}

fn start(dir: &Path, db: Option<&str>) -> Server {
    let mut cmd = Command::new(homeostat());
    cmd.args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("HOMEOSTAT_LOG_FORMAT", "json")
        .env("HOMEOSTAT_CONTROLLERS__AGENT_HEALTH__INTERVAL", "1s")
        .env("HOMEOSTAT_CONTROLLERS__AGENT_HEALTH__STALE_AFTER", "4s")
        .env("HOMEOSTAT_CONTROLLERS__JOB_RECOVERY__INTERVAL", "1s")
        .env("HOMEOSTAT_API__LEASE_TTL", "10s")
        .env("HOMEOSTAT_API__HEARTBEAT_INTERVAL", "1s")
        // The backlog is seeded at once: no enqueue rate.
        .env("HOMEOSTAT_API__QUOTAS__ENQUEUE_RATE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match db {
        Some(url) => cmd.env("HOMEOSTAT_DATABASE_URL", url),
        None => cmd.env_remove("HOMEOSTAT_DATABASE_URL"),
    };
    let mut child = cmd.spawn().unwrap();
    // Both pipes are read to their end on threads of their own: a server
    // whose pipe closed would fail its writes.
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    let key_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("hsk_") {
                let _ = key_tx.send(("key", line));
            }
        }
    });
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["fields"]["message"] == "homeostat listening" {
                let address = v["fields"]["address"].as_str().unwrap_or_default();
                let _ = tx.send(("url", format!("http://{address}")));
            }
        }
    });
    let (mut key, mut url) = (String::new(), String::new());
    while key.is_empty() || url.is_empty() {
        let (what, value) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server started");
        if what == "key" {
            key = value;
        } else {
            url = value;
        }
    }
    Server { child, url, key }
}

async fn post(c: &reqwest::Client, url: String, key: &str, body: Value) -> Value {
    c.post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn get(c: &reqwest::Client, url: String, key: &str) -> Value {
    c.get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A tenant with `jobs` queued, and a bootstrap token for `agents` agents.
async fn seed(c: &reqwest::Client, s: &Server, jobs: usize, agents: u32) -> (Value, String) {
    let tenant = post(
        c,
        format!("{}/v1/tenants", s.url),
        &s.key,
        json!({"name": "bench"}),
    )
    .await;
    for chunk in 0..jobs.div_ceil(1000) {
        let n = (jobs - chunk * 1000).min(1000);
        let batch: Vec<Value> = (0..n)
            .map(|_| json!({"queue": "q", "kind": "noop"}))
            .collect();
        post(
            c,
            format!("{}/v1/jobs", s.url),
            &s.key,
            json!({"tenant_id": tenant["id"], "jobs": batch}),
        )
        .await;
    }
    let token = post(
        c,
        format!("{}/v1/bootstrap-tokens", s.url),
        &s.key,
        json!({"tenant_id": tenant["id"], "uses": agents}),
    )
    .await;
    (tenant, token["secret"].as_str().unwrap().to_owned())
}

async fn until_succeeded(c: &reqwest::Client, s: &Server, jobs: usize) {
    loop {
        let page = get(
            c,
            format!("{}/v1/jobs?state=succeeded&limit=500", s.url),
            &s.key,
        )
        .await;
        let queued = get(c, format!("{}/v1/jobs?state=queued&limit=1", s.url), &s.key).await;
        let running = get(
            c,
            format!("{}/v1/jobs?state=running&limit=1", s.url),
            &s.key,
        )
        .await;
        if queued["items"].as_array().unwrap().is_empty()
            && running["items"].as_array().unwrap().is_empty()
            && !page["items"].as_array().unwrap().is_empty()
        {
            let _ = jobs;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Noop;

impl JobHandler for Noop {
    async fn handle(&self, _: ClaimedJob, _: CancellationToken) -> Result<Option<Value>, JobError> {
        Ok(None)
    }
}

fn exec_agent(url: &str, token: &str, state: &Path, exec: &[&str]) -> Child {
    Command::new(homeostat())
        .args([
            "agent",
            "--server",
            url,
            "--queue",
            "q",
            "--concurrency",
            "8",
            "--bootstrap-token",
            token,
        ])
        .arg("--state-file")
        .arg(state)
        .arg("--exec")
        .args(exec)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn database(backend: &str) -> Option<String> {
    (backend == "postgres")
        .then(|| std::env::var("HOMEOSTAT_TEST_DATABASE_URL").expect("HOMEOSTAT_TEST_DATABASE_URL"))
}

/// A fresh schema on PostgreSQL (dropped first if it exists).
fn fresh_postgres(url: &str, run: usize) -> String {
    let schema = format!("hs_bench_e2e_{run}");
    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};");
    assert!(
        Command::new("psql")
            .args([url, "-qc", &sql])
            .status()
            .unwrap()
            .success()
    );
    format!("{url}?options[search_path]={schema}")
}

async fn throughput(backend: &str, jobs: usize, runs: usize) {
    let c = reqwest::Client::new();
    let (mut exec, mut rust) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for side in ["exec", "rust"] {
            let dir = std::env::temp_dir()
                .join(format!("homeostat-e2e-{}-{run}-{side}", std::process::id()));
            let db = database(backend).map(|u| fresh_postgres(&u, run));
            let s = start(&dir, db.as_deref());
            let (_, token) = seed(&c, &s, jobs, 1).await;
            let started = Instant::now();
            if side == "exec" {
                let mut a = exec_agent(&s.url, &token, &dir.join("agent.json"), &["true"]);
                until_succeeded(&c, &s, jobs).await;
                exec.push(jobs as f64 / started.elapsed().as_secs_f64());
                let _ = a.kill();
                let _ = a.wait();
            } else {
                let client = Client::builder(&s.url).build().unwrap();
                let me = client
                    .register(&homeostat_model::wire::RegisterRequest {
                        bootstrap_token: token,
                        agent: homeostat_model::NewAgent {
                            name: "rust".into(),
                            labels: Default::default(),
                            queues: vec!["q".into()],
                        },
                    })
                    .await
                    .unwrap();
                let stop = CancellationToken::new();
                let agent = tokio::spawn(
                    Agent::builder(client.with_token(me.credential))
                        .concurrency(8)
                        .claim_wait(1)
                        .run(Noop, stop.clone()),
                );
                until_succeeded(&c, &s, jobs).await;
                rust.push(jobs as f64 / started.elapsed().as_secs_f64());
                stop.cancel();
                let _ = agent.await;
            }
            drop(s);
            let _ = std::fs::remove_dir_all(&dir);
        }
        println!(
            "run {run}: exec agent {:.0} jobs/s, Rust agent {:.0} jobs/s",
            exec[run], rust[run]
        );
    }
    let (e, r) = (median(&mut exec), median(&mut rust));
    println!(
        "{backend} drain of {jobs} jobs, concurrency 8, median of {runs}: homeostat agent --exec true {e:.0} jobs/s, Rust Agent {r:.0} jobs/s, exec/rust {:.2}",
        e / r
    );
}

async fn kills(backend: &str, runs: usize, restart: bool) {
    let c = reqwest::Client::new();
    let dir = std::env::temp_dir().join(format!("homeostat-e2e-kill-{}", std::process::id()));
    let db = database(backend).map(|u| fresh_postgres(&u, 99));
    let s = start(&dir, db.as_deref());
    let (tenant, token) = seed(&c, &s, 0, 2 * runs as u32 + 2).await;
    let mut agents: Vec<(Child, String)> = Vec::new();
    let spawn = |n: usize| {
        let state = dir.join(format!("agent-{n}.json"));
        let child = exec_agent(&s.url, &token, &state, &["sleep", "600"]);
        (child, state.display().to_string())
    };
    agents.push(spawn(0));
    agents.push(spawn(1));
    let mut took = Vec::new();
    for run in 0..runs {
        tokio::time::sleep(Duration::from_secs(4)).await; // both agents online past the stale window
        let job = post(
            &c,
            format!("{}/v1/jobs", s.url),
            &s.key,
            json!({"tenant_id": tenant["id"], "queue": "q", "kind": "k"}),
        )
        .await;
        let id = job["id"].as_str().unwrap().to_owned();
        let holder = loop {
            let j = get(&c, format!("{}/v1/jobs/{id}", s.url), &s.key).await;
            if j["state"] == "running" {
                break j["lease_agent"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let n = agents
            .iter()
            .position(|(_, state)| {
                std::fs::read_to_string(state)
                    .unwrap_or_default()
                    .contains(&holder)
            })
            .unwrap();
        agents[n].0.kill().unwrap();
        agents[n].0.wait().unwrap();
        let killed = Instant::now();
        if restart {
            // The same agent again, on its state file: no token needed.
            agents[n].0 = exec_agent(&s.url, "unused", Path::new(&agents[n].1), &["sleep", "600"]);
        }
        loop {
            let j = get(&c, format!("{}/v1/jobs/{id}", s.url), &s.key).await;
            let again = if restart {
                j["attempt"].as_u64() == Some(2)
            } else {
                j["lease_agent"].as_str() != Some(holder.as_str())
            };
            if j["state"] == "running" && again {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.push(killed.elapsed().as_secs_f64());
        println!("kill {run}: running again after {:.2} s", took[run]);
        post(
            &c,
            format!("{}/v1/jobs/{id}/cancel", s.url),
            &s.key,
            json!({}),
        )
        .await;
        if !restart {
            let _ = std::fs::remove_file(&agents[n].1);
            agents[n] = spawn(2 + run * 2 + n);
        }
    }
    for (a, _) in &mut agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    let max = took.iter().cloned().fold(0.0, f64::max);
    println!(
        "{backend} kill -9 {} (agent-health 1 s, stale 4 s), {runs} kills: median {:.2} s, max {max:.2} s",
        if restart {
            "and restart to running again"
        } else {
            "to running elsewhere"
        },
        median(&mut took)
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `pg_ctlcluster` on the local PostgreSQL cluster.
fn postgres(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a local PostgreSQL cluster")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
        .expect("a cluster version");
    let ok = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "pg_ctlcluster {action} failed");
}

async fn outage(secs: u64) {
    let c = reqwest::Client::new();
    let dir = std::env::temp_dir().join(format!("homeostat-e2e-outage-{}", std::process::id()));
    let db = fresh_postgres(&database("postgres").unwrap(), 98);
    let s = start(&dir, Some(&db));
    let (tenant, token) = seed(&c, &s, 0, 2).await;
    let agents: Vec<Child> = (0..2)
        .map(|n| {
            exec_agent(
                &s.url,
                &token,
                &dir.join(format!("agent-{n}.json")),
                &["sleep", "40"],
            )
        })
        .collect();
    let batch: Vec<Value> = (0..6)
        .map(|_| json!({"queue": "q", "kind": "long"}))
        .collect();
    post(
        &c,
        format!("{}/v1/jobs", s.url),
        &s.key,
        json!({"tenant_id": tenant["id"], "jobs": batch}),
    )
    .await;
    let running = || async {
        let page = get(&c, format!("{}/v1/jobs?state=running", s.url), &s.key).await;
        page["items"].as_array().map_or(0, Vec::len)
    };
    while running().await < 6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("stopping PostgreSQL for {secs} s (lease 10 s)");
    postgres("stop");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    postgres("start");
    let started = Instant::now();
    let reran = loop {
        let page = get(&c, format!("{}/v1/jobs?limit=100", s.url), &s.key).await;
        if let Some(items) = page["items"].as_array()
            && items.iter().filter(|j| j["state"] == "succeeded").count() == 6
        {
            // Why each ran again, from its failed attempts.
            for j in items.iter().filter(|j| j["attempt"].as_u64() != Some(1)) {
                let id = j["id"].as_str().unwrap_or_default();
                let detail = get(&c, format!("{}/v1/jobs/{id}", s.url), &s.key).await;
                println!("ran again: {}", detail["attempts"]);
            }
            break items
                .iter()
                .filter(|j| j["attempt"].as_u64() != Some(1))
                .count();
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the jobs never finished"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "postgres outage of {secs} s under six 40 s jobs (lease 10 s): {reran} of 6 ran again"
    );
    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let (mut backend, mut jobs, mut runs, mut kill) =
        ("sqlite".to_owned(), 5000usize, 3usize, false);
    let (mut restart, mut outage_secs) = (false, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--backend" => backend = args.next().unwrap(),
            "--jobs" => jobs = args.next().unwrap().parse().unwrap(),
            "--runs" => runs = args.next().unwrap().parse().unwrap(),
            "--kill" => kill = true,
            "--restart" => restart = true,
            "--outage" => outage_secs = Some(args.next().unwrap().parse().unwrap()),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        if let Some(secs) = outage_secs {
            outage(secs).await;
        } else if kill {
            kills(&backend, runs, restart).await;
        } else {
            throughput(&backend, jobs, runs).await;
        }
    });
}
