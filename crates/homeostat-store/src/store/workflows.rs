//! The store's workflows: submit, read, cancel.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use homeostat_model::{
    Id, JobId, NewStep, NewWorkflow, TenantId, ValidationError, Workflow, WorkflowId,
};

use super::{Db, Store};
use crate::{StoreError, signals, workflows};

impl Store {
    /// Creates a workflow for `tenant`, every step or none; the steps that
    /// need none start as their jobs ask, the others wait for their needs.
    /// Audited, with `actor`.
    pub async fn submit_workflow(
        &self,
        tenant: TenantId,
        workflow: &NewWorkflow,
        actor: &str,
    ) -> Result<Workflow, StoreError> {
        let steps = self.steps_under_limits(tenant, &workflow.steps).await?;
        let resolved;
        let workflow = match steps {
            Cow::Borrowed(_) => workflow,
            Cow::Owned(steps) => {
                resolved = NewWorkflow {
                    name: workflow.name.clone(),
                    steps,
                };
                &resolved
            }
        };
        let (created, queued) = dispatch!(self, workflows::create(tenant, workflow, actor))?;
        self.local.workflows.store(WORKFLOWS_YES, Ordering::Release);
        dispatch!(self, signals::wake(&self.local.signals, tenant, &queued));
        self.limits_moved();
        Ok(created)
    }

    /// `steps` with their jobs' limits resolved as any enqueue's are (keys
    /// derived, the limits that apply by queue and kind added), or as they
    /// are when none is under a limit; an error names the step.
    async fn steps_under_limits<'a>(
        &self,
        tenant: TenantId,
        steps: &'a [NewStep],
    ) -> Result<Cow<'a, [NewStep]>, StoreError> {
        let mut out: Option<Vec<NewStep>> = None;
        for (i, step) in steps.iter().enumerate() {
            let job = self
                .resolve_limits(tenant, std::slice::from_ref(&step.job))
                .await
                .map_err(|e| match e {
                    StoreError::Invalid(v) => ValidationError::new(
                        "steps",
                        format!("step {:?}: {}: {}", step.name, v.field, v.message),
                    )
                    .into(),
                    e => e,
                })?;
            match job {
                Cow::Owned(mut jobs) => {
                    let out = out.get_or_insert_with(|| steps[..i].to_vec());
                    out.push(NewStep {
                        name: step.name.clone(),
                        job: jobs.pop().expect("one job resolved for one given"),
                        needs: step.needs.clone(),
                        when: step.when,
                    });
                }
                Cow::Borrowed(_) => {
                    if let Some(out) = &mut out {
                        out.push(step.clone());
                    }
                }
            }
        }
        Ok(out.map_or(Cow::Borrowed(steps), Cow::Owned))
    }

    /// A page of workflows, newest first: `tenant`'s alone if named, after
    /// the cursor `after`.
    pub async fn list_workflows(
        &self,
        tenant: Option<TenantId>,
        after: Option<WorkflowId>,
        limit: u32,
    ) -> Result<homeostat_model::Page<homeostat_model::WorkflowSummary, WorkflowId>, StoreError>
    {
        dispatch!(self, workflows::list(tenant, after, limit))
    }

    /// Steps left pending though every need has finished, up to `limit`:
    /// what [`Store::repair_workflows`] would release or skip.
    pub async fn workflow_stragglers(
        &self,
        limit: u32,
    ) -> Result<Vec<workflows::Straggler>, StoreError> {
        dispatch!(self, workflows::stragglers(limit))
    }

    /// Releases or skips up to `limit` steps left pending though every
    /// need has finished (the trigger releases them in the transaction
    /// that finishes their last need: this is the backstop), fenced by the
    /// controller's lease and audited (`workflows.repaired`); how many.
    pub async fn repair_workflows(
        &self,
        limit: u32,
        fence: Option<&homeostat_runtime::Fence>,
        actor: &str,
    ) -> Result<usize, StoreError> {
        let (queued, repaired) = dispatch!(self, workflows::repair(limit, fence, actor))?;
        dispatch!(self, signals::wake_all(&self.local.signals, &queued));
        self.limits_moved();
        Ok(repaired)
    }

    /// Adds steps to the workflow of `adder`, a step `agent` runs under
    /// `lease_token` (fan-out at run time): they may need `adder` and one
    /// another; the steps that need `adder` wait for them too. Audited
    /// (`workflow.steps_added`). A lease no longer held is stale.
    pub async fn add_workflow_steps(
        &self,
        agent: homeostat_model::AgentId,
        adder: JobId,
        lease_token: i64,
        steps: &[homeostat_model::NewStep],
        actor: &str,
    ) -> Result<Workflow, StoreError> {
        // Limits resolve by the workflow's tenant: looked up only when a
        // limit may apply.
        let steps = if self.local.limits.maybe_in_use() {
            match dispatch!(self, workflows::tenant_of(adder))? {
                Some(tenant) => self.steps_under_limits(tenant, steps).await?,
                None => Cow::Borrowed(steps),
            }
        } else {
            Cow::Borrowed(steps)
        };
        let (workflow, queued, tenant) = dispatch!(
            self,
            workflows::add_steps(agent, adder, lease_token, &steps, actor)
        )?;
        dispatch!(self, signals::wake(&self.local.signals, tenant, &queued));
        self.limits_moved();
        Ok(workflow)
    }

    /// The workflow and the step a job is, if it is one.
    pub async fn workflow_step_of(
        &self,
        job: JobId,
    ) -> Result<Option<(WorkflowId, String)>, StoreError> {
        dispatch!(self, workflows::step_of(job))
    }

    /// One workflow, its state from its steps.
    pub async fn workflow(&self, id: WorkflowId) -> Result<Workflow, StoreError> {
        dispatch!(self, workflows::get(id))
    }

    /// The queue of each step [`Store::retry_workflow`] would run again
    /// now: what did not finish well (dead, expired, cancelled or skipped).
    pub async fn workflow_rerun_queues(&self, id: WorkflowId) -> Result<Vec<String>, StoreError> {
        dispatch!(self, workflows::rerun_queues(id))
    }

    /// Cancels a workflow: its steps not finished are cancelled (running
    /// ones through the agent protocol, as any job), and none starts.
    /// Audited, once.
    pub async fn cancel_workflow(
        &self,
        id: WorkflowId,
        actor: &str,
    ) -> Result<Workflow, StoreError> {
        let (workflow, cancelled) = dispatch!(self, workflows::cancel(id, actor))?;
        for (queue, kind) in &cancelled {
            self.local.jobs.finished(queue, kind, "cancelled");
        }
        Ok(workflow)
    }

    /// Retries a finished workflow: its steps that did not finish well
    /// (dead, expired, cancelled, skipped) run again, each once its needs
    /// have; steps that succeeded keep their results. Audited. A running
    /// workflow, or one whose every step succeeded, is a conflict.
    pub async fn retry_workflow(
        &self,
        id: WorkflowId,
        actor: &str,
    ) -> Result<Workflow, StoreError> {
        let (workflow, queued) = dispatch!(self, workflows::retry(id, actor))?;
        dispatch!(self, signals::wake_all(&self.local.signals, &queued));
        self.limits_moved();
        Ok(workflow)
    }

    /// Wakes the claims waiting for the steps that the jobs `finished`
    /// here released. PostgreSQL's trigger announces them itself, to every
    /// replica; on SQLite the store looks, once it knows workflows exist.
    pub(crate) async fn workflows_moved(&self, finished: &[JobId]) {
        dispatch!(self, wake_released(&self.local, finished));
    }
}

