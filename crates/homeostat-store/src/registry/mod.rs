//! The registry: tenants, tokens and agents, each change audited.

pub(crate) mod agents;
pub(crate) mod tenants;
pub(crate) mod tokens;

use crate::StoreError;

pub(super) fn not_found(entity: &'static str, id: impl ToString) -> StoreError {
    StoreError::NotFound {
        entity,
        id: id.to_string(),
    }
}
