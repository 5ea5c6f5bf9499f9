//! The store interface: everything `musterd` keeps goes through [`Store`].
//!
//! Each method is one atomic step of the protocol (reserve a join, commit it, expire it,
//! revoke a token), so a backend maps it to one transaction: an SQLite `BEGIN IMMEDIATE`, an etcd
//! `Txn` with compare-and-swap ([`etcd`]). Records are plain serde values; backends store them
//! as JSON. A step whose change is audited appends the event that records it in the same
//! transaction ([`used_event`], [`commit_events`], [`returned_event`], and the events the caller
//! hands to `insert_token`, `revoke_token` and `remove_host`).
//! The decisions each step makes (the order of its checks, the host a commit registers, the
//! use an expiry gives back) are pure functions both backends call ([`rules`]).
//! The conformance tests in [`conformance`] run against every backend.

pub mod etcd;
mod events;
mod records;
pub mod rules;
pub mod sqlite;

pub use events::{about_host, actor, commit_events, event, returned_event, used_event};
pub use records::{
    ApiKeyRecord, CommitOutcome, HostRecord, Reservation, ReserveOutcome, TokenRecord,
};
pub use rules::{may_replace, revoked_before_commit};

use async_trait::async_trait;
use muster_protocol::api::AuditEvent;
use muster_protocol::node::HostFacts;
use muster_protocol::Role;

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
    /// What the hosts that report addresses report (name and addresses), in the order they
    /// registered: all a coordinator keeps to refuse one host another's address. A store may
    /// answer it without building every host's record (SQLite does); this default reads them
    /// all.
    async fn host_addresses(&self) -> StoreResult<Vec<HostFacts>> {
        let mut hosts = self.hosts().await?;
        hosts.retain(|h| !h.host.addresses.is_empty());
        hosts.sort_by(|a, b| (a.registered_at, &a.node_id).cmp(&(b.registered_at, &b.node_id)));
        Ok(hosts.into_iter().map(|h| h.host).collect())
    }
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
        agent_version: Option<&str>,
    ) -> StoreResult<Option<HostRecord>>;
    /// Sets a host's granted and pending roles, appending `e` about it ([`about_host`]:
    /// `roles_set`); nothing if there is no such host.
    async fn set_roles(
        &self,
        node_id: &str,
        roles: &[Role],
        pending: &[Role],
        e: &AuditEvent,
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

    /// Adds an API key, appending `e`; false (and nothing written) when a key of its name
    /// exists, revoked or not.
    async fn insert_api_key(&self, k: &ApiKeyRecord, e: &AuditEvent) -> StoreResult<bool>;
    /// Every API key, revoked ones too, by name. Read for each request an API key signs, so
    /// that a key revoked through any coordinator opens nothing on any coordinator at once.
    async fn api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Marks key `name` revoked at `at`, appending `e`; false if there is none or it already
    /// was.
    async fn revoke_api_key(&self, name: &str, at: u64, e: &AuditEvent) -> StoreResult<bool>;
    /// The admin password record a rotation wrote (see [`crate::service::credentials`]), if
    /// any; without one the platform record's holds.
    async fn admin_password(&self) -> StoreResult<Option<Vec<u8>>>;
    /// Replaces the admin password record, appending `e`.
    async fn set_admin_password(&self, record: &[u8], e: &AuditEvent) -> StoreResult<()>;

    /// Guarded writes that found their records changed and went round again, since start
    /// (a shared store's contention; zero for a store with one writer).
    fn retries(&self) -> u64 {
        0
    }
}

#[cfg(test)]
pub mod conformance;

/// Joins and commits this process is answering right now, whatever store answers them: a hint
/// of how many steps a store is about to be given, which the embedded store's group commit
/// reads to decide whether a batch waits for more ([`sqlite`]).
static ENROLLING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a join or commit as being answered while it lives.
pub struct Enrolling(());

impl Enrolling {
    pub fn enter() -> Enrolling {
        ENROLLING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Enrolling(())
    }

    /// How many are being answered now.
    pub fn now() -> usize {
        ENROLLING.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Enrolling {
    fn drop(&mut self) {
        ENROLLING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
