//! Admission: jobs waiting for their limits become queued when every key
//! they are under has room (docs/flow-control.md).
//!
//! Admission runs one at a time across replicas (a transaction-scoped
//! advisory lock on PostgreSQL; SQLite's single writer), so the counts it
//! reads cannot be raced by another admission: nothing else adds to a
//! key's slots, and what frees them leaves a wake-up behind. Each run
//! takes the due wake-ups, counts their keys' room, picks each key's
//! candidates by its strategy, cancels what a cancelling strategy gives
//! up, lets keys take turns ([`take_turns`], a plain function) and admits
//! the chosen jobs, in one transaction.

use std::collections::{BTreeSet, HashMap, HashSet};

use homeostat_model::{AuditAction, Id, Limit, LimitStrategy, NewAuditEvent, TenantId};
use serde_json::json;

use crate::audit_log;
use crate::backend::{Backend, RowExt, Sql, Stmt, pg_judged, sqlite_now};
use crate::error::{Context, StoreError};
use crate::time::ms;

/// Keys taken from the wake-ups in one admission.
const KEYS_PER_RUN: i64 = 1000;

/// Waiting jobs fetched for a key beyond its room: some may be held back
/// by another of their limits.
const MARGIN: i64 = 32;

/// Waiting jobs a key with no room left to count (a deleted limit's, or a
/// cancelling strategy's) is looked at per run.
const BATCH: i64 = 1000;

/// `$1` the limit, `$2` the key, `$3` when.
const WAKE_KEY: Sql =
    Sql::both("INSERT INTO limit_wakeups (limit_name, key, due_at) VALUES ($1, $2, $3)");

/// Admission's lock: PostgreSQL's transaction-scoped advisory lock (the
/// number is the store's own); SQLite's write lock is held already.
pub(crate) const LOCK: Sql = Sql::pair(
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
       SELECT id FROM limit_wakeups WHERE due_at <= $1 ORDER BY due_at LIMIT CAST($2 AS BIGINT))
     RETURNING limit_name, key",
);

/// `$1` keys (JSON `[[limit, key], …]`), `$2` now: what holds each key's
/// slots and how many started within its limit's window. One pass over a
/// key's slots counts both figures, and only a limit with a rate looks at
/// its starts (admission counts about a thousand keys a run).
pub(crate) const COUNTS: Sql = Sql::pair(
    "SELECT k.l AS limit_name, k.key AS key,
       (SELECT COUNT(*) FROM job_limits j WHERE j.limit_name = k.l AND j.key = k.key
          AND j.phase IN ('queued', 'running', 'stopping')
          AND (j.phase <> 'stopping' OR j.hold_until > $2)) AS holding,
       (SELECT COUNT(*) FROM job_limits j WHERE j.limit_name = k.l AND j.key = k.key
          AND j.phase IN ('queued', 'running', 'stopping') AND j.phase = 'queued') AS queued,
       (SELECT COUNT(*) FROM limit_starts s WHERE s.limit_name = k.l AND s.key = k.key
          AND s.at > $2 - (SELECT COALESCE(rate_window_ms, 0) FROM limits WHERE name = k.l)) AS recent
     FROM (SELECT p.value->>0 AS l, p.value->>1 AS key FROM json_each($1) p) k",
    "SELECT k.l AS limit_name, k.key AS key, h.holding, h.queued,
       CASE WHEN lim.rate_window_ms IS NULL THEN 0 ELSE
         (SELECT COUNT(*) FROM limit_starts s WHERE s.limit_name = k.l AND s.key = k.key
            AND s.at > $2::bigint - lim.rate_window_ms) END AS recent
     FROM (SELECT p->>0 AS l, p->>1 AS key FROM jsonb_array_elements($1::jsonb) p) k
     LEFT JOIN limits lim ON lim.name = k.l
     CROSS JOIN LATERAL (
       SELECT COUNT(*) FILTER (WHERE j.phase <> 'stopping' OR j.hold_until > $2::bigint) AS holding,
              COUNT(*) FILTER (WHERE j.phase = 'queued') AS queued
       FROM job_limits j WHERE j.limit_name = k.l AND j.key = k.key
         AND j.phase IN ('queued', 'running', 'stopping')) h",
);

/// `$1` limit, `$2` key, `$3` how many: its waiting jobs in the order
/// they are admitted.
const WAITING: Sql = Sql::both(
    "SELECT job_id FROM job_limits WHERE limit_name = $1 AND key = $2 AND phase = 'waiting'
     ORDER BY priority DESC, queued_at, job_id LIMIT CAST($3 AS BIGINT)",
);

