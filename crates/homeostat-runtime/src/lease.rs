//! Leadership leases: one named lease per exclusive controller, held by one
//! replica at a time, with an epoch that grows with every change of holder.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::{BoxError, BoxFuture, Clock, ControllerStatus};

/// A lease as granted by a [`LeaseStore`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// The lease's name (the controller's name).
    pub name: String,
    /// Who holds it (a replica identity).
    pub holder: String,
    /// Increases on every change of holder; never reused for a name.
    pub epoch: u64,
    /// When the store will consider the lease free, by the store's clock.
    #[serde(with = "crate::status::unix_ms")]
    pub expires_at: SystemTime,
}

/// A lease store could not answer.
#[derive(Debug, thiserror::Error)]
#[error("lease store failed to {operation} lease {name:?}")]
pub struct LeaseError {
    /// `acquire`, `renew` or `release`.
    pub operation: &'static str,
    /// The lease concerned.
    pub name: String,
    /// The underlying failure.
    #[source]
    pub source: BoxError,
}

/// Where leases live: memory for one process, a database row for replicas.
///
/// Expiry is judged by the store's own clock, never by the caller's, so that
/// replicas with skewed clocks agree on who holds a lease.
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the lease for `holder` if it is free or expired (the epoch then
    /// increases), or extends it if `holder` already holds it (same epoch).
    /// `Ok(None)` when another holder has a live lease.
    fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, LeaseError>> + Send;

    /// Extends `lease` by `ttl` if it is still held by the same holder with the
    /// same epoch and has not expired. `Ok(None)` when it has been lost.
    fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, LeaseError>> + Send;

    /// Gives the lease up at once so a peer can take it without waiting for
    /// expiry. Releasing a lease that was already lost is not an error.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), LeaseError>> + Send;

    /// Shares the status of the controller `lease` names, as its leader
    /// sees it after a run, so that every replica can show how it runs.
    /// Ignored unless `lease` is still held at its epoch. A store that
    /// shares nothing keeps this default.
    fn publish(
        &self,
        lease: &Lease,
        status: &ControllerStatus,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send {
        let _ = (lease, status);
        std::future::ready(Ok(()))
    }

    /// The statuses leaders published, by controller name.
    fn published(
        &self,
    ) -> impl Future<Output = Result<HashMap<String, ControllerStatus>, LeaseError>> + Send {
        std::future::ready(Ok(HashMap::new()))
    }
}

/// Object-safe form of [`LeaseStore`].
pub(crate) trait DynLeaseStore: Send + Sync + 'static {
    fn acquire_boxed<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>>;
    fn renew_boxed<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>>;
    fn release_boxed<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LeaseError>>;
    fn publish_boxed<'a>(
        &'a self,
        lease: &'a Lease,
        status: &'a ControllerStatus,
    ) -> BoxFuture<'a, Result<(), LeaseError>>;
    fn published_boxed(
        &self,
    ) -> BoxFuture<'_, Result<HashMap<String, ControllerStatus>, LeaseError>>;
}

impl<L: LeaseStore> DynLeaseStore for L {
    fn acquire_boxed<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>> {
        Box::pin(LeaseStore::acquire(self, name, holder, ttl))
    }
    fn renew_boxed<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, LeaseError>> {
        Box::pin(LeaseStore::renew(self, lease, ttl))
    }
    fn release_boxed<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(LeaseStore::release(self, lease))
    }
    fn publish_boxed<'a>(
        &'a self,
        lease: &'a Lease,
        status: &'a ControllerStatus,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(LeaseStore::publish(self, lease, status))
    }
    fn published_boxed(
        &self,
    ) -> BoxFuture<'_, Result<HashMap<String, ControllerStatus>, LeaseError>> {
        Box::pin(LeaseStore::published(self))
    }
}

impl<L: LeaseStore> LeaseStore for Arc<L> {
    fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, LeaseError>> + Send {
        L::acquire(self, name, holder, ttl)
    }
    fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, LeaseError>> + Send {
        L::renew(self, lease, ttl)
    }
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), LeaseError>> + Send {
        L::release(self, lease)
    }
    fn publish(
        &self,
        lease: &Lease,
        status: &ControllerStatus,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send {
        L::publish(self, lease, status)
    }
    fn published(
        &self,
    ) -> impl Future<Output = Result<HashMap<String, ControllerStatus>, LeaseError>> + Send {
        L::published(self)
    }
}

/// Leases in process memory: for a single process, and for tests that run
/// several managers against one store.
///
/// Cloning shares the leases.
#[derive(Debug, Clone)]
pub struct InMemoryLeaseStore {
    clock: Arc<dyn Clock>,
    leases: Arc<Mutex<HashMap<String, Entry>>>,
}

#[derive(Debug, Clone)]
struct Entry {
    holder: Option<String>,
    epoch: u64,
    expires_at: SystemTime,
    status: Option<ControllerStatus>,
}

impl Entry {
    fn live_holder(&self, now: SystemTime) -> Option<&str> {
        self.holder.as_deref().filter(|_| self.expires_at > now)
    }
}

impl InMemoryLeaseStore {
    /// An empty store judging expiry by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            leases: Arc::default(),
        }
    }

    /// The live lease named `name`, if any.
    pub fn current(&self, name: &str) -> Option<Lease> {
        let now = self.clock.now();
        let leases = self.leases.lock().unwrap();
        let entry = leases.get(name)?;
        entry.live_holder(now).map(|holder| Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            epoch: entry.epoch,
            expires_at: entry.expires_at,
        })
    }

    /// Takes the lease away from its holder, as an operator forcing a handover
    /// would: the holder's next renewal fails and its in-flight run stops.
    pub fn revoke(&self, name: &str) {
        if let Some(entry) = self.leases.lock().unwrap().get_mut(name) {
            entry.holder = None;
        }
    }
}

