//! A fleet on one database: N agents against real `homeostat run`
//! processes (one on SQLite; two replicas on PostgreSQL), simulated in this
//! process as separate HTTP clients. Each agent holds one long-poll claim
//! on its own connection, heartbeats every `--heartbeat` seconds (from a
//! random phase) and completes each job at once; a producer enqueues
//! `--rate` jobs a second through HTTP. On PostgreSQL the agents and the
//! producer alternate between the two replicas.
//!
//! Per fleet size it reports: heartbeat and pickup latency (p50/p99; a
//! pickup runs from the enqueue's send to the claim answer that carries
//! the job), errors, agents marked offline, the servers' memory and file
//! descriptors, memory per registered agent (servers' RSS with every agent
//! registered and heartbeating, less their RSS before any registered, over
//! N), memory per idle long poll (their RSS once every agent also waits in
//! a long poll, less the registered figure, over N), their RSS 5 s after
//! every agent has gone (`left`), database
//! transactions per heartbeat while idle (PostgreSQL: `pg_stat_database`,
//! every source counted), and wasted wake-ups per job
//! (`homeostat_claim_wakeups_total{outcome="empty"}`).
//!
//! `cargo build --release -p homeostat && cargo bench -p homeostat --bench fleet --
//!  [--backend sqlite|postgres] [--agents 100,1000,3000,10000] [--seconds 60]
//!  [--idle-seconds 20] [--rate 50] [--heartbeat 10] [--rss-every SECS]
//!  [--slow-ms 100]`
//!
//! `--rss-every SECS` prints the servers' resident memory (and its
//! anonymous part: heap, not mapped files) every SECS under load: a soak,
//! with a long `--seconds`. Pickups slower than `--slow-ms` are listed
//! by the second their enqueue was sent.

// Percentiles, rates and scaled sizes: float arithmetic on measured
// figures, converted back where a value cannot leave its range.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Args {
    backend: String,
    agents: Vec<usize>,
    seconds: u64,
    idle_seconds: u64,
    rate: u64,
    heartbeat: u64,
    rss_every: u64,
    slow_ms: f64,
}

