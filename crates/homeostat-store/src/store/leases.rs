//! Controller leases in the store, for the runtime's leader election.

use std::time::Duration;

use homeostat_runtime::{Lease, LeaseError, LeaseStore};

use super::{Db, Store};
use crate::{StoreError, leases};

impl Store {
    /// Leases given up from now on, by name: this replica's own, and on
    /// PostgreSQL every replica's (a peer that stops releases its leases).
    /// A follower that tries to take a released lease at once takes over
    /// within about a second instead of at its next tick
    /// ([`homeostat_runtime::Manager::lease_released`]).
    pub fn lease_releases(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<str>> {
        self.local.releases.subscribe()
    }
}

impl LeaseStore for Store {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        dispatch!(self, leases::acquire(name, holder, ttl))
            .map_err(|e| lease_error("acquire", name, e))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, LeaseError> {
        dispatch!(self, leases::renew(lease, ttl)).map_err(|e| lease_error("renew", &lease.name, e))
    }

    async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        dispatch!(self, leases::release(&self.local.releases, lease))
            .map_err(|e| lease_error("release", &lease.name, e))
    }

    async fn publish(
        &self,
        lease: &Lease,
        status: &homeostat_runtime::ControllerStatus,
    ) -> Result<(), LeaseError> {
        dispatch!(self, leases::publish(lease, status))
            .map_err(|e| lease_error("publish", &lease.name, e))
    }

    async fn published(
        &self,
    ) -> Result<std::collections::HashMap<String, homeostat_runtime::ControllerStatus>, LeaseError>
    {
        dispatch!(self, leases::published()).map_err(|e| lease_error("read", "*", e))
    }
}

fn lease_error(operation: &'static str, name: &str, e: StoreError) -> LeaseError {
    LeaseError {
        operation,
        name: name.to_owned(),
        source: Box::new(e),
    }
}
