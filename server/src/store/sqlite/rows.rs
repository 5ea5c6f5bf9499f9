//! The SQLite store's rows: the schema and its migrations, and reading and writing each
//! record as JSON in its table.

use super::keys::ReservationKeys;
use crate::store::{HostRecord, Reservation, StoreError, StoreResult, TokenRecord};
use muster_protocol::api::AuditEvent;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

/// The schema this build writes. Bump it with a migration in [`migrate`].
pub const SCHEMA_VERSION: i64 = 7;

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn to_json<T: Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_json<T: for<'de> Deserialize<'de>>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(unavailable)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Schema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        upgrade(
            conn,
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE tokens (id TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE reservations (node_id TEXT PRIMARY KEY, token_id TEXT NOT NULL,
                 key_hash TEXT NOT NULL, expires_at INTEGER NOT NULL, json TEXT NOT NULL);
             CREATE INDEX reservations_key ON reservations (token_id, key_hash);
             CREATE INDEX reservations_expiry ON reservations (expires_at);
             CREATE TABLE hosts (node_id TEXT PRIMARY KEY, hostname TEXT NOT NULL UNIQUE, json TEXT NOT NULL);
             CREATE TABLE revoked (serial TEXT PRIMARY KEY);
             CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, json TEXT NOT NULL);
             PRAGMA user_version = 1;",
        )?;
    }
    if found < 2 {
        // Version 2: a commit flips a column instead of rewriting the reservation's record.
        upgrade(
            conn,
            "ALTER TABLE reservations ADD COLUMN committed INTEGER NOT NULL DEFAULT 0;
             PRAGMA user_version = 2;",
        )?;
    }
    if found < 3 {
        // Version 3: a join counts its token's use in a column of its own (`uses`, added to
        // the record's count) rather than rewriting the token's record, and a reservation
        // keeps its two certificates beside its record, so the commit, which has no use for
        // them, neither reads nor decodes them. (A table of their own was tried: it wrote
        // more, 21.4 writes to the log per enrollment against 12.8, `scripts/syscalls.sh`.)
        upgrade(
            conn,
            "ALTER TABLE tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE reservations ADD COLUMN transport_cert_pem TEXT;
             ALTER TABLE reservations ADD COLUMN http_cert_pem TEXT;
             PRAGMA user_version = 3;",
        )?;
    }
    if found < 4 {
        // Version 4: a commit marks its reservation committed by its node id in a table of
        // its own rather than by a column of the reservation's row. That row holds both
        // certificates (about 2.2 KB: one to a page), so flipping the column wrote the whole
        // page again in the commit's batch, one more page per enrollment; the node ids are
        // time-ordered, so a batch's marks share the table's last page.
        upgrade(
            conn,
            "CREATE TABLE reservations_committed (node_id TEXT PRIMARY KEY) WITHOUT ROWID;
             INSERT INTO reservations_committed SELECT node_id FROM reservations WHERE committed;
             ALTER TABLE reservations DROP COLUMN committed;
             PRAGMA user_version = 4;",
        )?;
    }
    if found < 5 {
        // Version 5: the audit log's sequence is its row id. Its rows are never deleted, so
        // the largest plus one never goes back, and no commit writes `sqlite_sequence` (one
        // more page of the log per batch) or reads and updates it for each event.
        upgrade(
            conn,
            "CREATE TABLE audit_v5 (seq INTEGER PRIMARY KEY, json TEXT NOT NULL);
             INSERT INTO audit_v5 (seq, json) SELECT seq, json FROM audit ORDER BY seq;
             DROP TABLE audit;
             ALTER TABLE audit_v5 RENAME TO audit;
             PRAGMA user_version = 5;",
        )?;
    }
    if found < 6 {
        // Version 6: a new reservation keeps its certificates as DER (a BLOB in the same
        // columns; rows already written keep their text). Nothing to rewrite: the version
        // only stops a build that reads those columns as text alone from opening the store.
        upgrade(conn, "PRAGMA user_version = 6;")?;
    }
    if found < 7 {
        // Version 7: the index of reservations by token and key lives in the server's memory
        // ([`super::keys`]), not in the file, where each join wrote a page of its own to it.
        upgrade(
            conn,
            "DROP INDEX IF EXISTS reservations_key;
             PRAGMA user_version = 7;",
        )?;
    }
    // The few hosts that report addresses, indexed apart, so the address refresh reads them
    // alone ([`HOST_ADDRESSES`]) rather than every host's record. An index only: builds that
    // do not know it keep it up to date all the same, so it needs no version.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS hosts_with_addresses ON hosts (node_id)
             WHERE json_array_length(json, '$.host.addresses') > 0",
    )
    .map_err(unavailable)?;
    Ok(())
}

/// One version's migration (its SQL ends by setting `user_version`), in a transaction of its
/// own: a store is at one version or the next, never between.
fn upgrade(conn: &mut Connection, sql: &str) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    tx.execute_batch(sql).map_err(unavailable)?;
    tx.commit().map_err(unavailable)
}

