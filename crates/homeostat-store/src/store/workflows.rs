//! The store's workflows: submit, read, cancel.

use homeostat_model::{NewWorkflow, TenantId, Workflow, WorkflowId};

use super::{Db, Store};
use crate::{StoreError, signals, workflows};

impl Store {
    /// Creates a workflow for `tenant`, every step or none; the steps that
    /// need none start as their jobs ask, the others wait for their needs.
    pub async fn submit_workflow(
        &self,
        tenant: TenantId,
        workflow: &NewWorkflow,
    ) -> Result<Workflow, StoreError> {
        let (created, queued) = dispatch!(self, workflows::create(tenant, workflow))?;
        dispatch!(self, signals::wake(&self.local.signals, tenant, &queued));
        Ok(created)
    }

    /// One workflow, its state from its steps.
    pub async fn workflow(&self, id: WorkflowId) -> Result<Workflow, StoreError> {
        dispatch!(self, workflows::get(id))
    }

    /// Cancels a workflow: its steps not finished are cancelled (running
    /// ones through the agent protocol, as any job), and none starts.
    pub async fn cancel_workflow(&self, id: WorkflowId) -> Result<Workflow, StoreError> {
        dispatch!(self, workflows::cancel(id))
    }
}
