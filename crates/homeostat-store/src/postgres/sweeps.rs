//! The set-based sweeps the controllers call, on PostgreSQL: each
//! fenced, audited, one statement, limited to a batch.

use homeostat_model::{Id, NewAuditEvent};
use homeostat_runtime::Fence;
use jiff::Timestamp;
use serde_json::json;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PgStore;
use crate::JobRetention;
use crate::error::{Context, StoreError};
use crate::time::{dur_ms, ms};
use crate::{Swept, actor_for, sweep_event};

impl PgStore {
    // The statement, its binds and its audit wording travel together from each
    // sweep's one call site.
    #[allow(clippy::too_many_arguments)]
    async fn sweep(
        &self,
        op: &'static str,
        sql: &'static str,
        binds: &[i64],
        id_bound: Option<Id>,
        fence: Option<&Fence>,
        now: Timestamp,
        reason: &str,
    ) -> Result<Swept, StoreError> {
        let mut tx = self.write(op).await?;
        Self::check_fence(&mut tx, fence, op).await?;
        let mut query = sqlx::query(sql);
        for b in binds {
            query = query.bind(*b);
        }
        if let Some(b) = id_bound {
            query = query.bind(b);
        }
        let rows = query.fetch_all(&mut *tx).await.op(op)?;
        let swept = swept_from(&rows);
        if swept.changed > 0 {
            Self::append_audit(
                &mut tx,
                &[sweep_event(&actor_for(fence), op, reason, &swept)],
                ms(now),
            )
            .await?;
        }
        tx.commit().await.op(op)?;
        Ok(swept)
    }

    pub(crate) async fn requeue_expired_leases(
        &self,
        now: Timestamp,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        self.sweep(
            "jobs.lease_expired",
            "UPDATE jobs SET
               state = CASE WHEN attempt >= max_attempts THEN 'dead'::job_state ELSE 'queued' END,
               finished_at = CASE WHEN attempt >= max_attempts THEN $1 ELSE NULL END,
               queued_at = $1, updated_at = $1, last_error = 'lease expired: the agent stopped heartbeating the job',
               lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
             WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < $1
                          LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, state::text",
            &[ms(now), i64::from(limit)],
            None,
            fence,
            now,
            "lease expired",
        )
        .await
    }

    pub(crate) async fn reclaim_offline_agent_jobs(
        &self,
        now: Timestamp,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        self.sweep(
            "jobs.agent_offline",
            "UPDATE jobs SET
               state = CASE WHEN attempt >= max_attempts THEN 'dead'::job_state ELSE 'queued' END,
               finished_at = CASE WHEN attempt >= max_attempts THEN $1 ELSE NULL END,
               queued_at = $1, updated_at = $1, last_error = 'reclaimed: the agent went offline',
               lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
             WHERE id IN (SELECT j.id FROM jobs j JOIN agents a ON a.id = j.lease_agent
                          WHERE j.state = 'running' AND a.status = 'offline'
                          LIMIT $2 FOR UPDATE OF j SKIP LOCKED)
             RETURNING id, state::text",
            &[ms(now), i64::from(limit)],
            None,
            fence,
            now,
            "agent offline",
        )
        .await
    }

    pub(crate) async fn expire_overdue_queued(
        &self,
        now: Timestamp,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        self.sweep(
            "jobs.deadline_passed",
            "UPDATE jobs SET state = 'expired', finished_at = $1, updated_at = $1,
               last_error = 'not started before its deadline'
             WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND attempt = 0
                          AND deadline_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, state::text",
            &[ms(now), i64::from(limit)],
            None,
            fence,
            now,
            "deadline passed",
        )
        .await
    }

