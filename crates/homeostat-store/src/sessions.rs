//! Dashboard sessions, kept by the server: a sign-in makes a random id
//! (stored as its hash) for the API key it proved, so the cookie a browser
//! holds is not a credential for the API, ends at sign-out, after idling or
//! at its age, and with the key. Shared by replicas through the database.

use std::time::Duration;

use homeostat_model::TokenId;

use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::error::{Context, StoreError};
use crate::registry::tokens::identity;
use crate::time::{dur_ms, ms};
use crate::{ApiKeyIdentity, secret};

/// How long a session lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Ends after this long without a request.
    pub idle: Duration,
    /// Ends this long after sign-in, in use or not.
    pub max_age: Duration,
}

/// `last_seen_at` is written at most this often: a request within it of
/// the last write reads only.
const SEEN_EVERY: Duration = Duration::from_secs(60);

const CREATE: Sql = Sql::both(
    "INSERT INTO dashboard_sessions (hash, token_id, created_at, last_seen_at)
     VALUES ($1, $2, $3, $3)",
);

/// `$1` hash, `$2` now, `$3` idle (ms), `$4` max age (ms): the live session
/// and its key, if both are live.
const LIVE: Sql = Sql::both(
    "SELECT t.id, t.admin, t.tenant_id, s.last_seen_at FROM dashboard_sessions s
     JOIN tokens t ON t.id = s.token_id
     WHERE s.hash = $1 AND s.last_seen_at > $2 - $3 AND s.created_at > $2 - $4
       AND t.kind = 'api_key' AND t.revoked_at IS NULL
       AND (t.expires_at IS NULL OR t.expires_at > $2)",
);

const SEEN: Sql = Sql::both("UPDATE dashboard_sessions SET last_seen_at = $2 WHERE hash = $1");

const END: Sql = Sql::both("DELETE FROM dashboard_sessions WHERE hash = $1");

/// `$1` now, `$2` idle (ms), `$3` max age (ms), `$4` how many.
const DELETE_ENDED: Sql = Sql::both(
    "DELETE FROM dashboard_sessions WHERE hash IN (
       SELECT hash FROM dashboard_sessions WHERE last_seen_at <= $1 - $2
       UNION SELECT hash FROM dashboard_sessions WHERE created_at <= $1 - $3
       LIMIT CAST($4 AS BIGINT))",
);

const READ_SECRET: Sql = Sql::both("SELECT secret FROM server_secrets WHERE name = $1");
const ADD_SECRET: Sql = Sql::both(
    "INSERT INTO server_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
);

/// A new session for the API key `token_id`: the id to set in the cookie,
/// shown this once.
pub(crate) async fn create<B: Backend>(b: &B, token_id: TokenId) -> Result<String, StoreError> {
    let id = secret::generate("hss");
    let hash = secret::hash(&id);
    let stmt = Stmt::new::<B>(CREATE)
        .arg(hash.as_slice())
        .arg(token_id)
        .arg(ms(b.now()));
    b.fetch_write(stmt)
        .await
        .op("starting a dashboard session")?;
    Ok(id)
}

/// The key a live session was made for.
pub(crate) async fn identify<B: Backend>(
    b: &B,
    id: &str,
    limits: SessionLimits,
) -> Result<ApiKeyIdentity, StoreError> {
    let op = "checking a dashboard session";
    let now = ms(b.now());
    let hash = secret::hash(id);
    let stmt = Stmt::new::<B>(LIVE)
        .arg(hash.as_slice())
        .arg(now)
        .arg(dur_ms(limits.idle))
        .arg(dur_ms(limits.max_age));
    let rows = b.fetch(stmt).await.op(op)?;
    let row = rows.first().ok_or(StoreError::Unauthorized {
        kind: "dashboard session",
    })?;
    let found = identity(row)?;
    if row.int("last_seen_at")? <= now - dur_ms(SEEN_EVERY) {
        let stmt = Stmt::new::<B>(SEEN).arg(hash.as_slice()).arg(now);
        b.fetch_write(stmt).await.op(op)?;
    }
    Ok(found)
}

/// Ends a session (sign-out); ending one that is gone is no error.
pub(crate) async fn end<B: Backend>(b: &B, id: &str) -> Result<(), StoreError> {
    let hash = secret::hash(id);
    let stmt = Stmt::new::<B>(END).arg(hash.as_slice());
    b.fetch_write(stmt).await.op("ending a dashboard session")?;
    Ok(())
}

/// Deletes up to `limit` sessions that idled or aged out.
pub(crate) async fn delete_ended<B: Backend>(
    b: &B,
    limits: SessionLimits,
    limit: u32,
) -> Result<u64, StoreError> {
    let stmt = Stmt::new::<B>(DELETE_ENDED)
        .arg(ms(b.now()))
        .arg(dur_ms(limits.idle))
        .arg(dur_ms(limits.max_age))
        .arg(i64::from(limit));
    b.execute_write(stmt)
        .await
        .op("deleting ended dashboard sessions")
}

/// The server's secret named `name`: made (32 random bytes) by the first
/// replica that asks, the same for every replica after.
pub(crate) async fn server_secret<B: Backend>(b: &B, name: &str) -> Result<Vec<u8>, StoreError> {
    let op = "reading a server secret";
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).expect("the operating system's random source failed");
    let add = Stmt::new::<B>(ADD_SECRET).arg(name).arg(fresh.as_slice());
    b.fetch_write(add).await.op(op)?;
    let rows = b
        .fetch(Stmt::new::<B>(READ_SECRET).arg(name))
        .await
        .op(op)?;
    let row = rows
        .first()
        .ok_or_else(|| crate::error::corrupt(op, "the secret was not kept"))?;
    row.bytes("secret")
}
