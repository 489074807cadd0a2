//! Dry runs: what a sweep would change now, read-only. The row selections
//! are those of the sweeps; the SQL is portable except where noted.

use std::time::Duration;

use serde::Serialize;

use crate::JobRetention;
use crate::backend::{Backend, RowExt, Stmt};
use crate::error::{Context, StoreError};
use crate::time::dur_ms;

/// Which sweep to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// Agents that would go offline.
    SilentAgents {
        /// The stale timeout.
        stale_after: Duration,
    },
    /// Running jobs of agents offline or about to go offline.
    OfflineAgentJobs {
        /// The stale timeout.
        stale_after: Duration,
    },
    /// Running jobs whose lease expired.
    ExpiredLeases,
    /// Queued jobs past their deadline.
    OverdueQueued,
    /// Running jobs past their timeout.
    TimedOut,
    /// Scheduled jobs whose time has come.
    DueScheduled,
    /// Queued jobs whose effective priority would change.
    Priorities {
        /// Points per minute waited.
        bonus_per_minute: i64,
        /// The ceiling.
        cap: i64,
    },
    /// Jobs whose approval expired.
    ExpiredApprovals,
    /// Agents offline and unheard this long, to be forgotten.
    DepartedAgents {
        /// How long.
        offline_for: Duration,
    },
    /// Expired, used-up or revoked tokens.
    DeadTokens,
    /// Finished jobs past retention.
    FinishedJobs(JobRetention),
    /// Audit events past retention.
    OldAuditEvents {
        /// The retention.
        retention: Duration,
    },
    /// Notifications due for sending.
    DueNotifications,
}

/// What a sweep would change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepPlan {
    /// How many rows.
    pub count: u64,
    /// The first of them.
    pub items: Vec<PlannedItem>,
}

/// One row a sweep would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedItem {
    /// `job:<id>`, `agent:<id>`, `token:<id>`, ….
    pub subject: String,
    /// Its state now.
    pub from: String,
    /// Its state after the sweep.
    pub to: String,
}

