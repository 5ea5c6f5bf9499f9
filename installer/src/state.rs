//! `/var/lib/muster/enrollment.json`: where an enrollment stands, so a re-run knows what to do.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Keys generated and written; no join answered yet.
    Keys,
    /// The coordinator answered the join; files may be partly written; not committed.
    Joined,
    /// Committed: the host is registered.
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub stage: Stage,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub token_id: Option<String>,
    #[serde(default)]
    pub roles: Vec<muster_protocol::Role>,
    #[serde(default)]
    pub pending_roles: Vec<muster_protocol::Role>,
    #[serde(default)]
    pub coordinators: Vec<String>,
    /// When the join's reservation runs out (coordinator time, seconds since the epoch).
    #[serde(default)]
    pub reservation_expires: Option<u64>,
    #[serde(default)]
    pub committed_at: Option<u64>,
    #[serde(default)]
    pub cert_not_after: Option<u64>,
    #[serde(default)]
    pub last_heartbeat: Option<u64>,
}

impl State {
    pub fn new(stage: Stage) -> State {
        State {
            version: 1,
            stage,
            node_id: None,
            token_id: None,
            roles: vec![],
            pending_roles: vec![],
            coordinators: vec![],
            reservation_expires: None,
            committed_at: None,
            cert_not_after: None,
            last_heartbeat: None,
        }
    }
}

/// `/etc/muster/node.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    pub version: u32,
    pub node_id: String,
    pub roles: Vec<muster_protocol::Role>,
    pub pending_roles: Vec<muster_protocol::Role>,
    pub zone: String,
    pub coordinators: Vec<String>,
    pub tls: TlsPaths,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsPaths {
    pub transport_ca: String,
    pub http_ca: String,
    pub cert: String,
    pub key: String,
    pub http_cert: String,
    pub http_key: String,
    pub keystore: String,
    pub keystore_password_file: String,
    pub truststore: String,
}
