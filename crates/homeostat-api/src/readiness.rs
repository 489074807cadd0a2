//! Readiness, checked in the background: every second a task runs named
//! checks (the database answers with this build's schema, writes succeed,
//! the listener for other replicas is connected, the controller manager
//! runs) and keeps their results; `/readyz` answers from them at once, so a
//! probe gets its answer within a second whatever the database does. A
//! probe that asked the database itself waited out the pool's acquire
//! timeout (5 s) during an outage, longer than a kubelet waits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeostat_store::Store;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How often the checks run.
const EVERY: Duration = Duration::from_secs(1);
/// How long one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often writes are proven while they succeed (every check while they
/// fail, so that recovery shows within a second).
const WRITE_EVERY: Duration = Duration::from_secs(5);
/// Results older than this are not trusted: the checking task is stuck.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// One check's last result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// `database`, `writes`, `listener`, `controllers`.
    pub(crate) name: &'static str,
    /// Whether it passed.
    pub(crate) ok: bool,
    /// Why not (empty when it passed).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) detail: String,
}

/// The last results of every check, and when they were taken.
#[derive(Debug, Default)]
struct Results {
    checks: Vec<Check>,
    at: Option<Instant>,
    /// When writes last succeeded (the write check's own pace).
    wrote_at: Option<Instant>,
}

/// Readiness as last checked; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readiness {
    results: Arc<Mutex<Results>>,
    /// Told after every round of checks.
    checked: Arc<tokio::sync::Notify>,
}

/// What `/readyz` says.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Verdict {
    pub(crate) ready: bool,
    /// The first failing check, as `name: detail`.
    pub(crate) reason: Option<String>,
    pub(crate) checks: Vec<Check>,
}

impl Readiness {
    /// Runs the checks against `store` every second until `stop`; `replica`
    /// names this replica's probe row, `manager` whether controllers run.
    pub(crate) fn start(
        store: Store,
        replica: String,
        has_manager: bool,
        stop: CancellationToken,
    ) -> Self {
        let readiness = Self::default();
        let results = readiness.clone();
        tokio::spawn(async move {
            loop {
                results.check(&store, &replica, has_manager).await;
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(EVERY) => {}
                }
            }
        });
        readiness
    }

    async fn check(&self, store: &Store, replica: &str, has_manager: bool) {
        let mut checks = Vec::with_capacity(4);
        let database = bounded(store.check_schema()).await;
        checks.push(verdict("database", database));
        let wrote_at = self.results.lock().unwrap().wrote_at;
        let wrote_recently = wrote_at.is_some_and(|t| t.elapsed() < WRITE_EVERY);
        let writes = if wrote_recently {
            Ok(())
        } else {
            let wrote = bounded(store.probe_write(replica)).await;
            if wrote.is_ok() {
                self.results.lock().unwrap().wrote_at = Some(Instant::now());
            }
            wrote
        };
        checks.push(verdict("writes", writes));
        if let Some(listening) = store.listener_connected() {
            checks.push(verdict(
                "listener",
                if listening {
                    Ok(())
                } else {
                    Err("the connection that hears other replicas is down; reconnecting".into())
                },
            ));
        }
        // An API served without a manager (embedded in a program that runs
        // its controllers elsewhere, or none) is ready without them.
        if has_manager {
            checks.push(verdict("controllers", Ok(())));
        }
        let mut results = self.results.lock().unwrap();
        if !checks[1].ok {
            // Prove writes again at the next check, not in five seconds.
            results.wrote_at = None;
        }
        let failing: Vec<String> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        let was_ready = results.checks.iter().all(|c| c.ok);
        if !failing.is_empty() && (was_ready || results.at.is_none()) {
            tracing::warn!(failing = ?failing, "not ready");
        } else if failing.is_empty() && !was_ready {
            tracing::info!("ready again");
        }
        results.checks = checks;
        results.at = Some(Instant::now());
        drop(results);
        self.checked.notify_waiters();
    }

    /// Returns once the checks have run at least once.
    pub(crate) async fn first_checked(&self) {
        loop {
            let checked = self.checked.notified();
            if self.results.lock().unwrap().at.is_some() {
                return;
            }
            checked.await;
        }
    }

    /// The last results, judged.
    pub(crate) fn verdict(&self) -> Verdict {
        let results = self.results.lock().unwrap();
        let mut checks = results.checks.clone();
        match results.at {
            None => checks.push(Check {
                name: "checks",
                ok: false,
                detail: "not run yet".into(),
            }),
            Some(at) if at.elapsed() > STALE_AFTER => checks.push(Check {
                name: "checks",
                ok: false,
                detail: format!("last ran {} s ago", at.elapsed().as_secs()),
            }),
            Some(_) => {}
        }
        let reason = checks
            .iter()
            .find(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail));
        Verdict {
            ready: reason.is_none(),
            reason,
            checks,
        }
    }
}

async fn bounded(
    check: impl std::future::Future<Output = Result<(), homeostat_store::StoreError>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
    }
}

fn verdict(name: &'static str, result: Result<(), String>) -> Check {
    match result {
        Ok(()) => Check {
            name,
            ok: true,
            detail: String::new(),
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
        },
    }
}
