//! What the metrics and the dashboard read: live jobs by state and queue,
//! each queue's backlog and oldest waiting job, running workflows, agents
//! by status. Every count reads a live state's partial index, so its cost
//! follows the live jobs, not the table (which also holds finished jobs
//! until retention).
//!
//! Following the live jobs is still a scan of the backlog: a million
//! queued jobs cost a count of a million index entries, tens to hundreds of
//! milliseconds, and `/metrics` and the dashboard would pay it at every
//! read. So the job counts are exact while counting them is cheap
//! (`StoreOptions::cheap_count`, 10 ms); once a count costs more, reads
//! answer the last count at once, and one count at a time runs behind them
//! whenever the last is `StoreOptions::recount_after` old (5 s) and ten
//! times as old as that count took (so counting takes at most a tenth of a
//! connection's time): a backlog's counts lag by at most that and a count's
//! own time, and [`Stats::counted_at`] says how much. The counts run with
//! the planner free (`Backend::fetch_unpinned`): a backlog is a large share
//! of the table, read faster in the heap's order than through an index.
//! Agents are always counted afresh (an index of one row per agent).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeostat_model::{AgentStatus, JobState};
use jiff::Timestamp;
use serde::Serialize;

use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::error::{Context, StoreError, corrupt};
use crate::time::ts;

/// A snapshot of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// When the job counts were taken (the store's clock): the moment of the
    /// read, or up to `StoreOptions::recount_after` and a count's own time
    /// before it when the backlog is too large to count at every read.
    pub counted_at: Timestamp,
    /// Jobs in each live state (pending on a workflow's needs, scheduled,
    /// awaiting approval, waiting for limits, queued, running), by queue;
    /// finished jobs are history and are not counted.
    pub jobs: Vec<JobCount>,
    /// Each queue that has queued jobs.
    pub queues: Vec<QueueBacklog>,
    /// Workflows with a step not finished, not cancelled.
    pub workflows_running: u64,
    /// When the oldest of them was submitted.
    pub oldest_workflow_at: Option<Timestamp>,
    /// Agents by status.
    pub agents: Vec<AgentCount>,
}

/// Live jobs of one state in one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobCount {
    /// The state.
    pub state: JobState,
    /// The queue.
    pub queue: String,
    /// How many.
    pub count: u64,
}

/// A queue's backlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueBacklog {
    /// The queue.
    pub queue: String,
    /// Jobs waiting to be claimed.
    pub queued: u64,
    /// When the longest-waiting of them was queued.
    pub oldest_queued_at: Timestamp,
}

/// Agents of one status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentCount {
    /// The status.
    pub status: AgentStatus,
    /// How many.
    pub count: u64,
}

/// One branch per live state, each matching the predicate of that state's
/// partial index; the queued branch also finds each queue's oldest job, so
/// the backlog is read once.
const LIVE_JOBS: Sql = Sql::both(
    "SELECT 'queued' AS state, queue, COUNT(*) AS n, MIN(queued_at) AS oldest
       FROM jobs WHERE state = 'queued' GROUP BY queue
     UNION ALL
     SELECT 'running', queue, COUNT(*), NULL FROM jobs WHERE state = 'running' GROUP BY queue
     UNION ALL
     SELECT 'scheduled', queue, COUNT(*), NULL FROM jobs WHERE state = 'scheduled' GROUP BY queue
     UNION ALL
     SELECT 'awaiting_approval', queue, COUNT(*), NULL FROM jobs
       WHERE state = 'awaiting_approval' GROUP BY queue
     UNION ALL
     SELECT 'pending', queue, COUNT(*), NULL FROM jobs WHERE state = 'pending' GROUP BY queue
     UNION ALL
     SELECT 'waiting', queue, COUNT(*), NULL FROM jobs WHERE state = 'waiting' GROUP BY queue
     ORDER BY 1, 2",
);

/// Workflows with a live step, through the live states' indexes (a
/// workflow's steps are its jobs; a cancelled one is not running, whatever
/// its running steps' agents have not yet heard).
const RUNNING_WORKFLOWS: Sql = Sql::both(
    "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM workflows
     WHERE cancelled_at IS NULL AND id IN (
       SELECT workflow_id FROM jobs WHERE state = 'pending'
       UNION SELECT workflow_id FROM jobs WHERE state = 'queued' AND workflow_id IS NOT NULL
       UNION SELECT workflow_id FROM jobs WHERE state = 'running' AND workflow_id IS NOT NULL
       UNION SELECT workflow_id FROM jobs WHERE state = 'scheduled' AND workflow_id IS NOT NULL
       UNION SELECT workflow_id FROM jobs
              WHERE state = 'awaiting_approval' AND workflow_id IS NOT NULL
       UNION SELECT workflow_id FROM jobs WHERE state = 'waiting' AND workflow_id IS NOT NULL)",
);