/// [`Store::workflows_moved`] on backend `b`.
async fn wake_released<B: crate::backend::Backend>(
    b: &B,
    local: &crate::local::Local,
    finished: &[JobId],
) {
    if B::POSTGRES || finished.is_empty() {
        return;
    }
    let known = local.workflows.load(Ordering::Acquire);
    let in_use = match known {
        WORKFLOWS_YES => true,
        WORKFLOWS_NO => false,
        _ => {
            let any = workflows::any(b).await.unwrap_or(true);
            // Only "none" is worth remembering; a submit here sets "some"
            // before any of its steps can finish.
            let _ = local.workflows.compare_exchange(
                known,
                if any { WORKFLOWS_YES } else { WORKFLOWS_NO },
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            any
        }
    };
    if !in_use {
        return;
    }
    let ids: Vec<Id> = finished.iter().map(|id| id.as_uuid()).collect();
    match workflows::released(b, &ids).await {
        Ok(released) => signals::wake_all(b, &local.signals, &released).await,
        Err(e) => tracing::warn!(error = %e, "waking claims for released workflow steps"),
    }
}

/// What this store knows of workflows' existence (`Local::workflows`).
pub(crate) const WORKFLOWS_UNKNOWN: u8 = 0;
const WORKFLOWS_NO: u8 = 1;
const WORKFLOWS_YES: u8 = 2;
