//! Settings of the built-in controllers, with the defaults of the design.
//!
//! Every controller's configuration has one shape: `enabled`, `interval`
//! and `batch` (its [`Settings`], flattened) and, for some, keys of its own.
//! They serialize and deserialize (durations as `"30s"`, `"1h"`), so a
//! configuration file can be layered over [`ControllersConfig::default`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What every controller has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Registered at all.
    pub enabled: bool,
    /// Time between runs (jittered by the manager).
    #[serde(with = "homeostat_model::duration")]
    pub interval: Duration,
    /// Rows per sweep statement; a run repeats full batches up to
    /// [`MAX_BATCHES_PER_RUN`].
    pub batch: u32,
}

/// Upper bound of batches in one run, so one run cannot go on forever.
pub const MAX_BATCHES_PER_RUN: u32 = 100;

impl Settings {
    /// Enabled, every `interval`, batches of `batch`.
    pub const fn every(interval: Duration, batch: u32) -> Self {
        Self {
            enabled: true,
            interval,
            batch,
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// agent-health: silent agents go offline, their running jobs are reclaimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHealthConfig {
    /// Interval and batch.
    #[serde(flatten)]
    pub settings: Settings,
    /// An online agent silent this long goes offline.
    #[serde(with = "homeostat_model::duration")]
    pub stale_after: Duration,
    /// When more than this percentage of the agents not offline would go
    /// offline in one run, the run marks none and raises a notification;
    /// the next run, still seeing as many, confirms it. Mass silence is
    /// more often the control plane's deafness (a network partition, an
    /// outage) than mass death.
    pub max_offline_percent: u8,
    /// An offline agent unheard this long is deleted and its credential
    /// revoked (its past jobs keep its id); zero keeps offline agents.
    #[serde(with = "homeostat_model::duration")]
    pub forget_after: Duration,
}

/// queue-priority: ageing of queued jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePriorityConfig {
    /// Interval and batch.
    #[serde(flatten)]
    pub settings: Settings,
    /// Priority points per whole minute waited.
    pub bonus_per_minute: i64,
    /// Ceiling ageing raises a job to. Above every tier's base, so that every
    /// job that waited long enough reaches it and the oldest goes first.
    pub cap: i64,
}

/// job-retention: how long finished jobs are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRetentionConfig {
    /// Interval and batch.
    #[serde(flatten)]
    pub settings: Settings,
    /// Retention per outcome.
    pub retention: homeostat_store::JobRetention,
}

/// audit-retention: how long audit events are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRetentionConfig {
    /// Interval and batch (10,000 by default).
    #[serde(flatten)]
    pub settings: Settings,
    /// Events older than this are removed.
    #[serde(with = "homeostat_model::duration")]
    pub retention: Duration,
    /// Count what would be removed, remove nothing.
    pub dry_run: bool,
}

/// audit-chain-verify: walks of the audit chain, asked for or scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditChainVerifyConfig {
    /// How often the leader looks for a requested walk (batch unused).
    #[serde(flatten)]
    pub settings: Settings,
    /// The controller asks for a walk itself when none was asked for in
    /// this long.
    #[serde(with = "homeostat_model::duration")]
    pub every: Duration,
    /// Longest one walk may take (its run's timeout); a walk cut off starts
    /// over on the next run, up to
    /// [`homeostat_store::MAX_VERIFICATION_ATTEMPTS`] times.
    #[serde(with = "homeostat_model::duration")]
    pub timeout: Duration,
}

/// watchdog: when a controller counts as unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogConfig {
    /// Interval (batch unused).
    #[serde(flatten)]
    pub settings: Settings,
    /// Unhealthy after this many of its intervals without a success while
    /// leading, or this many failures in a row.
    pub intervals: u32,
}

/// periodic-jobs: cron schedules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodicConfig {
    /// The resync (60 s): every schedule is looked at this often, besides
    /// at each of its slots.
    #[serde(flatten)]
    pub settings: Settings,
    /// The schedules.
    pub schedules: Vec<crate::PeriodicSchedule>,
}

