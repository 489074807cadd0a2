//! periodic-jobs: cron schedules from configuration (each with a time zone)
//! enqueue exactly one job per slot across any number of replicas: the store
//! claims the slot and enqueues in one transaction, and a slot that is not
//! newer than the last one claimed is refused. After downtime only the most
//! recent missed slot is enqueued: at most one catch-up job per schedule.

use std::time::Duration;

use croner::Cron;
use homeostat_model::{NewJob, TenantId};
use homeostat_runtime::{BoxError, Context, Controller, Plan, PlannedChange, Reconciled};
use homeostat_store::{PeriodicEnqueue, Store};
use jiff::tz::TimeZone;

use crate::Settings;
use crate::sweep::now;

/// One periodic schedule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeriodicSchedule {
    /// Unique name; the slot record is kept under it.
    pub name: String,
    /// Cron pattern (5 fields, or 6 with seconds).
    pub cron: String,
    /// IANA time zone the pattern is read in (`UTC`, `Europe/Paris`).
    pub timezone: String,
    /// Tenant the jobs belong to.
    pub tenant_id: TenantId,
    /// The job to enqueue at each slot.
    pub job: NewJob,
}

/// A schedule that cannot be used, naming it.
#[derive(Debug, thiserror::Error)]
#[error("periodic schedule {name:?}: {problem}")]
pub struct ScheduleError {
    /// The schedule.
    pub name: String,
    /// What is wrong.
    pub problem: String,
}

#[derive(Debug)]
struct Compiled {
    schedule: PeriodicSchedule,
    cron: Cron,
    zone: TimeZone,
}

/// The periodic-jobs controller.
#[derive(Debug)]
pub struct PeriodicJobs {
    store: Store,
    settings: Settings,
    schedules: Vec<Compiled>,
}

impl PeriodicJobs {
    /// Checks every schedule (pattern, time zone, job) and builds the
    /// controller; the error names the first bad schedule.
    pub fn new(
        store: Store,
        settings: Settings,
        schedules: Vec<PeriodicSchedule>,
    ) -> Result<Self, ScheduleError> {
        let mut compiled = Vec::with_capacity(schedules.len());
        for schedule in schedules {
            let fail = |problem: String| ScheduleError {
                name: schedule.name.clone(),
                problem,
            };
            if compiled
                .iter()
                .any(|c: &Compiled| c.schedule.name == schedule.name)
            {
                return Err(fail("the name is used twice".into()));
            }
            let cron: Cron = schedule
                .cron
                .parse()
                .map_err(|e| fail(format!("cron pattern {:?}: {e}", schedule.cron)))?;
            let zone = TimeZone::get(&schedule.timezone)
                .map_err(|e| fail(format!("time zone {:?}: {e}", schedule.timezone)))?;
            schedule
                .job
                .validate()
                .map_err(|e| fail(format!("job: {e}")))?;
            compiled.push(Compiled {
                schedule,
                cron,
                zone,
            });
        }
        Ok(Self {
            store,
            settings,
            schedules: compiled,
        })
    }
}

impl Controller for PeriodicJobs {
    fn name(&self) -> &str {
        "periodic-jobs"
    }

    fn interval(&self) -> Duration {
        self.settings.interval
    }

    async fn plan(&self, ctx: Context) -> Result<Plan, BoxError> {
        let now = now(&ctx)?;
        let mut plan = Plan::default();
        for c in &self.schedules {
            let Ok(slot) = c
                .cron
                .find_previous_occurrence(&now.to_zoned(c.zone.clone()), true)
            else {
                continue;
            };
            let last = self.store.periodic_last_slot(&c.schedule.name).await?;
            if last.is_none_or(|last| last < slot.timestamp()) {
                plan.count += 1;
                plan.items.push(PlannedChange {
                    subject: format!("schedule:{}", c.schedule.name),
                    from: last.map_or("never run".into(), |l| format!("last slot {l}")),
                    to: format!("job enqueued for {slot}"),
                    why: "a slot came due".into(),
                });
            }
        }
        Ok(plan)
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let now = now(&ctx)?;
        let mut enqueued = 0;
        for c in &self.schedules {
            if ctx.is_cancelled() {
                break;
            }
            let local = now.to_zoned(c.zone.clone());
            // The latest slot at or before now; earlier missed ones are not
            // replayed.
            let Ok(slot) = c.cron.find_previous_occurrence(&local, true) else {
                continue;
            };
            let periodic = PeriodicEnqueue {
                schedule: &c.schedule.name,
                slot: slot.timestamp(),
                tenant_id: c.schedule.tenant_id,
                job: &c.schedule.job,
            };
            let done = self.store.enqueue_periodic(&periodic, ctx.fence()).await?;
            if let Some(e) = done {
                tracing::info!(schedule = %c.schedule.name, slot = %slot, job = %e.id, "periodic job enqueued");
                enqueued += 1;
            }
        }
        Ok(Reconciled::items(enqueued))
    }
}
