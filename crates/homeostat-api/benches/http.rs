//! The API's costs, measured against the store's own, in the same run.
//!
//! `cargo bench -p homeostat-api --bench http -- [--backend sqlite|postgres]
//!  [--jobs N] [--agents N] [--batch N] [--runs N] [--latency] [--rate N]
//!  [--seconds N] [--replicas 1|2] [--fair] [--workflows]`
//!
//! Lifecycle (default): N queued jobs drained by 8 agents that claim 100 and
//! complete them as a batch, once through the store directly (as the store
//! bench's lifecycle does) and once through HTTP on loopback (a real server,
//! real connections); pairs alternate, and the ratio of the medians is
//! reported.
//!
//! `--processes`: the HTTP side's agents are separate processes (this
//! binary, run as an agent), registered with a tenant's bootstrap token as
//! that tenant's agents, and the store side's agents are the tenant's too.
//! Each side also reports the CPU this process spent per job: the library's
//! against the server's (the agents' own is theirs).
//!
//! `--latency`: agents wait in long polls; a producer enqueues jobs through
//! HTTP at `--rate` per second; each job's pickup latency runs from the
//! moment its enqueue was sent to the moment a claim's answer carrying it
//! arrived at an agent. With `--replicas 2` (PostgreSQL), the agents poll one
//! replica and the producer enqueues through the other. The first second is
//! a warm-up, not counted: the pools open their connections and PostgreSQL
//! prepares its statements then.
//!
//! `--fair`: fair share between tenants. Tenant A enqueues 3,000 jobs
//! through HTTP; then tenant B enqueues one job every 0.5 s, 20 in all; two
//! platform agents claim one job at a time and spend 10 ms on each. B's
//! wait runs from the moment its enqueue was sent to the moment a claim's
//! answer carrying it arrived. Runs alternate fair share off
//! (`fair_share_turn = 0s`, first come first served) and on (the default).
//!
//! `--workflows`: workflow hops through HTTP, 8 agents in long polls
//! (`capacity` 10) completing at once. A 1,000-wide fan-out and fan-in: from
//! the answer to the completion that finished the last parent to the answer
//! to the claim that took the join step; and a 100-step chain: per hop,
//! from the answer to a step's completion to the answer to the claim that
//! took the next. `--runs` of each.

// Percentiles, rates and scaled sizes: float arithmetic on measured
// figures, converted back where a value cannot leave its range.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server's allocator (crates/homeostat/src/main.rs), for both sides:
/// what is measured is the server a user runs.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use homeostat_api::{ApiSettings, ApiState};
use homeostat_model::{AgentId, ApiScope, Completion, NewAgent, NewJob, PlanTier, TenantId};
use homeostat_store::{NewBootstrapToken, Store, StoreClock, StoreOptions};
use homeostat_testkit::TestStore;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Args {
    backend: String,
    jobs: usize,
    agents: usize,
    batch: u32,
    runs: usize,
    latency: bool,
    rate: u64,
    seconds: u64,
    replicas: usize,
    fair: bool,
    workflows: bool,
    processes: bool,
}

