//! What the metrics and the dashboard read: live jobs by state and queue,
//! each queue's backlog and oldest waiting job, agents by status. Every
//! count reads a live state's partial index, so its cost follows the live
//! jobs, not the table (which also holds finished jobs until retention).

use homeostat_model::{AgentStatus, JobState};
use jiff::Timestamp;
use serde::Serialize;

use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::error::{Context, StoreError, corrupt};
use crate::time::ts;

/// A snapshot of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Jobs in each live state (scheduled, awaiting approval, queued,
    /// running), by queue; finished jobs are history and are not counted.
    pub jobs: Vec<JobCount>,
    /// Each queue that has queued jobs.
    pub queues: Vec<QueueBacklog>,
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
/// partial index.
const LIVE_JOBS: Sql = Sql::both(
    "SELECT 'queued' AS state, queue, COUNT(*) AS n FROM jobs WHERE state = 'queued' GROUP BY queue
     UNION ALL
     SELECT 'running', queue, COUNT(*) FROM jobs WHERE state = 'running' GROUP BY queue
     UNION ALL
     SELECT 'scheduled', queue, COUNT(*) FROM jobs WHERE state = 'scheduled' GROUP BY queue
     UNION ALL
     SELECT 'awaiting_approval', queue, COUNT(*) FROM jobs WHERE state = 'awaiting_approval'
       GROUP BY queue
     ORDER BY 1, 2",
);

const BACKLOG: Sql = Sql::both(
    "SELECT queue, COUNT(*) AS n, MIN(queued_at) AS oldest FROM jobs WHERE state = 'queued'
     GROUP BY queue ORDER BY queue",
);

const AGENTS: Sql =
    Sql::both("SELECT status, COUNT(*) AS n FROM agents GROUP BY status ORDER BY status");

pub(crate) async fn stats<B: Backend>(b: &B) -> Result<Stats, StoreError> {
    let op = "reading the store's statistics";
    let parse = |text: String| {
        text.parse()
            .map_err(|e: homeostat_model::ValidationError| corrupt(op, e))
    };
    let mut stats = Stats::default();
    for r in b.fetch(Stmt::new::<B>(LIVE_JOBS)).await.op(op)? {
        stats.jobs.push(JobCount {
            state: parse(r.text("state")?)?,
            queue: r.text("queue")?,
            count: r.int("n")? as u64,
        });
    }
    for r in b.fetch(Stmt::new::<B>(BACKLOG)).await.op(op)? {
        stats.queues.push(QueueBacklog {
            queue: r.text("queue")?,
            queued: r.int("n")? as u64,
            oldest_queued_at: ts(r.int("oldest")?),
        });
    }
    for r in b.fetch(Stmt::new::<B>(AGENTS)).await.op(op)? {
        stats.agents.push(AgentCount {
            status: r
                .text("status")?
                .parse()
                .map_err(|e: homeostat_model::ValidationError| corrupt(op, e))?,
            count: r.int("n")? as u64,
        });
    }
    Ok(stats)
}
