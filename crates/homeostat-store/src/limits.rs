//! Flow control: limits by key on how many jobs hold a slot and how often
//! they start (docs/flow-control.md).
//!
//! A job under limits is enqueued `waiting`. Admission moves it to
//! `queued` when every key it is under has room: a slot is held from then
//! until the job stops running, so the claim path never looks at limits
//! and a saturated key's backlog is never in the way of another key's job.
//! The database's triggers (migrations `limits`) keep each job's slots in
//! step with its state on every path that changes it and leave a wake-up
//! for the keys whose room changed; admission takes the due wake-ups and
//! decides for those keys only.
//!
//! Admission runs one at a time across replicas (a transaction-scoped
//! advisory lock on PostgreSQL; SQLite's single writer), so the counts it
//! reads cannot be raced by another admission: nothing else adds to a
//! key's slots, and what frees them leaves a wake-up behind. Each run
//! handles every due key in a batch.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeostat_model::limit::{MAX_LIMITS_PER_JOB, derive_key, validate_key};
use homeostat_model::{
    AuditAction, Id, Job, JobLimit, JobLimitStatus, JobState, KEY_FIELDS, KeySource, KeyUsage,
    LIMIT_FIELDS, Limit, LimitKey, LimitSelector, LimitSpec, LimitStrategy, LimitUsage,
    NewAuditEvent, NewJob, Rate, TenantId, ValidationError,
};
use homeostat_runtime::Fence;
use serde_json::json;

use crate::audit_log;
use crate::backend::{Backend, RowExt, Sql, Stmt, pg_judged, sqlite_now};
use crate::error::{Context, StoreError};
use crate::leases::check_fence;
use crate::time::{ms, ts};

/// How long a replica trusts its copy of the limits: the bound for a
/// limit set or deleted on another replica to apply to enqueues here.
pub(crate) const FRESH: Duration = Duration::from_secs(1);

/// Keys taken from the wake-ups in one admission.
const KEYS_PER_RUN: i64 = 1000;

/// Waiting jobs fetched for a key beyond its room: some may be held back
/// by another of their limits.
const MARGIN: i64 = 32;

/// Waiting jobs a key with no room left to count (a deleted limit's, or a
/// cancelling strategy's) is looked at per run.
const BATCH: i64 = 1000;

/// This replica's copy of the limits, refreshed when older than [`FRESH`].
#[derive(Default)]
pub(crate) struct LimitCache {
    held: Mutex<Option<(Instant, Arc<Vec<Limit>>)>>,
}

impl LimitCache {
    fn fresh(&self) -> Option<Arc<Vec<Limit>>> {
        let held = self.held.lock().unwrap();
        held.as_ref()
            .filter(|(at, _)| at.elapsed() < FRESH)
            .map(|(_, limits)| Arc::clone(limits))
    }

    fn put(&self, limits: Vec<Limit>) -> Arc<Vec<Limit>> {
        let limits = Arc::new(limits);
        *self.held.lock().unwrap() = Some((Instant::now(), Arc::clone(&limits)));
        limits
    }

    /// Forgets the copy (this replica changed a limit).
    pub(crate) fn clear(&self) {
        *self.held.lock().unwrap() = None;
    }

    /// Whether any limit may exist: true until the first look.
    pub(crate) fn maybe_in_use(&self) -> bool {
        self.held
            .lock()
            .unwrap()
            .as_ref()
            .is_none_or(|(_, limits)| !limits.is_empty())
    }
}

macro_rules! limit_columns {
    () => {
        "name, max_running, rate_starts, rate_window_ms, strategy, key_from, applies, \
         applies_queue, applies_kind, created_at, updated_at"
    };
}

const LIST: Sql = Sql::both(concat!(
    "SELECT ",
    limit_columns!(),
    " FROM limits ORDER BY name"
));

const GET: Sql = Sql::both(concat!(
    "SELECT ",
    limit_columns!(),
    " FROM limits WHERE name = $1"
));

/// `$1`..`$9` the fields, `$10` now.
const UPSERT: Sql = Sql::both(concat!(
    "INSERT INTO limits (",
    limit_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
     ON CONFLICT (name) DO UPDATE SET max_running = excluded.max_running,
       rate_starts = excluded.rate_starts, rate_window_ms = excluded.rate_window_ms,
       strategy = excluded.strategy, key_from = excluded.key_from, applies = excluded.applies,
       applies_queue = excluded.applies_queue, applies_kind = excluded.applies_kind,
       updated_at = excluded.updated_at
     RETURNING ",
    limit_columns!()
));

const DELETE: Sql = Sql::both("DELETE FROM limits WHERE name = $1");
const DELETE_STARTS: Sql = Sql::both("DELETE FROM limit_starts WHERE limit_name = $1");

/// `$1` the limit: a wake-up now for each of its keys with waiting jobs.
const WAKE_LIMIT: Sql = Sql::both(
    "INSERT INTO limit_wakeups (limit_name, key, due_at)
     SELECT DISTINCT limit_name, key, 0 FROM job_limits WHERE limit_name = $1 AND phase = 'waiting'",
);

/// `$1` the limit, `$2` the key, `$3` when.
const WAKE_KEY: Sql =
    Sql::both("INSERT INTO limit_wakeups (limit_name, key, due_at) VALUES ($1, $2, $3)");

/// Admission's lock: PostgreSQL's transaction-scoped advisory lock (the
/// number is the store's own); SQLite's write lock is held already.
const LOCK: Sql = Sql::pair(
    "SELECT 1",
    "SELECT pg_advisory_xact_lock(7525491488290488321)",
);

const NOW: Sql = Sql::pair(
    concat!("SELECT ", sqlite_now!(), " AS now"),
    concat!("SELECT ", pg_judged!(1), " AS now"),
);

