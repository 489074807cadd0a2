//! The SQLite backend: the embedded default. WAL, `synchronous=NORMAL`, a
//! busy timeout, foreign keys, and `BEGIN IMMEDIATE` for every write
//! transaction so writers queue instead of failing on lock upgrade.
//!
//! Writes go through one dedicated connection (SQLite runs one writer at a
//! time anyway): writers wait in the pool's queue instead of in SQLite's
//! sleeping busy handler, and that connection's page cache stays warm
//! instead of being dropped whenever another connection writes. Reads use a
//! pool of their own.

mod backup;
mod hot;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use homeostat_model::{AgentId, ClaimedJob, Completion, Id, NewJob, TenantId};
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
pub(crate) struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    options: StoreOptions,
    /// Set when the writer's connection may be broken (a disk error, or a
    /// transaction it could not end): its next acquire replaces it.
    writer_suspect: Arc<std::sync::atomic::AtomicBool>,
    /// Queues whose last claim took all it asked for: their next claim
    /// goes to the writer at once, without reading first whether anything
    /// is queued (see `claim_now`).
    busy_queues: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The operation that last took the write connection, and when: a
    /// write that waited long for it names who had it.
    writer_holder: WriterHolder,
    /// Stops the checkpoint task when the last clone goes (held, not read).
    _checkpointer: Arc<tokio_util::sync::DropGuard>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite:path` or
    /// `sqlite://path`) and migrates it.
    pub(crate) async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)
            .op("parsing the SQLite URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // A workflow step skipped by the trigger that follows its
            // needs finishes in turn (migration 0014).
            .pragma("recursive_triggers", "ON");
        create_private(connect.get_filename())?;
        // A claim or completion returns up to a batch of rows: with room for
        // them all, SQLite's worker thread runs the statement to its end
        // instead of waiting for the caller to drain every 50 rows. No ping
        // before each acquire (see the PostgreSQL backend).
        //
        // The writer never checkpoints: a checkpoint copies the WAL into the
        // database and syncs it, a stall of milliseconds in whichever commit
        // crossed the WAL's threshold (every ~200 ms at 500 jobs/s, the
        // tail of pickup latency; docs/benchmarks.md). A background task
        // checkpoints instead, beside the writer, not in its way.
        // After a disk error (a full disk) the connection can be left inside
        // a transaction it could not end, and every later write fails on it
        // ("begin_with at non-zero transaction depth") for as long as the
        // server runs: a suspect connection is replaced at its next acquire.
        let writer_suspect = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let suspect = Arc::clone(&writer_suspect);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .before_acquire(move |_conn, _meta| {
                let replace = suspect.swap(false, std::sync::atomic::Ordering::AcqRel);
                if replace {
                    tracing::warn!("replacing the SQLite write connection after a failed write");
                }
                Box::pin(async move { Ok(!replace) })
            })
            .connect_with(
                connect
                    .clone()
                    .row_buffer_size(1024)
                    .pragma("wal_autocheckpoint", "0"),
            )
            .await
            .op("opening the SQLite database")?;
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .test_before_acquire(false)
            .connect_with(connect)
            .await
            .op("opening the SQLite database")?;
        migrations::bring_up(&pool, &writer, migrations::SQLITE).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let writer_holder = WriterHolder::default();
        tokio::spawn(checkpoints(
            pool.clone(),
            writer.clone(),
            writer_holder.clone(),
            stop.clone(),
        ));
        Ok(Self {
            pool,
            writer,
            options,
            writer_suspect,
            busy_queues: Arc::default(),
            writer_holder,
            _checkpointer: Arc::new(stop.drop_guard()),
        })
    }

    /// The read pool, for tests and benchmarks.
    #[cfg(feature = "testing")]
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn close_pools(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    /// The write connection is replaced at its next acquire.
    fn suspect_writer(&self) {
        self.writer_suspect
            .store(true, std::sync::atomic::Ordering::Release);
    }

    async fn begin_writing(&self, op: &'static str) -> Result<Tx, StoreError> {
        match self.writer.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => Ok(tx),
            // A connection left inside a transaction (its commit or rollback
            // failed on a disk error) refuses to begin: replace it, once.
            Err(sqlx::Error::InvalidSavePointStatement | sqlx::Error::BeginFailed) => {
                self.suspect_writer();
                self.writer.begin_with("BEGIN IMMEDIATE").await.op(op)
            }
            Err(e) => Err(crate::error::db_error(op, self.writer_error(e))),
        }
    }

    /// The write connection, for one statement that `op` names: every
    /// taker is recorded, so that a write that waits long names who had it.
    async fn take_writer(
        &self,
        op: &'static str,
    ) -> Result<sqlx::pool::PoolConnection<Sqlite>, sqlx::Error> {
        self.writer_holder
            .take(&self.writer, op)
            .await
            .map_err(|e| self.writer_error(e))
    }

    /// Passes a write's error on, marking the write connection suspect
    /// after a disk error.
    fn writer_error(&self, e: sqlx::Error) -> sqlx::Error {
        if crate::error::is_disk_error(&e) {
            self.suspect_writer();
        }
        e
    }
}