/// `$1` JSON `[{"l": limit, "key": key, "n": how many}]`: each key's
/// first `n` waiting jobs, in one statement. SQLite has no `LATERAL`, and
/// its `LIMIT` cannot name a column: a correlated `IN` takes each key's
/// first `$2` through the same index, for keys of one `n`. A statement per
/// key cost SQLite's admission about half of the time it holds the one
/// writer (docs/benchmarks.md).
const WAITING_OF_KEYS: Sql = Sql::pair(
    "SELECT k.value->>'l' AS limit_name, k.value->>'key' AS key, c.job_id, c.priority, c.queued_at
     FROM json_each($1) k
     JOIN job_limits c ON c.limit_name = k.value->>'l' AND c.job_id IN (
       SELECT job_id FROM job_limits
       WHERE limit_name = k.value->>'l' AND key = k.value->>'key' AND phase = 'waiting'
       ORDER BY priority DESC, queued_at, job_id LIMIT CAST($2 AS INTEGER))",
    "SELECT k.l AS limit_name, k.key AS key, c.job_id, c.priority, c.queued_at
     FROM jsonb_to_recordset($1::jsonb) AS k(l text, key text, n bigint)
     CROSS JOIN LATERAL (
       SELECT job_id, priority, queued_at FROM job_limits
       WHERE limit_name = k.l AND key = k.key AND phase = 'waiting'
       ORDER BY priority DESC, queued_at, job_id LIMIT k.n) c",
);

/// `$1` limit, `$2` key, `$3` how many: its waiting jobs, newest first.
const WAITING_NEWEST: Sql = Sql::both(
    "SELECT job_id FROM job_limits WHERE limit_name = $1 AND key = $2 AND phase = 'waiting'
     ORDER BY job_id DESC LIMIT CAST($3 AS BIGINT)",
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
    "UPDATE jobs SET state = 'queued', queued_at = t.at, fair_at = t.at, updated_at = $2
     FROM (SELECT value->>'id' AS id, value->>'at' AS at FROM json_each($1)) t
     WHERE jobs.id = t.id AND jobs.state = 'waiting'
     RETURNING jobs.id AS id, jobs.tenant_id AS tenant_id, jobs.queue AS queue",
    "WITH a AS (
       UPDATE jobs SET state = 'queued', queued_at = t.at, fair_at = t.at, updated_at = $2
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
     RETURNING id, tenant_id, queue, kind",
    "UPDATE jobs SET state = 'cancelled', finished_at = $2, updated_at = $2, last_error = $3,
       lease_expires_at = NULL, timeout_at = NULL
     WHERE id = ANY($1) AND state IN ('waiting', 'queued', 'running')
     RETURNING id, tenant_id, queue, kind",
);

pub(crate) type Pair = (String, String);

/// `items`' values by key, keys in the order first seen.
fn grouped<K: PartialEq, V>(items: impl Iterator<Item = (K, V)>) -> Vec<(K, Vec<V>)> {
    let mut groups: Vec<(K, Vec<V>)> = Vec::new();
    for (k, v) in items {
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, vs)) => vs.push(v),
            None => groups.push((k, vec![v])),
        }
    }
    groups
}

/// A count from the database as a length (none below zero).
fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

pub(crate) fn pairs_json(keys: &[&Pair]) -> String {
    serde_json::to_string(keys).expect("pairs of strings serialize")
}

/// How a key stands, as admission counts it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Room {
    /// Slots left (`None`: no running maximum).
    slots: Option<i64>,
    /// Starts left in the window (`None`: no rate).
    starts: Option<i64>,
}

