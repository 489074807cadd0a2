//! Agents: the workers that pull and run jobs.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{AgentId, TenantId, ValidationError, validate_name};

/// Whether an agent takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Heartbeating and claiming.
    Online,
    /// Silent past the stale timeout; its running jobs were reclaimed.
    Offline,
    /// Finishing its jobs, claiming no new ones.
    Draining,
}

impl AgentStatus {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Offline => "offline",
            AgentStatus::Draining => "draining",
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentStatus {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(AgentStatus::Online),
            "offline" => Ok(AgentStatus::Offline),
            "draining" => Ok(AgentStatus::Draining),
            _ => Err(ValidationError::new(
                "status",
                format!("unknown agent status {}", crate::error::shown(s)),
            )),
        }
    }
}

/// What an agent says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// Human-readable name (host name, pod name).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._:/-]+$")
    )]
    pub name: String,
    /// Free-form labels (at most 50; keys as names, values up to 200 characters).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::labels))]
    pub labels: BTreeMap<String, String>,
    /// Queues it pulls from (1 to 50).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::queues))]
    pub queues: Vec<String>,
}

impl NewAgent {
    /// Checks every field; the error names the first that is wrong.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if self.queues.is_empty() || self.queues.len() > 50 {
            return Err(ValidationError::new(
                "queues",
                format!("must list 1 to 50 queues, got {}", self.queues.len()),
            ));
        }
        for queue in &self.queues {
            validate_name("queues", queue)?;
        }
        if self.labels.len() > 50 {
            return Err(ValidationError::new("labels", "at most 50 labels"));
        }
        for (key, value) in &self.labels {
            validate_name("labels", key)?;
            if value.chars().count() > 200 {
                return Err(ValidationError::new(
                    "labels",
                    format!("value of {key:?} is longer than 200 characters"),
                ));
            }
        }
        Ok(())
    }
}

/// An agent as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Agent {
    /// Identifier.
    pub id: AgentId,
    /// Owning tenant; `None` for platform agents that serve every tenant.
    pub tenant_id: Option<TenantId>,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Queues.
    pub queues: Vec<String>,
    /// Status.
    pub status: AgentStatus,
    /// Last heartbeat.
    pub last_heartbeat_at: Timestamp,
    /// Registration time.
    pub registered_at: Timestamp,
}
