//! A test that panics still leaves no database behind.

use homeostat_testkit::{pg_url, postgres, sqlite};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_leaves_no_sqlite_file() {
    let store = sqlite().await;
    let path = store.path().unwrap().to_owned();
    assert!(path.exists());
    let failed = tokio::spawn(async move {
        let _store = store;
        panic!("the test failed");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
    assert!(!path.exists(), "{} was left behind", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_leaves_no_postgres_schema() {
    let Some(url) = pg_url() else { return };
    let store = postgres().await.unwrap();
    let schema = store.schema().unwrap().to_owned();
    let failed = tokio::spawn(async move {
        let _store = store;
        panic!("the test failed");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&schema)
        .fetch_one(&admin)
        .await
        .unwrap();
    admin.close().await;
    assert_eq!(left, 0, "schema {schema} was left behind");
}
