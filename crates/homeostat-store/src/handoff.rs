//! Handoff: a completion that frees a slot of a key gives it, in the same
//! statement (PostgreSQL) or transaction (SQLite), to the key's next
//! waiting job, which is queued at once without waiting for admission
//! (docs/flow-control.md, "Handoff").
//!
//! Admission runs one at a time across replicas; with every job under a
//! limit it bounded throughput at about 12,000 jobs a second whatever the
//! claims' batch (docs/benchmarks.md). A handoff moves no count: the slot
//! the completed job held is the one the next job takes, in one commit, so
//! whatever admission counts, before or after, it counts the same, and two
//! completions never give one slot twice.
//!
//! Only the simple case is handed off: the completed job and the next one
//! are each under that one limit, which caps running jobs, has no rate and
//! waits (in order, or round-robin between keys). Anything else — a job
//! under several limits, a rate to count, a cancelling strategy, a next
//! job locked by another transaction (PostgreSQL skips it rather than wait,
//! so completions never deadlock) — is left to admission, which the
//! completion's wake-up still calls as before: a slot not handed off is
//! admitted from as it was. The next job is the key's first waiting one
//! in admission's order; when that one is under other limits too, nothing
//! is handed off and admission decides, so such a job is not passed over.

use homeostat_model::TenantId;

use crate::job_metrics::Ended;

/// What a completion did: for each completion, the attempt that ended, if
/// it did; and the jobs handed a freed slot, per tenant and queue (for
/// their claims to be woken).
#[derive(Debug, Default)]
pub(crate) struct Completed {
    pub(crate) ended: Vec<Option<Ended>>,
    pub(crate) handed: Vec<(TenantId, String, u32)>,
}

/// The condition, on a `limits` row `lim`, of a limit whose slots are
/// handed off.
macro_rules! handed_limit {
    () => {
        "lim.max_running IS NOT NULL AND lim.rate_starts IS NULL
         AND lim.strategy IN ('wait', 'round_robin')"
    };
}
#[cfg(feature = "postgres")]
pub(crate) use handed_limit;

/// `$1` JSON `[[limit, key], …]` (keys freed by one completed job each, of
/// one number `$2` of freed slots), `$3` now: SQLite's handoff. The same
/// correlated `IN` as admission's (SQLite's `LIMIT` cannot name a column).
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE_HANDOFF: &str = concat!(
    "UPDATE jobs SET state = 'queued', queued_at = ?3, fair_at = ?3, updated_at = ?3
     WHERE state = 'waiting' AND json_array_length(limit_keys) = 1 AND id IN (
       SELECT c.job_id FROM json_each(?1) k
       JOIN limits lim ON lim.name = k.value->>0 AND ",
    handed_limit!(),
    "
       JOIN job_limits c ON c.limit_name = k.value->>0 AND c.job_id IN (
         SELECT job_id FROM job_limits
         WHERE limit_name = k.value->>0 AND key = k.value->>1 AND phase = 'waiting'
         ORDER BY priority DESC, queued_at, job_id LIMIT CAST(?2 AS INTEGER)))
     RETURNING id, tenant_id, queue"
);

/// The keys freed by completed jobs each under one limit, with how many
/// slots each freed, grouped by that number (SQLite binds it as a
/// `LIMIT`): `limit_keys` is each completed job's stored pairs.
#[cfg(feature = "sqlite")]
pub(crate) fn freed_keys<'a>(
    limit_keys: impl Iterator<Item = &'a str>,
) -> Vec<(i64, Vec<(String, String)>)> {
    let mut freed: std::collections::BTreeMap<(String, String), i64> =
        std::collections::BTreeMap::new();
    for keys in limit_keys {
        if let Ok([pair]) = serde_json::from_str::<[(String, String); 1]>(keys) {
            *freed.entry(pair).or_default() += 1;
        }
    }
    let mut groups: Vec<(i64, Vec<(String, String)>)> = Vec::new();
    for (pair, n) in freed {
        match groups.iter_mut().find(|(m, _)| *m == n) {
            Some((_, keys)) => keys.push(pair),
            None => groups.push((n, vec![pair])),
        }
    }
    groups
}

/// Handed jobs' `(tenant, queue)`, counted.
#[cfg(feature = "sqlite")]
pub(crate) fn by_queue(
    rows: impl IntoIterator<Item = (TenantId, String)>,
) -> Vec<(TenantId, String, u32)> {
    let mut by: std::collections::HashMap<(TenantId, String), u32> =
        std::collections::HashMap::new();
    for key in rows {
        *by.entry(key).or_default() += 1;
    }
    by.into_iter().map(|((t, q), n)| (t, q, n)).collect()
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[test]
    fn only_jobs_under_one_limit_free_a_key_to_hand_off_grouped_by_slots_freed() {
        let rows = [
            r#"[["a","1"]]"#,
            r#"[["a","1"]]"#,
            r#"[["a","2"]]"#,
            r#"[["a","3"],["b","1"]]"#,
            r#"[["b","1"]]"#,
        ];
        let groups = freed_keys(rows.into_iter());
        let pair = |l: &str, k: &str| (l.to_owned(), k.to_owned());
        assert_eq!(
            groups,
            [
                (2, vec![pair("a", "1")]),
                (1, vec![pair("a", "2"), pair("b", "1")])
            ]
        );
    }
}
