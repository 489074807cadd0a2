//! The boundary between the store's logic and its two databases, at the
//! statement (as River's driver interface draws it). Everything above a
//! statement — transactions, fence checks, audit appends, outcomes — is
//! written once, generic over [`Backend`]; a backend holds only how to run a
//! statement, bind an argument and read a column, plus the tuned hot path
//! (enqueue, claim, complete) and the audit insert.
//!
//! SQL lives with the operation that runs it. Where the two dialects agree
//! (SQLite reads `$N` placeholders by number, as PostgreSQL does) one text
//! serves both; where they differ, [`Sql::pair`] keeps the two texts side
//! by side for a reviewer to compare.

use std::borrow::Cow;
use std::future::Future;

use homeostat_model::{
    AgentId, ClaimedJob, Completion, Id, JobId, NewJob, NotificationId, TenantId, TokenId,
    VerificationId, WorkflowId,
};
use jiff::Timestamp;

use crate::audit::ChainedEvent;
use crate::error::StoreError;
use crate::{Enqueued, StoreOptions};

/// The database clock in epoch milliseconds, as SQLite spells it.
macro_rules! sqlite_now {
    () => {
        "CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    };
}

/// The database clock in epoch milliseconds, as PostgreSQL spells it.
macro_rules! pg_now {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

/// The time that judges expiry on PostgreSQL, from parameter `$n`: the
/// caller's when bound (a test's clock), else the database's clock at the
/// statement's start. A scalar subquery, so PostgreSQL computes it once per
/// statement (an init plan) rather than once per row it touches: per row,
/// the four of a claim cost a tenth of its throughput (measured).
macro_rules! pg_judged {
    ($n:literal) => {
        concat!(
            "(SELECT COALESCE($",
            $n,
            "::bigint, (date_part('epoch', statement_timestamp()) * 1000)::bigint))"
        )
    };
}

/// Appends the attempt that just failed (the row's number, agent and start
/// before the update, `$now` and `$error` as SQL expressions) to the job's
/// `attempts` JSON array.
macro_rules! sqlite_failed_attempt {
    ($now:literal, $error:literal) => {
        concat!(
            "attempts = json_insert(COALESCE(attempts, '[]'), '$[#]', json_object('attempt', attempt, \
             'agent_id', lease_agent, 'started_at', started_at, 'failed_at', ",
            $now,
            ", 'error', ",
            $error,
            "))"
        )
    };
}
pub(crate) use sqlite_failed_attempt;

/// [`sqlite_failed_attempt!`] on PostgreSQL; `$error` must be typed (`::text`).
macro_rules! pg_failed_attempt {
    ($now:literal, $error:literal) => {
        concat!(
            "attempts = (COALESCE(attempts, '[]')::jsonb || jsonb_build_array(jsonb_build_object( \
             'attempt', attempt, 'agent_id', lease_agent, 'started_at', started_at, 'failed_at', ",
            $now,
            ", 'error', ",
            $error,
            ")))::text"
        )
    };
}
pub(crate) use pg_failed_attempt;

/// "The job is running" on SQLite, for statements that find jobs by id: the
/// unary plus keeps it from matching the partial index of running jobs.
/// With statistics, SQLite would otherwise scan that index for every
/// completion instead of looking the ids up (measured: batch completions of
/// 100 became twenty times slower).
macro_rules! sqlite_running {
    () => {
        "+state = 'running'"
    };
}

/// "The job is running" on PostgreSQL, for statements that find jobs by id,
/// written so that it does not imply the predicate of the running-jobs
/// partial index. With statistics that show few running jobs, the planner
/// would otherwise read the jobs through that index (every running job, and
/// every entry left behind by jobs that stopped running, for each
/// statement) instead of the primary key.
macro_rules! pg_running {
    () => {
        "state IS NOT DISTINCT FROM 'running'"
    };
}

pub(crate) use {pg_judged, pg_now, pg_running, sqlite_now, sqlite_running};

/// The text of one statement in each dialect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sql {
    sqlite: &'static str,
    postgres: &'static str,
}

impl Sql {
    /// One text, valid in both dialects.
    pub(crate) const fn both(text: &'static str) -> Self {
        Self {
            sqlite: text,
            postgres: text,
        }
    }

    /// Two texts: SQLite's, then PostgreSQL's.
    pub(crate) const fn pair(sqlite: &'static str, postgres: &'static str) -> Self {
        Self { sqlite, postgres }
    }

    /// The text `B` runs.
    pub(crate) fn text<B: Backend>(&self) -> &'static str {
        if B::POSTGRES {
            self.postgres
        } else {
            self.sqlite
        }
    }
}

