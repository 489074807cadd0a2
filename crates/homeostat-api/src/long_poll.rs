//! A claim that waits for work (a long poll): it looks for jobs and, finding
//! none, waits until jobs are queued that it may take, the wait ends, or
//! the server stops. Waiting starts before each look, so a job queued
//! between the look and the wait still wakes it; jobs wake only as many
//! waiting claims as they need, so a woken claim usually finds work, and
//! one whose jobs other claims took first does not look again (it keeps
//! waiting).
//!
//! Each store call is boxed: an async fn's future is as large as its
//! largest await, kept for the request's whole life, and the store's
//! futures are kilobytes each. Boxed, an idle long poll holds only what it
//! waits with, and the store's futures live only while they run.

use std::time::Duration;

use homeostat_model::{AgentId, ClaimedJob};
use homeostat_store::{QueueWaiter, StoreError};

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
    // The waiter whose wake-up started this look, kept until the look has
    // run (dropped before, it hands its jobs on).
    let mut woken: Option<QueueWaiter> = None;
    loop {
        let waiter = if wait.is_zero() {
            None
        } else {
            Some(Box::pin(state.store.queued_waiter(agent, only, capacity)).await?)
        };
        let jobs = match (woken.take(), only) {
            (Some(woken), only) => {
                let looked = Box::pin(
                    state
                        .store
                        .claim_woken(&woken, agent, only, capacity, lease),
                )
                .await?;
                state.http.woken(looked.as_deref());
                looked.unwrap_or_default()
            }
            (None, Some(only)) => {
                Box::pin(state.store.claim_from(agent, only, capacity, lease)).await?
            }
            (None, None) => Box::pin(state.store.claim(agent, capacity, lease)).await?,
        };
        let Some(mut waiter) = waiter else {
            return Ok(jobs);
        };
        if !jobs.is_empty() || state.shutdown.is_cancelled() {
            return Ok(jobs);
        }
        tokio::select! {
            () = waiter.changed() => {}
            () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            () = state.shutdown.cancelled() => return Ok(Vec::new()),
        }
        woken = Some(waiter);
    }
}
