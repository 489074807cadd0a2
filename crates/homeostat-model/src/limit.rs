//! Flow control: limits on how many jobs of a key run at once and how
//! often they start, shared by every queue, kind, agent and replica.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{TenantId, ValidationError, validate_name};

/// The most limits one job may be under (named and applied together).
pub const MAX_LIMITS_PER_JOB: usize = 4;
/// The longest key a job may name or derive (characters).
pub const MAX_KEY_CHARS: usize = 200;
/// The largest running maximum or rate a limit may have.
pub const MAX_LIMIT_VALUE: u32 = 100_000;
/// The longest rate window (seconds): a day.
pub const MAX_RATE_WINDOW_SECS: u64 = 86_400;

/// What a limit does when a job arrives for a key that is at its maximum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LimitStrategy {
    /// The job waits; a key's waiting jobs start in priority order, then
    /// oldest first.
    #[default]
    Wait,
    /// The job waits, and the limit's keys take turns: among jobs the
    /// limits admit, claims serve the keys round-robin instead of oldest
    /// first.
    RoundRobin,
    /// The arriving job is cancelled.
    CancelNewest,
    /// The key's oldest queued or running job is cancelled to make room;
    /// the arriving job starts once its slot is free.
    CancelOldest,
}

impl LimitStrategy {
    /// Every strategy.
    pub const ALL: [LimitStrategy; 4] = [
        LimitStrategy::Wait,
        LimitStrategy::RoundRobin,
        LimitStrategy::CancelNewest,
        LimitStrategy::CancelOldest,
    ];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitStrategy::Wait => "wait",
            LimitStrategy::RoundRobin => "round_robin",
            LimitStrategy::CancelNewest => "cancel_newest",
            LimitStrategy::CancelOldest => "cancel_oldest",
        }
    }
}

impl fmt::Display for LimitStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LimitStrategy {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "strategy",
                    format!(
                        "unknown strategy {}; one of wait, round_robin, cancel_newest, cancel_oldest",
                        crate::error::shown(s)
                    ),
                )
            })
    }
}

/// Where a job's key for a limit comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// The job names it at enqueue (`"job"`).
    #[default]
    Job,
    /// The job's tenant (`"tenant"`): a tenant-wide limit.
    Tenant,
    /// The payload's value at this JSON pointer (`"/customer"`): a string,
    /// or a number or boolean as JSON writes it.
    Payload(String),
}

impl KeySource {
    /// The wire form: `job`, `tenant` or a JSON pointer.
    pub fn as_wire(&self) -> &str {
        match self {
            KeySource::Job => "job",
            KeySource::Tenant => "tenant",
            KeySource::Payload(pointer) => pointer,
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_wire())
    }
}

impl FromStr for KeySource {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "job" => Ok(KeySource::Job),
            "tenant" => Ok(KeySource::Tenant),
            p if p.starts_with('/') && p.len() <= 200 => {
                // RFC 6901: `~` escapes `~` (`~0`) and `/` (`~1`) only. A
                // pointer with another escape names no value a payload
                // can hold, and every job under the limit would be refused.
                let escapes_ok = p
                    .split('~')
                    .skip(1)
                    .all(|after| after.starts_with('0') || after.starts_with('1'));
                if !escapes_ok {
                    return Err(ValidationError::new(
                        "key_from",
                        format!(
                            "{} is not a JSON pointer: `~` is followed by 0 (for ~) or 1 (for /) only",
                            crate::error::shown(p)
                        ),
                    ));
                }
                Ok(KeySource::Payload(p.to_owned()))
            }
            _ => Err(ValidationError::new(
                "key_from",
                format!(
                    "{} is not a key source; \"job\", \"tenant\" or a JSON pointer into the payload like \"/customer\" (at most 200 characters)",
                    crate::error::shown(s)
                ),
            )),
        }
    }
}

impl Serialize for KeySource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_wire())
    }
}

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Whose jobs share a key: a limit's keys are each tenant's own unless the
/// limit says they are shared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Each tenant has its own keys: key `42` of one tenant and key `42` of
    /// another are two keys, so no tenant can fill, or see, another's.
    #[default]
    Tenant,
    /// Every tenant's jobs of a key share its slots and rate (one upstream
    /// account, one machine): a tenant's jobs can wait for another's, and
    /// a job's limit status counts every tenant's.
    Shared,
}

