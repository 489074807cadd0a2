//! Each tenant's quotas, checked before an enqueue: live jobs, queues with
//! live jobs, and an enqueue rate. One tenant cannot fill the database,
//! grow every listing and `/metrics` with queue names, or take the writer
//! from the others.
//!
//! Live jobs and queues are counted from the database (one grouped count
//! of the live jobs, so every replica's enqueues are in it) and the count is
//! kept: it is taken again once it is `RECOUNT` old, or ten times as old as
//! it took, whichever is later, so counting takes at most a tenth of a
//! connection. What this replica enqueued since is added to it. The rate is
//! a token bucket per tenant on each replica: N replicas admit N times it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use homeostat_model::operator::{QuotaLimits, TenantUsage};
use homeostat_model::{NewJob, TenantId};
use homeostat_store::Store;

use crate::error::ApiError;

/// The least age of a count before it is taken again.
const RECOUNT: Duration = Duration::from_secs(2);

/// What a tenant has live, as of the last count and since.
#[derive(Debug, Default, Clone)]
struct Live {
    jobs: u64,
    queues: HashSet<String>,
}

#[derive(Debug)]
struct Counted {
    at: Instant,
    took: Duration,
    by_tenant: HashMap<TenantId, Live>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The quotas' state on this replica.
#[derive(Debug, Default)]
pub(crate) struct QuotaGate {
    counted: Mutex<Option<Counted>>,
    /// One count at a time.
    counting: tokio::sync::Mutex<()>,
    buckets: Mutex<HashMap<TenantId, Bucket>>,
}

fn exceeded(what: String, retry_after_secs: u64) -> ApiError {
    ApiError::limited(
        homeostat_model::ErrorCode::QuotaExceeded,
        what,
        retry_after_secs,
    )
}

/// Does `make` if `tenant`'s quotas admit `jobs` (429 `quota_exceeded`
/// otherwise, and nothing done), then adds the jobs `make` says it made
/// live to this replica's count. Every path that makes a tenant's jobs live
/// (an enqueue, a workflow, steps added at run time, a retry) goes through
/// it.
pub(crate) async fn within<T>(
    state: &crate::state::ApiState,
    tenant: TenantId,
    jobs: &[NewJob],
    make: impl std::future::Future<Output = Result<(T, u64), ApiError>>,
) -> Result<T, ApiError> {
    let limits = state.settings.quotas.of(tenant);
    state
        .quotas
        .admit(&state.store, tenant, limits, jobs)
        .await?;
    let (made, live) = make.await?;
    let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
    state.quotas.enqueued(tenant, live, &queues);
    Ok(made)
}

impl QuotaGate {
    /// Admits `jobs` for `tenant` under `limits`, or says which quota they
    /// would pass (429 `quota_exceeded`, with when to try again). The rate's
    /// tokens are taken only when every quota admits them.
    pub(crate) async fn admit(
        &self,
        store: &Store,
        tenant: TenantId,
        limits: QuotaLimits,
        jobs: &[NewJob],
    ) -> Result<(), ApiError> {
        let n = jobs.len() as u64;
        if limits.live_jobs == 0 && limits.live_queues == 0 {
            // Nothing to count against.
            return self.take_tokens(tenant, limits, n);
        }
        let live = self.live(store, tenant).await?;
        if limits.live_jobs > 0 && live.jobs + n > limits.live_jobs {
            return Err(exceeded(
                format!(
                    "live jobs: the tenant has {} of its {} (quotas.live_jobs)",
                    live.jobs, limits.live_jobs
                ),
                RECOUNT.as_secs(),
            ));
        }
        if limits.live_queues > 0 {
            let new: HashSet<&str> = jobs
                .iter()
                .map(|j| j.queue.as_str())
                .filter(|q| !live.queues.contains(*q))
                .collect();
            let total = live.queues.len() as u64 + new.len() as u64;
            if !new.is_empty() && total > limits.live_queues {
                return Err(exceeded(
                    format!(
                        "live queues: the tenant has jobs in {} queues of its {} (quotas.live_queues)",
                        live.queues.len(),
                        limits.live_queues
                    ),
                    RECOUNT.as_secs(),
                ));
            }
        }
        self.take_tokens(tenant, limits, n)
    }

