//! What an operator looks at beside the live counts of `stats`: jobs
//! finished per minute, the jobs that need a person (dead, awaiting
//! approval), which agents run how many jobs, and the audit log newest
//! first. Each reads an index range whose size follows what it shows, not
//! the history the table keeps until retention.

use std::collections::BTreeMap;

use homeostat_model::{AgentId, Job};
use jiff::Timestamp;
use serde::Serialize;

use crate::audit::ChainedEvent;
use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::error::{Context, StoreError};
use crate::rows::{self, job_columns};
use crate::time::ts;
use crate::types::AuditFilter;

/// Jobs that finished in one minute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MinuteOutcomes {
    /// The minute's start.
    pub minute: Timestamp,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs that failed for good (dead or expired).
    pub failed: u64,
}

/// Jobs that succeeded per minute, as the stores counted them
/// (`crate::tally`).
const SUCCEEDED: Sql = Sql::both(
    "SELECT minute, CAST(SUM(jobs) AS BIGINT) AS n FROM succeeded_per_minute
     WHERE minute >= $1 AND minute < $2 GROUP BY minute",
);

/// Jobs that failed for good per minute: a range of `jobs_failed_finished`.
/// The range is closed on both ends: with one bound and no statistics (a
/// fresh table, or a generic plan) PostgreSQL guesses a third of the table
/// and scans all of it; a closed range it takes for a narrow one.
const FAILED: Sql = Sql::both(
    "SELECT finished_at / 60000 AS minute, COUNT(*) AS n FROM jobs
     WHERE state IN ('dead', 'expired') AND finished_at >= $1 AND finished_at < $2
     GROUP BY 1",
);

/// The state is a literal so that the partial index `jobs_dead` applies.
const DEAD: Sql = Sql::both(concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE state = 'dead' ORDER BY id DESC LIMIT CAST($1 AS BIGINT)"
));

const DEAD_COUNT: Sql = Sql::both("SELECT COUNT(*) AS n FROM jobs WHERE state = 'dead'");

/// Soonest to expire first, in the order of `jobs_approval_expiry`
/// (newest first would walk the primary key past every other job when
/// none waits).
const AWAITING: Sql = Sql::pair(
    concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE state = 'awaiting_approval'
          ORDER BY approval_expires_at IS NULL, approval_expires_at LIMIT CAST($1 AS BIGINT)"
    ),
    concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE state = 'awaiting_approval' ORDER BY approval_expires_at LIMIT $1"
    ),
);

const RUNNING_BY_AGENT: Sql = Sql::both(
    "SELECT lease_agent, COUNT(*) AS n FROM jobs WHERE state = 'running'
       AND lease_agent IS NOT NULL GROUP BY lease_agent",
);

const AUDIT_PAGE: Sql = Sql::pair(
    "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_events
     WHERE ($1 IS NULL OR seq < $1) AND ($2 IS NULL OR action = $2)
       AND ($3 IS NULL OR subject = $3) AND ($4 IS NULL OR actor = $4)
     ORDER BY seq DESC LIMIT CAST($5 AS BIGINT)",
    "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_events
     WHERE ($1::bigint IS NULL OR seq < $1) AND ($2::text IS NULL OR action = $2)
       AND ($3::text IS NULL OR subject = $3) AND ($4::text IS NULL OR actor = $4)
     ORDER BY seq DESC LIMIT $5",
);

const AUDIT_SPAN: Sql = Sql::both("SELECT first_seq, next_seq FROM audit_chain WHERE id = 1");

