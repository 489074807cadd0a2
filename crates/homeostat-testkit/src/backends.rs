//! Test databases: a fresh SQLite file, or a fresh schema in the PostgreSQL
//! named by `HOMEOSTAT_TEST_DATABASE_URL`, removed when the test ends —
//! also when it panics.

use std::path::PathBuf;
use std::sync::Arc;

use homeostat_runtime::{CancellationToken, Context, Fence, ManualClock};
use homeostat_store::{Store, StoreClock, StoreOptions};
use jiff::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::At;

/// A store on a test clock, and what to remove after it.
#[derive(Debug)]
pub struct TestStore {
    /// The store.
    pub store: Store,
    /// The store's clock, stopped at the test epoch until a test moves it.
    pub clock: ManualClock,
    cleanup: Option<Cleanup>,
}

#[derive(Debug, Clone)]
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
            Some(Cleanup::Schema { schema, .. }) => Some(schema),
            _ => None,
        }
    }

    /// The SQLite file of this store; `None` for PostgreSQL.
    pub fn path(&self) -> Option<&std::path::Path> {
        match &self.cleanup {
            Some(Cleanup::File(path)) => Some(path),
            _ => None,
        }
    }

    /// Another store on the same PostgreSQL schema with its own pool, as a
    /// second replica would have, on the same test clock; `None` for
    /// SQLite.
    pub async fn replica(&self) -> Option<Store> {
        self.replica_on(StoreClock::manual(self.clock.clone()))
            .await
    }

    /// Another replica on the same PostgreSQL schema, on a clock of its own.
    pub async fn replica_on(&self, clock: StoreClock) -> Option<Store> {
        let Some(Cleanup::Schema { url, schema }) = &self.cleanup else {
            return None;
        };
        let options = StoreOptions {
            max_connections: 4,
            clock,
            ..StoreOptions::default()
        };
        Some(
            Store::connect_postgres(pg_connect(url, schema), options)
                .await
                .expect("opening a replica"),
        )
    }

    /// Closes the store and removes its file or schema.
    pub async fn cleanup(mut self) {
        self.store.close().await;
        if let Some(cleanup) = self.cleanup.take() {
            remove(cleanup).await;
        }
    }
}

impl Drop for TestStore {
    /// A test that panicked never reached [`TestStore::cleanup`]: remove
    /// what it left, on a runtime of our own (the test's may be unwinding).
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            remove_blocking(cleanup);
        }
    }
}

/// Removes a test database from synchronous code (a `Drop`).
fn remove_blocking(cleanup: Cleanup) {
    let removed = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(remove(cleanup)))
    })
    .join();
    if !matches!(removed, Ok(Ok(()))) {
        eprintln!("homeostat-testkit: could not remove a test database");
    }
}

async fn remove(cleanup: Cleanup) {
    match cleanup {
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

/// Sets `store`'s clock to `when` and returns a controller context on that
/// same clock, so the controller and the store agree on the time.
pub fn context_at(
    store: &Store,
    controller: &str,
    when: Timestamp,
    fence: Option<Fence>,
) -> Context {
    let clock = store
        .at(when)
        .options()
        .clock
        .as_manual()
        .expect("a test store runs on a manual clock")
        .clone();
    Context::detached(controller, Arc::new(clock), CancellationToken::new(), fence)
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

/// A path for a fresh SQLite file.
pub fn sqlite_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "homeostat-test-{}.db",
        uuid::Uuid::now_v7().simple()
    ))
}

/// A store on a fresh SQLite file.
pub async fn sqlite_with(options: StoreOptions) -> TestStore {
    let (options, clock) = on_test_clock(options);
    let path = sqlite_path();
    // The guard exists before the file does: a failed open leaves nothing.
    let mut test = TestStore {
        store: Store::connect(&format!("sqlite:{}", path.display()), options)
            .await
            .expect("opening a SQLite test database"),
        clock,
        cleanup: None,
    };
    test.cleanup = Some(Cleanup::File(path));
    test
}

/// A store on a fresh SQLite file, default options.
pub async fn sqlite() -> TestStore {
    sqlite_with(StoreOptions::default()).await
}

/// The PostgreSQL test URL, or `None` with a notice. Where the PostgreSQL
/// half must run (`HOMEOSTAT_TEST_REQUIRE_POSTGRES`, which `.ci/run` sets,
/// or `CI`), a missing URL fails the test instead: a green run has run
/// both backends.
pub fn pg_url() -> Option<String> {
    match std::env::var("HOMEOSTAT_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if ["HOMEOSTAT_TEST_REQUIRE_POSTGRES", "CI"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|x| !x.is_empty() && x != "0" && x != "false")) =>
        {
            panic!(
                "HOMEOSTAT_TEST_DATABASE_URL is not set, and this run must test PostgreSQL \
                 (HOMEOSTAT_TEST_REQUIRE_POSTGRES or CI is set)"
            )
        }
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

/// A raw pool whose connections live in `schema`.
pub async fn pg_pool(url: &str, schema: &str, max: u32) -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .connect_with(pg_connect(url, schema))
        .await
        .expect("connecting to HOMEOSTAT_TEST_DATABASE_URL")
}

/// A store on a fresh schema of the test PostgreSQL; `None` (with a notice)
/// when there is none.
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
    let cleanup = Cleanup::Schema {
        url: url.clone(),
        schema: schema.clone(),
    };
    // Migrating may panic: the schema is removed then too.
    let mut guard = SchemaGuard(Some(cleanup.clone()));
    let store = Store::connect_postgres(pg_connect(&url, &schema), options)
        .await
        .expect("migrating the test schema");
    guard.0 = None;
    Some(TestStore {
        store,
        clock,
        cleanup: Some(cleanup),
    })
}

/// A store on a fresh schema of the test PostgreSQL, default options.
pub async fn postgres() -> Option<TestStore> {
    postgres_with(StoreOptions::default()).await
}

/// Removes a schema whose store was never built.
struct SchemaGuard(Option<Cleanup>);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        if let Some(cleanup) = self.0.take() {
            remove_blocking(cleanup);
        }
    }
}

/// Runs each named async test function (`async fn name(store: &Store)`)
/// against SQLite and PostgreSQL, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let store = $crate::sqlite().await;
                    super::$name(&store).await;
                    store.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(store) = $crate::postgres().await else { return };
                    super::$name(&store).await;
                    store.cleanup().await;
                }
            )*
        }
    };
}
