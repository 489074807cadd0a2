//! The SQLite backend: the embedded default. WAL, `synchronous=NORMAL`, a
//! busy timeout, foreign keys, and `BEGIN IMMEDIATE` for every write
//! transaction so writers queue instead of failing on lock upgrade.
//!
//! Writes go through one dedicated connection (SQLite runs one writer at a
//! time anyway): writers wait in the pool's queue instead of in SQLite's
//! sleeping busy handler, and that connection's page cache stays warm
//! instead of being dropped whenever another connection writes. Reads use a
//! pool of their own.

mod hot;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use homeostat_model::{Id, NewJob, TenantId};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use crate::audit::ChainedEvent;
use crate::backend::{Arg, Backend, RowExt, Stmt};
use crate::error::{Context, StoreError, corrupt};
use crate::{Enqueued, StoreOptions, migrations};

pub(crate) type Tx = Transaction<'static, Sqlite>;

/// A store on one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    options: StoreOptions,
    /// Tenant and queues of agents, which never change after registration;
    /// claims look them up here instead of in a statement of their own.
    agents: crate::registry::AgentFactsCache,
    /// Wake-ups for waiting claims, announced in-process.
    pub(crate) signals: crate::signals::Signals,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite:path` or
    /// `sqlite://path`) and migrates it.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)
            .op("parsing the SQLite URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // A claim or completion returns up to a batch of rows: with room for
        // them all, SQLite's worker thread runs the statement to its end
        // instead of waiting for the caller to drain every 50 rows. No ping
        // before each acquire (see the PostgreSQL backend).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(connect.clone().row_buffer_size(1024))
            .await
            .op("opening the SQLite database")?;
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .test_before_acquire(false)
            .connect_with(connect)
            .await
            .op("opening the SQLite database")?;
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await
                .unwrap_or(None);
        migrations::check_version(applied, migrations::SQLITE)?;
        migrations::migrator(migrations::SQLITE)
            .run(&writer)
            .await?;
        Ok(Self {
            pool,
            writer,
            options,
            agents: Arc::default(),
            signals: crate::signals::Signals::default(),
        })
    }

    /// The read pool, for tests and benchmarks.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The single-connection write pool, for tests and benchmarks.
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn arguments(args: &[Arg<'_>]) -> SqliteArguments {
    use sqlx::Arguments;
    let mut out = SqliteArguments::default();
    for arg in args {
        // Encoding into an owned buffer cannot fail for these types.
        let _ = match *arg {
            Arg::Int(v) => out.add(v),
            Arg::OptInt(v) => out.add(v),
            Arg::Text(v) => out.add(v),
            Arg::OptText(v) => out.add(v),
            Arg::Bool(v) => out.add(v),
            Arg::Bytes(v) => out.add(v),
            Arg::Id(v) => out.add(v.to_string()),
            Arg::OptId(v) => out.add(v.map(|v| v.to_string())),
            Arg::Ids(v) => out.add(json_list(&v.iter().map(Id::to_string).collect::<Vec<_>>())),
            Arg::List(v) => out.add(json_list(v)),
        };
    }
    out
}

fn query(stmt: Stmt<'_>) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
    let args = arguments(&stmt.args);
    sqlx::query_with(AssertSqlSafe(stmt.sql), args)
}

fn decode<T>(col: &str, r: Result<T, sqlx::Error>) -> Result<T, StoreError> {
    r.map_err(|e| corrupt("reading a stored row", format!("column {col}: {e}")))
}

fn parse_id(col: &str, text: &str) -> Result<Id, StoreError> {
    Id::parse_str(text).map_err(|e| corrupt("reading a stored row", format!("column {col}: {e}")))
}

impl RowExt for SqliteRow {
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        decode(col, self.try_get(col))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        decode(col, self.try_get(col))
    }
    fn text(&self, col: &str) -> Result<String, StoreError> {
        decode(col, self.try_get(col))
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        decode(col, self.try_get(col))
    }
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        decode(col, self.try_get(col))
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        decode(col, self.try_get(col))
    }
    fn id<T: From<Id>>(&self, col: &str) -> Result<T, StoreError> {
        parse_id(col, &self.text(col)?).map(T::from)
    }
    fn opt_id<T: From<Id>>(&self, col: &str) -> Result<Option<T>, StoreError> {
        self.opt_text(col)?
            .map(|t| parse_id(col, &t).map(T::from))
            .transpose()
    }
    fn list(&self, col: &str) -> Result<Vec<String>, StoreError> {
        serde_json::from_str(&self.text(col)?)
            .map_err(|e| corrupt("reading a stored row", format!("column {col}: {e}")))
    }
}

impl Backend for SqliteStore {
    type Tx = Tx;
    type Row = SqliteRow;
    const POSTGRES: bool = false;

    fn options(&self) -> &StoreOptions {
        &self.options
    }

    async fn begin(&self, op: &'static str) -> Result<Tx, StoreError> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.op(op)
    }

    async fn commit(tx: Tx, op: &'static str) -> Result<(), StoreError> {
        tx.commit().await.op(op)
    }

    async fn fetch_in(tx: &mut Tx, stmt: Stmt<'_>) -> Result<Vec<SqliteRow>, sqlx::Error> {
        query(stmt).fetch_all(&mut **tx).await
    }

    async fn execute_in(tx: &mut Tx, stmt: Stmt<'_>) -> Result<u64, sqlx::Error> {
        Ok(query(stmt).execute(&mut **tx).await?.rows_affected())
    }

    async fn fetch(&self, stmt: Stmt<'_>) -> Result<Vec<SqliteRow>, sqlx::Error> {
        query(stmt).fetch_all(&self.pool).await
    }

    async fn fetch_write(&self, stmt: Stmt<'_>) -> Result<Vec<SqliteRow>, sqlx::Error> {
        // One statement: its own transaction on the single write connection.
        query(stmt).fetch_all(&self.writer).await
    }

    async fn execute_write(&self, stmt: Stmt<'_>) -> Result<u64, sqlx::Error> {
        Ok(query(stmt).execute(&self.writer).await?.rows_affected())
    }

    async fn insert_audit(tx: &mut Tx, events: &[ChainedEvent]) -> Result<(), sqlx::Error> {
        for e in events {
            sqlx::query(
                "INSERT INTO audit_events (seq, at, actor, action, subject, details, prev_hash, hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(e.seq)
            .bind(e.at_ms)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.subject)
            .bind(&e.details)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn enqueue_in(
        &self,
        tx: &mut Tx,
        tenant_id: TenantId,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.enqueue_batch_in(tx, tenant_id, jobs).await
    }
}
