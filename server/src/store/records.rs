//! The records the store keeps (tokens, reservations, hosts, API keys) and what its steps answer: plain
//! serde values, which backends store as JSON. The lowest layer of the store: it uses no other
//! part of it.

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
    /// What the token is for, as given when it was made (checked then: at most 200
    /// characters, no control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A named API key: its SHA-256, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Lower case, 1 to 64 of `a-z 0-9 . _ -`.
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub hash: String,
    pub created: u64,
    /// The audit actor that made it.
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When it was revoked; a revoked key opens nothing, and its name is not given again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<u64>,
    /// A MAC over name, hash and creation under a key only the platform's sealed secrets give
    /// (see [`crate::platform::Platform::credential_mac`]): a record written into the store
    /// without them opens nothing.
    pub mac: String,
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
    /// The certificates the join answered with (a store may keep them beside the record).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transport_cert_pem: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub http_cert_pem: String,
    /// The same two certificates as DER, when the join that signed them made this record: a
    /// store may keep them so, a quarter smaller than PEM. Never in the record itself, and
    /// absent from a reservation read back.
    #[serde(skip)]
    pub certs_der: Option<[Vec<u8>; 2]>,
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
    /// The Muster version its agent last reported (in its heartbeat's `User-Agent`); none
    /// before its first heartbeat, or from an agent that did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
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

/// What [`Store::reserve`](super::Store::reserve) did.
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

/// What [`Store::commit`](super::Store::commit) did.
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
    /// replacing it takes a join granting all of them
    /// ([`may_replace`](super::rules::may_replace)). Nothing changed.
    ReplaceRefused(Box<HostRecord>),
    /// The token the join used (its id here) was revoked since: a leaked token revoked is
    /// revoked for joins it answered and that are not committed yet. Nothing changed; the
    /// reservation expires as any other (its certificates revoked).
    TokenRevoked(String),
}

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