/// What names a single write statement as the write connection's holder:
/// its text (logged by its first words).
fn stmt_label(stmt: &Stmt<'_>) -> &'static str {
    stmt.static_sql()
        .unwrap_or("a write statement built at run time")
}

/// Who last took the write connection, and when. Every taker records
/// itself (transactions, single statements, claims, the WAL's restart), so
/// a write that waited long names who had it.
#[derive(Debug, Clone, Default)]
struct WriterHolder(Arc<std::sync::Mutex<Option<(&'static str, std::time::Instant)>>>);

impl WriterHolder {
    /// The write connection of `writer`, for `op`, recorded as its holder.
    async fn take(
        &self,
        writer: &SqlitePool,
        op: &'static str,
    ) -> Result<sqlx::pool::PoolConnection<Sqlite>, sqlx::Error> {
        let asked = std::time::Instant::now();
        let conn = writer.acquire().await?;
        self.took(op, asked);
        Ok(conn)
    }

    /// Notes that `op` has the write connection, asked for at `asked`. A
    /// long wait is logged with the operation that took it last, the one
    /// that held it: only one holds it at a time.
    fn took(&self, op: &'static str, asked: std::time::Instant) {
        let waited = asked.elapsed();
        let before = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace((op, std::time::Instant::now()));
        if waited > SLOW_WRITER_WAIT {
            let (held_by, taken) = before.map_or((String::new(), 0), |(o, at)| {
                // A statement's first words name it.
                let words: Vec<&str> = o.split_whitespace().take(10).collect();
                (words.join(" "), millis(at.elapsed()))
            });
            tracing::warn!(
                op,
                waited_ms = millis(waited),
                held_by,
                held_by_took_it_ms_ago = taken,
                "a write waited long for the SQLite write connection"
            );
        }
    }
}

/// How long a statement waits for SQLite's locks.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the WAL is checkpointed (when it has anything to copy).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// WAL frames (pages) past which it is truncated: 64 MiB of 4 KiB pages.
const WAL_LIMIT_FRAMES: i64 = 4_096;

/// How long a restart of the WAL may wait for readers to leave it. It runs
/// on the writer's connection, so every write waits as long: with the
/// connection's own busy timeout (10 s) a reader that lingered stalled all
/// writes for 5–6 s, long enough for every controller to lose its lease.
/// A restart that cannot have the WAL in time gives up and is tried again
/// at the next checkpoint.
const RESTART_WAIT: Duration = Duration::from_millis(200);

/// A write that waited this long for the write connection is logged.
const SLOW_WRITER_WAIT: Duration = Duration::from_secs(1);

/// A checkpoint slower than this is logged.
const SLOW_CHECKPOINT: Duration = Duration::from_millis(500);

/// Copies the WAL into the database beside the writer (`PASSIVE`: it waits
/// for nobody and nobody waits for it), until the store closes. Under
/// writes that never pause, a passive checkpoint never catches up with the
/// WAL's end, and the WAL is never restarted: past [`WAL_LIMIT_FRAMES`] the
/// writer's own connection truncates it, copying only what the passive
/// checkpoint left (one short stall per 64 MiB written, measured in
/// docs/benchmarks.md).
async fn checkpoints(
    pool: SqlitePool,
    writer: SqlitePool,
    holder: WriterHolder,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
        if pool.is_closed() || writer.is_closed() {
            return;
        }
        let started = std::time::Instant::now();
        let passive: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await;
        let passive_took = started.elapsed();
        let (frames, copied) = passive.as_ref().map_or((0, 0), |&(_, f, c)| (f, c));
        let result = match passive {
            Ok((_, frames, _)) if frames > WAL_LIMIT_FRAMES => {
                restart_wal(&writer, &holder, frames).await
            }
            other => other.map(drop),
        };
        let took = started.elapsed();
        if took > SLOW_CHECKPOINT {
            tracing::warn!(
                took_ms = millis(took),
                passive_ms = millis(passive_took),
                frames,
                copied,
                "a WAL checkpoint was slow"
            );
        }
        if let Err(e) = result {
            if pool.is_closed() || writer.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "checkpointing the SQLite WAL failed; retrying");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Restarts the WAL on the writer's connection, waiting at most
/// [`RESTART_WAIT`] for readers; busy (a reader stayed) is not an error.
async fn restart_wal(
    writer: &SqlitePool,
    holder: &WriterHolder,
    frames: i64,
) -> Result<(), sqlx::Error> {
    let asked = std::time::Instant::now();
    let mut conn = holder.take(writer, "restarting the WAL").await?;
    let acquired = asked.elapsed();
    let wait = format!("PRAGMA busy_timeout = {}", RESTART_WAIT.as_millis());
    sqlx::query(AssertSqlSafe(wait)).execute(&mut *conn).await?;
    let restarted: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
        .fetch_one(&mut *conn)
        .await;
    // The writer's own busy timeout, whatever the restart did.
    let back = format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis());
    sqlx::query(AssertSqlSafe(back)).execute(&mut *conn).await?;
    // Only this part stalls writes (the copy beside the writer does not):
    // logged apart, so a slow checkpoint says which it was.
    let held = asked.elapsed() - acquired;
    if held > SLOW_CHECKPOINT {
        tracing::warn!(
            frames,
            acquire_ms = millis(acquired),
            held_ms = millis(held),
            "restarting the WAL held the writer"
        );
    }
    match restarted? {
        (1, _, _) => {
            tracing::debug!(frames, "the WAL's readers stayed; restarting it later");
            Ok(())
        }
        _ => Ok(()),
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
            Arg::Ints(v) => out.add(json_list(v)),
        };
    }
    out
}

fn query(stmt: Stmt<'_>) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
    debug_assert!(
        !bare_limit(&stmt.sql),
        "a statement binds its LIMIT bare (write LIMIT CAST($n AS BIGINT)): {}",
        stmt.sql
    );
    let args = arguments(&stmt.args);
    sqlx::query_with(AssertSqlSafe(stmt.sql), args)
}

/// Where `sql` binds its `LIMIT` as a bare parameter (`LIMIT $2`,
/// `LIMIT ?6`). SQLite reads such a limit's value while it plans, so
/// binding it again expires the prepared statement: every run of it is
/// prepared anew, and a statement on `jobs` compiles all of that table's
/// triggers each time (a claim spent more time being prepared than
/// running: docs/benchmarks.md). `LIMIT CAST($2 AS BIGINT)` is not read
/// while planning, and PostgreSQL plans it as it plans `LIMIT $2`.
fn bare_limit(sql: &str) -> bool {
    sql.split("LIMIT ").skip(1).any(|rest| {
        rest.strip_prefix(['$', '?'])
            .is_some_and(|n| !n.starts_with(char::is_alphabetic))
    })
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

    async fn announce(&self, _payloads: &[String]) {}

    async fn close(&self) {
        self.close_pools().await;
    }

    async fn enqueue_batch(
        &self,
        tenant_id: TenantId,
        jobs: &[NewJob],
        _announce: &[String],
        _promised: &[bool],
    ) -> Result<Vec<Enqueued>, StoreError> {
        // One process: no other replica to tell. Claims run one at a time
        // on the writer, so a job named to a woken claim and taken by
        // another withdraws that wake-up exactly (`signals::Look`): nothing
        // to keep for it.
        self.enqueue_batch_now(tenant_id, jobs).await
    }

    async fn claim(
        &self,
        agent: AgentId,
        tenant: Option<TenantId>,
        queues: &[String],
        limit: u32,
        lease: std::time::Duration,
        look: &mut crate::signals::Look,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        self.claim_now(agent, tenant, queues, limit, lease, look)
            .await
    }

    async fn complete_batch(
        &self,
        agent: AgentId,
        completions: &[Completion],
    ) -> Result<Vec<Option<crate::job_metrics::Ended>>, StoreError> {
        self.complete_batch_now(agent, completions).await
    }

    async fn begin(&self, op: &'static str) -> Result<Tx, StoreError> {
        let asked = std::time::Instant::now();
        let began = self.begin_writing(op).await;
        if began.is_ok() {
            self.writer_holder.took(op, asked);
        }
        began
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

    async fn fetch_unpinned(&self, stmt: Stmt<'_>) -> Result<Vec<SqliteRow>, sqlx::Error> {
        // SQLite's plans are pinned by nothing.
        self.fetch(stmt).await
    }

    async fn fetch_write(&self, stmt: Stmt<'_>) -> Result<Vec<SqliteRow>, sqlx::Error> {
        // One statement: its own transaction on the single write connection.
        let mut writer = self.take_writer(stmt_label(&stmt)).await?;
        query(stmt)
            .fetch_all(&mut *writer)
            .await
            .map_err(|e| self.writer_error(e))
    }

    async fn execute_write(&self, stmt: Stmt<'_>) -> Result<u64, sqlx::Error> {
        let mut writer = self.take_writer(stmt_label(&stmt)).await?;
        Ok(query(stmt)
            .execute(&mut *writer)
            .await
            .map_err(|e| self.writer_error(e))?
            .rows_affected())
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

/// Creates the database file readable by its owner only, before SQLite
/// would create it with the process's umask (commonly world-readable): it
/// holds job payloads and credential hashes. SQLite gives its `-wal` and
/// `-shm` files the database file's permissions. A file that exists is
/// left as its owner made it.
fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable {
            operation: "creating the SQLite database file",
            source: sqlx::Error::Io(e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{WriterHolder, bare_limit};

    /// A write that waited over a second for the write connection names
    /// the one that took it before it, whatever that was: a statement by
    /// its first words, the WAL's restart by name.
    #[test]
    fn a_long_wait_for_the_writer_names_who_had_it() {
        #[derive(Clone, Default)]
        struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Logs {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let holder = WriterHolder::default();
        let now = std::time::Instant::now();
        let long_ago = now
            .checked_sub(std::time::Duration::from_millis(1500))
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            holder.took("UPDATE leases SET expires_at = $4\n WHERE name = $1", now);
            holder.took("renewing a lease", long_ago);
            holder.took("restarting the WAL", now);
            holder.took("claiming jobs", long_ago);
        });
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("op=\"renewing a lease\""), "{text}");
        assert!(
            lines[0].contains("held_by=\"UPDATE leases SET expires_at = $4 WHERE name = $1\""),
            "{text}"
        );
        assert!(lines[1].contains("op=\"claiming jobs\""), "{text}");
        assert!(
            lines[1].contains("held_by=\"restarting the WAL\""),
            "{text}"
        );
    }

    #[test]
    fn a_limit_bound_bare_is_told_from_one_cast() {
        assert!(bare_limit("SELECT id FROM jobs LIMIT $2"));
        assert!(bare_limit(
            "SELECT id FROM jobs WHERE x IN (SELECT id LIMIT ?6) AND y"
        ));
        assert!(bare_limit("SELECT id FROM jobs LIMIT ?"));
        assert!(bare_limit("SELECT 1 LIMIT 1; SELECT id FROM jobs LIMIT ?)"));
        assert!(!bare_limit("SELECT id FROM jobs LIMIT CAST($2 AS BIGINT)"));
        assert!(!bare_limit("SELECT id FROM jobs LIMIT 1"));
        assert!(!bare_limit("SELECT id FROM jobs"));
    }
}
