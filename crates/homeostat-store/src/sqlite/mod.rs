//! The SQLite backend: the embedded default. WAL, `synchronous=NORMAL`, a
//! busy timeout, foreign keys, and `BEGIN IMMEDIATE` for every write
//! transaction so writers queue instead of failing on lock upgrade.
//!
//! Writes go through one dedicated connection (SQLite runs one writer at a
//! time anyway): writers wait in the pool's queue instead of in SQLite's
//! sleeping busy handler, and that connection's page cache stays warm
//! instead of being dropped whenever another connection writes. Reads use a
//! pool of their own.

mod jobs;
mod notifications;
mod registry;
mod sweeps;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeostat_model::{Id, NewAuditEvent};
use homeostat_runtime::{Fence, Lease};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::audit::{self, ChainedEvent, VerifyReport};
use crate::error::{Context, StoreError, corrupt};
use crate::time::{dur_ms, system_time};
use crate::{StoreOptions, migrations};

type Tx = Transaction<'static, Sqlite>;

/// The database clock, in epoch milliseconds, for `concat!`ed SQL.
macro_rules! now_ms {
    () => {
        "CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    };
}

/// A store on one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    options: StoreOptions,
    /// Tenant and queues of agents, which never change after registration;
    /// claims look them up here instead of in a statement of their own.
    agents: Arc<Mutex<HashMap<Id, AgentFacts>>>,
}

#[derive(Debug, Clone)]
pub(crate) struct AgentFacts {
    pub(crate) tenant: Option<String>,
    pub(crate) queues: Vec<String>,
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
        // instead of waiting for the caller to drain every 50 rows.
        // No ping before each acquire (see the PostgreSQL backend).
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

    pub(crate) fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// An agent's tenant and queues, cached after the first look.
    pub(crate) async fn agent_facts(
        &self,
        id: Id,
        op: &'static str,
    ) -> Result<AgentFacts, StoreError> {
        if let Some(facts) = self.agents.lock().unwrap().get(&id) {
            return Ok(facts.clone());
        }
        let row = sqlx::query("SELECT tenant_id, queues FROM agents WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .op(op)?
            .ok_or_else(|| StoreError::NotFound {
                entity: "agent",
                id: id.to_string(),
            })?;
        let facts = AgentFacts {
            tenant: row.get(0),
            queues: serde_json::from_str(&row.get::<String, _>(1)).map_err(|e| corrupt(op, e))?,
        };
        self.agents.lock().unwrap().insert(id, facts.clone());
        Ok(facts)
    }

    /// Says why an agent claimed nothing, when the agent is the reason.
    pub(crate) async fn require_online(&self, id: Id, op: &'static str) -> Result<(), StoreError> {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM agents WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .op(op)?;
        match status.as_deref() {
            None => Err(StoreError::NotFound {
                entity: "agent",
                id: id.to_string(),
            }),
            Some("online") => Ok(()),
            Some(status) => Err(StoreError::Conflict {
                operation: op,
                entity: "agent",
                id: id.to_string(),
                reason: format!("the agent is {status}; only online agents claim jobs"),
            }),
        }
    }

    /// A write transaction that holds the write lock from its start.
    async fn write(&self, operation: &'static str) -> Result<Tx, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .op(operation)
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    // --- leases -------------------------------------------------------

    pub(crate) async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let op = "acquiring a lease";
        let mut tx = self.write(op).await?;
        let sql = concat!(
            "INSERT INTO leases (name, holder, epoch, expires_at) VALUES (?1, ?2, 1, ",
            now_ms!(),
            " + ?3)
             ON CONFLICT (name) DO UPDATE SET
               epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > ",
            now_ms!(),
            "
                            THEN leases.epoch ELSE leases.epoch + 1 END,
               holder = excluded.holder,
               expires_at = excluded.expires_at
             WHERE leases.holder IS NULL OR leases.expires_at <= ",
            now_ms!(),
            " OR leases.holder = excluded.holder
             RETURNING epoch, expires_at"
        );
        let row = sqlx::query(sql)
            .bind(name)
            .bind(holder)
            .bind(dur_ms(ttl))
            .fetch_optional(&mut *tx)
            .await
            .op(op)?;
        tx.commit().await.op(op)?;
        Ok(row.map(|r| Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            epoch: r.get::<i64, _>(0) as u64,
            expires_at: system_time(r.get(1)),
        }))
    }

