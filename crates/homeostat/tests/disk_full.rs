//! SQLite on a disk that fills up: writes fail as unavailable (503, nothing
//! half-written), `/readyz` names the failing check, and once space comes
//! back writes succeed again within seconds, without a restart. The data
//! directory is a small tmpfs (mounting one needs root, as CI runs).

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{client, data_dir, ready};
use serde_json::{Value, json};

/// Mounts a tmpfs of `mib` MiB at `dir`; `false` when this process may not.
fn mount_tmpfs(dir: &Path, mib: u32) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={mib}m,mode=0700"),
            "tmpfs",
        ])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

/// Unmounts `dir` when dropped, whatever the test did.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0)
            .status();
        let _ = std::fs::remove_dir_all(self.0);
    }
}

/// Fills the file system under `dir` with `filler` until it is full.
fn fill(filler: &Path) {
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {}
    let _ = f.sync_all();
}

async fn enqueue(c: &reqwest::Client, url: &str, key: &str, tenant: &Value) -> (u16, Value) {
    let res = c
        .post(url)
        .bearer_auth(key)
        .json(
            &json!({"tenant_id": tenant["id"], "queue": "q", "kind": "k",
                      "payload": {"pad": "x".repeat(2048)}}),
        )
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn readyz(c: &reqwest::Client, server: &common::Server) -> (u16, Value) {
    let res = c.get(server.url("/readyz")).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_until_space_returns_then_heals() {
    let dir = data_dir();
    if !mount_tmpfs(&dir, 24) {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let _mounted = Mounted(&dir);
    let c = client();
    let server = common::start(&dir);
    ready(&c, &server).await;
    let key = server.admin_key().unwrap();
    let tenant = common::post_json(
        &c,
        server.url("/v1/tenants"),
        Some(&key),
        &json!({"name": "acme"}),
    )
    .await;
    let jobs = server.url("/v1/jobs");
    assert_eq!(enqueue(&c, &jobs, &key, &tenant).await.0, 201);

    let filler = dir.join("filler");
    fill(&filler);
    // Writes fail as unavailable, not as a server fault.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut accepted_while_full = 0;
    let refused = loop {
        let (status, body) = enqueue(&c, &jobs, &key, &tenant).await;
        if status != 201 {
            break (status, body);
        }
        accepted_while_full += 1;
        assert!(
            Instant::now() < deadline,
            "writes never failed on a full disk"
        );
    };
    assert_eq!(refused.0, 503, "{refused:?}");
    assert_eq!(refused.1["code"], "unavailable", "{refused:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let not_ready = loop {
        let (status, body) = readyz(&c, &server).await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        not_ready["reason"]
            .as_str()
            .unwrap()
            .starts_with("writes: "),
        "{not_ready}"
    );

    // Space comes back: writes and readiness heal without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = enqueue(&c, &jobs, &key, &tenant).await;
        if status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes never recovered: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(&c, &server).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready again: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everything acknowledged is there: the first job, those accepted
    // before the disk was full, and the one after.
    let listed = common::get_json(&c, server.url("/v1/jobs?limit=500"), &key).await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        2 + accepted_while_full,
        "{listed}"
    );
    drop(server);
}