/// `$1` now, `$2` how many: the due wake-ups, taken.
const TAKE_WAKEUPS: Sql = Sql::both(
    "DELETE FROM limit_wakeups WHERE id IN (
       SELECT id FROM limit_wakeups WHERE due_at <= $1 ORDER BY due_at LIMIT $2)
     RETURNING limit_name, key",
);

/// `$1` keys (JSON `[[limit, key], …]`), `$2` now: what holds each key's
/// slots and how many started within its limit's window.
const COUNTS: Sql = Sql::pair(
    "SELECT k.l AS limit_name, k.key AS key,
       (SELECT COUNT(*) FROM job_limits j WHERE j.limit_name = k.l AND j.key = k.key
          AND j.phase IN ('queued', 'running', 'stopping')
          AND (j.phase <> 'stopping' OR j.hold_until > $2)) AS holding,
       (SELECT COUNT(*) FROM job_limits j WHERE j.limit_name = k.l AND j.key = k.key
          AND j.phase IN ('queued', 'running', 'stopping') AND j.phase = 'queued') AS queued,
       (SELECT COUNT(*) FROM limit_starts s WHERE s.limit_name = k.l AND s.key = k.key
          AND s.at > $2 - (SELECT COALESCE(rate_window_ms, 0) FROM limits WHERE name = k.l)) AS recent
     FROM (SELECT p.value->>0 AS l, p.value->>1 AS key FROM json_each($1) p) k",
    "SELECT k.l AS limit_name, k.key AS key,
       (SELECT COUNT(*) FROM job_limits j WHERE j.limit_name = k.l AND j.key = k.key
          AND j.phase IN ('queued', 'running', 'stopping')
          AND (j.phase <> 'stopping' OR j.hold_until > $2::bigint)) AS holding,
       (SELECT COUNT(*) FROM job_limits j WHERE j.limit_name = k.l AND j.key = k.key
          AND j.phase IN ('queued', 'running', 'stopping') AND j.phase = 'queued') AS queued,
       (SELECT COUNT(*) FROM limit_starts s WHERE s.limit_name = k.l AND s.key = k.key
          AND s.at > $2::bigint - (SELECT COALESCE(rate_window_ms, 0) FROM limits WHERE name = k.l)) AS recent
     FROM (SELECT p->>0 AS l, p->>1 AS key FROM jsonb_array_elements($1::jsonb) p) k",
);

/// `$1` limit, `$2` key, `$3` how many: its waiting jobs in the order
/// they are admitted.
const WAITING: Sql = Sql::both(
    "SELECT job_id FROM job_limits WHERE limit_name = $1 AND key = $2 AND phase = 'waiting'
     ORDER BY priority DESC, queued_at, job_id LIMIT $3",
);

/// `$1` JSON `[{"l": limit, "key": key, "n": how many}]`: each key's
/// waiting jobs in the order they are admitted, in one statement
/// (PostgreSQL; SQLite, in process, runs [`WAITING`] per key).
const WAITING_OF_KEYS: &str =
    "SELECT k.l AS limit_name, k.key AS key, c.job_id, c.priority, c.queued_at
     FROM jsonb_to_recordset($1::jsonb) AS k(l text, key text, n bigint)
     CROSS JOIN LATERAL (
       SELECT job_id, priority, queued_at FROM job_limits
       WHERE limit_name = k.l AND key = k.key AND phase = 'waiting'
       ORDER BY priority DESC, queued_at, job_id LIMIT k.n) c";

/// `$1` limit, `$2` key, `$3` how many: its waiting jobs, newest first.
const WAITING_NEWEST: Sql = Sql::both(
    "SELECT job_id FROM job_limits WHERE limit_name = $1 AND key = $2 AND phase = 'waiting'
     ORDER BY job_id DESC LIMIT $3",
);

/// `$1` limit, `$2` key: the jobs holding its slots that can be stopped,
/// newest first.
const HOLDERS_NEWEST: Sql = Sql::both(
    "SELECT job_id FROM job_limits WHERE limit_name = $1 AND key = $2
       AND phase IN ('queued', 'running', 'stopping') AND phase <> 'stopping'
     ORDER BY job_id DESC",
);

/// `$1` job ids: every limit and key they are under.
const KEYS_OF: Sql = Sql::pair(
    "SELECT job_id, limit_name, key FROM job_limits WHERE job_id IN (SELECT value FROM json_each($1))",
    "SELECT job_id, limit_name, key FROM job_limits WHERE job_id = ANY($1)",
);

/// `$1` JSON `[{"id": …, "at": …}]`, `$2` now: admits waiting jobs, and
/// (on PostgreSQL, in the same statement) moves their slots to `queued`;
/// the trigger that follows jobs leaves this change to admission.
const ADMIT: Sql = Sql::pair(
    "UPDATE jobs SET state = 'queued', queued_at = t.at, updated_at = $2
     FROM (SELECT value->>'id' AS id, value->>'at' AS at FROM json_each($1)) t
     WHERE jobs.id = t.id AND jobs.state = 'waiting'
     RETURNING jobs.id AS id, jobs.tenant_id AS tenant_id, jobs.queue AS queue",
    "WITH a AS (
       UPDATE jobs SET state = 'queued', queued_at = t.at, updated_at = $2
       FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, at bigint)
       WHERE jobs.id = t.id AND jobs.state = 'waiting'
       RETURNING jobs.id, jobs.tenant_id, jobs.queue),
     s AS (UPDATE job_limits SET phase = 'queued' FROM a WHERE job_limits.job_id = a.id)
     SELECT id, tenant_id, queue FROM a",
);

/// `$1` job ids: their slots held from now (SQLite's half of [`ADMIT`]).
const ADMITTED_SLOTS: &str =
    "UPDATE job_limits SET phase = 'queued' WHERE job_id IN (SELECT value FROM json_each($1))";

