//! Admin API bodies, shaped as ECE's (`EnrollmentTokenRequest`, `RequestEnrollmentTokenReply`,
//! `ListEnrollmentTokenReply`, `AllocatorInfo`, `RunnerInfo`), with Muster's additions marked.

use crate::role::Role;
use crate::token::TokenKind;
use serde::{Deserialize, Serialize};

/// `POST …/enrollment-tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub persistent: bool,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Lifetime of an ephemeral token (default one hour). Ignored for persistent tokens.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub validity_in_seconds: Option<u64>,
    /// Beyond ECE: how many hosts may enroll with the token.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub max_uses: Option<u32>,
    /// Beyond ECE: source networks (CIDR) joins must come from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_sources: Vec<String>,
    /// Beyond ECE: what the token is for, for people (at most 200 characters, no control
    /// characters); kept with the token and listed with it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub description: Option<String>,
}

/// An optional field that, when given, holds a value: `null` is refused as the schema's type
/// refuses it, not taken for "absent".
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The answer to a token creation: the token is shown this once. Its `Debug` leaves the token
/// (and the install line, which carries it) out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTokenReply {
    pub token: String,
    pub token_id: String,
    /// Beyond ECE: the ready-to-paste one-liner that enrolls a host with this token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_command: Option<String>,
}

impl std::fmt::Debug for CreateTokenReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTokenReply")
            .field("token", &"<redacted>")
            .field("token_id", &self.token_id)
            .field(
                "install_command",
                &self.install_command.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// One token in the list; never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub token_id: String,
    pub roles: Vec<Role>,
    pub persistent: bool,
    pub kind: TokenKind,
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    pub uses: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_sources: Vec<String>,
    /// Beyond ECE: what the token is for, as given when it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `GET …/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTokensReply {
    pub tokens: Vec<TokenInfo>,
}

/// `GET …/allocators`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatorsReply {
    pub zones: Vec<AllocatorZone>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatorZone {
    pub zone_id: String,
    pub allocators: Vec<AllocatorInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatorInfo {
    pub allocator_id: String,
    pub zone_id: String,
    pub host_ip: String,
    pub public_hostname: String,
    pub status: HostStatus,
    pub capacity: Capacity,
    /// Always empty: Muster runs no clusters.
    pub instances: Vec<serde_json::Value>,
    /// ECE's allocator settings; Muster keeps none (`{}`).
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// ECE's `[{"key","value"}]` tags; Muster keeps none.
    pub metadata: Vec<serde_json::Value>,
    pub features: Vec<String>,
    pub external_links: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub connected: bool,
    pub healthy: bool,
    pub maintenance_mode: bool,
    /// Beyond ECE: last heartbeat, seconds since the epoch.
    pub last_heartbeat: u64,
    /// Beyond ECE: the Muster version the host's agent last reported; absent until it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub memory: Memory,
    pub storage: Storage,
}

/// Memory in MiB, as ECE reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub total: u64,
    pub used: u64,
}

/// Storage in MiB, as ECE reports it. Hosts do not report their disks to Muster: 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    pub total: u64,
    pub used: u64,
}

/// `GET …/runners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnersReply {
    pub runners: Vec<RunnerInfo>,
}

/// `GET …/runners` and `…/runners/{runner_id}`: ECE's `RunnerInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerInfo {
    pub runner_id: String,
    pub public_hostname: String,
    pub host_ip: String,
    pub connected: bool,
    pub healthy: bool,
    /// Always empty: Muster runs no containers.
    pub containers: Vec<serde_json::Value>,
    pub roles: Vec<RunnerRole>,
    /// Beyond ECE: the host's availability zone.
    pub zone: String,
    /// Beyond ECE: roles the host asked for but was not granted yet.
    pub pending_roles: Vec<Role>,
    /// Beyond ECE: the token the host enrolled with (id only).
    pub token_id: String,
    /// Beyond ECE: the host's last heartbeat (its enrollment until the first), seconds since
    /// the epoch.
    #[serde(default)]
    pub last_heartbeat: u64,
    /// Beyond ECE: the Muster version the host's agent last reported; absent until it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Beyond ECE: when the host's certificates expire, seconds since the epoch.
    #[serde(default)]
    pub certificate_not_after: u64,
}

/// ECE's `RunnerRoleInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRole {
    pub role_name: Role,
}

/// `PUT …/runners/{id}/roles`: ECE's `RunnerRolesInfo`, `{"roles":[{"role_name":"proxy"}]}`,
/// the body taken and answered. A bare name (`{"roles":["proxy"]}`) is taken too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerRolesInfo {
    pub roles: Vec<RoleItem>,
}

/// One role in a [`RunnerRolesInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RoleItem {
    Named { role_name: String },
    Bare(String),
}

