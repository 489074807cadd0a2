//! The audit log: hash-chained records of every state change made by a
//! controller or an operator.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// An event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAuditEvent {
    /// Who: `operator:<key id>`, `controller:<name>@<epoch>`, `tenant:<id>`.
    pub actor: String,
    /// What, as `noun.verb`: `job.cancelled`, `token.created`.
    pub action: String,
    /// What it was done to: an id, or a set.
    pub subject: String,
    /// Facts of the change. Never secrets.
    pub details: serde_json::Value,
}

/// An event as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// Position in the log; grows by one per event.
    pub seq: i64,
    /// When.
    pub at: Timestamp,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Details.
    pub details: serde_json::Value,
    /// Hash of the previous event (hex).
    pub prev_hash: String,
    /// SHA-256 of `prev_hash` and this event's canonical content (hex).
    pub hash: String,
}
