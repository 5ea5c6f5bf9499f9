//! Guarded transactions: every step writes in one etcd transaction guarded by the mod
//! revisions of the keys it read, and appends its audit events in the same one, under keys of
//! its own: no counter every step would write (and contend for). A transaction whose answer
//! was lost (its member applied it, then died) is told from somebody else's change by what it
//! wrote; tests lose answers on purpose (`Conn::lose_answers`).

use super::conn::{decode, json, unreachable, Conn};
use crate::store::{StoreError, StoreResult};
use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
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
        Ok(self.txn_at(guards, ops).await?.0 == Ran::Yes)
    }

    /// Runs `ops` if every guard holds: whether it ran, did not, or may have on an attempt
    /// whose answer was lost.
    pub(super) async fn txn_ran(&self, guards: Vec<Compare>, ops: Vec<TxnOp>) -> StoreResult<Ran> {
        Ok(self.txn_at(guards, ops).await?.0)
    }

    /// [`Conn::txn_ran`], with the revision etcd answered at: when the transaction ran, the
    /// mod revision of every key it wrote.
    pub(super) async fn txn_at(
        &self,
        guards: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> StoreResult<(Ran, i64)> {
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
        if !resp.succeeded() {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        let rev = resp.header().map_or(0, |h| h.revision());
        let ran = if resp.succeeded() {
            Ran::Yes
        } else if lost.load(Ordering::Relaxed) {
            Ran::Unsure
        } else {
            Ran::No
        };
        Ok((ran, rev))
    }

    /// Tests: whether to lose this answer.
    #[cfg(test)]
    fn lose_answer(&self) -> bool {
        self.lose_answers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The writes appending `events` (at most [`EVENTS_PER_TXN`]), each under a key of this
    /// transaction's own (`audit-new/{txn}/{i}`), and the transaction's id. No two
    /// transactions write one key, so concurrent steps never contend over the audit log:
    /// etcd's revision orders them ([`waiting_event`]).
    pub(super) fn audit_ops(&self, events: &[AuditEvent]) -> StoreResult<(String, Vec<TxnOp>)> {
        debug_assert!(events.len() as u64 <= EVENTS_PER_TXN);
        let txn = uuid::Uuid::now_v7().simple().to_string();
        let ops = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                self.put(
                    &waiting_key(&txn, i),
                    &AuditEvent {
                        seq: 0,
                        ..e.clone()
                    },
                    0,
                )
            })
            .collect::<StoreResult<_>>()?;
        Ok((txn, ops))
    }

    /// Runs `ops` if every guard holds, appending `events` (at least one: they are what tells a
    /// lost answer) in the same transaction; whether it ran. An attempt whose answer was lost
    /// ran if its first event is there: its key is this attempt's alone.
    pub(super) async fn txn_audited(
        &self,
        guards: Vec<Compare>,
        mut ops: Vec<TxnOp>,
        events: &[AuditEvent],
    ) -> StoreResult<bool> {
        debug_assert!(!events.is_empty(), "a lost answer is told by its event");
        let (txn, audit) = self.audit_ops(events)?;
        ops.extend(audit);
        Ok(match self.txn_ran(guards, ops).await? {
            Ran::Yes => true,
            Ran::No => false,
            Ran::Unsure => {
                let opts = etcd_client::GetOptions::new().with_count_only();
                self.range(&waiting_key(&txn, 0), Some(opts)).await?.count() > 0
            }
        })
    }

    pub(super) fn revoke_ops(&self, serials: &[String]) -> StoreResult<Vec<TxnOp>> {
        serials
            .iter()
            .map(|s| self.put(&format!("revoked/{s}"), &(), 0))
            .collect()
    }
}

/// Where a transaction's audit events wait to be filed by number: under the transaction's
/// id, then their place in it.
pub(super) const AUDIT_WAITING: &str = "audit-new/";

/// At most this many events per transaction: an event's number is its transaction's revision
/// times this, plus its place in the transaction.
pub(super) const EVENTS_PER_TXN: u64 = 16;

fn waiting_key(txn: &str, i: usize) -> String {
    format!("{AUDIT_WAITING}{txn}/{i:02}")
}

/// A waiting event as read, numbered: its transaction's revision (every write of one
/// transaction has it; later transactions have later ones) times [`EVENTS_PER_TXN`], plus its
/// place in the transaction. Numbers so grow in the order etcd committed the events, on every
/// coordinator, with no counter anyone writes.
pub(super) fn waiting_event(kv: &KeyValue) -> StoreResult<AuditEvent> {
    let e: AuditEvent = decode(kv)?;
    let place = kv
        .key_str()
        .ok()
        .and_then(|k| k.rsplit('/').next())
        .and_then(|i| i.parse::<u64>().ok())
        .filter(|i| *i < EVENTS_PER_TXN)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{}: not an audit event's key",
                String::from_utf8_lossy(kv.key())
            ))
        })?;
    let rev = u64::try_from(kv.create_revision()).unwrap_or(0);
    Ok(AuditEvent {
        seq: rev * EVENTS_PER_TXN + place,
        ..e
    })
}

/// Where audit event `seq` is filed: zero-padded, so the keys sort as the numbers do.
pub(super) fn audit_key(seq: u64) -> String {
    format!("audit/{seq:020}")
}

pub(super) fn contended() -> StoreError {
    StoreError::Unavailable("etcd: too many concurrent changes to the same records; retry".into())
}
