//! The audit hash chain, shared by both backends: each event's hash is
//! SHA-256 over the previous hash and the event's canonical content.

use std::future::Future;

use homeostat_model::{AuditAction, NewAuditEvent};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// An event as it is hashed and stored.
#[derive(Debug, Clone)]
pub(crate) struct ChainedEvent {
    pub(crate) seq: i64,
    pub(crate) at_ms: i64,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) subject: String,
    pub(crate) details: String,
    pub(crate) prev_hash: Vec<u8>,
    pub(crate) hash: Vec<u8>,
}

/// The canonical content: fields in a fixed order, length-prefixed so no
/// field can bleed into the next; details as compact JSON with sorted keys.
pub(crate) fn chain_hash(
    prev: &[u8],
    seq: i64,
    at_ms: i64,
    actor: &str,
    action: &str,
    subject: &str,
    details: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at_ms.to_be_bytes());
    for field in [actor, action, subject, details] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

/// Links `events` after the head (`next_seq`, `head_hash`).
pub(crate) fn link(
    events: &[NewAuditEvent],
    at_ms: i64,
    next_seq: i64,
    head_hash: &[u8],
) -> Vec<ChainedEvent> {
    let mut prev = head_hash.to_vec();
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let seq = next_seq + i as i64;
        // serde_json's maps are ordered by key, so this is canonical.
        let details = serde_json::to_string(&e.details).unwrap_or_else(|_| "null".into());
        let hash = chain_hash(&prev, seq, at_ms, &e.actor, &e.action, &e.subject, &details);
        out.push(ChainedEvent {
            seq,
            at_ms,
            actor: e.actor.clone(),
            action: e.action.clone(),
            subject: e.subject.clone(),
            details,
            prev_hash: prev.clone(),
            hash: hash.to_vec(),
        });
        prev = hash.to_vec();
    }
    out
}

pub use homeostat_model::operator::{ChainBreak, VerifyReport};

/// Walks pages of events in sequence order, keeping what it expects next.
pub(crate) struct Verifier {
    pub(crate) expected_seq: i64,
    pub(crate) expected_prev: Vec<u8>,
    pub(crate) checked: u64,
}

impl Verifier {
    pub(crate) fn new(first_seq: i64, first_prev_hash: Vec<u8>) -> Self {
        Self {
            expected_seq: first_seq,
            expected_prev: first_prev_hash,
            checked: 0,
        }
    }

    /// Checks the next event; the first failure is a break.
    pub(crate) fn check(&mut self, e: &ChainedEvent) -> Result<(), ChainBreak> {
        let fail = |reason: String| ChainBreak { seq: e.seq, reason };
        if e.seq != self.expected_seq {
            return Err(ChainBreak {
                seq: self.expected_seq,
                reason: format!(
                    "event {} is missing (the next stored event is {})",
                    self.expected_seq, e.seq
                ),
            });
        }
        if e.prev_hash != self.expected_prev {
            return Err(fail(
                "its previous-hash does not match the event before it (deleted or reordered)"
                    .into(),
            ));
        }
        let hash = chain_hash(
            &e.prev_hash,
            e.seq,
            e.at_ms,
            &e.actor,
            &e.action,
            &e.subject,
            &e.details,
        );
        if e.hash != hash {
            return Err(fail("its content does not match its hash (edited)".into()));
        }
        self.expected_seq += 1;
        self.expected_prev = e.hash.clone();
        self.checked += 1;
        Ok(())
    }

    /// At the end: the head must be where the last event left off.
    pub(crate) fn finish(&self, next_seq: i64, head_hash: &[u8]) -> Option<ChainBreak> {
        if next_seq != self.expected_seq || head_hash != self.expected_prev.as_slice() {
            Some(ChainBreak {
                seq: self.expected_seq,
                reason: format!(
                    "the chain ends at event {} but the head says {} (events at the end deleted)",
                    self.expected_seq - 1,
                    next_seq - 1
                ),
            })
        } else {
            None
        }
    }
}

/// The last event of the oldest run of events (in sequence order, as
/// `(seq, at_ms, hash)`) older than `cutoff_ms`: retention deletes through
/// it and the retained chain starts after it.
pub(crate) fn retention_end(
    oldest: impl IntoIterator<Item = (i64, i64, Vec<u8>)>,
    cutoff_ms: i64,
) -> Option<(i64, Vec<u8>)> {
    oldest
        .into_iter()
        .take_while(|(_, at, _)| *at < cutoff_ms)
        .last()
        .map(|(seq, _, hash)| (seq, hash))
}

/// The audit event recording a retention run.
pub(crate) fn retention_event(
    actor: &str,
    deleted: u64,
    through_seq: i64,
    cutoff_ms: i64,
) -> NewAuditEvent {
    NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::AuditRetention.into(),
        subject: "audit_events".into(),
        details: serde_json::json!({
            "deleted": deleted,
            "through_seq": through_seq,
            "cutoff_ms": cutoff_ms,
        }),
    }
}

/// The chain's bookkeeping row: where appends continue and where the
/// retained chain starts.
pub(crate) struct ChainHead {
    pub(crate) next_seq: i64,
    pub(crate) head_hash: Vec<u8>,
    pub(crate) first_seq: i64,
    pub(crate) first_prev_hash: Vec<u8>,
}

/// Walks the chain page by page (`page(after_seq)` returns the next events
/// in order) and reports the first break.
///
/// What is verified is the chain as the head read at the start describes
/// it: events appended while the walk runs lie past that head and are left
/// to the next verify (a walk that read them would find the chain longer
/// than its head and call that tampering). Retention deletes from the other
/// end while the walk may be there: a break at or before the retained
/// chain's start as `start()` reads it again is retention's doing, and the
/// walk starts over from the new start, the same head as its end.
pub(crate) async fn verify<F, Fut, S, SFut>(
    head: ChainHead,
    mut page: F,
    mut start: S,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<VerifyReport, StoreError>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<Vec<ChainedEvent>, StoreError>>,
    S: FnMut() -> SFut,
    SFut: Future<Output = Result<(i64, Vec<u8>), StoreError>>,
{
    let (mut first_seq, mut first_prev) = (head.first_seq, head.first_prev_hash);
    // Each start over follows a retention run; a few in one walk means the
    // walk is slower than retention, and its break is reported as found.
    let mut restarts = 3;
    'walk: loop {
        let mut verifier = Verifier::new(first_seq, first_prev.clone());
        let mut after = first_seq - 1;
        loop {
            let events = page(after).await?;
            let Some(last) = events.last() else { break };
            after = last.seq;
            for e in events.iter().take_while(|e| e.seq < head.next_seq) {
                if let Err(first_break) = verifier.check(e) {
                    if restarts > 0 {
                        let (now_first, now_prev) = start().await?;
                        if now_first > first_break.seq.max(first_seq) {
                            restarts -= 1;
                            (first_seq, first_prev) = (now_first, now_prev);
                            continue 'walk;
                        }
                    }
                    return Ok(VerifyReport {
                        checked: verifier.checked,
                        first_seq,
                        first_break: Some(first_break),
                    });
                }
            }
            progress(verifier.checked);
            if after >= head.next_seq - 1 {
                break;
            }
        }
        return Ok(VerifyReport {
            checked: verifier.checked,
            first_seq,
            first_break: verifier.finish(head.next_seq, &head.head_hash),
        });
    }
}
