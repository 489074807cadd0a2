//! What the controllers share: the run's time, batch loops, notifications.

use std::future::Future;

use homeostat_model::AgentId;
use homeostat_runtime::{BoxError, Context, Plan, PlannedChange};
use homeostat_store::{PlanKind, Store, StoreError, Swept};
use jiff::Timestamp;
use serde_json::json;

use crate::MAX_BATCHES_PER_RUN;

/// The run's current time on the manager's clock.
pub(crate) fn now(ctx: &Context) -> Result<Timestamp, BoxError> {
    Ok(Timestamp::try_from(ctx.now())?)
}

/// Something a sweep returns: how many rows it changed.
pub(crate) trait Changed {
    fn changed(&self) -> u64;
}

impl Changed for u64 {
    fn changed(&self) -> u64 {
        *self
    }
}

impl Changed for Swept {
    fn changed(&self) -> u64 {
        self.changed
    }
}

impl Changed for Vec<AgentId> {
    fn changed(&self) -> u64 {
        self.len() as u64
    }
}

/// Runs `sweep` batch after batch until one comes back short of `batch`,
/// the run is cancelled, or [`MAX_BATCHES_PER_RUN`] batches ran.
pub(crate) async fn drain<T, F, Fut>(
    ctx: &Context,
    batch: u32,
    mut sweep: F,
) -> Result<Vec<T>, StoreError>
where
    T: Changed,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut results = Vec::new();
    for _ in 0..MAX_BATCHES_PER_RUN {
        if ctx.is_cancelled() {
            break;
        }
        let result = sweep().await?;
        let full = result.changed() >= u64::from(batch);
        results.push(result);
        if !full {
            break;
        }
    }
    Ok(results)
}

/// Total rows changed by a run's batches.
pub(crate) fn total<T: Changed>(results: &[T]) -> u64 {
    results.iter().map(Changed::changed).sum()
}

/// Whether [`drain`] stopped at [`MAX_BATCHES_PER_RUN`] with its last batch
/// full: there is more to do now.
pub(crate) fn left_more<T: Changed>(results: &[T], batch: u32) -> bool {
    results.len() >= MAX_BATCHES_PER_RUN as usize
        && results
            .last()
            .is_some_and(|r| r.changed() >= u64::from(batch))
}

/// A run that changed `items`, and comes back at once rather than at its
/// next tick when it left `more` to do (a backlog larger than a run's
/// batches drains run after run, not one run an interval).
pub(crate) fn swept(items: u64, more: bool) -> homeostat_runtime::Reconciled {
    let done = homeostat_runtime::Reconciled::items(items);
    if more {
        done.again_after(std::time::Duration::ZERO)
    } else {
        done
    }
}

/// Queues a `job.dead` notification for each job a sweep killed.
pub(crate) async fn notify_dead(
    store: &Store,
    ctx: &Context,
    swept: &[Swept],
    reason: &str,
) -> Result<(), StoreError> {
    for id in swept.iter().flat_map(|s| &s.dead) {
        store
            .add_notification(
                "job.dead",
                &json!({"job_id": id, "reason": reason, "controller": ctx.controller()}),
            )
            .await?;
    }
    Ok(())
}

/// Items shown in a dry run.
pub(crate) const PLAN_SAMPLE: u32 = 20;

/// A dry run over one or more sweeps, each with why it would act.
pub(crate) async fn plan_of(store: &Store, sweeps: &[(PlanKind, &str)]) -> Result<Plan, BoxError> {
    let mut plan = Plan::default();
    for (kind, why) in sweeps {
        let sweep = store.plan(*kind, PLAN_SAMPLE).await?;
        plan.count += sweep.count;
        plan.items
            .extend(sweep.items.into_iter().map(|i| PlannedChange {
                subject: i.subject,
                from: i.from,
                to: i.to,
                why: (*why).to_owned(),
            }));
    }
    plan.items.truncate(PLAN_SAMPLE as usize);
    Ok(plan)
}
