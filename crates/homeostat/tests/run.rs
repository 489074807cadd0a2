//! `homeostat run` as a process: on a fresh data directory it answers
//! `/readyz`, prints its admin key once, serves the API over real HTTP, and
//! stops cleanly on SIGTERM.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{client, data_dir, post_json, ready, start, start_with};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_is_ready_prints_its_admin_key_once_and_stops_on_sigterm() {
    let dir = data_dir();
    let client = client();
    let mut server = start(&dir);
    ready(&client, &server).await;
    let key = server.admin_key().expect("no admin key printed");
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    // What it created is its owner's alone, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the data directory");
    for file in ["homeostat.db", "homeostat.db-wal", "homeostat.db-shm"] {
        let path = dir.join(file);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{file}");
        }
    }
    assert!(dir.join("homeostat.db").exists());

    // Logging everything it can: no secret may reach a log line.
    let mut again = start_with(&dir, &[("RUST_LOG", "debug")]);
    ready(&client, &again).await;
    let auth = format!("Bearer {key}");
    // The key works over real HTTP: a tenant, a bootstrap token, an agent, a
    // job through its whole life.
    let tenant = post_json(
        &client,
        again.url("/v1/tenants"),
        Some(&key),
        &json!({"name": "acme"}),
    )
    .await;
    let bootstrap = post_json(
        &client,
        again.url("/v1/bootstrap-tokens"),
        Some(&key),
        &json!({"tenant_id": tenant["id"]}),
    )
    .await;
    let agent = post_json(
        &client,
        again.url("/v1/agent/register"),
        None,
        &json!({"bootstrap_token": bootstrap["secret"], "agent": {"name": "n1", "queues": ["q"]}}),
    )
    .await;
    let cred = format!("Bearer {}", agent["credential"].as_str().unwrap());
    let enqueued = client
        .post(again.url("/v1/jobs"))
        .header("authorization", &auth)
        .json(&json!({"tenant_id": tenant["id"], "queue": "q", "kind": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(enqueued.status(), 201);
    let claimed = post_json(
        &client,
        again.url("/v1/agent/claim"),
        cred.strip_prefix("Bearer "),
        &json!({"capacity": 1, "wait_secs": 5}),
    )
    .await;
    let job = &claimed["jobs"][0];
    let done = client
        .post(again.url(&format!(
            "/v1/agent/jobs/{}/complete",
            job["id"].as_str().unwrap()
        )))
        .header("authorization", &cred)
        .json(&json!({"lease_token": job["lease_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(
        done.headers().get("x-request-id").is_some(),
        "every answer carries its request id"
    );

    // A long poll in flight when SIGTERM arrives answers at once, empty.
    let waiting = tokio::spawn({
        let client = client.clone();
        let url = again.url("/v1/agent/claim");
        async move {
            client
                .post(url)
                .header("authorization", cred)
                .json(&json!({"capacity": 1, "wait_secs": 50}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    let metrics_deadline = Instant::now() + Duration::from_secs(10);
    // Wait until the claim is parked (it shows as a request in flight only
    // when it ends, so poll the process's view: the server counts it).
    loop {
        let text = common::metrics(&client, &again).await;
        if text.contains("homeostat_claims_waiting 1") {
            break;
        }
        assert!(Instant::now() < metrics_deadline, "the claim never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_at = Instant::now();
    let secrets = [
        key.clone(),
        bootstrap["secret"].as_str().unwrap().to_owned(),
        agent["credential"].as_str().unwrap().to_owned(),
    ];
    let status = tokio::task::spawn_blocking(move || {
        let s = again.terminate();
        let printed = again.stdout.lock().unwrap().clone();
        let logged = again.stderr.lock().unwrap().clone();
        assert!(
            logged.contains("\"request\""),
            "debug logs name each request"
        );
        for secret in &secrets {
            assert!(
                !logged.contains(secret.as_str()),
                "a secret reached the log"
            );
        }
        (s, printed)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
    let answer = waiting.await.unwrap();
    assert_eq!(answer["jobs"], json!([]));
    assert!(stopped_at.elapsed() < Duration::from_secs(30));
    // The second start found the admin key: nothing printed.
    assert!(!status.1.contains("hsk_"), "a second admin key was printed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_configuration_exits_2_naming_the_key() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("homeostat.toml");
    std::fs::write(&file, "[api]\nlease_tll = \"1m\"\n").unwrap();
    let out = Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api.lease_tll"), "{err}");
    let check = Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    let default = Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
        .args(["config", "default"])
        .output()
        .unwrap();
    std::fs::write(&file, &default.stdout).unwrap();
    let check = Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// In a shell where the CLI's variables are exported, and in a pod where
/// Kubernetes injected a Service's variables, the server starts as if they
/// were not there; and a lost first-start key has a way back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_variables_do_not_stop_it_and_a_lost_admin_key_is_replaced() {
    let dir = data_dir();
    let client = client();
    let foreign = [
        ("HOMEOSTAT_SERVER", "http://127.0.0.1:8080"),
        ("HOMEOSTAT_TOKEN", "hsk_exported_by_the_walkthrough"),
        ("HOMEOSTAT_BIN", "target/debug/homeostat"),
        ("HOMEOSTAT_PORT", "tcp://10.96.0.12:8080"),
        ("HOMEOSTAT_SERVICE_HOST", "10.96.0.12"),
        ("HOMEOSTAT_SERVICE_PORT", "8080"),
        ("HOMEOSTAT_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("HOMEOSTAT_PORT_8080_TCP_ADDR", "10.96.0.12"),
        ("HOMEOSTAT_PORT_8080_TCP_PORT", "8080"),
        ("HOMEOSTAT_PORT_8080_TCP_PROTO", "tcp"),
    ];
    let mut server = start_with(&dir, &foreign);
    ready(&client, &server).await;
    assert!(server.admin_key().is_some());
    assert!(server.terminate().success());
    // The key printed at the first start is lost: make another.
    let out = Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
        .args(["admin-key", "--data-dir"])
        .arg(&dir)
        .env_remove("HOMEOSTAT_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let key = printed
        .lines()
        .find(|l| l.starts_with("hsk_"))
        .expect("a key printed")
        .to_owned();
    let again = start_with(&dir, &[]);
    ready(&client, &again).await;
    let tenants = client
        .get(again.url("/v1/tenants"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(tenants.status(), 200);
    let audit = client
        .get(again.url("/v1/audit?limit=1000"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(audit.contains("homeostat:admin-key"), "{audit}");
    assert!(!audit.contains(&key), "a secret in the audit log");
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}

/// periodic-jobs is a keyed controller, one key per schedule, each
/// reconciled at its own slots: a schedule every 4 s enqueues a job for
/// every slot, none missed, each within seconds of it by the server's own
/// audit times (its resync, or a sweep at that interval, would be up to a
/// minute late), and the controller shows its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_schedules_enqueue_at_their_own_slots() {
    let dir = data_dir();
    let client = client();
    let mut first = start(&dir);
    ready(&client, &first).await;
    let key = first.admin_key().expect("no admin key printed");
    let tenant = post_json(
        &client,
        first.url("/v1/tenants"),
        Some(&key),
        &json!({"name": "reports"}),
    )
    .await;
    assert!(first.terminate().success());

    let schedules = format!(
        r#"[{{name = "tick", cron = "*/4 * * * * *", timezone = "UTC", tenant_id = "{}", job = {{queue = "reports", kind = "tick"}}}}]"#,
        tenant["id"].as_str().unwrap()
    );
    let mut server = start_with(
        &dir,
        &[("HOMEOSTAT_CONTROLLERS__PERIODIC__SCHEDULES", &schedules)],
    );
    ready(&client, &server).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let page = common::get_json(&client, server.url("/v1/audit?limit=1000"), &key).await;
        let events: Vec<Value> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "jobs.periodic")
            .cloned()
            .collect();
        if events.len() >= 5 {
            break events;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let time = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let slots: Vec<jiff::Timestamp> = events.iter().map(|e| time(&e["details"]["slot"])).collect();
    // The first may be a catch-up of the slot before the start; from then
    // on, every slot once, each at its own time: within the 4 s between
    // slots on two loaded cores, where the 60 s resync would find a slot
    // up to a minute late (so would a sweep at that interval).
    for (e, slot) in events.iter().zip(&slots).skip(1) {
        let late = time(&e["at"]).duration_since(*slot);
        assert!(
            late >= jiff::SignedDuration::ZERO && late < jiff::SignedDuration::from_secs(4),
            "slot {slot} enqueued {late:?} after it"
        );
    }
    for pair in slots[1..].windows(2) {
        assert_eq!(
            pair[1].duration_since(pair[0]),
            jiff::SignedDuration::from_secs(4),
            "{slots:?}"
        );
    }
    let controllers = common::get_json(&client, server.url("/v1/controllers"), &key).await;
    let periodic = controllers["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "periodic-jobs")
        .unwrap()
        .clone();
    let queued = periodic["keys"]["waiting"].as_u64().unwrap()
        + periodic["keys"]["active"].as_u64().unwrap();
    assert_eq!(
        queued, 1,
        "the schedule waits for its next slot: {periodic}"
    );
    assert!(server.terminate().success());
}