/// `$1` job ids, `$2` now, `$3` why: cancels jobs a limit's strategy
/// gave up; a running one's agent hears it at its next heartbeat.
const CANCEL: Sql = Sql::pair(
    "UPDATE jobs SET state = 'cancelled', finished_at = $2, updated_at = $2, last_error = $3,
       lease_expires_at = NULL, timeout_at = NULL
     WHERE id IN (SELECT value FROM json_each($1))
       AND state IN ('waiting', 'queued', 'running')
     RETURNING id, tenant_id",
    "UPDATE jobs SET state = 'cancelled', finished_at = $2, updated_at = $2, last_error = $3,
       lease_expires_at = NULL, timeout_at = NULL
     WHERE id = ANY($1) AND state IN ('waiting', 'queued', 'running')
     RETURNING id, tenant_id",
);

/// `$1` limit, `$2` now: per key, what holds and waits.
const USAGE: Sql = Sql::both(
    "SELECT key,
       SUM(CASE WHEN phase = 'running' THEN 1 ELSE 0 END) AS running,
       SUM(CASE WHEN phase = 'queued' THEN 1 ELSE 0 END) AS queued,
       SUM(CASE WHEN phase = 'stopping' AND hold_until > $2 THEN 1 ELSE 0 END) AS stopping,
       SUM(CASE WHEN phase = 'waiting' THEN 1 ELSE 0 END) AS waiting
     FROM job_limits WHERE limit_name = $1 AND phase <> 'idle' GROUP BY key",
);

/// `$1` limit, `$2` the window's start: starts per key.
const USAGE_STARTS: Sql = Sql::both(
    "SELECT key, COUNT(*) AS n FROM limit_starts WHERE limit_name = $1 AND at > $2 GROUP BY key",
);

/// `$1` the oldest start kept.
const PRUNE_STARTS: Sql = Sql::both("DELETE FROM limit_starts WHERE at <= $1");
/// `$1` now.
const PRUNE_STOPPED: Sql =
    Sql::both("DELETE FROM job_limits WHERE phase = 'stopping' AND hold_until <= $1");

fn limit_row(r: &impl RowExt) -> Result<Limit, StoreError> {
    let op = "reading a limit";
    let strategy = r.text("strategy")?;
    let key_from = r.text("key_from")?;
    let rate = match (r.opt_int("rate_starts")?, r.opt_int("rate_window_ms")?) {
        (Some(starts), Some(window)) => Some(Rate {
            starts: crate::error::in_range(op, "rate_starts", starts)?,
            per_secs: crate::error::in_range(op, "rate_window_ms", window / 1000)?,
        }),
        _ => None,
    };
    Ok(Limit {
        name: r.text("name")?,
        spec: LimitSpec {
            max_running: r
                .opt_int("max_running")?
                .map(|n| crate::error::in_range(op, "max_running", n))
                .transpose()?,
            rate,
            strategy: strategy
                .parse()
                .map_err(|_| crate::error::corrupt(op, format!("strategy {strategy:?}")))?,
            key_from: key_from
                .parse()
                .map_err(|_| crate::error::corrupt(op, format!("key_from {key_from:?}")))?,
            applies_to: r.flag("applies")?.then(|| LimitSelector {
                queue: r.opt_text("applies_queue").ok().flatten(),
                kind: r.opt_text("applies_kind").ok().flatten(),
            }),
        },
        created_at: ts(r.int("created_at")?),
        updated_at: ts(r.int("updated_at")?),
    })
}

/// Every limit, by name.
pub(crate) async fn list<B: Backend>(b: &B) -> Result<Vec<Limit>, StoreError> {
    b.fetch(Stmt::new::<B>(LIST))
        .await
        .op("listing limits")?
        .iter()
        .map(limit_row)
        .collect()
}

/// The limits, from this replica's copy when fresh.
pub(crate) async fn definitions<B: Backend>(
    b: &B,
    cache: &LimitCache,
) -> Result<Arc<Vec<Limit>>, StoreError> {
    if let Some(limits) = cache.fresh() {
        return Ok(limits);
    }
    Ok(cache.put(list(b).await?))
}

/// One limit.
pub(crate) async fn get<B: Backend>(b: &B, name: &str) -> Result<Limit, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(GET).arg(name))
        .await
        .op("reading a limit")?;
    limit_row(rows.first().ok_or_else(|| StoreError::NotFound {
        entity: "limit",
        id: name.to_owned(),
    })?)
}

/// Creates or changes limit `name`; whether it was created. Jobs already
/// under it keep their keys; its keys with waiting jobs are looked at
/// again under the new values at once. Audited.
pub(crate) async fn set<B: Backend>(
    b: &B,
    name: &str,
    spec: &LimitSpec,
    actor: &str,
) -> Result<(Limit, bool), StoreError> {
    homeostat_model::limit::validate_limit_name("name", name)?;
    spec.validate()?;
    let op = "setting a limit";
    let now = ms(b.now());
    let mut tx = b.begin(op).await?;
    let existed = !B::fetch_in(&mut tx, Stmt::new::<B>(GET).arg(name))
        .await
        .op(op)?
        .is_empty();
    let selector = spec.applies_to.clone().unwrap_or_default();
    let stmt = Stmt::new::<B>(UPSERT)
        .arg(name)
        .arg(spec.max_running.map(i64::from))
        .arg(spec.rate.map(|r| i64::from(r.starts)))
        .arg(spec.rate.map(|r| (r.per_secs as i64).saturating_mul(1000)))
        .arg(spec.strategy.as_str())
        .arg(spec.key_from.as_wire())
        .arg(spec.applies_to.is_some())
        .arg(selector.queue.as_deref())
        .arg(selector.kind.as_deref())
        .arg(now);
    let rows = B::fetch_in(&mut tx, stmt).await.op(op)?;
    let limit = limit_row(
        rows.first()
            .ok_or_else(|| crate::error::corrupt(op, "the upsert returned no row"))?,
    )?;
    B::execute_in(&mut tx, Stmt::new::<B>(WAKE_LIMIT).arg(name))
        .await
        .op(op)?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::LimitSet.into(),
        subject: format!("limit:{name}"),
        details: json!({"created": !existed, "limit": limit}),
    };
    audit_log::append::<B>(&mut tx, &[event], now).await?;
    B::commit(tx, op).await?;
    Ok((limit, !existed))
}

