//! An online copy of the SQLite database: one read transaction's snapshot,
//! written by SQLite itself (`VACUUM INTO`) beside the running server,
//! then opened and checked before it is called a backup.

use std::path::Path;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::SqliteStore;
use crate::error::Context;
use crate::{Backup, StoreError};

impl SqliteStore {
    pub(crate) async fn backup_to(&self, to: &Path) -> Result<Backup, StoreError> {
        let op = "copying the SQLite database";
        let Some(target) = to.to_str() else {
            return Err(invalid(to, "is not a UTF-8 path"));
        };
        // Made here, empty and private (it holds payloads and credential
        // hashes), so that SQLite writes into it and an existing file is
        // never overwritten.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(to)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => invalid(to, "exists: choose a new file"),
                    _ => invalid(to, &format!("cannot be created: {e}")),
                })?;
        }
        let copied = async {
            // A read transaction's snapshot: writers go on meanwhile (WAL).
            sqlx::query("VACUUM INTO $1")
                .bind(target)
                .execute(&self.pool)
                .await
                .op(op)?;
            check_copy(to).await
        }
        .await;
        if copied.is_err() {
            let _ = std::fs::remove_file(to);
        }
        copied
    }
}

/// Opens the copy read-only: whole, and what it holds.
async fn check_copy(path: &Path) -> Result<Backup, StoreError> {
    let op = "checking the copy";
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .op(op)?;
    let verdict: String = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_one(&mut conn)
        .await
        .op(op)?;
    if verdict != "ok" {
        return Err(StoreError::Corrupt {
            operation: op,
            detail: format!("the copy fails SQLite's check: {verdict}"),
        });
    }
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&mut conn)
        .await
        .op(op)?;
    let audit_events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(&mut conn)
        .await
        .op(op)?;
    conn.close().await.op(op)?;
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Backup {
        bytes,
        jobs: u64::try_from(jobs).unwrap_or(0),
        audit_events: u64::try_from(audit_events).unwrap_or(0),
    })
}

fn invalid(to: &Path, what: &str) -> StoreError {
    homeostat_model::ValidationError::new("to", format!("{} {what}", to.display())).into()
}
