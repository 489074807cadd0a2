//! Tenants and their plan tiers.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{TenantId, ValidationError};

/// A tenant's plan; sets the base priority of its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PlanTier {
    /// Base priority 0.
    Free,
    /// Base priority 100.
    Standard,
    /// Base priority 200.
    Premium,
}

impl PlanTier {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanTier::Free => "free",
            PlanTier::Standard => "standard",
            PlanTier::Premium => "premium",
        }
    }

    /// Base priority of the tier's jobs.
    pub fn base_priority(self) -> i64 {
        match self {
            PlanTier::Free => 0,
            PlanTier::Standard => 100,
            PlanTier::Premium => 200,
        }
    }
}

impl fmt::Display for PlanTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PlanTier {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "free" => Ok(PlanTier::Free),
            "standard" => Ok(PlanTier::Standard),
            "premium" => Ok(PlanTier::Premium),
            _ => Err(ValidationError::new(
                "tier",
                format!("unknown plan tier {s:?}; expected free, standard or premium"),
            )),
        }
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    /// Identifier.
    pub id: TenantId,
    /// Unique name.
    pub name: String,
    /// Plan.
    pub tier: PlanTier,
    /// Created.
    pub created_at: Timestamp,
}