/// Deletes limit `name`. Its jobs stay under their other limits; those
/// waiting on it alone are admitted by the next admission, as a key of a
/// limit that no longer exists has room for everything. Audited.
pub(crate) async fn delete<B: Backend>(b: &B, name: &str, actor: &str) -> Result<(), StoreError> {
    let op = "deleting a limit";
    let now = ms(b.now());
    let mut tx = b.begin(op).await?;
    B::execute_in(&mut tx, Stmt::new::<B>(LOCK)).await.op(op)?;
    let deleted = B::execute_in(&mut tx, Stmt::new::<B>(DELETE).arg(name))
        .await
        .op(op)?;
    if deleted == 0 {
        return Err(StoreError::NotFound {
            entity: "limit",
            id: name.to_owned(),
        });
    }
    B::execute_in(&mut tx, Stmt::new::<B>(WAKE_LIMIT).arg(name))
        .await
        .op(op)?;
    B::execute_in(&mut tx, Stmt::new::<B>(DELETE_STARTS).arg(name))
        .await
        .op(op)?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::LimitDeleted.into(),
        subject: format!("limit:{name}"),
        details: json!({}),
    };
    audit_log::append::<B>(&mut tx, &[event], now).await?;
    B::commit(tx, op).await
}

/// The jobs `jobs` of `tenant` with their limits resolved: the keys the
/// limits derive filled in and the limits that apply to them by queue and
/// kind added. `None` when no job is under any limit (nothing to change).
pub(crate) fn resolve(
    limits: &[Limit],
    tenant: TenantId,
    jobs: &[NewJob],
) -> Result<Option<Vec<NewJob>>, StoreError> {
    let automatic: Vec<&Limit> = limits
        .iter()
        .filter(|l| l.spec.applies_to.is_some())
        .collect();
    let touched = |job: &NewJob| {
        !job.limits.is_empty()
            || automatic.iter().any(|l| {
                l.spec
                    .applies_to
                    .as_ref()
                    .is_some_and(|s| s.selects(&job.queue, &job.kind))
            })
    };
    if !jobs.iter().any(touched) {
        return Ok(None);
    }
    let by_name: HashMap<&str, &Limit> = limits.iter().map(|l| (l.name.as_str(), l)).collect();
    let tenant_key = tenant.to_string();
    jobs.iter()
        .map(|job| {
            let mut out = job.clone();
            out.limits = resolve_job(&by_name, &automatic, &tenant_key, job)?;
            Ok(out)
        })
        .collect::<Result<Vec<_>, StoreError>>()
        .map(Some)
}

fn resolve_job(
    by_name: &HashMap<&str, &Limit>,
    automatic: &[&Limit],
    tenant: &str,
    job: &NewJob,
) -> Result<Vec<JobLimit>, StoreError> {
    let mut out = Vec::with_capacity(job.limits.len());
    for (i, named) in job.limits.iter().enumerate() {
        let field = LIMIT_FIELDS[i.min(MAX_LIMITS_PER_JOB - 1)];
        let key_field = KEY_FIELDS[i.min(MAX_LIMITS_PER_JOB - 1)];
        let limit = by_name.get(named.limit.as_str()).ok_or_else(|| {
            ValidationError::new(field, format!("there is no limit named {:?}", named.limit))
        })?;
        let key = match (&limit.spec.key_from, &named.key) {
            (KeySource::Job, Some(key)) => key.clone(),
            (KeySource::Job, None) => {
                return Err(ValidationError::new(
                    key_field,
                    format!(
                        "limit {:?} takes its key from the job: name one",
                        limit.name
                    ),
                )
                .into());
            }
            (source, Some(_)) => {
                return Err(ValidationError::new(
                    key_field,
                    format!(
                        "limit {:?} takes its key from {source}; a job may not name one",
                        limit.name
                    ),
                )
                .into());
            }
            (source, None) => derive_key(source, tenant, &job.payload)
                .map_err(|why| ValidationError::new(key_field, why))?,
        };
        validate_key(key_field, &key)?;
        out.push(JobLimit::new(&limit.name, key));
    }
    for limit in automatic {
        let selected = limit
            .spec
            .applies_to
            .as_ref()
            .is_some_and(|s| s.selects(&job.queue, &job.kind));
        if !selected || out.iter().any(|l| l.limit == limit.name) {
            continue;
        }
        let key = derive_key(&limit.spec.key_from, tenant, &job.payload).map_err(|why| {
            ValidationError::new(
                "limits",
                format!("limit {:?} applies to this job: {why}", limit.name),
            )
        })?;
        validate_key("limits", &key)?;
        out.push(JobLimit::new(&limit.name, key));
    }
    if out.len() > MAX_LIMITS_PER_JOB {
        return Err(ValidationError::new(
            "limits",
            format!(
                "a job may be under at most {MAX_LIMITS_PER_JOB} limits, counting those that apply to its queue and kind; this one would be under {}",
                out.len()
            ),
        )
        .into());
    }
    Ok(out)
}

/// What the store keeps of a job's limits: `[[limit, key], …]` by limit,
/// or `None` for a job under none.
pub(crate) fn stored_keys(job: &NewJob) -> Option<String> {
    if job.limits.is_empty() {
        return None;
    }
    let mut pairs: Vec<(&str, &str)> = job
        .limits
        .iter()
        .map(|l| (l.limit.as_str(), l.key.as_deref().unwrap_or_default()))
        .collect();
    pairs.sort_unstable();
    Some(serde_json::to_string(&pairs).expect("pairs of strings serialize"))
}

