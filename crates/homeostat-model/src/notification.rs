//! Notifications waiting to be delivered.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{NotificationId, ValidationError};

/// Delivery state of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NotificationState {
    /// Waiting for its next attempt.
    Pending,
    /// Delivered.
    Sent,
    /// Given up on.
    Dead,
}

impl NotificationState {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationState::Pending => "pending",
            NotificationState::Sent => "sent",
            NotificationState::Dead => "dead",
        }
    }
}

impl fmt::Display for NotificationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NotificationState {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(NotificationState::Pending),
            "sent" => Ok(NotificationState::Sent),
            "dead" => Ok(NotificationState::Dead),
            _ => Err(ValidationError::new(
                "state",
                format!("unknown notification state {}", crate::error::shown(s)),
            )),
        }
    }
}

/// A notification as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Notification {
    /// Identifier.
    pub id: NotificationId,
    /// Event: `job.dead`, `agent.offline`, `audit.chain_broken`, ….
    pub event: String,
    /// Body. Never secrets.
    pub payload: serde_json::Value,
    /// State.
    pub state: NotificationState,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Next attempt due.
    pub next_attempt_at: Timestamp,
    /// Last delivery error.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: Timestamp,
}