impl LeaseStore for InMemoryLeaseStore {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        let now = self.clock.now();
        let mut leases = self.leases.lock().unwrap();
        let entry = leases.entry(name.to_owned()).or_insert(Entry {
            holder: None,
            epoch: 0,
            expires_at: now,
            status: None,
        });
        match entry.live_holder(now) {
            Some(current) if current != holder => return Ok(None),
            Some(_) => {}
            None => {
                entry.epoch += 1;
                entry.holder = Some(holder.to_owned());
            }
        }
        entry.expires_at = now + ttl;
        Ok(Some(Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            epoch: entry.epoch,
            expires_at: entry.expires_at,
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, LeaseError> {
        let now = self.clock.now();
        let mut leases = self.leases.lock().unwrap();
        let Some(entry) = leases.get_mut(&lease.name) else {
            return Ok(None);
        };
        if entry.epoch != lease.epoch || entry.live_holder(now) != Some(lease.holder.as_str()) {
            return Ok(None);
        }
        entry.expires_at = now + ttl;
        Ok(Some(Lease {
            expires_at: entry.expires_at,
            ..lease.clone()
        }))
    }

    async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        let mut leases = self.leases.lock().unwrap();
        if let Some(entry) = leases.get_mut(&lease.name)
            && entry.epoch == lease.epoch
            && entry.holder.as_deref() == Some(lease.holder.as_str())
        {
            entry.holder = None;
        }
        Ok(())
    }

    async fn publish(&self, lease: &Lease, status: &ControllerStatus) -> Result<(), LeaseError> {
        let mut leases = self.leases.lock().unwrap();
        if let Some(entry) = leases.get_mut(&lease.name)
            && entry.epoch == lease.epoch
            && entry.holder.as_deref() == Some(lease.holder.as_str())
        {
            entry.status = Some(status.clone());
        }
        Ok(())
    }

    async fn published(&self) -> Result<HashMap<String, ControllerStatus>, LeaseError> {
        let leases = self.leases.lock().unwrap();
        Ok(leases
            .iter()
            .filter_map(|(name, entry)| Some((name.clone(), entry.status.clone()?)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    const TTL: Duration = Duration::from_secs(15);

    fn store() -> (ManualClock, InMemoryLeaseStore) {
        let clock = ManualClock::at_test_epoch();
        let store = InMemoryLeaseStore::new(Arc::new(clock.clone()));
        (clock, store)
    }

    #[tokio::test]
    async fn a_live_lease_excludes_other_holders_until_it_expires() {
        let (clock, store) = store();
        let a = store.acquire("c", "a", TTL).await.unwrap().unwrap();
        assert_eq!(a.epoch, 1);
        assert_eq!(store.acquire("c", "b", TTL).await.unwrap(), None);
        clock.advance(TTL);
        let b = store.acquire("c", "b", TTL).await.unwrap().unwrap();
        assert_eq!(b.epoch, 2, "a change of holder must bump the epoch");
        assert_eq!(store.renew(&a, TTL).await.unwrap(), None);
    }

    #[tokio::test]
    async fn reacquiring_by_the_holder_keeps_the_epoch_and_extends() {
        let (clock, store) = store();
        let first = store.acquire("c", "a", TTL).await.unwrap().unwrap();
        clock.advance(Duration::from_secs(5));
        let again = store.acquire("c", "a", TTL).await.unwrap().unwrap();
        assert_eq!(again.epoch, first.epoch);
        assert_eq!(again.expires_at, first.expires_at + Duration::from_secs(5));
    }

    #[tokio::test]
    async fn renew_extends_only_a_live_lease_with_the_same_epoch() {
        let (clock, store) = store();
        let lease = store.acquire("c", "a", TTL).await.unwrap().unwrap();
        clock.advance(Duration::from_secs(10));
        let renewed = store.renew(&lease, TTL).await.unwrap().unwrap();
        assert_eq!(renewed.expires_at, clock.now() + TTL);
        clock.advance(TTL);
        assert_eq!(store.renew(&renewed, TTL).await.unwrap(), None);
    }

    #[tokio::test]
    async fn release_frees_the_lease_at_once_and_epochs_never_repeat() {
        let (_clock, store) = store();
        let a = store.acquire("c", "a", TTL).await.unwrap().unwrap();
        store.release(&a).await.unwrap();
        assert_eq!(store.current("c"), None);
        let b = store.acquire("c", "b", TTL).await.unwrap().unwrap();
        assert_eq!(b.epoch, a.epoch + 1);
        // A stale release from the old holder does not free the new lease.
        store.release(&a).await.unwrap();
        assert_eq!(store.current("c").unwrap().holder, "b");
    }

    #[tokio::test]
    async fn revoke_makes_the_holders_renewal_fail() {
        let (_clock, store) = store();
        let a = store.acquire("c", "a", TTL).await.unwrap().unwrap();
        store.revoke("c");
        assert_eq!(store.renew(&a, TTL).await.unwrap(), None);
        let again = store.acquire("c", "a", TTL).await.unwrap().unwrap();
        assert_eq!(again.epoch, a.epoch + 1);
    }
}
