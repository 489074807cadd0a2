//! `homeostat agent` as a process against `homeostat run` on loopback
//! (SQLite): jobs run as a shell script succeed, retry on exit 75, die on
//! other exits; a cancel kills the running program within a heartbeat;
//! SIGTERM drains; a restart reuses the saved credential; a SIGKILLed
//! agent's program dies with it, and what it started is killed by the next
//! agent; an outcome the server could not take is sent by the next agent
//! after a SIGKILL, and the job does not run again.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, data_dir, get_json, post_json, ready};
use serde_json::{Value, json};

const SCRIPT: &str = r#"
case "$HOMEOSTAT_JOB_KIND" in
  ok) read -r input; echo "{\"ok\": true, \"attempt\": $HOMEOSTAT_JOB_ATTEMPT}";;
  retry) if [ "$HOMEOSTAT_JOB_ATTEMPT" = 1 ]; then echo 'try later' >&2; exit 75; fi; echo second;;
  fail) echo 'bad input' >&2; exit 3;;
  trace) echo "\"${TRACEPARENT:-none}\"";;
  hang) sleep 300 & echo $! > "$PIDFILE"; wait;;
  wait) while [ ! -e "$GOFILE" ]; do sleep 0.05; done; echo ran >> "$RUNSFILE"; echo '{"done": true}';;
  orphan) echo $$ > "$LEADERFILE"; sleep 300 & echo $! > "$PIDFILE"; wait;;
esac
"#;

fn agent(server: &str, dir: &Path, token: Option<&str>, extra: &[&str]) -> Child {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("homeostat"));
    cmd.args(["agent", "--server", server, "--queue", "q", "--state-file"])
        .arg(dir.join("agent.json"))
        .args(extra)
        .env("PIDFILE", dir.join("hang.pid"))
        .env("LEADERFILE", dir.join("leader.pid"))
        .env("GOFILE", dir.join("go"))
        .env("RUNSFILE", dir.join("runs"))
        .env_remove("HOMEOSTAT_BOOTSTRAP_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = token {
        cmd.args(["--bootstrap-token", t]);
    }
    cmd.args(["--exec", "sh", "-c", SCRIPT]);
    cmd.spawn().unwrap()
}

