//! The store interface: everything `musterd` keeps goes through [`Store`].
//!
//! Each method is one atomic step of the protocol (reserve a join, commit it, expire it,
//! revoke a token), so a backend maps it to one transaction: an SQLite `BEGIN IMMEDIATE`, an etcd
//! `Txn` with compare-and-swap ([`etcd`]). Records are plain serde values; backends store them
//! as JSON. A step whose change is audited appends the event that records it in the same
//! transaction ([`used_event`], [`commit_events`], [`returned_event`], and the events the caller
//! hands to `insert_token`, `revoke_token` and `remove_host`).
//! The conformance tests in [`conformance`] run against every backend.

pub mod etcd;
pub mod sqlite;

use async_trait::async_trait;
use muster_protocol::api::AuditEvent;
use muster_protocol::node::HostFacts;
use muster_protocol::token::TokenKind;
use muster_protocol::Role;
use serde::{Deserialize, Serialize};

/// A roles token as the server keeps it: its id and a hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Lowercase hex SHA-256 of the whole token string.
    pub hash: String,
    pub kind: TokenKind,
    pub roles: Vec<Role>,
    pub created: u64,
    pub expires: Option<u64>,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub allowed_sources: Vec<String>,
    pub revoked: bool,
}

/// A join that answered with a bundle but is not committed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub node_id: String,
    pub token_id: String,
    /// SHA-256 (hex) of the transport key's SPKI: the same key asking again gets this back.
    pub key_hash: String,
    /// DER SPKI of the transport key, to check the commit's proof of possession.
    #[serde(with = "der_base64")]
    pub spki_der: Vec<u8>,
    pub host: HostFacts,
    pub roles: Vec<Role>,
    pub pending_roles: Vec<Role>,
    /// Serials (hex) of the certificates issued with this join.
    pub serials: Vec<String>,
    pub transport_cert_pem: String,
    pub http_cert_pem: String,
    pub cert_not_after: u64,
    pub created: u64,
    pub expires_at: u64,
    pub source: String,
    /// Committed: kept until `expires_at` so that a host that lost the commit's answer and
    /// joins again with the same key gets its bundle back instead of "use limit reached".
    #[serde(default)]
    pub committed: bool,
}

/// A registered host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub node_id: String,
    pub token_id: String,
    pub host: HostFacts,
    pub roles: Vec<Role>,
    pub pending_roles: Vec<Role>,
    #[serde(with = "der_base64")]
    pub spki_der: Vec<u8>,
    /// Serials (hex) of its valid certificates, a transport and HTTP pair at a time: the
    /// current pair first, then (after a renewal) the pair it renewed with.
    pub serials: Vec<String>,
    pub cert_not_after: u64,
    pub registered_at: u64,
    pub last_heartbeat: u64,
    pub memory_used_mb: u64,
}

/// A host's serials, as a renewal to `new` leaves them: split into those to keep (in `keep`)
/// and those to revoke. The new ones are neither: a renewal step run again (a backend retrying
/// a request whose answer was lost) finds them recorded already, and must not revoke them.
fn split_serials(old: &[String], new: &[String], keep: &[String]) -> (Vec<String>, Vec<String>) {
    old.iter()
        .filter(|s| !new.contains(s))
        .cloned()
        .partition(|s| keep.contains(s))
}

/// DER bytes in a record, as base64; the array of numbers that records written by earlier
/// versions hold reads too.
mod der_base64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(der: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(der))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Der;
        impl<'de> de::Visitor<'de> for Der {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("DER as base64, or as an array of bytes")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                STANDARD.decode(v).map_err(E::custom)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut der = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    der.push(b);
                }
                Ok(der)
            }
        }
        d.deserialize_any(Der)
    }
}

/// What [`Store::reserve`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// A new reservation, counted as one use of the token.
    Reserved,
    /// The same key already holds a live reservation with this token: here it is.
    Existing(Box<Reservation>),
    UnknownToken,
    Revoked,
    UseLimitReached,
}

/// What [`Store::commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Registered; `replaced` is the older record of the same hostname, whose certificates are
    /// now revoked.
    Committed {
        host: Box<HostRecord>,
        replaced: Option<Box<HostRecord>>,
    },
    /// Already registered by an earlier commit.
    AlreadyCommitted(Box<HostRecord>),
    /// No live reservation and no host with that id.
    Unknown,
    /// A host of that hostname is registered with roles the reservation does not have:
    /// replacing it takes a join granting all of them ([`may_replace`]). Nothing changed.
    ReplaceRefused(Box<HostRecord>),
    /// The token the join used (its id here) was revoked since: a leaked token revoked is
    /// revoked for joins it answered and that are not committed yet. Nothing changed; the
    /// reservation expires as any other (its certificates revoked).
    TokenRevoked(String),
}

