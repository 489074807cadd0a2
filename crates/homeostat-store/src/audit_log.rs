//! The audit log's operations: appending inside a caller's transaction,
//! reading, verifying, and retention. The hash chain itself is `audit`.

use homeostat_model::NewAuditEvent;
use homeostat_runtime::Fence;

use crate::audit::{self, ChainHead, ChainedEvent, VerifyReport};
use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::error::{Context, StoreError};
use crate::leases::check_fence;
use crate::rows;

/// The head row lock serializes appends across PostgreSQL replicas; SQLite's
/// write lock already does.
const HEAD: Sql = Sql::pair(
    "SELECT next_seq, head_hash FROM audit_chain WHERE id = 1",
    "SELECT next_seq, head_hash FROM audit_chain WHERE id = 1 FOR UPDATE",
);

const MOVE_HEAD: Sql =
    Sql::both("UPDATE audit_chain SET next_seq = $1, head_hash = $2 WHERE id = 1");

const EVENTS: Sql = Sql::both(
    "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_events
     WHERE seq > $1 ORDER BY seq LIMIT CAST($2 AS BIGINT)",
);

const EVENTS_OF: Sql = Sql::both(
    "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_events
     WHERE subject = $1 ORDER BY seq LIMIT CAST($2 AS BIGINT)",
);

const CHAIN: Sql = Sql::both(
    "SELECT next_seq, head_hash, first_seq, first_prev_hash FROM audit_chain WHERE id = 1",
);

const COUNT_OLD: Sql = Sql::both(
    "SELECT COUNT(*) AS n FROM (SELECT 1 FROM audit_events WHERE at < $1 LIMIT CAST($2 AS BIGINT)) t",
);

const FIRST_SEQ: Sql = Sql::pair(
    "SELECT first_seq FROM audit_chain WHERE id = 1",
    "SELECT first_seq FROM audit_chain WHERE id = 1 FOR UPDATE",
);

const OLDEST: Sql = Sql::both(
    "SELECT seq, at, hash FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT CAST($2 AS BIGINT)",
);

const DELETE_THROUGH: Sql = Sql::both("DELETE FROM audit_events WHERE seq >= $1 AND seq <= $2");

const MOVE_START: Sql =
    Sql::both("UPDATE audit_chain SET first_seq = $1, first_prev_hash = $2 WHERE id = 1");

/// Appends `events` inside `tx`, linked after the chain's head.
pub(crate) async fn append<B: Backend>(
    tx: &mut B::Tx,
    events: &[NewAuditEvent],
    at_ms: i64,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let op = "appending to the audit log";
    let head = B::fetch_in(tx, Stmt::new::<B>(HEAD)).await.op(op)?;
    let head = head
        .first()
        .ok_or_else(|| crate::error::corrupt(op, "the audit chain has no head row"))?;
    let (next_seq, head_hash) = (head.int("next_seq")?, head.bytes("head_hash")?);
    let chained = audit::link(events, at_ms, next_seq, &head_hash);
    B::insert_audit(tx, &chained).await.op(op)?;
    let last = chained.last().expect("events is not empty");
    let stmt = Stmt::new::<B>(MOVE_HEAD)
        .arg(last.seq + 1)
        .arg(last.hash.as_slice());
    B::execute_in(tx, stmt).await.op(op)?;
    Ok(())
}

/// Appends `events` in a transaction of their own.
pub(crate) async fn append_events<B: Backend>(
    b: &B,
    events: &[NewAuditEvent],
    at_ms: i64,
) -> Result<(), StoreError> {
    let op = "appending to the audit log";
    let mut tx = b.begin(op).await?;
    append::<B>(&mut tx, events, at_ms).await?;
    B::commit(tx, op).await
}