impl LimitScope {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Tenant => "tenant",
            LimitScope::Shared => "shared",
        }
    }
}

impl fmt::Display for LimitScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LimitScope {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tenant" => Ok(LimitScope::Tenant),
            "shared" => Ok(LimitScope::Shared),
            _ => Err(ValidationError::new(
                "scope",
                format!(
                    "unknown scope {}; one of tenant, shared",
                    crate::error::shown(s)
                ),
            )),
        }
    }
}

// By its name, so that a wrong one is refused with an error that says it
// is the scope.
impl<'de> Deserialize<'de> for LimitScope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(|e: ValidationError| serde::de::Error::custom(e.message))
    }
}

/// Between a tenant's id and its key in a key as stored: keys may not hold
/// control characters, so a stored key with one is a tenant's.
const TENANT_SEPARATOR: char = '\u{1f}';

/// The key the store keeps for `key` of a job of `tenant` (a tenant's own
/// key when `tenant` is given, the key itself when shared).
pub fn stored_key(tenant: Option<TenantId>, key: &str) -> String {
    match tenant {
        Some(t) => format!("{t}{TENANT_SEPARATOR}{key}"),
        None => key.to_owned(),
    }
}

/// A stored key split into its tenant (for a tenant's own key) and the key.
pub fn split_stored_key(stored: &str) -> (Option<TenantId>, &str) {
    match stored.split_once(TENANT_SEPARATOR) {
        Some((tenant, key)) => match tenant.parse() {
            Ok(t) => (Some(t), key),
            Err(_) => (None, stored),
        },
        None => (None, stored),
    }
}

/// At most `starts` jobs of a key start in any window of `per_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Starts allowed per window (1 to 100,000).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub starts: u32,
    /// The window, in seconds (1 to 86,400): any window of this length,
    /// not calendar slots.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub per_secs: u64,
}

/// Which jobs a limit applies to without naming it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LimitSelector {
    /// Only jobs of this queue (any queue when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only jobs of this kind (any kind when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl LimitSelector {
    /// Whether a job of `queue` and `kind` is selected.
    pub fn selects(&self, queue: &str, kind: &str) -> bool {
        self.queue.as_deref().is_none_or(|q| q == queue)
            && self.kind.as_deref().is_none_or(|k| k == kind)
    }
}

/// A limit as an operator defines it (its name is the resource's). It
/// needs `max_running`, `rate` or both; `cancel_newest` and `cancel_oldest`
/// need `max_running`: otherwise 422 naming the field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Jobs of one key queued or running at once (1 to 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub max_running: Option<u32>,
    /// Starts of one key per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// What happens to a job that arrives when its key is at the maximum.
    #[serde(default)]
    pub strategy: LimitStrategy,
    /// Where a job's key comes from.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::schema::key_source))]
    pub key_from: KeySource,
    /// Whether a key is each tenant's own (`tenant`, the default) or shared
    /// by every tenant (`shared`). Irrelevant when the key is the tenant.
    #[serde(default)]
    pub scope: LimitScope,
    /// When set, every job it selects is under the limit without naming it
    /// (from the time the limit is set; jobs enqueued before keep theirs).
    /// The key must then come from the tenant or the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applies_to: Option<LimitSelector>,
}

impl LimitSpec {
    /// Checks every field; the error names the first that is wrong.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.max_running.is_none() && self.rate.is_none() {
            return Err(ValidationError::new(
                "max_running",
                "a limit needs max_running, rate, or both",
            ));
        }
        if let Some(n) = self.max_running
            && !(1..=MAX_LIMIT_VALUE).contains(&n)
        {
            return Err(ValidationError::new(
                "max_running",
                format!("{n} is outside 1..={MAX_LIMIT_VALUE}"),
            ));
        }
        if let Some(rate) = self.rate {
            if !(1..=MAX_LIMIT_VALUE).contains(&rate.starts) {
                return Err(ValidationError::new(
                    "rate.starts",
                    format!("{} is outside 1..={MAX_LIMIT_VALUE}", rate.starts),
                ));
            }
            if !(1..=MAX_RATE_WINDOW_SECS).contains(&rate.per_secs) {
                return Err(ValidationError::new(
                    "rate.per_secs",
                    format!("{} is outside 1..={MAX_RATE_WINDOW_SECS}", rate.per_secs),
                ));
            }
        }
        if matches!(
            self.strategy,
            LimitStrategy::CancelNewest | LimitStrategy::CancelOldest
        ) && self.max_running.is_none()
        {
            return Err(ValidationError::new(
                "strategy",
                format!(
                    "{} cancels jobs of a key at its running maximum; it needs max_running",
                    self.strategy
                ),
            ));
        }
        if let Some(selector) = &self.applies_to {
            if self.key_from == KeySource::Job {
                return Err(ValidationError::new(
                    "key_from",
                    "a limit that applies to jobs without being named takes its key from the tenant or the payload, not the job",
                ));
            }
            if let Some(q) = &selector.queue {
                validate_name("applies_to.queue", q)?;
            }
            if let Some(k) = &selector.kind {
                validate_name("applies_to.kind", k)?;
            }
        }
        Ok(())
    }
}

