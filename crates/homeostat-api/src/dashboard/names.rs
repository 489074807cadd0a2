//! What people call tenants and agents: pages name them, with the id beside
//! the name on hover, instead of showing id suffixes.

use std::collections::HashMap;

use homeostat_model::{AgentId, TenantId};

use super::page::short;
use crate::state::ApiState;

/// A tenant or agent as a page shows it.
pub(crate) struct Named {
    /// Its name (for a removed agent, its id's last digits).
    pub(crate) name: String,
    /// Its full id, for the title and links.
    pub(crate) id: String,
}

impl Named {
    fn none() -> Self {
        Self {
            name: String::new(),
            id: String::new(),
        }
    }

    /// Whether there is nothing to show (a job no agent holds).
    pub(crate) fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}

/// The names a page needs, read once for the page.
#[derive(Default)]
pub(crate) struct Names {
    tenants: HashMap<TenantId, String>,
    agents: HashMap<AgentId, String>,
}

impl Names {
    /// The tenants' names, and those of `agents`.
    pub(crate) async fn load(
        state: &ApiState,
        agents: impl IntoIterator<Item = AgentId>,
    ) -> Result<Self, homeostat_store::StoreError> {
        let mut agents: Vec<AgentId> = agents.into_iter().collect();
        agents.sort_unstable();
        agents.dedup();
        let (tenants, agents) =
            tokio::try_join!(state.store.list_tenants(), state.store.agent_names(&agents))?;
        Ok(Self {
            tenants: tenants.into_iter().map(|t| (t.id, t.name)).collect(),
            agents,
        })
    }

    /// A tenant by name; platform agents have none.
    pub(crate) fn tenant(&self, id: Option<TenantId>) -> Named {
        match id {
            None => Named {
                name: "platform".into(),
                id: String::new(),
            },
            Some(id) => Named {
                name: self.tenants.get(&id).cloned().unwrap_or_else(|| short(id)),
                id: id.to_string(),
            },
        }
    }

    /// An agent by name (removed: by its id's last digits), or nothing.
    pub(crate) fn agent(&self, id: Option<AgentId>) -> Named {
        match id {
            None => Named::none(),
            Some(id) => Named {
                name: self.agents.get(&id).cloned().unwrap_or_else(|| short(id)),
                id: id.to_string(),
            },
        }
    }
}