/// Whether a join with token `t` is refused at its commit: `t` was revoked, and not by the
/// sweep retiring it past its expiry (a join answered before then commits within its
/// reservation).
pub fn revoked_before_commit(t: &TokenRecord, now: u64) -> bool {
    let retired = t
        .expires
        .is_some_and(|e| e.saturating_add(muster_protocol::token::LEEWAY_SECS) < now);
    t.revoked && !retired
}

/// Whether a host joined with `roles` may replace `old`, registered under its hostname: only
/// with every role `old` has, so that a weaker token cannot knock a host off the registry.
pub fn may_replace(old: &HostRecord, roles: &[Role]) -> bool {
    old.roles.iter().all(|r| roles.contains(r))
}

/// An audit event, numbered by the store that appends it.
pub fn event(
    at: u64,
    event: &str,
    token_id: Option<&str>,
    node: Option<(&str, &str)>,
    source: Option<&str>,
    reason: Option<&str>,
) -> AuditEvent {
    AuditEvent {
        seq: 0,
        at,
        event: event.into(),
        token_id: token_id.map(str::to_string),
        node_id: node.map(|n| n.0.to_string()),
        hostname: node.map(|n| n.1.to_string()),
        source: source.map(str::to_string),
        reason: reason.map(str::to_string),
    }
}

/// What [`Store::reserve`] appends with a new reservation: its token's use, by the joining
/// address.
pub fn used_event(r: &Reservation, at: u64) -> AuditEvent {
    about_reservation("used", r, at, Some(&r.source))
}

/// What [`Store::commit`] appends with a new host: the host it replaced, if any, then the
/// host itself.
pub fn commit_events(
    host: &HostRecord,
    replaced: Option<&HostRecord>,
    at: u64,
    source: &str,
) -> Vec<AuditEvent> {
    let about = |name, h: &HostRecord| {
        let node = Some((h.node_id.as_str(), h.host.hostname.as_str()));
        event(at, name, Some(&host.token_id), node, Some(source), None)
    };
    replaced
        .map(|o| about("replaced", o))
        .into_iter()
        .chain([about("committed", host)])
        .collect()
}

/// Event `e` about host `h`: its token, node id and name.
pub fn about_host(e: &AuditEvent, h: &HostRecord) -> AuditEvent {
    AuditEvent {
        token_id: Some(h.token_id.clone()),
        node_id: Some(h.node_id.clone()),
        hostname: Some(h.host.hostname.clone()),
        ..e.clone()
    }
}

/// What [`Store::expire_reservations`] appends for an uncommitted reservation it ends: its
/// token's use given back.
pub fn returned_event(r: &Reservation, at: u64) -> AuditEvent {
    about_reservation("returned", r, at, None)
}

/// Event `name` about reservation `r`: its token, node id and host name.
fn about_reservation(name: &str, r: &Reservation, at: u64, source: Option<&str>) -> AuditEvent {
    let node = (r.node_id.as_str(), r.host.hostname.as_str());
    event(at, name, Some(&r.token_id), Some(node), source, None)
}

