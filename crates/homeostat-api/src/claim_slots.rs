//! The claims each agent holds open on this replica, bounded: a waiting
//! claim holds a connection and memory for up to its whole wait, and an
//! agent needs one at a time (a few while it reconnects). Beyond the bound a
//! claim is 429 at once, so no one credential can hold the server's
//! connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use homeostat_model::AgentId;

/// Open claims by agent.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClaimSlots(Arc<Mutex<HashMap<AgentId, u32>>>);

/// One open claim, given back when dropped (the claim answered, or its
/// connection went).
#[derive(Debug)]
pub(crate) struct ClaimSlot {
    slots: ClaimSlots,
    agent: AgentId,
}

impl ClaimSlots {
    /// A slot for one more claim of `agent`, unless it holds `max` already.
    pub(crate) fn take(&self, agent: AgentId, max: u32) -> Option<ClaimSlot> {
        let mut open = self.0.lock().expect("the claim slots lock is not poisoned");
        let n = open.entry(agent).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClaimSlot {
            slots: self.clone(),
            agent,
        })
    }
}

impl Drop for ClaimSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .0
            .lock()
            .expect("the claim slots lock is not poisoned");
        if let Some(n) = open.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.agent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_holds_at_most_its_bound_and_gets_slots_back() {
        let slots = ClaimSlots::default();
        let (a, b) = (
            AgentId::at(jiff::Timestamp::now()),
            AgentId::at(jiff::Timestamp::now()),
        );
        let first = slots.take(a, 2).unwrap();
        let _second = slots.take(a, 2).unwrap();
        assert!(slots.take(a, 2).is_none());
        assert!(
            slots.take(b, 2).is_some(),
            "another agent is not bounded by a's"
        );
        drop(first);
        assert!(slots.take(a, 2).is_some());
    }
}
