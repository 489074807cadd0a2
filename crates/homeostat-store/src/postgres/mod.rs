//! The PostgreSQL backend: shared by N replicas. Claims lock with
//! `FOR UPDATE SKIP LOCKED`; batches travel as arrays (`UNNEST`) in one
//! statement; lease expiry is judged by the database's clock.

mod hot;
mod steps;

use std::sync::Arc;

use homeostat_model::{AgentId, ClaimedJob, Completion, Id, NewJob, TenantId};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::audit::ChainedEvent;
use crate::backend::{Arg, Backend, Heard, Hearing, RowExt, Stmt};
use crate::error::{Context, StoreError, corrupt};
use crate::{Enqueued, StoreOptions, migrations};

pub(crate) type Tx = Transaction<'static, Postgres>;

/// Longest wait for a connection: a free one under load, or a new one.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A store on a PostgreSQL database.
#[derive(Debug, Clone)]
pub(crate) struct PgStore {
    pool: PgPool,
    options: StoreOptions,
    /// Relays `LISTEN` to the store's waiting claims: one per store,
    /// started by the first waiter.
    listener: Arc<Listener>,
    /// When a statement last met a broken connection: older connections
    /// are replaced rather than handed out.
    breakage: Arc<crate::health::Breakage>,
    /// Jobs leased here that other workflow steps need.
    leased_steps: Arc<steps::LeasedSteps>,
}

/// The listener task: started once, stopped by `close`.
#[derive(Debug)]
struct Listener {
    started: std::sync::OnceLock<()>,
    stop: tokio_util::sync::CancellationToken,
    /// Whether it listens now.
    connected: tokio::sync::watch::Sender<bool>,
}

impl Default for Listener {
    fn default() -> Self {
        Self {
            started: std::sync::OnceLock::new(),
            stop: tokio_util::sync::CancellationToken::new(),
            connected: tokio::sync::watch::channel(false).0,
        }
    }
}

impl PgStore {
    /// Connects to `url` and migrates the database.
    pub(crate) async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let connect: PgConnectOptions = url.parse().op("parsing the PostgreSQL URL")?;
        Self::connect_with(connect, options).await
    }

    /// Connects with `connect` (for instance with a `search_path` in its
    /// options) and migrates the database.
    pub(crate) async fn connect_with(
        connect: PgConnectOptions,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        // Plans that do not depend on statistics or on the plan cache. A
        // table never analyzed (autovacuum off, or before its first
        // auto-analyze) has no statistics, and the planner's default
        // selectivities make every claim read and sort all queued jobs of a
        // queue in a bitmap scan. A statement prepared while the table was
        // small switches to a generic plan after five executions and keeps
        // its sequential scan for the connection's life. Every statement of
        // the store has an index to walk; with sequential and bitmap scans
        // off, that walk is its only plan, whatever the statistics, and a
        // cached generic plan is as good as a custom one (re-planning every
        // execution instead, `plan_cache_mode=force_custom_plan`, measured
        // no better; docs/benchmarks.md).
        //
        // With sequential scans priced at 1e10, any statement that still
        // takes one (a count over a table of eight agents) crossed the JIT
        // threshold and was compiled first: 70–170 ms for a statement that
        // takes 0.13 ms. Every statement of the store is a short one; JIT
        // never pays here.
        let connect = connect.options([
            ("enable_seqscan", "off"),
            ("enable_bitmapscan", "off"),
            ("jit", "off"),
        ]);
        // No ping before each acquire: that is a round trip per statement. A
        // connection that broke fails its statement instead (`Unavailable`,
        // retryable), and every connection as old is replaced (`health`).
        let breakage = Arc::new(crate::health::Breakage::default());
        let trusted = Arc::clone(&breakage);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            // While the database is down, a call fails `unavailable` within
            // seconds rather than after sqlx's default 30 s of reconnecting.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(move |_, meta| {
                let trusted = trusted.is_trusted(meta.age);
                Box::pin(async move { Ok(trusted) })
            })
            .connect_with(connect)
            .await
            .op("connecting to PostgreSQL")?;
        migrations::bring_up(&pool, &pool, migrations::POSTGRES).await?;
        Ok(Self {
            pool,
            options,
            listener: Arc::default(),
            breakage,
            leased_steps: Arc::default(),
        })
    }

    /// The connection pool, for tests and benchmarks.
    #[cfg(feature = "testing")]
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `r`, having noted whether its connection broke.
    fn watch<T>(&self, r: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if let Err(e) = &r {
            self.breakage.saw(e);
        }
        r
    }
}

