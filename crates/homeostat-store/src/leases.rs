//! Controller leases for the runtime's leader election, and the fence check
//! that refuses a deposed leader's writes. Expiry is judged by the
//! database's clock, so replicas with skewed clocks agree. Each lease
//! operation is one statement, a transaction of its own.

use std::collections::HashMap;
use std::time::Duration;

use homeostat_runtime::{ControllerStatus, Fence, Lease};

use crate::backend::{Backend, RowExt, Sql, Stmt, pg_now, sqlite_now};
use crate::error::{Context, StoreError};
use crate::time::{dur_ms, system_time};

/// Lease statements differ between the dialects only in how they read the
/// database's clock: each is written once, with `$now` the dialect's.
macro_rules! acquire {
    ($now:expr) => {
        concat!(
            "INSERT INTO leases (name, holder, epoch, expires_at) VALUES ($1, $2, 1, ",
            $now,
            " + $3)
             ON CONFLICT (name) DO UPDATE SET
               epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > ",
            $now,
            " THEN leases.epoch ELSE leases.epoch + 1 END,
               holder = excluded.holder,
               expires_at = excluded.expires_at
             WHERE leases.holder IS NULL OR leases.expires_at <= ",
            $now,
            " OR leases.holder = excluded.holder
             RETURNING epoch, expires_at"
        )
    };
}

macro_rules! renew {
    ($now:expr) => {
        concat!(
            "UPDATE leases SET expires_at = ",
            $now,
            " + $4 WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > ",
            $now,
            " RETURNING expires_at"
        )
    };
}

macro_rules! release {
    ($now:expr) => {
        concat!(
            "UPDATE leases SET holder = NULL, expires_at = ",
            $now,
            " WHERE name = $1 AND holder = $2 AND epoch = $3"
        )
    };
}

/// The leader's status, kept only while `$2` holds the lease at epoch `$3`.
const PUBLISH: Sql =
    Sql::both("UPDATE leases SET status = $4 WHERE name = $1 AND holder = $2 AND epoch = $3");
const PUBLISHED: Sql = Sql::both("SELECT name, status FROM leases WHERE status IS NOT NULL");

/// Whether lease `$1` is live at epoch `$2`, then what the dialect adds.
macro_rules! fence {
    ($now:expr, $tail:expr) => {
        concat!(
            "SELECT 1 AS live FROM leases WHERE name = $1 AND epoch = $2 AND holder IS NOT NULL
             AND expires_at > ",
            $now,
            $tail
        )
    };
}

const ACQUIRE: Sql = Sql::pair(acquire!(sqlite_now!()), acquire!(pg_now!()));
const RENEW: Sql = Sql::pair(renew!(sqlite_now!()), renew!(pg_now!()));
/// On PostgreSQL a release is announced to every replica (`NOTIFY` on
/// [`RELEASED`], delivered at commit), so that a peer takes the lease at
/// once instead of at its next tick.
const RELEASE: Sql = Sql::pair(
    concat!(release!(sqlite_now!()), " RETURNING name"),
    concat!(
        "WITH r AS (",
        release!(pg_now!()),
        " RETURNING name) SELECT name, pg_notify('homeostat_leases', name) FROM r"
    ),
);
/// The `NOTIFY` channel of released leases; the payload is the lease's name.
#[cfg(feature = "postgres")]
pub(crate) const RELEASED: &str = "homeostat_leases";

/// Leases given up, by name, as this replica hears of them: its own
/// releases, and on PostgreSQL every replica's. A hint: a lost one only
/// delays a takeover to the peer's next tick.
#[derive(Debug, Clone)]
pub(crate) struct Releases(tokio::sync::broadcast::Sender<std::sync::Arc<str>>);

impl Default for Releases {
    fn default() -> Self {
        Self(tokio::sync::broadcast::channel(64).0)
    }
}