/// Jobs finished per minute since `since_ms`, oldest minute first; minutes
/// without a finished job are absent.
pub(crate) async fn finished_per_minute<B: Backend>(
    b: &B,
    tally: &crate::tally::Tally,
    since_ms: i64,
) -> Result<Vec<MinuteOutcomes>, StoreError> {
    let op = "counting finished jobs";
    // What this store counted is written first, so that its own view is
    // exact.
    crate::tally::flush(b, tally).await?;
    let mut minutes: BTreeMap<i64, MinuteOutcomes> = BTreeMap::new();
    // Up to a minute ahead: a replica whose clock runs behind another's
    // still counts what the other finished.
    let until_ms = crate::time::ms(b.now()) + 60_000;
    let first = since_ms.div_euclid(60_000);
    let succeeded = Stmt::new::<B>(SUCCEEDED)
        .arg(first)
        .arg(until_ms.div_euclid(60_000) + 1);
    for r in b.fetch(succeeded).await.op(op)? {
        entry(&mut minutes, r.int("minute")?).succeeded += r.num::<u64>("n")?;
    }
    let failed = Stmt::new::<B>(FAILED).arg(first * 60_000).arg(until_ms);
    for r in b.fetch(failed).await.op(op)? {
        entry(&mut minutes, r.int("minute")?).failed += r.num::<u64>("n")?;
    }
    Ok(minutes.into_values().collect())
}

fn entry(minutes: &mut BTreeMap<i64, MinuteOutcomes>, minute: i64) -> &mut MinuteOutcomes {
    minutes.entry(minute).or_insert_with(|| MinuteOutcomes {
        minute: ts(minute * 60_000),
        ..MinuteOutcomes::default()
    })
}

/// The newest dead jobs, and how many there are.
pub(crate) async fn dead_jobs<B: Backend>(
    b: &B,
    limit: u32,
) -> Result<(Vec<Job>, u64), StoreError> {
    let op = "reading dead jobs";
    let jobs = b
        .fetch(Stmt::new::<B>(DEAD).arg(i64::from(limit)))
        .await
        .op(op)?
        .iter()
        .map(rows::job)
        .collect::<Result<Vec<_>, _>>()?;
    let count = b.fetch(Stmt::new::<B>(DEAD_COUNT)).await.op(op)?;
    let count = match count.first() {
        Some(r) => r.num::<u64>("n")?,
        None => 0,
    };
    Ok((jobs, count))
}

/// The jobs waiting for approval whose approval expires soonest.
pub(crate) async fn awaiting_approval<B: Backend>(
    b: &B,
    limit: u32,
) -> Result<Vec<Job>, StoreError> {
    b.fetch(Stmt::new::<B>(AWAITING).arg(i64::from(limit)))
        .await
        .op("reading jobs awaiting approval")?
        .iter()
        .map(rows::job)
        .collect()
}

/// Running jobs per agent that holds any.
pub(crate) async fn running_by_agent<B: Backend>(
    b: &B,
) -> Result<BTreeMap<AgentId, u64>, StoreError> {
    let mut out = BTreeMap::new();
    for r in b
        .fetch(Stmt::new::<B>(RUNNING_BY_AGENT))
        .await
        .op("counting running jobs per agent")?
    {
        out.insert(r.id("lease_agent")?, r.num::<u64>("n")?);
    }
    Ok(out)
}

/// Audit events before `before_seq` (all when `None`), newest first.
pub(crate) async fn audit_page<B: Backend>(
    b: &B,
    filter: &AuditFilter,
    before_seq: Option<i64>,
    limit: u32,
) -> Result<Vec<ChainedEvent>, StoreError> {
    let stmt = Stmt::new::<B>(AUDIT_PAGE)
        .arg(before_seq)
        .arg(filter.action.as_deref())
        .arg(filter.subject.as_deref())
        .arg(filter.actor.as_deref())
        .arg(i64::from(limit.clamp(1, 1000)));
    b.fetch(stmt)
        .await
        .op("reading the audit log")?
        .iter()
        .map(rows::chained_event)
        .collect()
}

/// The retained chain's first sequence number and the next one to be
/// written: how many events a verification will walk.
pub(crate) async fn audit_span<B: Backend>(b: &B) -> Result<(i64, i64), StoreError> {
    let op = "reading the audit chain";
    let rows = b.fetch(Stmt::new::<B>(AUDIT_SPAN)).await.op(op)?;
    let r = rows
        .first()
        .ok_or_else(|| crate::error::corrupt(op, "the audit chain has no head row"))?;
    Ok((r.int("first_seq")?, r.int("next_seq")?))
}