/// Relays `NOTIFY`s of queued jobs to this replica's waiting claims, and of
/// released leases to whoever follows them, on one connection,
/// reconnecting when it drops; while it is down, waiters are woken every
/// [`FALLBACK_POLL`](crate::signals::FALLBACK_POLL) instead.
async fn listen(
    pool: PgPool,
    heard: Hearing,
    stop: tokio_util::sync::CancellationToken,
    listening: tokio::sync::watch::Sender<bool>,
) {
    use crate::signals::{CHANNEL, FALLBACK_POLL};
    use sqlx::postgres::PgListener;
    while !stop.is_cancelled() {
        let connected = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen_all([CHANNEL, crate::leases::RELEASED]).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            () = stop.cancelled() => return,
            l = connected => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "listening for queued jobs failed; polling");
                    heard(Heard::MaybeMissed);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(FALLBACK_POLL) => continue,
                    }
                }
            },
        };
        // Whatever was queued while nobody listened.
        listening.send_replace(true);
        heard(Heard::MaybeMissed);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                n = listener.try_recv() => match n {
                    Ok(Some(n)) if n.channel() == crate::leases::RELEASED => {
                        heard(Heard::Released(n.payload()));
                    }
                    Ok(Some(n)) => heard(Heard::Queued(n.payload())),
                    // A stop closes the pool under the listener: its
                    // connection dropping then is the stop, not a fault.
                    Ok(None) | Err(_) if stop.is_cancelled() => return,
                    Ok(None) | Err(_) => {
                        listening.send_replace(false);
                        tracing::warn!("the connection listening for queued jobs dropped; reconnecting");
                        heard(Heard::MaybeMissed);
                        break;
                    }
                },
            }
        }
    }
}