/// One argument of a statement. Ids, flags and lists are stored differently
/// by the two databases; each backend binds them its own way.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bool(bool),
    Bytes(&'a [u8]),
    Id(Id),
    OptId(Option<Id>),
    /// A list of ids: a JSON array on SQLite (for `json_each`), `uuid[]` on
    /// PostgreSQL.
    Ids(&'a [Id]),
    /// A list of names: a JSON array on SQLite, `text[]` on PostgreSQL.
    List(&'a [String]),
    /// A list of integers: a JSON array on SQLite, `bigint[]` on PostgreSQL.
    Ints(&'a [i64]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::OptText(v)
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Bytes(v)
    }
}

/// Typed ids bind as their UUID.
macro_rules! id_args {
    ($($id:ty),*) => {$(
        impl From<$id> for Arg<'_> {
            fn from(v: $id) -> Self {
                Arg::Id(v.into())
            }
        }

        impl From<Option<$id>> for Arg<'_> {
            fn from(v: Option<$id>) -> Self {
                Arg::OptId(v.map(Into::into))
            }
        }
    )*};
}

id_args!(
    Id,
    JobId,
    AgentId,
    TenantId,
    TokenId,
    NotificationId,
    VerificationId,
    WorkflowId
);

impl<'a> From<&'a [i64]> for Arg<'a> {
    fn from(v: &'a [i64]) -> Self {
        Arg::Ints(v)
    }
}

impl<'a> From<&'a [Id]> for Arg<'a> {
    fn from(v: &'a [Id]) -> Self {
        Arg::Ids(v)
    }
}

impl<'a> From<&'a [String]> for Arg<'a> {
    fn from(v: &'a [String]) -> Self {
        Arg::List(v)
    }
}

/// A statement and its arguments, `$1` first.
#[derive(Debug, Clone)]
pub(crate) struct Stmt<'a> {
    pub(crate) sql: Cow<'static, str>,
    pub(crate) args: Vec<Arg<'a>>,
}

