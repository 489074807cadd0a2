//! What one store keeps in its own process, beside its database: caches of
//! what never changes (agents' tenants and queues, verified credentials),
//! counts not yet written, the last count of live jobs, and the claims
//! waiting here for queued jobs. The drivers hold none of it: they run
//! statements; the store hands each operation the part it needs.

use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, OnceLock};

use crate::backend::{Heard, Hearing};
use crate::credentials::CredentialCache;
use crate::leases::Releases;
use crate::limits::LimitCache;
use crate::registry::agents::AgentFactsCache;
use crate::signals::Signals;
use crate::stats::Counts;
use crate::tally::Tally;

/// One store's in-process state, shared by its clones.
pub(crate) struct Local {
    /// Tenant and queues of agents, which never change after registration;
    /// claims look them up here instead of in a statement of their own.
    pub(crate) agent_facts: AgentFactsCache,
    /// Agents' credentials verified, and revocations looked for.
    pub(crate) credentials: CredentialCache,
    /// Jobs that succeeded, counted for the dashboard's chart.
    pub(crate) tally: Arc<Tally>,
    /// The last count of the live jobs.
    pub(crate) counts: Arc<Counts>,
    /// Claims waiting for queued jobs.
    pub(crate) signals: Signals,
    /// Leases given up, as this replica hears of them.
    pub(crate) releases: Releases,
    /// Delivers what the listener hears to `signals` and `releases`.
    pub(crate) hearing: Hearing,
    /// The limits, as this replica last read them.
    pub(crate) limits: LimitCache,
    /// Told when a slot under a limit may have been freed here.
    pub(crate) admission: Arc<tokio::sync::Notify>,
    /// This replica's admission task, once started.
    pub(crate) admitter: OnceLock<()>,
    /// Set when the store is closed: background tasks stop.
    pub(crate) closed: Arc<AtomicBool>,
    /// Whether workflows exist (`store::workflows`), once known.
    pub(crate) workflows: AtomicU8,
    /// What happens to jobs here, for `/metrics`.
    pub(crate) jobs: crate::job_metrics::JobMetrics,
}

impl Default for Local {
    fn default() -> Self {
        let (signals, releases) = (Signals::default(), Releases::default());
        let hearing: Hearing = {
            let (signals, releases) = (signals.clone(), releases.clone());
            Arc::new(move |heard| match heard {
                Heard::Queued(payload) => signals.heard(payload),
                Heard::Released(name) => releases.released(name),
                Heard::MaybeMissed => signals.any(),
            })
        };
        Self {
            agent_facts: AgentFactsCache::default(),
            credentials: CredentialCache::default(),
            tally: Arc::default(),
            counts: Arc::default(),
            signals,
            releases,
            hearing,
            limits: LimitCache::default(),
            admission: Arc::default(),
            admitter: OnceLock::new(),
            closed: Arc::default(),
            workflows: AtomicU8::new(crate::store::WORKFLOWS_UNKNOWN),
            jobs: crate::job_metrics::JobMetrics::default(),
        }
    }
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("waiting_claims", &self.signals.waiting())
            .finish_non_exhaustive()
    }
}
