//! Which jobs this replica leased that other workflow steps need: their
//! completion moves those steps itself, in one statement for the batch
//! (`hot::COMPLETE_STEPS`), instead of the row trigger of migration
//! `workflows`, once a step. Only a hint: a completion that finds none of
//! its jobs here (another replica leased them, or this one forgot) takes
//! the plain statement, and the trigger moves the steps as it always did.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use homeostat_model::Id;

/// Entries kept at most; past it, those older than [`FORGET_MS`] go, and
/// if that is not enough, all (a job whose end came another way — a
/// failure, a reclaim, a cancel — leaves its entry behind).
const CAP: usize = 100_000;
const FORGET_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Default)]
pub(super) struct LeasedSteps {
    /// Whether `leased` may hold anything: a completion on a replica that
    /// never leased a needed step does not take the lock.
    any: AtomicBool,
    /// Job id → when it was leased (ms).
    leased: Mutex<HashMap<Id, i64>>,
}

impl LeasedSteps {
    /// Remembers `ids`, leased at `now_ms`.
    pub(super) fn leased(&self, ids: &[Id], now_ms: i64) {
        if ids.is_empty() {
            return;
        }
        let mut leased = self.leased.lock().unwrap_or_else(|e| e.into_inner());
        if leased.len() + ids.len() > CAP {
            leased.retain(|_, at| now_ms - *at < FORGET_MS);
            if leased.len() + ids.len() > CAP {
                leased.clear();
            }
        }
        leased.extend(ids.iter().map(|id| (*id, now_ms)));
        self.any.store(true, Ordering::Release);
    }

    /// Whether any of `ids` is one, forgetting them.
    pub(super) fn take_any(&self, ids: &[Id]) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let mut leased = self.leased.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = false;
        for id in ids {
            found |= leased.remove(id).is_some();
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_finds_what_was_leased_once() {
        let steps = LeasedSteps::default();
        let (a, b) = (Id::now_v7(), Id::now_v7());
        assert!(!steps.take_any(&[a]));
        steps.leased(&[a], 0);
        assert!(!steps.take_any(&[b]));
        assert!(steps.take_any(&[b, a]));
        assert!(!steps.take_any(&[a]), "forgotten once completed");
    }

    #[test]
    fn past_its_cap_it_forgets_the_oldest_first() {
        let steps = LeasedSteps::default();
        let old: Vec<Id> = (0..CAP).map(|_| Id::now_v7()).collect();
        steps.leased(&old, 0);
        let recent = Id::now_v7();
        steps.leased(&[recent], FORGET_MS + 1);
        assert!(steps.take_any(&[recent]));
        assert!(!steps.take_any(&old[..1]), "the old entries went");
    }
}