type Pair = (String, String);

/// A count from the database as a length (none below zero).
fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

fn pairs_json(keys: &[&Pair]) -> String {
    serde_json::to_string(keys).expect("pairs of strings serialize")
}

/// How a key stands, as admission counts it.
#[derive(Debug, Clone, Copy, Default)]
struct Room {
    /// Slots left (`None`: no running maximum).
    slots: Option<i64>,
    /// Starts left in the window (`None`: no rate).
    starts: Option<i64>,
}

impl Room {
    fn of(limit: Option<&Limit>, holding: i64, queued: i64, recent: i64) -> Self {
        let Some(limit) = limit else {
            return Self::default();
        };
        Self {
            slots: limit.spec.max_running.map(|m| i64::from(m) - holding),
            starts: limit
                .spec
                .rate
                .map(|r| i64::from(r.starts) - queued - recent),
        }
    }

    fn free(&self) -> i64 {
        self.slots
            .unwrap_or(BATCH)
            .min(self.starts.unwrap_or(BATCH))
            .min(BATCH)
    }

    fn take(&mut self) {
        if let Some(s) = self.slots.as_mut() {
            *s -= 1;
        }
        if let Some(s) = self.starts.as_mut() {
            *s -= 1;
        }
    }
}

/// What one admission did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Jobs moved from waiting to queued, per tenant and queue.
    pub queued: Vec<(TenantId, String, u32)>,
    /// Jobs a limit's strategy cancelled.
    pub cancelled: u64,
    /// Whether due wake-ups were left for another run.
    pub more: bool,
}

impl Admitted {
    /// How many jobs were queued.
    pub fn queued_count(&self) -> u64 {
        self.queued.iter().map(|(_, _, n)| u64::from(*n)).sum()
    }
}

async fn counts<B: Backend>(
    tx: &mut B::Tx,
    keys: &[&Pair],
    now: i64,
    limits: &HashMap<&str, &Limit>,
    into: &mut HashMap<Pair, Room>,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let json = pairs_json(keys);
    let stmt = Stmt::new::<B>(COUNTS).arg(json.as_str()).arg(now);
    for r in B::fetch_in(tx, stmt).await.op("counting limits' slots")? {
        let pair = (r.text("limit_name")?, r.text("key")?);
        let room = Room::of(
            limits.get(pair.0.as_str()).copied(),
            r.int("holding")?,
            r.int("queued")?,
            r.int("recent")?,
        );
        into.insert(pair, room);
    }
    Ok(())
}

async fn job_ids<B: Backend>(tx: &mut B::Tx, stmt: Stmt<'_>) -> Result<Vec<Id>, StoreError> {
    B::fetch_in(tx, stmt)
        .await
        .op("reading a key's jobs")?
        .iter()
        .map(|r| r.id("job_id"))
        .collect()
}

