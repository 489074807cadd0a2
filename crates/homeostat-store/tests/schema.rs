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
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999, 'from the future', TRUE, x'00', 0)",
    )
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
