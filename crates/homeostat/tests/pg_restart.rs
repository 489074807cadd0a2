//! PostgreSQL restarted under load: while it is down the server answers
//! 503 `unavailable` and `/readyz` says why; when it is back everything
//! resumes without restarting homeostat, and every job still ends
//! succeeded, once. The test runs a PostgreSQL of its own (initdb into a
//! temporary directory, a free port), so that restarting it disturbs no
//! other test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, data_dir, post_json, ready};
use serde_json::json;

/// A PostgreSQL cluster of the test's own.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn run(&self, tool: &str, args: &[&str]) -> bool {
        let tool = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            // PostgreSQL refuses to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(tool);
            c
        } else {
            Command::new(tool)
        };
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data.parent().unwrap().display()
        );
        let log = self.data.parent().unwrap().join("pg.log");
        let data = self.data.display().to_string();
        let log = log.display().to_string();
        assert!(
            self.run(
                "pg_ctl",
                &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"]
            ),
            "PostgreSQL did not start"
        );
    }

    fn stop(&self) {
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(self.data.parent().unwrap());
    }
}

/// A fresh cluster, or `None` (with a notice) where PostgreSQL's tools are
/// not installed.
fn postgres() -> Option<Postgres> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .find(|b| b.join("initdb").exists());
    let Some(bin) = bin else {
        eprintln!("SKIPPED: PostgreSQL's server tools (initdb, pg_ctl) are not installed");
        return None;
    };
    let root = data_dir();
    std::fs::create_dir_all(&root).unwrap();
    let as_postgres = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if as_postgres {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root)
            .status()
            .unwrap();
    }
    let pg = Postgres {
        bin,
        data: root.join("data"),
        port: common::free_port(),
        as_postgres,
    };
    let data = pg.data.display().to_string();
    assert!(
        pg.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]
        ),
        "initdb failed"
    );
    pg.start();
    Some(pg)
}

const WORK: &str = "sleep 0.05; echo ok";

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
        .args(["--bootstrap-token", bootstrap])
        .arg("--state-file")
        .arg(dir.join(format!("agent-{n}.json")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .args(["--exec", "sh", "-c", WORK])
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_loses_nothing() {
    let Some(pg) = postgres() else { return };
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let c = client();
    let db = pg.url();
    let server = common::start_with(
        &dir.join("data"),
        &[
            ("HOMEOSTAT_DATABASE_URL", db.as_str()),
            ("HOMEOSTAT_API__HEARTBEAT_INTERVAL", "1s"),
            ("HOMEOSTAT_API__LEASE_TTL", "5s"),
            ("HOMEOSTAT_CONTROLLERS__JOB_RECOVERY__INTERVAL", "1s"),
            ("HOMEOSTAT_JOBS__RETRY_INITIAL", "1s"),
        ],
    );
    ready(&c, &server).await;
    let admin = server.admin_key().unwrap();
    let (tenant, bootstrap) = common::tenant_and_bootstrap(&c, &server, &admin, "acme", 2).await;
    let url = server.url("");
    let mut agents: Vec<Child> = (0..2).map(|n| agent(&url, &dir, n, &bootstrap)).collect();
    let jobs: Vec<_> = (0..200)
        .map(|i| json!({"queue": "work", "kind": "step", "payload": {"i": i}}))
        .collect();
    post_json(
        &c,
        server.url("/v1/jobs"),
        Some(&admin),
        &json!({"tenant_id": tenant["id"], "jobs": jobs}),
    )
    .await;
    // Some work done, then PostgreSQL goes down.
    common::until_succeeded(&c, &server, &admin, 40, Duration::from_secs(60)).await;
    pg.stop();
    // Down: 503 unavailable (retryable), and readiness says why.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = c
            .get(server.url("/v1/jobs"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        if res.status() == 503 {
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["code"], "unavailable", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never unavailable: {}",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let readyz = c.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503);
    let reason = readyz.text().await.unwrap();
    assert!(reason.contains("reason"), "{reason}");
    // Back: everything resumes, with no restart of homeostat.
    pg.start();
    ready(&c, &server).await;
    common::until_succeeded(&c, &server, &admin, 200, Duration::from_secs(120)).await;
    let verify = common::verify_audit(&c, &server, &admin).await;
    assert_eq!(verify["state"], json!("intact"), "{verify}");
    for a in &mut agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    drop(server);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