    fn take_tokens(&self, tenant: TenantId, limits: QuotaLimits, n: u64) -> Result<(), ApiError> {
        if limits.enqueue_rate == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let (rate, burst) = (
            limits.enqueue_rate as f64,
            limits.enqueue_burst.max(1) as f64,
        );
        let mut buckets = self.buckets.lock().expect("the quota lock is not poisoned");
        let bucket = buckets.entry(tenant).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = (bucket.tokens + rate * (now - bucket.at).as_secs_f64()).min(burst);
        bucket.at = now;
        let want = n as f64;
        if want > burst {
            return Err(exceeded(
                format!(
                    "enqueue rate: {n} jobs at once is more than the tenant's burst of {burst} (quotas.enqueue_burst)"
                ),
                1,
            ));
        }
        if bucket.tokens < want {
            // A positive number of seconds, small (a burst over a rate): the
            // saturating float-to-int conversion cannot wrap.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let wait = ((want - bucket.tokens) / rate).ceil().max(0.0) as u64;
            return Err(exceeded(
                format!(
                    "enqueue rate: the tenant may enqueue {} jobs a second, in bursts of {} (quotas.enqueue_rate)",
                    limits.enqueue_rate, limits.enqueue_burst
                ),
                wait,
            ));
        }
        bucket.tokens -= want;
        Ok(())
    }

    /// Counts what an enqueue added: `created` jobs (not deduplicated ones)
    /// in these queues.
    pub(crate) fn enqueued(&self, tenant: TenantId, created: u64, queues: &[&str]) {
        let mut counted = self.counted.lock().expect("the quota lock is not poisoned");
        if let Some(c) = counted.as_mut() {
            let live = c.by_tenant.entry(tenant).or_default();
            live.jobs += created;
            live.queues.extend(queues.iter().map(|q| (*q).to_owned()));
        }
    }

    /// The tenant's use, and its limits.
    pub(crate) async fn usage(
        &self,
        store: &Store,
        tenant: TenantId,
        limits: QuotaLimits,
    ) -> Result<TenantUsage, ApiError> {
        let live = self.live(store, tenant).await?;
        Ok(TenantUsage {
            tenant_id: tenant,
            live_jobs: live.jobs,
            live_queues: live.queues.len() as u64,
            limits,
        })
    }

    /// What `tenant` has live: the kept count, taken again when stale.
    async fn live(&self, store: &Store, tenant: TenantId) -> Result<Live, ApiError> {
        if let Some(live) = self.fresh(tenant) {
            return Ok(live);
        }
        let _one = self.counting.lock().await;
        // Another request may have counted while this one waited.
        if let Some(live) = self.fresh(tenant) {
            return Ok(live);
        }
        let started = Instant::now();
        let counts = store.live_by_tenant().await?;
        let by_tenant = counts
            .into_iter()
            .map(|(t, queues)| {
                let jobs = queues.iter().map(|(_, n)| n).sum();
                let queues = queues.into_iter().map(|(q, _)| q).collect();
                (t, Live { jobs, queues })
            })
            .collect::<HashMap<_, _>>();
        let live = by_tenant.get(&tenant).cloned().unwrap_or_default();
        *self.counted.lock().expect("the quota lock is not poisoned") = Some(Counted {
            at: started,
            took: started.elapsed(),
            by_tenant,
        });
        Ok(live)
    }

    /// The kept count of `tenant`, unless it is due again.
    fn fresh(&self, tenant: TenantId) -> Option<Live> {
        let counted = self.counted.lock().expect("the quota lock is not poisoned");
        let c = counted.as_ref()?;
        if c.at.elapsed() > RECOUNT.max(c.took * 10) {
            return None;
        }
        Some(c.by_tenant.get(&tenant).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u64, burst: u64) -> QuotaLimits {
        QuotaLimits {
            live_jobs: 0,
            live_queues: 0,
            enqueue_rate: rate,
            enqueue_burst: burst,
        }
    }

    #[test]
    fn the_rate_admits_a_burst_then_refuses_with_when_to_retry() {
        let gate = QuotaGate::default();
        let t = TenantId::at(jiff::Timestamp::now());
        assert!(gate.take_tokens(t, limits(10, 50), 50).is_ok());
        let refused = gate.take_tokens(t, limits(10, 50), 20).unwrap_err();
        assert_eq!(refused.code, homeostat_model::ErrorCode::QuotaExceeded);
        assert_eq!(refused.retry_after_secs, Some(2), "{refused:?}");
        assert!(refused.message.contains("quotas.enqueue_rate"));
        // More than a burst can never pass: said so.
        let never = gate.take_tokens(t, limits(10, 50), 51).unwrap_err();
        assert!(never.message.contains("quotas.enqueue_burst"), "{never:?}");
        // Another tenant has its own bucket; 0 is no limit.
        let other = TenantId::at(jiff::Timestamp::now());
        assert!(gate.take_tokens(other, limits(10, 50), 50).is_ok());
        assert!(gate.take_tokens(other, limits(0, 0), 1_000_000).is_ok());
    }
}
