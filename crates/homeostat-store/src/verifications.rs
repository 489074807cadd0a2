//! Verifications of the audit chain as rows: requested by anyone, walked by
//! the audit-chain-verify leader, their progress and outcome readable from
//! every replica. At most one is open (pending or running) at a time.

use std::time::Duration;

use homeostat_model::VerificationId;
use homeostat_model::operator::{AuditVerification, VerificationState};
use homeostat_runtime::Fence;

use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::error::{Context, StoreError, corrupt};
use crate::leases::check_fence;
use crate::time::{dur_ms, ms, ts};
use crate::{ChainBreak, VerifyReport};

/// Finished verifications kept (the newest); older ones are deleted as new
/// ones are requested.
pub const KEPT: u32 = 20;

/// Starts a walk may have: one interrupted more often than this (its
/// leader lost, its run timed out) fails instead of starting over.
pub const MAX_ATTEMPTS: i64 = 3;

macro_rules! verification_columns {
    () => {
        "id, state, requested_by, requested_at, started_at, finished_at, attempts, checked, \
         total, first_seq, break_seq, break_reason, error"
    };
}

/// `$1` id, `$2` by, `$3` now; `$4` when set: only if none was requested
/// after it. Nothing is inserted while one is open (the unique index). The
/// sequence orders them (on SQLite, writers take turns; PostgreSQL
/// numbers its own).
const REQUEST: Sql = Sql::pair(
    "INSERT INTO audit_verifications (id, seq, state, requested_by, requested_at)
     SELECT $1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_verifications), 'pending', $2, $3
     WHERE $4 IS NULL OR NOT EXISTS (SELECT 1 FROM audit_verifications WHERE requested_at > $4)
     ON CONFLICT DO NOTHING",
    "INSERT INTO audit_verifications (id, state, requested_by, requested_at)
     SELECT $1, 'pending', $2, $3
     WHERE $4::bigint IS NULL
        OR NOT EXISTS (SELECT 1 FROM audit_verifications WHERE requested_at > $4::bigint)
     ON CONFLICT DO NOTHING",
);

const OPEN: Sql = Sql::both(concat!(
    "SELECT ",
    verification_columns!(),
    " FROM audit_verifications WHERE state IN ('pending', 'running')"
));

/// `$1` how many to keep.
const PRUNE: Sql = Sql::both(
    "DELETE FROM audit_verifications WHERE state NOT IN ('pending', 'running')
       AND seq NOT IN (SELECT seq FROM audit_verifications ORDER BY seq DESC LIMIT CAST($1 AS BIGINT))",
);

const GET: Sql = Sql::both(concat!(
    "SELECT ",
    verification_columns!(),
    " FROM audit_verifications WHERE id = $1"
));

const LATEST: Sql = Sql::both(concat!(
    "SELECT ",
    verification_columns!(),
    " FROM audit_verifications ORDER BY seq DESC LIMIT CAST($1 AS BIGINT)"
));

/// `$1` id, `$2` now. The total is the retained chain's length as the walk
/// begins.
const START: Sql = Sql::both(concat!(
    "UPDATE audit_verifications SET state = 'running', started_at = $2, attempts = attempts + 1,
       checked = 0, total = (SELECT next_seq - first_seq FROM audit_chain WHERE id = 1)
     WHERE id = $1 RETURNING ",
    verification_columns!()
));

/// `$1` id, `$2` checked.
const PROGRESS: Sql =
    Sql::both("UPDATE audit_verifications SET checked = $2 WHERE id = $1 AND state = 'running'");

/// `$1` id, `$2` state, `$3` now, `$4` checked, `$5` first seq, `$6` break
/// seq, `$7` break reason, `$8` error.
const FINISH: Sql = Sql::both(concat!(
    "UPDATE audit_verifications SET state = $2, finished_at = $3, checked = COALESCE($4, checked),
       first_seq = $5, break_seq = $6, break_reason = $7, error = $8
     WHERE id = $1 AND state IN ('pending', 'running') RETURNING ",
    verification_columns!()
));

fn verification(r: &impl RowExt) -> Result<AuditVerification, StoreError> {
    let state = r.text("state")?;
    let break_seq = r.opt_int("break_seq")?;
    Ok(AuditVerification {
        id: r.id("id")?,
        state: state
            .parse()
            .map_err(|e| corrupt("reading a verification", format!("column state: {e}")))?,
        requested_by: r.text("requested_by")?,
        requested_at: ts(r.int("requested_at")?),
        started_at: r.opt_int("started_at")?.map(ts),
        finished_at: r.opt_int("finished_at")?.map(ts),
        checked: r.num("checked")?,
        total: r.num("total")?,
        first_seq: r.opt_int("first_seq")?,
        first_break: match break_seq {
            Some(seq) => Some(ChainBreak {
                seq,
                reason: r.opt_text("break_reason")?.unwrap_or_default(),
            }),
            None => None,
        },
        error: r.opt_text("error")?,
    })
}

fn one(rows: &[impl RowExt]) -> Result<Option<AuditVerification>, StoreError> {
    rows.first().map(verification).transpose()
}

/// Opens a verification, or joins the one open.
pub(crate) async fn request<B: Backend>(b: &B, by: &str) -> Result<AuditVerification, StoreError> {
    loop {
        // None open after the insert met one: it finished in between, and a
        // new one can be opened now.
        if let (_, Some(open)) = insert(b, by, None).await? {
            return Ok(open);
        }
    }
}

