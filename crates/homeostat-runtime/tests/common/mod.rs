//! Test controllers and helpers shared by the runtime's integration tests.
//!
//! Timing tests run under tokio's paused time with a `TokioClock`: time moves
//! only when every task is idle, so schedules are exact and nothing sleeps for
//! real.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use homeostat_runtime::{
    BoxError, BoxFuture, Context, Controller, ControllerOptions, Manager, ManagerBuilder,
    Reconciled, RunReason,
};
use prometheus_client::registry::Registry;

/// One observed run.
#[derive(Debug, Clone)]
pub struct Run {
    pub scheduled_at: SystemTime,
    pub started_at: SystemTime,
    pub reason: RunReason,
    pub epoch: Option<u64>,
    pub ctx: Context,
}

/// What the test controllers saw, shared with the test.
#[derive(Debug, Default)]
pub struct Probe {
    pub runs: Mutex<Vec<Run>>,
    pub active: AtomicU32,
    pub max_active: AtomicU32,
}

impl Probe {
    pub fn count(&self) -> usize {
        self.runs.lock().unwrap().len()
    }
    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::SeqCst)
    }
    pub fn max_active(&self) -> u32 {
        self.max_active.load(Ordering::SeqCst)
    }
}

/// Counts a run as active from creation until drop, so aborted runs stop
/// counting the moment their future is dropped.
pub struct ActiveGuard(Arc<Probe>);

impl ActiveGuard {
    pub fn enter(probe: &Arc<Probe>) -> Self {
        let now = probe.active.fetch_add(1, Ordering::SeqCst) + 1;
        probe.max_active.fetch_max(now, Ordering::SeqCst);
        Self(Arc::clone(probe))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

type Body =
    dyn Fn(Context, usize) -> BoxFuture<'static, Result<Reconciled, BoxError>> + Send + Sync;

/// A controller whose reconcile is a closure of (context, run index).
pub struct TestController {
    pub name: String,
    pub interval: Duration,
    pub probe: Arc<Probe>,
    body: Arc<Body>,
}

impl TestController {
    pub fn new<F, Fut>(name: &str, interval: Duration, body: F) -> (Self, Arc<Probe>)
    where
        F: Fn(Context, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reconciled, BoxError>> + Send + 'static,
    {
        let probe = Arc::new(Probe::default());
        let body: Arc<Body> = Arc::new(move |ctx, n| Box::pin(body(ctx, n)));
        (
            Self {
                name: name.to_owned(),
                interval,
                probe: Arc::clone(&probe),
                body,
            },
            probe,
        )
    }

    /// Succeeds at once, changing one item.
    pub fn quick(name: &str, interval: Duration) -> (Self, Arc<Probe>) {
        Self::new(name, interval, |_, _| async { Ok(Reconciled::items(1)) })
    }

    /// Takes `duration` of (tokio) time.
    pub fn slow(name: &str, interval: Duration, duration: Duration) -> (Self, Arc<Probe>) {
        Self::new(name, interval, move |_, _| async move {
            tokio::time::sleep(duration).await;
            Ok(Reconciled::items(1))
        })
    }

    /// Never finishes on its own.
    pub fn stuck(name: &str, interval: Duration) -> (Self, Arc<Probe>) {
        Self::new(name, interval, |_, _| async {
            std::future::pending::<()>().await;
            Ok(Reconciled::nothing())
        })
    }

    /// Shares the probe with another instance (a second replica).
    pub fn replica(&self) -> Self {
        Self {
            name: self.name.clone(),
            interval: self.interval,
            probe: Arc::clone(&self.probe),
            body: Arc::clone(&self.body),
        }
    }
}

impl Controller for TestController {
    fn name(&self) -> &str {
        &self.name
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let _active = ActiveGuard::enter(&self.probe);
        let index = {
            let mut runs = self.probe.runs.lock().unwrap();
            runs.push(Run {
                scheduled_at: ctx.scheduled_at(),
                started_at: ctx.started_at(),
                reason: ctx.reason(),
                epoch: ctx.epoch(),
                ctx: ctx.clone(),
            });
            runs.len() - 1
        };
        (self.body)(ctx, index).await
    }
}

/// Options without jitter, so schedules are exact.
pub fn exact() -> ControllerOptions {
    ControllerOptions::default().jitter(0.0)
}

/// Starts a manager with the given controllers on `builder`.
pub fn start(
    mut builder: ManagerBuilder,
    controllers: Vec<(TestController, ControllerOptions)>,
) -> Manager {
    for (controller, options) in controllers {
        builder.register(controller, options).unwrap();
    }
    builder.start().unwrap()
}

/// Polls `condition` as (paused) time passes, failing after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads one sample from the registry's text exposition, 0 when absent.
pub fn metric(registry: &Registry, sample: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
        .unwrap_or(0.0)
}

/// The reconcile counter for one controller and outcome.
pub fn outcomes(registry: &Registry, controller: &str, outcome: &str) -> f64 {
    metric(
        registry,
        &format!(
            "homeostat_controller_reconcile_total{{controller=\"{controller}\",outcome=\"{outcome}\"}}"
        ),
    )
}

/// Seconds between two instants, for readable assertions.
pub fn secs(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap().as_secs_f64()
}
