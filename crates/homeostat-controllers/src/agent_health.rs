//! agent-health: online agents silent past the stale timeout go offline, and
//! their running jobs are reclaimed at once (re-queued with the attempt
//! counted, or dead when attempts are used up) rather than left to wait for
//! their leases to expire.
//!
//! Silence is judged only over time in which the control plane could hear.
//! After this controller starts, after a run found the store unreachable,
//! and after a stale timeout and three intervals without a run that
//! succeeded (runs cancelled
//! at their timeout while the store hung), every agent gets a full stale
//! timeout from the first run
//! that reaches the store again: an outage of the control plane itself
//! (database down, server restarted for an upgrade) leaves every last
//! heartbeat old, and taking the agents offline for it would run their jobs
//! twice. And when more than `max_offline_percent` of the agents would go
//! offline at once, a run marks none and raises a notification; only the
//! next run, still seeing as many, takes them offline (Kubernetes' node
//! lifecycle controller brakes the same way).
//!
//! Agents offline and unheard for `forget_after` (24 h) are deleted with
//! their credentials: autoscaled runners come and go by the thousand, and
//! the registry would otherwise keep every one of them.

use std::sync::Mutex;
use std::time::Duration;

use homeostat_model::AgentStatus;
use homeostat_runtime::{BoxError, Context, Controller, Plan, Reconciled};
use homeostat_store::{PlanKind, Store};
use jiff::Timestamp;
use serde_json::json;

use crate::AgentHealthConfig;
use crate::sweep::{drain, notify_dead, now, total};

/// The agent-health controller.
#[derive(Debug)]
pub struct AgentHealth {
    store: Store,
    config: AgentHealthConfig,
    hearing: Mutex<Hearing>,
}

/// What this controller remembers between runs.
#[derive(Debug, Default, Clone, Copy)]
struct Hearing {
    /// Since when the store has answered every run (`None`: not yet, or a
    /// run just failed).
    since: Option<Timestamp>,
    /// When the last run that succeeded started: a run cancelled at its
    /// timeout (the store hung, as a database outage makes it) fails
    /// without a word, and a stretch as follower runs nothing; either
    /// leaves it old.
    last_ok: Option<Timestamp>,
    /// The previous run braked a mass offline.
    braked: bool,
}

/// What a run may do about silent agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Take them offline.
    Judge,
    /// Listening for less than the stale timeout: nobody's silence counts yet.
    Deaf { until: Timestamp },
    /// Too many at once: wait for the next run to confirm.
    Brake { silent: u64, present: u64 },
}

impl AgentHealth {
    /// A controller over `store`.
    pub fn new(store: Store, config: AgentHealthConfig) -> Self {
        Self {
            store,
            config,
            hearing: Mutex::new(Hearing::default()),
        }
    }

    fn hearing(&self) -> Hearing {
        *self.hearing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, f: impl FnOnce(&mut Hearing)) {
        f(&mut self.hearing.lock().unwrap_or_else(|e| e.into_inner()));
    }

    async fn verdict(&self, now: Timestamp, hearing: Hearing) -> Result<Verdict, BoxError> {
        let since = hearing.since.unwrap_or(now);
        let until = since + self.config.stale_after;
        if now < until {
            return Ok(Verdict::Deaf { until });
        }
        let silent = self
            .store
            .plan(
                PlanKind::SilentAgents {
                    stale_after: self.config.stale_after,
                },
                0,
            )
            .await?
            .count;
        if silent == 0 || hearing.braked {
            return Ok(Verdict::Judge);
        }
        let present: u64 = self
            .store
            .agent_counts()
            .await?
            .iter()
            .filter(|a| a.status != AgentStatus::Offline)
            .map(|a| a.count)
            .sum();
        if silent * 100 > present * u64::from(self.config.max_offline_percent) {
            return Ok(Verdict::Brake { silent, present });
        }
        Ok(Verdict::Judge)
    }

    /// How long an offline agent is kept; `None`: for ever (`forget_after`
    /// zero).
    fn forgetting(&self) -> Option<Duration> {
        let after = self.config.forget_after;
        (!after.is_zero()).then_some(after)
    }

