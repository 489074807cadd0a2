//! What the manager tells about each controller: for the API, the CLI and the
//! dashboard.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How a run (or a tick that did not become a run) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The reconcile returned `Ok`.
    Success,
    /// The reconcile returned an error.
    Error,
    /// The run exceeded its timeout (or the shutdown deadline) and was cancelled.
    Timeout,
    /// The reconcile panicked.
    Panic,
    /// A tick found the previous run still going and was skipped.
    SkippedOverlap,
    /// Another replica holds the lease, or the lease was lost mid-run.
    NotLeader,
}

impl Outcome {
    /// Every outcome, in a stable order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::Panic,
        Outcome::SkippedOverlap,
        Outcome::NotLeader,
    ];

    /// The metric label and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Panic => "panic",
            Outcome::SkippedOverlap => "skipped_overlap",
            Outcome::NotLeader => "not_leader",
        }
    }

    /// Whether this outcome counts as a failure of the controller (and so
    /// brings its next attempt forward with backoff).
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Error | Outcome::Timeout | Outcome::Panic)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most recent run of a controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    /// When it started.
    #[serde(with = "unix_ms")]
    pub started_at: SystemTime,
    /// How long it took.
    #[serde(rename = "duration_ms", with = "millis")]
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// Items changed (0 unless it succeeded).
    pub items: u64,
    /// The error, timeout or panic message.
    pub error: Option<String>,
}

/// A snapshot of one controller as its manager sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllerStatus {
    /// The controller's name.
    pub name: String,
    /// Interval before jitter.
    #[serde(rename = "interval_ms", with = "millis")]
    pub interval: Duration,
    /// Whether it runs under a lease.
    pub exclusive: bool,
    /// Whether this replica holds its lease (always true when not exclusive).
    pub leader: bool,
    /// Whether a run is going now.
    pub running: bool,
    /// The most recent run, if any.
    pub last_run: Option<LastRun>,
    /// When it last succeeded.
    #[serde(with = "unix_ms::option")]
    pub last_success_at: Option<SystemTime>,
    /// Failed runs (error, timeout, panic) since the last success.
    pub consecutive_failures: u32,
    /// When the next tick is due (`None` once stopped).
    #[serde(with = "unix_ms::option")]
    pub next_run: Option<SystemTime>,
    /// A keyed controller's keys: waiting and being reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeyCounts>,
    /// Tasks its runs left going (a keyed controller's tasks per key),
    /// as of its last run.
    #[serde(default)]
    pub tasks: usize,
}

/// A keyed controller's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCounts {
    /// Keys changed or due, waiting for a reconcile.
    pub waiting: usize,
    /// Keys being reconciled now.
    pub active: usize,
}

impl ControllerStatus {
    /// This replica's view of a controller another replica leads, with the
    /// runs as the leader published them: when it last ran and how, and when
    /// it runs next. What is this replica's own (name, interval, `leader`)
    /// stays.
    pub fn with_runs_of(self, leader: &ControllerStatus) -> Self {
        Self {
            running: leader.running,
            last_run: leader.last_run.clone(),
            last_success_at: leader.last_success_at,
            consecutive_failures: leader.consecutive_failures,
            next_run: leader.next_run,
            keys: leader.keys,
            tasks: leader.tasks,
            ..self
        }
    }

    /// Why this controller is unhealthy at `now`, if it is: it failed
    /// `intervals` runs in a row, or it leads and has not succeeded for
    /// more than `intervals` of its intervals (counted from `since` when it
    /// never succeeded). The watchdog raises notifications by this rule and
    /// the dashboard flags controllers by it.
    pub fn unhealthy(&self, now: SystemTime, since: SystemTime, intervals: u32) -> Option<String> {
        if self.consecutive_failures >= intervals {
            let error = self
                .last_run
                .as_ref()
                .and_then(|r| r.error.clone())
                .unwrap_or_default();
            return Some(format!(
                "failed {} times in a row (last: {error})",
                self.consecutive_failures
            ));
        }
        if !self.leader {
            return None; // another replica runs it
        }
        let allowed = self.interval * intervals;
        let last = self.last_success_at.unwrap_or(since);
        let silent = now.duration_since(last).unwrap_or_default();
        (silent > allowed).then(|| {
            format!(
                "no success for {}s, more than {intervals} intervals of {}s",
                silent.as_secs(),
                self.interval.as_secs()
            )
        })
    }
}