async fn job_until(
    c: &reqwest::Client,
    s: &common::Server,
    key: &str,
    id: &str,
    state: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = get_json(c, s.url(&format!("/v1/jobs/{id}")), key).await;
        if job["state"] == state {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is {} not {state}",
            job["state"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid the `hang` job's program wrote, once it wrote it.
async fn started(pidfile: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(pid) = std::fs::read_to_string(pidfile)
            && !pid.trim().is_empty()
        {
            return pid.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "the program never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until process `pid` is gone; fails after `within`.
async fn gone(pid: &str, within: Duration, why: &str) {
    let since = Instant::now();
    loop {
        let alive = Command::new("kill")
            .args(["-0", pid])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if !alive {
            return;
        }
        assert!(since.elapsed() < within, "the program outlived its {why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server on `listen` with `env`, its data in a fresh directory that the
/// agent's files share, once ready: the directory, a client, the server and
/// its admin key.
async fn ready_server(
    listen: &str,
    env: &[(&str, &str)],
) -> (PathBuf, reqwest::Client, common::Server, String) {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let c = client();
    let server = common::start_at(&dir.join("data"), listen, env);
    ready(&c, &server).await;
    let admin = server.admin_key().unwrap();
    (dir, c, server, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_programs_as_jobs() {
    let (dir, c, server, admin) = ready_server(
        "127.0.0.1:0",
        &[
            ("HOMEOSTAT_API__HEARTBEAT_INTERVAL", "1s"),
            ("HOMEOSTAT_JOBS__RETRY_INITIAL", "1s"),
        ],
    )
    .await;
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
        &json!({"tenant_id": tenant["id"]}),
    )
    .await;
    let enqueue = |kind: &'static str| {
        let (c, url, admin, t) = (
            c.clone(),
            server.url("/v1/jobs"),
            admin.clone(),
            tenant["id"].clone(),
        );
        async move {
            let r = post_json(
                &c,
                url,
                Some(&admin),
                &json!({"tenant_id": t, "queue": "q", "kind": kind, "payload": {"n": 1}}),
            )
            .await;
            r["id"].as_str().unwrap().to_owned()
        }
    };
    let ok = enqueue("ok").await;
    let retry = enqueue("retry").await;
    let fail = enqueue("fail").await;

    let mut worker = agent(
        &server.url(""),
        &dir,
        bootstrap["secret"].as_str(),
        &["--concurrency", "2", "--grace", "5"],
    );
    let done = job_until(&c, &server, &admin, &ok, "succeeded").await;
    assert_eq!(done["result"], json!({"ok": true, "attempt": 1}));
    let dead = job_until(&c, &server, &admin, &fail, "dead").await;
    assert!(
        dead["last_error"].as_str().unwrap().contains("bad input"),
        "{dead}"
    );
    let retried = job_until(&c, &server, &admin, &retry, "succeeded").await;
    assert_eq!(retried["result"], json!("second"));

    // The enqueue's trace context reaches the program as TRACEPARENT.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced: Value = c
        .post(server.url("/v1/jobs"))
        .bearer_auth(&admin)
        .header("traceparent", tp)
        .json(&json!({"tenant_id": tenant["id"], "queue": "q", "kind": "trace"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let traced = traced["id"].as_str().unwrap().to_owned();
    let untraced = enqueue("trace").await;
    let done = job_until(&c, &server, &admin, &traced, "succeeded").await;
    assert_eq!(
        (&done["result"], &done["traceparent"]),
        (&json!(tp), &json!(tp))
    );
    let done = job_until(&c, &server, &admin, &untraced, "succeeded").await;
    assert_eq!(done["result"], json!("none"));
    assert!(
        retried["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("try later")
    );

    // A cancel kills the running program within a heartbeat (1 s).
    let hang = enqueue("hang").await;
    job_until(&c, &server, &admin, &hang, "running").await;
    let pidfile = dir.join("hang.pid");
    let pid = started(&pidfile).await;
    post_json(
        &c,
        server.url(&format!("/v1/jobs/{hang}/cancel")),
        Some(&admin),
        &json!({}),
    )
    .await;
    gone(&pid, Duration::from_secs(5), "cancel").await;

    // A job past its timeout (2 s): its program is killed, the attempt
    // fails as retryable.
    std::fs::remove_file(&pidfile).unwrap();
    let slow = post_json(
        &c,
        server.url("/v1/jobs"),
        Some(&admin),
        &json!({"tenant_id": tenant["id"], "queue": "q", "kind": "hang", "timeout_secs": 2}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pid = started(&pidfile).await;
    gone(&pid, Duration::from_secs(10), "timeout").await;
    // Its failed attempt is on record (it may be running again already).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = get_json(&c, server.url(&format!("/v1/jobs/{slow}")), &admin).await;
        if let Some(first) = job["attempts"].as_array().and_then(|a| a.first()) {
            assert!(
                first["error"].as_str().unwrap().contains("timed out"),
                "{job}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timeout was never reported: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cancelled, so that the restart below claims the job enqueued for it
    // and not this one, queued again after its timeout.
    post_json(
        &c,
        server.url(&format!("/v1/jobs/{slow}/cancel")),
        Some(&admin),
        &json!({}),
    )
    .await;

    // SIGTERM: the agent drains and exits 0.
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_exit(&mut worker, Duration::from_secs(20)).success());

    // A restart reuses the saved credential: no bootstrap token needed,
    // whatever URL reaches the server (it was saved under 127.0.0.1); the
    // first server given cannot be reached, so it fails over to the next.
    let again = enqueue("ok").await;
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let servers = format!(
        "{dead},{}",
        server.url("").replace("127.0.0.1", "localhost")
    );
    let mut once = agent(&servers, &dir, None, &["--once"]);
    assert!(wait_exit(&mut once, Duration::from_secs(30)).success());
    job_until(&c, &server, &admin, &again, "succeeded").await;
    let agents = get_json(&c, server.url("/v1/agents"), &admin).await;
    assert_eq!(
        agents["items"].as_array().unwrap().len(),
        1,
        "the restart registered again"
    );

    // Started while no server can be reached, it waits for one instead of
    // exiting; SIGTERM still stops it cleanly.
    let mut waiting = agent(&dead, &dir, None, &[]);
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(3) {
        assert!(waiting.try_wait().unwrap().is_none(), "it gave up at once");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill")
        .args(["-TERM", &waiting.id().to_string()])
        .status()
        .unwrap();
    let stopped = wait_exit(&mut waiting, Duration::from_secs(20));
    assert!(stopped.success(), "not a clean stop: {stopped:?}");

    // Without a saved credential or a bootstrap token: a usage error.
    std::fs::remove_file(dir.join("agent.json")).unwrap();
    let mut orphan = agent(&server.url(""), &dir, None, &["--once"]);
    assert_eq!(
        wait_exit(&mut orphan, Duration::from_secs(10)).code(),
        Some(2)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether process `pid` runs (a zombie, dead but not yet reaped by
/// whoever adopted it, does not).
fn runs(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) state ...": the state follows the last ')'.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Waits until process `pid` no longer runs; fails after `within`.
async fn ends(pid: &str, within: Duration, why: &str) {
    let since = Instant::now();
    while runs(pid) {
        assert!(since.elapsed() < within, "process {pid} outlived {why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server, an agent registered with it, and a job it runs.
struct RunningJob {
    dir: std::path::PathBuf,
    c: reqwest::Client,
    server: common::Server,
    admin: String,
    agent: Child,
    job: String,
}

/// Starts a server on `listen`, an agent, and a job of `kind`; returns once
/// the job runs.
async fn a_running_job(listen: &str, kind: &str) -> RunningJob {
    let (dir, c, server, admin) = ready_server(listen, &[]).await;
    let (tenant, bootstrap) = common::tenant_and_bootstrap(&c, &server, &admin, "acme", 1).await;
    let agent = agent(&server.url(""), &dir, Some(&bootstrap), &[]);
    let job = post_json(
        &c,
        server.url("/v1/jobs"),
        Some(&admin),
        &json!({"tenant_id": tenant["id"], "queue": "q", "kind": kind}),
    )
    .await;
    let job = job["id"].as_str().unwrap().to_owned();
    job_until(&c, &server, &admin, &job, "running").await;
    RunningJob {
        dir,
        c,
        server,
        admin,
        agent,
        job,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_job_dies_with_it_and_its_restart_kills_what_is_left() {
    let RunningJob {
        dir,
        server,
        agent: mut first,
        ..
    } = a_running_job("127.0.0.1:0", "orphan").await;
    let leader = started(&dir.join("leader.pid")).await;
    let child = started(&dir.join("hang.pid")).await;

    first.kill().unwrap();
    first.wait().unwrap();
    // The program dies with its agent (its parent-death signal)…
    ends(&leader, Duration::from_secs(10), "its agent's SIGKILL").await;
    // …but what it started in the background does not get that signal.
    assert!(runs(&child), "the background program died on its own");
    // The next agent on the same state file kills the job's group first.
    let mut second = agent(&server.url(""), &dir, None, &[]);
    ends(&child, Duration::from_secs(20), "the restart of its agent").await;
    second.kill().unwrap();
    second.wait().unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_the_server_missed_is_sent_by_the_restarted_agent() {
    let listen = format!("127.0.0.1:{}", common::free_port());
    let RunningJob {
        dir,
        c,
        server,
        admin,
        agent: mut first,
        job: id,
    } = a_running_job(&listen, "wait").await;

    // The control plane goes away; the job finishes; its agent cannot
    // report it, keeps its outcome, and is killed before the server is back.
    drop(server);
    std::fs::write(dir.join("go"), "").unwrap();
    let outbox = dir.join("agent.json.outcomes");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&outbox).is_ok_and(|t| t.contains(&id)) {
        assert!(Instant::now() < deadline, "the outcome was never kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();

    let server = common::start_at(&dir.join("data"), &listen, &[]);
    let mut second = agent(&server.url(""), &dir, None, &[]);
    let done = job_until(&c, &server, &admin, &id, "succeeded").await;
    assert_eq!(done["attempt"], 1, "{done}");
    assert_eq!(done["result"], json!({"done": true}), "{done}");
    let runs = std::fs::read_to_string(dir.join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the job ran again: {runs:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&outbox).is_ok_and(|t| t.contains(&id)) {
        assert!(Instant::now() < deadline, "the sent outcome was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sockets `pid` holds (their inodes).
fn sockets_of(pid: u32) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .map(|target| target.to_string_lossy().into_owned())
                .filter(|target| target.starts_with("socket:"))
                .collect()
        })
        .unwrap_or_default()
}

/// When the server last recorded a heartbeat of its one agent.
async fn last_heartbeat(
    c: &reqwest::Client,
    server: &common::Server,
    admin: &str,
) -> Option<jiff::Timestamp> {
    let agents = get_json(c, server.url("/v1/agents"), admin).await;
    agents["items"][0]["last_heartbeat_at"]
        .as_str()
        .map(|t| t.parse().unwrap())
}

/// An agent's heartbeat connection idles one interval between beats; the
/// server keeps it open (the idle bound is at least twice the interval), so
/// the agent opens no connection while it beats: closed between beats,
/// every other beat opened one and some raced the close and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_its_connections_between_heartbeats() {
    let (dir, c, server, admin) = ready_server(
        "127.0.0.1:0",
        &[
            ("HOMEOSTAT_API__HEARTBEAT_INTERVAL", "1s"),
            ("HOMEOSTAT_API__HEADER_READ_TIMEOUT", "2s"),
        ],
    )
    .await;
    let (_, bootstrap) = common::tenant_and_bootstrap(&c, &server, &admin, "acme", 1).await;
    let mut worker = agent(&server.url(""), &dir, Some(&bootstrap), &[]);
    // The server's own record of the agent's beats paces the observation.
    let last_beat = || last_heartbeat(&c, &server, &admin);
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(at) = last_beat().await {
            break at;
        }
        assert!(Instant::now() < deadline, "the agent never heartbeated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Two beats on, its heartbeat connection is open.
    while last_beat().await.unwrap() < first + jiff::SignedDuration::from_secs(2) {
        assert!(Instant::now() < deadline, "the agent stopped heartbeating");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = sockets_of(worker.id());
    let from = last_beat().await.unwrap();
    let mut seen = held.clone();
    // Four beats more, as the server recorded them.
    while last_beat().await.unwrap() < from + jiff::SignedDuration::from_secs(4) {
        assert!(Instant::now() < deadline, "the agent stopped heartbeating");
        seen.extend(sockets_of(worker.id()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !held.is_empty() && seen == held,
        "the agent opened connections while it heartbeated: held {held:?}, seen {seen:?}"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
}
