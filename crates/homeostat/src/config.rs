//! The server's configuration: defaults, overridden by a TOML file
//! (`--config`), overridden by `HOMEOSTAT_*` environment variables
//! (`HOMEOSTAT_DATABASE_URL`, `HOMEOSTAT_API__LEASE_TTL=30s`: a double
//! underscore steps into a table). A wrong value or an unknown key stops
//! start-up with a message that names the key and where it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use homeostat_api::ApiSettings;
use homeostat_controllers::ControllersConfig;
use serde::{Deserialize, Serialize};

/// Everything `homeostat run` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Config {
    /// Address the API listens on.
    pub(crate) listen: String,
    /// Directory of the embedded SQLite database (created if missing).
    pub(crate) data_dir: PathBuf,
    /// `postgres://…` to share a PostgreSQL database between replicas;
    /// unset for the embedded SQLite database in `data_dir`.
    pub(crate) database_url: Option<String>,
    /// `auto` (human-readable on a terminal, JSON otherwise), `json` or
    /// `text`.
    pub(crate) log_format: LogFormat,
    /// A tracing filter (`info`, `homeostat=debug,info`); `RUST_LOG` wins.
    pub(crate) log_level: String,
    /// How long a stop waits for in-flight requests and controller runs.
    #[serde(with = "homeostat_model::duration")]
    pub(crate) shutdown_grace: Duration,
    /// Connections to the database, per replica.
    pub(crate) max_connections: u32,
    /// Retries and deadlines of jobs.
    pub(crate) jobs: JobPolicy,
    /// Agent protocol intervals and request limits.
    pub(crate) api: ApiSettings,
    /// Where notifications go (none: they are logged).
    pub(crate) notifications: Notifications,
    /// The built-in controllers.
    pub(crate) controllers: ControllersConfig,
    /// Limits by key, by name: set at start when they differ from the
    /// stored ones (audited as `config`); limits set through the API or
    /// CLI and absent here are left as they are.
    #[serde(default)]
    pub(crate) limits: std::collections::BTreeMap<String, homeostat_model::LimitSpec>,
}

/// Retries and deadlines of jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobPolicy {
    /// Delay before the first retry of a failed attempt; it doubles with
    /// each attempt.
    #[serde(with = "homeostat_model::duration")]
    pub(crate) retry_initial: Duration,
    /// Longest delay between attempts.
    #[serde(with = "homeostat_model::duration")]
    pub(crate) retry_max: Duration,
    /// A queued job not started this long after it became due expires,
    /// unless it carries its own deadline.
    #[serde(with = "homeostat_model::duration")]
    pub(crate) default_deadline: Duration,
    /// Fair share between tenants: how far a free-tier tenant's turn in a
    /// queue moves per job (standard half, premium a quarter); "0s" turns
    /// it off.
    #[serde(with = "homeostat_model::duration")]
    pub(crate) fair_share_turn: Duration,
}

impl Default for JobPolicy {
    fn default() -> Self {
        let store = homeostat_store::StoreOptions::default();
        Self {
            retry_initial: store.retry_initial,
            retry_max: store.retry_max,
            default_deadline: store.default_queue_deadline,
            fair_share_turn: store.fair_share_turn,
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogFormat {
    Auto,
    Json,
    Text,
}

/// Notification sinks; every one set receives every notification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Notifications {
    /// POST each notification as JSON here.
    pub(crate) webhook_url: Option<String>,
    /// Sign webhook bodies (HMAC-SHA256) with this secret.
    pub(crate) webhook_secret: Option<String>,
    /// A Slack incoming-webhook URL.
    pub(crate) slack_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("homeostat-data"),
            database_url: None,
            log_format: LogFormat::Auto,
            log_level: "info".into(),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 10,
            jobs: JobPolicy::default(),
            api: ApiSettings::default(),
            notifications: Notifications::default(),
            controllers: ControllersConfig::default(),
            limits: Default::default(),
        }
    }
}