/// A limit as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Limit {
    /// Its name (`per-customer`).
    pub name: String,
    /// What it limits, as set (`PUT /v1/limits/{name}`'s body). Nested
    /// rather than flattened: the spec refuses unknown fields, and a
    /// flattened schema that does cannot describe the fields beside it.
    pub spec: LimitSpec,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
}

/// A limit a job names at enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobLimit {
    /// The limit's name.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._-]+$")
    )]
    pub limit: String,
    /// The key (1 to 200 characters); required when the limit takes it
    /// from the job, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub key: Option<String>,
}

impl JobLimit {
    /// A limit named with its key.
    pub fn new(limit: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            limit: limit.into(),
            key: Some(key.into()),
        }
    }
}

/// One limit and key a job is under (its key resolved).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitKey {
    /// The limit's name.
    pub limit: String,
    /// The key.
    pub key: String,
    /// The tenant whose own key it is (limits scoped by tenant); absent for
    /// a key every tenant shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
}

impl LimitKey {
    /// A limit's key as the store keeps it.
    pub fn from_stored(limit: String, stored: &str) -> Self {
        let (tenant, key) = split_stored_key(stored);
        Self {
            limit,
            key: key.to_owned(),
            tenant,
        }
    }

    /// The key as the store keeps it.
    pub fn stored(&self) -> String {
        stored_key(self.tenant, &self.key)
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.limit, self.key)
    }
}

/// Checks a limit's name: 1 to 100 of `A-Z a-z 0-9 . _ -`, not `.` or
/// `..` and not starting with `-` (it is a path segment of the API, which
/// clients resolve `.` and `..` out of, and an argument of the CLI, which
/// reads `-x` as a flag; `limit:key` names a key).
pub fn validate_limit_name(field: &'static str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.len() > 100 {
        return Err(ValidationError::new(
            field,
            format!(
                "a limit's name must be 1 to 100 characters, got {}",
                name.len()
            ),
        ));
    }
    if name == "." || name == ".." || name.starts_with('-') {
        return Err(ValidationError::new(
            field,
            format!(
                "a limit's name may not be . or .. or start with -, got {}",
                crate::error::shown(name)
            ),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ValidationError::new(
            field,
            format!("a limit's name contains {bad:?}; allowed are letters, digits and . _ -"),
        ));
    }
    Ok(())
}

/// Checks a key: 1 to [`MAX_KEY_CHARS`] characters, no control characters.
pub fn validate_key(field: &'static str, key: &str) -> Result<(), ValidationError> {
    let n = key.chars().count();
    if n == 0 || n > MAX_KEY_CHARS {
        return Err(ValidationError::new(
            field,
            format!("a key must be 1 to {MAX_KEY_CHARS} characters, got {n}"),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "a key may not hold control characters",
        ));
    }
    Ok(())
}

/// The key `source` gives a job of `tenant` with `payload`, or why none.
pub fn derive_key(
    source: &KeySource,
    tenant: &str,
    payload: &serde_json::Value,
) -> Result<String, String> {
    match source {
        KeySource::Job => Err("the limit takes its key from the job, which names none".into()),
        KeySource::Tenant => Ok(tenant.to_owned()),
        KeySource::Payload(pointer) => match payload.pointer(pointer) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                Ok(v.to_string())
            }
            Some(_) => Err(format!(
                "the payload's value at {pointer} is not a string, number or boolean"
            )),
            None => Err(format!("the payload has no value at {pointer}")),
        },
    }
}

