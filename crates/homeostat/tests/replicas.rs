//! Two `homeostat run` processes on one PostgreSQL database: both serve the
//! API, each controller runs on one of them, and when the leader stops on
//! SIGTERM it releases its leases, so the other takes over at once rather
//! than after the leases expire (15 s).

mod common;

use std::time::{Duration, Instant};

use common::{client, data_dir, ready};

async fn leads(client: &reqwest::Client, server: &common::Server, key: &str, name: &str) -> bool {
    let all = common::get_json(client, server.url("/v1/controllers"), key).await;
    all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["leader"] == true)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_its_controllers_over_at_once() {
    let Some(test) = homeostat_testkit::postgres().await else {
        return;
    };
    let url = common::database_url(&test);
    let env = [("HOMEOSTAT_DATABASE_URL", url.as_str())];
    let client = client();
    let (dir_a, dir_b) = (data_dir(), data_dir());
    let mut a = common::start_with(&dir_a, &env);
    ready(&client, &a).await;
    let key = a
        .admin_key()
        .expect("the first replica prints the admin key");
    let b = common::start_with(&dir_b, &env);
    ready(&client, &b).await;
    assert!(
        b.admin_key().is_none(),
        "the second replica made a second admin key"
    );

    // job-scheduler ticks every second: the first replica leads it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leads(&client, &a, &key, "job-scheduler").await {
        assert!(Instant::now() < deadline, "the first replica never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!leads(&client, &b, &key, "job-scheduler").await);

    // The follower shows the leader's runs: when, how, and when the next is.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let all = common::get_json(&client, b.url("/v1/controllers"), &key).await;
        let seen = all["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "job-scheduler")
            .cloned()
            .unwrap();
        if seen["last_run"].is_object() {
            break seen;
        }
        assert!(Instant::now() < deadline, "no run shared: {seen}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen["leader"], false, "{seen}");
    assert_eq!(seen["last_run"]["outcome"], "success", "{seen}");
    assert!(seen["next_run"].as_i64().is_some(), "{seen}");
    let listed = assert_cmd::Command::cargo_bin("homeostat")
        .unwrap()
        .args([
            "controllers",
            "list",
            "--server",
            &b.url(""),
            "--token",
            &key,
        ])
        .env_clear()
        .output()
        .unwrap();
    let table = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.status.success(), "{table}");
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("LAST RUN") && header.contains("NEXT RUN"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("job-scheduler "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("success"), "{table}");
    assert!(row.matches('T').count() >= 2, "two times in {row}");

    // What the first replica leads: every exclusive controller (it started
    // first), whose intervals run from a second to an hour.
    let led: Vec<String> = common::get_json(&client, a.url("/v1/controllers"), &key).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["leader"] == true && c["exclusive"] == true)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(led.len() > 5, "{led:?}");

    let stopped_ms = jiff::Timestamp::now().as_millisecond();
    let status = tokio::task::spawn_blocking(move || a.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The second replica hears each release and takes the lease at once,
    // then runs the controller: the run's start, by the server's clock,
    // follows the stop by about a second, not by the controller's interval
    // (up to an hour) nor by the lease's 15 s TTL. The wall clock only
    // guards against a hang.
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in &led {
        let run = loop {
            let all = common::get_json(&client, b.url("/v1/controllers"), &key).await;
            let c = all["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name.as_str())
                .cloned()
                .unwrap();
            let started = c["last_run"]["started_at"].as_i64().unwrap_or(0);
            if c["leader"] == true && started >= stopped_ms {
                break started;
            }
            assert!(
                Instant::now() < deadline,
                "{name} was never taken over: {c}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            run - stopped_ms < 5_000,
            "{name} ran {} ms after the stop: its released lease was not taken at once",
            run - stopped_ms
        );
    }
    drop(b);
    test.cleanup().await;
    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
}

/// A stop is not a fault: stopping a replica on PostgreSQL logs no warning
/// (its listener's connection closing under it was logged as a drop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_on_postgres_logs_no_warning() {
    let Some(test) = homeostat_testkit::postgres().await else {
        return;
    };
    let url = common::database_url(&test);
    let env = [("HOMEOSTAT_DATABASE_URL", url.as_str())];
    let client = client();
    let dir = data_dir();
    for round in 0..6 {
        let mut server = common::start_with(&dir, &env);
        ready(&client, &server).await;
        let status = tokio::task::spawn_blocking(move || {
            let status = server.terminate();
            (status, server.stderr.lock().unwrap().clone())
        })
        .await
        .unwrap();
        assert!(status.0.success(), "{status:?}");
        let warned: Vec<&str> = status
            .1
            .lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .filter(|l| !l.contains("created an admin API key"))
            .collect();
        assert!(warned.is_empty(), "round {round}: {warned:?}");
    }
    test.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}
