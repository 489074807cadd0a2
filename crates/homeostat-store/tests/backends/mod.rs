//! Test databases: a fresh SQLite file, or a fresh schema in the PostgreSQL
//! named by `HOMEOSTAT_TEST_DATABASE_URL`.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use homeostat_runtime::ManualClock;
use homeostat_store::{PgStore, Store, StoreClock, StoreOptions};
use jiff::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// A store on a test clock, and what to clean up after it.
#[derive(Debug)]
pub struct TestStore {
    pub store: Store,
    /// The store's clock, stopped at the test epoch until a test moves it.
    pub clock: ManualClock,
    cleanup: Cleanup,
}

/// Moves a test store's clock: `store.at(t).claim(…)` claims at `t`.
pub trait At {
    fn at(&self, t: Timestamp) -> &Self;
}

impl At for Store {
    fn at(&self, t: Timestamp) -> &Store {
        let clock = self
            .options()
            .clock
            .as_manual()
            .expect("a test store runs on a manual clock");
        clock.set(t.into());
        self
    }
}

/// Sets `store`'s clock to `when` and returns a controller context on that
/// same clock, so the controller and the store agree on the time.
pub fn context_at(
    store: &Store,
    controller: &str,
    when: Timestamp,
    fence: Option<homeostat_runtime::Fence>,
) -> homeostat_runtime::Context {
    let clock = store
        .at(when)
        .options()
        .clock
        .as_manual()
        .expect("a test store runs on a manual clock")
        .clone();
    homeostat_runtime::Context::detached(
        controller,
        std::sync::Arc::new(clock),
        homeostat_runtime::CancellationToken::new(),
        fence,
    )
}

/// Options with a fresh manual clock at the test epoch, unless `options`
/// already carries one.
fn on_test_clock(mut options: StoreOptions) -> (StoreOptions, ManualClock) {
    let clock = match options.clock.as_manual() {
        Some(clock) => clock.clone(),
        None => {
            let clock = ManualClock::at_test_epoch();
            options.clock = StoreClock::manual(clock.clone());
            clock
        }
    };
    (options, clock)
}

#[derive(Debug)]
enum Cleanup {
    File(PathBuf),
    Schema { url: String, schema: String },
}

impl std::ops::Deref for TestStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl TestStore {
    /// The PostgreSQL schema (and application name) of this store's
    /// connections; `None` for SQLite.
    pub fn schema(&self) -> Option<&str> {
        match &self.cleanup {
            Cleanup::Schema { schema, .. } => Some(schema),
            Cleanup::File(_) => None,
        }
    }

    /// Another store on the same PostgreSQL schema with its own pool, as a
    /// second replica would have; `None` for SQLite.
    pub async fn replica(&self) -> Option<Store> {
        self.replica_on(StoreClock::manual(self.clock.clone()))
            .await
    }

    /// Another replica on the same PostgreSQL schema, on a clock of its own.
    pub async fn replica_on(&self, clock: StoreClock) -> Option<Store> {
        let Cleanup::Schema { url, schema } = &self.cleanup else {
            return None;
        };
        let options = StoreOptions {
            max_connections: 4,
            clock,
            ..StoreOptions::default()
        };
        Some(Store::Postgres(
            PgStore::connect_with(pg_connect(url, schema), options)
                .await
                .expect("opening a replica"),
        ))
    }

    /// Closes the store and removes its file or schema.
    pub async fn cleanup(self) {
        self.store.close().await;
        match self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
            Cleanup::Schema { url, schema } => {
                if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE"
                    )))
                    .execute(&pool)
                    .await;
                    pool.close().await;
                }
            }
        }
    }
}

pub fn sqlite_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "homeostat-test-{}.db",
        uuid::Uuid::now_v7().simple()
    ))
}

pub async fn sqlite_with(options: StoreOptions) -> TestStore {
    let (options, clock) = on_test_clock(options);
    let path = sqlite_path();
    let store = Store::connect(&format!("sqlite:{}", path.display()), options)
        .await
        .expect("opening a SQLite test database");
    TestStore {
        store,
        clock,
        cleanup: Cleanup::File(path),
    }
}

pub async fn sqlite() -> TestStore {
    sqlite_with(StoreOptions::default()).await
}

/// The PostgreSQL test URL, or `None` with a visible notice.
pub fn pg_url() -> Option<String> {
    match std::env::var("HOMEOSTAT_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED (PostgreSQL): HOMEOSTAT_TEST_DATABASE_URL is not set; \
                 set it (e.g. postgres://postgres@127.0.0.1:5432/test) to run this test on PostgreSQL"
            );
            None
        }
    }
}

/// Connection options whose sessions live in `schema`, named after it in
/// `pg_stat_activity` so a test can find its own connections.
pub fn pg_connect(url: &str, schema: &str) -> PgConnectOptions {
    url.parse::<PgConnectOptions>()
        .expect("parsing HOMEOSTAT_TEST_DATABASE_URL")
        .options([("search_path", schema)])
        .application_name(schema)
}

/// A pool whose connections live in `schema`.
pub async fn pg_pool(url: &str, schema: &str, max: u32) -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .connect_with(pg_connect(url, schema))
        .await
        .expect("connecting to HOMEOSTAT_TEST_DATABASE_URL")
}

pub async fn postgres_with(options: StoreOptions) -> Option<TestStore> {
    let (options, clock) = on_test_clock(options);
    let url = pg_url()?;
    let schema = format!("hs_test_{}", uuid::Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("connecting to HOMEOSTAT_TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("creating a test schema");
    admin.close().await;
    let store = PgStore::connect_with(pg_connect(&url, &schema), options)
        .await
        .expect("migrating the test schema");
    Some(TestStore {
        store: Store::Postgres(store),
        clock,
        cleanup: Cleanup::Schema { url, schema },
    })
}

pub async fn postgres() -> Option<TestStore> {
    postgres_with(StoreOptions::default()).await
}

/// Runs each named async test function against both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let store = $crate::backends::sqlite().await;
                    super::$name(&store).await;
                    store.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(store) = $crate::backends::postgres().await else { return };
                    super::$name(&store).await;
                    store.cleanup().await;
                }
            )*
        }
    };
}
