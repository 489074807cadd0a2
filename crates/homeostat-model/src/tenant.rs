//! Tenants and their plan tiers.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{TenantId, ValidationError};

/// A tenant's plan; sets the weight of its share of the agents it shares
/// with other tenants (docs/flow-control.md, "Fair share").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PlanTier {
    /// Weight 1.
    Free,
    /// Weight 2.
    Standard,
    /// Weight 4.
    Premium,
}

impl PlanTier {
    /// Every tier.
    pub const ALL: [PlanTier; 3] = [PlanTier::Free, PlanTier::Standard, PlanTier::Premium];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanTier::Free => "free",
            PlanTier::Standard => "standard",
            PlanTier::Premium => "premium",
        }
    }

    /// The weight of the tier's share: a tenant of weight 4 gets four turns
    /// to a weight-1 tenant's one while both wait in a queue.
    pub fn weight(self) -> i64 {
        match self {
            PlanTier::Free => 1,
            PlanTier::Standard => 2,
            PlanTier::Premium => 4,
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
                format!(
                    "unknown plan tier {}; expected free, standard or premium",
                    crate::error::shown(s)
                ),
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
