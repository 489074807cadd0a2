//! The store's audit log.

use std::time::Duration;

use homeostat_model::operator::AuditVerification;
use homeostat_model::{NewAuditEvent, VerificationId};
use homeostat_runtime::Fence;

use super::{Db, Store};
use crate::{
    AuditFilter, StoreError, VerifyReport, attention, audit, audit_log, time, verifications,
};

impl Store {
    // --- audit ------------------------------------------------------------

    /// Appends events to the audit log (for state changes made outside the
    /// store's own operations).
    pub async fn append_audit(&self, events: &[NewAuditEvent]) -> Result<(), StoreError> {
        dispatch!(self, audit_log::append_events(events, time::ms(self.now())))
    }

    /// Audit events after `after_seq`, oldest first.
    pub async fn audit_events(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<homeostat_model::AuditEvent>, StoreError> {
        let events = dispatch!(self, audit_log::events(after_seq, limit))?;
        Ok(events.into_iter().map(public_event).collect())
    }

    /// The audit events about one subject (`job:<id>`, `agent:<id>`, …),
    /// oldest first.
    pub async fn audit_events_of(
        &self,
        subject: &str,
        limit: u32,
    ) -> Result<Vec<homeostat_model::AuditEvent>, StoreError> {
        let events = dispatch!(self, audit_log::events_of(subject, limit))?;
        Ok(events.into_iter().map(public_event).collect())
    }

    /// Audit events before `before_seq` (from the newest when `None`),
    /// newest first, matching `filter`.
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<homeostat_model::AuditEvent>, StoreError> {
        let events = dispatch!(self, attention::audit_page(filter, before_seq, limit))?;
        Ok(events.into_iter().map(public_event).collect())
    }

    /// How many events the retained audit chain holds (what a verification
    /// walks).
    pub async fn audit_len(&self) -> Result<u64, StoreError> {
        let (first, next) = dispatch!(self, attention::audit_span())?;
        Ok(u64::try_from(next - first).unwrap_or(0))
    }

    /// Walks the whole chain, calling `progress` with the count checked after
    /// each page, and reports the first broken link.
    pub async fn verify_audit_chain(
        &self,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<VerifyReport, StoreError> {
        dispatch!(self, audit_log::verify(progress))
    }

    // --- verifications of the chain, walked by audit-chain-verify ------------

    /// Asks for the chain to be verified: a new verification, pending until
    /// the audit-chain-verify leader walks it, or the one already open.
    pub async fn request_audit_verification(
        &self,
        by: &str,
    ) -> Result<AuditVerification, StoreError> {
        dispatch!(self, verifications::request(by))
    }

    /// Opens a verification only if none was requested in the last `every`
    /// (and none is open); the one opened.
    pub async fn schedule_audit_verification(
        &self,
        by: &str,
        every: Duration,
    ) -> Result<Option<AuditVerification>, StoreError> {
        dispatch!(self, verifications::schedule(by, every))
    }

    /// One verification.
    pub async fn audit_verification(
        &self,
        id: VerificationId,
    ) -> Result<AuditVerification, StoreError> {
        dispatch!(self, verifications::get(id))
    }

    /// The newest verifications, newest first (the store keeps
    /// [`crate::VERIFICATIONS_KEPT`] finished ones).
    pub async fn audit_verifications(
        &self,
        limit: u32,
    ) -> Result<Vec<AuditVerification>, StoreError> {
        dispatch!(self, verifications::latest(limit))
    }

    /// Takes the open verification for walking (fenced: only the
    /// audit-chain-verify leader walks); `None` when none is open.
    pub async fn start_audit_verification(
        &self,
        fence: Option<&Fence>,
    ) -> Result<Option<AuditVerification>, StoreError> {
        dispatch!(self, verifications::start(fence))
    }

    /// Records how far a running walk has got.
    pub async fn record_audit_verification_progress(
        &self,
        id: VerificationId,
        checked: u64,
    ) -> Result<(), StoreError> {
        dispatch!(self, verifications::progress(id, checked))
    }

    /// Records a walk's outcome: its report, or why it stopped. `None` if
    /// the verification was no longer open.
    pub async fn finish_audit_verification(
        &self,
        id: VerificationId,
        outcome: Result<&VerifyReport, &str>,
        fence: Option<&Fence>,
    ) -> Result<Option<AuditVerification>, StoreError> {
        dispatch!(self, verifications::finish(id, outcome, fence))
    }
}

fn public_event(e: audit::ChainedEvent) -> homeostat_model::AuditEvent {
    homeostat_model::AuditEvent {
        seq: e.seq,
        at: time::ts(e.at_ms),
        actor: e.actor,
        action: e.action,
        subject: e.subject,
        details: serde_json::from_str(&e.details).unwrap_or(serde_json::Value::Null),
        prev_hash: hex::encode(&e.prev_hash),
        hash: hex::encode(&e.hash),
    }
}