/// The commented default file that `homeostat config default` prints. A
/// test checks that it reads back as [`Config::default`].
pub(crate) const DEFAULT_FILE: &str = include_str!("default.toml");

/// The keys of each controller's table that no setting reads. A table with
/// its interval and batch flattened in takes every key it does not know
/// into them, where serde forgets it (`deny_unknown_fields` does not work
/// with `flatten`): they are compared with the keys the defaults have.
fn unknown_in_flattened_tables(value: &figment::value::Value) -> Vec<String> {
    let Ok(serde_json::Value::Object(defaults)) =
        serde_json::to_value(ControllersConfig::default())
    else {
        return Vec::new();
    };
    let Some(controllers) = value
        .find_ref("controllers")
        .and_then(figment::value::Value::as_dict)
    else {
        return Vec::new();
    };
    let mut unknown = Vec::new();
    for (name, table) in controllers {
        let (Some(table), Some(serde_json::Value::Object(known))) =
            (table.as_dict(), defaults.get(name))
        else {
            continue;
        };
        unknown.extend(
            table
                .keys()
                .filter(|key| !known.contains_key(*key))
                .map(|key| format!("controllers.{name}.{key}")),
        );
    }
    unknown
}

/// The names of the top-level settings (`listen`, `api`, `controllers`, …).
fn top_level_keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// A configuration that cannot be used.
#[derive(Debug)]
pub(crate) struct ConfigError(pub(crate) String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Defaults, then `file` (if any), then the environment.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed("HOMEOSTAT_").split("__"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "configuration file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only variables that name a setting are configuration. Others share
        // the prefix without being settings: the CLI's `HOMEOSTAT_SERVER`
        // and `HOMEOSTAT_TOKEN`, the test suite's, a script's, and the
        // `HOMEOSTAT_PORT`, `HOMEOSTAT_SERVICE_HOST`, … that Kubernetes
        // injects into every pod of a namespace with a Service named
        // `homeostat`. Within a setting's table, an unknown key is refused.
        let settings = top_level_keys();
        let env = env.filter(move |key| {
            let key = key.as_str().to_ascii_lowercase();
            let first = key.split(['.']).next().unwrap_or("");
            let first = first.split("__").next().unwrap_or("");
            settings.iter().any(|s| s == first)
        });
        figment = figment.merge(env);
        let config: Config = figment.extract().map_err(|e| {
            ConfigError(
                e.into_iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        Self::refuse_unknown_keys(&figment)?;
        config.validate()?;
        Ok(config)
    }

    /// Serde's `deny_unknown_fields` does not work through the flattened
    /// controller settings; walk the merged value instead and name every key
    /// nothing read, with its source.
    fn refuse_unknown_keys(figment: &Figment) -> Result<(), ConfigError> {
        let value: figment::value::Value =
            figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        let mut unknown = Vec::new();
        let read: Result<Config, _> =
            serde_ignored::deserialize(&value, |path| unknown.push(path.to_string()));
        read.map_err(|e| ConfigError(e.to_string()))?;
        unknown.extend(unknown_in_flattened_tables(&value));
        if unknown.is_empty() {
            return Ok(());
        }
        let named: Vec<String> = unknown
            .iter()
            .map(|key| match figment.find_metadata(key) {
                Some(meta) => match &meta.source {
                    Some(source) => format!("`{key}` (in {source})"),
                    None => format!("`{key}` (from {})", meta.name),
                },
                None => format!("`{key}`"),
            })
            .collect();
        Err(ConfigError(format!(
            "unknown configuration key{} {}",
            if named.len() > 1 { "s" } else { "" },
            named.join(", ")
        )))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("{key}: {why}")));
        if let Err(e) = self.listen.parse::<SocketAddr>() {
            return bad(
                "listen",
                format!("{:?} is not an address:port ({e})", self.listen),
            );
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            let scheme = url.split(':').next().unwrap_or_default();
            return bad(
                "database_url",
                format!("must be postgres://… (got scheme {scheme:?}); leave it unset for SQLite"),
            );
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        for (name, spec) in &self.limits {
            if let Err(e) = homeostat_model::limit::validate_limit_name("name", name) {
                return bad(&format!("limits.{name}"), e.message);
            }
            if let Err(e) = spec.validate() {
                return bad(&format!("limits.{name}.{}", e.field), e.message);
            }
        }
        let jobs = &self.jobs;
        if jobs.retry_initial.is_zero() || jobs.retry_initial > jobs.retry_max {
            return bad(
                "jobs.retry_initial",
                "must be above 0 and at most jobs.retry_max".into(),
            );
        }
        if jobs.default_deadline.is_zero() {
            return bad("jobs.default_deadline", "must be above 0".into());
        }
        if jobs.fair_share_turn > Duration::from_secs(3600) {
            return bad(
                "jobs.fair_share_turn",
                "must be at most 1h (0s turns fair share off)".into(),
            );
        }
        let api = &self.api;
        if api.lease_ttl < Duration::from_secs(5) {
            return bad("api.lease_ttl", "must be at least 5s".into());
        }
        if api.heartbeat_interval.is_zero() || api.heartbeat_interval * 2 > api.lease_ttl {
            return bad(
                "api.heartbeat_interval",
                "must be above 0 and at most half of api.lease_ttl, so a lease survives a missed heartbeat".into(),
            );
        }
        if api.heartbeat_flush.is_zero() || api.heartbeat_flush > Duration::from_secs(10) {
            return bad(
                "api.heartbeat_flush",
                "must be above 0 and at most 10s".into(),
            );
        }
        // An agent heartbeating on time must never look silent: a heartbeat
        // reaches the database up to one flush after it arrived, and one
        // delayed by a busy agent or server must not count as missed (an
        // agent at 1 s heartbeats and 3 s stale was once taken offline
        // under load): three intervals and a flush.
        if self.controllers.agent_health.stale_after
            < api.heartbeat_interval * 3 + api.heartbeat_flush
        {
            return bad(
                "controllers.agent_health.stale_after",
                format!(
                    "must be at least three times api.heartbeat_interval ({:?}) plus api.heartbeat_flush ({:?}), or agents that heartbeat on time, or a little late under load, look silent",
                    api.heartbeat_interval, api.heartbeat_flush
                ),
            );
        }
        let max_wait = Duration::from_secs(u64::from(homeostat_model::wire::MAX_CLAIM_WAIT_SECS));
        if api.default_claim_wait > max_wait {
            return bad(
                "api.default_claim_wait",
                format!("must be at most {}s", max_wait.as_secs()),
            );
        }
        if api.request_timeout <= max_wait {
            return bad(
                "api.request_timeout",
                format!(
                    "must be above the longest claim wait ({}s)",
                    max_wait.as_secs()
                ),
            );
        }
        // An agent's heartbeat connection idles one interval between beats:
        // closed then, each beat opens a new connection, and one sent as the
        // server closes fails and is retried (measured: at 1 s beats and a
        // 1 s timeout, a new connection every other beat, one beat in thirty
        // retried).
        if api.header_read_timeout < api.heartbeat_interval * 2 {
            return bad(
                "api.header_read_timeout",
                format!(
                    "must be at least twice api.heartbeat_interval ({:?}), or agents' heartbeat connections are closed between beats",
                    api.heartbeat_interval
                ),
            );
        }
        if api.session_idle.is_zero() || api.session_max_age < api.session_idle {
            return bad(
                "api.session_idle",
                "must be above 0 and at most api.session_max_age".into(),
            );
        }
        if api.max_claims_per_agent == 0 {
            return bad("api.max_claims_per_agent", "must be at least 1".into());
        }
        if api.max_body_bytes < 1024 || api.max_result_bytes > api.max_body_bytes {
            return bad(
                "api.max_body_bytes",
                "must be at least 1024 and at least api.max_result_bytes".into(),
            );
        }
        Ok(())
    }

    /// The database URL: PostgreSQL's, or the SQLite file in the data
    /// directory (created if missing).
    /// The base URL of this configuration's server from the same machine:
    /// its probes listener if it has one, else its API's, a wildcard
    /// address meaning loopback.
    pub(crate) fn local_url(&self) -> String {
        let at = self.api.probes_listen.as_deref().unwrap_or(&self.listen);
        let local = match at.rsplit_once(':') {
            Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
            Some(("[::]", port)) => format!("[::1]:{port}"),
            _ => at.to_owned(),
        };
        format!("http://{local}")
    }

    pub(crate) fn store_url(&self) -> Result<String, ConfigError> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        // Private: it holds the database (payloads, credential hashes). A
        // directory that exists is left as its owner made it.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.data_dir)
            .map_err(|e| {
                ConfigError(format!(
                    "data_dir: cannot create {}: {e}",
                    self.data_dir.display()
                ))
            })?;
        // Opened here first so that a refusal names the file and the reason
        // (SQLite's own says "unable to open database file").
        let file = self.data_dir.join("homeostat.db");
        let opened = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::fs::OpenOptionsExt;
                // Private, as the store would create it.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&file)
            }
            other => other,
        };
        opened
            .map_err(|e| ConfigError(format!("data_dir: cannot open {}: {e}", file.display())))?;
        Ok(format!("sqlite:{}", file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Env {
        Env::prefixed("HOMEOSTAT_NOTHING_SET_HERE_")
    }

    fn file(text: &str) -> tempfile_path::Path {
        tempfile_path::write(text)
    }

    /// A file in the temporary directory, removed when dropped.
    mod tempfile_path {
        pub(super) struct Path(pub(super) std::path::PathBuf);
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        pub(super) fn write(text: &str) -> Path {
            let p = std::env::temp_dir().join(format!(
                "homeostat-config-{}-{}.toml",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::write(&p, text).unwrap();
            Path(p)
        }
    }

    #[test]
    fn the_default_file_reads_back_as_the_defaults() {
        let f = file(DEFAULT_FILE);
        let config = Config::load_from(Some(&f.0), no_env()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail decides the closure's type
    fn a_file_overrides_the_defaults_and_the_environment_overrides_the_file() {
        let f = file("listen = \"0.0.0.0:9000\"\n[api]\nlease_ttl = \"2m\"\n");
        let config = Config::load_from(Some(&f.0), no_env()).unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.api.lease_ttl, Duration::from_secs(120));
        assert_eq!(config.controllers, ControllersConfig::default());
        figment::Jail::expect_with(|jail| {
            jail.set_env("HOMEOSTAT_T1_API__LEASE_TTL", "90s");
            let env = Env::prefixed("HOMEOSTAT_T1_").split("__");
            let config = Config::load_from(Some(&f.0), env).unwrap();
            assert_eq!(config.api.lease_ttl, Duration::from_secs(90));
            assert_eq!(config.listen, "0.0.0.0:9000");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail decides the closure's type
    fn variables_that_name_no_setting_are_not_configuration() {
        figment::Jail::expect_with(|jail| {
            // The CLI's, a script's, and what Kubernetes injects for a
            // Service named `homeostat`: none stops or changes the server.
            for (k, v) in [
                ("SERVER", "http://127.0.0.1:8080"),
                ("TOKEN", "hsk_x"),
                ("BIN", "target/debug/homeostat"),
                ("PORT", "tcp://10.96.0.12:8080"),
                ("SERVICE_HOST", "10.96.0.12"),
                ("SERVICE_PORT", "8080"),
                ("PORT_8080_TCP", "tcp://10.96.0.12:8080"),
                ("PORT_8080_TCP_ADDR", "10.96.0.12"),
                ("PORT_8080_TCP_PROTO", "tcp"),
                ("LISTEN", "127.0.0.1:9999"),
            ] {
                jail.set_env(format!("HOMEOSTAT_T2_{k}"), v);
            }
            let env = Env::prefixed("HOMEOSTAT_T2_").split("__");
            let config = Config::load_from(None, env).unwrap();
            assert_eq!(config.listen, "127.0.0.1:9999", "a setting still applies");
            // Inside a setting's table a typo is still refused.
            jail.set_env("HOMEOSTAT_T2_API__LEASE_TLL", "30s");
            let env = Env::prefixed("HOMEOSTAT_T2_").split("__");
            let err = Config::load_from(None, env).unwrap_err().0;
            assert!(err.contains("lease_tll"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_key_and_source() {
        let f = file("[api]\nlease_ttl = \"soon\"\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(err.contains("lease_ttl"), "{err}");
        let name = f.0.file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.contains(&name), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name_even_inside_flattened_settings() {
        let f = file("[controllers.job_recovery]\nintervall = \"5s\"\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(err.contains("controllers.job_recovery.intervall"), "{err}");
        let name = f.0.file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.contains(&name), "{err}");
        let f = file("listn = \"0.0.0.0:1\"\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(err.contains("`listn`"), "{err}");
    }

    #[test]
    fn limits_are_read_and_a_bad_one_is_refused_by_its_key() {
        let f = file(
            "[limits.per-customer]\nmax_running = 2\nkey_from = \"/customer\"\n\
             rate = { starts = 10, per_secs = 60 }\n",
        );
        let config = Config::load_from(Some(&f.0), no_env()).unwrap();
        let spec = &config.limits["per-customer"];
        assert_eq!(spec.max_running, Some(2));
        assert_eq!(spec.rate.unwrap().starts, 10);
        let f = file("[limits.per-customer]\nmax_running = 0\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(err.contains("limits.per-customer.max_running"), "{err}");
        let f = file("[limits.per-customer]\nmax_runing = 2\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(err.contains("max_runing"), "{err}");
        let f = file("[limits.\"a/b\"]\nmax_running = 2\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(err.contains("limits.a/b"), "{err}");
    }

    #[test]
    fn a_misspelt_key_is_refused_in_every_controller_table() {
        for (table, key) in [
            ("agent_health", "stale_afterr"),
            ("watchdog", "intervalls"),
            ("periodic", "schedule"),
            ("queue_priority", "bonus"),
            ("audit_retention", "dryrun"),
        ] {
            let f = file(&format!("[controllers.{table}]\n{key} = 1\n"));
            let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
            assert!(err.contains(&format!("controllers.{table}.{key}")), "{err}");
        }
        // Their own keys and the flattened interval still read.
        let f = file("[controllers.agent_health]\ninterval = \"10s\"\nstale_after = \"2m\"\n");
        let config = Config::load_from(Some(&f.0), no_env()).unwrap();
        assert_eq!(
            config.controllers.agent_health.stale_after,
            Duration::from_secs(120)
        );
    }

    #[test]
    fn inconsistent_values_are_refused_by_key() {
        let f = file("[api]\nheartbeat_interval = \"50s\"\nlease_ttl = \"60s\"\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(err.starts_with("api.heartbeat_interval"), "{err}");
        let f = file("[api]\nheader_read_timeout = \"15s\"\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(
            err.starts_with("api.header_read_timeout") && err.contains("heartbeat"),
            "{err}"
        );
        let f = file("[api]\nheader_read_timeout = \"2s\"\nheartbeat_interval = \"1s\"\n");
        assert!(Config::load_from(Some(&f.0), no_env()).is_ok());
        let f = file("[controllers.agent_health]\nstale_after = \"15s\"\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(
            err.starts_with("controllers.agent_health.stale_after"),
            "{err}"
        );
        let f = file("listen = \"localhost\"\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(err.starts_with("listen"), "{err}");
        let f = file("database_url = \"mysql://u:secret@h/db\"\n");
        let err = Config::load_from(Some(&f.0), no_env()).unwrap_err().0;
        assert!(err.starts_with("database_url"), "{err}");
        assert!(!err.contains("secret"), "the password leaked: {err}");
    }
}