impl RoleItem {
    pub fn name(&self) -> &str {
        match self {
            RoleItem::Named { role_name } | RoleItem::Bare(role_name) => role_name,
        }
    }
}

/// One audited token event. Only the token's id is ever recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub seq: u64,
    pub at: u64,
    /// `created`, `used`, `refused`, `revoked`, `expired`, `returned`.
    pub event: String,
    /// Who acted: `user:NAME` (the admin user), `api-key:NAME` (an API key; `api-key:bootstrap`
    /// is the one `musterd init` made, `api-key` in events written before keys had names), `local` (a
    /// `musterd` command on the coordinator), `token:ID` (the holder of a roles token: its
    /// joins, commits and refusals, or a recovery with the emergency token), `host:NODE_ID` (a
    /// host about itself), `musterd` (the coordinator on its own: expiries). Events written
    /// before Muster recorded it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For a refusal: the error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What an event about a credential is about: `api-key:NAME` or `user:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// `POST /api/v1/users/auth/keys`: ECE's `CreateApiKeyRequest`, with a name added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// What the key is for (at most 200 characters, no control characters).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub description: Option<String>,
    /// Beyond ECE: the key's name, which audit events show as `api-key:NAME` (1 to 64 of
    /// `a-z 0-9 . _ -`, any case, kept in lower case). Without it, Muster picks `key-XXXXXXXX`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub name: Option<String>,
    /// ECE's re-authentication field; Muster reads and ignores it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub authentication_token: Option<String>,
}

/// One API key as ECE's `ApiKeyResponse` shows it; `key` only in the answer that made it.
/// Its `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// The key's name.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// RFC 3339.
    pub creation_date: String,
    /// The admin user the key acts for.
    pub user_id: String,
    /// Beyond ECE: who made it (an audit actor, such as `user:admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Beyond ECE: when it was revoked (RFC 3339); a revoked key opens nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_date: Option<String>,
}

impl std::fmt::Debug for ApiKeyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyInfo")
            .field("id", &self.id)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("description", &self.description)
            .field("creation_date", &self.creation_date)
            .field("created_by", &self.created_by)
            .field("revoked_date", &self.revoked_date)
            .finish()
    }
}

/// `GET /api/v1/users/auth/keys`: ECE's `ApiKeysResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeysReply {
    pub keys: Vec<ApiKeyInfo>,
}

/// `PATCH /api/v1/user`: the part of ECE's user update Muster reads, the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateUserRequest {
    #[serde(default)]
    pub security: Option<UserSecurity>,
}

/// The new password (12 to 256 characters, no control characters) and, as a re-authentication
/// that a stolen session or API key cannot give, the current one. Its `Debug` leaves both out.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSecurity {
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub current_password: Option<String>,
}

impl std::fmt::Debug for UpdateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpdateUserRequest { .. }")
    }
}

impl std::fmt::Debug for UserSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserSecurity { .. }")
    }
}

/// The answer to `PATCH /api/v1/user`: ECE's `UserMetadata`, in part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserReply {
    pub user_name: String,
    /// RFC 3339: when the password was last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_changed: Option<String>,
}

/// `GET …/enrollment-tokens/_audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReply {
    pub events: Vec<AuditEvent>,
}

/// `GET /_security/enroll/node`: base64 DER fields, as Elasticsearch's enroll-node API. Its
/// `Debug` leaves the two private keys out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EsEnrollNodeReply {
    pub http_ca_key: String,
    pub http_ca_cert: String,
    pub transport_ca_cert: String,
    pub transport_key: String,
    pub transport_cert: String,
    pub nodes_addresses: Vec<String>,
}

impl std::fmt::Debug for EsEnrollNodeReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsEnrollNodeReply")
            .field("http_ca_key", &"<redacted>")
            .field("http_ca_cert", &self.http_ca_cert)
            .field("transport_ca_cert", &self.transport_ca_cert)
            .field("transport_key", &"<redacted>")
            .field("transport_cert", &self.transport_cert)
            .field("nodes_addresses", &self.nodes_addresses)
            .finish()
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_leaves_secrets_out() {
        let t = CreateTokenReply {
            token: "SECRET-TOKEN".into(),
            token_id: "id-1".into(),
            install_command: Some("curl … --roles-token 'SECRET-TOKEN'".into()),
        };
        let shown = format!("{t:?}");
        assert!(
            shown.contains("id-1") && !shown.contains("SECRET"),
            "{shown}"
        );
        let e = EsEnrollNodeReply {
            http_ca_key: "SECRET-CA-KEY".into(),
            http_ca_cert: "cert".into(),
            transport_ca_cert: "cert".into(),
            transport_key: "SECRET-KEY".into(),
            transport_cert: "cert".into(),
            nodes_addresses: vec![],
        };
        let shown = format!("{e:?}");
        assert!(
            shown.contains("cert") && !shown.contains("SECRET"),
            "{shown}"
        );
    }
}
