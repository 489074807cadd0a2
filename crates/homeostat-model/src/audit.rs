//! The audit log: hash-chained records of every state change made by a
//! controller or an operator.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// An event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewAuditEvent {
    /// Who: `operator:<key id>`, `controller:<name>@<epoch>`, `tenant:<id>`.
    pub actor: String,
    /// What, as `noun.verb`: `job.cancelled`, `token.created`.
    pub action: String,
    /// What it was done to: an id, or a set.
    pub subject: String,
    /// Facts of the change. Never secrets.
    pub details: serde_json::Value,
}

/// An event as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    /// Position in the log; grows by one per event.
    pub seq: i64,
    /// When.
    pub at: Timestamp,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Details.
    pub details: serde_json::Value,
    /// Hash of the previous event (hex).
    pub prev_hash: String,
    /// SHA-256 of `prev_hash` and this event's canonical content (hex).
    pub hash: String,
}

/// Every action the audit log records, as `noun.verb`: one vocabulary for
/// the store that writes them and the readers that filter on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AuditAction {
    /// A tenant was created.
    #[serde(rename = "tenant.created")]
    TenantCreated,
    /// A tenant's plan tier changed.
    #[serde(rename = "tenant.tier_changed")]
    TenantTierChanged,
    /// A token was issued (its metadata, never its secret).
    #[serde(rename = "token.created")]
    TokenCreated,
    /// A token was revoked.
    #[serde(rename = "token.revoked")]
    TokenRevoked,
    /// Expired, used-up and revoked tokens were deleted.
    #[serde(rename = "tokens.deleted")]
    TokensDeleted,
    /// An agent registered with a bootstrap token.
    #[serde(rename = "agent.registered")]
    AgentRegistered,
    /// An operator drained an agent.
    #[serde(rename = "agent.draining")]
    AgentDraining,
    /// An operator resumed a draining agent: it claims again.
    #[serde(rename = "agent.resumed")]
    AgentResumed,
    /// Silent agents were marked offline.
    #[serde(rename = "agents.offline")]
    AgentsOffline,
    /// Offline agents were heard again and are online.
    #[serde(rename = "agents.online")]
    AgentsOnline,
    /// Agents offline past retention were deleted, with their credentials.
    #[serde(rename = "agents.forgotten")]
    AgentsForgotten,
    /// An operator removed an offline agent; its credentials are revoked.
    #[serde(rename = "agent.removed")]
    AgentRemoved,
    /// An operator revoked an agent's credentials: it is offline and its
    /// jobs reclaimed.
    #[serde(rename = "agent.revoked")]
    AgentRevoked,
    /// An operator cancelled a job.
    #[serde(rename = "job.cancelled")]
    JobCancelled,
    /// An operator approved a job.
    #[serde(rename = "job.approved")]
    JobApproved,
    /// An operator re-queued a dead or expired job with fresh attempts
    /// (earlier builds wrote `job.redriven`).
    #[serde(rename = "job.retried")]
    JobRetried,
    /// An operator sent a dead notification again.
    #[serde(rename = "notification.redriven")]
    NotificationRedriven,
    /// An operator asked a controller to run now.
    #[serde(rename = "controller.triggered")]
    ControllerTriggered,
    /// Running jobs whose lease expired were re-queued or went dead.
    #[serde(rename = "jobs.lease_expired")]
    JobsLeaseExpired,
    /// Running jobs of offline agents were re-queued or went dead.
    #[serde(rename = "jobs.agent_offline")]
    JobsAgentOffline,
    /// Queued jobs past their deadline expired.
    #[serde(rename = "jobs.deadline_passed")]
    JobsDeadlinePassed,
    /// Running jobs past their timeout failed an attempt.
    #[serde(rename = "jobs.timed_out")]
    JobsTimedOut,
    /// Scheduled jobs whose time came were queued.
    #[serde(rename = "jobs.promoted")]
    JobsPromoted,
    /// Jobs awaiting an approval that expired expired.
    #[serde(rename = "jobs.approval_expired")]
    JobsApprovalExpired,
    /// Finished jobs past retention were deleted.
    #[serde(rename = "jobs.deleted")]
    JobsDeleted,
    /// Queued jobs' effective priorities were aged.
    #[serde(rename = "jobs.reprioritized")]
    JobsReprioritized,
    /// A periodic schedule enqueued its slot's job.
    #[serde(rename = "jobs.periodic")]
    JobsPeriodic,
    /// Audit events past retention were deleted.
    #[serde(rename = "audit.retention")]
    AuditRetention,
    /// An operator set a limit (created or changed it).
    #[serde(rename = "limit.set")]
    LimitSet,
    /// An operator deleted a limit.
    #[serde(rename = "limit.deleted")]
    LimitDeleted,
    /// A limit's strategy cancelled jobs (cancel_newest, cancel_oldest).
    #[serde(rename = "jobs.limit_cancelled")]
    JobsLimitCancelled,
    /// A workflow was submitted.
    #[serde(rename = "workflow.submitted")]
    WorkflowSubmitted,
    /// An operator or tenant cancelled a workflow.
    #[serde(rename = "workflow.cancelled")]
    WorkflowCancelled,
    /// An operator or tenant retried a workflow's failed steps.
    #[serde(rename = "workflow.retried")]
    WorkflowRetried,
    /// A running step added steps to its workflow.
    #[serde(rename = "workflow.steps_added")]
    WorkflowStepsAdded,
    /// The workflows controller released or skipped steps left pending
    /// with every need finished.
    #[serde(rename = "workflows.repaired")]
    WorkflowsRepaired,
}