/// Admits the waiting jobs of the keys whose wake-ups are due, as far as
/// every limit each job is under has room; cancels what a cancelling
/// strategy gives up. `actor` is audited for cancels.
pub(crate) async fn admit<B: Backend>(b: &B, actor: &str) -> Result<Admitted, StoreError> {
    let op = "admitting jobs under limits";
    let at = b.at();
    let mut tx = b.begin(op).await?;
    B::execute_in(&mut tx, Stmt::new::<B>(LOCK)).await.op(op)?;
    let now = match at.judged {
        Some(now) => now,
        None => B::fetch_in(&mut tx, Stmt::new::<B>(NOW).arg(None::<i64>))
            .await
            .op(op)?
            .first()
            .ok_or_else(|| crate::error::corrupt(op, "no time"))?
            .int("now")?,
    };
    let taken = B::fetch_in(
        &mut tx,
        Stmt::new::<B>(TAKE_WAKEUPS).arg(now).arg(KEYS_PER_RUN),
    )
    .await
    .op(op)?;
    let mut out = Admitted {
        more: taken.len() as i64 == KEYS_PER_RUN,
        ..Admitted::default()
    };
    let due: BTreeSet<Pair> = taken
        .iter()
        .map(|r| Ok((r.text("limit_name")?, r.text("key")?)))
        .collect::<Result<_, StoreError>>()?;
    if due.is_empty() {
        B::commit(tx, op).await?;
        return Ok(out);
    }
    let all: Vec<Limit> = B::fetch_in(&mut tx, Stmt::new::<B>(LIST))
        .await
        .op(op)?
        .iter()
        .map(limit_row)
        .collect::<Result<_, _>>()?;
    let limits: HashMap<&str, &Limit> = all.iter().map(|l| (l.name.as_str(), l)).collect();
    let due_keys: Vec<&Pair> = due.iter().collect();
    let mut rooms: HashMap<Pair, Room> = HashMap::new();
    counts::<B>(&mut tx, &due_keys, now, &limits, &mut rooms).await?;

    // The keys admitted in order, each with its room and how many of its
    // waiting jobs to look at: at most twice its room, so that a job held
    // back by another of its limits does not stop the next.
    let wanted: Vec<(&Pair, i64)> = due
        .iter()
        .filter_map(|pair| {
            let limit = limits.get(pair.0.as_str()).copied();
            let strategy = limit.map_or(LimitStrategy::Wait, |l| l.spec.strategy);
            let free = rooms.get(pair).copied().unwrap_or_default().free();
            matches!(strategy, LimitStrategy::Wait | LimitStrategy::RoundRobin)
                .then_some((pair, free))
        })
        .filter(|(_, free)| *free > 0)
        .map(|(pair, free)| (pair, free + free.min(MARGIN)))
        .collect();
    let mut prefetched: HashMap<Pair, Vec<(i64, i64, Id)>> = HashMap::new();
    if B::POSTGRES && !wanted.is_empty() {
        let json = serde_json::Value::Array(
            wanted
                .iter()
                .map(|(p, n)| json!({"l": p.0, "key": p.1, "n": n}))
                .collect(),
        )
        .to_string();
        let stmt = Stmt::new::<B>(Sql::both(WAITING_OF_KEYS)).arg(json.as_str());
        for r in B::fetch_in(&mut tx, stmt).await.op(op)? {
            prefetched
                .entry((r.text("limit_name")?, r.text("key")?))
                .or_default()
                .push((-r.int("priority")?, r.int("queued_at")?, r.id("job_id")?));
        }
        for list in prefetched.values_mut() {
            list.sort_unstable();
        }
    }
    let wanted: HashMap<&Pair, i64> = wanted.into_iter().collect();

    // Each due key's candidates in its order, and what its strategy gives up.
    let mut lists: Vec<(Pair, Vec<Id>)> = Vec::with_capacity(due.len());
    let mut cancel: Vec<(Id, Pair)> = Vec::new();
    let mut rewake: Vec<Pair> = Vec::new();
    for pair in &due {
        let limit = limits.get(pair.0.as_str()).copied();
        let room = rooms.get(pair).copied().unwrap_or_default();
        let strategy = limit.map_or(LimitStrategy::Wait, |l| l.spec.strategy);
        let (l, k) = (pair.0.as_str(), pair.1.as_str());
        let candidates = match strategy {
            LimitStrategy::Wait | LimitStrategy::RoundRobin => {
                let Some(&want) = wanted.get(pair) else {
                    continue;
                };
                let ids = if B::POSTGRES {
                    prefetched
                        .remove(pair)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(_, _, id)| id)
                        .collect()
                } else {
                    job_ids::<B>(&mut tx, Stmt::new::<B>(WAITING).arg(l).arg(k).arg(want)).await?
                };
                if ids.len() as i64 == want {
                    rewake.push(pair.clone());
                }
                ids
            }
            LimitStrategy::CancelNewest => {
                // The oldest waiting take the free slots; the rest are
                // cancelled, unless only the rate holds them back.
                let slots = room.slots.unwrap_or(BATCH).max(0);
                let ids = job_ids::<B>(
                    &mut tx,
                    Stmt::new::<B>(WAITING).arg(l).arg(k).arg(slots + BATCH),
                )
                .await?;
                if ids.len() as i64 == slots + BATCH {
                    rewake.push(pair.clone());
                }
                let keep = count(slots).min(ids.len());
                cancel.extend(ids[keep..].iter().map(|id| (*id, pair.clone())));
                ids[..keep].to_vec()
            }
            LimitStrategy::CancelOldest => {
                // The newest jobs of the key, waiting or holding, keep its
                // slots; the older are cancelled. A running job cancelled
                // holds its slot until its agent has had its lease to stop.
                let max = count(
                    limit
                        .and_then(|l| l.spec.max_running)
                        .map_or(BATCH, i64::from),
                );
                let waiting = job_ids::<B>(
                    &mut tx,
                    Stmt::new::<B>(WAITING_NEWEST).arg(l).arg(k).arg(BATCH),
                )
                .await?;
                if waiting.len() as i64 == BATCH {
                    rewake.push(pair.clone());
                }
                if waiting.is_empty() {
                    continue;
                }
                let holders =
                    job_ids::<B>(&mut tx, Stmt::new::<B>(HOLDERS_NEWEST).arg(l).arg(k)).await?;
                let mut all: Vec<(Id, bool)> = waiting
                    .iter()
                    .map(|id| (*id, true))
                    .chain(holders.iter().map(|id| (*id, false)))
                    .collect();
                all.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
                let mut kept = Vec::new();
                for (i, (id, is_waiting)) in all.into_iter().enumerate() {
                    if i >= max {
                        cancel.push((id, pair.clone()));
                    } else if is_waiting {
                        kept.push(id);
                    }
                }
                kept.reverse();
                kept
            }
        };
        if !candidates.is_empty() {
            lists.push((pair.clone(), candidates));
        }
    }

    // Cancel first: a queued job cancelled frees its slot for this run.
    if !cancel.is_empty() {
        let ids: Vec<Id> = cancel.iter().map(|(id, _)| *id).collect();
        let why = cancel.first().map(|(_, (l, k))| {
            format!(
                "cancelled by limit {l} (key {k}): its strategy gives the key's slots to other jobs"
            )
        });
        let stmt = Stmt::new::<B>(CANCEL)
            .arg(ids.as_slice())
            .arg(now)
            .arg(why.as_deref());
        let rows = B::fetch_in(&mut tx, stmt).await.op(op)?;
        out.cancelled = rows.len() as u64;
        let mut events = Vec::new();
        for (id, (l, k)) in &cancel {
            let Some(row) = rows
                .iter()
                .find(|r| r.id::<Id>("id").is_ok_and(|x| x == *id))
            else {
                continue;
            };
            events.push(NewAuditEvent {
                actor: actor.to_owned(),
                action: AuditAction::JobsLimitCancelled.into(),
                subject: format!("job:{id}"),
                details: json!({"limit": l, "key": k, "tenant_id": row.id::<TenantId>("tenant_id")?}),
            });
        }
        audit_log::append::<B>(&mut tx, &events, ms(at.now)).await?;
        rooms.clear();
        counts::<B>(&mut tx, &due_keys, now, &limits, &mut rooms).await?;
    }

    // Every limit the candidates are under, with its room.
    let candidates: Vec<Id> = lists
        .iter()
        .flat_map(|(_, ids)| ids.iter().copied())
        .collect();
    let mut keys_of: HashMap<Id, Vec<Pair>> = HashMap::new();
    if !candidates.is_empty() {
        let rows = B::fetch_in(&mut tx, Stmt::new::<B>(KEYS_OF).arg(candidates.as_slice()))
            .await
            .op(op)?;
        for r in &rows {
            keys_of
                .entry(r.id("job_id")?)
                .or_default()
                .push((r.text("limit_name")?, r.text("key")?));
        }
        let other: BTreeSet<&Pair> = keys_of
            .values()
            .flatten()
            .filter(|p| !rooms.contains_key(*p))
            .collect();
        let other: Vec<&Pair> = other.into_iter().collect();
        let mut more = HashMap::new();
        counts::<B>(&mut tx, &other, now, &limits, &mut more).await?;
        rooms.extend(more);
    }

    // Keys take turns: every key's first candidate, then every second …
    let mut admit: Vec<serde_json::Value> = Vec::new();
    let mut decided: HashSet<Id> = HashSet::new();
    let mut turn = 0;
    loop {
        let mut any = false;
        for (pair, ids) in &lists {
            let Some(id) = ids.get(turn) else { continue };
            any = true;
            if !decided.insert(*id) {
                continue;
            }
            let Some(keys) = keys_of.get(id) else {
                continue;
            };
            if keys
                .iter()
                .all(|p| rooms.get(p).is_none_or(|r| r.free() > 0))
            {
                for p in keys {
                    if let Some(r) = rooms.get_mut(p) {
                        r.take();
                    }
                }
                // Round-robin keys spread their jobs in the claim order, a
                // millisecond apart, so that agents serve keys in turn.
                let spread = limits
                    .get(pair.0.as_str())
                    .filter(|l| l.spec.strategy == LimitStrategy::RoundRobin)
                    .map_or(0, |_| turn as i64);
                admit.push(json!({"id": id.to_string(), "at": now + spread}));
            }
        }
        if !any {
            break;
        }
        turn += 1;
    }
    if !admit.is_empty() {
        let json = serde_json::Value::Array(admit).to_string();
        let stmt = Stmt::new::<B>(ADMIT).arg(json.as_str()).arg(now);
        let rows = B::fetch_in(&mut tx, stmt).await.op(op)?;
        if !B::POSTGRES {
            let ids: Vec<Id> = rows.iter().map(|r| r.id("id")).collect::<Result<_, _>>()?;
            let stmt = Stmt::new::<B>(Sql::both(ADMITTED_SLOTS)).arg(ids.as_slice());
            B::execute_in(&mut tx, stmt).await.op(op)?;
        }
        let mut by: HashMap<(TenantId, String), u32> = HashMap::new();
        for r in &rows {
            *by.entry((r.id("tenant_id")?, r.text("queue")?))
                .or_default() += 1;
        }
        out.queued = by.into_iter().map(|((t, q), n)| (t, q, n)).collect();
    }
    // A key whose waiting jobs were not all looked at, with room left,
    // is looked at again: at once when this run admitted some of them,
    // else after a pause (what held them back frees with a wake-up of its
    // own; the pause bounds a run that admits nothing).
    for pair in rewake {
        if rooms.get(&pair).is_none_or(|r| r.free() > 0) {
            let stmt = Stmt::new::<B>(WAKE_KEY)
                .arg(pair.0.as_str())
                .arg(pair.1.as_str())
                .arg(now + 1000);
            B::execute_in(&mut tx, stmt).await.op(op)?;
        }
    }
    B::commit(tx, op).await?;
    Ok(out)
}

