//! Broken connections: detected by the statement that meets them, reported
//! as retryable, and replaced.

use homeostat_testkit as backends;

use homeostat_model::PlanTier;
use homeostat_store::StoreError;

/// Terminates every PostgreSQL backend serving the store's pool.
async fn kill_store_connections(url: &str, application: &str) -> u64 {
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(application)
    .fetch_all(&admin)
    .await
    .unwrap();
    admin.close().await;
    killed.into_iter().filter(|k| *k).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_connection_fails_one_call_as_unavailable_then_is_replaced() {
    let Some(url) = backends::pg_url() else {
        return;
    };
    let store = backends::postgres().await.unwrap();
    let schema = store.schema().unwrap().to_owned();
    // Several connections in the pool, so that more than one is broken.
    let homeostat_store::PoolForTests::Postgres(pool) = store.pool_for_tests() else {
        unreachable!()
    };
    let mut warm = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let pool = pool.clone();
        warm.spawn(async move { sqlx::query("SELECT pg_sleep(0.2)").execute(&pool).await });
    }
    while let Some(r) = warm.join_next().await {
        r.unwrap().unwrap();
    }
    // sqlx gives a connection back to the pool in a task of its own, after
    // the query's future is done: wait for them to be idle.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pool.num_idle() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle connections: {}",
            pool.num_idle()
        );
        tokio::task::yield_now().await;
    }
    store
        .create_tenant("before", PlanTier::Standard, "operator:test")
        .await
        .unwrap();
    assert!(kill_store_connections(&url, &schema).await >= 1);

    match store
        .create_tenant("during", PlanTier::Standard, "operator:test")
        .await
    {
        Ok(_) => {}
        Err(e) => {
            assert_eq!(e.code().as_str(), "unavailable", "{e:?}");
            assert!(e.is_retryable());
            assert!(matches!(e, StoreError::Unavailable { .. }));
        }
    }
    // The next calls find live connections: none of the broken ones is
    // handed out again.
    for name in ["after-1", "after-2", "after-3"] {
        store
            .create_tenant(name, PlanTier::Standard, "operator:test")
            .await
            .unwrap();
    }
    let names: Vec<String> = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(names.contains(&"after-3".to_owned()), "{names:?}");
    store.cleanup().await;
}