/// How one key of a limit stands: what holds its slots and what waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyUsage {
    /// The key.
    pub key: String,
    /// The tenant whose own key it is; absent for a shared key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// Jobs of the key running now.
    pub running: u64,
    /// Jobs of the key admitted and waiting for an agent (they hold a slot).
    pub queued: u64,
    /// Cancelled jobs whose agent may still be stopping them (they hold a
    /// slot until their lease runs out).
    pub stopping: u64,
    /// Jobs waiting for a slot or a start.
    pub waiting: u64,
    /// Starts within the rate's window.
    pub recent_starts: u64,
}

/// A limit and its keys, the busiest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitUsage {
    /// The limit.
    #[serde(flatten)]
    pub limit: Limit,
    /// Keys with jobs holding slots or waiting: running plus queued plus
    /// stopping.
    pub holding: u64,
    /// Of them, jobs running now.
    pub running: u64,
    /// Jobs waiting under the limit.
    pub waiting: u64,
    /// Jobs that wait because of the rate alone (their key has a free
    /// slot).
    pub delayed_by_rate: u64,
    /// How many keys have jobs holding slots or waiting.
    pub active_keys: u64,
    /// The busiest keys (most waiting, then most holding), at most 20.
    pub hottest: Vec<KeyUsage>,
}

/// Why a job waits: one of its limits and how its key stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobLimitStatus {
    /// The limit and key.
    #[serde(flatten)]
    pub key: LimitKey,
    /// The limit's running maximum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// The limit's rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Slots of the key held now (running, queued, stopping).
    pub holding: u64,
    /// Starts of the key within the rate's window.
    pub recent_starts: u64,
    /// Whether this limit keeps the job waiting now.
    pub blocking: bool,
}

