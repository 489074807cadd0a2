//! The schema version check at start.

use homeostat_testkit::{self as backends, At};

use homeostat_model::{AgentId, JobId, TenantId};
use homeostat_store::{Store, StoreError, StoreOptions};

#[tokio::test]
async fn sqlite_refuses_a_schema_newer_than_this_build() {
    let path = backends::sqlite_path();
    let url = format!("sqlite:{}", path.display());
    let store = Store::connect(&url, StoreOptions::default()).await.unwrap();
    store.check_schema().await.unwrap();
    let homeostat_store::PoolForTests::Sqlite(pool) = store.pool_for_tests() else {
        unreachable!()
    };
    // What this build migrates to: the version it says it supports.
    let applied: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(pool)
        .await
        .unwrap();
    // A future migration that changes what this build uses says so.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE schema_compat SET oldest_reader = 999")
        .execute(pool)
        .await
        .unwrap();
    // Readiness sees it at once, without a restart.
    assert!(matches!(
        store.check_schema().await,
        Err(StoreError::SchemaTooNew { database: 999, .. })
    ));
    store.close().await;
    let err = Store::connect(&url, StoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                database: 999,
                supported
            } if supported == applied
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("newer than this homeostat supports")
    );
    // Reopening an up-to-date database is fine.
    let _ = std::fs::remove_file(&path);
    Store::connect(&url, StoreOptions::default()).await.unwrap();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn postgres_refuses_a_schema_newer_than_this_build() {
    let Some(test) = backends::postgres().await else {
        return;
    };
    let homeostat_store::PoolForTests::Postgres(pool) = test.pool_for_tests() else {
        unreachable!()
    };
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE schema_compat SET oldest_reader = 999")
        .execute(pool)
        .await
        .unwrap();
    let err = Store::connect_postgres(
        pool.connect_options().as_ref().clone(),
        StoreOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { database: 999, .. }),
        "{err}"
    );
    test.cleanup().await;
}

#[tokio::test]
async fn unknown_urls_are_refused_by_scheme_without_their_password() {
    let err = Store::connect(
        "mysql://admin:hunter2@localhost/db",
        StoreOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported database URL scheme \"mysql\": expected sqlite:… or postgres://…"
    );
    assert_eq!(err.code().as_str(), "invalid");
}

