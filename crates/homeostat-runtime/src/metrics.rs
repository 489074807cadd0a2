//! Prometheus metrics of the controller runtime.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::Outcome;

/// Upper bounds of the run-duration histogram, 1 ms to 60 s.
const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    controller: String,
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

type DurationFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

/// The metric families, registered once per manager.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    reconcile: Family<OutcomeLabels, Counter>,
    duration: DurationFamily,
    items: Family<ControllerLabels, Counter>,
    last_success: Family<ControllerLabels, Gauge<f64, AtomicU64>>,
    running: Family<ControllerLabels, Gauge>,
    leader: Family<ControllerLabels, Gauge>,
    keys_queued: Family<ControllerLabels, Gauge>,
    key_retries: Family<ControllerLabels, Counter>,
    key_duration: DurationFamily,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            reconcile: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            items: Family::default(),
            last_success: Family::default(),
            running: Family::default(),
            leader: Family::default(),
            keys_queued: Family::default(),
            key_retries: Family::default(),
            key_duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
        }
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "homeostat_controller_reconcile",
            "Reconcile attempts by controller and outcome",
            self.reconcile.clone(),
        );
        registry.register(
            "homeostat_controller_reconcile_duration_seconds",
            "Duration of reconcile runs",
            self.duration.clone(),
        );
        registry.register(
            "homeostat_controller_reconcile_items",
            "Items changed by successful reconcile runs",
            self.items.clone(),
        );
        registry.register(
            "homeostat_controller_last_success_timestamp_seconds",
            "Unix time of the last successful reconcile",
            self.last_success.clone(),
        );
        registry.register(
            "homeostat_controller_running",
            "1 while a reconcile run is in flight",
            self.running.clone(),
        );
        registry.register(
            "homeostat_controller_leader",
            "1 while this replica holds the controller's lease",
            self.leader.clone(),
        );
        registry.register(
            "homeostat_controller_keys_queued",
            "Keys of a keyed controller waiting or being reconciled",
            self.keys_queued.clone(),
        );
        registry.register(
            "homeostat_controller_key_retries",
            "Failed reconciles of a key, each retried after its backoff",
            self.key_retries.clone(),
        );
        registry.register(
            "homeostat_controller_key_reconcile_duration_seconds",
            "Duration of one key's reconcile",
            self.key_duration.clone(),
        );
    }

    /// Handles for one controller, looked up once so the hot path does no
    /// label hashing.
    pub(crate) fn for_controller(&self, name: &str) -> ControllerMetrics {
        let labels = ControllerLabels {
            controller: name.to_owned(),
        };
        let outcomes = Outcome::ALL.map(|outcome| {
            self.reconcile
                .get_or_create(&OutcomeLabels {
                    controller: name.to_owned(),
                    outcome,
                })
                .clone()
        });
        ControllerMetrics {
            outcomes,
            duration: self.duration.get_or_create(&labels).clone(),
            items: self.items.get_or_create(&labels).clone(),
            last_success: self.last_success.get_or_create(&labels).clone(),
            running: self.running.get_or_create(&labels).clone(),
            leader: self.leader.get_or_create(&labels).clone(),
        }
    }
}

/// A keyed controller's metric handles.
#[derive(Debug, Clone)]
pub(crate) struct KeyMetrics {
    pub(crate) queued: Gauge,
    pub(crate) retries: Counter,
    pub(crate) duration: Histogram,
}

impl Metrics {
    pub(crate) fn for_keys(&self, name: &str) -> KeyMetrics {
        let labels = ControllerLabels {
            controller: name.to_owned(),
        };
        KeyMetrics {
            queued: self.keys_queued.get_or_create(&labels).clone(),
            retries: self.key_retries.get_or_create(&labels).clone(),
            duration: self.key_duration.get_or_create(&labels).clone(),
        }
    }
}

/// One controller's metric handles.
#[derive(Debug, Clone)]
pub(crate) struct ControllerMetrics {
    outcomes: [Counter; 6],
    pub(crate) duration: Histogram,
    pub(crate) items: Counter,
    pub(crate) last_success: Gauge<f64, AtomicU64>,
    pub(crate) running: Gauge,
    pub(crate) leader: Gauge,
}

impl ControllerMetrics {
    pub(crate) fn outcome(&self, outcome: Outcome) -> &Counter {
        let index = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        &self.outcomes[index]
    }
}
