//! The store's backup: an online copy of the embedded SQLite database.

use std::path::Path;

use super::{Db, Store};
use crate::StoreError;

/// What a backup holds, as read back from the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backup {
    /// The copy's size.
    pub bytes: u64,
    /// Jobs in it.
    pub jobs: u64,
    /// Audit events in it.
    pub audit_events: u64,
}

impl Store {
    /// Copies the SQLite database to the new file `to` (private to its
    /// owner) while the server may be running: a consistent snapshot, as
    /// of one moment, checked by opening it. PostgreSQL is backed up with
    /// its own tools (`pg_dump`; docs/server.md): refused as invalid.
    pub async fn backup_to(&self, to: &Path) -> Result<Backup, StoreError> {
        match &self.db {
            #[cfg(feature = "sqlite")]
            Db::Sqlite(s) => s.backup_to(to).await,
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => {
                let _ = to;
                Err(homeostat_model::ValidationError::new(
                    "database_url",
                    "homeostat backup copies the embedded SQLite database; \
                     back PostgreSQL up with pg_dump (docs/server.md, \"Backups\")",
                )
                .into())
            }
        }
    }
}