impl Releases {
    pub(crate) fn released(&self, name: &str) {
        // Nobody listening is fine.
        let _ = self.0.send(name.into());
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<str>> {
        self.0.subscribe()
    }
}
/// On PostgreSQL the shared row lock holds off a takeover until the fenced
/// transaction ends; SQLite's write lock already does.
const FENCE: Sql = Sql::pair(fence!(sqlite_now!(), ""), fence!(pg_now!(), " FOR SHARE"));

/// The live leases: who holds each controller now, by the database's clock.
const HOLDERS: Sql = Sql::pair(
    concat!(
        "SELECT name, holder FROM leases WHERE holder IS NOT NULL AND expires_at > ",
        sqlite_now!()
    ),
    concat!(
        "SELECT name, holder FROM leases WHERE holder IS NOT NULL AND expires_at > ",
        pg_now!()
    ),
);

/// Which replica (holder) leads each controller now.
pub(crate) async fn holders<B: Backend>(
    b: &B,
) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(HOLDERS))
        .await
        .op("reading the controller leases")?;
    rows.iter()
        .map(|r| Ok((r.text("name")?, r.text("holder")?)))
        .collect()
}

pub(crate) async fn acquire<B: Backend>(
    b: &B,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<Lease>, StoreError> {
    let op = "acquiring a lease";
    let stmt = Stmt::new::<B>(ACQUIRE)
        .arg(name)
        .arg(holder)
        .arg(dur_ms(ttl));
    let row = b.fetch_write(stmt).await.op(op)?.into_iter().next();
    row.map(|r| {
        Ok(Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            epoch: r.num::<u64>("epoch")?,
            expires_at: system_time(r.int("expires_at")?),
        })
    })
    .transpose()
}

pub(crate) async fn renew<B: Backend>(
    b: &B,
    lease: &Lease,
    ttl: Duration,
) -> Result<Option<Lease>, StoreError> {
    let op = "renewing a lease";
    let stmt = Stmt::new::<B>(RENEW)
        .arg(&lease.name)
        .arg(&lease.holder)
        .arg(lease.epoch as i64)
        .arg(dur_ms(ttl));
    let row = b.fetch_write(stmt).await.op(op)?.into_iter().next();
    row.map(|r| {
        Ok(Lease {
            expires_at: system_time(r.int("expires_at")?),
            ..lease.clone()
        })
    })
    .transpose()
}

pub(crate) async fn release<B: Backend>(
    b: &B,
    releases: &Releases,
    lease: &Lease,
) -> Result<(), StoreError> {
    let op = "releasing a lease";
    let stmt = Stmt::new::<B>(RELEASE)
        .arg(&lease.name)
        .arg(&lease.holder)
        .arg(lease.epoch as i64);
    let released = !b.fetch_write(stmt).await.op(op)?.is_empty();
    // PostgreSQL's listener hears every replica's release, this one's too.
    if released && !B::POSTGRES {
        releases.released(&lease.name);
    }
    Ok(())
}

pub(crate) async fn publish<B: Backend>(
    b: &B,
    lease: &Lease,
    status: &ControllerStatus,
) -> Result<(), StoreError> {
    let status = serde_json::to_string(status).expect("a status serializes");
    let stmt = Stmt::new::<B>(PUBLISH)
        .arg(&lease.name)
        .arg(&lease.holder)
        .arg(lease.epoch as i64)
        .arg(status.as_str());
    b.fetch_write(stmt)
        .await
        .op("publishing a controller's status")?;
    Ok(())
}

/// What the leaders published; a row this build cannot read is left out.
pub(crate) async fn published<B: Backend>(
    b: &B,
) -> Result<HashMap<String, ControllerStatus>, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(PUBLISHED))
        .await
        .op("reading the controllers' status")?;
    let mut out = HashMap::new();
    for r in &rows {
        if let Ok(status) = serde_json::from_str(&r.text("status")?) {
            out.insert(r.text("name")?, status);
        }
    }
    Ok(out)
}

/// Refuses the transaction's writes unless `fence` is the live lease.
pub(crate) async fn check_fence<B: Backend>(
    tx: &mut B::Tx,
    fence: Option<&Fence>,
    operation: &'static str,
) -> Result<(), StoreError> {
    let Some(fence) = fence else { return Ok(()) };
    let stmt = Stmt::new::<B>(FENCE)
        .arg(&fence.name)
        .arg(fence.epoch as i64);
    let live = B::fetch_in(tx, stmt).await.op(operation)?;
    if live.is_empty() {
        Err(StoreError::Fenced {
            operation,
            lease: fence.name.clone(),
            epoch: fence.epoch,
        })
    } else {
        Ok(())
    }
}
