//! The schema version check at start.

mod backends;

use homeostat_store::{Store, StoreError, StoreOptions};

#[tokio::test]
async fn sqlite_refuses_a_schema_newer_than_this_build() {
    let path = backends::sqlite_path();
    let url = format!("sqlite:{}", path.display());
    let store = Store::connect(&url, StoreOptions::default()).await.unwrap();
    let Store::Sqlite(s) = &store else {
        unreachable!()
    };
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999, 'from the future', TRUE, x'00', 0)",
    )
    .execute(s.pool())
    .await
    .unwrap();
    store.close().await;
    let err = Store::connect(&url, StoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                database: 999,
                supported: 2
            }
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
    let Store::Postgres(s) = &test.store else {
        unreachable!()
    };
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(s.pool())
    .await
    .unwrap();
    let err = homeostat_store::PgStore::from_pool(s.pool().clone(), StoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { database: 999, .. }),
        "{err}"
    );
    test.cleanup().await;
}

#[tokio::test]
async fn unknown_urls_are_refused_by_name() {
    let err = Store::connect("mysql://localhost/db", StoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported database URL \"mysql://localhost/db\": expected sqlite:… or postgres://…"
    );
}
