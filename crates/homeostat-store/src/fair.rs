//! Fair share between tenants: the turns (`jobs.fair_at`) that order a
//! queue's jobs of one priority (docs/flow-control.md, "Fair share").
//!
//! A tenant's jobs entering a queue take turns `step` apart, from the later
//! of now, the turn at the head of the queue (the turn being served) and
//! the tenant's last queued turn plus a step. A tenant with a backlog so
//! stretches it into the future and another tenant's new job slots in at
//! the head; a tenant with no backlog takes now, the time it was queued,
//! which is the plain first-in first-out order. Only the queued jobs of a
//! tenant count: one that was served alone owes nothing afterwards.

use std::collections::HashMap;
use std::time::Duration;

use homeostat_model::PlanTier;

use crate::time::dur_ms;

/// How far a tenant's turn moves per job: the configured turn divided by
/// its tier's weight; 0 when fair share is off (every job's turn is the
/// time it was queued).
pub(crate) fn step_ms(turn: Duration, tier: PlanTier) -> i64 {
    dur_ms(turn) / tier.weight()
}

/// The flows a batch enters: each distinct (queue, priority) of its rows
/// that enter a queue now, in order of first appearance; per row, its flow
/// (1-based, 0 for a row that does not enter a queue now) and its place
/// among the rows of that flow (0, 1, …).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Flows {
    pub(crate) queues: Vec<String>,
    pub(crate) priorities: Vec<i64>,
    pub(crate) flow: Vec<i64>,
    pub(crate) rank: Vec<i64>,
}

impl Flows {
    pub(crate) fn of<'a>(rows: impl IntoIterator<Item = Option<(&'a str, i64)>>) -> Self {
        let mut out = Flows::default();
        let mut seen: HashMap<(&str, i64), (i64, i64)> = HashMap::new();
        for row in rows {
            let (flow, rank) = row.map_or((0, 0), |key| {
                let n = seen.len() as i64;
                let (flow, next) = seen.entry(key).or_insert_with(|| {
                    out.queues.push(key.0.to_owned());
                    out.priorities.push(key.1);
                    (n + 1, 0)
                });
                *next += 1;
                (*flow, *next - 1)
            });
            out.flow.push(flow);
            out.rank.push(rank);
        }
        out
    }
}

/// The first turn of a batch: the later of now, the head of the queue and
/// the tenant's last queued turn plus a step.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))] // PostgreSQL's is in SQL
pub(crate) fn start(now: i64, head: Option<i64>, last: Option<i64>, step: i64) -> i64 {
    now.max(head.unwrap_or(now))
        .max(last.map_or(now, |l| l + step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_placed_per_queue_and_priority() {
        let rows = [
            Some(("a", 0)),
            Some(("a", 0)),
            None,
            Some(("b", 0)),
            Some(("a", 5)),
            Some(("a", 0)),
        ];
        let flows = Flows::of(rows);
        assert_eq!(flows.queues, vec!["a", "b", "a"]);
        assert_eq!(flows.priorities, vec![0, 0, 5]);
        assert_eq!(flows.flow, vec![1, 1, 0, 2, 3, 1]);
        assert_eq!(flows.rank, vec![0, 1, 0, 0, 0, 2]);
    }

    #[test]
    fn a_batch_starts_after_the_tenants_backlog_or_at_the_head() {
        // No backlog anywhere: now.
        assert_eq!(start(100, None, None, 10), 100);
        // The queue's head is ahead of now (a backlog served faster than
        // its turns): the newcomer joins it there.
        assert_eq!(start(100, Some(500), None, 10), 500);
        // Its own backlog runs further: after it.
        assert_eq!(start(100, Some(500), Some(900), 10), 910);
        // A backlog lagging behind now: now.
        assert_eq!(start(100, Some(20), Some(30), 10), 100);
    }

    #[test]
    fn tiers_divide_the_turn() {
        let turn = Duration::from_secs(1);
        assert_eq!(step_ms(turn, PlanTier::Free), 1000);
        assert_eq!(step_ms(turn, PlanTier::Standard), 500);
        assert_eq!(step_ms(turn, PlanTier::Premium), 250);
        assert_eq!(step_ms(Duration::ZERO, PlanTier::Premium), 0);
    }
}
