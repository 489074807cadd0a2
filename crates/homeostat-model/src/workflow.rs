//! Workflows: jobs that depend on jobs (docs/workflows.md).
//!
//! A workflow is a set of named steps, each a job with the steps it needs
//! and a condition on how they ended. A step is created `pending` and is
//! released (queued, or whatever its job asks: approval, a later start,
//! limits) in the transaction that finishes the last step it needs, when
//! its condition holds; when it does not, the step is skipped, and so are
//! the steps that needed it to succeed.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{JobId, JobState, NewJob, TenantId, ValidationError, WorkflowId, validate_name};

/// The most steps a workflow may have.
pub const MAX_STEPS: usize = 5_000;

/// The most bytes of its needs' results a step's claim carries (their
/// JSON, all together); the counts are always whole.
pub const MAX_NEEDS_RESULTS_BYTES: usize = 256 * 1024;

/// When a step runs, given how the steps it needs ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepCondition {
    /// Every step it needs succeeded (the default).
    #[default]
    OnSuccess,
    /// At least one step it needs did not succeed (failed, expired,
    /// cancelled or skipped).
    OnFailure,
    /// Every step it needs has finished, however.
    Always,
}

impl StepCondition {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepCondition::OnSuccess => "on_success",
            StepCondition::OnFailure => "on_failure",
            StepCondition::Always => "always",
        }
    }

    /// Whether a step with this condition runs, given how many of the
    /// steps it needs did not succeed.
    pub fn holds(self, not_succeeded: u32, needs: u32) -> bool {
        match self {
            StepCondition::OnSuccess => not_succeeded == 0,
            StepCondition::OnFailure => needs == 0 || not_succeeded > 0,
            StepCondition::Always => true,
        }
    }
}

impl std::str::FromStr for StepCondition {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            StepCondition::OnSuccess,
            StepCondition::OnFailure,
            StepCondition::Always,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| {
            ValidationError::new(
                "when",
                format!("unknown condition {}", crate::error::shown(s)),
            )
        })
    }
}

/// A step as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewStep {
    /// Unique within the workflow (letters, digits and `. _ : / -`).
    pub name: String,
    /// The job the step runs.
    pub job: NewJob,
    /// The steps that must finish first.
    #[serde(default)]
    pub needs: Vec<String>,
    /// How they must have finished for this step to run.
    #[serde(default)]
    pub when: StepCondition,
}

/// A workflow as submitted: created at once, every step or none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewWorkflow {
    /// A name for people (letters, digits and `. _ : / -`).
    pub name: String,
    /// Its steps (1 to 5,000), in any order.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 5000))]
    pub steps: Vec<NewStep>,
}

impl NewWorkflow {
    /// Checks the steps and their graph; the error names the step.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(ValidationError::new(
                "steps",
                format!(
                    "has {} steps; 1 to {MAX_STEPS} are allowed",
                    self.steps.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        for step in &self.steps {
            validate_name("steps.name", &step.name).map_err(|e| {
                ValidationError::new("steps", format!("step {:?}: {}", step.name, e.message))
            })?;
            if !names.insert(step.name.as_str()) {
                return Err(ValidationError::new(
                    "steps",
                    format!("step {:?} is named twice", step.name),
                ));
            }
            step.job.validate().map_err(|e| {
                ValidationError::new(
                    "steps",
                    format!("step {:?}: job.{}: {}", step.name, e.field, e.message),
                )
            })?;
        }
        for step in &self.steps {
            let mut seen = HashSet::new();
            for need in &step.needs {
                if !names.contains(need.as_str()) {
                    return Err(ValidationError::new(
                        "steps",
                        format!("step {:?} needs {need:?}, which is not a step", step.name),
                    ));
                }
                if !seen.insert(need.as_str()) {
                    return Err(ValidationError::new(
                        "steps",
                        format!("step {:?} needs {need:?} twice", step.name),
                    ));
                }
            }
        }
        if let Some(step) = self.in_a_cycle() {
            return Err(ValidationError::new(
                "steps",
                format!("step {step:?} needs itself, through the steps it needs"),
            ));
        }
        Ok(())
    }