/// Deletes starts older than every window and slots of stopped jobs past
/// their hold; fenced by the caller's lease.
pub(crate) async fn prune<B: Backend>(b: &B, fence: Option<&Fence>) -> Result<u64, StoreError> {
    let op = "pruning limits' records";
    let now = ms(b.now());
    let longest = list(b)
        .await?
        .iter()
        .filter_map(|l| l.spec.rate)
        .map(|r| r.per_secs as i64 * 1000)
        .max()
        .unwrap_or(0);
    let mut tx = b.begin(op).await?;
    check_fence::<B>(&mut tx, fence, op).await?;
    let starts = B::execute_in(&mut tx, Stmt::new::<B>(PRUNE_STARTS).arg(now - longest))
        .await
        .op(op)?;
    let stopped = B::execute_in(&mut tx, Stmt::new::<B>(PRUNE_STOPPED).arg(now))
        .await
        .op(op)?;
    B::commit(tx, op).await?;
    Ok(starts + stopped)
}

fn usage_of(
    limit: &Limit,
    rows: &[(String, u64, u64, u64, u64)],
    starts: &HashMap<String, u64>,
) -> LimitUsage {
    let mut keys: HashMap<&str, KeyUsage> = HashMap::new();
    for (key, running, queued, stopping, waiting) in rows {
        keys.insert(
            key,
            KeyUsage {
                key: key.clone(),
                running: *running,
                queued: *queued,
                stopping: *stopping,
                waiting: *waiting,
                recent_starts: starts.get(key).copied().unwrap_or(0),
            },
        );
    }
    let mut usage = LimitUsage {
        limit: limit.clone(),
        holding: 0,
        running: 0,
        waiting: 0,
        delayed_by_rate: 0,
        active_keys: 0,
        hottest: Vec::new(),
    };
    let mut all: Vec<KeyUsage> = keys.into_values().collect();
    for k in &all {
        let holding = k.running + k.queued + k.stopping;
        usage.holding += holding;
        usage.running += k.running;
        usage.waiting += k.waiting;
        if holding + k.waiting > 0 {
            usage.active_keys += 1;
        }
        let slot_free = limit
            .spec
            .max_running
            .is_none_or(|m| holding < u64::from(m));
        let rate_full = limit
            .spec
            .rate
            .is_some_and(|r| k.queued + k.recent_starts >= u64::from(r.starts));
        if slot_free && rate_full {
            usage.delayed_by_rate += k.waiting;
        }
    }
    all.retain(|k| k.running + k.queued + k.stopping + k.waiting > 0);
    all.sort_by(|a, b| {
        (b.waiting, b.running + b.queued + b.stopping, &a.key).cmp(&(
            a.waiting,
            a.running + a.queued + a.stopping,
            &b.key,
        ))
    });
    all.truncate(20);
    usage.hottest = all;
    usage
}

