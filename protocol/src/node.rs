//! The node protocol: join, commit, heartbeat, renew, leave.
//!
//! 1. `POST /api/v1/node/join` over TLS pinned to the CA: the token, CSRs, host facts and roles.
//!    The answer is a [`Bundle`]: a reservation valid for `remaining_seconds`.
//! 2. `POST /api/v1/node/commit` on the same connection: the node id, the PSK and a signature by
//!    the new transport key over [`commit_message`] (proof of possession). Only then is the host
//!    registered; the commit is its first heartbeat. Idempotent.
//! 3. `POST /api/v1/node/heartbeat`, `…/renew`, `…/leave` over mutual TLS with the node's
//!    transport certificate.
//!
//!
//! Recovery: `POST /api/v1/node/recover` with the emergency token and the coordinator role
//! answers a [`Recovery`]: what a new coordinator needs to serve the platform from the shared
//! store. A director answers it without holding any unsealed secret: the data key travels
//! wrapped under the emergency token, which only the caller has.
//!
//! The full description, with every error code, is in `docs/protocol.md`.

use crate::role::Role;
use crate::token::Secret;
use serde::{Deserialize, Serialize};

/// Seconds a join stays reserved without a commit, unless the server is configured otherwise.
pub const DEFAULT_RESERVATION_SECS: u64 = 600;

/// What a host says about itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    pub hostname: String,
    /// Addresses the host may put in its certificates (IP literals).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Total memory in MiB.
    #[serde(default)]
    pub memory_mb: u64,
    /// Availability zone; the server's default zone when empty.
    #[serde(default)]
    pub zone: String,
}

/// `POST /api/v1/node/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: Secret,
    /// PEM CSR for the transport (node identity) certificate.
    pub transport_csr: String,
    /// PEM CSR for the HTTP-layer certificate.
    pub http_csr: String,
    pub host: HostFacts,
    /// Roles asked for; empty means every role the token grants.
    #[serde(default)]
    pub roles: Vec<Role>,
}

/// The answer to a join: everything a host needs, except its private keys, which never leave it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    pub node_id: String,
    /// Per-node pre-shared key, proven at commit.
    pub psk: Secret,
    pub roles: Vec<Role>,
    /// Roles asked for but not granted yet (a host joined with a role-less token).
    pub pending_roles: Vec<Role>,
    pub token_id: String,
    pub transport_ca_pem: String,
    pub http_ca_pem: String,
    pub transport_cert_pem: String,
    pub http_cert_pem: String,
    /// Coordinator addresses, `host:port`.
    pub coordinators: Vec<String>,
    /// Seconds left to commit.
    pub remaining_seconds: u64,
    /// Server time of the answer, seconds since the epoch.
    pub issued_at: u64,
    /// Expiry of the certificates, seconds since the epoch.
    pub cert_not_after: u64,
}

/// `POST /api/v1/node/commit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub node_id: String,
    pub psk: Secret,
    /// base64 of the signature by the new transport key over [`commit_message`].
    pub proof: String,
}

/// The answer to a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitReply {
    pub node_id: String,
    pub registered: bool,
    pub connected: bool,
}

/// The bytes a host signs with its new transport key to commit: binds the proof to this node
/// and this PSK, so it cannot be replayed for another join.
pub fn commit_message(node_id: &str, psk: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let psk_hash = hex::encode(Sha256::digest(psk.as_bytes()));
    format!("muster-commit-v1\n{node_id}\n{psk_hash}\n").into_bytes()
}

/// `POST /api/v1/node/heartbeat` (mTLS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub memory_used_mb: u64,
}

/// The answer to a heartbeat: what the coordinator holds for this host now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub node_id: String,
    pub roles: Vec<Role>,
    pub pending_roles: Vec<Role>,
    pub coordinators: Vec<String>,
    pub server_time: u64,
}

/// `POST /api/v1/node/renew` (mTLS): new CSRs over new keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub transport_csr: String,
    pub http_csr: String,
}

/// The answer to a renewal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewReply {
    pub transport_cert_pem: String,
    pub http_cert_pem: String,
    pub transport_ca_pem: String,
    pub http_ca_pem: String,
    pub cert_not_after: u64,
}

/// `POST /api/v1/node/recover`: the emergency token, asking for the coordinator role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    pub token: Secret,
    pub roles: Vec<Role>,
}

/// Where the platform's shared store is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSettings {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix of the platform in etcd.
    pub prefix: String,
    /// Whether etcd wants TLS; its CA, client certificate and key are in the sealed secrets
    /// (`store_tls`).
    pub tls: bool,
}

/// The answer to a recovery: the store, and the platform's secrets still sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recovery {
    pub store: StoreSettings,
    /// The data key, sealed under the key derived from the emergency token.
    pub wrapped_key: String,
    /// base64 salt of that derivation.
    pub kdf_salt: String,
    /// The platform's secrets, sealed under the data key.
    pub sealed: String,
    pub http_ca_pem: String,
    pub transport_ca_pem: String,
}

/// The part of the sealed secrets a recovering host reads: etcd's TLS material, if any.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SealedStoreTls {
    #[serde(default)]
    pub store_tls: Option<StoreTls>,
}

/// PEM material for TLS to etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreTls {
    pub ca_pem: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<Secret>,
}