/// Opens a verification only if none is open and none was requested in the
/// last `every` (the controller's own schedule); the one opened.
pub(crate) async fn schedule<B: Backend>(
    b: &B,
    by: &str,
    every: Duration,
) -> Result<Option<AuditVerification>, StoreError> {
    let (inserted, open) = insert(b, by, Some(every)).await?;
    Ok(open.filter(|_| inserted))
}

/// Inserts a pending verification unless one is open (or, with
/// `unless_within`, one was requested that recently): whether it did, and
/// the one open after it.
async fn insert<B: Backend>(
    b: &B,
    by: &str,
    unless_within: Option<Duration>,
) -> Result<(bool, Option<AuditVerification>), StoreError> {
    let op = "requesting an audit verification";
    let now = b.now();
    let mut tx = b.begin(op).await?;
    let stmt = Stmt::new::<B>(REQUEST)
        .arg(VerificationId::at(now))
        .arg(by)
        .arg(ms(now))
        .arg(unless_within.map(|d| ms(now) - dur_ms(d)));
    let inserted = B::execute_in(&mut tx, stmt).await.op(op)? > 0;
    let open = one(&B::fetch_in(&mut tx, Stmt::new::<B>(OPEN)).await.op(op)?)?;
    if inserted {
        let stmt = Stmt::new::<B>(PRUNE).arg(i64::from(KEPT));
        B::execute_in(&mut tx, stmt).await.op(op)?;
    }
    B::commit(tx, op).await?;
    Ok((inserted, open))
}

pub(crate) async fn get<B: Backend>(
    b: &B,
    id: VerificationId,
) -> Result<AuditVerification, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(GET).arg(id))
        .await
        .op("reading an audit verification")?;
    one(&rows)?.ok_or_else(|| StoreError::NotFound {
        entity: VerificationId::ENTITY,
        id: id.to_string(),
    })
}

pub(crate) async fn latest<B: Backend>(
    b: &B,
    limit: u32,
) -> Result<Vec<AuditVerification>, StoreError> {
    b.fetch(Stmt::new::<B>(LATEST).arg(i64::from(limit)))
        .await
        .op("listing audit verifications")?
        .iter()
        .map(verification)
        .collect()
}

/// Takes the open verification for walking: a pending one, or a running one
/// whose walk was interrupted (the caller leads the only controller that
/// walks, so a running one it did not start is orphaned). One interrupted
/// [`MAX_ATTEMPTS`] times is failed instead.
pub(crate) async fn start<B: Backend>(
    b: &B,
    fence: Option<&Fence>,
) -> Result<Option<AuditVerification>, StoreError> {
    let op = "starting an audit verification";
    let now = ms(b.now());
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, fence, op).await?;
    let open = B::fetch_in(&mut tx, Stmt::new::<B>(OPEN)).await.op(op)?;
    let Some(row) = open.first() else {
        return Ok(None);
    };
    let (id, attempts): (VerificationId, i64) = (row.id("id")?, row.int("attempts")?);
    let v = if attempts >= MAX_ATTEMPTS {
        let error = format!(
            "the walk was cut off {attempts} times (its run failed or timed out, or its leader stopped)"
        );
        record_outcome::<B>(&mut tx, id, Err(&error), now, op).await?
    } else {
        let stmt = Stmt::new::<B>(START).arg(id).arg(now);
        one(&B::fetch_in(&mut tx, stmt).await.op(op)?)?
    };
    B::commit(tx, op).await?;
    Ok(v.filter(|v| v.state == VerificationState::Running))
}

/// Records how many events the walk has checked.
pub(crate) async fn progress<B: Backend>(
    b: &B,
    id: VerificationId,
    checked: u64,
) -> Result<(), StoreError> {
    let stmt = Stmt::new::<B>(PROGRESS)
        .arg(id)
        .arg(i64::try_from(checked).unwrap_or(i64::MAX));
    b.execute_write(stmt)
        .await
        .op("recording an audit verification's progress")?;
    Ok(())
}

/// Records the walk's outcome: the report, or why it stopped. `None` if it
/// was no longer open.
pub(crate) async fn finish<B: Backend>(
    b: &B,
    id: VerificationId,
    outcome: Result<&VerifyReport, &str>,
    fence: Option<&Fence>,
) -> Result<Option<AuditVerification>, StoreError> {
    let op = "finishing an audit verification";
    let now = ms(b.now());
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, fence, op).await?;
    let v = record_outcome::<B>(&mut tx, id, outcome, now, op).await?;
    B::commit(tx, op).await?;
    Ok(v)
}

/// Writes a walk's outcome on the open verification `id`; `None` if it was
/// no longer open.
async fn record_outcome<B: Backend>(
    tx: &mut B::Tx,
    id: VerificationId,
    outcome: Result<&VerifyReport, &str>,
    now: i64,
    op: &'static str,
) -> Result<Option<AuditVerification>, StoreError> {
    let (state, checked, first_seq, first_break, error) = match outcome {
        Ok(r) => (
            if r.first_break.is_some() {
                VerificationState::Broken
            } else {
                VerificationState::Intact
            },
            Some(i64::try_from(r.checked).unwrap_or(i64::MAX)),
            Some(r.first_seq),
            r.first_break.as_ref(),
            None,
        ),
        Err(e) => (VerificationState::Failed, None, None, None, Some(e)),
    };
    let stmt = Stmt::new::<B>(FINISH)
        .arg(id)
        .arg(state.as_str())
        .arg(now)
        .arg(checked)
        .arg(first_seq)
        .arg(first_break.map(|b| b.seq))
        .arg(first_break.map(|b| b.reason.as_str()))
        .arg(error);
    one(&B::fetch_in(tx, stmt).await.op(op)?)
}