    async fn run(&self, ctx: &Context, now: Timestamp) -> Result<u64, BoxError> {
        let hearing = self.hearing();
        let verdict = self.verdict(now, hearing).await?;
        let (batch, fence) = (self.config.settings.batch, ctx.fence());
        let mut offline = Vec::new();
        match verdict {
            Verdict::Deaf { until } => {
                tracing::debug!(%until, "agent-health: judging silence only from a full stale timeout after the store answered");
            }
            Verdict::Brake { silent, present } => {
                tracing::warn!(
                    silent,
                    present,
                    "agent-health: too many agents silent at once; none taken offline until the next run confirms"
                );
                self.store
                    .add_notification(
                        "agents.mass_silence",
                        &json!({
                            "silent": silent,
                            "present": present,
                            "max_offline_percent": self.config.max_offline_percent,
                        }),
                    )
                    .await?;
            }
            Verdict::Judge => {
                offline = drain(ctx, batch, || {
                    self.store
                        .mark_silent_agents_offline(self.config.stale_after, batch, fence)
                })
                .await?;
                for id in offline.iter().flatten() {
                    self.store
                        .add_notification(
                            "agent.offline",
                            &json!({"agent_id": id, "silent_for_secs": self.config.stale_after.as_secs()}),
                        )
                        .await?;
                }
            }
        }
        self.remember(|h| h.braked = matches!(verdict, Verdict::Brake { .. }));
        let reclaimed = drain(ctx, batch, || {
            self.store.reclaim_offline_agent_jobs(batch, fence)
        })
        .await?;
        notify_dead(&self.store, ctx, &reclaimed, "its agent went offline").await?;
        let forgotten = match self.forgetting() {
            Some(after) => {
                drain(ctx, batch, || {
                    self.store.forget_departed_agents(after, batch, fence)
                })
                .await?
            }
            None => Vec::new(),
        };
        Ok(total(&offline) + total(&reclaimed) + total(&forgotten))
    }
}

impl Controller for AgentHealth {
    fn name(&self) -> &str {
        "agent-health"
    }

    fn interval(&self) -> Duration {
        self.config.settings.interval
    }

    async fn plan(&self, ctx: Context) -> Result<Plan, BoxError> {
        let now = now(&ctx)?;
        match self.verdict(now, self.hearing()).await? {
            Verdict::Judge => {}
            Verdict::Deaf { until } => {
                return Ok(Plan {
                    note: Some(format!(
                        "silence is judged from {until}: a full stale timeout after the store last came back"
                    )),
                    ..Plan::default()
                });
            }
            Verdict::Brake { silent, present } => {
                return Ok(Plan {
                    note: Some(format!(
                        "{silent} of {present} agents are silent: the next run raises a notification and waits for one more run to confirm"
                    )),
                    ..Plan::default()
                });
            }
        }
        crate::sweep::plan_of(
            &self.store,
            &[
                (
                    PlanKind::SilentAgents {
                        stale_after: self.config.stale_after,
                    },
                    "silent past the stale timeout",
                ),
                (
                    PlanKind::OfflineAgentJobs {
                        stale_after: self.config.stale_after,
                    },
                    "its agent is offline",
                ),
                (
                    PlanKind::DepartedAgents {
                        // Kept: nobody is unheard for ever.
                        offline_for: self.forgetting().unwrap_or(Duration::MAX),
                    },
                    "offline past retention",
                ),
            ],
        )
        .await
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        let now = now(&ctx)?;
        // The first run that reaches the store starts the hearing; so does
        // the first after no run succeeded for a stale timeout and three
        // intervals (cancelled while the store hung, or another replica
        // led).
        let recent = self.config.settings.interval * 3 + self.config.stale_after;
        self.remember(|h| {
            if h.last_ok.is_none_or(|t| t + recent < now) {
                h.since = None;
            }
            h.since.get_or_insert(now);
        });
        match self.run(&ctx, now).await {
            Ok(items) => {
                self.remember(|h| h.last_ok = Some(now));
                Ok(Reconciled::items(items))
            }
            Err(e) => {
                // The store may have been unreachable: heartbeats may have
                // been refused too, so silence counts again only from the
                // next run that reaches it.
                self.remember(|h| h.since = None);
                Err(e)
            }
        }
    }
}