/// A store failure. Backends map their own errors here.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("store schema version {found} is newer than this musterd understands ({supported})")]
    Schema { found: i64, supported: i64 },
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores the platform record (sealed secrets) if there is none; false if there was one.
    async fn init_platform(&self, record: &[u8]) -> StoreResult<bool>;
    async fn platform(&self) -> StoreResult<Option<Vec<u8>>>;

    /// Stores a new token, with its `created` event if one is given (a platform's first
    /// tokens have none).
    async fn insert_token(&self, t: &TokenRecord, created: Option<&AuditEvent>) -> StoreResult<()>;
    async fn token(&self, id: &str) -> StoreResult<Option<TokenRecord>>;
    async fn tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    /// Marks a token revoked, appending `e` (`revoked`, or `expired` from the sweep) with it;
    /// false, and nothing appended, if there is no such token or it was revoked already.
    async fn revoke_token(&self, id: &str, e: &AuditEvent) -> StoreResult<bool>;

    /// Atomically: checks the token (known, not revoked, use limit), returns a live reservation
    /// of the same key and token if there is one, else counts a use and stores `r` with the
    /// use's audit event ([`used_event`]): a crash cannot keep one and lose the other.
    async fn reserve(&self, r: &Reservation, now: u64) -> StoreResult<ReserveOutcome>;
    async fn reservation(&self, node_id: &str) -> StoreResult<Option<Reservation>>;
    /// Atomically turns a live reservation into a host, replacing a host of the same hostname,
    /// and appends the audit events of that ([`commit_events`]; `source` is the committing
    /// address).
    async fn commit(&self, node_id: &str, now: u64, source: &str) -> StoreResult<CommitOutcome>;
    /// Atomically removes reservations expired at `now`, gives their token uses back, revokes
    /// their certificates and audits each use given back ([`returned_event`]). Returns the
    /// uncommitted ones it removed (those whose use came back).
    async fn expire_reservations(&self, now: u64) -> StoreResult<Vec<Reservation>>;

    async fn hosts(&self) -> StoreResult<Vec<HostRecord>>;
    async fn host(&self, node_id: &str) -> StoreResult<Option<HostRecord>>;
    /// The registered host of that host name, if any.
    async fn host_named(&self, hostname: &str) -> StoreResult<Option<HostRecord>>;
    /// Files the host `node_id`, registered by an earlier version under its name in another
    /// letter case (`ALLOC-1`), under the lower-case name every join now uses, unless another
    /// host holds that name. Whether it did.
    async fn lowercase_host_name(&self, node_id: &str) -> StoreResult<bool>;
    /// Records a heartbeat; the updated host, or none if unknown.
    async fn heartbeat(
        &self,
        node_id: &str,
        now: u64,
        memory_used_mb: u64,
    ) -> StoreResult<Option<HostRecord>>;
    async fn set_roles(
        &self,
        node_id: &str,
        roles: &[Role],
        pending: &[Role],
    ) -> StoreResult<Option<HostRecord>>;
    /// Replaces a host's certificates: `serials` become its current ones. Of its old serials,
    /// those in `keep` stay valid after them (the pair the host renewed with, in case the new
    /// one never reaches it); every other old serial is revoked.
    async fn replace_certs(
        &self,
        node_id: &str,
        serials: &[String],
        keep: &[String],
        not_after: u64,
    ) -> StoreResult<Option<HostRecord>>;
    /// Removes a host and revokes its certificates, appending `e` about it ([`about_host`]:
    /// `host_removed`, `host_left`); nothing if there is no such host.
    async fn remove_host(&self, node_id: &str, e: &AuditEvent) -> StoreResult<Option<HostRecord>>;
    async fn is_revoked(&self, serial: &str) -> StoreResult<bool>;

    /// Appends an audit event. The store numbers it; it may be written with the next commit
    /// rather than before this returns (the embedded store does so), but it is ordered before
    /// any later step and seen by any later `audit_log`.
    async fn audit(&self, e: &AuditEvent) -> StoreResult<()>;
    /// Audit events with `seq > after`, oldest first, at most `limit`.
    async fn audit_log(&self, after: u64, limit: u32) -> StoreResult<Vec<AuditEvent>>;

    /// Records the names and addresses the coordinator `id` answers on, replacing what it
    /// recorded before: every coordinator of the platform keeps hosts without the coordinator
    /// role from being certified for any of them.
    async fn publish_names(&self, id: &str, names: &[String]) -> StoreResult<()>;
    /// What every coordinator published, all together.
    async fn coordinator_names(&self) -> StoreResult<Vec<String>>;
}

#[cfg(test)]
pub mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    fn host(spki: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "node_id": "n", "token_id": "t",
            "host": {"hostname": "h", "addresses": [], "memory_mb": 1, "zone": ""},
            "roles": [], "pending_roles": [], "spki_der": spki, "serials": [],
            "cert_not_after": 0, "registered_at": 0, "last_heartbeat": 0, "memory_used_mb": 0
        })
    }

    #[test]
    fn der_is_stored_as_base64_and_the_older_array_form_still_reads() -> anyhow::Result<()> {
        let old: HostRecord = serde_json::from_value(host(serde_json::json!([48, 0, 255])))?;
        assert_eq!(old.spki_der, vec![48, 0, 255]);
        let written = serde_json::to_value(&old)?;
        assert_eq!(written["spki_der"], "MAD/");
        let back: HostRecord = serde_json::from_value(written)?;
        assert_eq!(back, old);
        for bad in [
            serde_json::json!("not base64!"),
            serde_json::json!([256]),
            serde_json::json!(7),
        ] {
            assert!(
                serde_json::from_value::<HostRecord>(host(bad.clone())).is_err(),
                "{bad}"
            );
        }
        Ok(())
    }
}
