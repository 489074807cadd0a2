//! Who was heard when: agents' heartbeats are gathered in memory and
//! written in one statement about once a second ([`EventLoop`]), instead of
//! a write per heartbeat; what each write returns keeps the agents'
//! statuses (drain) for the heartbeat replies. agent-health reads the
//! written times, so it sees an agent up to one flush interval late; a
//! replica that crashes loses at most that interval of heartbeats
//! (docs/server.md). What it keeps per agent is bounded ([`BoundedMap`]),
//! whatever the churn of the fleet.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeostat_model::{AgentId, AgentStatus};
use homeostat_runtime::{BoxError, EventLoop};
use homeostat_store::{BoundedMap, Store, StoreError};
use jiff::Timestamp;

/// The agents this replica heard, not yet written, and their statuses.
#[derive(Debug, Clone)]
pub(crate) struct Presence {
    heard: EventLoop<AgentId, Timestamp>,
    statuses: Arc<Mutex<BoundedMap<AgentId, AgentStatus>>>,
    /// The agent process each agent's heartbeats last came from, as this
    /// replica recorded it: only a new one costs a statement.
    incarnations: Arc<Mutex<BoundedMap<AgentId, homeostat_model::Id>>>,
}

fn later(held: &mut Timestamp, new: Timestamp) {
    *held = (*held).max(new);
}

impl Presence {
    /// Writes what was heard through `store` every `interval`.
    pub(crate) fn start(store: Store, interval: Duration) -> Self {
        let statuses: Arc<Mutex<BoundedMap<AgentId, AgentStatus>>> = Arc::default();
        let known = Arc::clone(&statuses);
        let heard = EventLoop::spawn("heartbeats", interval, later, move |batch| {
            let (store, known) = (store.clone(), Arc::clone(&known));
            Box::pin(async move {
                let batch: Vec<(AgentId, Timestamp)> = batch.into_iter().collect();
                let written = store.record_heartbeats(&batch).await?;
                let mut known = known.lock().unwrap();
                for (id, _) in &batch {
                    known.remove(id);
                }
                for (id, status) in written {
                    known.insert(id, status);
                }
                Ok::<(), BoxError>(())
            })
        });
        Self {
            heard,
            statuses,
            incarnations: Arc::default(),
        }
    }

    /// Records that `agent`'s heartbeats come from process `incarnation`;
    /// when that is new here, the store learns it, and reclaims the jobs the
    /// agent's previous process held that this one (`held`) does not.
    pub(crate) async fn incarnation(
        &self,
        store: &Store,
        agent: AgentId,
        incarnation: homeostat_model::Id,
        held: &[homeostat_model::JobId],
    ) -> Result<(), StoreError> {
        let known = self.incarnations.lock().unwrap().get(&agent).copied();
        if known == Some(incarnation) {
            return Ok(());
        }
        let reclaimed = store.agent_incarnation(agent, incarnation, held).await?;
        if !reclaimed.is_empty() {
            tracing::info!(%agent, reclaimed = reclaimed.len(), "the agent restarted: the jobs its previous process held are queued again");
        }
        self.incarnations.lock().unwrap().insert(agent, incarnation);
        Ok(())
    }

    /// Records that `agent` was heard at `at`; returns its status as last
    /// written (read from the store the first time).
    pub(crate) async fn heard(
        &self,
        store: &Store,
        agent: AgentId,
        at: Timestamp,
    ) -> Result<AgentStatus, StoreError> {
        self.heard.record(agent, at);
        let known = self.statuses.lock().unwrap().get(&agent).copied();
        match known {
            Some(status) => Ok(status),
            None => {
                let status = store.get_agent(agent).await?.status;
                self.statuses.lock().unwrap().insert(agent, status);
                Ok(status)
            }
        }
    }

    /// Writes every heartbeat heard so far, now.
    pub(crate) async fn checkpoint(&self) -> Result<usize, BoxError> {
        self.heard.checkpoint().await
    }

    /// Stops the periodic writes and writes what is left.
    pub(crate) async fn close(&self) -> Result<usize, BoxError> {
        self.heard.close().await
    }
}
