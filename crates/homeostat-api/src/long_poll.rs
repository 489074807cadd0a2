//! A claim that waits for work (a long poll): it looks for jobs and, finding
//! none, waits until jobs are queued that it may take, the wait ends, or
//! the server stops. Waiting starts before each look, so a job queued
//! between the look and the wait still wakes it; jobs wake only as many
//! waiting claims as they need, so a woken claim usually finds work.
//!
//! Each store call is boxed: an async fn's future is as large as its
//! largest await, kept for the request's whole life, and the store's
//! futures are kilobytes each. Boxed, an idle long poll holds only what it
//! waits with, and the store's futures live only while they run.

use std::time::Duration;

use homeostat_model::{AgentId, ClaimedJob};
use homeostat_store::StoreError;

use crate::state::ApiState;

/// Claims up to `capacity` jobs for `agent` (from `only` of its queues, if
/// given), waiting up to `wait` for some; none when the wait ends or the
/// server stops first.
pub(crate) async fn claim(
    state: &ApiState,
    agent: AgentId,
    only: Option<&[String]>,
    capacity: u32,
    wait: Duration,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let deadline = tokio::time::Instant::now() + wait;
    let lease = state.settings.lease_ttl;
    let mut woken = false;
    loop {
        let mut waiter = if wait.is_zero() {
            None
        } else {
            Some(Box::pin(state.store.queued_waiter(agent, only, capacity)).await?)
        };
        let jobs = match only {
            Some(only) => Box::pin(state.store.claim_from(agent, only, capacity, lease)).await?,
            None => Box::pin(state.store.claim(agent, capacity, lease)).await?,
        };
        if woken {
            state.http.woken(!jobs.is_empty());
        }
        let Some(waiter) = waiter.as_mut() else {
            return Ok(jobs);
        };
        if !jobs.is_empty() || state.shutdown.is_cancelled() {
            return Ok(jobs);
        }
        tokio::select! {
            () = waiter.changed() => woken = true,
            () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            () = state.shutdown.cancelled() => return Ok(Vec::new()),
        }
    }
}
