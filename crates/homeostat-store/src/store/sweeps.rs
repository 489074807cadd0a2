//! The store's sweeps: what controllers run, fenced and audited.

use std::time::Duration;

use homeostat_model::AgentId;
use homeostat_runtime::Fence;
use jiff::Timestamp;

use super::{Db, Store};
use crate::job_metrics::Reclaim;
use crate::{
    Ageing, AuditRetentionRun, JobRetention, PlanKind, StoreError, SweepPlan, Swept, audit_log,
    decisions, jobs, leases, plan, registry, sweeps, time,
};

impl Store {
    // --- sweeps (controllers) -----------------------------------------------

    /// Agents silent for `stale_after` go offline.
    pub async fn mark_silent_agents_offline(
        &self,
        stale_after: Duration,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Vec<AgentId>, StoreError> {
        dispatch!(
            self,
            registry::agents::mark_silent_agents_offline(stale_after, limit, fence)
        )
    }

    /// Running jobs of offline agents: re-queued, or dead with no attempts left.
    pub async fn reclaim_offline_agent_jobs(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        let swept = dispatch!(self, sweeps::run_due(&sweeps::AGENT_OFFLINE, limit, fence));
        self.counted(swept, Some(Reclaim::AgentOffline)).await
    }

    /// Running jobs whose lease expired: re-queued, or dead with no attempts
    /// left. Only leases that ran out at or after `counted_from` count (all
    /// for `None`): after an outage of the control plane, leases that ran
    /// out while no agent could renew them wait until their agents have had
    /// the chance to.
    pub async fn requeue_expired_leases(
        &self,
        limit: u32,
        counted_from: Option<Timestamp>,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        let from = counted_from.map_or(i64::MIN, time::ms);
        let swept = dispatch!(self, sweeps::requeue_expired(limit, from, fence));
        self.counted(swept, Some(Reclaim::LeaseExpired)).await
    }

    /// Queued jobs never started by their deadline: expired.
    pub async fn expire_overdue_queued(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        let mut swept = dispatch!(
            self,
            sweeps::run_due(&sweeps::DEADLINE_PASSED, limit, fence)
        )?;
        let waiting = dispatch!(
            self,
            sweeps::run_due(&sweeps::WAITING_DEADLINE_PASSED, limit, fence)
        )?;
        swept.merge(waiting);
        self.limits_moved();
        self.local.jobs.swept(&swept.moved, None);
        Ok(swept)
    }

    /// Running jobs past their own timeout: a failed attempt (scheduled for
    /// retry after the backoff, or dead).
    pub async fn time_out_running(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        let swept = dispatch!(self, sweeps::time_out_running(limit, fence));
        self.limits_moved();
        if let Ok(swept) = &swept {
            self.local.jobs.swept(&swept.moved, None);
        }
        swept
    }

    /// Scheduled jobs whose time has come: queued.
    pub async fn promote_scheduled(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        self.woken(dispatch!(
            self,
            sweeps::run_due(&sweeps::PROMOTED, limit, fence)
        ))
        .await
    }

    /// Effective priority of queued jobs = tier base + job priority + whole
    /// minutes waited × the ageing bonus, but never above its cap (nor below
    /// the job's own base). Jobs of every tier that waited long enough meet
    /// at the ceiling, where the oldest goes first: no tenant starves.
    pub async fn recompute_priorities(
        &self,
        ageing: Ageing,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        dispatch!(self, sweeps::recompute_priorities(ageing, limit, fence))
    }

    /// Jobs awaiting an approval that expired: expired.
    pub async fn expire_approvals(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        let swept = dispatch!(
            self,
            sweeps::run_due(&sweeps::APPROVAL_EXPIRED, limit, fence)
        )?;
        self.local.jobs.swept(&swept.moved, None);
        Ok(swept)
    }

    /// Deletes expired, used-up and revoked tokens.
    pub async fn delete_dead_tokens(
        &self,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        dispatch!(self, registry::tokens::delete_dead_tokens(limit, fence))
    }

    /// Deletes up to `limit` agents offline and unheard for `offline_for`,
    /// oldest first, and revokes their credentials; their past jobs keep
    /// their ids. Audited as `agents.forgotten`.
    pub async fn forget_departed_agents(
        &self,
        offline_for: Duration,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        let forgotten = dispatch!(
            self,
            registry::agents::forget_departed_agents(offline_for, limit, fence)
        )?;
        self.forget_agents(&forgotten);
        Ok(forgotten.len() as u64)
    }

    /// Deletes finished jobs past retention.
    pub async fn delete_finished_jobs(
        &self,
        retention: JobRetention,
        limit: u32,
        fence: Option<&Fence>,
    ) -> Result<Swept, StoreError> {
        dispatch!(self, sweeps::delete_finished_jobs(retention, limit, fence))
    }

    /// Deletes up to a batch of the oldest audit events past retention (or,
    /// on a dry run, counts them), keeping the chain verifiable; the
    /// deletion itself is audited.
    pub async fn delete_old_audit_events(
        &self,
        run: AuditRetentionRun,
        fence: Option<&Fence>,
    ) -> Result<u64, StoreError> {
        let now = self.now();
        let run = audit_log::Retention {
            cutoff_ms: time::ms(now) - time::dur_ms(run.retention),
            batch: run.batch,
            dry_run: run.dry_run,
            now_ms: time::ms(now),
            fence,
        };
        let actor = decisions::actor_for(fence);
        dispatch!(self, audit_log::delete_old(run, &actor))
    }

    /// What a sweep would change at `now`, without changing it: the count
    /// and the first `sample` rows.
    pub async fn plan(&self, kind: PlanKind, sample: u32) -> Result<SweepPlan, StoreError> {
        dispatch!(self, plan::plan(kind, sample))
    }

    /// Which replica (lease holder) leads each exclusive controller now.
    pub async fn lease_holders(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        dispatch!(self, leases::holders())
    }

    /// The last cron slot enqueued for a periodic schedule.
    pub async fn periodic_last_slot(
        &self,
        schedule: &str,
    ) -> Result<Option<Timestamp>, StoreError> {
        dispatch!(self, jobs::periodic_last_slot(schedule))
    }
}