/// Live jobs by tenant and queue: what the tenants' quotas weigh. Pending
/// steps and jobs waiting for limits are live too: otherwise a tenant could
/// hold any number of them past its quota.
const LIVE_BY_TENANT: Sql = Sql::both(
    "SELECT tenant_id, queue, COUNT(*) AS n FROM jobs
     WHERE state IN ('queued', 'running', 'scheduled', 'awaiting_approval', 'pending', 'waiting')
     GROUP BY tenant_id, queue",
);

const AGENTS: Sql =
    Sql::both("SELECT status, COUNT(*) AS n FROM agents GROUP BY status ORDER BY status");

/// The last count of the live jobs, for reads that come while counting is
/// not cheap.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    last: Mutex<Option<Counted>>,
    /// A count runs behind the reads.
    counting: AtomicBool,
}

#[derive(Debug, Clone)]
struct Counted {
    stats: Arc<Stats>,
    at: Instant,
    took: Duration,
}

pub(crate) async fn stats<B: Backend + Clone + Send + Sync + 'static>(
    b: &B,
    counts: &Arc<Counts>,
) -> Result<Stats, StoreError> {
    let options = b.options();
    let last = counts.last.lock().unwrap().clone();
    let mut stats = match last {
        Some(last) if last.took > options.cheap_count => {
            // Counting behind the reads takes at most a tenth of a
            // connection's time, however long a count takes.
            let every = options.recount_after.max(last.took * 10);
            if last.at.elapsed() >= every && !counts.counting.swap(true, Ordering::AcqRel) {
                let (b, counts) = (b.clone(), Arc::clone(counts));
                tokio::spawn(async move {
                    if let Err(e) = count_jobs(&b, &counts).await {
                        tracing::warn!(error = %e, "counting the live jobs failed; reads keep the last count");
                    }
                    counts.counting.store(false, Ordering::Release);
                });
            }
            Stats::clone(&last.stats)
        }
        _ => Stats::clone(&*count_jobs(b, counts).await?),
    };
    stats.agents = agent_counts(b).await?;
    Ok(stats)
}

/// Counts the live jobs and keeps the count for the reads that follow.
async fn count_jobs<B: Backend>(b: &B, counts: &Counts) -> Result<Arc<Stats>, StoreError> {
    let started = Instant::now();
    let counted_at = b.now();
    let stats = Arc::new(live_jobs(b, counted_at).await?);
    *counts.last.lock().unwrap() = Some(Counted {
        stats: stats.clone(),
        at: started,
        took: started.elapsed(),
    });
    Ok(stats)
}

async fn live_jobs<B: Backend>(b: &B, counted_at: Timestamp) -> Result<Stats, StoreError> {
    let op = "counting the live jobs";
    let parse = |text: String| {
        text.parse()
            .map_err(|e: homeostat_model::ValidationError| corrupt(op, e))
    };
    let mut stats = Stats {
        counted_at,
        ..Stats::default()
    };
    for r in b.fetch_unpinned(Stmt::new::<B>(LIVE_JOBS)).await.op(op)? {
        let count = JobCount {
            state: parse(r.text("state")?)?,
            queue: r.text("queue")?,
            count: r.num::<u64>("n")?,
        };
        if let Some(oldest) = r.opt_int("oldest")? {
            stats.queues.push(QueueBacklog {
                queue: count.queue.clone(),
                queued: count.count,
                oldest_queued_at: ts(oldest),
            });
        }
        stats.jobs.push(count);
    }
    let op = "counting the running workflows";
    if let Some(r) = b
        .fetch_unpinned(Stmt::new::<B>(RUNNING_WORKFLOWS))
        .await
        .op(op)?
        .first()
    {
        stats.workflows_running = r.num::<u64>("n")?;
        stats.oldest_workflow_at = r.opt_int("oldest")?.map(ts);
    }
    Ok(stats)
}

/// Agents by status, counted now.
pub(crate) async fn agent_counts<B: Backend>(b: &B) -> Result<Vec<AgentCount>, StoreError> {
    let op = "counting agents";
    let mut agents = Vec::new();
    for r in b.fetch(Stmt::new::<B>(AGENTS)).await.op(op)? {
        agents.push(AgentCount {
            status: r
                .text("status")?
                .parse()
                .map_err(|e: homeostat_model::ValidationError| corrupt(op, e))?,
            count: r.num::<u64>("n")?,
        });
    }
    Ok(agents)
}

/// Each tenant's live jobs (pending, scheduled, awaiting approval,
/// waiting, queued, running), by queue. One grouped count of the live jobs
/// (its cost follows the backlog): callers count seldom and keep the
/// answer.
pub(crate) async fn live_by_tenant<B: Backend>(
    b: &B,
) -> Result<std::collections::HashMap<homeostat_model::TenantId, Vec<(String, u64)>>, StoreError> {
    let op = "counting each tenant's live jobs";
    let rows = b
        .fetch_unpinned(Stmt::new::<B>(LIVE_BY_TENANT))
        .await
        .op(op)?;
    let mut out: std::collections::HashMap<_, Vec<(String, u64)>> = Default::default();
    for r in rows {
        out.entry(r.id("tenant_id")?)
            .or_default()
            .push((r.text("queue")?, r.num::<u64>("n")?));
    }
    Ok(out)
}
