//! Guarded transactions: every step writes in one etcd transaction guarded by the mod
//! revisions of the keys it read, and appends its audit events in the same one. A transaction
//! whose answer was lost (its member applied it, then died) is told from somebody else's change
//! by what it wrote; tests lose answers on purpose
//! (`Conn::lose_answers`).

use super::conn::{json, unreachable, Conn};
use crate::store::{StoreError, StoreResult};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use muster_protocol::api::AuditEvent;
use serde::Serialize;
use std::sync::atomic::Ordering;

/// Compare-and-swap rounds before a step gives up as contended.
pub(super) const MAX_ROUNDS: u32 = 1000;

/// What a guarded transaction came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ran {
    /// Its guards held and its writes were made.
    Yes,
    /// Its guards did not hold: nothing was written.
    No,
    /// Its guards did not hold on a retry, after an attempt whose answer never came: that
    /// attempt may have made the writes (and so broken the guards). The caller reads again and
    /// tells by what it finds.
    Unsure,
}

impl Conn {
    /// The guard that `rest` is as it was read: same mod revision, or still absent.
    pub(super) fn unchanged(&self, rest: &str, rev: Option<i64>) -> Compare {
        match rev {
            Some(r) => Compare::mod_revision(self.key(rest), CompareOp::Equal, r),
            None => Compare::version(self.key(rest), CompareOp::Equal, 0),
        }
    }

    pub(super) fn put<T: Serialize>(&self, rest: &str, v: &T, lease: i64) -> StoreResult<TxnOp> {
        let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        Ok(TxnOp::put(self.key(rest), json(v)?, opts))
    }

    pub(super) fn delete(&self, rest: &str) -> TxnOp {
        TxnOp::delete(self.key(rest), None)
    }

    /// Runs `ops` if every guard holds; whether it ran. A step that must tell its own earlier
    /// attempt from somebody else's change uses [`Conn::txn_ran`].
    pub(super) async fn txn(&self, guards: Vec<Compare>, ops: Vec<TxnOp>) -> StoreResult<bool> {
        Ok(self.txn_ran(guards, ops).await? == Ran::Yes)
    }

    /// Runs `ops` if every guard holds: whether it ran, did not, or may have on an attempt
    /// whose answer was lost.
    pub(super) async fn txn_ran(&self, guards: Vec<Compare>, ops: Vec<TxnOp>) -> StoreResult<Ran> {
        let txn = Txn::new().when(guards).and_then(ops);
        let lost = std::sync::atomic::AtomicBool::new(false);
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                let lost = &lost;
                async move {
                    let answer = c.txn(txn).await;
                    #[cfg(test)]
                    let answer = match answer {
                        Ok(_) if self.lose_answer() => Err(etcd_client::Error::IoError(
                            std::io::Error::other("answer lost (test)"),
                        )),
                        other => other,
                    };
                    if answer.as_ref().is_err_and(unreachable) {
                        lost.store(true, Ordering::Relaxed);
                    }
                    answer
                }
            })
            .await?;
        Ok(if resp.succeeded() {
            Ran::Yes
        } else if lost.load(Ordering::Relaxed) {
            Ran::Unsure
        } else {
            Ran::No
        })
    }

    /// Tests: whether to lose this answer.
    #[cfg(test)]
    fn lose_answer(&self) -> bool {
        self.lose_answers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Where the next audit events go: the guard that nobody appended meanwhile, and the
    /// number of the first.
    pub(super) async fn audit_slot(&self) -> StoreResult<(Compare, u64)> {
        let last = self.get::<u64>(AUDIT_SEQ).await?;
        let guard = self.unchanged(AUDIT_SEQ, last.as_ref().map(|s| s.rev));
        Ok((guard, last.map_or(0, |s| s.value) + 1))
    }

    /// The writes appending `events`, numbered from `first` on (from [`Self::audit_slot`],
    /// whose guard goes with them).
    pub(super) fn audit_ops(&self, first: u64, events: &[AuditEvent]) -> StoreResult<Vec<TxnOp>> {
        let mut ops = Vec::with_capacity(events.len() + 1);
        let mut seq = first;
        for e in events {
            let e = AuditEvent { seq, ..e.clone() };
            ops.push(self.put(&audit_key(seq), &e, 0)?);
            seq += 1;
        }
        if seq > first {
            ops.push(self.put(AUDIT_SEQ, &(seq - 1), 0)?);
        }
        Ok(ops)
    }

    /// Runs `ops` if every guard holds and nobody appended to the audit log meanwhile,
    /// appending `events` (at least one: they are what tells a lost answer) in the same
    /// transaction; whether it ran. An attempt whose answer was lost ran if its first event is
    /// there under the number it was given: only a transaction guarded as this one writes that
    /// number, so it is this attempt, or another step making the same change at the same second
    /// from the same source (the same event, and the same outcome).
    pub(super) async fn txn_audited(
        &self,
        mut guards: Vec<Compare>,
        mut ops: Vec<TxnOp>,
        events: &[AuditEvent],
    ) -> StoreResult<bool> {
        debug_assert!(!events.is_empty(), "a lost answer is told by its event");
        let (guard, seq) = self.audit_slot().await?;
        guards.push(guard);
        ops.extend(self.audit_ops(seq, events)?);
        Ok(match self.txn_ran(guards, ops).await? {
            Ran::Yes => true,
            Ran::No => false,
            Ran::Unsure => match events.first() {
                Some(e) => self
                    .get::<AuditEvent>(&audit_key(seq))
                    .await?
                    .is_some_and(|there| there.value == AuditEvent { seq, ..e.clone() }),
                None => false,
            },
        })
    }

    pub(super) fn revoke_ops(&self, serials: &[String]) -> StoreResult<Vec<TxnOp>> {
        serials
            .iter()
            .map(|s| self.put(&format!("revoked/{s}"), &(), 0))
            .collect()
    }
}

/// The last audit event's number.
const AUDIT_SEQ: &str = "audit-seq";

/// Where audit event `seq` is kept: zero-padded, so the keys sort as the numbers do.
pub(super) fn audit_key(seq: u64) -> String {
    format!("audit/{seq:020}")
}

pub(super) fn contended() -> StoreError {
    StoreError::Unavailable("etcd: too many concurrent changes to the same records; retry".into())
}