impl JobLimitStatus {
    /// "per-customer:42, 2 of 2 running".
    pub fn describe(&self) -> String {
        let mut out = self.key.to_string();
        if let Some(max) = self.max_running {
            out.push_str(&format!(", {} of {max} running", self.holding));
        }
        if let Some(rate) = self.rate {
            out.push_str(&format!(
                ", {} of {} starts in {}s",
                self.recent_starts, rate.starts, rate.per_secs
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_spec_needs_a_maximum_or_a_rate_and_names_the_wrong_field() {
        let spec = LimitSpec::default();
        assert_eq!(spec.validate().unwrap_err().field, "max_running");
        let spec = LimitSpec {
            rate: Some(Rate {
                starts: 5,
                per_secs: 0,
            }),
            ..LimitSpec::default()
        };
        assert_eq!(spec.validate().unwrap_err().field, "rate.per_secs");
        let spec = LimitSpec {
            rate: Some(Rate {
                starts: 5,
                per_secs: 60,
            }),
            strategy: LimitStrategy::CancelNewest,
            ..LimitSpec::default()
        };
        assert_eq!(spec.validate().unwrap_err().field, "strategy");
        let spec = LimitSpec {
            max_running: Some(2),
            applies_to: Some(LimitSelector::default()),
            ..LimitSpec::default()
        };
        assert_eq!(spec.validate().unwrap_err().field, "key_from");
        let spec = LimitSpec {
            max_running: Some(2),
            key_from: KeySource::Tenant,
            applies_to: Some(LimitSelector::default()),
            ..LimitSpec::default()
        };
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn a_tenants_own_key_is_stored_apart_from_a_shared_one_and_read_back() {
        let tenant = TenantId::at(jiff::Timestamp::UNIX_EPOCH);
        let own = stored_key(Some(tenant), "42");
        assert_ne!(own, stored_key(None, "42"));
        assert_ne!(
            own,
            stored_key(Some(TenantId::at(jiff::Timestamp::MAX)), "42")
        );
        assert_eq!(split_stored_key(&own), (Some(tenant), "42"));
        assert_eq!(split_stored_key("42"), (None, "42"));
        let key = LimitKey::from_stored("per-customer".into(), &own);
        assert_eq!((key.tenant, key.key.as_str()), (Some(tenant), "42"));
        assert_eq!(key.stored(), own);
        assert_eq!(key.to_string(), "per-customer:42");
        // A key as a job names it cannot pass for a tenant's: separators are
        // control characters, which keys may not hold.
        assert!(validate_key("key", &own).is_err());
        let spec: LimitSpec = serde_json::from_value(json!({"max_running": 2})).unwrap();
        assert_eq!(spec.scope, LimitScope::Tenant);
        let spec: LimitSpec =
            serde_json::from_value(json!({"max_running": 2, "scope": "shared"})).unwrap();
        assert_eq!(spec.scope, LimitScope::Shared);
        assert!(
            serde_json::from_value::<LimitSpec>(json!({"max_running": 2, "scope": "global"}))
                .is_err()
        );
    }

    #[test]
    fn a_limits_name_is_one_a_path_and_a_command_line_can_carry() {
        let long = "n".repeat(100);
        for good in [
            "per-customer",
            "a",
            "9.x_y-z",
            "_x",
            ".hidden",
            "...",
            long.as_str(),
        ] {
            assert!(validate_limit_name("name", good).is_ok(), "{good}");
        }
        for bad in [".", "..", "-lead", "", "a b", "a/b"] {
            let err = validate_limit_name("name", bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad}");
        }
        for bad in [".", "..", "-lead"] {
            let err = validate_limit_name("name", bad).unwrap_err();
            assert!(err.message.contains("may not be . or .."), "{bad}");
        }
    }

    #[test]
    fn key_sources_read_job_tenant_or_a_pointer_and_refuse_the_rest() {
        assert_eq!("job".parse::<KeySource>().unwrap(), KeySource::Job);
        assert_eq!("tenant".parse::<KeySource>().unwrap(), KeySource::Tenant);
        assert_eq!(
            "/customer/id".parse::<KeySource>().unwrap(),
            KeySource::Payload("/customer/id".into())
        );
        let err = "customer".parse::<KeySource>().unwrap_err();
        assert_eq!(err.field, "key_from");
        assert_eq!(
            "/a~1b/~0c".parse::<KeySource>().unwrap(),
            KeySource::Payload("/a~1b/~0c".into())
        );
        for bad in ["/a~2", "/a~", "/~/b"] {
            let err = bad.parse::<KeySource>().unwrap_err();
            assert_eq!(err.field, "key_from", "{bad}");
            assert!(err.message.contains("not a JSON pointer"), "{bad}");
        }
        let spec: LimitSpec =
            serde_json::from_value(json!({"max_running": 2, "key_from": "/c"})).unwrap();
        assert_eq!(spec.key_from, KeySource::Payload("/c".into()));
        assert!(
            serde_json::from_value::<LimitSpec>(json!({"max_running": 2, "colour": "red"}))
                .is_err()
        );
    }

    #[test]
    fn keys_derive_from_the_payload_or_the_tenant() {
        let payload = json!({"customer": {"id": 42, "name": "acme"}, "flag": true, "list": [1]});
        let p = |s: &str| KeySource::Payload(s.into());
        assert_eq!(derive_key(&p("/customer/id"), "t", &payload).unwrap(), "42");
        assert_eq!(
            derive_key(&p("/customer/name"), "t", &payload).unwrap(),
            "acme"
        );
        assert_eq!(derive_key(&p("/flag"), "t", &payload).unwrap(), "true");
        assert!(
            derive_key(&p("/list"), "t", &payload)
                .unwrap_err()
                .contains("not a string")
        );
        assert!(
            derive_key(&p("/missing"), "t", &payload)
                .unwrap_err()
                .contains("no value")
        );
        assert_eq!(
            derive_key(&KeySource::Tenant, "t1", &payload).unwrap(),
            "t1"
        );
    }

    #[test]
    fn a_status_reads_as_the_job_page_says_it() {
        let status = JobLimitStatus {
            key: LimitKey {
                limit: "per-customer".into(),
                key: "42".into(),
                tenant: None,
            },
            max_running: Some(2),
            rate: None,
            holding: 2,
            recent_starts: 0,
            blocking: true,
        };
        assert_eq!(status.describe(), "per-customer:42, 2 of 2 running");
    }

    #[test]
    fn keys_are_bounded_and_printable() {
        assert!(validate_key("key", "42").is_ok());
        assert_eq!(
            validate_key("limits[0].key", "").unwrap_err().field,
            "limits[0].key"
        );
        assert!(validate_key("key", &"x".repeat(201)).is_err());
        assert!(validate_key("key", "a\nb").is_err());
    }
}