impl<'a> Stmt<'a> {
    /// The statement's text when the source holds it (not built at run
    /// time).
    #[cfg(feature = "sqlite")]
    pub(crate) fn static_sql(&self) -> Option<&'static str> {
        match self.sql {
            Cow::Borrowed(text) => Some(text),
            Cow::Owned(_) => None,
        }
    }

    /// `sql` in `B`'s dialect.
    pub(crate) fn new<B: Backend>(sql: Sql) -> Self {
        Self {
            sql: Cow::Borrowed(sql.text::<B>()),
            args: Vec::new(),
        }
    }

    /// A statement built at run time (dry-run plans).
    pub(crate) fn dynamic(sql: String) -> Self {
        Self {
            sql: Cow::Owned(sql),
            args: Vec::new(),
        }
    }

    /// Adds the next argument.
    pub(crate) fn arg(mut self, arg: impl Into<Arg<'a>>) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// Reading columns by name from a result row, with the backend's storage
/// of ids, flags and lists decoded into the model's types. A value that
/// does not decode is a corrupt row.
pub(crate) trait RowExt {
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError>;
    fn id<T: From<Id>>(&self, col: &str) -> Result<T, StoreError>;
    fn opt_id<T: From<Id>>(&self, col: &str) -> Result<Option<T>, StoreError>;
    fn list(&self, col: &str) -> Result<Vec<String>, StoreError>;

    /// An integer column as `T`; out of `T`'s range is a corrupt row.
    fn num<T: TryFrom<i64>>(&self, col: &str) -> Result<T, StoreError> {
        crate::error::in_range("reading a row", col, self.int(col)?)
    }
}

/// What a listener hears from the other replicas.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) enum Heard<'a> {
    /// Jobs were queued (a payload of [`crate::signals`]).
    Queued(&'a str),
    /// A lease was released (its name).
    Released(&'a str),
    /// Announcements may have been missed (the listener reconnects).
    MaybeMissed,
}

/// Where a listener delivers what it hears.
pub(crate) type Hearing = std::sync::Arc<dyn Fn(Heard<'_>) + Send + Sync>;

/// When an operation acts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    /// The store's clock: stamps rows, events and ids.
    pub(crate) now: Timestamp,
    /// What judges expiry; `None`: the database's clock.
    pub(crate) judged: Option<i64>,
}

/// A database the store runs on. Crate-private: its two implementations
/// are the SQLite and PostgreSQL backends.
pub(crate) trait Backend: Sync {
    /// A write transaction.
    type Tx: Send;
    /// A result row.
    type Row: RowExt + Send + Sync;
    /// Which dialect [`Sql::text`] picks.
    const POSTGRES: bool;

    /// Store-wide policies.
    fn options(&self) -> &StoreOptions;

    /// Tells the other replicas of queued jobs (`NOTIFY` on PostgreSQL,
    /// `payloads` as [`crate::signals`] writes them); nothing on SQLite,
    /// which has no other replica.
    fn announce(&self, payloads: &[String]) -> impl Future<Output = ()> + Send;

    /// Starts relaying what other replicas announce to `heard`, once (the
    /// first waiting claim does); nothing on SQLite.
    fn listen(&self, heard: &Hearing) {
        let _ = heard;
    }

    /// Returns once [`Backend::listen`] hears the other replicas.
    fn listening(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// Whether the listener listens now; `None` with none, or before it
    /// is started.
    fn listener_connected(&self) -> Option<bool> {
        None
    }

    /// Closes the connections.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// The time now, by the store's clock.
    fn now(&self) -> Timestamp {
        self.options().clock.now()
    }

    /// The time (epoch ms) that judges expiry at `now`: `None` on
    /// PostgreSQL in production, where the database's clock does (the
    /// statement reads `pg_judged!`).
    fn judged_ms(&self, now: Timestamp) -> Option<i64> {
        self.options().clock.judged_ms(now, Self::POSTGRES)
    }

    /// [`Backend::now`] with [`Backend::judged_ms`].
    fn at(&self) -> At {
        let now = self.options().clock.now();
        At {
            now,
            judged: self.options().clock.judged_ms(now, Self::POSTGRES),
        }
    }

    /// Begins a write transaction: `BEGIN IMMEDIATE` on SQLite, so that
    /// writers queue for the lock instead of failing to upgrade to it.
    fn begin(&self, op: &'static str) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;

    /// Commits a write transaction.
    fn commit(
        tx: Self::Tx,
        op: &'static str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Runs a statement in a transaction; its rows.
    fn fetch_in(
        tx: &mut Self::Tx,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;

    /// Runs a statement in a transaction; the rows it changed.
    fn execute_in(
        tx: &mut Self::Tx,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Runs a read-only statement on the read connections.
    fn fetch(
        &self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;

    /// Runs a read-only statement off the hot path (counts for metrics and
    /// the dashboard) with the planner free to choose any plan by the
    /// statistics, where [`Backend::fetch`] keeps the store's pinned plans.
    fn fetch_unpinned(
        &self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;

    /// Runs one write statement as a transaction of its own.
    fn fetch_write(
        &self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;

    /// Runs one write statement as a transaction of its own; the rows it
    /// changed.
    fn execute_write(
        &self,
        stmt: Stmt<'_>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Inserts linked audit events (one statement on PostgreSQL).
    fn insert_audit(
        tx: &mut Self::Tx,
        events: &[ChainedEvent],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Enqueues jobs in a transaction of their own (the tuned batch
    /// insert), telling the other replicas of `announce` in the same
    /// statement on PostgreSQL (delivered at commit). `promised`: per job,
    /// whether a waiting claim of this replica is woken for it (on
    /// PostgreSQL, claims that were not woken pass such a job by for a
    /// moment, so that the woken one finds it).
    fn enqueue_batch(
        &self,
        tenant_id: TenantId,
        jobs: &[NewJob],
        announce: &[String],
        promised: &[bool],
    ) -> impl Future<Output = Result<Vec<Enqueued>, StoreError>> + Send;

    /// Claims up to `limit` queued jobs of `tenant` (every tenant's for a
    /// platform agent) from `queues` for `agent`, leased for `lease` (the
    /// tuned claim): `look` opened on the claim's connection just before
    /// its statement (nothing claimed, no statement, when it says not to
    /// look) and told what was taken before the connection is let go.
    fn claim(
        &self,
        agent: AgentId,
        tenant: Option<TenantId>,
        queues: &[String],
        limit: u32,
        lease: std::time::Duration,
        look: &mut crate::signals::Look,
    ) -> impl Future<Output = Result<Vec<ClaimedJob>, StoreError>> + Send;

    /// Completes jobs of `agent` whose lease tokens still match; for each,
    /// the attempt that ended, if it did (the tuned completion).
    fn complete_batch(
        &self,
        agent: AgentId,
        completions: &[Completion],
    ) -> impl Future<Output = Result<Vec<Option<crate::job_metrics::Ended>>, StoreError>> + Send;

    /// Enqueues validated jobs inside `tx` (the tuned batch insert).
    fn enqueue_in(
        &self,
        tx: &mut Self::Tx,
        tenant_id: TenantId,
        jobs: &[NewJob],
    ) -> impl Future<Output = Result<Vec<Enqueued>, StoreError>> + Send;
}