    pub(crate) async fn renew_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let op = "renewing a lease";
        let mut tx = self.write(op).await?;
        let sql = concat!(
            "UPDATE leases SET expires_at = ",
            now_ms!(),
            " + ?4
             WHERE name = ?1 AND holder = ?2 AND epoch = ?3 AND expires_at > ",
            now_ms!(),
            "
             RETURNING expires_at"
        );
        let row = sqlx::query(sql)
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(lease.epoch as i64)
            .bind(dur_ms(ttl))
            .fetch_optional(&mut *tx)
            .await
            .op(op)?;
        tx.commit().await.op(op)?;
        Ok(row.map(|r| Lease {
            expires_at: system_time(r.get(0)),
            ..lease.clone()
        }))
    }

    pub(crate) async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let op = "releasing a lease";
        let mut tx = self.write(op).await?;
        let sql = concat!(
            "UPDATE leases SET holder = NULL, expires_at = ",
            now_ms!(),
            "
             WHERE name = ?1 AND holder = ?2 AND epoch = ?3"
        );
        sqlx::query(sql)
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(lease.epoch as i64)
            .execute(&mut *tx)
            .await
            .op(op)?;
        tx.commit().await.op(op)
    }

    /// Refuses the transaction's writes unless `fence` is the live lease.
    async fn check_fence(
        tx: &mut Tx,
        fence: Option<&Fence>,
        operation: &'static str,
    ) -> Result<(), StoreError> {
        let Some(fence) = fence else { return Ok(()) };
        let sql = concat!(
            "SELECT 1 FROM leases WHERE name = ?1 AND epoch = ?2 AND holder IS NOT NULL
             AND expires_at > ",
            now_ms!(),
            ""
        );
        let live = sqlx::query(sql)
            .bind(&fence.name)
            .bind(fence.epoch as i64)
            .fetch_optional(&mut **tx)
            .await
            .op(operation)?;
        match live {
            Some(_) => Ok(()),
            None => Err(StoreError::Fenced {
                operation,
                lease: fence.name.clone(),
                epoch: fence.epoch,
            }),
        }
    }

    // --- audit --------------------------------------------------------

    async fn append_audit(
        tx: &mut Tx,
        events: &[NewAuditEvent],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let op = "appending to the audit log";
        let head = sqlx::query("SELECT next_seq, head_hash FROM audit_chain WHERE id = 1")
            .fetch_one(&mut **tx)
            .await
            .op(op)?;
        let (next_seq, head_hash): (i64, Vec<u8>) = (head.get(0), head.get(1));
        let chained = audit::link(events, at_ms, next_seq, &head_hash);
        for e in &chained {
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
            .await
            .op(op)?;
        }
        let last = chained.last().expect("events is not empty");
        sqlx::query("UPDATE audit_chain SET next_seq = ?, head_hash = ? WHERE id = 1")
            .bind(last.seq + 1)
            .bind(&last.hash)
            .execute(&mut **tx)
            .await
            .op(op)?;
        Ok(())
    }

    pub(crate) async fn append_audit_events(
        &self,
        events: &[NewAuditEvent],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let op = "appending to the audit log";
        let mut tx = self.write(op).await?;
        Self::append_audit(&mut tx, events, at_ms).await?;
        tx.commit().await.op(op)
    }

    pub(crate) async fn audit_events(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_events
             WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .op("reading the audit log")?;
        Ok(rows
            .into_iter()
            .map(|r| ChainedEvent {
                seq: r.get(0),
                at_ms: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                subject: r.get(4),
                details: r.get(5),
                prev_hash: r.get(6),
                hash: r.get(7),
            })
            .collect())
    }

    pub(crate) async fn verify_audit_chain(
        &self,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<VerifyReport, StoreError> {
        let op = "verifying the audit chain";
        let chain = sqlx::query(
            "SELECT next_seq, head_hash, first_seq, first_prev_hash FROM audit_chain WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await
        .op(op)?;
        let head = audit::ChainHead {
            next_seq: chain.get(0),
            head_hash: chain.get(1),
            first_seq: chain.get(2),
            first_prev_hash: chain.get(3),
        };
        audit::verify(head, |after| self.audit_events(after, 1000), progress).await
    }

    pub(crate) async fn delete_old_audit_events(
        &self,
        cutoff_ms: i64,
        batch: u32,
        dry_run: bool,
        now_ms: i64,
        fence: Option<&Fence>,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let op = "deleting old audit events";
        if dry_run {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT 1 FROM audit_events WHERE at < ? LIMIT ?)",
            )
            .bind(cutoff_ms)
            .bind(i64::from(batch))
            .fetch_one(&self.pool)
            .await
            .op(op)?;
            return Ok(n as u64);
        }
        let mut tx = self.write(op).await?;
        Self::check_fence(&mut tx, fence, op).await?;
        let first_seq: i64 = sqlx::query_scalar("SELECT first_seq FROM audit_chain WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .op(op)?;
        // The oldest events form a prefix; stop at the first one to keep.
        let rows = sqlx::query(
            "SELECT seq, at, hash FROM audit_events WHERE seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(first_seq)
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await
        .op(op)?;
        let oldest = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2)));
        let Some((last_seq, last_hash)) = audit::retention_end(oldest, cutoff_ms) else {
            return Ok(0);
        };
        let deleted = sqlx::query("DELETE FROM audit_events WHERE seq <= ?")
            .bind(last_seq)
            .execute(&mut *tx)
            .await
            .op(op)?
            .rows_affected();
        sqlx::query("UPDATE audit_chain SET first_seq = ?, first_prev_hash = ? WHERE id = 1")
            .bind(last_seq + 1)
            .bind(&last_hash)
            .execute(&mut *tx)
            .await
            .op(op)?;
        Self::append_audit(
            &mut tx,
            &[audit::retention_event(actor, deleted, last_seq, cutoff_ms)],
            now_ms,
        )
        .await?;
        tx.commit().await.op(op)?;
        Ok(deleted)
    }
}

