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
//! Admission itself is `admission.rs`; here are the limits' definitions,
//! how a job's limits are resolved at enqueue, and what the limits show.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeostat_model::limit::{MAX_LIMITS_PER_JOB, derive_key, validate_key};
use homeostat_model::{
    AuditAction, Job, JobLimit, JobLimitStatus, JobState, KEY_FIELDS, KeySource, KeyUsage,
    LIMIT_FIELDS, Limit, LimitKey, LimitScope, LimitSelector, LimitSpec, LimitUsage, NewAuditEvent,
    NewJob, Rate, TenantId, ValidationError,
};
use homeostat_runtime::Fence;
use serde_json::json;

use crate::admission::{COUNTS, LOCK, Pair, Room, pairs_json};
use crate::audit_log;
use crate::backend::{Backend, RowExt, Sql, Stmt};
use crate::error::{Context, StoreError};
use crate::leases::check_fence;
use crate::time::{ms, ts};

/// How long a replica trusts its copy of the limits: the bound for a
/// limit set or deleted on another replica to apply to enqueues here.
pub(crate) const FRESH: Duration = Duration::from_secs(1);

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
         applies_queue, applies_kind, created_at, updated_at, scope"
    };
}

pub(crate) const LIST: Sql = Sql::both(concat!(
    "SELECT ",
    limit_columns!(),
    " FROM limits ORDER BY name"
));

const GET: Sql = Sql::both(concat!(
    "SELECT ",
    limit_columns!(),
    " FROM limits WHERE name = $1"
));

/// `$1`..`$9` the fields, `$10` now, `$11` the scope.
const UPSERT: Sql = Sql::both(concat!(
    "INSERT INTO limits (",
    limit_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)
     ON CONFLICT (name) DO UPDATE SET max_running = excluded.max_running,
       rate_starts = excluded.rate_starts, rate_window_ms = excluded.rate_window_ms,
       strategy = excluded.strategy, key_from = excluded.key_from, applies = excluded.applies,
       applies_queue = excluded.applies_queue, applies_kind = excluded.applies_kind,
       updated_at = excluded.updated_at, scope = excluded.scope
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

/// `$1` limit, `$2` now: per key, what holds and waits. Running or
/// queued by the job's own state: a claim leaves the slot's phase as it was
/// unless the job is under a rate (migrations `limits`).
const USAGE: Sql = Sql::both(
    "SELECT jl.key AS key,
       SUM(CASE WHEN jl.phase IN ('queued', 'running') AND j.state = 'running' THEN 1 ELSE 0 END)
         AS running,
       SUM(CASE WHEN jl.phase IN ('queued', 'running') AND j.state = 'queued' THEN 1 ELSE 0 END)
         AS queued,
       SUM(CASE WHEN jl.phase = 'stopping' AND jl.hold_until > $2 THEN 1 ELSE 0 END) AS stopping,
       SUM(CASE WHEN jl.phase = 'waiting' THEN 1 ELSE 0 END) AS waiting
     FROM job_limits jl LEFT JOIN jobs j ON j.id = jl.job_id
     WHERE jl.limit_name = $1 AND jl.phase <> 'idle' GROUP BY jl.key",
);

/// `$1` limit: its jobs start recording their starts (the limit has a
/// rate), running ones counted as such.
const RATED: Sql = Sql::pair(
    "UPDATE jobs SET limit_rated = 1
     WHERE id IN (SELECT job_id FROM job_limits WHERE limit_name = $1)
       AND limit_rated IS NOT 1",
    "UPDATE jobs SET limit_rated = true
     WHERE id IN (SELECT job_id FROM job_limits WHERE limit_name = $1)
       AND limit_rated IS NOT TRUE",
);
const RUNNING_PHASES: Sql = Sql::both(
    "UPDATE job_limits SET phase = 'running'
     WHERE limit_name = $1 AND phase = 'queued'
       AND job_id IN (SELECT id FROM jobs WHERE id IN (
         SELECT job_id FROM job_limits WHERE limit_name = $1) AND state = 'running')",
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

pub(crate) fn limit_row(r: &impl RowExt) -> Result<Limit, StoreError> {
    let op = "reading a limit";
    let strategy = r.text("strategy")?;
    let key_from = r.text("key_from")?;
    let scope = r.text("scope")?;
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
            scope: scope
                .parse()
                .map_err(|_| crate::error::corrupt(op, format!("scope {scope:?}")))?,
            applies_to: if r.flag("applies")? {
                Some(LimitSelector {
                    queue: r.opt_text("applies_queue")?,
                    kind: r.opt_text("applies_kind")?,
                })
            } else {
                None
            },
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
        .arg(now)
        .arg(spec.scope.as_str());
    let rows = B::fetch_in(&mut tx, stmt).await.op(op)?;
    let limit = limit_row(
        rows.first()
            .ok_or_else(|| crate::error::corrupt(op, "the upsert returned no row"))?,
    )?;
    B::execute_in(&mut tx, Stmt::new::<B>(WAKE_LIMIT).arg(name))
        .await
        .op(op)?;
    if spec.rate.is_some() {
        // Under a rate, a claim records its start: every job of the limit
        // does from now on, and a rate counts its queued jobs apart from
        // its running ones.
        B::execute_in(&mut tx, Stmt::new::<B>(RATED).arg(name))
            .await
            .op(op)?;
        B::execute_in(&mut tx, Stmt::new::<B>(RUNNING_PHASES).arg(name))
            .await
            .op(op)?;
    }
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
            out.limits = resolve_job(&by_name, &automatic, (tenant, &tenant_key), job)?;
            Ok(out)
        })
        .collect::<Result<Vec<_>, StoreError>>()
        .map(Some)
}

