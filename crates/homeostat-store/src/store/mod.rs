//! The store's facade: one type over either database, dispatching each
//! operation to the logic written once over [`crate::backend::Backend`],
//! with the store's in-process state ([`crate::local::Local`]) beside the
//! driver rather than inside it.

use std::sync::Arc;

use jiff::Timestamp;

use crate::local::Local;
#[cfg(feature = "postgres")]
use crate::postgres::PgStore;
#[cfg(feature = "sqlite")]
use crate::sqlite::SqliteStore;
use crate::{StoreError, StoreOptions, backend, migrations, tally};

/// Runs an operation written once over [`crate::backend::Backend`]
/// (`dispatch!(self, module::operation(args))`), or one of the backend's own
/// methods (`dispatch!(self.method(args))`).
macro_rules! dispatch {
    ($self:ident, $($op:ident)::+($($arg:expr),*)) => {
        match &$self.db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(s) => $($op)::+(s, $($arg),*).await,
            #[cfg(feature = "postgres")]
            Db::Postgres(s) => $($op)::+(s, $($arg),*).await,
        }
    };
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match &$self.db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(s) => crate::backend::Backend::$method(s, $($arg),*).await,
            #[cfg(feature = "postgres")]
            Db::Postgres(s) => crate::backend::Backend::$method(s, $($arg),*).await,
        }
    };
}

mod audit;
mod backup;
mod jobs;
mod leases;
mod limits;
mod notifications;
mod registry;
mod sweeps;
mod workflows;

pub use backup::Backup;
pub(crate) use workflows::WORKFLOWS_UNKNOWN;

/// The store: SQLite or PostgreSQL behind one interface.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    local: Arc<Local>,
}

/// The database a store runs on.
#[derive(Debug, Clone)]
enum Db {
    /// Embedded, one process.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
    /// Shared by replicas.
    #[cfg(feature = "postgres")]
    Postgres(PgStore),
}

/// Jobs reclaimed from one agent in one transaction.
const RECLAIM_BATCH: u32 = 1000;

impl Store {
    fn on(db: Db) -> Self {
        Self {
            db,
            local: Arc::new(Local::default()),
        }
    }

    /// Connects to `url` (`sqlite:path`, `sqlite://path`, `postgres://…`),
    /// refuses a schema newer than this build, and applies migrations.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        #[cfg(feature = "sqlite")]
        if url.starts_with("sqlite:") {
            return Ok(Self::on(Db::Sqlite(
                SqliteStore::connect(url, options).await?,
            )));
        }
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::on(Db::Postgres(
                PgStore::connect(url, options).await?,
            )));
        }
        let _ = options;
        Err(StoreError::unsupported_url(url))
    }

    /// Connects to PostgreSQL with `connect` (for instance with a
    /// `search_path` in its options, or TLS settings a URL cannot say),
    /// refuses a schema newer than this build, and applies migrations.
    #[cfg(feature = "postgres")]
    pub async fn connect_postgres(
        connect: sqlx::postgres::PgConnectOptions,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Ok(Self::on(Db::Postgres(
            PgStore::connect_with(connect, options).await?,
        )))
    }

    /// Which backend this is: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match &self.db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => "postgres",
        }
    }

    /// The time now, by the store's clock ([`StoreOptions::clock`]).
    pub fn now(&self) -> Timestamp {
        self.options().clock.now()
    }

    /// The store's policies.
    pub fn options(&self) -> &StoreOptions {
        match &self.db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(s) => backend::Backend::options(s),
            #[cfg(feature = "postgres")]
            Db::Postgres(s) => backend::Backend::options(s),
        }
    }

    /// Whether the database answers and its schema is this build's (a
    /// readiness probe).
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        dispatch!(self, migrations::check_current())
    }

    /// Closes the connection pool.
    pub async fn close(&self) {
        self.local
            .closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = dispatch!(self, tally::flush(&self.local.tally)) {
            tracing::warn!(error = %e, "the last counts of succeeded jobs were not written");
        }
        dispatch!(self.close())
    }

    /// The connection pool, for suites that tamper with rows or look at
    /// the pool itself; not part of the store's interface.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn pool_for_tests(&self) -> PoolForTests<'_> {
        match &self.db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(s) => PoolForTests::Sqlite(s.pool()),
            #[cfg(feature = "postgres")]
            Db::Postgres(s) => PoolForTests::Postgres(s.pool()),
        }
    }
}

/// A store's connection pool ([`Store::pool_for_tests`]).
#[cfg(feature = "testing")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum PoolForTests<'a> {
    /// SQLite's read pool.
    #[cfg(feature = "sqlite")]
    Sqlite(&'a sqlx::SqlitePool),
    /// PostgreSQL's pool.
    #[cfg(feature = "postgres")]
    Postgres(&'a sqlx::PgPool),
}

#[cfg(feature = "testing")]
impl PoolForTests<'_> {
    /// Runs `sql` (statements separated by `;`), unchecked.
    pub async fn execute(self, sql: &str) -> Result<(), sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            #[cfg(feature = "sqlite")]
            PoolForTests::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
            #[cfg(feature = "postgres")]
            PoolForTests::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
        }
    }
}
