//! The coordinator's services: what it decides, with no HTTP in sight. The handlers in
//! `crate::http` read a request, call one of these and shape the answer.
//!
//! Each service depends only on the layers below it (the store, the platform, the PKI, the
//! limiters) and on services listed before it here, never on the HTTP layer or on `App`:
//!
//! - [`cache`]: bounded memories of recent answers (verified tokens, token records, join keys).
//! - [`credentials`]: named API keys and a changed admin password, kept in the store under a
//!   MAC only the platform makes.
//! - [`auth`]: admin credentials (user and password, or an API key), failures held off per
//!   source.
//! - [`sessions`]: the web console's sessions (cookie and CSRF token).
//! - [`admission`]: a roles token in, its claims and record out, or one [`admission::Refusal`]
//!   that is counted, audited and held against its source in one place.
//! - [`names`]: the names and addresses reserved from hosts' certificates (the coordinators'
//!   own, and every registered host's addresses).
//! - [`issuance`]: two CSRs in, the signed transport and HTTP certificates out (join, renew).
//! - [`tokens`]: what a token request may ask for, revocation, expiry.
//! - [`registry`]: the registered hosts as ECE shows them, roles granted and pending, the
//!   facts a host may report.
//! - [`recovery`]: the emergency token's recovery, answered by coordinators and directors.

pub mod cache;

pub mod credentials;

pub mod auth;

pub mod sessions;

pub mod admission;

pub mod names;

pub mod issuance;

pub mod tokens;

pub mod registry;

pub mod recovery;

use crate::store::Store;
use muster_protocol::api::AuditEvent;

/// The time now, in unix seconds.
pub fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Appends `e` to the audit log, on its own (not with a change it records); a failure is
/// logged, never fatal to the request.
pub async fn audit(store: &dyn Store, e: &AuditEvent) {
    if let Err(err) = store.audit(e).await {
        tracing::error!(error = %err, event = %e.event, "could not append to the audit log");
    }
}