    pub(crate) async fn time_out_running(
        &self,
        now: Timestamp,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        let (initial, cap) = self.options().retry_bounds_ms();
        self.sweep(
            "jobs.timed_out",
            "UPDATE jobs SET
               state = CASE WHEN attempt >= max_attempts THEN 'dead'::job_state ELSE 'scheduled' END,
               finished_at = CASE WHEN attempt >= max_attempts THEN $1 ELSE NULL END,
               run_at = $1 + LEAST($4, $3 << LEAST(GREATEST(attempt - 1, 0), 40)::int),
               updated_at = $1, last_error = 'attempt timed out',
               lease_agent = NULL, lease_expires_at = NULL, timeout_at = NULL
             WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND timeout_at < $1
                          LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, state::text",
            &[ms(now), i64::from(limit), initial, cap],
            None,
            fence,
            now,
            "attempt timed out",
        )
        .await
    }

    pub(crate) async fn promote_scheduled(
        &self,
        now: Timestamp,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        self.sweep(
            "jobs.promoted",
            "UPDATE jobs SET state = 'queued', queued_at = $1, updated_at = $1
             WHERE id IN (SELECT id FROM jobs WHERE state = 'scheduled' AND run_at <= $1
                          LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, state::text",
            &[ms(now), i64::from(limit)],
            None,
            fence,
            now,
            "run time reached",
        )
        .await
    }

    pub(crate) async fn recompute_priorities(
        &self,
        now: Timestamp,
        bonus_per_minute: i64,
        cap: i64,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        let op = "jobs.reprioritized";
        let mut tx = self.write(op).await?;
        Self::check_fence(&mut tx, fence, op).await?;
        let changed = sqlx::query(
            "UPDATE jobs SET effective_priority = GREATEST(base_priority, LEAST($3, base_priority + (($1 - queued_at) / 60000) * $2))
             WHERE id IN (SELECT id FROM jobs WHERE state = 'queued'
                 AND effective_priority <> GREATEST(base_priority, LEAST($3, base_priority + (($1 - queued_at) / 60000) * $2))
                 LIMIT $4 FOR UPDATE SKIP LOCKED)",
        )
        .bind(ms(now))
        .bind(bonus_per_minute)
        .bind(cap)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await
        .op(op)?
        .rows_affected();
        if changed > 0 {
            Self::append_audit(
                &mut tx,
                &[NewAuditEvent {
                    actor: actor_for(fence),
                    action: op.into(),
                    subject: "jobs".into(),
                    details: json!({"count": changed, "bonus_per_minute": bonus_per_minute, "cap": cap}),
                }],
                ms(now),
            )
            .await?;
        }
        tx.commit().await.op(op)?;
        Ok(changed)
    }

    pub(crate) async fn expire_approvals(
        &self,
        now: Timestamp,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        self.sweep(
            "jobs.approval_expired",
            "UPDATE jobs SET state = 'expired', finished_at = $1, updated_at = $1,
               last_error = 'approval expired'
             WHERE id IN (SELECT id FROM jobs WHERE state = 'awaiting_approval'
                          AND approval_expires_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, state::text",
            &[ms(now), i64::from(limit)],
            None,
            fence,
            now,
            "approval expired",
        )
        .await
    }

    pub(crate) async fn delete_finished_jobs(
        &self,
        now: Timestamp,
        retention: JobRetention,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        self.sweep(
            "jobs.deleted",
            "DELETE FROM jobs WHERE id IN (
               SELECT id FROM jobs WHERE id < $4 AND (
                 (state IN ('succeeded', 'cancelled') AND finished_at < $1)
                 OR (state IN ('dead', 'expired') AND finished_at < $2))
               LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id, state::text",
            &[
                ms(now) - dur_ms(retention.succeeded),
                ms(now) - dur_ms(retention.failed),
                i64::from(limit),
            ],
            Some(crate::id_before(
                ms(now) - dur_ms(retention.succeeded.min(retention.failed)),
            )),
            fence,
            now,
            "past retention",
        )
        .await
    }
}

fn swept_from(rows: &[PgRow]) -> Swept {
    let mut swept = Swept::default();
    for r in rows {
        let id: Id = r.get("id");
        if r.get::<String, _>("state") == "dead" {
            swept.dead.push(id);
        }
        swept.ids.push(id);
    }
    swept.changed = swept.ids.len() as u64;
    swept
}