fn args() -> Args {
    let mut a = Args {
        backend: "sqlite".into(),
        agents: vec![100, 1_000, 3_000, 10_000],
        seconds: 60,
        idle_seconds: 20,
        rate: 50,
        heartbeat: 10,
        rss_every: 0,
        slow_ms: 100.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => a.backend = value(),
            "--agents" => {
                a.agents = value()
                    .split(',')
                    .map(|n| n.parse().expect("--agents N,N,…"))
                    .collect()
            }
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--idle-seconds" => a.idle_seconds = value().parse().expect("--idle-seconds N"),
            "--rate" => a.rate = value().parse().expect("--rate N"),
            "--heartbeat" => a.heartbeat = value().parse().expect("--heartbeat N"),
            "--rss-every" => a.rss_every = value().parse().expect("--rss-every SECS"),
            "--slow-ms" => a.slow_ms = value().parse().expect("--slow-ms MS"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

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

impl Server {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Anonymous resident memory (the heap and stacks, not mapped files).
    fn anon_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }
}

fn homeostat() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let bin = me.parent().unwrap().parent().unwrap().join("homeostat");
    assert!(
        bin.exists(),
        "build the binary first: cargo build --release -p homeostat"
    );
    bin
}

fn start(dir: &Path, db: Option<&str>, heartbeat: u64) -> Server {
    let mut cmd = Command::new(homeostat());
    cmd.args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("HOMEOSTAT_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn,homeostat::serve=info")
        .env("HOMEOSTAT_API__HEARTBEAT_INTERVAL", format!("{heartbeat}s"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match db {
        Some(url) => cmd.env("HOMEOSTAT_DATABASE_URL", url),
        None => cmd.env_remove("HOMEOSTAT_DATABASE_URL"),
    };
    let mut child = cmd.spawn().unwrap();
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
            if v["level"] == "ERROR" || v["level"] == "WARN" {
                eprintln!("server: {line}");
            }
            if v["fields"]["message"] == "homeostat listening" {
                let address = v["fields"]["address"].as_str().unwrap_or_default();
                let _ = tx.send(("url", format!("http://{address}")));
            }
        }
    });
    let (mut key, mut url) = (String::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    // A replica on a database another replica set up prints no key.
    while url.is_empty() || (key.is_empty() && db.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(("key", v)) => key = v,
            Ok((_, v)) => url = v,
            Err(_) if !url.is_empty() => break,
            Err(_) => panic!("the server did not start"),
        }
        if !url.is_empty() && !key.is_empty() {
            break;
        }
        if !url.is_empty() && db.is_some() {
            // The first replica prints the key; give it a moment.
            if let Ok(("key", v)) = rx.recv_timeout(Duration::from_secs(2)) {
                key = v;
            }
            break;
        }
    }
    Server { child, url, key }
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAtc", sql])
        .output()
        .expect("psql runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Transactions committed and rolled back in the database so far.
fn transactions(url: &str) -> u64 {
    psql(
        url,
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .parse()
    .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn sorted(v: &Mutex<Vec<f64>>) -> Vec<f64> {
    let mut v = v.lock().unwrap().clone();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// The sum of a metric's samples whose line contains `filter`, across servers.
async fn metric(c: &reqwest::Client, servers: &[Server], name: &str, filter: &str) -> f64 {
    let mut sum = 0.0;
    for s in servers {
        let text = c
            .get(format!("{}/metrics", s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in text.lines() {
            if line.starts_with(name) && line.contains(filter) {
                sum += line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    sum
}

#[derive(Default)]
struct Tally {
    heartbeats: AtomicU64,
    errors: AtomicU64,
    /// What the errors were: a status code, or the client's error.
    kinds: Mutex<std::collections::BTreeMap<String, u64>>,
    jobs: AtomicU64,
    heartbeat_ms: Mutex<Vec<f64>>,
    /// Every measured pickup: its latency, the timeline of slow ones and
    /// the split at the servers' timestamps all come from these.
    picked: Mutex<Vec<Pickup>>,
    measuring: AtomicBool,
}

/// A job picked up: when its enqueue was sent and when the claim's answer
/// carrying it arrived, in microseconds into the bench.
struct Pickup {
    id: String,
    sent_us: f64,
    got_us: f64,
}

impl Pickup {
    fn ms(&self) -> f64 {
        (self.got_us - self.sent_us) / 1e3
    }
}

impl Tally {
    fn failed(&self, what: &str, r: &reqwest::Result<reqwest::Response>) {
        let kind = match r {
            Ok(r) => format!("{what} {}", r.status().as_u16()),
            Err(e) if e.is_timeout() => format!("{what} client timeout"),
            Err(e) if e.is_connect() => format!("{what} connect"),
            Err(_) => format!("{what} other"),
        };
        *self.kinds.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// POSTs `body` to `path` with `key` and returns the answer's `field`.
async fn post_for(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
    body: Value,
    field: &str,
) -> String {
    let answer: Value = client
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer[field]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no {field} in {answer}"))
        .to_owned()
}

async fn one_fleet(a: &Args, n: usize) {
    let run = format!("{}-{n}", std::process::id());
    let dir = std::env::temp_dir().join(format!("homeostat-fleet-{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pg = (a.backend == "postgres").then(|| {
        let base = std::env::var("HOMEOSTAT_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("hs_bench_fleet_{n}");
        psql(
            &base,
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};"),
        );
        (
            base.clone(),
            format!("{base}?options[search_path]={schema}"),
        )
    });
    let mut servers = Vec::new();
    match &pg {
        Some((_, url)) => {
            for i in 0..2 {
                servers.push(start(&dir.join(format!("r{i}")), Some(url), a.heartbeat));
            }
        }
        None => servers.push(start(&dir, None, a.heartbeat)),
    }
    let key = servers
        .iter()
        .map(|s| s.key.clone())
        .find(|k| !k.is_empty())
        .expect("an admin key");
    let rss_before: u64 = servers.iter().map(Server::rss_kib).sum();
    let admin = reqwest::Client::new();
    let base = &servers[0].url;
    let tenant = post_for(
        &admin,
        base,
        &key,
        "/v1/tenants",
        json!({"name": "fleet"}),
        "id",
    )
    .await;
    let tenant_key = post_for(
        &admin,
        base,
        &key,
        "/v1/api-keys",
        json!({"role": "tenant", "tenant_id": tenant}),
        "secret",
    )
    .await;
    let boot = post_for(
        &admin,
        base,
        &key,
        "/v1/bootstrap-tokens",
        json!({"tenant_id": tenant, "uses": n, "ttl_secs": 3600}),
        "secret",
    )
    .await;
    // Registration, 64 at a time.
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let mut creds = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let (c, url, boot) = (admin.clone(), urls[i % urls.len()].clone(), boot.clone());
            tasks.push(tokio::spawn(async move {
                let body = json!({"bootstrap_token": boot,
                    "agent": {"name": format!("agent-{i:05}"), "queues": ["work"]}});
                let r: Value = c
                    .post(format!("{url}/v1/agent/register"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (
                    url,
                    r["credential"].as_str().expect("registered").to_owned(),
                )
            }));
        }
        for t in tasks {
            creds.push(t.await.unwrap());
        }
    }

    let tally = Arc::new(Tally::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let bench_start = Instant::now();
    // The same moment on the servers' clock (the same machine's), to place
    // the bench's own times beside the jobs' timestamps.
    let bench_epoch_ms = jiff::Timestamp::now().as_millisecond() as f64;
    // Long polls: one connection each (the pool opens one per waiting
    // claim); heartbeats share a pool of their own.
    let polls = reqwest::Client::builder()
        .pool_max_idle_per_host(n + 16)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let beats = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut agents = Vec::new();
    // Heartbeats first, so that what the registered fleet costs the
    // servers is measured apart from what its long polls add.
    for (hb_url, hb_cred) in creds.clone() {
        let (beats, hb_tally, hb_stop) = (beats.clone(), tally.clone(), stop.clone());
        let period = Duration::from_secs(a.heartbeat);
        agents.push(tokio::spawn(async move {
            tokio::time::sleep(period.mul_f64(fastrand::f64())).await;
            let mut ticks = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = hb_stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let sent = Instant::now();
                let r = beats
                    .post(format!("{hb_url}/v1/agent/heartbeat"))
                    .bearer_auth(&hb_cred)
                    .json(&json!({}))
                    .send()
                    .await;
                let ok = matches!(&r, Ok(r) if r.status().is_success());
                if !ok {
                    hb_tally.failed("heartbeat", &r);
                }
                if hb_tally.measuring.load(Ordering::Relaxed) {
                    hb_tally.heartbeats.fetch_add(1, Ordering::Relaxed);
                    if ok {
                        hb_tally
                            .heartbeat_ms
                            .lock()
                            .unwrap()
                            .push(sent.elapsed().as_secs_f64() * 1e3);
                    } else {
                        hb_tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Every agent heard at least once (each began at a random point of its
    // first period).
    tokio::time::sleep(Duration::from_secs(a.heartbeat + 3)).await;
    let rss_registered: u64 = servers.iter().map(Server::rss_kib).sum();
    for (url, cred) in creds {
        let (polls, tally, stop) = (polls.clone(), tally.clone(), stop.clone());
        agents.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let r = tokio::select! {
                    () = stop.cancelled() => return,
                    r = polls
                        .post(format!("{url}/v1/agent/claim"))
                        .bearer_auth(&cred)
                        .json(&json!({"capacity": 1, "wait_secs": 30}))
                        .send() => r,
                };
                let body: Value = match r {
                    Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
                    r => {
                        tally.failed("claim", &r);
                        if tally.measuring.load(Ordering::Relaxed) {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let now_us = bench_start.elapsed().as_micros() as f64;
                for job in body["jobs"].as_array().into_iter().flatten() {
                    let sent_us = job["payload"]["t"].as_f64().unwrap_or(now_us);
                    if tally.measuring.load(Ordering::Relaxed) {
                        tally.jobs.fetch_add(1, Ordering::Relaxed);
                        tally.picked.lock().unwrap().push(Pickup {
                            id: job["id"].as_str().unwrap_or_default().to_owned(),
                            sent_us,
                            got_us: now_us,
                        });
                    }
                    let done = json!({"completions": [{"id": job["id"], "lease_token": job["lease_token"]}]});
                    let _ = polls
                        .post(format!("{url}/v1/agent/jobs/complete"))
                        .bearer_auth(&cred)
                        .json(&done)
                        .send()
                        .await;
                }
            }
        }));
    }
    // Idle: every agent waiting, heartbeats only.
    let idle = Duration::from_secs(a.idle_seconds.max(a.heartbeat + 5));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let waiting = metric(&admin, &servers, "homeostat_claims_waiting", "").await;
    let rss_idle: u64 = servers.iter().map(Server::rss_kib).sum();
    let fds_idle: usize = servers.iter().map(Server::fds).sum();
    let tx0 = pg.as_ref().map(|(base, _)| transactions(base));
    tally.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(idle).await;
    let idle_beats = tally.heartbeats.load(Ordering::Relaxed);
    let tx_per_beat = pg
        .as_ref()
        .map(|(base, _)| (transactions(base) - tx0.unwrap()) as f64 / idle_beats.max(1) as f64);
    let idle_errors = tally.errors.load(Ordering::Relaxed);
    tally.heartbeat_ms.lock().unwrap().clear();

    // Under load: the producer at `rate` jobs a second.
    let (admin_ref, servers_ref) = (&admin, &servers);
    let wakeups = move |outcome| {
        metric(
            admin_ref,
            servers_ref,
            "homeostat_claim_wakeups_total",
            outcome,
        )
    };
    let wasted0 = wakeups("empty").await;
    let withdrawn0 = wakeups("withdrawn").await;
    tally.jobs.store(0, Ordering::Relaxed);
    let producer = {
        let (c, urls, tenant_key, stop) = (admin.clone(), urls.clone(), tenant_key, stop.clone());
        let rate = a.rate;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut i = 0usize;
            let mut sent = 0u64;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return sent,
                    _ = ticks.tick() => {}
                }
                let (c, url, key) = (c.clone(), urls[i % urls.len()].clone(), tenant_key.clone());
                i += 1;
                sent += 1;
                tokio::spawn(async move {
                    let t = bench_start.elapsed().as_micros() as f64;
                    let _ = c
                        .post(format!("{url}/v1/jobs"))
                        .bearer_auth(&key)
                        .json(&json!({"queue": "work", "kind": "sim", "payload": {"t": t}}))
                        .send()
                        .await;
                });
            }
        })
    };
    let load_start = Instant::now();
    let load_for = Duration::from_secs(a.seconds);
    while load_start.elapsed() < load_for {
        let every = if a.rss_every == 0 {
            load_for
        } else {
            Duration::from_secs(a.rss_every)
        };
        tokio::time::sleep(every.min(load_for.saturating_sub(load_start.elapsed()))).await;
        if a.rss_every > 0 {
            println!(
                "soak {:>6} s | RSS {} MiB | anonymous {} MiB | jobs {}",
                load_start.elapsed().as_secs(),
                servers.iter().map(Server::rss_kib).sum::<u64>() / 1024,
                servers.iter().map(Server::anon_kib).sum::<u64>() / 1024,
                tally.jobs.load(Ordering::Relaxed),
            );
        }
    }
    let rss_load: u64 = servers.iter().map(Server::rss_kib).sum();
    let fds_load: usize = servers.iter().map(Server::fds).sum();
    let wasted = wakeups("empty").await - wasted0;
    let withdrawn = wakeups("withdrawn").await - withdrawn0;
    let offline = admin
        .get(format!(
            "{}/v1/agents?status=offline&limit=1000",
            servers[0].url
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["items"]
        .as_array()
        .map_or(0, Vec::len);
    stop.cancel();
    let enqueued = producer.await.unwrap();
    for t in &agents {
        t.abort();
    }
    for t in agents {
        let _ = t.await;
    }
    // Every connection closes with its client: the long polls end, and
    // what they held should go back to the system.
    drop((polls, beats));
    tokio::time::sleep(LEFT_AFTER).await;
    let rss_left: u64 = servers.iter().map(Server::rss_kib).sum();
    let jobs = tally.jobs.load(Ordering::Relaxed);
    let hb = sorted(&tally.heartbeat_ms);
    let picked = std::mem::take(&mut *tally.picked.lock().unwrap());
    let mut pick: Vec<f64> = picked.iter().map(Pickup::ms).collect();
    pick.sort_by(f64::total_cmp);
    println!(
        "{backend:8} agents {n:>6} | heartbeat p50 {:>7.1} p99 {:>7.1} ms | pickup p50 {:>7.1} p99 {:>7.1} ms | \
         jobs {jobs}/{enqueued} | errors idle {idle_errors} load {} | offline {offline} | waiting {waiting} | \
         RSS before {} MiB registered {} MiB idle {} MiB load {} MiB left {} MiB | per agent {:.1} KiB | per idle poll {:.1} KiB | fds idle {fds_idle} load {fds_load} | \
         db tx/heartbeat {} | wasted wake-ups/job {:.3} | withdrawn/job {:.3} | failures {kinds:?}",
        percentile(&hb, 0.5),
        percentile(&hb, 0.99),
        percentile(&pick, 0.5),
        percentile(&pick, 0.99),
        tally.errors.load(Ordering::Relaxed) - idle_errors,
        rss_before / 1024,
        rss_registered / 1024,
        rss_idle / 1024,
        rss_load / 1024,
        rss_left / 1024,
        (rss_registered.saturating_sub(rss_before)) as f64 / n as f64,
        (rss_idle.saturating_sub(rss_registered)) as f64 / n as f64,
        tx_per_beat.map_or("n/a".into(), |t| format!("{t:.4}")),
        wasted / jobs.max(1) as f64,
        withdrawn / jobs.max(1) as f64,
        kinds = tally.kinds.lock().unwrap(),
        backend = a.backend,
    );
    print_slow(&picked, a.slow_ms);
    print_split(
        &admin,
        &servers[0].url,
        &key,
        &picked,
        bench_epoch_ms,
        a.slow_ms,
    )
    .await;
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// How long after every agent left the servers' memory is read again.
const LEFT_AFTER: Duration = Duration::from_secs(5);

/// Where the slow pickups fell: per second of the bench in which their
/// enqueues were sent, how many and the slowest. A long tail is one stall
/// or many, and lines up (or not) with the servers' warnings above.
fn print_slow(picked: &[Pickup], slow_ms: f64) {
    let mut by_second: std::collections::BTreeMap<u64, (usize, f64)> = Default::default();
    for p in picked.iter().filter(|p| p.ms() > slow_ms) {
        let e = by_second.entry((p.sent_us / 1e6) as u64).or_default();
        e.0 += 1;
        e.1 = e.1.max(p.ms());
    }
    if by_second.is_empty() {
        return;
    }
    println!("slow pickups (over {slow_ms} ms), by the second their enqueue was sent:");
    for (second, (count, worst)) in by_second {
        println!("  at {second:>5} s: {count:>4}, slowest {worst:.0} ms");
    }
}

/// Where each pickup's time went, at the servers' own timestamps (whole
/// milliseconds): before the job was written (the enqueue's request, on
/// the way in), from its enqueue to its claim (`created_at` to
/// `started_at`: the wake-up and the claim's transaction), and after (the
/// claim's commit and answer, and this process reading it). For every
/// pickup and for those over `slow_ms`: whether a slow one was slow in
/// the servers or around them (this process runs the whole fleet on the
/// same cores).
async fn print_split(
    c: &reqwest::Client,
    base: &str,
    key: &str,
    picked: &[Pickup],
    epoch_ms: f64,
    slow_ms: f64,
) {
    let mut parts = Vec::with_capacity(picked.len());
    for chunk in picked.chunks(32) {
        let mut reads = Vec::new();
        for p in chunk {
            let url = format!("{base}/v1/jobs/{}", p.id);
            let (c, key) = (c.clone(), key.to_owned());
            let (sent, got) = (epoch_ms + p.sent_us / 1e3, epoch_ms + p.got_us / 1e3);
            reads.push(tokio::spawn(async move {
                let job: Value = c
                    .get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let at = |field: &str| {
                    job[field]
                        .as_str()?
                        .parse::<jiff::Timestamp>()
                        .ok()
                        .map(|t| t.as_millisecond() as f64)
                };
                let (created, started) = (at("created_at")?, at("started_at")?);
                Some((
                    got - sent,
                    [created - sent, started - created, got - started],
                ))
            }));
        }
        for r in reads {
            if let Ok(Some(p)) = r.await {
                parts.push(p);
            }
        }
    }
    let show = |label: &str, of: Vec<[f64; 3]>| {
        if of.is_empty() {
            return;
        }
        // The servers' timestamps are whole milliseconds and the bench's
        // are not: a part a fraction of a millisecond long can come out
        // below zero, which is shown as the zero it is.
        let p = |i: usize, q: f64| {
            let mut v: Vec<f64> = of.iter().map(|s| s[i]).collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, q).max(0.0)
        };
        println!(
            "  {label} ({}): before the enqueue's write p50 {:.0} p99 {:.0} ms | enqueue to claim p50 {:.0} p99 {:.0} ms | after the claim p50 {:.0} p99 {:.0} ms",
            of.len(),
            p(0, 0.5),
            p(0, 0.99),
            p(1, 0.5),
            p(1, 0.99),
            p(2, 0.5),
            p(2, 0.99),
        );
    };
    println!("pickups split at the servers' timestamps (whole ms):");
    show("every pickup", parts.iter().map(|p| p.1).collect());
    show(
        &format!("pickups over {slow_ms} ms"),
        parts
            .iter()
            .filter(|p| p.0 > slow_ms)
            .map(|p| p.1)
            .collect(),
    );
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for &n in &a.agents {
            one_fleet(&a, n).await;
        }
    });
}
