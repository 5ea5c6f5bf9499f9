//! Muster's wire contract.
//!
//! Everything `musterd` and `muster` say to each other is defined here, once: roles, roles-token
//! claims and their checks, the admin API bodies, the node protocol (join, commit, heartbeat,
//! renew) and the error body with its stable codes. Neither binary redefines a shape.
//!
//! The logic here is pure: functions that decide take `now` as an argument and never read the
//! clock, so they can be tested with any time.

#![forbid(unsafe_code)]

pub mod addr;
pub mod api;
#[cfg(feature = "x509")]
pub mod cert;
#[cfg(feature = "cli-docs")]
pub mod cli_docs;
#[cfg(feature = "csr")]
pub mod csr;
#[cfg(feature = "enroll-config")]
pub mod enroll;
pub mod error;
#[cfg(feature = "fs")]
pub mod fs;
pub mod node;
pub mod pin;
pub mod role;
#[cfg(feature = "seal")]
pub mod seal;
pub mod token;

pub use error::{ApiErrorBody, ErrorCode, ErrorItem};
pub use role::Role;

/// TCP port `musterd` listens on unless told otherwise (as in ECE).
pub const DEFAULT_PORT: u16 = 12443;

/// Paths of the node protocol and the admin API, shared so that no side spells one differently.
pub mod paths {
    pub const TOKENS: &str = "/api/v1/platform/configuration/security/enrollment-tokens";
    pub const ALLOCATORS: &str = "/api/v1/platform/infrastructure/allocators";
    pub const RUNNERS: &str = "/api/v1/platform/infrastructure/runners";
    pub const AUDIT: &str = "/api/v1/platform/configuration/security/enrollment-tokens/_audit";
    pub const JOIN: &str = "/api/v1/node/join";
    pub const RECOVER: &str = "/api/v1/node/recover";
    pub const COMMIT: &str = "/api/v1/node/commit";
    pub const HEARTBEAT: &str = "/api/v1/node/heartbeat";
    pub const RENEW: &str = "/api/v1/node/renew";
    pub const LEAVE: &str = "/api/v1/node/leave";
    /// ECE's API keys of the current user.
    pub const API_KEYS: &str = "/api/v1/users/auth/keys";
    /// Muster's: the platform at a glance (the console's platform page).
    pub const PLATFORM_STATUS: &str = "/api/v1/platform/_status";
    /// ECE's current user (the admin password).
    pub const CURRENT_USER: &str = "/api/v1/user";
    pub const ES_ENROLL_NODE: &str = "/_security/enroll/node";
    pub const INSTALL_SH: &str = "/install.sh";
    pub const INSTALL_SCRIPT: &str = "/install.sh";
    pub const DOWNLOAD_INSTALLER: &str = "/download/muster-x86_64";
    /// The API as an OpenAPI 3 document (docs/openapi.yaml).
    pub const OPENAPI: &str = "/api/v1/openapi.yaml";
}