/// A PostgreSQL database migrated by an earlier build (schema 2), with jobs
/// in it, keeps them through the rebuilds of the jobs table (3: column
/// order; 4: state as an enum), and the rebuilt table keeps its indexes'
/// guarantees.
#[tokio::test]
async fn postgres_keeps_jobs_through_the_jobs_table_rebuild() {
    use std::borrow::Cow;

    use homeostat_model::NewJob;
    use sqlx::migrate::{Migration, MigrationType, Migrator};

    let Some(url) = backends::pg_url() else {
        return;
    };
    let schema = format!("hs_test_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = backends::pg_pool(&url, &schema, 2).await;
    let earlier = Migrator::with_migrations(vec![
        Migration::new(
            1,
            Cow::Borrowed("init"),
            MigrationType::Simple,
            sqlx::SqlStr::from_static(include_str!("../migrations/postgres/0001_init.sql")),
            false,
        ),
        Migration::new(
            2,
            Cow::Borrowed("periodic"),
            MigrationType::Simple,
            sqlx::SqlStr::from_static(include_str!("../migrations/postgres/0002_periodic.sql")),
            false,
        ),
    ]);
    earlier.run(&pool).await.unwrap();
    let tenant = uuid::Uuid::now_v7();
    let job = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tenants (id, name, tier, created_at) VALUES ($1, 'acme', 'standard', 1000)",
    )
    .bind(tenant)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, base_priority,
           effective_priority, fingerprint, occurrences, state, max_attempts, timeout_ms, run_at,
           queued_at, deadline_at, created_at, updated_at)
         VALUES ($1, $2, 'builds', 'build', '{\"ref\":\"main\"}', 5, 105, 130, 'fp-1', 2, 'queued',
           4, 600000, 1000, 1000, 3601000, 1000, 2000)",
    )
    .bind(job)
    .bind(tenant)
    .execute(&pool)
    .await
    .unwrap();
    // A running job: its state and lease survive the change of state type.
    let running = uuid::Uuid::now_v7();
    let agent = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, base_priority,
           effective_priority, occurrences, state, attempt, max_attempts, timeout_ms, run_at,
           queued_at, created_at, updated_at, lease_agent, lease_token, lease_expires_at,
           timeout_at, started_at)
         VALUES ($1, $2, 'builds', 'build', 'null', 0, 100, 100, 1, 'running', 1, 3, 600000,
           1000, 1000, 1000, 1500, $3, 7, 301500, 601500, 1500)",
    )
    .bind(running)
    .bind(tenant)
    .bind(agent)
    .execute(&pool)
    .await
    .unwrap();

    pool.close().await;
    let store = Store::connect_postgres(
        backends::pg_connect(&url, &schema),
        StoreOptions {
            clock: homeostat_store::StoreClock::manual(
                homeostat_runtime::ManualClock::at_test_epoch(),
            ),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let (job, running) = (JobId::from(job), JobId::from(running));
    let (tenant, agent) = (TenantId::from(tenant), AgentId::from(agent));
    let kept = store.get_job(job).await.unwrap();
    assert_eq!(kept.tenant_id, tenant);
    assert_eq!(
        (kept.queue.as_str(), kept.kind.as_str()),
        ("builds", "build")
    );
    assert_eq!(kept.payload, serde_json::json!({"ref": "main"}));
    // Its tier's base (100) and its ageing no longer count: a tier weighs
    // shares instead (migration 0017); ageing recomputes from its turn.
    assert_eq!((kept.priority, kept.effective_priority), (5, 5));
    assert_eq!(kept.fingerprint.as_deref(), Some("fp-1"));
    assert_eq!(
        (kept.occurrences, kept.max_attempts, kept.timeout_secs),
        (2, 4, 600)
    );
    assert_eq!(kept.state, homeostat_model::JobState::Queued);
    assert_eq!(kept.updated_at.as_millisecond(), 2000);
    let still_running = store.get_job(running).await.unwrap();
    assert_eq!(still_running.state, homeostat_model::JobState::Running);
    assert_eq!(
        (
            still_running.lease_agent,
            still_running.lease_token,
            still_running.lease_expires_at.map(|t| t.as_millisecond())
        ),
        (Some(agent), 7, Some(301_500))
    );
    // The running-jobs index came back: its lease expires and the sweep
    // finds it.
    let swept = store
        .at(jiff::Timestamp::from_millisecond(400_000).unwrap())
        .requeue_expired_leases(10, None, None)
        .await
        .unwrap();
    assert_eq!(swept.ids, vec![running]);
    // The live-fingerprint index came back: the same fingerprint folds in.
    let mut again = NewJob::new("builds", "build");
    again.fingerprint = Some("fp-1".into());
    let folded = store
        .at(jiff::Timestamp::from_millisecond(3000).unwrap())
        .enqueue(tenant, &again)
        .await
        .unwrap();
    assert!(folded.deduplicated);
    assert_eq!((folded.id, folded.occurrences), (job, 3));
    store.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

/// N replicas starting at once on a fresh database: every one starts, and
/// each migration is applied once (sqlx holds an advisory lock while it
/// migrates).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_at_once_migrate_once() {
    let Some(url) = backends::pg_url() else {
        return;
    };
    let schema = format!("hs_test_{}", homeostat_model::new_id().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let connect = backends::pg_connect(&url, &schema);
            tokio::spawn(
                async move { Store::connect_postgres(connect, StoreOptions::default()).await },
            )
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().expect("a replica failed to start"));
    }
    let (applied, versions): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*), count(DISTINCT version) FROM {schema}._sqlx_migrations"
    )))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(applied, versions, "a migration was applied twice");
    for s in stores {
        s.close().await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

/// What the next release may do to the schema and still leave this build
/// running during a rolling upgrade (docs/upgrade.md): add a nullable
/// column, a column with a default, a table, an index — a migration this
/// build does not know, which does not raise `oldest_reader`.
const NEXT_RELEASE: &[&str] = &[
    "ALTER TABLE jobs ADD COLUMN next_release_note TEXT",
    "ALTER TABLE agents ADD COLUMN next_release_zone TEXT DEFAULT 'eu'",
    "ALTER TABLE tenants ADD COLUMN next_release_flag BOOLEAN DEFAULT FALSE",
    "CREATE TABLE next_release_things (id TEXT PRIMARY KEY, job_id TEXT)",
    "CREATE INDEX next_release_jobs_note ON jobs (next_release_note)",
];

/// This build on a schema an additive next release migrated: the store it
/// had open stays ready, a new one opens it without migrating, and a job
/// goes through its life, a failure, a reclaim and the listings.
async fn this_build_runs_on_the_next_releases_additive_schema(old: &Store, reopened: Store) {
    old.check_schema().await.expect("ready on the newer schema");
    reopened.check_schema().await.unwrap();
    let store = &reopened;
    let t = homeostat_testkit::tenant(store, "acme", homeostat_model::PlanTier::Standard).await;
    let a = homeostat_testkit::agent(store, Some(t), &["q"]).await;
    let lease = std::time::Duration::from_secs(60);
    let first = store
        .enqueue(t, &homeostat_testkit::job("q"))
        .await
        .unwrap()
        .id;
    let claimed = store.claim(a, 1, lease).await.unwrap();
    assert_eq!(claimed[0].id, first);
    let held = [(first, claimed[0].lease_token)];
    assert_eq!(store.heartbeat_jobs(a, &held, lease).await.unwrap(), [true]);
    store
        .complete(
            a,
            first,
            claimed[0].lease_token,
            Some(serde_json::json!({"ok": 1})),
        )
        .await
        .unwrap();
    let second = store
        .enqueue(t, &homeostat_testkit::job("q"))
        .await
        .unwrap()
        .id;
    let c = store.claim(a, 1, lease).await.unwrap().remove(0);
    let failed = store
        .fail(&homeostat_store::Failure {
            agent: a,
            id: second,
            lease_token: c.lease_token,
            error: "exit 1",
            permanent: false,
        })
        .await
        .unwrap();
    assert_eq!(failed.state, homeostat_model::JobState::Scheduled);
    store.requeue_expired_leases(10, None, None).await.unwrap();
    let job = store.get_job(first).await.unwrap();
    assert_eq!(job.state, homeostat_model::JobState::Succeeded);
    let listed = store
        .list_jobs(&homeostat_store::JobFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2);
    store.stats().await.unwrap();
    reopened.close().await;
}

/// Options of a store on `test`'s clock, as the test kit's factories need.
fn on_clock_of(test: &homeostat_testkit::TestStore) -> StoreOptions {
    StoreOptions {
        clock: homeostat_store::StoreClock::manual(test.clock.clone()),
        ..StoreOptions::default()
    }
}

#[tokio::test]
async fn sqlite_runs_on_an_additive_newer_schema() {
    let test = backends::sqlite().await;
    let homeostat_store::PoolForTests::Sqlite(pool) = test.pool_for_tests() else {
        unreachable!()
    };
    for ddl in NEXT_RELEASE {
        sqlx::query(*ddl).execute(pool).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ((SELECT MAX(version) + 1 FROM _sqlx_migrations), 'next release', TRUE, x'00', 0)",
    )
    .execute(pool)
    .await
    .unwrap();
    let url = format!("sqlite:{}", test.path().unwrap().display());
    let reopened = Store::connect(&url, on_clock_of(&test)).await.unwrap();
    this_build_runs_on_the_next_releases_additive_schema(&test, reopened).await;
    test.cleanup().await;
}

#[tokio::test]
async fn postgres_runs_on_an_additive_newer_schema() {
    let Some(test) = backends::postgres().await else {
        return;
    };
    let homeostat_store::PoolForTests::Postgres(pool) = test.pool_for_tests() else {
        unreachable!()
    };
    for ddl in NEXT_RELEASE {
        sqlx::query(*ddl).execute(pool).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ((SELECT MAX(version) + 1 FROM _sqlx_migrations), 'next release', TRUE, '\\x00', 0)",
    )
    .execute(pool)
    .await
    .unwrap();
    let reopened =
        Store::connect_postgres(pool.connect_options().as_ref().clone(), on_clock_of(&test))
            .await
            .unwrap();
    this_build_runs_on_the_next_releases_additive_schema(&test, reopened).await;
    test.cleanup().await;
}

/// The last schema version each backend shipped in a release: the
/// migrations after it are the next release's, and must leave the
/// previous release's replicas running (docs/upgrade.md), or say they do
/// not by raising `oldest_reader`.
const RELEASED: [(&str, i64); 2] = [("sqlite", 15), ("postgres", 20)];

/// What in a migration would break a replica of the previous release
/// still running on the schema; nothing when the migration declares
/// itself breaking (it raises `oldest_reader`, and older builds refuse
/// the schema instead of failing on it).
fn breaks_the_previous_release(sql: &str) -> Vec<String> {
    let sql: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase();
    if sql.contains("UPDATE SCHEMA_COMPAT SET OLDEST_READER") {
        return Vec::new();
    }
    let mut found = Vec::new();
    for statement in sql
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
    {
        let removes = [
            "DROP TABLE",
            "DROP COLUMN",
            "DROP TYPE",
            "DROP TRIGGER",
            "DROP FUNCTION",
            "RENAME ",
            "SET NOT NULL",
        ]
        .into_iter()
        .find(|what| statement.contains(what));
        let retypes = statement.contains("ALTER COLUMN") && statement.contains(" TYPE ");
        let required = statement.contains("ADD COLUMN")
            && statement.contains("NOT NULL")
            && !statement.contains("DEFAULT");
        if removes.is_some() || retypes || required {
            found.push(statement);
        }
    }
    found
}

#[test]
fn the_additive_rule_tells_what_an_older_replica_survives() {
    for ok in NEXT_RELEASE {
        assert!(breaks_the_previous_release(ok).is_empty(), "{ok}");
    }
    for ok in [
        "ALTER TABLE jobs ADD COLUMN attempts_left INTEGER NOT NULL DEFAULT 0",
        "DROP INDEX jobs_claim_old",
        "-- DROP TABLE jobs, in a comment\nCREATE TABLE t (x INT)",
        "ALTER TABLE jobs DROP COLUMN note; UPDATE schema_compat SET oldest_reader = 21",
    ] {
        assert!(breaks_the_previous_release(ok).is_empty(), "{ok}");
    }
    for bad in [
        "DROP TABLE periodic_slots",
        "ALTER TABLE jobs DROP COLUMN result",
        "ALTER TABLE jobs RENAME COLUMN result TO output",
        "ALTER TABLE jobs ALTER COLUMN priority TYPE BIGINT",
        "ALTER TABLE jobs ALTER COLUMN result SET NOT NULL",
        "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL",
        "CREATE TABLE t (x INT); DROP TRIGGER jobs_released",
    ] {
        assert!(!breaks_the_previous_release(bad).is_empty(), "{bad}");
    }
}

#[test]
fn the_next_releases_migrations_leave_the_previous_release_running() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut newest = Vec::new();
    for (backend, released) in RELEASED {
        let mut versions = Vec::new();
        for entry in std::fs::read_dir(dir.join(backend)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let version: i64 = name[..4].parse().unwrap();
            versions.push(version);
            if version > released {
                let sql = std::fs::read_to_string(&path).unwrap();
                let breaking = breaks_the_previous_release(&sql);
                assert!(
                    breaking.is_empty(),
                    "{backend}/{name} would break the previous release's replicas \
                     during a rolling upgrade: {breaking:?} (add only, or raise \
                     oldest_reader: docs/upgrade.md)"
                );
            }
        }
        newest.push((backend, versions.into_iter().max().unwrap()));
    }
    // The released versions are real ones: a typo would check nothing.
    for ((backend, released), (_, newest)) in RELEASED.iter().zip(&newest) {
        assert!(
            released <= newest,
            "{backend}: released {released} > {newest}"
        );
    }
}
