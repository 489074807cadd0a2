//! Starting `homeostat run` as a process, for the process tests.

#![allow(dead_code, unreachable_pub)] // each test file uses part of it

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod fleet;

/// A running `homeostat run`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub address: String,
    /// Everything it printed on standard output so far.
    pub stdout: Arc<Mutex<String>>,
    /// Everything it logged (standard error) so far.
    pub stderr: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the server logged last: a flaky bound
        // is otherwise lost with its run.
        if std::thread::panicking() {
            let log = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL);
            eprintln!(
                "--- the server's last {} log lines ---\n{}",
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
    }
}

/// How many of its last log lines a server shows when its test fails.
const LOG_TAIL: usize = 150;

/// The URL `homeostat run` reaches `test`'s PostgreSQL schema at.
pub fn database_url(test: &homeostat_testkit::TestStore) -> String {
    format!(
        "{}?options[search_path]={}",
        homeostat_testkit::pg_url().unwrap(),
        test.schema().unwrap()
    )
}

/// A fresh directory name under the temporary directory.
pub fn data_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("homeostat-run-{}-{nanos}", std::process::id()))
}

/// Starts the server on a free port of loopback with the embedded
/// database in `dir`, and waits (with a deadline) for the line that says
/// where it listens.
pub fn start(dir: &Path) -> Server {
    start_with(dir, &[])
}

/// [`start`] with extra `HOMEOSTAT_*` variables.
pub fn start_with(dir: &Path, env: &[(&str, &str)]) -> Server {
    start_at(dir, "127.0.0.1:0", env)
}

/// [`start_with`] listening on `listen` (a restart on the same address).
pub fn start_at(dir: &Path, listen: &str, env: &[(&str, &str)]) -> Server {
    spawn(
        Command::new(assert_cmd::cargo::cargo_bin("homeostat")),
        dir,
        listen,
        env,
    )
}

/// [`start_with`] under an open-file limit of `files` (`ulimit -n`).
pub fn start_with_open_files(dir: &Path, env: &[(&str, &str)], files: u32) -> Server {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
        .arg(assert_cmd::cargo::cargo_bin("homeostat"));
    spawn(cmd, dir, "127.0.0.1:0", env)
}

fn spawn(mut cmd: Command, dir: &Path, listen: &str, env: &[(&str, &str)]) -> Server {
    cmd.args(["run", "--listen", listen, "--data-dir"])
        .arg(dir)
        .env("HOMEOSTAT_LOG_FORMAT", "json")
        .env_remove("HOMEOSTAT_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let logged = Arc::new(Mutex::new(String::new()));
    let log_sink = logged.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            {
                let mut s = log_sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
            let parsed: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if parsed["fields"]["message"] == "homeostat listening" {
                let _ = tx.send(parsed["fields"]["address"].as_str().unwrap().to_owned());
            }
        }
    });
    let stdout = Arc::new(Mutex::new(String::new()));
    let out = child.stdout.take().unwrap();
    let sink = stdout.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server never said where it listens");
    Server {
        child,
        address,
        stdout,
        stderr: logged,
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The admin key it printed on its first start (printed before it
    /// listens, so present once it listens).
    pub fn admin_key(&self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let printed = self.stdout.lock().unwrap().clone();
            if let Some(key) = printed.lines().find(|l| l.starts_with("hsk_")) {
                return Some(key.to_owned());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits (with a deadline) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        // kill(2) through libc needs `unsafe`, which this workspace denies;
        // the `kill` command sends the same signal.
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits (with a deadline) until `/readyz` answers 200.
pub async fn ready(client: &reqwest::Client, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = client.get(server.url("/readyz")).send().await
            && res.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP client (installing the crypto provider reqwest needs).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A free TCP port on loopback (free when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// POSTs `body` as JSON (with a bearer credential, if any) and returns the
/// answer's JSON, asserting a success status.
pub async fn post_json(
    client: &reqwest::Client,
    url: String,
    bearer: Option<&str>,
    body: &Value,
) -> Value {
    let mut req = client.post(url).json(body);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The server's `/metrics`, in the Prometheus text format.
pub async fn metrics(client: &reqwest::Client, server: &Server) -> String {
    client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// GETs JSON with a bearer credential, asserting a success status.
pub async fn get_json(client: &reqwest::Client, url: String, bearer: &str) -> Value {
    let res = client.get(url).bearer_auth(bearer).send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Asks `server` for a walk of the audit chain and waits for the walk
/// (by whichever replica leads audit-chain-verify) to be over: the
/// finished verification.
pub async fn verify_audit(client: &reqwest::Client, server: &Server, admin: &str) -> Value {
    let asked = post_json(
        client,
        server.url("/v1/audit/verify"),
        Some(admin),
        &json!({}),
    )
    .await;
    let path = format!("/v1/audit/verifications/{}", asked["id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let v = get_json(client, server.url(&path), admin).await;
        if !["pending", "running"].contains(&v["state"].as_str().unwrap()) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the walk never finished: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A tenant named `name` and a bootstrap token for `uses` of its agents:
/// the tenant's JSON and the token's secret.
pub async fn tenant_and_bootstrap(
    client: &reqwest::Client,
    server: &Server,
    admin: &str,
    name: &str,
    uses: u32,
) -> (Value, String) {
    let tenant = post_json(
        client,
        server.url("/v1/tenants"),
        Some(admin),
        &json!({ "name": name }),
    )
    .await;
    let token = post_json(
        client,
        server.url("/v1/bootstrap-tokens"),
        Some(admin),
        &serde_json::json!({"tenant_id": tenant["id"], "uses": uses}),
    )
    .await;
    let secret = token["secret"].as_str().unwrap().to_owned();
    (tenant, secret)
}

/// Polls (with a deadline of `within`) until at least `n` jobs succeeded.
pub async fn until_succeeded(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    n: usize,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let done = get_json(
            client,
            server.url("/v1/jobs?state=succeeded&limit=500"),
            key,
        )
        .await;
        let count = done["items"].as_array().unwrap().len();
        if count >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{count} of {n} jobs succeeded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
