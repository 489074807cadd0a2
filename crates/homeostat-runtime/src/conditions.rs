//! Where an object stands, as its controller last left it: the generation
//! of its spec the controller acted on, and conditions such as `Ready`
//! with a reason and the time they last changed — Kubernetes' status
//! convention, as plain data a controller stores beside its object.
//!
//! An unchanged spec is a no-op ([`ObjectStatus::is_current`]): a resync
//! or a repeated change event costs a comparison, not a reconcile storm.
//! [`ObjectStatus::set`] says whether anything changed, so a controller
//! writes its status back only when it did.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The condition every reconciled object carries.
pub const READY: &str = "Ready";

/// One condition of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// What it is about: [`READY`], or a kind of the controller's own.
    pub kind: String,
    /// Whether it holds.
    pub status: bool,
    /// Why, as a word a program can match (`Synced`, `SourceUnreachable`).
    pub reason: String,
    /// Why, for people.
    pub message: String,
    /// When `status` last changed (Unix epoch milliseconds on the wire).
    #[serde(with = "crate::status::unix_ms")]
    pub last_transition: SystemTime,
}

/// An object's status as its controller keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStatus {
    /// The generation of the spec the controller last acted on.
    pub observed_generation: Option<u64>,
    /// Its conditions, one per kind.
    pub conditions: Vec<Condition>,
}

impl ObjectStatus {
    /// Whether the spec at `generation` was acted on already (and the
    /// object is ready): a reconcile may stop here.
    pub fn is_current(&self, generation: u64) -> bool {
        self.observed_generation == Some(generation) && self.is_ready()
    }

    /// Records that the spec at `generation` was acted on; whether that
    /// changed anything.
    pub fn observe(&mut self, generation: u64) -> bool {
        let changed = self.observed_generation != Some(generation);
        self.observed_generation = Some(generation);
        changed
    }

    /// The condition of `kind`, if set.
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// Whether the object is `Ready`.
    pub fn is_ready(&self) -> bool {
        self.condition(READY).is_some_and(|c| c.status)
    }

    /// Sets condition `kind`; its transition time moves only when its
    /// status does. Whether anything changed (status, reason or message).
    pub fn set(
        &mut self,
        kind: &str,
        status: bool,
        reason: &str,
        message: &str,
        now: SystemTime,
    ) -> bool {
        match self.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(c) => {
                let changed = c.status != status || c.reason != reason || c.message != message;
                if c.status != status {
                    c.last_transition = now;
                }
                c.status = status;
                reason.clone_into(&mut c.reason);
                message.clone_into(&mut c.message);
                changed
            }
            None => {
                self.conditions.push(Condition {
                    kind: kind.to_owned(),
                    status,
                    reason: reason.to_owned(),
                    message: message.to_owned(),
                    last_transition: now,
                });
                true
            }
        }
    }

    /// [`ObjectStatus::set`] of [`READY`].
    pub fn set_ready(
        &mut self,
        status: bool,
        reason: &str,
        message: &str,
        now: SystemTime,
    ) -> bool {
        self.set(READY, status, reason, message, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn an_unchanged_generation_of_a_ready_object_is_current() {
        let mut s = ObjectStatus::default();
        assert!(!s.is_current(1));
        assert!(s.observe(1));
        assert!(!s.is_current(1), "observed, but not ready yet");
        s.set_ready(true, "Synced", "3 members", t(10));
        assert!(s.is_current(1));
        assert!(!s.is_current(2), "a new spec");
        assert!(
            !s.observe(1),
            "observing the same generation changes nothing"
        );
    }

    #[test]
    fn the_transition_time_moves_with_the_status_alone() {
        let mut s = ObjectStatus::default();
        assert!(s.set_ready(false, "SourceUnreachable", "timed out", t(10)));
        assert!(!s.set_ready(false, "SourceUnreachable", "timed out", t(20)));
        assert!(s.set_ready(false, "SourceUnreachable", "refused", t(30)));
        assert_eq!(s.condition(READY).unwrap().last_transition, t(10));
        assert!(s.set_ready(true, "Synced", "", t(40)));
        assert_eq!(s.condition(READY).unwrap().last_transition, t(40));
        assert!(s.is_ready());
        let wire = serde_json::to_value(&s).unwrap();
        assert_eq!(wire["conditions"][0]["last_transition"], 40_000);
        assert_eq!(serde_json::from_value::<ObjectStatus>(wire).unwrap(), s);
    }
}
