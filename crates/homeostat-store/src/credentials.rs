//! Agents' credentials verified from memory. An agent presents its
//! credential on every heartbeat, claim and report; looking it up each
//! time was a statement per heartbeat. Each store keeps the credentials it
//! verified (by their hash, never the secret) and, at most every
//! [`REVOCATION_CHECK`], asks the database which credentials were revoked
//! since its last look, by any replica: a revoked credential stops working
//! on every replica within that interval (plus the statement's time), and
//! at once on the replica that revoked it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use homeostat_model::AgentId;

use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::error::{Context, StoreError};
use crate::time::ms;

/// How stale the knowledge of revocations may get before a request looks
/// again (and waits for the look).
pub const REVOCATION_CHECK: Duration = Duration::from_millis(500);

/// Revocations are stamped by the revoking replica's clock: each look
/// reaches this far before the previous one, so clocks that far apart
/// miss none.
const CLOCK_MARGIN: Duration = Duration::from_secs(10);

/// `$1` the earliest revocation time to look at (ms).
const REVOKED_SINCE: Sql = Sql::both(
    "SELECT agent_id FROM tokens
     WHERE revoked_at IS NOT NULL AND revoked_at >= $1 AND kind = 'agent_credential'",
);

/// The credentials a store has verified.
#[derive(Debug, Default)]
pub(crate) struct CredentialCache {
    known: Mutex<crate::bounded::BoundedMap<[u8; 32], AgentId>>,
    /// The last look for revocations: when it started (monotonic and by
    /// the store's clock) and whether it failed. One look at a time.
    looked: tokio::sync::Mutex<Option<Look>>,
}

#[derive(Debug, Clone, Copy)]
struct Look {
    started: Instant,
    started_ms: i64,
    failed: bool,
}

impl CredentialCache {
    /// The agent whose credential hashes to `hash`, if verified before and
    /// not revoked since.
    pub(crate) fn get(&self, hash: &[u8; 32]) -> Option<AgentId> {
        self.known.lock().unwrap().get(hash).copied()
    }

    pub(crate) fn insert(&self, hash: [u8; 32], agent: AgentId) {
        self.known.lock().unwrap().insert(hash, agent);
    }

    /// Forgets the credentials of `agents`.
    pub(crate) fn forget(&self, agents: &[AgentId]) {
        if agents.is_empty() {
            return;
        }
        self.known
            .lock()
            .unwrap()
            .retain(|_, agent| !agents.contains(agent));
    }
}

/// Brings the cache's knowledge of revocations up to date unless a look
/// began within [`REVOCATION_CHECK`]; a request that finds it stale waits
/// for the look. While the database does not answer, requests fail with
/// that look's error rather than each trying again.
pub(crate) async fn check_revocations<B: Backend>(
    b: &B,
    cache: &CredentialCache,
) -> Result<(), StoreError> {
    let mut looked = cache.looked.lock().await;
    let op = "looking for revoked agent credentials";
    if let Some(last) = *looked
        && last.started.elapsed() < REVOCATION_CHECK
    {
        return if last.failed {
            Err(StoreError::Unavailable {
                operation: op,
                source: sqlx::Error::Io(std::io::Error::other(
                    "the database did not answer the last look",
                )),
            })
        } else {
            Ok(())
        };
    }
    let started = Instant::now();
    let started_ms = ms(b.now());
    // From the previous look's start (less the margin), or, at the first
    // look, from the margin before now: credentials verified after this
    // look began were read with their revocation, if any.
    let since = looked.map_or(started_ms, |l| l.started_ms) - crate::time::dur_ms(CLOCK_MARGIN);
    let rows = b.fetch(Stmt::new::<B>(REVOKED_SINCE).arg(since)).await;
    let rows = match rows.op(op) {
        Ok(rows) => rows,
        Err(e) => {
            *looked = Some(Look {
                started,
                started_ms: looked.map_or(started_ms, |l| l.started_ms),
                failed: true,
            });
            return Err(e);
        }
    };
    let revoked = rows
        .iter()
        .filter_map(|r| r.opt_id::<AgentId>("agent_id").transpose())
        .collect::<Result<Vec<_>, _>>()?;
    cache.forget(&revoked);
    *looked = Some(Look {
        started,
        started_ms,
        failed: false,
    });
    Ok(())
}