/// What the hosts that report addresses report, in the order they registered, through the
/// `hosts_with_addresses` index.
pub(super) const HOST_ADDRESSES: &str = "SELECT json_extract(json, '$.host') FROM hosts \
     WHERE json_array_length(json, '$.host.addresses') > 0 \
     ORDER BY json_extract(json, '$.registered_at'), node_id";

/// Every token, its uses those in its record and those its column counted since.
pub(super) fn all_tokens(c: &Connection) -> StoreResult<Vec<TokenRecord>> {
    let mut st = c
        .prepare("SELECT json, uses FROM tokens")
        .map_err(unavailable)?;
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(unavailable)?;
    rows.map(|r| r.map_err(unavailable).and_then(token_of))
        .collect()
}

pub(super) fn get_token(tx: &Connection, id: &str) -> StoreResult<Option<TokenRecord>> {
    let row: Option<(String, u32)> = tx
        .prepare_cached("SELECT json, uses FROM tokens WHERE id = ?1")
        .map_err(unavailable)?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(unavailable)?;
    row.map(token_of).transpose()
}

/// A token from its record and its `uses` column.
pub(super) fn token_of((json, uses): (String, u32)) -> StoreResult<TokenRecord> {
    let mut t: TokenRecord = from_json(&json)?;
    t.uses = t.uses.saturating_add(uses);
    Ok(t)
}

/// Writes a token's whole record, its uses counted there (the column starts over).
pub(super) fn put_token(tx: &Connection, t: &TokenRecord) -> StoreResult<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO tokens (id, json, uses) VALUES (?1, ?2, 0)")
        .map_err(unavailable)?
        .execute(params![t.id, to_json(t)?])
        .map_err(unavailable)?;
    Ok(())
}

/// Counts one use of a token without rewriting its record.
pub(super) fn count_use(tx: &Connection, id: &str) -> StoreResult<()> {
    tx.prepare_cached("UPDATE tokens SET uses = uses + 1 WHERE id = ?1")
        .map_err(unavailable)?
        .execute(params![id])
        .map_err(unavailable)?;
    Ok(())
}

pub(super) fn get_host(tx: &Connection, node_id: &str) -> StoreResult<Option<HostRecord>> {
    let s: Option<String> = tx
        .prepare_cached("SELECT json FROM hosts WHERE node_id = ?1")
        .map_err(unavailable)?
        .query_row(params![node_id], |r| r.get(0))
        .optional()
        .map_err(unavailable)?;
    s.map(|s| from_json(&s)).transpose()
}

pub(super) fn put_host(tx: &Connection, h: &HostRecord) -> StoreResult<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO hosts (node_id, hostname, json) VALUES (?1, ?2, ?3)")
        .map_err(unavailable)?
        .execute(params![h.node_id, h.host.hostname, to_json(h)?])
        .map_err(unavailable)?;
    Ok(())
}

/// Appends an audit event in the step's own transaction.
pub(super) fn append_audit(tx: &Connection, e: &AuditEvent) -> StoreResult<()> {
    tx.prepare_cached("INSERT INTO audit (json) VALUES (?1)")
        .map_err(unavailable)?
        .execute(params![to_json(e)?])
        .map_err(unavailable)?;
    Ok(())
}

pub(super) fn revoke_serials(tx: &Connection, serials: &[String]) -> StoreResult<()> {
    for s in serials {
        tx.prepare_cached("INSERT OR IGNORE INTO revoked (serial) VALUES (?1)")
            .map_err(unavailable)?
            .execute(params![s])
            .map_err(unavailable)?;
    }
    Ok(())
}

/// A reservation's columns, as [`reservation_of`] reads them. (A macro, so that each query
/// built on it is one literal, prepared once.)
macro_rules! reservation_select {
    ($columns:literal, $where:literal) => {
        concat!(
            "SELECT json, EXISTS (SELECT 1 FROM reservations_committed c ",
            "WHERE c.node_id = reservations.node_id), ",
            $columns,
            " FROM reservations WHERE ",
            $where
        )
    };
}
pub(super) use reservation_select;