/// The SQL of a plan: (count query, sample query, binds). The sample's
/// limit is the last bind.
fn sql(kind: PlanKind, now_ms: i64, postgres: bool) -> (String, String, Vec<i64>) {
    let (least, greatest) = if postgres {
        ("LEAST", "GREATEST")
    } else {
        ("MIN", "MAX")
    };
    let requeue_or_dead = "CASE WHEN attempt >= max_attempts THEN 'dead' \
         WHEN limit_keys IS NULL THEN 'queued' ELSE 'waiting' END";
    // A job's state is an enum on PostgreSQL: read as text, as on SQLite.
    let state = "CAST(state AS TEXT)";
    let (source, subject, from, to, binds): (String, &str, String, String, Vec<i64>) = match kind {
        PlanKind::SilentAgents { stale_after } => (
            "agents WHERE status <> 'offline' AND last_heartbeat_at < $1".into(),
            "'agent:' || id",
            "status".into(),
            "'offline'".into(),
            vec![now_ms - dur_ms(stale_after)],
        ),
        // As the sweep: a job under limits is left to its lease (its agent
        // may only be unheard, and still run it).
        PlanKind::OfflineAgentJobs { stale_after } => (
            "jobs j JOIN agents a ON a.id = j.lease_agent WHERE j.state = 'running'
               AND (a.status = 'offline' OR a.last_heartbeat_at < $1)
               AND (j.limit_keys IS NULL OR j.lease_expires_at < $2)"
                .into(),
            "'job:' || j.id",
            "CAST(j.state AS TEXT)".into(),
            "CASE WHEN j.attempt >= j.max_attempts THEN 'dead' \
             WHEN j.limit_keys IS NULL THEN 'queued' ELSE 'waiting' END"
                .into(),
            vec![now_ms - dur_ms(stale_after), now_ms],
        ),
        PlanKind::ExpiredLeases => (
            "jobs WHERE state = 'running' AND lease_expires_at < $1".into(),
            "'job:' || id",
            state.into(),
            requeue_or_dead.into(),
            vec![now_ms],
        ),
        PlanKind::OverdueQueued => (
            "jobs WHERE state IN ('queued', 'waiting') AND attempt = 0 AND deadline_at < $1".into(),
            "'job:' || id",
            state.into(),
            "'expired'".into(),
            vec![now_ms],
        ),
        PlanKind::TimedOut => (
            "jobs WHERE state = 'running' AND timeout_at < $1".into(),
            "'job:' || id",
            state.into(),
            "CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'scheduled' END".into(),
            vec![now_ms],
        ),
        PlanKind::DueScheduled => (
            "jobs WHERE state = 'scheduled' AND run_at <= $1".into(),
            "'job:' || id",
            state.into(),
            "CASE WHEN limit_keys IS NULL THEN 'queued' ELSE 'waiting' END".into(),
            vec![now_ms],
        ),
        PlanKind::Priorities {
            bonus_per_minute,
            cap,
        } => {
            let aged = format!(
                "{greatest}(base_priority, {least}($3, base_priority + (($1 - fair_at) / 60000) * $2))"
            );
            (
                format!("jobs WHERE state = 'queued' AND effective_priority <> {aged}"),
                "'job:' || id",
                "'priority ' || CAST(effective_priority AS TEXT)".into(),
                format!("'priority ' || CAST({aged} AS TEXT)"),
                vec![now_ms, bonus_per_minute, cap],
            )
        }
        PlanKind::ExpiredApprovals => (
            "jobs WHERE state = 'awaiting_approval' AND approval_expires_at < $1".into(),
            "'job:' || id",
            state.into(),
            "'expired'".into(),
            vec![now_ms],
        ),
        PlanKind::DepartedAgents { offline_for } => (
            "agents WHERE status = 'offline' AND last_heartbeat_at < $1".into(),
            "'agent:' || id",
            "status".into(),
            "'deleted'".into(),
            vec![now_ms.saturating_sub(dur_ms(offline_for))],
        ),
        PlanKind::DeadTokens => (
            "tokens WHERE expires_at <= $1 OR uses_left = 0 OR revoked_at IS NOT NULL".into(),
            "'token:' || id",
            "kind".into(),
            "'deleted'".into(),
            vec![now_ms],
        ),
        PlanKind::FinishedJobs(retention) => (
            "jobs WHERE (state IN ('succeeded', 'cancelled') AND finished_at < $1)
               OR (state IN ('dead', 'expired') AND finished_at < $2)"
                .into(),
            "'job:' || id",
            state.into(),
            "'deleted'".into(),
            vec![
                now_ms - dur_ms(retention.succeeded),
                now_ms - dur_ms(retention.failed),
            ],
        ),
        PlanKind::OldAuditEvents { retention } => (
            "audit_events WHERE at < $1".into(),
            "'audit:' || CAST(seq AS TEXT)",
            "action".into(),
            "'deleted'".into(),
            vec![now_ms - dur_ms(retention)],
        ),
        PlanKind::DueNotifications => (
            "notifications WHERE state = 'pending' AND next_attempt_at <= $1".into(),
            "'notification:' || id",
            "event".into(),
            "'sent'".into(),
            vec![now_ms],
        ),
    };
    let limit = binds.len() + 1;
    let count = format!("SELECT COUNT(*) AS n FROM {source}");
    let sample = format!(
        "SELECT {subject} AS subject, {from} AS from_state, {to} AS to_state FROM {source} LIMIT CAST(${limit} AS BIGINT)"
    );
    (count, sample, binds)
}

/// What a sweep would change at `now`, read-only.
pub(crate) async fn plan<B: Backend>(
    b: &B,
    kind: PlanKind,
    sample: u32,
) -> Result<SweepPlan, StoreError> {
    let now = b.now();
    let op = "planning a sweep";
    let (count_sql, sample_sql, binds) = sql(kind, now.as_millisecond(), B::POSTGRES);
    let mut count = Stmt::dynamic(count_sql);
    let mut rows = Stmt::dynamic(sample_sql);
    for bind in binds {
        count = count.arg(bind);
        rows = rows.arg(bind);
    }
    let count = b.fetch(count).await.op(op)?;
    let count: u64 = count.first().map(|r| r.num("n")).transpose()?.unwrap_or(0);
    let items = b
        .fetch(rows.arg(i64::from(sample)))
        .await
        .op(op)?
        .iter()
        .map(|r| {
            Ok(PlannedItem {
                subject: r.text("subject")?,
                from: r.text("from_state")?,
                to: r.text("to_state")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(SweepPlan { count, items })
}