    /// A step on a cycle of needs, if there is one (Kahn's algorithm: what
    /// cannot be ordered is on a cycle or behind one).
    fn in_a_cycle(&self) -> Option<&str> {
        let index: HashMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut waiting: Vec<usize> = self.steps.iter().map(|s| s.needs.len()).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); self.steps.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for need in &step.needs {
                dependents[index[need.as_str()]].push(i);
            }
        }
        let mut ready: Vec<usize> = (0..self.steps.len()).filter(|&i| waiting[i] == 0).collect();
        let mut ordered = 0;
        while let Some(i) = ready.pop() {
            ordered += 1;
            for &d in &dependents[i] {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    ready.push(d);
                }
            }
        }
        (ordered < self.steps.len())
            .then(|| {
                // A step left waiting on a step also left: on the cycle or
                // behind it; walk back along needs until a step repeats.
                let mut at = (0..self.steps.len()).find(|&i| waiting[i] > 0)?;
                let mut visited = HashSet::new();
                while visited.insert(at) {
                    at = self.steps[at]
                        .needs
                        .iter()
                        .map(|n| index[n.as_str()])
                        .find(|&n| waiting[n] > 0)?;
                }
                Some(self.steps[at].name.as_str())
            })
            .flatten()
    }
}

/// What a workflow is doing, from its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    /// A step has not finished.
    Running,
    /// Every step finished, none failed (skipped steps do not count).
    Succeeded,
    /// Every step finished and one failed (dead, expired, or cancelled on
    /// its own).
    Failed,
    /// The workflow was cancelled.
    Cancelled,
}

impl WorkflowState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Running => "running",
            WorkflowState::Succeeded => "succeeded",
            WorkflowState::Failed => "failed",
            WorkflowState::Cancelled => "cancelled",
        }
    }

    /// The state of a workflow whose steps are in `steps`.
    pub fn of(cancelled: bool, steps: &[WorkflowStep]) -> Self {
        if cancelled {
            WorkflowState::Cancelled
        } else if steps.iter().any(|s| !s.state.is_terminal()) {
            WorkflowState::Running
        } else if steps.iter().any(|s| {
            !s.skipped
                && matches!(
                    s.state,
                    JobState::Dead | JobState::Expired | JobState::Cancelled
                )
        }) {
            WorkflowState::Failed
        } else {
            WorkflowState::Succeeded
        }
    }
}

/// How one step a claimed step needs ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NeedOutcome {
    /// Its job's state: `succeeded`, `dead`, `expired` or `cancelled`.
    pub state: JobState,
    /// Skipped: its condition did not hold.
    #[serde(default)]
    pub skipped: bool,
    /// Its job's result, if it succeeded with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// What a claimed workflow step is, and how the steps it needs ended (the
/// fan-in: a join step reads its parents' results here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepContext {
    /// Its workflow.
    pub workflow_id: WorkflowId,
    /// Its name.
    pub step: String,
    /// How many of its needs succeeded…
    #[serde(default)]
    pub succeeded: u32,
    /// …and how many did not (failed, expired, cancelled, skipped).
    #[serde(default)]
    pub not_succeeded: u32,
    /// Each need by name, in the order they were submitted, until their
    /// results reach [`MAX_NEEDS_RESULTS_BYTES`].
    #[serde(default)]
    pub needs: std::collections::BTreeMap<String, NeedOutcome>,
    /// Some needs were left out of `needs` (the counts have them all).
    #[serde(default)]
    pub truncated: bool,
}

/// A step as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkflowStep {
    /// Its name.
    pub name: String,
    /// Its job.
    pub job_id: JobId,
    /// Its job's state.
    pub state: JobState,
    /// Skipped: its condition did not hold (its job is `cancelled`).
    pub skipped: bool,
    /// The steps it needs.
    pub needs: Vec<String>,
    /// Its condition.
    pub when: StepCondition,
}

