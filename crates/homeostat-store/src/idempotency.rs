//! Enqueues that are safe to retry: the answer to an enqueue made with an
//! idempotency key is kept with the key, in the enqueue's transaction, and
//! a repeat of the key by the same tenant within its lifetime gets that
//! answer instead of a second enqueue.

use std::time::Duration;

use homeostat_model::{NewJob, TenantId};

use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::error::{Context, StoreError, corrupt};
use crate::time::{dur_ms, ms};
use crate::{Enqueued, Once};

const RECALL: Sql = Sql::both(
    "SELECT response FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND created_at > $3",
);

/// Takes the key unless a live answer holds it (an expired one is replaced);
/// no row back means another request holds it.
const REMEMBER: Sql = Sql::both(
    "INSERT INTO idempotency_keys (tenant_id, key, response, created_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (tenant_id, key) DO UPDATE SET response = excluded.response,
       created_at = excluded.created_at
     WHERE idempotency_keys.created_at <= $5
     RETURNING key",
);

const FORGET: Sql = Sql::both(
    "DELETE FROM idempotency_keys WHERE key IN (
       SELECT key FROM idempotency_keys WHERE created_at <= $1 LIMIT CAST($2 AS BIGINT))",
);

/// How long an idempotency key's answer is kept.
pub const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 255;

async fn recall<B: Backend>(
    b: &B,
    tenant_id: TenantId,
    key: &str,
    cutoff_ms: i64,
) -> Result<Option<Vec<Enqueued>>, StoreError> {
    let op = "reading an idempotency key";
    let stmt = Stmt::new::<B>(RECALL)
        .arg(tenant_id)
        .arg(key)
        .arg(cutoff_ms);
    let Some(row) = b.fetch(stmt).await.op(op)?.into_iter().next() else {
        return Ok(None);
    };
    let answer = serde_json::from_str(&row.text("response")?).map_err(|e| corrupt(op, e))?;
    Ok(Some(answer))
}

pub(crate) async fn enqueue_once<B: Backend>(
    b: &B,
    tenant_id: TenantId,
    key: &str,
    jobs: &[NewJob],
    lifetime: Duration,
) -> Result<Once, StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(StoreError::Invalid(homeostat_model::ValidationError::new(
            "idempotency_key",
            format!("must be 1 to {MAX_KEY_LEN} bytes"),
        )));
    }
    for job in jobs {
        job.validate()?;
    }
    let now = b.now();
    let cutoff_ms = ms(now) - dur_ms(lifetime);
    if let Some(enqueued) = recall(b, tenant_id, key, cutoff_ms).await? {
        return Ok(Once {
            enqueued,
            replayed: true,
        });
    }
    let op = "enqueueing jobs";
    let mut tx = b.begin(op).await?;
    let enqueued = b.enqueue_in(&mut tx, tenant_id, jobs).await?;
    let answer = serde_json::to_string(&enqueued).map_err(|e| corrupt(op, e))?;
    let stmt = Stmt::new::<B>(REMEMBER)
        .arg(tenant_id)
        .arg(key)
        .arg(answer.as_str())
        .arg(ms(now))
        .arg(cutoff_ms);
    // A concurrent request with the same key either holds its row lock
    // (PostgreSQL waits for it) or committed first: then the key is taken.
    let taken = match B::fetch_in(&mut tx, stmt).await {
        Ok(rows) => rows.is_empty(),
        Err(e) if crate::error::is_unique_violation(&e) => true,
        Err(e) => return Err(e).op(op),
    };
    if taken {
        drop(tx); // rolls the enqueue back
        let enqueued =
            recall(b, tenant_id, key, cutoff_ms)
                .await?
                .ok_or_else(|| StoreError::Conflict {
                    operation: op,
                    entity: "idempotency key",
                    id: key.to_owned(),
                    reason: "a concurrent request holds it".to_owned(),
                })?;
        return Ok(Once {
            enqueued,
            replayed: true,
        });
    }
    B::commit(tx, op).await?;
    Ok(Once {
        enqueued,
        replayed: false,
    })
}

/// Deletes up to `limit` keys older than their lifetime.
pub(crate) async fn forget_old<B: Backend>(
    b: &B,
    lifetime: Duration,
    limit: u32,
    fence: Option<&homeostat_runtime::Fence>,
) -> Result<u64, StoreError> {
    let op = "deleting old idempotency keys";
    let cutoff = ms(b.now()) - dur_ms(lifetime);
    let mut tx = b.begin(op).await?;
    crate::leases::check_fence::<B>(&mut tx, fence, op).await?;
    let stmt = Stmt::new::<B>(FORGET).arg(cutoff).arg(i64::from(limit));
    let n = B::execute_in(&mut tx, stmt).await.op(op)?;
    B::commit(tx, op).await?;
    Ok(n)
}
