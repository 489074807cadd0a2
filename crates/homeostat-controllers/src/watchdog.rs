//! watchdog: a controller of this replica that has not succeeded for N of its
//! intervals (default 3) while leading, or has failed N times in a row,
//! raises a `controller.unhealthy` notification and makes the watchdog's own
//! run fail with the list (so it shows in status); when it recovers, a
//! `controller.recovered` notification follows.
//!
//! It runs on every replica (not exclusive): each replica watches the
//! controllers it leads.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use homeostat_runtime::{BoxError, Context, Controller, Plan, PlannedChange, Reconciled};
use homeostat_store::Store;
use serde_json::json;

use crate::WatchdogConfig;

/// The watchdog controller.
#[derive(Debug)]
pub struct Watchdog {
    store: Store,
    config: WatchdogConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the watchdog first looked: the baseline for controllers that
    /// never succeeded.
    since: Option<SystemTime>,
    /// Controllers reported unhealthy, with why.
    unhealthy: BTreeMap<String, String>,
}

impl Watchdog {
    /// A watchdog raising notifications in `store`.
    pub fn new(store: Store, config: WatchdogConfig) -> Self {
        Self {
            store,
            config,
            state: Mutex::default(),
        }
    }
}

impl Controller for Watchdog {
    fn name(&self) -> &str {
        "watchdog"
    }

    fn interval(&self) -> Duration {
        self.config.settings.interval
    }

    async fn plan(&self, ctx: Context) -> Result<Plan, BoxError> {
        let wall = ctx.now();
        let state = self.state.lock().unwrap();
        let since = state.since.unwrap_or(wall);
        let mut plan = Plan::default();
        for status in ctx.manager_status() {
            if status.name == self.name() {
                continue;
            }
            let now_unhealthy = status.unhealthy(wall, since, self.config.intervals);
            let was = state.unhealthy.contains_key(&status.name);
            let (from, to, why) = match (&now_unhealthy, was) {
                (Some(why), false) => ("healthy", "unhealthy", why.clone()),
                (None, true) => ("unhealthy", "healthy", "it recovered".to_owned()),
                _ => continue,
            };
            plan.count += 1;
            plan.items.push(PlannedChange {
                subject: format!("controller:{}", status.name),
                from: from.into(),
                to: to.into(),
                why,
            });
        }
        Ok(plan)
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let wall = ctx.now();
        let (raised, cleared, standing) = {
            let mut state = self.state.lock().unwrap();
            let since = *state.since.get_or_insert(wall);
            let mut current = BTreeMap::new();
            for status in ctx.manager_status() {
                if status.name == self.name() {
                    continue;
                }
                if let Some(why) = status.unhealthy(wall, since, self.config.intervals) {
                    current.insert(status.name, why);
                }
            }
            let raised: Vec<(String, String)> = current
                .iter()
                .filter(|(name, _)| !state.unhealthy.contains_key(*name))
                .map(|(n, w)| (n.clone(), w.clone()))
                .collect();
            let cleared: Vec<String> = state
                .unhealthy
                .keys()
                .filter(|name| !current.contains_key(*name))
                .cloned()
                .collect();
            state.unhealthy = current.clone();
            (raised, cleared, current)
        };
        for (controller, why) in &raised {
            tracing::warn!(controller, reason = why, "controller unhealthy");
            self.store
                .add_notification(
                    "controller.unhealthy",
                    &json!({"controller": controller, "reason": why}),
                )
                .await?;
        }
        for controller in &cleared {
            tracing::info!(controller, "controller recovered");
            self.store
                .add_notification("controller.recovered", &json!({"controller": controller}))
                .await?;
        }
        if standing.is_empty() {
            Ok(Reconciled::items((raised.len() + cleared.len()) as u64))
        } else {
            let list: Vec<String> = standing.iter().map(|(n, w)| format!("{n}: {w}")).collect();
            Err(format!("unhealthy controllers: {}", list.join("; ")).into())
        }
    }
}
