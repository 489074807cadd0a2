//! Typed identifiers: a job's id passed where an agent's belongs does not
//! compile. Each is a UUID v7 (unique without coordination, ordered by
//! creation time, which cursor pagination relies on) and travels on the
//! wire as the plain UUID string.
//!
//! ```
//! use homeostat_model::{AgentId, new_id};
//! fn drain(_agent: AgentId) {}
//! drain(AgentId::from_uuid(new_id()));
//! ```
//!
//! ```compile_fail
//! use homeostat_model::{AgentId, JobId, new_id};
//! fn drain(_agent: AgentId) {}
//! drain(JobId::from_uuid(new_id())); // a job id is not an agent id
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $entity:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
        pub struct $name(Uuid);

        impl $name {
            /// The entity this id names, as errors and audit subjects say it.
            pub const ENTITY: &'static str = $entity;

            /// The id of an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// A new id for something created at `at` (the caller's clock,
            /// so ids and stored times agree even under a test clock).
            pub fn at(at: jiff::Timestamp) -> Self {
                Self(crate::id_at(at))
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = crate::ValidationError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|e| {
                    crate::ValidationError::new(
                        concat!($entity, "_id"),
                        format!("{} is not a UUID: {e}", crate::error::shown(s)),
                    )
                })
            }
        }
    };
}

typed_id!(
    /// Identifies a job.
    JobId,
    "job"
);
typed_id!(
    /// Identifies an agent.
    AgentId,
    "agent"
);
typed_id!(
    /// Identifies a tenant.
    TenantId,
    "tenant"
);
typed_id!(
    /// Identifies a token: a bootstrap token, an agent credential or an API
    /// key.
    TokenId,
    "token"
);
typed_id!(
    /// Identifies a notification.
    NotificationId,
    "notification"
);
typed_id!(
    /// Identifies a workflow.
    WorkflowId,
    "workflow"
);
typed_id!(
    /// Identifies a verification of the audit chain.
    VerificationId,
    "verification"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_travel_as_plain_uuid_strings_and_parse_back() {
        let uuid = Uuid::now_v7();
        let job = JobId::from(uuid);
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(json, format!("\"{uuid}\""));
        assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), job);
        assert_eq!(job.to_string().parse::<JobId>().unwrap(), job);
        assert_eq!(Uuid::from(job), uuid);
    }

    #[test]
    fn a_malformed_id_names_its_field() {
        let err = "nope".parse::<AgentId>().unwrap_err();
        assert_eq!(err.field, "agent_id");
        assert!(err.message.contains("\"nope\""), "{}", err.message);
    }
}