/// The reservation `sql` (a select of [`reservation_row`]'s columns) finds, if any.
pub(super) fn find_reservation(
    tx: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Option<Reservation>> {
    tx.prepare_cached(sql)
        .map_err(unavailable)?
        .query_row(params, reservation_row)
        .optional()
        .map_err(unavailable)?
        .map(reservation_of)
        .transpose()
}

/// A reservation with its certificates, to answer a join with.
pub(super) fn get_reservation(tx: &Connection, node_id: &str) -> StoreResult<Option<Reservation>> {
    let sql = reservation_select!("transport_cert_pem, http_cert_pem", "node_id = ?1");
    find_reservation(tx, sql, params![node_id])
}

/// A reservation without its certificates (empty, unless the record is older than schema
/// version 3), for what has no use for them: a commit, the sweep.
pub(super) fn get_reservation_record(
    tx: &Connection,
    node_id: &str,
) -> StoreResult<Option<Reservation>> {
    let sql = reservation_select!("NULL, NULL", "node_id = ?1");
    find_reservation(tx, sql, params![node_id])
}

/// The reservation of `token_id` and `key_hash` still open at `now`, if any: the rows
/// [`ReservationKeys`] names, read by row id and checked.
pub(super) fn find_reservation_of_key(
    tx: &Connection,
    keys: &ReservationKeys,
    token_id: &str,
    key_hash: &str,
    now: u64,
) -> StoreResult<Option<Reservation>> {
    let sql = reservation_select!(
        "transport_cert_pem, http_cert_pem",
        "rowid = ?1 AND token_id = ?2 AND key_hash = ?3 AND expires_at > ?4"
    );
    for row in keys.rows(token_id, key_hash) {
        let found = find_reservation(tx, sql, params![row, token_id, key_hash, now as i64])?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Enters every reservation row in `keys` (when the store opens).
pub(super) fn load_reservation_keys(conn: &Connection, keys: &ReservationKeys) -> StoreResult<()> {
    let mut st = conn
        .prepare("SELECT rowid, token_id, key_hash FROM reservations")
        .map_err(unavailable)?;
    let mut rows = st.query([]).map_err(unavailable)?;
    while let Some(r) = rows.next().map_err(unavailable)? {
        let token_id: String = r.get(1).map_err(unavailable)?;
        let key_hash: String = r.get(2).map_err(unavailable)?;
        keys.insert(&token_id, &key_hash, r.get(0).map_err(unavailable)?);
    }
    Ok(())
}

/// Writes a new reservation: its certificates in their own columns, the rest as its record;
/// its row id. The certificates are kept as DER when the record carries it (from schema version
/// 6): about 1.8 KB a row rather than 2.2, so two reservations share a page of the file, where
/// each took a page of its own, and a storm's joins write half as many pages.
pub(super) fn insert_reservation(tx: &Connection, mut r: Reservation) -> StoreResult<i64> {
    use rusqlite::types::Value;
    let pems = [
        std::mem::take(&mut r.transport_cert_pem),
        std::mem::take(&mut r.http_cert_pem),
    ];
    let [transport, http] = match r.certs_der.take() {
        Some(ders) => ders.map(Value::Blob),
        None => pems.map(Value::Text),
    };
    tx.prepare_cached("INSERT INTO reservations (node_id, token_id, key_hash, expires_at, json, transport_cert_pem, http_cert_pem) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
        .map_err(unavailable)?
        .execute(params![
            r.node_id,
            r.token_id,
            r.key_hash,
            r.expires_at as i64,
            to_json(&r)?,
            transport,
            http
        ])
        .map_err(unavailable)?;
    Ok(tx.last_insert_rowid())
}

/// A reservation's row: record, committed, certificates.
pub(super) type ReservationRow = (String, bool, Option<String>, Option<String>);

pub(super) fn reservation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReservationRow> {
    Ok((r.get(0)?, r.get(1)?, certificate(r, 2)?, certificate(r, 3)?))
}

/// A certificate column as PEM: DER encoded as the signer encodes it, so a join answered again
/// gets the very text it got first; text as it was written (before schema version 6, or given
/// as text only).
fn certificate(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    match r.get_ref(i)? {
        rusqlite::types::ValueRef::Blob(der) => Ok(Some(crate::pki::certificate_pem(der))),
        _ => r.get(i),
    }
}

/// A reservation from its row: a commit marks it in `reservations_committed` (a column did
/// from schema version 2 to 3, and a record written before version 2 may carry the flag
/// itself); the certificates are in their columns from schema version 3, in the record before.
pub(super) fn reservation_of(
    (json, committed, transport, http): ReservationRow,
) -> StoreResult<Reservation> {
    let mut r: Reservation = from_json(&json)?;
    r.committed |= committed;
    if let Some(pem) = transport {
        r.transport_cert_pem = pem;
    }
    if let Some(pem) = http {
        r.http_cert_pem = pem;
    }
    Ok(r)
}

/// Every JSON record a query returns, decoded.
pub(super) fn query_json<T: for<'de> Deserialize<'de>>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<T>> {
    let mut st = c.prepare(sql).map_err(unavailable)?;
    let rows = st
        .query_map(params, |r| r.get::<_, String>(0))
        .map_err(unavailable)?;
    rows.map(|r| r.map_err(unavailable).and_then(|s| from_json(&s)))
        .collect()
}

pub(super) fn update_host(
    tx: &Connection,
    node_id: String,
    f: impl FnOnce(&Connection, &mut HostRecord) -> StoreResult<()>,
) -> StoreResult<Option<HostRecord>> {
    let Some(mut h) = get_host(tx, &node_id)? else {
        return Ok(None);
    };
    f(tx, &mut h)?;
    put_host(tx, &h)?;
    Ok(Some(h))
}