fn resolve_job(
    by_name: &HashMap<&str, &Limit>,
    automatic: &[&Limit],
    (tenant_id, tenant): (TenantId, &str),
    job: &NewJob,
) -> Result<Vec<JobLimit>, StoreError> {
    // A tenant's own key carries the tenant, so that no other tenant's job
    // of the same key shares, fills or counts in its slots; a key derived
    // from the tenant already is the tenant's.
    let scoped = |limit: &Limit, key: String| match (limit.spec.scope, &limit.spec.key_from) {
        (LimitScope::Tenant, KeySource::Job | KeySource::Payload(_)) => {
            homeostat_model::stored_key(Some(tenant_id), &key)
        }
        _ => key,
    };
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
        out.push(JobLimit::new(&limit.name, scoped(limit, key)));
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
        out.push(JobLimit::new(&limit.name, scoped(limit, key)));
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
        let (tenant, plain) = homeostat_model::split_stored_key(key);
        keys.insert(
            key,
            KeyUsage {
                key: plain.to_owned(),
                tenant,
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
        (
            b.waiting,
            b.running + b.queued + b.stopping,
            &a.key,
            a.tenant,
        )
            .cmp(&(
                a.waiting,
                a.running + a.queued + a.stopping,
                &b.key,
                b.tenant,
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
        .map(|k| (k.limit.clone(), k.stored()))
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
        let key = LimitKey::from_stored(r.text("limit_name")?, &r.text("key")?);
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
pub(crate) mod tests {
    use super::*;

    /// A limit as stored, for tests.
    pub(crate) fn limit(name: &str, spec: LimitSpec) -> Limit {
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
                    scope: LimitScope::Shared,
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
            format!(
                r#"[["named","a"],["per-customer","{tenant}\u001f42"],["tenant-wide","{tenant}"]]"#
            ),
            "a shared key as named, a tenant's own prefixed with the tenant, a tenant key as is"
        );

        job.limits[1].key = None;
        let err = resolve(&limits, tenant, &[job.clone()]).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(e) if e.field == "limits[1].key"));

        job.limits[1] = JobLimit::new("nope", "a");
        let err = resolve(&limits, tenant, &[job]).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(e) if e.field == "limits[1].limit"));
    }
}
