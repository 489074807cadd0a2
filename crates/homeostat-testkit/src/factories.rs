//! Tenants, agents and jobs for tests, made at the test epoch.

use std::time::Duration;

use homeostat_model::{AgentId, NewAgent, NewJob, PlanTier, TenantId};
use homeostat_store::{ClaimedJob, Completion, NewBootstrapToken, Store};

use crate::{At, t0};

/// A tenant named `name`.
pub async fn tenant(store: &Store, name: &str, tier: PlanTier) -> TenantId {
    store
        .at(t0())
        .create_tenant(name, tier, "operator:test")
        .await
        .expect("creating a test tenant")
        .id
}

/// `n` online agents of `tenant` on `queues`, as [`agent`] registers them.
pub async fn agents(
    store: &Store,
    tenant: Option<TenantId>,
    queues: &[&str],
    n: usize,
) -> Vec<AgentId> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(agent(store, tenant, queues).await);
    }
    out
}

/// An online agent of `tenant` (a platform agent for `None`) on `queues`,
/// registered with a bootstrap token of its own.
pub async fn agent(store: &Store, tenant: Option<TenantId>, queues: &[&str]) -> AgentId {
    let token = NewBootstrapToken {
        tenant_id: tenant,
        ttl: Duration::from_secs(3600),
        uses: 1,
    };
    let token = store
        .at(t0())
        .issue_bootstrap_token(&token, "operator:test")
        .await
        .expect("issuing a test bootstrap token");
    let agent = NewAgent {
        name: format!("agent-{}", uuid::Uuid::now_v7().simple()),
        labels: Default::default(),
        queues: queues.iter().map(|q| q.to_string()).collect(),
    };
    let (agent, _) = store
        .at(t0())
        .register_agent(&token.secret, &agent)
        .await
        .expect("registering a test agent");
    agent.id
}

/// A job of kind `build` on `queue`.
pub fn job(queue: &str) -> NewJob {
    NewJob::new(queue, "build")
}

/// A completion without a result for each job `claimed`.
pub fn completions(claimed: &[ClaimedJob]) -> Vec<Completion> {
    claimed
        .iter()
        .map(|c| Completion {
            id: c.id,
            lease_token: c.lease_token,
            result: None,
        })
        .collect()
}