/// Serde helpers: times as integer Unix epoch milliseconds.
pub(crate) mod unix_ms {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// `t` as Unix epoch milliseconds (negative before 1970), as the
    /// status serializes it.
    pub fn to_millis(t: SystemTime) -> i64 {
        match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    pub(crate) fn from_millis(ms: i64) -> SystemTime {
        let offset = std::time::Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 {
            SystemTime::UNIX_EPOCH + offset
        } else {
            SystemTime::UNIX_EPOCH - offset
        }
    }

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(to_millis(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        i64::deserialize(d).map(from_millis)
    }

    pub(crate) mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            t: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&super::to_millis(*t)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Ok(Option::<i64>::deserialize(d)?.map(super::from_millis))
        }
    }
}

/// Serde helper: durations as integer milliseconds.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// The statuses of every controller of one manager: written by their
/// loops, read by the manager's API and by controllers that watch the
/// others ([`crate::Context::manager_status`]).
#[derive(Clone, Default)]
pub(crate) struct StatusBoard(Arc<[Arc<Mutex<ControllerStatus>>]>);

impl StatusBoard {
    pub(crate) fn new(entries: impl IntoIterator<Item = Arc<Mutex<ControllerStatus>>>) -> Self {
        Self(entries.into_iter().collect())
    }

    /// A copy of every status, in registration order.
    pub(crate) fn snapshot(&self) -> Vec<ControllerStatus> {
        self.0
            .iter()
            .map(|status| status.lock().unwrap().clone())
            .collect()
    }
}

impl fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusBoard")
            .field("controllers", &self.0.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serializes_times_as_epoch_millis_and_outcomes_in_snake_case() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_600_123);
        let status = ControllerStatus {
            name: "job-scheduler".into(),
            interval: Duration::from_secs(1),
            exclusive: true,
            leader: true,
            running: false,
            last_run: Some(LastRun {
                started_at: at,
                duration: Duration::from_millis(12),
                outcome: Outcome::SkippedOverlap,
                items: 0,
                error: None,
            }),
            last_success_at: None,
            consecutive_failures: 0,
            next_run: Some(at + Duration::from_secs(1)),
            keys: None,
            tasks: 0,
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["interval_ms"], 1000);
        assert_eq!(json["last_run"]["started_at"], 1_767_225_600_123i64);
        assert_eq!(json["last_run"]["duration_ms"], 12);
        assert_eq!(json["last_run"]["outcome"], "skipped_overlap");
        assert_eq!(json["last_success_at"], serde_json::Value::Null);
        assert_eq!(json["next_run"], 1_767_225_601_123i64);
        assert!(
            json.get("keys").is_none(),
            "a periodic controller has no keys"
        );
        // A status published by a replica that knew no counts reads as none.
        let mut older = json.clone();
        older.as_object_mut().unwrap().remove("tasks");
        let older: ControllerStatus = serde_json::from_value(older).unwrap();
        assert_eq!((older.keys, older.tasks), (None, 0));
        let keyed = ControllerStatus {
            keys: Some(KeyCounts {
                waiting: 3,
                active: 1,
            }),
            tasks: 2,
            ..status
        };
        let json = serde_json::to_value(&keyed).unwrap();
        assert_eq!(json["keys"]["waiting"], 3);
        assert_eq!(json["tasks"], 2);
        let back: ControllerStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, keyed);
    }
}