pub(crate) async fn events<B: Backend>(
    b: &B,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<ChainedEvent>, StoreError> {
    let stmt = Stmt::new::<B>(EVENTS).arg(after_seq).arg(i64::from(limit));
    b.fetch(stmt)
        .await
        .op("reading the audit log")?
        .iter()
        .map(rows::chained_event)
        .collect()
}

pub(crate) async fn events_of<B: Backend>(
    b: &B,
    subject: &str,
    limit: u32,
) -> Result<Vec<ChainedEvent>, StoreError> {
    let stmt = Stmt::new::<B>(EVENTS_OF).arg(subject).arg(i64::from(limit));
    b.fetch(stmt)
        .await
        .op("reading the audit log")?
        .iter()
        .map(rows::chained_event)
        .collect()
}

pub(crate) async fn verify<B: Backend>(
    b: &B,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<VerifyReport, StoreError> {
    let op = "verifying the audit chain";
    let chain = b.fetch(Stmt::new::<B>(CHAIN)).await.op(op)?;
    let chain = chain
        .first()
        .ok_or_else(|| crate::error::corrupt(op, "the audit chain has no head row"))?;
    let head = ChainHead {
        next_seq: chain.int("next_seq")?,
        head_hash: chain.bytes("head_hash")?,
        first_seq: chain.int("first_seq")?,
        first_prev_hash: chain.bytes("first_prev_hash")?,
    };
    let start = || async {
        let rows = b.fetch(Stmt::new::<B>(CHAIN)).await.op(op)?;
        let row = rows
            .first()
            .ok_or_else(|| crate::error::corrupt(op, "the audit chain has no head row"))?;
        Ok((row.int("first_seq")?, row.bytes("first_prev_hash")?))
    };
    audit::verify(head, |after| events(b, after, 1000), start, progress).await
}

/// What a retention run does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention<'a> {
    pub(crate) cutoff_ms: i64,
    pub(crate) batch: u32,
    pub(crate) dry_run: bool,
    pub(crate) now_ms: i64,
    pub(crate) fence: Option<&'a Fence>,
}

/// Deletes up to a batch of the oldest events before the cutoff (or counts
/// them), moves the retained chain's start past them, and audits the
/// deletion.
pub(crate) async fn delete_old<B: Backend>(
    b: &B,
    run: Retention<'_>,
    actor: &str,
) -> Result<u64, StoreError> {
    let op = "deleting old audit events";
    if run.dry_run {
        let stmt = Stmt::new::<B>(COUNT_OLD)
            .arg(run.cutoff_ms)
            .arg(i64::from(run.batch));
        let rows = b.fetch(stmt).await.op(op)?;
        let n = rows.first().map(|r| r.num("n")).transpose()?.unwrap_or(0);
        return Ok(n);
    }
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, run.fence, op).await?;
    let first = B::fetch_in(&mut tx, Stmt::new::<B>(FIRST_SEQ))
        .await
        .op(op)?;
    let first_seq = first
        .first()
        .ok_or_else(|| crate::error::corrupt(op, "the audit chain has no head row"))?
        .int("first_seq")?;
    // The oldest events form a prefix; stop at the first one to keep.
    let stmt = Stmt::new::<B>(OLDEST)
        .arg(first_seq)
        .arg(i64::from(run.batch));
    let oldest = B::fetch_in(&mut tx, stmt)
        .await
        .op(op)?
        .iter()
        .map(|r| Ok((r.int("seq")?, r.int("at")?, r.bytes("hash")?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let Some((last_seq, last_hash)) = audit::retention_end(oldest, run.cutoff_ms) else {
        return Ok(0);
    };
    let stmt = Stmt::new::<B>(DELETE_THROUGH).arg(first_seq).arg(last_seq);
    let deleted = B::execute_in(&mut tx, stmt).await.op(op)?;
    let stmt = Stmt::new::<B>(MOVE_START)
        .arg(last_seq + 1)
        .arg(last_hash.as_slice());
    B::execute_in(&mut tx, stmt).await.op(op)?;
    let event = audit::retention_event(actor, deleted, last_seq, run.cutoff_ms);
    append::<B>(&mut tx, &[event], run.now_ms).await?;
    B::commit(tx, op).await?;
    Ok(deleted)
}
