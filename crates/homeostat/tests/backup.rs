//! Backups as an operator takes and restores them: `homeostat backup` of
//! the SQLite database while the server runs and takes writes, restored
//! into a new data directory; and PostgreSQL's documented pg_dump and
//! pg_restore procedure (docs/server.md, "Backups"). The restored server
//! verifies its audit chain and has every job the backup held.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{client, data_dir, post_json, ready, start, start_with, verify_audit};
use serde_json::{Value, json};

fn homeostat(args: &[&str]) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("homeostat"))
        .args(args)
        .env_remove("HOMEOSTAT_DATABASE_URL")
        .output()
        .unwrap()
}

/// Every job id the server lists, paging through.
async fn job_ids(c: &reqwest::Client, server: &common::Server, key: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/jobs?limit=500&after={a}"),
            None => "/v1/jobs?limit=500".to_owned(),
        };
        let page = common::get_json(c, server.url(&path), key).await;
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return ids,
        }
    }
}

async fn enqueue(c: &reqwest::Client, server: &common::Server, key: &str, tenant: &Value, n: u32) {
    let jobs: Vec<Value> = (0..n)
        .map(|i| json!({"queue": "reports", "kind": "daily", "payload": {"i": i}}))
        .collect();
    post_json(
        c,
        server.url("/v1/jobs"),
        Some(key),
        &json!({"tenant_id": tenant["id"], "jobs": jobs}),
    )
    .await;
}

/// A first start: the server, its admin key, a tenant, and the ids of the
/// `n` jobs enqueued for it.
async fn first_start(
    c: &reqwest::Client,
    dir: &Path,
    env: &[(&str, &str)],
    n: u32,
) -> (common::Server, String, Value, Vec<String>) {
    let server = start_with(dir, env);
    ready(c, &server).await;
    let key = server.admin_key().unwrap();
    let tenant = post_json(
        c,
        server.url("/v1/tenants"),
        Some(&key),
        &json!({"name": "acme"}),
    )
    .await;
    enqueue(c, &server, &key, &tenant, n).await;
    let jobs = job_ids(c, &server, &key).await;
    (server, key, tenant, jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_sqlite_backup_restores_into_a_server_with_every_job_and_an_intact_chain() {
    let dir = data_dir();
    let c = client();
    let (server, key, tenant, before) = first_start(&c, &dir, &[], 50).await;
    assert_eq!(before.len(), 50);

    // Writes go on while the copy is taken.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let (c, url, key, tenant) = (
            c.clone(),
            server.url("/v1/jobs"),
            key.clone(),
            tenant.clone(),
        );
        let writing = Arc::clone(&writing);
        async move {
            let mut n = 0;
            while writing.load(Ordering::Relaxed) {
                post_json(
                    &c,
                    url.clone(),
                    Some(&key),
                    &json!({"tenant_id": tenant["id"], "queue": "reports", "kind": "live"}),
                )
                .await;
                n += 1;
            }
            n
        }
    });
    let copy = dir.with_extension("backup.db");
    let copy_arg = copy.to_str().unwrap();
    let out = homeostat(&[
        "backup",
        "--data-dir",
        dir.to_str().unwrap(),
        "--to",
        copy_arg,
    ]);
    writing.store(false, Ordering::Relaxed);
    let written_meanwhile = writer.await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("copying"),
        "{out:?}"
    );
    let held: usize = said
        .split(" jobs")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(held >= 50, "{said}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600,
        "the copy is private"
    );

    // An existing file is never overwritten; PostgreSQL is pg_dump's.
    let again = homeostat(&[
        "backup",
        "--data-dir",
        dir.to_str().unwrap(),
        "--to",
        copy_arg,
    ]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    let pg = homeostat(&[
        "backup",
        "--database-url",
        "postgres://127.0.0.1:1/none",
        "--to",
        "/tmp/never.db",
    ]);
    assert_eq!(pg.status.code(), Some(2), "{pg:?}");
    assert!(String::from_utf8_lossy(&pg.stderr).contains("pg_dump"));

    // Restored into a new data directory: the same admin key works, the
    // chain is intact, and the jobs are those of the copy.
    let restored_dir = data_dir();
    std::fs::create_dir_all(&restored_dir).unwrap();
    std::fs::copy(&copy, restored_dir.join("homeostat.db")).unwrap();
    let restored = start(&restored_dir);
    ready(&c, &restored).await;
    assert!(restored.admin_key().is_none(), "not a first start");
    let verified = verify_audit(&c, &restored, &key).await;
    assert_eq!(verified["state"], "intact", "{verified}");
    let after = job_ids(&c, &restored, &key).await;
    assert_eq!(after.len(), held, "the jobs the backup said it held");
    for id in &before {
        assert!(after.contains(id), "job {id} lost");
    }
    assert!(
        after.len() <= 50 + written_meanwhile,
        "{} jobs, {written_meanwhile} written during the copy",
        after.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_pg_dump_procedure_restores_every_job_and_an_intact_chain() {
    let Some(test) = homeostat_testkit::postgres().await else {
        return;
    };
    let schema = test.schema().unwrap().to_owned();
    let base = homeostat_testkit::pg_url().unwrap();
    let db = common::database_url(&test);
    let dir = data_dir();
    let env = [("HOMEOSTAT_DATABASE_URL", db.as_str())];
    let c = client();
    let (mut server, key, _, before) = first_start(&c, &dir, &env, 40).await;
    assert!(server.terminate().success());

    // docs/server.md, "Backups": dump the schema, lose it, restore it.
    let dump = dir.with_extension("dump");
    let dumped = Command::new("pg_dump")
        .args(["--format=custom", "--schema", &schema, "--file"])
        .arg(&dump)
        .arg(&base)
        .output()
        .unwrap();
    assert!(dumped.status.success(), "{dumped:?}");
    drop_schema(&base, &schema);
    let restored = Command::new("pg_restore")
        .args(["--exit-on-error", "--dbname", &base])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(restored.status.success(), "{restored:?}");
    assert!(Path::new(&dump).exists());

    let server = start_with(&dir, &env);
    ready(&c, &server).await;
    let verified = verify_audit(&c, &server, &key).await;
    assert_eq!(verified["state"], "intact", "{verified}");
    let mut after = job_ids(&c, &server, &key).await;
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(after, before);
    drop(server);
    test.cleanup().await;
}

fn drop_schema(url: &str, schema: &str) {
    let dropped = Command::new("psql")
        .args([
            url,
            "--quiet",
            "--command",
            &format!("DROP SCHEMA {schema} CASCADE"),
        ])
        .output()
        .unwrap();
    assert!(dropped.status.success(), "{dropped:?}");
}