/// A workflow in a list: its state and how many steps it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkflowSummary {
    /// Identifier.
    pub id: WorkflowId,
    /// Owner.
    pub tenant_id: TenantId,
    /// Its name.
    pub name: String,
    /// From its steps.
    pub state: WorkflowState,
    /// How many steps it has…
    pub steps: u32,
    /// …and how many have not finished.
    pub unfinished: u32,
    /// Submitted.
    pub created_at: Timestamp,
}

/// A workflow as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Workflow {
    /// Identifier.
    pub id: WorkflowId,
    /// Owner.
    pub tenant_id: TenantId,
    /// Its name.
    pub name: String,
    /// From its steps.
    pub state: WorkflowState,
    /// Submitted.
    pub created_at: Timestamp,
    /// Cancelled, if it was.
    pub cancelled_at: Option<Timestamp>,
    /// Its steps, in the order they were submitted.
    pub steps: Vec<WorkflowStep>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, needs: &[&str]) -> NewStep {
        NewStep {
            name: name.into(),
            job: NewJob::new("ci", name),
            needs: needs.iter().map(|n| (*n).to_owned()).collect(),
            when: StepCondition::OnSuccess,
        }
    }

    fn flow(steps: Vec<NewStep>) -> NewWorkflow {
        NewWorkflow {
            name: "pipeline".into(),
            steps,
        }
    }

    #[test]
    fn a_pipeline_is_valid() {
        let w = flow(vec![
            step("build", &[]),
            step("test-a", &["build"]),
            step("test-b", &["build"]),
            step("deploy", &["test-a", "test-b"]),
        ]);
        assert_eq!(w.validate(), Ok(()));
    }

    #[test]
    fn bad_graphs_are_refused_naming_the_step() {
        let unknown = flow(vec![step("build", &[]), step("deploy", &["bild"])]);
        let e = unknown.validate().unwrap_err();
        assert!(e.message.contains("\"deploy\" needs \"bild\""), "{e}");

        let twice = flow(vec![step("build", &[]), step("build", &[])]);
        assert!(
            twice
                .validate()
                .unwrap_err()
                .message
                .contains("named twice")
        );

        let cycle = flow(vec![
            step("a", &["c"]),
            step("b", &["a"]),
            step("c", &["b"]),
            step("d", &[]),
        ]);
        let e = cycle.validate().unwrap_err();
        assert!(e.message.contains("needs itself"), "{e}");
        assert!(
            ["\"a\"", "\"b\"", "\"c\""]
                .iter()
                .any(|s| e.message.contains(s))
        );

        let own = flow(vec![step("a", &["a"])]);
        assert!(
            own.validate()
                .unwrap_err()
                .message
                .contains("\"a\" needs itself")
        );

        let mut bad_job = step("x", &[]);
        bad_job.job.priority = 5000;
        let e = flow(vec![bad_job]).validate().unwrap_err();
        assert!(e.message.contains("step \"x\": job.priority"), "{e}");

        assert!(flow(vec![]).validate().is_err());
    }

    #[test]
    fn conditions() {
        use StepCondition::*;
        assert!(OnSuccess.holds(0, 2) && !OnSuccess.holds(1, 2));
        assert!(OnFailure.holds(1, 2) && !OnFailure.holds(0, 2));
        assert!(Always.holds(2, 2) && Always.holds(0, 2));
    }

    #[test]
    fn the_state_comes_from_the_steps() {
        let s = |state, skipped| WorkflowStep {
            name: "s".into(),
            job_id: JobId::from(crate::new_id()),
            state,
            skipped,
            needs: vec![],
            when: StepCondition::OnSuccess,
        };
        use JobState::*;
        assert_eq!(
            WorkflowState::of(false, &[s(Succeeded, false), s(Pending, false)]),
            WorkflowState::Running
        );
        assert_eq!(
            WorkflowState::of(false, &[s(Succeeded, false), s(Cancelled, true)]),
            WorkflowState::Succeeded
        );
        assert_eq!(
            WorkflowState::of(false, &[s(Dead, false), s(Cancelled, true)]),
            WorkflowState::Failed
        );
        assert_eq!(
            WorkflowState::of(true, &[s(Cancelled, false)]),
            WorkflowState::Cancelled
        );
    }
}