fn id_of(row: &sqlx::sqlite::SqliteRow, column: &str) -> Result<Id, StoreError> {
    let text: String = row.try_get(column).op("reading an id")?;
    Id::parse_str(&text).map_err(|e| corrupt("reading an id", e))
}

fn opt_id_of(row: &sqlx::sqlite::SqliteRow, column: &str) -> Result<Option<Id>, StoreError> {
    let text: Option<String> = row.try_get(column).op("reading an id")?;
    text.map(|t| Id::parse_str(&t).map_err(|e| corrupt("reading an id", e)))
        .transpose()
}

impl SqliteStore {
    pub(crate) async fn plan(
        &self,
        kind: crate::PlanKind,
        now: jiff::Timestamp,
        sample: u32,
    ) -> Result<crate::SweepPlan, StoreError> {
        let op = "planning a sweep";
        let (count_sql, sample_sql, binds) = crate::plan::sql(kind, now.as_millisecond(), false);
        let mut count = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count_sql));
        let mut rows =
            sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sample_sql));
        for b in &binds {
            count = count.bind(*b);
            rows = rows.bind(*b);
        }
        let count = count.fetch_one(&self.pool).await.op(op)?;
        let items = rows
            .bind(i64::from(sample))
            .fetch_all(&self.pool)
            .await
            .op(op)?
            .into_iter()
            .map(|(subject, from, to)| crate::PlannedItem { subject, from, to })
            .collect();
        Ok(crate::SweepPlan {
            count: count as u64,
            items,
        })
    }

    pub(crate) async fn periodic_last_slot(
        &self,
        schedule: &str,
    ) -> Result<Option<jiff::Timestamp>, StoreError> {
        let slot: Option<i64> =
            sqlx::query_scalar("SELECT last_slot FROM periodic_slots WHERE name = ?1")
                .bind(schedule)
                .fetch_optional(&self.pool)
                .await
                .op("reading a periodic schedule")?;
        Ok(slot.map(crate::time::ts))
    }
}