/// All built-in controllers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllersConfig {
    /// agent-health (30 s; stale after 90 s; offline agents forgotten after
    /// 24 h).
    pub agent_health: AgentHealthConfig,
    /// job-recovery (60 s).
    pub job_recovery: Settings,
    /// job-timeout (60 s).
    pub job_timeout: Settings,
    /// job-scheduler (1 s).
    pub job_scheduler: Settings,
    /// queue-priority (60 s; 2 points a minute up to a ceiling of 300).
    pub queue_priority: QueuePriorityConfig,
    /// approval-expiration (1 h).
    pub approval_expiration: Settings,
    /// token-cleanup (1 h).
    pub token_cleanup: Settings,
    /// limits (1 s): admits jobs whose limits' keys came due, prunes old
    /// starts.
    pub limits: Settings,
    /// workflows (30 s): releases or skips steps left pending though every
    /// step they need has finished.
    pub workflows: Settings,
    /// job-retention (1 h; succeeded and cancelled 24 h, dead and expired 7 d).
    pub job_retention: JobRetentionConfig,
    /// audit-retention (24 h; 365 d, batches of 10,000).
    pub audit_retention: AuditRetentionConfig,
    /// audit-chain-verify (looks for requested walks every 5 s; walks
    /// every 6 h unasked; a walk may take 1 h).
    pub audit_chain_verify: AuditChainVerifyConfig,
    /// notification-dispatch (15 s, claims of 10; at most 10 per claim).
    pub notification_dispatch: Settings,
    /// watchdog (30 s; 3 intervals).
    pub watchdog: WatchdogConfig,
    /// periodic-jobs (1 s; no schedules by default).
    pub periodic: PeriodicConfig,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        Self {
            agent_health: AgentHealthConfig {
                settings: Settings::every(30 * SECOND, 1000),
                stale_after: 90 * SECOND,
                max_offline_percent: 50,
                forget_after: DAY,
            },
            job_recovery: Settings::every(MINUTE, 1000),
            job_timeout: Settings::every(MINUTE, 1000),
            job_scheduler: Settings::every(SECOND, 1000),
            queue_priority: QueuePriorityConfig {
                settings: Settings::every(MINUTE, 5000),
                bonus_per_minute: 2,
                cap: 300,
            },
            approval_expiration: Settings::every(HOUR, 1000),
            token_cleanup: Settings::every(HOUR, 1000),
            limits: Settings::every(SECOND, 1000),
            workflows: Settings::every(30 * SECOND, 1000),
            job_retention: JobRetentionConfig {
                settings: Settings::every(HOUR, 1000),
                retention: homeostat_store::JobRetention::default(),
            },
            audit_retention: AuditRetentionConfig {
                settings: Settings::every(DAY, 10_000),
                retention: 365 * DAY,
                dry_run: false,
            },
            audit_chain_verify: AuditChainVerifyConfig {
                settings: Settings::every(5 * SECOND, 0),
                every: 6 * HOUR,
                timeout: HOUR,
            },
            notification_dispatch: Settings::every(15 * SECOND, 10),
            watchdog: WatchdogConfig {
                settings: Settings::every(30 * SECOND, 0),
                intervals: 3,
            },
            periodic: PeriodicConfig {
                settings: Settings::every(60 * SECOND, 0),
                schedules: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_controller_section_has_the_settings_keys_and_its_own() {
        let json = serde_json::to_value(ControllersConfig::default()).unwrap();
        let sections = json.as_object().unwrap();
        assert_eq!(sections.len(), 15);
        for (name, section) in sections {
            for key in ["enabled", "interval", "batch"] {
                assert!(section.get(key).is_some(), "{name} lacks {key}");
            }
        }
        assert_eq!(json["agent_health"]["interval"], "30s");
        assert_eq!(json["agent_health"]["stale_after"], "1m 30s");
        assert_eq!(json["job_retention"]["retention"]["failed"], "168h");
    }

    #[test]
    fn a_file_layered_over_the_defaults_changes_only_what_it_names() {
        let mut json = serde_json::to_value(ControllersConfig::default()).unwrap();
        json["agent_health"]["stale_after"] = "2m".into();
        json["audit_retention"]["dry_run"] = true.into();
        let config: ControllersConfig = serde_json::from_value(json).unwrap();
        let mut expected = ControllersConfig::default();
        expected.agent_health.stale_after = Duration::from_secs(120);
        expected.audit_retention.dry_run = true;
        assert_eq!(config, expected);
    }

    #[test]
    fn a_bad_duration_names_itself() {
        let mut json = serde_json::to_value(ControllersConfig::default()).unwrap();
        json["job_scheduler"]["interval"] = "often".into();
        let err = serde_json::from_value::<ControllersConfig>(json).unwrap_err();
        assert!(
            err.to_string().contains("\"often\" is not a duration"),
            "{err}"
        );
    }
}