fn args() -> Args {
    let mut a = Args {
        backend: "sqlite".into(),
        jobs: 20_000,
        agents: 8,
        batch: 100,
        runs: 5,
        latency: false,
        rate: 500,
        seconds: 10,
        replicas: 1,
        fair: false,
        workflows: false,
        processes: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => a.backend = value(),
            "--jobs" => a.jobs = value().parse().expect("--jobs N"),
            "--agents" => a.agents = value().parse().expect("--agents N"),
            "--batch" => a.batch = value().parse().expect("--batch N"),
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--rate" => a.rate = value().parse().expect("--rate N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--replicas" => a.replicas = value().parse().expect("--replicas N"),
            "--latency" => a.latency = true,
            "--fair" => a.fair = true,
            "--workflows" => a.workflows = true,
            "--processes" => a.processes = true,
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// A fresh database (removed at the end by the test kit's guard) and a
/// store on it with the system clock, as in production.
async fn fresh(backend: &str) -> (TestStore, Store) {
    fresh_with(backend, StoreOptions::default().fair_share_turn).await
}

/// [`fresh`], with fair share's turn.
async fn fresh_with(backend: &str, turn: Duration) -> (TestStore, Store) {
    let options = || StoreOptions {
        max_connections: 16,
        clock: StoreClock::system(),
        fair_share_turn: turn,
        ..StoreOptions::default()
    };
    if backend == "postgres" {
        let test = homeostat_testkit::postgres()
            .await
            .expect("HOMEOSTAT_TEST_DATABASE_URL for the PostgreSQL benchmark");
        let store = replica(&test, options()).await;
        (test, store)
    } else {
        let test = homeostat_testkit::sqlite().await;
        let url = format!("sqlite:{}", test.path().unwrap().display());
        let store = Store::connect(&url, options()).await.unwrap();
        (test, store)
    }
}

async fn replica(test: &TestStore, options: StoreOptions) -> Store {
    let url = homeostat_testkit::pg_url().unwrap();
    let connect = homeostat_testkit::pg_connect(&url, test.schema().unwrap());
    Store::connect_postgres(connect, options).await.unwrap()
}

async fn bootstrap(store: &Store, tenant: Option<TenantId>, uses: u32) -> String {
    store
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: tenant,
                ttl: Duration::from_secs(3600),
                uses,
            },
            "bench",
        )
        .await
        .unwrap()
        .secret
}

async fn enqueue_all(store: &Store, tenant: TenantId, jobs: usize) {
    let chunk: Vec<NewJob> = (0..1000).map(|_| NewJob::new("bench", "noop")).collect();
    for _ in 0..jobs / 1000 {
        store.enqueue_batch(tenant, &chunk).await.unwrap();
    }
}

