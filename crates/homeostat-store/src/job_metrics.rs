//! What happens to jobs, counted where it happens (this replica's store):
//! jobs finished by queue, kind and outcome, retries, leases reclaimed,
//! and how long attempts waited and ran. Prometheus sums the replicas.
//!
//! Series are by queue and kind, which tenants name: past
//! [`MAX_SERIES`] pairs, the rest are counted as `_other`, so a tenant
//! cannot make series without end.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Queue and kind pairs with series of their own, per replica.
pub const MAX_SERIES: usize = 200;

/// The label of what is past [`MAX_SERIES`].
pub const OTHER: &str = "_other";

/// An attempt that ended, with what the metrics need of its job: its
/// queue and kind, when it was queued (its turn) and when it started
/// (Unix epoch ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ended {
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) queued_at: i64,
    pub(crate) started_at: Option<i64>,
}

/// A completion's returned rows `(id, queue, kind, queued_at,
/// started_at)`, by id.
pub(crate) fn ended_by_id<I: Eq + std::hash::Hash>(
    rows: Vec<(I, String, String, i64, Option<i64>)>,
) -> std::collections::HashMap<I, Ended> {
    rows.into_iter()
        .map(|(id, queue, kind, queued_at, started_at)| {
            let ended = Ended {
                queue,
                kind,
                queued_at,
                started_at,
            };
            (id, ended)
        })
        .collect()
}

/// Why a running job's lease was taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reclaim {
    LeaseExpired,
    AgentOffline,
    AgentRevoked,
    AgentRestarted,
}

impl Reclaim {
    fn as_str(self) -> &'static str {
        match self {
            Reclaim::LeaseExpired => "lease_expired",
            Reclaim::AgentOffline => "agent_offline",
            Reclaim::AgentRevoked => "agent_revoked",
            Reclaim::AgentRestarted => "agent_restarted",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Finished {
    queue: String,
    kind: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueKind {
    queue: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reclaimed {
    queue: String,
    kind: String,
    reason: &'static str,
}

/// Seconds, from 10 ms to about 3 hours.
fn buckets() -> impl Iterator<Item = f64> {
    [
        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 10800.0,
    ]
    .into_iter()
}

/// This replica's job metrics.
#[derive(Debug)]
pub(crate) struct JobMetrics {
    finished: Family<Finished, Counter>,
    retries: Family<QueueKind, Counter>,
    reclaims: Family<Reclaimed, Counter>,
    queued: Family<QueueKind, Histogram>,
    running: Family<QueueKind, Histogram>,
    kept: Mutex<HashSet<(String, String)>>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        let histogram = || Histogram::new(buckets());
        Self {
            finished: Family::default(),
            retries: Family::default(),
            reclaims: Family::default(),
            queued: Family::new_with_constructor(histogram),
            running: Family::new_with_constructor(histogram),
            kept: Mutex::default(),
        }
    }
}

impl JobMetrics {
    /// Registers the families in `registry` (they are shared: counts go on).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "homeostat_jobs_finished",
            "Jobs that reached a final state here, by queue, kind and outcome (succeeded, dead, cancelled, expired)",
            self.finished.clone(),
        );
        registry.register(
            "homeostat_job_retries",
            "Failed attempts scheduled to run again (failed by the agent, or past the job's timeout)",
            self.retries.clone(),
        );
        registry.register(
            "homeostat_job_reclaims",
            "Running jobs taken back from their agent, by reason (lease_expired, agent_offline, agent_revoked, agent_restarted)",
            self.reclaims.clone(),
        );
        registry.register(
            "homeostat_job_queued_seconds",
            "How long attempts waited in their queue before an agent claimed them, observed when the attempt ends by its agent's report",
            self.queued.clone(),
        );
        registry.register(
            "homeostat_job_running_seconds",
            "How long attempts ran, from the claim to the agent's report of success or failure",
            self.running.clone(),
        );
    }

    fn labels(&self, queue: &str, kind: &str) -> QueueKind {
        let mut kept = self.kept.lock().unwrap();
        let key = (queue.to_owned(), kind.to_owned());
        if !kept.contains(&key) {
            if kept.len() >= MAX_SERIES {
                return QueueKind {
                    queue: OTHER.to_owned(),
                    kind: OTHER.to_owned(),
                };
            }
            kept.insert(key.clone());
        }
        QueueKind {
            queue: key.0,
            kind: key.1,
        }
    }

    /// A job reached `outcome` (`succeeded`, `dead`, `cancelled`, `expired`).
    pub(crate) fn finished(&self, queue: &str, kind: &str, outcome: &'static str) {
        self.finished_as(self.labels(queue, kind), outcome);
    }

    fn finished_as(&self, labels: QueueKind, outcome: &'static str) {
        let QueueKind { queue, kind } = labels;
        self.finished
            .get_or_create(&Finished {
                queue,
                kind,
                outcome,
            })
            .inc();
    }

    /// A failed attempt will run again.
    pub(crate) fn retried(&self, queue: &str, kind: &str) {
        self.retries.get_or_create(&self.labels(queue, kind)).inc();
    }

    /// A running job was taken back from its agent.
    pub(crate) fn reclaimed(&self, queue: &str, kind: &str, why: Reclaim) {
        let QueueKind { queue, kind } = self.labels(queue, kind);
        self.reclaims
            .get_or_create(&Reclaimed {
                queue,
                kind,
                reason: why.as_str(),
            })
            .inc();
    }

    /// An attempt its agent reported at `now` (ms): how long it waited and
    /// ran, and what came of its job: `Some(outcome)` when it finished
    /// (`succeeded`, `dead`), `None` when it will run again.
    pub(crate) fn reported(&self, ended: &Ended, now: i64, outcome: Option<&'static str>) {
        let labels = self.labels(&ended.queue, &ended.kind);
        if let Some(started) = ended.started_at {
            let secs = |ms: i64| (ms.max(0) as f64) / 1000.0;
            self.queued
                .get_or_create(&labels)
                .observe(secs(started - ended.queued_at));
            self.running
                .get_or_create(&labels)
                .observe(secs(now - started));
        }
        match outcome {
            Some(outcome) => self.finished_as(labels, outcome),
            None => {
                self.retries.get_or_create(&labels).inc();
            }
        }
    }

    /// What a sweep did to the jobs it moved: `(queue, kind, new state)`.
    pub(crate) fn swept(&self, moved: &[(String, String, String)], reclaim: Option<Reclaim>) {
        for (queue, kind, state) in moved {
            if let Some(why) = reclaim {
                self.reclaimed(queue, kind, why);
            }
            match state.as_str() {
                "dead" => self.finished(queue, kind, "dead"),
                "expired" => self.finished(queue, kind, "expired"),
                "scheduled" if reclaim.is_none() => self.retried(queue, kind),
                _ => {}
            }
        }
    }
}