fn arguments(args: &[Arg<'_>]) -> PgArguments {
    use sqlx::Arguments;
    let mut out = PgArguments::default();
    for arg in args {
        // Encoding into an owned buffer cannot fail for these types.
        let _ = match *arg {
            Arg::Int(v) => out.add(v),
            Arg::OptInt(v) => out.add(v),
            Arg::Text(v) => out.add(v),
            Arg::OptText(v) => out.add(v),
            Arg::Bool(v) => out.add(v),
            Arg::Bytes(v) => out.add(v),
            Arg::Id(v) => out.add(v),
            Arg::OptId(v) => out.add(v),
            Arg::Ids(v) => out.add(v),
            Arg::List(v) => out.add(v),
            Arg::Ints(v) => out.add(v),
        };
    }
    out
}

fn query(stmt: Stmt<'_>) -> sqlx::query::Query<'static, Postgres, PgArguments> {
    debug_assert!(
        !bare_unnest(&stmt.sql),
        "a statement unnests an array parameter bare (write UNNEST((SELECT $n::type[]), …)): {}",
        stmt.sql
    );
    let args = arguments(&stmt.args);
    sqlx::query_with(AssertSqlSafe(stmt.sql), args)
}

/// Where `sql` unnests an array parameter bare (`UNNEST($1::uuid[], …)`).
/// A custom plan sees the array's length, a generic plan guesses ten
/// rows: for the batches of one to a few rows that a job's life sends,
/// the custom plan always looks cheaper, so PostgreSQL planned such a
/// statement anew on every call (the enqueue, 0.8 ms a call, more than it
/// took to run). Through a scalar subquery, `UNNEST((SELECT $1::uuid[]),
/// …)`, neither plan sees the length (one array per `UNNEST` is enough:
/// its rows are its longest array's), the two cost the same, and the
/// cached generic plan is used from the sixth call on
/// (`tests/plans.rs`).
fn bare_unnest(sql: &str) -> bool {
    sql.to_ascii_uppercase()
        .split("UNNEST(")
        .skip(1)
        .any(|rest| rest.trim_start().starts_with('$'))
}

fn decode<T>(col: &str, r: Result<T, sqlx::Error>) -> Result<T, StoreError> {
    r.map_err(|e| corrupt("reading a stored row", format!("column {col}: {e}")))
}

impl RowExt for PgRow {
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
        decode(col, self.try_get::<Id, _>(col)).map(T::from)
    }
    fn opt_id<T: From<Id>>(&self, col: &str) -> Result<Option<T>, StoreError> {
        decode(col, self.try_get::<Option<Id>, _>(col)).map(|id| id.map(T::from))
    }
    fn list(&self, col: &str) -> Result<Vec<String>, StoreError> {
        decode(col, self.try_get(col))
    }
}

impl Backend for PgStore {
    type Tx = Tx;
    type Row = PgRow;
    const POSTGRES: bool = true;

    fn options(&self) -> &StoreOptions {
        &self.options
    }

    async fn announce(&self, payloads: &[String]) {
        if payloads.is_empty() {
            return;
        }
        let sent =
            sqlx::query("SELECT count(pg_notify($1, p)) FROM UNNEST((SELECT $2::text[])) AS p")
                .bind(crate::signals::CHANNEL)
                .bind(payloads)
                .execute(&self.pool)
                .await;
        if let Err(e) = sent {
            // Waiting claims elsewhere wake at the end of their wait instead.
            tracing::debug!(error = %e, "could not announce queued jobs");
        }
    }

    fn listen(&self, heard: &Hearing) {
        self.listener.started.get_or_init(|| {
            tokio::spawn(listen(
                self.pool.clone(),
                heard.clone(),
                self.listener.stop.clone(),
                self.listener.connected.clone(),
            ));
        });
    }

    fn listener_connected(&self) -> Option<bool> {
        self.listener
            .started
            .get()
            .map(|()| *self.listener.connected.borrow())
    }

    async fn listening(&self) {
        let mut connected = self.listener.connected.subscribe();
        let _ = connected.wait_for(|c| *c).await;
    }

    async fn close(&self) {
        self.listener.stop.cancel();
        self.pool.close().await;
    }

    async fn enqueue_batch(
        &self,
        tenant_id: TenantId,
        jobs: &[NewJob],
        announce: &[String],
        promised: &[bool],
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.enqueue_batch_now(tenant_id, jobs, announce, promised)
            .await
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
        // A transaction's first statement (`BEGIN`) is where a broken
        // connection shows; the statements within run on the same one.
        self.watch(self.pool.begin().await).op(op)
    }

    async fn commit(tx: Tx, op: &'static str) -> Result<(), StoreError> {
        tx.commit().await.op(op)
    }

    async fn fetch_in(tx: &mut Tx, stmt: Stmt<'_>) -> Result<Vec<PgRow>, sqlx::Error> {
        query(stmt).fetch_all(&mut **tx).await
    }

    async fn execute_in(tx: &mut Tx, stmt: Stmt<'_>) -> Result<u64, sqlx::Error> {
        Ok(query(stmt).execute(&mut **tx).await?.rows_affected())
    }

    async fn fetch(&self, stmt: Stmt<'_>) -> Result<Vec<PgRow>, sqlx::Error> {
        self.watch(query(stmt).fetch_all(&self.pool).await)
    }

    async fn fetch_unpinned(&self, stmt: Stmt<'_>) -> Result<Vec<PgRow>, sqlx::Error> {
        // A count of a large share of a table (a backlog of a million
        // queued jobs) walked through its partial index fetches each row
        // from the heap at random until vacuum marks the pages all-visible:
        // 1–2 s at a million, where a bitmap or sequential scan reads the
        // pages in order. The settings last until this transaction ends.
        let mut tx = self.watch(self.pool.begin().await)?;
        sqlx::query(
            "SELECT set_config('enable_seqscan', 'on', true),
                    set_config('enable_bitmapscan', 'on', true)",
        )
        .execute(&mut *tx)
        .await?;
        let rows = query(stmt).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn fetch_write(&self, stmt: Stmt<'_>) -> Result<Vec<PgRow>, sqlx::Error> {
        self.watch(query(stmt).fetch_all(&self.pool).await)
    }

    async fn execute_write(&self, stmt: Stmt<'_>) -> Result<u64, sqlx::Error> {
        Ok(self
            .watch(query(stmt).execute(&self.pool).await)?
            .rows_affected())
    }

    async fn insert_audit(tx: &mut Tx, events: &[ChainedEvent]) -> Result<(), sqlx::Error> {
        let at_ms = events.first().map_or(0, |e| e.at_ms);
        let column = |f: fn(&ChainedEvent) -> String| events.iter().map(f).collect::<Vec<_>>();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        let prev: Vec<Vec<u8>> = events.iter().map(|e| e.prev_hash.clone()).collect();
        let hashes: Vec<Vec<u8>> = events.iter().map(|e| e.hash.clone()).collect();
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor, action, subject, details, prev_hash, hash)
             SELECT s, $2, a, ac, su, d, p, h
             FROM UNNEST((SELECT $1::bigint[]), $3::text[], $4::text[], $5::text[], $6::text[],
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
        .await?;
        Ok(())
    }

    async fn enqueue_in(
        &self,
        tx: &mut Tx,
        tenant_id: TenantId,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.enqueue_on(tx, tenant_id, jobs, &[], &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::bare_unnest;

    #[test]
    fn an_array_unnested_bare_is_told_from_one_through_a_subquery() {
        assert!(bare_unnest("SELECT v FROM UNNEST($2::uuid[]) v"));
        assert!(bare_unnest(
            "SELECT v FROM unnest( $2::uuid[], $3::text[]) v"
        ));
        assert!(bare_unnest(
            "SELECT 1 FROM UNNEST((SELECT $1::text[])) a, UNNEST($2::text[]) b"
        ));
        assert!(!bare_unnest(
            "SELECT v FROM UNNEST((SELECT $2::uuid[]), $3::text[]) v"
        ));
        assert!(!bare_unnest(
            "SELECT q FROM agents, unnest(agents.queues) AS q"
        ));
        assert!(!bare_unnest("SELECT id FROM jobs"));
    }
}
