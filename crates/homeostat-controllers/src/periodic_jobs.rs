//! periodic-jobs: cron schedules from configuration (each with a time zone)
//! enqueue exactly one job per slot across any number of replicas, each
//! schedule a key of a keyed controller that comes back at its next slot.
//! The store
//! claims the slot and enqueues in one transaction, and a slot that is not
//! newer than the last one claimed is refused. After downtime only the most
//! recent missed slot is enqueued: at most one catch-up job per schedule.

use std::time::Duration;

use croner::Cron;
use homeostat_model::{NewJob, TenantId};
use homeostat_runtime::{Action, BoxError, Context, Plan, PlannedChange, Reconciler};
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

impl PeriodicJobs {
    fn schedule(&self, name: &str) -> Option<&Compiled> {
        self.schedules.iter().find(|c| c.schedule.name == name)
    }
}

/// Keyed by schedule: each schedule is reconciled at its own slots (a
/// requeue until the next one) rather than every schedule polled on every
/// tick, so a thousand schedules cost a store write per slot that comes
/// due, not a thousand a second; the resync (the interval) and a change of
/// leader reconcile every schedule again, which is when a missed slot is
/// caught up. The schedules come from configuration, so nothing else
/// enqueues a key.
impl Reconciler for PeriodicJobs {
    type Key = String;

    fn name(&self) -> &str {
        "periodic-jobs"
    }

    fn resync(&self) -> Duration {
        self.settings.interval
    }

    async fn keys(&self, _ctx: &Context) -> Result<Vec<String>, BoxError> {
        Ok(self
            .schedules
            .iter()
            .map(|c| c.schedule.name.clone())
            .collect())
    }

    async fn plan(&self, ctx: &Context) -> Result<Option<Plan>, BoxError> {
        let now = now(ctx)?;
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
        Ok(Some(plan))
    }

    /// Enqueues the schedule's latest slot at or before now unless it ran
    /// (earlier missed ones are not replayed), then comes back at the next.
    async fn reconcile(&self, name: String, ctx: Context) -> Result<Action, BoxError> {
        let Some(c) = self.schedule(&name) else {
            return Ok(Action::Done);
        };
        let now = now(&ctx)?;
        let local = now.to_zoned(c.zone.clone());
        if let Ok(slot) = c.cron.find_previous_occurrence(&local, true) {
            let periodic = PeriodicEnqueue {
                schedule: &c.schedule.name,
                slot: slot.timestamp(),
                tenant_id: c.schedule.tenant_id,
                job: &c.schedule.job,
            };
            if let Some(e) = self.store.enqueue_periodic(&periodic, ctx.fence()).await? {
                tracing::info!(schedule = %c.schedule.name, slot = %slot, job = %e.id, "periodic job enqueued");
            }
        }
        Ok(match c.cron.find_next_occurrence(&local, false) {
            Ok(next) => Action::RequeueAfter(
                Duration::try_from(next.timestamp().duration_since(now)).unwrap_or_default(),
            ),
            Err(_) => Action::Done,
        })
    }
}