impl Room {
    pub(crate) fn of(limit: Option<&Limit>, holding: i64, queued: i64, recent: i64) -> Self {
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

    pub(crate) fn free(&self) -> i64 {
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
    /// Their queues and kinds (for the job metrics).
    pub(crate) cancelled_jobs: Vec<(String, String)>,
    /// Whether due wake-ups were left for another run.
    pub more: bool,
}

impl Admitted {
    /// How many jobs were queued.
    pub fn queued_count(&self) -> u64 {
        self.queued.iter().map(|(_, _, n)| u64::from(*n)).sum()
    }
}

pub(crate) async fn counts<B: Backend>(
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

/// Each due key's candidates in its order, the jobs its strategy gives up,
/// and the keys with more waiting jobs than were looked at.
struct Picked {
    lists: Vec<(Pair, Vec<Id>)>,
    cancel: Vec<(Id, Pair)>,
    rewake: Vec<Pair>,
}

async fn pick<B: Backend>(
    tx: &mut B::Tx,
    due: &BTreeSet<Pair>,
    limits: &HashMap<&str, &Limit>,
    rooms: &HashMap<Pair, Room>,
) -> Result<Picked, StoreError> {
    let op = "admitting jobs under limits";
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
    // PostgreSQL takes every key in one statement (each key's number in
    // the JSON); SQLite one statement per number of jobs wanted, bound as
    // its `LIMIT` (most runs want one or two numbers).
    let groups = grouped(wanted.iter().map(|w| ((!B::POSTGRES).then_some(w.1), w)));
    for (n, keys) in groups {
        let json = serde_json::Value::Array(
            keys.iter()
                .map(|(p, n)| json!({"l": p.0, "key": p.1, "n": n}))
                .collect(),
        )
        .to_string();
        let mut stmt = Stmt::new::<B>(WAITING_OF_KEYS).arg(json.as_str());
        if let Some(n) = n {
            stmt = stmt.arg(n);
        }
        for r in B::fetch_in(tx, stmt).await.op(op)? {
            prefetched
                .entry((r.text("limit_name")?, r.text("key")?))
                .or_default()
                .push((-r.int("priority")?, r.int("queued_at")?, r.id("job_id")?));
        }
    }
    for list in prefetched.values_mut() {
        list.sort_unstable();
    }
    let wanted: HashMap<&Pair, i64> = wanted.into_iter().collect();

    // Each due key's candidates in its order, and what its strategy gives up.
    let mut lists: Vec<(Pair, Vec<Id>)> = Vec::with_capacity(due.len());
    let mut cancel: Vec<(Id, Pair)> = Vec::new();
    let mut rewake: Vec<Pair> = Vec::new();
    for pair in due {
        let limit = limits.get(pair.0.as_str()).copied();
        let room = rooms.get(pair).copied().unwrap_or_default();
        let strategy = limit.map_or(LimitStrategy::Wait, |l| l.spec.strategy);
        let (l, k) = (pair.0.as_str(), pair.1.as_str());
        let candidates = match strategy {
            LimitStrategy::Wait | LimitStrategy::RoundRobin => {
                let Some(&want) = wanted.get(pair) else {
                    continue;
                };
                let ids: Vec<Id> = prefetched
                    .remove(pair)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(_, _, id)| id)
                    .collect();
                if ids.len() as i64 == want {
                    rewake.push(pair.clone());
                }
                ids
            }
            LimitStrategy::CancelNewest => {
                // The oldest waiting take the free slots; the rest are
                // cancelled, unless only the rate holds them back.
                let slots = room.slots.unwrap_or(BATCH).max(0);
                let ids =
                    job_ids::<B>(tx, Stmt::new::<B>(WAITING).arg(l).arg(k).arg(slots + BATCH))
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
                let waiting =
                    job_ids::<B>(tx, Stmt::new::<B>(WAITING_NEWEST).arg(l).arg(k).arg(BATCH))
                        .await?;
                if waiting.len() as i64 == BATCH {
                    rewake.push(pair.clone());
                }
                if waiting.is_empty() {
                    continue;
                }
                let holders =
                    job_ids::<B>(tx, Stmt::new::<B>(HOLDERS_NEWEST).arg(l).arg(k)).await?;
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

    Ok(Picked {
        lists,
        cancel,
        rewake,
    })
}

/// Cancels the jobs a strategy gave up, audited as `actor`; their queues
/// and kinds.
async fn cancel_given_up<B: Backend>(
    tx: &mut B::Tx,
    cancel: &[(Id, Pair)],
    now: i64,
    at_ms: i64,
    actor: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let op = "admitting jobs under limits";
    // One statement per key, so that each job says the key that gave it up.
    let by_key = grouped(cancel.iter().map(|(id, pair)| (pair, *id)));
    let mut rows = Vec::new();
    for ((l, k), ids) in &by_key {
        let why = format!(
            "cancelled by limit {l} (key {}): its strategy gives the key's slots to other jobs",
            homeostat_model::split_stored_key(k).1
        );
        let stmt = Stmt::new::<B>(CANCEL)
            .arg(ids.as_slice())
            .arg(now)
            .arg(why.as_str());
        rows.extend(B::fetch_in(tx, stmt).await.op(op)?);
    }
    let mut events = Vec::new();
    for (id, (l, k)) in cancel {
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
            details: json!({
                "limit": l,
                "key": homeostat_model::split_stored_key(k).1,
                "tenant_id": row.id::<TenantId>("tenant_id")?,
            }),
        });
    }
    audit_log::append::<B>(tx, &events, at_ms).await?;
    rows.iter()
        .map(|r| Ok((r.text("queue")?, r.text("kind")?)))
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
    let all: Vec<Limit> = B::fetch_in(&mut tx, Stmt::new::<B>(crate::limits::LIST))
        .await
        .op(op)?
        .iter()
        .map(crate::limits::limit_row)
        .collect::<Result<_, _>>()?;
    let limits: HashMap<&str, &Limit> = all.iter().map(|l| (l.name.as_str(), l)).collect();
    let due_keys: Vec<&Pair> = due.iter().collect();
    let mut rooms: HashMap<Pair, Room> = HashMap::new();
    counts::<B>(&mut tx, &due_keys, now, &limits, &mut rooms).await?;

    let Picked {
        lists,
        cancel,
        rewake,
    } = pick::<B>(&mut tx, &due, &limits, &rooms).await?;
    // Cancel first: a queued job cancelled frees its slot for this run.
    if !cancel.is_empty() {
        out.cancelled_jobs = cancel_given_up::<B>(&mut tx, &cancel, now, ms(at.now), actor).await?;
        out.cancelled = out.cancelled_jobs.len() as u64;
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

    let chosen = take_turns(&lists, &keys_of, &mut rooms, now, |limit| {
        limits
            .get(limit)
            .is_some_and(|l| l.spec.strategy == LimitStrategy::RoundRobin)
    });
    let admit: Vec<serde_json::Value> = chosen
        .iter()
        .map(|(id, at)| json!({"id": id.to_string(), "at": at}))
        .collect();
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
    // A key whose waiting jobs were not all looked at, with room left, is
    // looked at again a second later (what held the ones looked at back
    // frees with a wake-up of its own; the pause bounds runs that admit
    // nothing).
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

/// Which candidates are admitted, and the time each is queued at: keys take
/// turns (every key's first candidate, then every second, …), and a job is
/// admitted when every key it is under has room, which it then takes.
/// Jobs of a round-robin key are spread in the claim order a millisecond
/// apart by their turn, so that agents serve keys in turn.
pub(crate) fn take_turns(
    lists: &[(Pair, Vec<Id>)],
    keys_of: &HashMap<Id, Vec<Pair>>,
    rooms: &mut HashMap<Pair, Room>,
    now: i64,
    round_robin: impl Fn(&str) -> bool,
) -> Vec<(Id, i64)> {
    let mut chosen = Vec::new();
    let mut decided: HashSet<Id> = HashSet::new();
    for turn in 0.. {
        let mut any = false;
        for (pair, ids) in lists {
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
                let spread = if round_robin(&pair.0) { turn as i64 } else { 0 };
                chosen.push((*id, now + spread));
            }
        }
        if !any {
            break;
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::tests::limit;
    use homeostat_model::{LimitSpec, Rate};

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

    #[test]
    fn keys_take_turns_and_a_job_needs_room_in_every_key() {
        let pair = |l: &str, k: &str| (l.to_owned(), k.to_owned());
        let id = |n: u128| Id::from_u128(n);
        let (a, b, c) = (pair("a", "1"), pair("b", "1"), pair("c", "1"));
        let lists = vec![
            (a.clone(), vec![id(1), id(2), id(3)]),
            (b.clone(), vec![id(4)]),
        ];
        let keys_of: HashMap<Id, Vec<Pair>> = [
            (id(1), vec![a.clone()]),
            (id(2), vec![a.clone(), c.clone()]),
            (id(3), vec![a.clone()]),
            (id(4), vec![b.clone()]),
        ]
        .into();
        let two = limit(
            "a",
            LimitSpec {
                max_running: Some(2),
                ..LimitSpec::default()
            },
        );
        let one = limit(
            "b",
            LimitSpec {
                max_running: Some(1),
                ..LimitSpec::default()
            },
        );
        let full = limit(
            "c",
            LimitSpec {
                max_running: Some(1),
                ..LimitSpec::default()
            },
        );
        let mut rooms: HashMap<Pair, Room> = [
            (a.clone(), Room::of(Some(&two), 0, 0, 0)),
            (b.clone(), Room::of(Some(&one), 0, 0, 0)),
            (c.clone(), Room::of(Some(&full), 1, 0, 0)),
        ]
        .into();
        let chosen = take_turns(&lists, &keys_of, &mut rooms, 100, |l| l == "a");
        // Turn 0: 1 (a), 4 (b); turn 1: 2 is held back by c, full; turn 2:
        // 3 takes a's second slot, spread two turns on.
        assert_eq!(chosen, [(id(1), 100), (id(4), 100), (id(3), 102)]);
        assert_eq!(rooms[&a].free(), 0);
        assert_eq!(rooms[&b].free(), 0);
    }
}