/// How limit `limit` stands: totals and its busiest keys.
pub(crate) async fn usage<B: Backend>(b: &B, limit: &Limit) -> Result<LimitUsage, StoreError> {
    let op = "reading a limit's usage";
    let now = ms(b.now());
    let rows = b
        .fetch_unpinned(Stmt::new::<B>(USAGE).arg(limit.name.as_str()).arg(now))
        .await
        .op(op)?
        .iter()
        .map(|r| {
            Ok((
                r.text("key")?,
                r.num("running")?,
                r.num("queued")?,
                r.num("stopping")?,
                r.num("waiting")?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut starts = HashMap::new();
    if let Some(rate) = limit.spec.rate {
        let since = now - rate.per_secs as i64 * 1000;
        for r in b
            .fetch_unpinned(
                Stmt::new::<B>(USAGE_STARTS)
                    .arg(limit.name.as_str())
                    .arg(since),
            )
            .await
            .op(op)?
        {
            starts.insert(r.text("key")?, r.num("n")?);
        }
    }
    Ok(usage_of(limit, &rows, &starts))
}

/// How each limit and key job `job` is under stands now.
pub(crate) async fn job_status<B: Backend>(
    b: &B,
    job: &Job,
) -> Result<Vec<JobLimitStatus>, StoreError> {
    if job.limits.is_empty() {
        return Ok(Vec::new());
    }
    let op = "reading a job's limits";
    let now = ms(b.now());
    let pairs: Vec<Pair> = job
        .limits
        .iter()
        .map(|k| (k.limit.clone(), k.key.clone()))
        .collect();
    let refs: Vec<&Pair> = pairs.iter().collect();
    let json = pairs_json(&refs);
    let rows = b
        .fetch(Stmt::new::<B>(COUNTS).arg(json.as_str()).arg(now))
        .await
        .op(op)?;
    let limits = list(b).await?;
    let mut out = Vec::new();
    for r in &rows {
        let key = LimitKey {
            limit: r.text("limit_name")?,
            key: r.text("key")?,
        };
        let limit = limits.iter().find(|l| l.name == key.limit);
        let (holding, queued, recent) = (r.int("holding")?, r.int("queued")?, r.int("recent")?);
        let room = Room::of(limit, holding, queued, recent);
        out.push(JobLimitStatus {
            max_running: limit.and_then(|l| l.spec.max_running),
            rate: limit.and_then(|l| l.spec.rate),
            holding: u64::try_from(holding).unwrap_or(0),
            recent_starts: u64::try_from(recent).unwrap_or(0),
            blocking: job.state == JobState::Waiting && limit.is_some() && room.free() <= 0,
            key,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, spec: LimitSpec) -> Limit {
        Limit {
            name: name.into(),
            spec,
            created_at: jiff::Timestamp::UNIX_EPOCH,
            updated_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn nothing_is_resolved_when_no_job_is_under_a_limit() {
        let limits = vec![limit(
            "per-customer",
            LimitSpec {
                max_running: Some(2),
                ..LimitSpec::default()
            },
        )];
        let jobs = vec![NewJob::new("q", "k")];
        assert!(
            resolve(&limits, TenantId::at(jiff::Timestamp::UNIX_EPOCH), &jobs)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn keys_come_from_the_job_the_payload_or_the_tenant_and_selected_limits_apply() {
        let tenant = TenantId::at(jiff::Timestamp::UNIX_EPOCH);
        let limits = vec![
            limit(
                "per-customer",
                LimitSpec {
                    max_running: Some(2),
                    key_from: KeySource::Payload("/customer".into()),
                    ..LimitSpec::default()
                },
            ),
            limit(
                "named",
                LimitSpec {
                    max_running: Some(1),
                    ..LimitSpec::default()
                },
            ),
            limit(
                "tenant-wide",
                LimitSpec {
                    max_running: Some(10),
                    key_from: KeySource::Tenant,
                    applies_to: Some(LimitSelector {
                        queue: Some("builds".into()),
                        kind: None,
                    }),
                    ..LimitSpec::default()
                },
            ),
        ];
        let mut job = NewJob::new("builds", "compile");
        job.payload = json!({"customer": 42});
        job.limits = vec![
            JobLimit {
                limit: "per-customer".into(),
                key: None,
            },
            JobLimit::new("named", "a"),
        ];
        let resolved = resolve(&limits, tenant, &[job.clone()]).unwrap().unwrap();
        assert_eq!(
            stored_keys(&resolved[0]).unwrap(),
            format!(r#"[["named","a"],["per-customer","42"],["tenant-wide","{tenant}"]]"#)
        );

        job.limits[1].key = None;
        let err = resolve(&limits, tenant, &[job.clone()]).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(e) if e.field == "limits[1].key"));

        job.limits[1] = JobLimit::new("nope", "a");
        let err = resolve(&limits, tenant, &[job]).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(e) if e.field == "limits[1].limit"));
    }

    #[test]
    fn a_key_is_full_when_either_its_slots_or_its_starts_are_used() {
        let spec = LimitSpec {
            max_running: Some(2),
            rate: Some(Rate {
                starts: 3,
                per_secs: 60,
            }),
            ..LimitSpec::default()
        };
        let l = limit("l", spec);
        assert_eq!(Room::of(Some(&l), 1, 0, 0).free(), 1);
        assert_eq!(Room::of(Some(&l), 0, 1, 2).free(), 0);
        let mut room = Room::of(Some(&l), 0, 0, 1);
        room.take();
        assert_eq!(room.free(), 1);
        assert_eq!(Room::of(None, 5, 5, 5).free(), BATCH);
    }
}