/// A server on a free loopback port: its base URL.
async fn serve(store: &Store, settings: ApiSettings) -> (String, tokio::task::JoinHandle<()>) {
    let state = ApiState::new(store.clone(), settings, None, Default::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Served as `homeostat run` serves it (its connection table and all).
    let task = tokio::spawn(homeostat_api::serve(
        listener,
        state,
        homeostat_api::Limits::default(),
        std::future::pending(),
    ));
    (url, task)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let res = client
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

async fn register(client: &reqwest::Client, base: &str, token: &str, i: usize) -> String {
    register_for(client, base, token, i, "bench").await
}

async fn register_for(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    i: usize,
    queue: &str,
) -> String {
    let body = json!({
        "bootstrap_token": token,
        "agent": {"name": format!("bench-{i}"), "queues": [queue]},
    });
    let res = client
        .post(format!("{base}/v1/agent/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    body["credential"].as_str().unwrap().to_owned()
}

/// Drains the queue through the store: jobs per second.
async fn drain_store(store: &Store, agents: &[AgentId], jobs: usize, batch: u32) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for &agent in agents {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let claimed = store
                    .claim(agent, batch, Duration::from_secs(300))
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    return done;
                }
                let completions: Vec<Completion> = claimed
                    .iter()
                    .map(|c| Completion {
                        id: c.id,
                        lease_token: c.lease_token,
                        result: None,
                    })
                    .collect();
                done += store
                    .complete_batch(agent, &completions)
                    .await
                    .unwrap()
                    .completed
                    .len();
            }
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    assert_eq!(done, jobs);
    jobs as f64 / start.elapsed().as_secs_f64()
}

/// Drains the queue through HTTP: jobs per second.
async fn drain_http(base: &str, credentials: &[String], jobs: usize, batch: u32) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for cred in credentials {
        let (base, cred) = (base.to_owned(), cred.clone());
        tasks.push(tokio::spawn(async move {
            drain_as(&client(), &base, &cred, batch).await
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    assert_eq!(done, jobs);
    jobs as f64 / start.elapsed().as_secs_f64()
}

/// One agent's share of a drain through HTTP: claims `batch` at a time and
/// completes them until a claim comes back empty; how many it completed.
/// A lean client (addresses parsed once, answers read into the fields it
/// needs): on these two shared cores the agents' CPU is taken from the
/// server and the database, so what it costs is kept to the protocol's.
async fn drain_as(client: &reqwest::Client, base: &str, cred: &str, batch: u32) -> usize {
    #[derive(serde::Deserialize)]
    struct Claimed<'a> {
        #[serde(borrow)]
        jobs: Vec<Lease<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Lease<'a> {
        id: &'a str,
        lease_token: i64,
    }
    #[derive(serde::Deserialize)]
    struct Completed {
        completed: Vec<serde::de::IgnoredAny>,
    }
    let claim_url: reqwest::Url = format!("{base}/v1/agent/claim").parse().unwrap();
    let complete_url: reqwest::Url = format!("{base}/v1/agent/jobs/complete").parse().unwrap();
    let auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {cred}")).unwrap();
    let json = reqwest::header::HeaderValue::from_static("application/json");
    let claim_body = format!(r#"{{"capacity":{batch},"wait_secs":0}}"#);
    let send = |url: &reqwest::Url, body: String| {
        client
            .post(url.clone())
            .header(reqwest::header::AUTHORIZATION, auth.clone())
            .header(reqwest::header::CONTENT_TYPE, json.clone())
            .body(body)
            .send()
    };
    let answer = |res: reqwest::Response| async move {
        let status = res.status();
        let body = res.bytes().await.unwrap();
        assert!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    };
    let mut done = 0;
    loop {
        let claimed = answer(send(&claim_url, claim_body.clone()).await.unwrap()).await;
        let claimed: Claimed<'_> = serde_json::from_slice(&claimed).unwrap();
        if claimed.jobs.is_empty() {
            return done;
        }
        let mut completions = String::from(r#"{"completions":["#);
        for (i, job) in claimed.jobs.iter().enumerate() {
            use std::fmt::Write;
            let comma = if i == 0 { "" } else { "," };
            let _ = write!(
                completions,
                r#"{comma}{{"id":"{}","lease_token":{}}}"#,
                job.id, job.lease_token
            );
        }
        completions.push_str("]}");
        let answer = answer(send(&complete_url, completions).await.unwrap()).await;
        done += serde_json::from_slice::<Completed>(&answer)
            .unwrap()
            .completed
            .len();
    }
}

/// `n` agents of `tenant` (platform agents for `None`) on the queue `bench`.
async fn agents_of(store: &Store, tenant: Option<TenantId>, n: usize) -> Vec<AgentId> {
    let token = bootstrap(store, tenant, n as u32).await;
    let mut out = Vec::new();
    for i in 0..n {
        let agent = NewAgent {
            name: format!("bench-store-{i}"),
            labels: Default::default(),
            queues: vec!["bench".into()],
        };
        out.push(store.register_agent(&token, &agent).await.unwrap().0.id);
    }
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn lifecycle(a: &Args) {
    let (mut direct, mut http) = (Vec::new(), Vec::new());
    let (mut direct_cpu, mut http_cpu) = (Vec::new(), Vec::new());
    // The database's CPU a job on each side, and the agent processes'.
    let (mut direct_db, mut http_db, mut agents_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..a.runs {
        // Alternate which side goes first, so drift favours neither.
        for side in if run % 2 == 0 { [0, 1] } else { [1, 0] } {
            let (test, store) = fresh(&a.backend).await;
            let tenant = store
                .create_tenant("bench", PlanTier::Standard, "bench")
                .await
                .unwrap();
            // Tenant agents when the agents are processes, as a fleet's are.
            let owner = a.processes.then_some(tenant.id);
            let cpu = cpu_secs();
            if side == 0 {
                let agents = agents_of(&store, owner, a.agents).await;
                enqueue_all(&store, tenant.id, a.jobs).await;
                let (cpu, db) = (cpu_secs(), postgres_cpu_secs());
                direct.push(drain_store(&store, &agents, a.jobs, a.batch).await);
                direct_cpu.push((cpu_secs() - cpu) / a.jobs as f64);
                direct_db.push((postgres_cpu_secs() - db) / a.jobs as f64);
            } else {
                let (base, server) = serve(&store, ApiSettings::default()).await;
                let token = bootstrap(&store, owner, a.agents as u32).await;
                let c = client();
                let mut creds = Vec::new();
                for i in 0..a.agents {
                    creds.push(register(&c, &base, &token, i).await);
                }
                enqueue_all(&store, tenant.id, a.jobs).await;
                let (cpu, db, kids) = (cpu_secs(), postgres_cpu_secs(), children_cpu_secs());
                http.push(if a.processes {
                    drain_http_processes(&base, &creds, a.jobs, a.batch).await
                } else {
                    drain_http(&base, &creds, a.jobs, a.batch).await
                });
                http_cpu.push((cpu_secs() - cpu) / a.jobs as f64);
                http_db.push((postgres_cpu_secs() - db) / a.jobs as f64);
                agents_cpu.push((children_cpu_secs() - kids) / a.jobs as f64);
                server.abort();
            }
            let _ = cpu;
            store.close().await;
            test.cleanup().await;
        }
        println!(
            "run {run}: store {:.0} jobs/s ({:.1} µs CPU a job), http {:.0} jobs/s ({:.1} µs of the server's CPU a job); \
             the database's CPU a job {:.1} / {:.1} µs; the agent processes' {:.1} µs",
            direct[run],
            direct_cpu[run] * 1e6,
            http[run],
            http_cpu[run] * 1e6,
            direct_db[run] * 1e6,
            http_db[run] * 1e6,
            agents_cpu[run] * 1e6,
        );
    }
    // The ratio within each pair (the machine's speed drifts between
    // pairs more than between the two halves of one).
    let mut ratios: Vec<f64> = http.iter().zip(&direct).map(|(h, d)| h / d).collect();
    let ratio = median(&mut ratios);
    let (lo, hi) = (ratios[0], ratios[ratios.len() - 1]);
    let mut cpu_ratios: Vec<f64> = http_cpu
        .iter()
        .zip(&direct_cpu)
        .map(|(h, d)| h / d)
        .collect();
    let cpu_ratio = median(&mut cpu_ratios);
    let (d, h) = (median(&mut direct), median(&mut http));
    if a.processes || a.backend == "postgres" {
        println!(
            "CPU a job, medians: library {:.1} µs against server {:.1} µs; the database's {:.1} (library's side) against {:.1} µs (HTTP's); the agent processes' {:.1} µs",
            median(&mut direct_cpu) * 1e6,
            median(&mut http_cpu) * 1e6,
            median(&mut direct_db) * 1e6,
            median(&mut http_db) * 1e6,
            median(&mut agents_cpu) * 1e6,
        );
    }
    println!(
        "{} lifecycle jobs={} agents={}{} batch={} median of {}: store {d:.0} jobs/s, http {h:.0} jobs/s, http/store {ratio:.2} ({lo:.2}-{hi:.2}); server CPU a job / library's {cpu_ratio:.2}",
        a.backend,
        a.jobs,
        a.agents,
        if a.processes { " (processes)" } else { "" },
        a.batch,
        a.runs,
    );
}

/// The CPU times of a `/proc/PID/stat` line, in seconds: its own (user
/// and system) and its waited-for children's; `None` unless its command
/// is `only` (when given).
fn stat_cpu(stat: &str, only: Option<&str>) -> Option<(f64, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    if only.is_some_and(|command| !head.ends_with(&format!("({command}"))) {
        return None;
    }
    // Fields after the command's closing parenthesis: utime, stime, cutime
    // and cstime are the 14th to 17th of the line, in clock ticks (100 a
    // second).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Some((
        (ticks(11) + ticks(12)) / 100.0,
        (ticks(13) + ticks(14)) / 100.0,
    ))
}

fn own_stat() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat_cpu(&stat, None).unwrap_or_default()
}

/// This process's CPU time, in seconds.
fn cpu_secs() -> f64 {
    own_stat().0
}

/// CPU time, in seconds, of this process's children that have been waited
/// for: the agent processes.
fn children_cpu_secs() -> f64 {
    own_stat().1
}

/// CPU time, in seconds, of every `postgres` process on the machine and of
/// the children they have reaped (backends whose connections closed): 0
/// with no PostgreSQL here. Taken before and after a drain, what the
/// database spent on it, whoever asked.
fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| stat_cpu(&stat, Some("postgres")))
        .map(|(own, reaped)| own + reaped)
        .sum()
}

/// Drains the queue through HTTP with each agent a process of its own:
/// jobs per second, from the moment all were told to start.
async fn drain_http_processes(base: &str, credentials: &[String], jobs: usize, batch: u32) -> f64 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for cred in credentials {
        let mut child = tokio::process::Command::new(&exe)
            .args(["--agent-process", base, cred, &batch.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(out.next_line().await.unwrap().as_deref(), Some("ready"));
        children.push((child, out));
    }
    let start = Instant::now();
    for (child, _) in &mut children {
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        stdin.flush().await.unwrap();
    }
    let mut done = 0;
    for (child, out) in &mut children {
        let line = out.next_line().await.unwrap().expect("an agent's count");
        done += line.parse::<usize>().unwrap();
        assert!(child.wait().await.unwrap().success());
    }
    let rate = jobs as f64 / start.elapsed().as_secs_f64();
    assert_eq!(done, jobs);
    rate
}

/// An agent process: connects, says "ready", waits for "go", then claims
/// `batch` at a time and completes them until a claim comes back empty,
/// and prints how many it completed.
fn agent_process(base: &str, cred: &str, batch: u32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client();
        println!("ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        let done = drain_as(&c, base, cred, batch).await;
        println!("{done}");
    });
}

async fn latency(a: &Args) {
    let (test, store) = fresh(&a.backend).await;
    let other = if a.replicas > 1 {
        assert_eq!(a.backend, "postgres", "two replicas need PostgreSQL");
        replica(
            &test,
            StoreOptions {
                max_connections: 16,
                clock: StoreClock::system(),
                ..StoreOptions::default()
            },
        )
        .await
    } else {
        store.clone()
    };
    let tenant = store
        .create_tenant("bench", PlanTier::Standard, "bench")
        .await
        .unwrap();
    let key = store
        .issue_api_key(ApiScope::Tenant(tenant.id), None, "bench")
        .await
        .unwrap()
        .secret;
    let (agents_url, s1) = serve(&store, ApiSettings::default()).await;
    let (producer_url, s2) = if a.replicas > 1 {
        let (u, s) = serve(&other, ApiSettings::default()).await;
        (u, Some(s))
    } else {
        (agents_url.clone(), None)
    };
    let token = bootstrap(&store, None, a.agents as u32).await;
    let c = client();
    let mut creds = Vec::new();
    for i in 0..a.agents {
        creds.push(register(&c, &agents_url, &token, i).await);
    }
    let epoch = Instant::now();
    let warmup = a.rate as usize;
    let total = (a.rate * a.seconds) as usize + warmup;
    let received = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total)));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for cred in creds {
        let (client, base, received, stop) =
            (client(), agents_url.clone(), received.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let claimed = tokio::select! {
                    () = stop.cancelled() => return,
                    b = post(
                        &client,
                        format!("{base}/v1/agent/claim"),
                        &cred,
                        json!({"capacity": 10, "wait_secs": 5}),
                    ) => b,
                };
                let at = epoch.elapsed();
                let jobs = claimed["jobs"].as_array().unwrap();
                if jobs.is_empty() {
                    continue;
                }
                {
                    let mut r = received.lock().unwrap();
                    for j in jobs {
                        let sent = Duration::from_nanos(j["payload"]["sent_ns"].as_u64().unwrap());
                        r.push((sent, at.saturating_sub(sent)));
                    }
                }
                let completions: Vec<Value> = jobs
                    .iter()
                    .map(|j| json!({"id": j["id"], "lease_token": j["lease_token"]}))
                    .collect();
                post(
                    &client,
                    format!("{base}/v1/agent/jobs/complete"),
                    &cred,
                    json!({"completions": completions}),
                )
                .await;
            }
        }));
    }
    // Let every agent park in its long poll.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let producer = client();
    let period = Duration::from_nanos(1_000_000_000 / a.rate);
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + period * i as u32).await;
        let sent_ns = epoch.elapsed().as_nanos() as u64;
        let (p, url, key) = (producer.clone(), producer_url.clone(), key.clone());
        // Each enqueue on its own task, so a slow one does not delay the
        // next (the rate is the producer's, not the server's).
        tokio::spawn(async move {
            post(
                &p,
                format!("{url}/v1/jobs"),
                &key,
                json!({"queue": "bench", "kind": "noop", "payload": {"sent_ns": sent_ns}}),
            )
            .await;
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < total {
        assert!(Instant::now() < deadline, "not every job was picked up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let mut received = received.lock().unwrap().clone();
    // The warm-up's jobs: the first second sent.
    received.sort_by_key(|(sent, _)| *sent);
    received.drain(..warmup);
    if std::env::var_os("HOMEOSTAT_BENCH_WORST").is_some() {
        let mut worst = received.clone();
        worst.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
        for (sent, d) in worst.iter().take(30) {
            eprintln!(
                "sent at {:.1} ms: picked up after {:.2} ms",
                sent.as_secs_f64() * 1e3,
                d.as_secs_f64() * 1e3
            );
        }
    }
    let mut lat: Vec<f64> = received
        .iter()
        .map(|(_, d)| d.as_secs_f64() * 1e3)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{} pickup latency replicas={} rate={}/s jobs={} agents={}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        a.backend,
        a.replicas,
        a.rate,
        lat.len(),
        a.agents,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lat[lat.len() - 1]
    );
    s1.abort();
    if let Some(s) = s2 {
        s.abort();
    }
    if a.replicas > 1 {
        other.close().await;
    }
    store.close().await;
    test.cleanup().await;
}

/// One run of the fair-share scenario: B's waits, in milliseconds.
async fn fair_once(backend: &str, turn: Duration) -> Vec<f64> {
    const BACKLOG: usize = 3000;
    const B_JOBS: usize = 20;
    let (test, store) = fresh_with(backend, turn).await;
    let mut keys = Vec::new();
    for name in ["a", "b"] {
        let t = store
            .create_tenant(name, PlanTier::Standard, "bench")
            .await
            .unwrap();
        let key = store
            .issue_api_key(ApiScope::Tenant(t.id), None, "bench")
            .await
            .unwrap()
            .secret;
        keys.push(key);
    }
    let (base, server) = serve(&store, ApiSettings::default()).await;
    let token = bootstrap(&store, None, 2).await;
    let c = client();
    let epoch = Instant::now();
    let waits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut agents = Vec::new();
    for i in 0..2 {
        let cred = register_for(&c, &base, &token, i, "shared").await;
        let (client, base, waits, stop) = (client(), base.clone(), waits.clone(), stop.clone());
        agents.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let claimed = tokio::select! {
                    () = stop.cancelled() => return,
                    b = post(
                        &client,
                        format!("{base}/v1/agent/claim"),
                        &cred,
                        json!({"capacity": 1, "wait_secs": 5}),
                    ) => b,
                };
                let at = epoch.elapsed();
                for j in claimed["jobs"].as_array().unwrap() {
                    if let Some(sent) = j["payload"]["sent_ns"].as_u64() {
                        let wait = at.saturating_sub(Duration::from_nanos(sent));
                        waits.lock().unwrap().push(wait.as_secs_f64() * 1e3);
                    }
                    // The job's work.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    post(
                        &client,
                        format!("{base}/v1/agent/jobs/complete"),
                        &cred,
                        json!({"completions": [{"id": j["id"], "lease_token": j["lease_token"]}]}),
                    )
                    .await;
                }
            }
        }));
    }
    let backlog: Vec<Value> = (0..1000)
        .map(|_| json!({"queue": "shared", "kind": "bulk"}))
        .collect();
    for _ in 0..BACKLOG / 1000 {
        post(
            &c,
            format!("{base}/v1/jobs"),
            &keys[0],
            json!({"jobs": backlog}),
        )
        .await;
    }
    let start = tokio::time::Instant::now();
    for i in 0..B_JOBS {
        tokio::time::sleep_until(start + Duration::from_millis(500) * i as u32).await;
        let sent_ns = epoch.elapsed().as_nanos() as u64;
        post(
            &c,
            format!("{base}/v1/jobs"),
            &keys[1],
            json!({"queue": "shared", "kind": "small", "payload": {"sent_ns": sent_ns}}),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while waits.lock().unwrap().len() < B_JOBS {
        assert!(Instant::now() < deadline, "B's jobs were not all picked up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    for t in agents {
        let _ = t.await;
    }
    server.abort();
    store.close().await;
    test.cleanup().await;
    let mut out = Vec::new();
    out.append(&mut waits.lock().unwrap());
    out
}

async fn fair(a: &Args) {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let turn = StoreOptions::default().fair_share_turn;
    for run in 0..a.runs {
        for side in if run % 2 == 0 { [0, 1] } else { [1, 0] } {
            let mut waits = if side == 0 {
                fair_once(&a.backend, Duration::ZERO).await
            } else {
                fair_once(&a.backend, turn).await
            };
            let (m, max) = (median(&mut waits), waits[waits.len() - 1]);
            println!(
                "run {run}: fair share {}: B waited median {m:.1} ms, max {max:.1} ms",
                if side == 0 { "off" } else { "on" }
            );
            if side == 0 { &mut off } else { &mut on }.push((m, max));
        }
    }
    let summary = |v: &[(f64, f64)]| {
        let (mut m, mut x): (Vec<f64>, Vec<f64>) = v.iter().copied().unzip();
        (median(&mut m), median(&mut x))
    };
    let ((off_m, off_x), (on_m, on_x)) = (summary(&off), summary(&on));
    println!(
        "{} fair share, A 3000 queued, B 1 per 0.5 s, 2 agents x 10 ms jobs, median of {}: B waited median {off_m:.1} ms, max {off_x:.1} ms off; median {on_m:.1} ms, max {on_x:.1} ms on",
        a.backend, a.runs,
    );
}

/// Runs `steps` as one workflow through HTTP with 8 long-polling agents;
/// for each claimed step, when its claim's answer arrived, and for each
/// completed one, when its completion's answer did (since `epoch`).
async fn run_workflow(
    backend: &str,
    steps: Vec<Value>,
) -> (
    std::collections::HashMap<String, Duration>,
    std::collections::HashMap<String, Duration>,
) {
    use std::collections::HashMap;
    let total = steps.len();
    let (test, store) = fresh(backend).await;
    let tenant = store
        .create_tenant("bench", PlanTier::Standard, "bench")
        .await
        .unwrap();
    let key = store
        .issue_api_key(ApiScope::Tenant(tenant.id), None, "bench")
        .await
        .unwrap()
        .secret;
    let (base, server) = serve(&store, ApiSettings::default()).await;
    let token = bootstrap(&store, None, 8).await;
    let c = client();
    let epoch = Instant::now();
    let claimed = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let completed = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut agents = Vec::new();
    for i in 0..8 {
        let cred = register(&c, &base, &token, i).await;
        let (client, base, claimed, completed, stop) = (
            client(),
            base.clone(),
            claimed.clone(),
            completed.clone(),
            stop.clone(),
        );
        agents.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let answer = tokio::select! {
                    () = stop.cancelled() => return,
                    b = post(
                        &client,
                        format!("{base}/v1/agent/claim"),
                        &cred,
                        json!({"capacity": 10, "wait_secs": 5}),
                    ) => b,
                };
                let at = epoch.elapsed();
                let jobs = answer["jobs"].as_array().unwrap();
                if jobs.is_empty() {
                    continue;
                }
                let names: Vec<String> = jobs
                    .iter()
                    .map(|j| j["workflow"]["step"].as_str().unwrap().to_owned())
                    .collect();
                {
                    let mut c = claimed.lock().unwrap();
                    for n in &names {
                        c.insert(n.clone(), at);
                    }
                }
                let completions: Vec<Value> = jobs
                    .iter()
                    .map(|j| json!({"id": j["id"], "lease_token": j["lease_token"]}))
                    .collect();
                post(
                    &client,
                    format!("{base}/v1/agent/jobs/complete"),
                    &cred,
                    json!({"completions": completions}),
                )
                .await;
                let at = epoch.elapsed();
                let mut done = completed.lock().unwrap();
                for n in names {
                    done.insert(n, at);
                }
            }
        }));
    }
    // Every agent waits in its long poll before the workflow arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    post(
        &c,
        format!("{base}/v1/workflows"),
        &key,
        json!({"name": "bench", "steps": steps}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while completed.lock().unwrap().len() < total {
        assert!(Instant::now() < deadline, "the workflow did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    for a in agents {
        let _ = a.await;
    }
    server.abort();
    store.close().await;
    test.cleanup().await;
    let claimed = std::mem::take(&mut *claimed.lock().unwrap());
    let completed = std::mem::take(&mut *completed.lock().unwrap());
    (claimed, completed)
}

async fn workflows(a: &Args) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let step = |name: String, needs: Vec<String>| {
        json!({"name": name, "job": {"queue": "bench", "kind": "step"}, "needs": needs,
               "when": "always"})
    };
    let mut joins = Vec::new();
    let mut hops = Vec::new();
    for run in 0..a.runs {
        // A 1,000-wide fan-out and fan-in.
        let parts: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
        let mut steps: Vec<Value> = parts.iter().map(|p| step(p.clone(), vec![])).collect();
        steps.push(step("join".into(), parts.clone()));
        let (claimed, completed) = run_workflow(&a.backend, steps).await;
        let last = parts.iter().map(|p| completed[p]).max().unwrap();
        let join = ms(claimed["join"].saturating_sub(last));
        joins.push(join);
        // A 100-step chain.
        let steps: Vec<Value> = (0..100)
            .map(|i| {
                let needs = if i == 0 {
                    vec![]
                } else {
                    vec![format!("c{}", i - 1)]
                };
                step(format!("c{i}"), needs)
            })
            .collect();
        let (claimed, completed) = run_workflow(&a.backend, steps).await;
        let mut run_hops: Vec<f64> = (1..100)
            .map(
                |i| ms(claimed[&format!("c{i}")].saturating_sub(completed[&format!("c{}", i - 1)])),
            )
            .collect();
        let p50 = median(&mut run_hops.clone());
        println!(
            "run {run}: fan-in join claimed {join:.2} ms after the last parent's completion; chain hop p50 {p50:.2} ms, max {:.2} ms",
            run_hops.iter().copied().fold(0.0, f64::max)
        );
        hops.append(&mut run_hops);
    }
    joins.sort_by(f64::total_cmp);
    hops.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    println!(
        "{} workflows, 8 long-polling agents, {} runs: fan-in (1,000 parents) join after the last parent p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; chain (100 steps) per hop p50 {:.2} ms, p99 {:.2} ms",
        a.backend,
        a.runs,
        pct(&joins, 0.5),
        pct(&joins, 0.99),
        joins[joins.len() - 1],
        pct(&hops, 0.5),
        pct(&hops, 0.99),
    );
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let argv: Vec<String> = std::env::args().collect();
    if let [_, flag, base, cred, batch] = &argv[..]
        && flag == "--agent-process"
    {
        agent_process(base, cred, batch.parse().expect("a batch size"));
        return;
    }
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if a.workflows {
            workflows(&a).await;
        } else if a.fair {
            fair(&a).await;
        } else if a.latency {
            latency(&a).await;
        } else {
            lifecycle(&a).await;
        }
    });
}