impl AuditAction {
    /// Every action.
    pub const ALL: [AuditAction; 36] = [
        AuditAction::TenantCreated,
        AuditAction::TenantTierChanged,
        AuditAction::TokenCreated,
        AuditAction::TokenRevoked,
        AuditAction::TokensDeleted,
        AuditAction::AgentRegistered,
        AuditAction::AgentDraining,
        AuditAction::AgentResumed,
        AuditAction::AgentsOffline,
        AuditAction::AgentsOnline,
        AuditAction::AgentsForgotten,
        AuditAction::AgentRemoved,
        AuditAction::AgentRevoked,
        AuditAction::JobCancelled,
        AuditAction::JobApproved,
        AuditAction::JobRetried,
        AuditAction::NotificationRedriven,
        AuditAction::ControllerTriggered,
        AuditAction::JobsLeaseExpired,
        AuditAction::JobsAgentOffline,
        AuditAction::JobsDeadlinePassed,
        AuditAction::JobsTimedOut,
        AuditAction::JobsPromoted,
        AuditAction::JobsApprovalExpired,
        AuditAction::JobsDeleted,
        AuditAction::JobsReprioritized,
        AuditAction::JobsPeriodic,
        AuditAction::AuditRetention,
        AuditAction::LimitSet,
        AuditAction::LimitDeleted,
        AuditAction::JobsLimitCancelled,
        AuditAction::WorkflowSubmitted,
        AuditAction::WorkflowCancelled,
        AuditAction::WorkflowRetried,
        AuditAction::WorkflowStepsAdded,
        AuditAction::WorkflowsRepaired,
    ];

    /// The name stored in the log.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditAction::TenantCreated => "tenant.created",
            AuditAction::TenantTierChanged => "tenant.tier_changed",
            AuditAction::TokenCreated => "token.created",
            AuditAction::TokenRevoked => "token.revoked",
            AuditAction::TokensDeleted => "tokens.deleted",
            AuditAction::AgentRegistered => "agent.registered",
            AuditAction::AgentDraining => "agent.draining",
            AuditAction::AgentResumed => "agent.resumed",
            AuditAction::AgentsOffline => "agents.offline",
            AuditAction::AgentsOnline => "agents.online",
            AuditAction::AgentsForgotten => "agents.forgotten",
            AuditAction::AgentRemoved => "agent.removed",
            AuditAction::AgentRevoked => "agent.revoked",
            AuditAction::JobCancelled => "job.cancelled",
            AuditAction::JobApproved => "job.approved",
            AuditAction::JobRetried => "job.retried",
            AuditAction::NotificationRedriven => "notification.redriven",
            AuditAction::ControllerTriggered => "controller.triggered",
            AuditAction::JobsLeaseExpired => "jobs.lease_expired",
            AuditAction::JobsAgentOffline => "jobs.agent_offline",
            AuditAction::JobsDeadlinePassed => "jobs.deadline_passed",
            AuditAction::JobsTimedOut => "jobs.timed_out",
            AuditAction::JobsPromoted => "jobs.promoted",
            AuditAction::JobsApprovalExpired => "jobs.approval_expired",
            AuditAction::JobsDeleted => "jobs.deleted",
            AuditAction::JobsReprioritized => "jobs.reprioritized",
            AuditAction::JobsPeriodic => "jobs.periodic",
            AuditAction::AuditRetention => "audit.retention",
            AuditAction::LimitSet => "limit.set",
            AuditAction::LimitDeleted => "limit.deleted",
            AuditAction::JobsLimitCancelled => "jobs.limit_cancelled",
            AuditAction::WorkflowSubmitted => "workflow.submitted",
            AuditAction::WorkflowCancelled => "workflow.cancelled",
            AuditAction::WorkflowRetried => "workflow.retried",
            AuditAction::WorkflowStepsAdded => "workflow.steps_added",
            AuditAction::WorkflowsRepaired => "workflows.repaired",
        }
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<AuditAction> for String {
    fn from(action: AuditAction) -> Self {
        action.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_has_one_name_in_the_log_and_on_the_wire() {
        let mut seen = std::collections::HashSet::new();
        for action in AuditAction::ALL {
            assert!(seen.insert(action.as_str()), "{action} twice");
            let wire = serde_json::to_string(&action).unwrap();
            assert_eq!(wire, format!("\"{}\"", action.as_str()));
            assert_eq!(serde_json::from_str::<AuditAction>(&wire).unwrap(), action);
        }
    }
}
