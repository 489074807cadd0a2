//! The store's limits: definitions, admission and what they show.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use homeostat_model::{Job, JobLimitStatus, Limit, LimitSpec, LimitUsage, NewJob, TenantId};
use homeostat_runtime::Fence;

use super::{Db, Store};
use crate::{Admitted, StoreError, admission, limits, signals};

/// How often a replica's admission looks for wake-ups that came due (a
/// rate's window ending, a cancelled job's hold running out) or that
/// another replica left, when nothing here told it sooner.
const ADMISSION_TICK: Duration = Duration::from_millis(250);

/// Admission runs at most this many times in a row for one call: each run
/// takes up to a thousand keys.
const ADMISSION_RUNS: usize = 8;

impl Store {
    // --- limits -----------------------------------------------------------

    /// Every limit, by name.
    pub async fn limits(&self) -> Result<Vec<Limit>, StoreError> {
        dispatch!(self, limits::list())
    }

    /// One limit.
    pub async fn limit(&self, name: &str) -> Result<Limit, StoreError> {
        dispatch!(self, limits::get(name))
    }

    /// Creates or changes limit `name`; whether it was created. Jobs under
    /// it keep the keys they were given; its keys with waiting jobs are
    /// looked at again at once. Enqueues on other replicas see it within
    /// [`limits::FRESH`]. Audited.
    pub async fn set_limit(
        &self,
        name: &str,
        spec: &LimitSpec,
        actor: &str,
    ) -> Result<(Limit, bool), StoreError> {
        let out = dispatch!(self, limits::set(name, spec, actor))?;
        self.local.limits.clear();
        self.admit_waiting("system").await?;
        Ok(out)
    }

    /// Deletes limit `name`: jobs waiting on it alone are queued. Audited.
    pub async fn delete_limit(&self, name: &str, actor: &str) -> Result<(), StoreError> {
        dispatch!(self, limits::delete(name, actor))?;
        self.local.limits.clear();
        self.admit_waiting("system").await?;
        Ok(())
    }

    /// How a limit stands: what holds and waits, its busiest keys.
    pub async fn limit_usage(&self, name: &str) -> Result<LimitUsage, StoreError> {
        let limit = self.limit(name).await?;
        dispatch!(self, limits::usage(&limit))
    }

    /// How every limit stands.
    pub async fn limits_usage(&self) -> Result<Vec<LimitUsage>, StoreError> {
        let mut out = Vec::new();
        for limit in self.limits().await? {
            out.push(dispatch!(self, limits::usage(&limit))?);
        }
        Ok(out)
    }

    /// How each limit and key `job` is under stands now, and which keep it
    /// waiting.
    pub async fn job_limits(&self, job: &Job) -> Result<Vec<JobLimitStatus>, StoreError> {
        dispatch!(self, limits::job_status(job))
    }

    /// Admits waiting jobs whose keys have room (those of due wake-ups),
    /// until none is due or a few runs are done, and wakes claims for them.
    /// `actor` is audited for jobs a strategy cancels.
    pub async fn admit_waiting(&self, actor: &str) -> Result<Admitted, StoreError> {
        let mut total = Admitted::default();
        for _ in 0..ADMISSION_RUNS {
            let run = dispatch!(self, admission::admit(actor))?;
            dispatch!(self, signals::wake_all(&self.local.signals, &run.queued));
            total.queued.extend(run.queued);
            total.cancelled += run.cancelled;
            for (queue, kind) in &run.cancelled_jobs {
                self.local.jobs.finished(queue, kind, "cancelled");
            }
            total.more = run.more;
            if !run.more {
                break;
            }
        }
        Ok(total)
    }

    /// Deletes starts older than every rate's window and slots of cancelled
    /// jobs whose hold ran out; fenced by the caller's lease.
    pub async fn prune_limits(&self, fence: Option<&Fence>) -> Result<u64, StoreError> {
        dispatch!(self, limits::prune(fence))
    }

    /// `jobs` with their limits resolved (keys derived, limits that apply
    /// by queue and kind added), or as they are when none is under a limit.
    pub(super) async fn resolve_limits<'a>(
        &self,
        tenant: TenantId,
        jobs: &'a [NewJob],
    ) -> Result<Cow<'a, [NewJob]>, StoreError> {
        let defs = dispatch!(self, limits::definitions(&self.local.limits))?;
        match limits::resolve(&defs, tenant, jobs) {
            Ok(None) => Ok(Cow::Borrowed(jobs)),
            Ok(Some(resolved)) => Ok(Cow::Owned(resolved)),
            // A limit created on another replica within the copy's age:
            // look again before refusing (only then: a bad key or payload
            // is refused without a read).
            Err(StoreError::Invalid(_))
                if jobs
                    .iter()
                    .flat_map(|j| &j.limits)
                    .any(|l| defs.iter().all(|d| d.name != l.limit)) =>
            {
                self.local.limits.clear();
                let defs = dispatch!(self, limits::definitions(&self.local.limits))?;
                Ok(limits::resolve(&defs, tenant, jobs)?.map_or(Cow::Borrowed(jobs), Cow::Owned))
            }
            Err(e) => Err(e),
        }
    }

    /// Tells this replica's admission that a slot under a limit may have
    /// been freed; starts it on first use.
    pub(super) fn limits_moved(&self) {
        if !self.local.limits.maybe_in_use() {
            return;
        }
        self.local.admission.notify_one();
        self.start_admitter();
    }

    /// This replica's admission task: it runs when told, and every
    /// [`ADMISSION_TICK`] while limits exist, until the store is closed.
    fn start_admitter(&self) {
        self.local.admitter.get_or_init(|| {
            let local = Arc::downgrade(&self.local);
            let db = self.db.clone();
            let told = Arc::clone(&self.local.admission);
            let closed = Arc::clone(&self.local.closed);
            tokio::spawn(async move {
                loop {
                    let _ = tokio::time::timeout(ADMISSION_TICK, told.notified()).await;
                    if closed.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some(local) = local.upgrade() else { return };
                    let store = Store {
                        db: db.clone(),
                        local,
                    };
                    let defs = dispatch!(store, limits::definitions(&store.local.limits));
                    if defs.is_ok_and(|d| d.is_empty()) {
                        continue;
                    }
                    if let Err(e) = store.admit_waiting("system").await
                        && !closed.load(Ordering::Relaxed)
                    {
                        tracing::warn!(error = %e, "admitting jobs under limits failed; trying again");
                    }
                }
            });
        });
    }
}
