//! The reservation sweep: every expired reservation removed in a transaction guarded by what
//! it read, its use given back exactly once however many coordinators sweep at a time.

use super::conn::{decode, got, Conn};
use super::txn::{audit_key, waiting_event, AUDIT_WAITING};
use super::txn::{Ran, MAX_ROUNDS};
use crate::store::rules::{self, Expiry};
use crate::store::{Reservation, StoreError, StoreResult, TokenRecord};
use etcd_client::{KeyValue, TxnOp};

/// Ends every reservation expired at `now`, a page at a time ([`expire_page`]): the
/// uncommitted ones it ended (their uses given back). A page that fails once some expired
/// ends the sweep there.
pub(super) async fn expire_reservations(conn: &Conn, now: u64) -> StoreResult<Vec<Reservation>> {
    let mut expired = Vec::new();
    let mut page = None;
    loop {
        let step = match conn.scan("resv/", &mut page).await {
            Ok(Some(kvs)) => expire_page(conn, &kvs, now, &mut expired).await,
            Ok(None) => break,
            Err(e) => Err(e),
        };
        match step {
            Ok(()) => {}
            // What expired is done (uses given back, certificates revoked and audited): it
            // is answered for the metrics and the log; the rest waits for the next sweep
            // (say, the first page's revision was compacted meanwhile).
            Err(e) if !expired.is_empty() => {
                tracing::warn!(error = %e, "reservation sweep stopped part-way; the rest waits for the next one");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(expired)
}

/// Expires the reservations of one page that are past `now`, each in a transaction
/// guarded by what it read. A record that does not decode is named in the log and left:
/// one bad record must not stop every later reservation from expiring.
async fn expire_page(
    conn: &Conn,
    kvs: &[KeyValue],
    now: u64,
    expired: &mut Vec<Reservation>,
) -> StoreResult<()> {
    for kv in kvs {
        let mut r: Reservation = match decode(kv) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "store: a reservation record does not read; left for an operator");
                continue;
            }
        };
        let resv_key = format!("resv/{}", r.node_id);
        let mut rev = kv.mod_revision();
        let mut rounds = 0;
        while rules::expired(&r, now) {
            rounds += 1;
            if rounds > MAX_ROUNDS {
                tracing::warn!(node_id = %r.node_id, "store: a reservation kept changing while it expired; left for the next sweep");
                break;
            }
            let end = rules::expiry(&r, now);
            let returns = matches!(end, Expiry::Returns { .. });
            if expire_one(conn, &r, rev, end).await? == Ran::Yes {
                if returns {
                    expired.push(r);
                }
                break;
            }
            // Changed since it was read (committed, say), or the audit log grew meanwhile:
            // go again with what is there now. Gone: another coordinator's sweep ended it
            // (and audited it), or this one's lost attempt at a committed reservation did.
            match conn.get::<Reservation>(&resv_key).await {
                Ok(Some(again)) => (r, rev) = (again.value, again.rev),
                Ok(None) | Err(StoreError::Corrupt(_)) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// One expired reservation `r`, read at revision `rev`, removed, and ended as `end`
/// ([`rules::expiry`]) says: its use given back and audited if it was not committed (and
/// then a lost answer is known by its event).
async fn expire_one(conn: &Conn, r: &Reservation, rev: i64, end: Expiry) -> StoreResult<Ran> {
    let resv_key = format!("resv/{}", r.node_id);
    let index_key = format!("resv-key/{}/{}", r.token_id, r.key_hash);
    let mut guards = vec![conn.unchanged(&resv_key, Some(rev))];
    let mut ops = vec![conn.delete(&resv_key)];
    // The key's index goes only if it still points here: the same key may have joined
    // again since, and its new reservation keeps its index.
    if let Some(ix) = conn.get::<String>(&index_key).await? {
        if ix.value == r.node_id {
            guards.push(conn.unchanged(&index_key, Some(ix.rev)));
            ops.push(conn.delete(&index_key));
        }
    }
    if let Expiry::Returns { revoke, event } = end {
        // Give the use back in the same transaction; if another coordinator expires
        // this reservation first, the guard fails and the use is not given twice. A token
        // with no use limit counted it under a key of the join's own: that key goes. (A
        // reservation made before such keys were kept counted it in the record.)
        let token_key = format!("tokens/{}", r.token_id);
        let use_key = format!("token-uses/{}/{}", r.token_id, r.node_id);
        let read = conn.get_many(&[&token_key, &use_key]).await?;
        if read.get(1).is_some_and(Option::is_some) {
            ops.push(conn.delete(&use_key));
        } else {
            match got::<TokenRecord>(read[0].as_ref()) {
                Ok(Some(t)) => {
                    guards.push(conn.unchanged(&token_key, Some(t.rev)));
                    ops.push(conn.put(&token_key, &rules::use_given_back(&t.value), t.lease)?);
                }
                Ok(None) => {}
                // Its certificates are still revoked and the reservation still ends.
                Err(StoreError::Corrupt(e)) => {
                    tracing::warn!(token_id = %r.token_id, error = %e, "store: a token record does not read; its use is not given back")
                }
                Err(e) => return Err(e),
            }
        }
        ops.extend(conn.revoke_ops(&revoke)?);
        let events = [*event];
        let ran = conn.txn_audited(guards, ops, &events).await?;
        return Ok(if ran { Ran::Yes } else { Ran::No });
    }
    conn.txn_ran(guards, ops).await
}

/// How old (by its own time) an audit event is before the sweep files it by number. Until then
/// it waits under its transaction's key, where a step whose answer was lost finds it.
pub(super) const FILE_AFTER_SECS: u64 = 20;

/// Events filed in one transaction.
const FILE_AT_ONCE: usize = 60;

/// Files under `audit/{seq}` the audit events waiting since [`FILE_AFTER_SECS`] or longer, a
/// page at a time, each page in one transaction guarded by what it read (two coordinators
/// sweeping at once file each event once); how many it filed.
pub(super) async fn file_events(conn: &Conn, now: u64) -> StoreResult<usize> {
    let mut filed = 0;
    let mut page = None;
    while let Some(kvs) = conn.scan(AUDIT_WAITING, &mut page).await? {
        let mut due = Vec::new();
        for kv in &kvs {
            let (Some(rest), Ok(e)) = (conn.rest_of(kv), waiting_event(kv)) else {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "store: an audit event does not read; left for an operator");
                continue;
            };
            if e.at.saturating_add(FILE_AFTER_SECS) <= now {
                due.push((rest, kv.mod_revision(), e));
            }
        }
        // etcd takes at most 128 compares and 128 writes in one transaction.
        for chunk in due.chunks(FILE_AT_ONCE) {
            let mut guards = Vec::with_capacity(chunk.len());
            let mut ops: Vec<TxnOp> = Vec::with_capacity(2 * chunk.len());
            for (rest, rev, e) in chunk {
                guards.push(conn.unchanged(rest, Some(*rev)));
                ops.push(conn.delete(rest));
                ops.push(conn.put(&audit_key(e.seq), e, 0)?);
            }
            if conn.txn(guards, ops).await? {
                filed += chunk.len();
            }
        }
    }
    Ok(filed)
}
