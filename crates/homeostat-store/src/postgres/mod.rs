//! The PostgreSQL backend: shared by N replicas. Claims lock with
//! `FOR UPDATE SKIP LOCKED`; batches travel as arrays (`UNNEST`) in one
//! statement; lease expiry is judged by the database's clock.

mod jobs;
mod notifications;
mod registry;
mod sweeps;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeostat_model::{Id, NewAuditEvent};
use homeostat_runtime::{Fence, Lease};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use crate::audit::{self, ChainedEvent, VerifyReport};
use crate::error::{Context, StoreError};
use crate::time::{dur_ms, system_time};
use crate::{StoreOptions, migrations};

type Tx = Transaction<'static, Postgres>;

/// The database clock, in epoch milliseconds, for `concat!`ed SQL.
macro_rules! now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

/// A store on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    options: StoreOptions,
    /// Tenant and queues of agents, which never change after registration.
    agents: Arc<Mutex<HashMap<Id, AgentFacts>>>,
}

/// An agent's tenant and queues.
type AgentFacts = (Option<Id>, Vec<String>);

impl PgStore {
    /// Connects to `url` and migrates the database.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let connect: PgConnectOptions = url.parse().op("parsing the PostgreSQL URL")?;
        Self::connect_with(connect, options).await
    }

    /// Connects with `connect` (for instance with a `search_path` in its
    /// options) and migrates the database.
    pub async fn connect_with(
        connect: PgConnectOptions,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        // No ping before each acquire: that is a round trip per statement. A
        // connection that broke fails its statement instead (`Unavailable`,
        // retryable), and every connection as old is replaced (`health`).
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .test_before_acquire(false)
            .before_acquire(|_, meta| {
                Box::pin(async move { Ok(crate::health::is_trusted(meta.age)) })
            })
            .connect_with(connect)
            .await
            .op("connecting to PostgreSQL")?;
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await
                .unwrap_or(None);
        migrations::check_version(applied, migrations::POSTGRES)?;
        migrations::migrator(migrations::POSTGRES)
            .run(&pool)
            .await?;
        Ok(Self {
            pool,
            options,
            agents: Arc::default(),
        })
    }

    /// The connection pool, for tests and benchmarks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
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
        let row = sqlx::query("SELECT tenant_id, queues FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .op(op)?
            .ok_or_else(|| StoreError::NotFound {
                entity: "agent",
                id: id.to_string(),
            })?;
        let facts: AgentFacts = (row.get(0), row.get(1));
        self.agents.lock().unwrap().insert(id, facts.clone());
        Ok(facts)
    }

    async fn write(&self, operation: &'static str) -> Result<Tx, StoreError> {
        self.pool.begin().await.op(operation)
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    // --- leases -------------------------------------------------------

    pub(crate) async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(concat!(
            "INSERT INTO leases (name, holder, epoch, expires_at) VALUES ($1, $2, 1, ",
            now_ms!(),
            " + $3)
             ON CONFLICT (name) DO UPDATE SET
               epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > ",
            now_ms!(),
            " THEN leases.epoch ELSE leases.epoch + 1 END,
               holder = excluded.holder,
               expires_at = excluded.expires_at
             WHERE leases.holder IS NULL OR leases.expires_at <= ",
            now_ms!(),
            " OR leases.holder = excluded.holder
             RETURNING epoch, expires_at"
        ))
        .bind(name)
        .bind(holder)
        .bind(dur_ms(ttl))
        .fetch_optional(&self.pool)
        .await
        .op("acquiring a lease")?;
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
        let row = sqlx::query(concat!(
            "UPDATE leases SET expires_at = ",
            now_ms!(),
            " + $4 WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > ",
            now_ms!(),
            " RETURNING expires_at"
        ))
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.epoch as i64)
        .bind(dur_ms(ttl))
        .fetch_optional(&self.pool)
        .await
        .op("renewing a lease")?;
        Ok(row.map(|r| Lease {
            expires_at: system_time(r.get(0)),
            ..lease.clone()
        }))
    }

    pub(crate) async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "UPDATE leases SET holder = NULL, expires_at = ",
            now_ms!(),
            " WHERE name = $1 AND holder = $2 AND epoch = $3"
        ))
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(lease.epoch as i64)
        .execute(&self.pool)
        .await
        .op("releasing a lease")?;
        Ok(())
    }

    /// Refuses the transaction's writes unless `fence` is the live lease.
    /// The shared row lock holds off a takeover until this transaction ends.
    async fn check_fence(
        tx: &mut Tx,
        fence: Option<&Fence>,
        operation: &'static str,
    ) -> Result<(), StoreError> {
        let Some(fence) = fence else { return Ok(()) };
        let live = sqlx::query(concat!(
            "SELECT 1 FROM leases WHERE name = $1 AND epoch = $2 AND holder IS NOT NULL
             AND expires_at > ",
            now_ms!(),
            " FOR SHARE"
        ))
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
        // The head row lock serializes appends across replicas.
        let head =
            sqlx::query("SELECT next_seq, head_hash FROM audit_chain WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut **tx)
                .await
                .op(op)?;
        let (next_seq, head_hash): (i64, Vec<u8>) = (head.get(0), head.get(1));
        let chained = audit::link(events, at_ms, next_seq, &head_hash);
        let column = |f: fn(&ChainedEvent) -> String| chained.iter().map(f).collect::<Vec<_>>();
        let seqs: Vec<i64> = chained.iter().map(|e| e.seq).collect();
        let prev: Vec<Vec<u8>> = chained.iter().map(|e| e.prev_hash.clone()).collect();
        let hashes: Vec<Vec<u8>> = chained.iter().map(|e| e.hash.clone()).collect();
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor, action, subject, details, prev_hash, hash)
             SELECT s, $2, a, ac, su, d, p, h
             FROM UNNEST($1::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::bytea[], $8::bytea[]) AS t(s, a, ac, su, d, p, h)",
        )
        .bind(&seqs)
        .bind(at_ms)
        .bind(column(|e| e.actor.clone()))
        .bind(column(|e| e.action.clone()))
        .bind(column(|e| e.subject.clone()))
        .bind(column(|e| e.details.clone()))
        .bind(&prev)
        .bind(&hashes)
        .execute(&mut **tx)
        .await
        .op(op)?;
        let last = chained.last().expect("events is not empty");
        sqlx::query("UPDATE audit_chain SET next_seq = $1, head_hash = $2 WHERE id = 1")
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
             WHERE seq > $1 ORDER BY seq LIMIT $2",
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
                "SELECT COUNT(*) FROM (SELECT 1 FROM audit_events WHERE at < $1 LIMIT $2) t",
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
        let first_seq: i64 =
            sqlx::query_scalar("SELECT first_seq FROM audit_chain WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await
                .op(op)?;
        let rows = sqlx::query(
            "SELECT seq, at, hash FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2",
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
        let deleted = sqlx::query("DELETE FROM audit_events WHERE seq >= $1 AND seq <= $2")
            .bind(first_seq)
            .bind(last_seq)
            .execute(&mut *tx)
            .await
            .op(op)?
            .rows_affected();
        sqlx::query("UPDATE audit_chain SET first_seq = $1, first_prev_hash = $2 WHERE id = 1")
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

impl PgStore {
    pub(crate) async fn plan(
        &self,
        kind: crate::PlanKind,
        now: jiff::Timestamp,
        sample: u32,
    ) -> Result<crate::SweepPlan, StoreError> {
        let op = "planning a sweep";
        let (count_sql, sample_sql, binds) = crate::plan::sql(kind, now.as_millisecond(), true);
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
            sqlx::query_scalar("SELECT last_slot FROM periodic_slots WHERE name = $1")
                .bind(schedule)
                .fetch_optional(&self.pool)
                .await
                .op("reading a periodic schedule")?;
        Ok(slot.map(crate::time::ts))
    }
}
