//! The HTTP API: admin calls (ECE-compatible) and the node protocol.

use crate::config::Config;
use crate::error::ApiError;
use crate::limit::FailureLimiter;
use crate::pki::{self, Leaf};
use crate::platform::{sha256_hex, Platform};
use crate::store::{
    event, CommitOutcome, HostRecord, Reservation, ReserveOutcome, Store, TokenRecord,
};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use base64::Engine;
use muster_protocol::api::*;
use muster_protocol::node::*;
use muster_protocol::token::{self, Secret, TokenKind};
use muster_protocol::{paths, ErrorCode, Role};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the TLS layer knows about a connection, handed to every request.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// DER of the client certificate, when the client authenticated (already chain-checked
    /// against the transport CA by rustls).
    pub peer_cert: Option<Arc<Vec<u8>>>,
}

#[derive(Default)]
pub struct Metrics {
    pub joins: AtomicU64,
    pub commits: AtomicU64,
    pub refusals: AtomicU64,
    pub heartbeats: AtomicU64,
    pub renewals: AtomicU64,
    pub tokens_created: AtomicU64,
    pub login_failures: AtomicU64,
    pub reservations_expired: AtomicU64,
}

pub struct App {
    pub store: Arc<dyn Store>,
    pub platform: Platform,
    pub config: Config,
    pub advertise: Vec<String>,
    /// What this coordinator answers on (`serve::own_names`): its serving certificate names
    /// them, and no host without the coordinator role is certified for them. Read again each
    /// sweep ([`App::reread_own_names`]): addresses come and go with DHCP and interfaces.
    own_names: std::sync::RwLock<Vec<String>>,
    /// The names as last read, when they differed from `own_names`: a change is taken once two
    /// reads in a row agree, so one odd read (an interface list that failed, an address
    /// flapping during a DHCP renewal) changes nothing.
    names_seen: Mutex<Option<Vec<String>>>,
    /// The names no host without the coordinator role is certified for, as SAN keys
    /// (`pki::san_key_of_name`): this coordinator's own, and what every coordinator of the
    /// platform published, as last read from the store.
    reserved_names: std::sync::RwLock<std::collections::HashSet<String>>,
    /// The addresses registered hosts hold, with the names of the hosts holding each: no other
    /// host is certified for one. Read from the store every [`ADDRESSES_EVERY`] seconds and
    /// kept up to date with this coordinator's own commits.
    host_addresses: std::sync::RwLock<HostAddresses>,
    /// The key of the TLS serving certificate: the platform's, or (a platform made before it
    /// kept one) the one in the data folder.
    pub serving_key: pki::ServingKey,
    /// This coordinator's id among the platform's coordinators: the hex SPKI SHA-256 of the key
    /// in its data folder.
    coordinator_id: String,
    pub metrics: Metrics,
    login_failures: FailureLimiter,
    pub token_failures: FailureLimiter,
    pub verified_tokens: VerifiedTokens,
    pub token_records: TokenRecords,
    pub join_keys: JoinKeys,
    /// Installer downloads in flight per source ([`MAX_DOWNLOADS_PER_SOURCE`]).
    downloads: Arc<crate::limit::PerSource>,
    /// SHA-256 of the admin password once it has verified, so argon2 runs once, not per call.
    verified_password: Mutex<Option<String>>,
    pub clock: fn() -> u64,
}

/// Appends to the audit log; a failure is logged, never fatal to the request.
pub async fn audit(
    store: &dyn Store,
    at: u64,
    event: &str,
    token_id: Option<&str>,
    node: Option<(&str, &str)>,
    source: Option<IpAddr>,
    reason: Option<ErrorCode>,
) {
    let source = source.map(|s| s.to_string());
    let reason = reason.map(|c| c.as_str());
    let e = crate::store::event(at, event, token_id, node, source.as_deref(), reason);
    if let Err(err) = store.audit(&e).await {
        tracing::error!(error = %err, event, "could not append to the audit log");
    }
}

/// The answer to a source that has used up its budget of refused tokens.
pub fn rate_limited(source: IpAddr, wait: u64) -> ApiError {
    tracing::warn!(%source, wait, "token refusals over budget; source held off");
    ApiError::new(
        ErrorCode::TokenRateLimited,
        format!("too many refused roles tokens from {source}; wait {wait}s"),
    )
}

/// Audits and logs a refused token.
pub async fn refusal_logged(store: &dyn Store, r: &Refusal, source: IpAddr, now: u64) {
    audit(
        store,
        now,
        "refused",
        r.token_id.as_deref(),
        None,
        Some(source),
        Some(r.code),
    )
    .await;
    tracing::info!(%source, code = r.code.as_str(), token_id = r.token_id.as_deref().unwrap_or("-"), "token refused");
}

pub fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl App {
    pub fn new(
        store: Arc<dyn Store>,
        mut platform: Platform,
        config: Config,
        local_key: pki::ServingKey,
    ) -> Arc<App> {
        let coordinator_id = muster_protocol::pin::spki_pin(&local_key.key_pair().public_key_der())
            .trim_start_matches(muster_protocol::pin::PREFIX)
            .to_string();
        let serving_key = platform.serving_key.take().unwrap_or(local_key);
        let advertise = config.advertise_or_default();
        let own_names = crate::serve::own_names(&advertise);
        let reserved_names =
            std::sync::RwLock::new(own_names.iter().map(|n| pki::san_key_of_name(n)).collect());
        let login_failures = FailureLimiter::new(config.login_failures_per_minute);
        let token_failures = FailureLimiter::new(config.token_failures_per_minute);
        Arc::new(App {
            store,
            platform,
            config,
            advertise,
            own_names: std::sync::RwLock::new(own_names),
            names_seen: Mutex::new(None),
            serving_key,
            coordinator_id,
            metrics: Metrics::default(),
            login_failures,
            token_failures,
            verified_tokens: VerifiedTokens::default(),
            token_records: TokenRecords::default(),
            join_keys: JoinKeys::default(),
            downloads: Arc::new(crate::limit::PerSource::new(MAX_DOWNLOADS_PER_SOURCE)),
            reserved_names,
            host_addresses: Default::default(),
            verified_password: Mutex::new(None),
            clock: system_now,
        })
    }

    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    async fn audit(
        &self,
        event: &str,
        token_id: Option<&str>,
        node: Option<(&str, &str)>,
        source: Option<IpAddr>,
        reason: Option<ErrorCode>,
    ) {
        audit(
            self.store.as_ref(),
            self.now(),
            event,
            token_id,
            node,
            source,
            reason,
        )
        .await
    }

    /// Checks admin credentials: HTTP Basic or `Authorization: ApiKey KEY`; rate-limits
    /// failures per source address.
    fn authenticate(&self, headers: &HeaderMap, source: IpAddr) -> Result<(), ApiError> {
        let now = self.now();
        if let Some(wait) = self.login_failures.blocked(source, now) {
            return Err(ApiError::new(
                ErrorCode::AuthRateLimited,
                format!("too many failed logins from {source}; wait {wait}s"),
            ));
        }
        let header = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return Err(ApiError::new(
                ErrorCode::AuthRequired,
                "authentication required: HTTP Basic or `Authorization: ApiKey KEY`",
            ));
        };
        let ok = if let Some(key) = strip_scheme(header, "ApiKey") {
            constant_eq(
                &sha256_hex(key.trim().as_bytes()),
                &self.platform.api_key_hash,
            )
        } else if let Some(b) = strip_scheme(header, "Basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok());
            match decoded.as_deref().and_then(|d| d.split_once(':')) {
                // The password is checked whatever the user, so an unknown user costs what a
                // wrong password does and the answer's time tells nothing about user names.
                Some((user, password)) => {
                    let password_ok = self.check_password(password);
                    constant_eq(user, &self.platform.admin_user) && password_ok
                }
                None => false,
            }
        } else {
            false
        };
        if ok {
            return Ok(());
        }
        self.metrics.login_failures.fetch_add(1, Ordering::Relaxed);
        self.login_failures.failed(source, now);
        tracing::warn!(%source, "admin authentication failed");
        Err(ApiError::new(
            ErrorCode::AuthInvalid,
            "wrong user, password or API key",
        ))
    }

    fn check_password(&self, password: &str) -> bool {
        let digest = sha256_hex(password.as_bytes());
        if let Ok(cache) = self.verified_password.lock() {
            if let Some(c) = cache.as_deref() {
                return constant_eq(c, &digest);
            }
        }
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let ok = PasswordHash::new(&self.platform.admin_password_hash)
            .map(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        if ok {
            if let Ok(mut cache) = self.verified_password.lock() {
                *cache = Some(digest);
            }
        }
        ok
    }

    /// Creates a token, records it and audits it. Used by the API and by `musterd token create`.
    pub async fn create_token(
        &self,
        req: &CreateTokenRequest,
        source: Option<IpAddr>,
    ) -> Result<CreateTokenReply, ApiError> {
        let roles = parse_roles(&req.roles)?;
        for s in &req.allowed_sources {
            parse_cidr(s).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::RequestInvalid,
                    format!("allowed_sources: {s:?} is not an address or CIDR network"),
                )
            })?;
        }
        if let Some(v) = req.validity_in_seconds {
            if !(1..=MAX_TOKEN_VALIDITY_SECS).contains(&v) {
                return Err(ApiError::new(
                    ErrorCode::RequestInvalid,
                    format!(
                        "validity_in_seconds must be from 1 to {MAX_TOKEN_VALIDITY_SECS} (ten years); for a token that does not expire, ask for a persistent one"
                    ),
                ));
            }
        }
        if req.max_uses == Some(0) {
            return Err(ApiError::new(
                ErrorCode::RequestInvalid,
                "max_uses must be at least 1",
            ));
        }
        let kind = if req.persistent {
            TokenKind::Persistent
        } else {
            TokenKind::Ephemeral
        };
        let (tok, rec) = self.platform.make_token(
            None,
            kind,
            roles,
            req.validity_in_seconds,
            req.max_uses,
            req.allowed_sources.clone(),
            &self.advertise,
            self.now(),
        )?;
        let source = source.map(|s| s.to_string());
        let created = event(
            rec.created,
            "created",
            Some(&rec.id),
            None,
            source.as_deref(),
            None,
        );
        self.store.insert_token(&rec, Some(&created)).await?;
        self.metrics.tokens_created.fetch_add(1, Ordering::Relaxed);
        let install_command = self
            .advertise
            .first()
            .map(|c| install_line(c, &self.serving_key.curl_pin(), &tok));
        Ok(CreateTokenReply {
            token: tok,
            token_id: rec.id,
            install_command,
        })
    }

    /// What this coordinator answers on, as last read.
    pub fn own_names(&self) -> Vec<String> {
        self.own_names.read().map(|n| n.clone()).unwrap_or_default()
    }

    /// Reads this coordinator's names again (an address from DHCP, a new interface, a renamed
    /// host) and, when they changed, keeps and publishes them; whether they changed. The
    /// serving certificate follows at once ([`crate::serve::ServingCert::renew_if_due`]).
    pub async fn reread_own_names(&self) -> anyhow::Result<bool> {
        self.names_read(crate::serve::own_names(&self.advertise))
            .await
    }

    /// Takes `read` as this coordinator's names if the read before it said the same.
    pub(crate) async fn names_read(&self, read: Vec<String>) -> anyhow::Result<bool> {
        let confirmed = {
            let mut seen = self
                .names_seen
                .lock()
                .map_err(|_| anyhow::anyhow!("names lock poisoned"))?;
            if same_names(&self.own_names(), &read) {
                *seen = None;
                return Ok(false);
            }
            let confirmed = seen.as_ref().is_some_and(|s| same_names(s, &read));
            *seen = (!confirmed).then(|| read.clone());
            confirmed
        };
        if !confirmed {
            return Ok(false);
        }
        self.set_own_names(read).await
    }

    pub(crate) async fn set_own_names(&self, names: Vec<String>) -> anyhow::Result<bool> {
        let before = {
            let mut current = self
                .own_names
                .write()
                .map_err(|_| anyhow::anyhow!("own names lock poisoned"))?;
            if same_names(&current, &names) {
                return Ok(false);
            }
            tracing::info!(names = ?names, "this coordinator's names changed");
            std::mem::replace(&mut *current, names)
        };
        if let Err(e) = self.publish_names().await {
            // Kept as they were, so the next sweep sees the change again and tries again.
            if let Ok(mut current) = self.own_names.write() {
                *current = before;
            }
            return Err(e.context("publishing this coordinator's new names"));
        }
        Ok(true)
    }

    /// Publishes this coordinator's names in the store, under the id of its serving key, for
    /// the platform's other coordinators to keep from ordinary hosts' certificates.
    pub async fn publish_names(&self) -> anyhow::Result<()> {
        self.store
            .publish_names(&self.coordinator_id, &self.own_names())
            .await?;
        self.refresh_names().await
    }

    /// Reads again what every coordinator published.
    pub async fn refresh_names(&self) -> anyhow::Result<()> {
        let published = self.store.coordinator_names().await?;
        let reserved = self
            .own_names()
            .iter()
            .chain(&published)
            .map(|n| pki::san_key_of_name(n))
            .collect();
        if let Ok(mut r) = self.reserved_names.write() {
            *r = reserved;
        }
        Ok(())
    }

    /// Files hosts an earlier version registered under names in another letter case under
    /// their lower-case names, as every join now registers them. Run once as `serve` starts; a
    /// host whose lower-case name another host holds is named in the log, for an operator to
    /// remove one of the two.
    pub async fn lowercase_old_host_names(&self) -> anyhow::Result<()> {
        for h in self.store.hosts().await? {
            if !h.host.hostname.bytes().any(|b| b.is_ascii_uppercase()) {
                continue;
            }
            if self.store.lowercase_host_name(&h.node_id).await? {
                tracing::info!(node_id = %h.node_id, hostname = %h.host.hostname, "host name filed in lower case");
            } else {
                tracing::warn!(node_id = %h.node_id, hostname = %h.host.hostname, "another host holds this host's name in lower case; remove one of them (DELETE …/runners/{{id}})");
            }
        }
        Ok(())
    }

    /// Reads again which addresses the registered hosts hold, if the last read is older than
    /// [`ADDRESSES_EVERY`] (or `now` is asked for).
    pub async fn refresh_addresses(&self, now: bool) -> anyhow::Result<()> {
        let at = self.now();
        let due = self
            .host_addresses
            .read()
            .map(|a| now || a.read_at.is_none_or(|t| at >= t + ADDRESSES_EVERY))
            .unwrap_or(true);
        if !due {
            return Ok(());
        }
        let mut fresh = HostAddresses {
            read_at: Some(at),
            ..Default::default()
        };
        let mut hosts = self.store.hosts().await?;
        hosts.sort_by(|a, b| (a.registered_at, &a.node_id).cmp(&(b.registered_at, &b.node_id)));
        for h in &hosts {
            fresh.add(&h.host);
        }
        if let Ok(mut a) = self.host_addresses.write() {
            *a = fresh;
        }
        Ok(())
    }

    /// Gives back the addresses of a host no longer registered (another coordinator sees that
    /// at its next read).
    fn forget_addresses(&self, gone: &HostRecord) {
        if let Ok(mut a) = self.host_addresses.write() {
            a.forget(&gone.host.hostname);
        }
    }

    /// Whether `ip` is held by a registered host other than one named `hostname` (which keeps
    /// its own: a renewal, a rebuilt host replacing its old record).
    fn address_taken(&self, ip: &IpAddr, hostname: &str) -> bool {
        self.host_addresses
            .read()
            .map(|a| a.taken(ip, hostname))
            .unwrap_or(false)
    }

    /// Removes expired reservations (giving their uses back) and retires expired ephemeral
    /// tokens. Run periodically.
    pub async fn sweep(&self) -> anyhow::Result<()> {
        if let Err(e) = self.refresh_names().await {
            tracing::warn!(error = %format!("{e:#}"), "reading the coordinators' names failed");
        }
        if let Err(e) = self.refresh_addresses(false).await {
            tracing::warn!(error = %format!("{e:#}"), "reading the hosts' addresses failed");
        }
        let now = self.now();
        // Tokens expire even when reservations cannot be swept this time (and the other way
        // round): the first error is answered after both were tried. The store audits each
        // use it gives back.
        let expired = self.store.expire_reservations(now).await;
        let tokens = self.expire_tokens(now).await;
        for r in expired? {
            self.metrics
                .reservations_expired
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(node_id = %r.node_id, token_id = %r.token_id, "join reservation expired; certificates revoked, token use returned");
        }
        tokens
    }

    /// Retires the ephemeral tokens past their expiry (and its leeway).
    async fn expire_tokens(&self, now: u64) -> anyhow::Result<()> {
        for t in self.store.tokens().await? {
            let expired = !t.revoked
                && t.expires
                    .is_some_and(|e| e.saturating_add(token::LEEWAY_SECS) < now);
            if expired {
                let e = event(now, "expired", Some(&t.id), None, None, None);
                self.store.revoke_token(&t.id, &e).await?;
            }
        }
        Ok(())
    }
}

/// How often a coordinator reads every registered host's addresses again, in seconds. Between
/// two reads it knows the hosts it committed itself; another coordinator's are seen at the
/// next read.
const ADDRESSES_EVERY: u64 = 30;

/// The addresses registered hosts hold, each with the name of the host that holds it: the
/// first registered of those that report it (the others were certified without it).
#[derive(Default)]
struct HostAddresses {
    read_at: Option<u64>,
    by_address: HashMap<IpAddr, String>,
}

impl HostAddresses {
    /// Records `host`'s addresses that no host holds yet, leaving out those that name no one
    /// host: loopback, link-local and unspecified addresses are every host's.
    fn add(&mut self, host: &HostFacts) {
        for ip in host
            .addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
        {
            if unique_address(&ip) {
                self.by_address
                    .entry(ip)
                    .or_insert_with(|| host.hostname.clone());
            }
        }
    }

    fn forget(&mut self, hostname: &str) {
        self.by_address.retain(|_, holder| holder != hostname);
    }

    fn taken(&self, ip: &IpAddr, hostname: &str) -> bool {
        self.by_address
            .get(ip)
            .is_some_and(|holder| !holder.eq_ignore_ascii_case(hostname))
    }
}

/// Whether `ip` can name one host: not loopback, link-local or unspecified.
fn unique_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Whether two lists hold the same names, in any order.
fn same_names(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|n| b.contains(n))
}

/// The line that enrolls a host with a token: fetch `install.sh` over TLS pinned to the
/// platform's serving key and hand it the token in `sh`'s environment, set by the shell itself
/// (an assignment before a command runs no process) and passed on by `sudo --preserve-env`. The
/// script passes it on to `muster` in its environment too: it is in no URL and no argument
/// list, where every local user could read it in /proc.
pub fn install_line(coordinator: &str, curl_pin: &str, token: &str) -> String {
    format!(
        "curl -fsSk --pinnedpubkey '{curl_pin}' https://{coordinator}/install.sh | \
         MUSTER_ROLES_TOKEN='{token}' sudo --preserve-env=MUSTER_ROLES_TOKEN sh"
    )
}

/// Role names from a request body, sorted and without repeats; an unknown name is refused.
fn parse_roles(names: &[String]) -> Result<Vec<Role>, ApiError> {
    let mut roles = names
        .iter()
        .map(|r| {
            r.parse::<Role>()
                .map_err(|e| ApiError::new(ErrorCode::RoleUnknown, e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    muster_protocol::role::normalize(&mut roles);
    Ok(roles)
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// Reads a JSON body, answering our error shape for bad or oversized bodies.
pub(crate) fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::RequestTooLarge, "request body is too large")
        } else {
            ApiError::new(ErrorCode::RequestInvalid, format!("reading the body: {e}"))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::RequestInvalid, format!("request body: {e}")))
}

/// Middleware that refuses a request whose declared `Content-Length` is over `max` with 413,
/// so that the client reads the 413: one that asked first (`Expect: 100-continue`) is answered
/// before it sends the body; from one that sends it unasked, a body of up to [`DRAIN_MAX`] is
/// read to its end and dropped first (answering and closing with the body unread would reset
/// the connection under the client before it reads the answer). Bodies of unknown length are
/// cut off at `max` by [`DefaultBodyLimit`]. Use with
/// `axum::middleware::from_fn_with_state(max, refuse_declared_oversize)`.
pub async fn refuse_declared_oversize(
    State(max): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|n| *n > max as u64) else {
        return next.run(req).await;
    };
    let asked_first = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !asked_first && declared <= DRAIN_MAX {
        use axum::body::HttpBody;
        let mut body = req.into_body();
        let drain = std::future::poll_fn(|cx| loop {
            match std::pin::Pin::new(&mut body).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(_))) => continue,
                std::task::Poll::Ready(_) => return std::task::Poll::Ready(()),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        });
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    }
    ApiError::new(ErrorCode::RequestTooLarge, "request body is too large").into_response()
}

/// The largest refused body read (and dropped) so that its sender gets its 413.
const DRAIN_MAX: u64 = 1024 * 1024;

/// How long a refused body may take to arrive before the connection is closed anyway.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

type S = State<Arc<App>>;
type Conn = Extension<ConnInfo>;

pub fn router(app: Arc<App>) -> Router {
    let max = app.config.max_body_bytes;
    Router::new()
        .route(paths::TOKENS, post(create_token).get(list_tokens))
        .route(
            &format!("{}/{{token_id}}", paths::TOKENS),
            delete(delete_token),
        )
        .route(paths::AUDIT, get(audit_log))
        .route(paths::ALLOCATORS, get(allocators))
        .route(paths::RUNNERS, get(runners))
        .route(
            &format!("{}/{{runner_id}}", paths::RUNNERS),
            get(runner).delete(remove_runner),
        )
        .route(
            &format!("{}/{{runner_id}}/roles", paths::RUNNERS),
            put(set_runner_roles),
        )
        .route(paths::JOIN, post(join))
        .route(paths::RECOVER, post(recover))
        .route(paths::COMMIT, post(commit))
        .route(paths::HEARTBEAT, post(heartbeat))
        .route(paths::RENEW, post(renew))
        .route(paths::LEAVE, post(leave))
        .route(paths::ES_ENROLL_NODE, get(es_enroll_node))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(paths::INSTALL_SCRIPT, get(install_script))
        .route(paths::OPENAPI, get(openapi))
        .route(paths::DOWNLOAD_INSTALLER, get(download_installer))
        .route(
            &format!("{}.sha256", paths::DOWNLOAD_INSTALLER),
            get(download_installer_sha256),
        )
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "that endpoint does not take this method (docs/api.md)",
            )
        })
        .layer(DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(
            max,
            refuse_declared_oversize,
        ))
        .with_state(app)
}

/// The credentials of an `Authorization` header of `scheme`, matched as HTTP says: the scheme's
/// name in any case, then a space.
fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (name, rest) = header.split_once(' ')?;
    name.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// A query string that does not read, answered like any other bad request (after the
/// credentials are checked: no answer tells an unauthenticated caller more than 401).
fn query_invalid(e: QueryRejection) -> ApiError {
    ApiError::new(
        ErrorCode::RequestInvalid,
        format!("query string: {}", e.body_text()),
    )
}

/// `?install_command=true` adds the ready-to-paste install line to the answer.
#[derive(serde::Deserialize)]
struct CreateTokenQuery {
    #[serde(default)]
    install_command: bool,
}

async fn create_token(
    State(app): S,
    Extension(c): Conn,
    headers: HeaderMap,
    query: Result<Query<CreateTokenQuery>, QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<CreateTokenReply>, ApiError> {
    app.authenticate(&headers, c.remote.ip())?;
    let made = async {
        let Query(query) = query.map_err(query_invalid)?;
        let req: CreateTokenRequest = parse_json(body)?;
        let mut reply = app.create_token(&req, Some(c.remote.ip())).await?;
        if !query.install_command {
            reply.install_command = None;
        }
        Ok(Json(reply))
    };
    made.await.map_err(|e: ApiError| {
        e.as_ece(
            &[ErrorCode::RequestInvalid, ErrorCode::RoleUnknown],
            ErrorCode::EceTokenRequest,
        )
    })
}

fn token_info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        token_id: t.id.clone(),
        roles: t.roles.clone(),
        persistent: t.kind != TokenKind::Ephemeral,
        kind: t.kind,
        created: t.created,
        expires: t.expires,
        max_uses: t.max_uses,
        uses: t.uses,
        allowed_sources: t.allowed_sources.clone(),
    }
}

async fn list_tokens(
    State(app): S,
    Extension(c): Conn,
    headers: HeaderMap,
) -> Result<Json<ListTokensReply>, ApiError> {
    app.authenticate(&headers, c.remote.ip())?;
    let tokens = app
        .store
        .tokens()
        .await?
        .iter()
        .filter(|t| !t.revoked)
        .map(token_info)
        .collect();
    Ok(Json(ListTokensReply { tokens }))
}

/// `DELETE …/enrollment-tokens/{token}`: `{token}` is the token's id or, as ECE takes it, the
/// token itself (known by its hash, so only its holder can name it that way).
async fn delete_token(
    State(app): S,
    Extension(c): Conn,
    headers: HeaderMap,
    Path(given): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authenticate(&headers, c.remote.ip())?;
    let unknown = || {
        ApiError::new(
            ErrorCode::EceTokenId,
            "no live token has that id, and no live token of this platform is that",
        )
    };
    let t = if given.contains('.') {
        let given = given.trim();
        let id = token::inspect(given).map_err(|_| unknown())?.sub;
        app.store
            .token(&id)
            .await?
            .filter(|t| constant_eq(&t.hash, &sha256_hex(given.as_bytes())))
    } else {
        app.store.token(&given).await?
    };
    let Some(t) = t.filter(|t| !t.revoked) else {
        return Err(unknown());
    };
    if t.kind == TokenKind::Emergency {
        return Err(ApiError::new(
            ErrorCode::TokenNotDeletable,
            "the emergency token cannot be deleted: it is what recovers the platform",
        ));
    }
    let id = t.id;
    let source = c.remote.ip().to_string();
    let e = event(app.now(), "revoked", Some(&id), None, Some(&source), None);
    app.store.revoke_token(&id, &e).await?;
    app.token_records.forget(&id);
    Ok(Json(serde_json::json!({})))
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<u32>,
}

async fn audit_log(
    State(app): S,
    Extension(c): Conn,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditReply>, ApiError> {
    app.authenticate(&headers, c.remote.ip())?;
    let Query(q) = q.map_err(query_invalid)?;
    let events = app
        .store
        .audit_log(q.after, q.limit.unwrap_or(1000).clamp(1, 10_000))
        .await?;
    Ok(Json(AuditReply { events }))
}

fn connected(app: &App, h: &HostRecord) -> bool {
    app.now() <= h.last_heartbeat + app.config.heartbeat_timeout_seconds
}

fn host_ip(h: &HostRecord) -> String {
    h.host.addresses.first().cloned().unwrap_or_default()
}

fn zone_of(app: &App, h: &HostRecord) -> String {
    if h.host.zone.is_empty() {
        app.config.default_zone.clone()
    } else {
        h.host.zone.clone()
    }
}

/// `q`, `size`, `from` and `sort` on ECE's lists (docs/api.md): typed, so `size=-1`,
/// `size=abc` or `size=null` is refused.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    q: Option<String>,
    size: Option<u32>,
    from: Option<u32>,
    sort: Option<String>,
}

/// What `q` and `sort` may name in an allocator.
const ALLOCATOR_FIELDS: &[&str] = &[
    "allocator_id",
    "zone_id",
    "host_ip",
    "public_hostname",
    "status.connected",
    "status.healthy",
    "status.maintenance_mode",
    "status.last_heartbeat",
    "capacity.memory.total",
    "capacity.memory.used",
    "features",
    "instances",
];

/// What `q` may name in a runner.
const RUNNER_FIELDS: &[&str] = &[
    "runner_id",
    "public_hostname",
    "host_ip",
    "connected",
    "healthy",
    "roles.role_name",
    "zone",
    "pending_roles",
    "token_id",
];

/// `items` filtered by `q`, ordered by `sort` (then `key`), cut to `from`/`size`.
fn listed<T: serde::Serialize>(
    items: Vec<T>,
    q: &ListQuery,
    fields: &[&str],
    key: &str,
) -> Result<Vec<T>, ApiError> {
    let invalid = |e: crate::query::Invalid| ApiError::new(ErrorCode::RequestInvalid, e.0);
    let query =
        crate::query::Query::parse(q.q.as_deref().unwrap_or(""), fields).map_err(invalid)?;
    let sort = crate::query::Sort::parse(
        &q.sort
            .as_deref()
            .map_or(key.to_string(), |s| format!("{s},{key}")),
        fields,
    )
    .map_err(invalid)?;
    let (from, size) = crate::query::window(q.from, q.size).map_err(invalid)?;
    let mut kept: Vec<(serde_json::Value, T)> = items
        .into_iter()
        .filter_map(|i| {
            let v = serde_json::to_value(&i).ok()?;
            query.matches(&v, fields).then_some((v, i))
        })
        .collect();
    kept.sort_by(|a, b| sort.compare(&a.0, &b.0));
    Ok(kept
        .into_iter()
        .skip(from)
        .take(size)
        .map(|(_, i)| i)
        .collect())
}

async fn allocators(
    State(app): S,
    Extension(c): Conn,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<AllocatorsReply>, ApiError> {
    app.authenticate(&headers, c.remote.ip())?;
    let Query(q) = q.map_err(query_invalid)?;
    let mut all = vec![];
    for h in app.store.hosts().await? {
        if !h.roles.contains(&Role::Allocator) {
            continue;
        }
        let conn = connected(&app, &h);
        all.push(AllocatorInfo {
            allocator_id: h.node_id.clone(),
            zone_id: zone_of(&app, &h),
            host_ip: host_ip(&h),
            public_hostname: h.host.hostname.clone(),
            status: HostStatus {
                connected: conn,
                healthy: conn,
                maintenance_mode: false,
                last_heartbeat: h.last_heartbeat,
            },
            capacity: Capacity {
                memory: Memory {
                    total: h.host.memory_mb,
                    used: h.memory_used_mb,
                },
                storage: Storage { total: 0, used: 0 },
            },
            instances: vec![],
            settings: Default::default(),
            metadata: vec![],
            features: vec![],
            external_links: vec![],
        });
    }
    // Zones in the order their first allocator comes in the sorted window.
    let mut zones: Vec<AllocatorZone> = vec![];
    for a in listed(all, &q, ALLOCATOR_FIELDS, "allocator_id")? {
        match zones.iter_mut().find(|z| z.zone_id == a.zone_id) {
            Some(z) => z.allocators.push(a),
            None => zones.push(AllocatorZone {
                zone_id: a.zone_id.clone(),
                allocators: vec![a],
            }),
        }
    }
    Ok(Json(AllocatorsReply { zones }))
}

fn runner_info(app: &App, h: &HostRecord) -> RunnerInfo {
    let conn = connected(app, h);
    RunnerInfo {
        runner_id: h.node_id.clone(),
        public_hostname: h.host.hostname.clone(),
        host_ip: host_ip(h),
        connected: conn,
        healthy: conn,
        containers: vec![],
        roles: h
            .roles
            .iter()
            .map(|r| RunnerRole { role_name: *r })
            .collect(),
        zone: zone_of(app, h),
        pending_roles: h.pending_roles.clone(),
        token_id: h.token_id.clone(),
    }
}

/// `q` on the runners (ECE takes no `size`, `from` or `sort` there; Muster does, as on the
/// allocators, and answers every runner unless `size` says otherwise).
async fn runners(
    State(app): S,
    Extension(c): Conn,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RunnersReply>, ApiError> {
    app.authenticate(&headers, c.remote.ip())?;
    let Query(mut q) = q.map_err(query_invalid)?;
    let all: Vec<RunnerInfo> = app
        .store
        .hosts()
        .await?
        .iter()
        .map(|h| runner_info(&app, h))
        .collect();
    q.size = Some(q.size.unwrap_or(10_000));
    let runners = listed(all, &q, RUNNER_FIELDS, "runner_id")?;
    Ok(Json(RunnersReply { runners }))
}

fn runner_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::EceRunnerNotFound,
        format!("no runner with id {id}"),
    )
}

async fn runner(
    State(app): S,
    Extension(c): Conn,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<RunnerInfo>, ApiError> {
    app.authenticate(&headers, c.remote.ip())?;
    match app.store.host(&id).await? {
        Some(h) => Ok(Json(runner_info(&app, &h))),
        None => Err(runner_not_found(&id)),
    }
}

/// `?bless=` on `PUT …/roles`: typed, so `bless=notabool` is refused.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BlessQuery {
    bless: Option<bool>,
}

/// Sets a runner's roles. Blessed (the default, or `bless=true`), the roles are granted and
/// no longer pending; `bless=false` keeps granted only those of them it already had and
/// leaves the rest pending, waiting for a blessing.
async fn set_runner_roles(
    State(app): S,
    Extension(c): Conn,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<BlessQuery>, QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<RunnerRolesInfo>, ApiError> {
    app.authenticate(&headers, c.remote.ip())?;
    let bad = [ErrorCode::RequestInvalid, ErrorCode::RoleUnknown];
    let to_ece = |e: ApiError| e.as_ece(&bad, ErrorCode::EceSetRolesFailed);
    let Query(q) = q.map_err(query_invalid).map_err(to_ece)?;
    let req: RunnerRolesInfo = parse_json(body).map_err(to_ece)?;
    let names: Vec<String> = req.roles.iter().map(|r| r.name().to_string()).collect();
    let asked = parse_roles(&names).map_err(to_ece)?;
    let Some(host) = app.store.host(&id).await? else {
        return Err(runner_not_found(&id));
    };
    let (granted, pending): (Vec<Role>, Vec<Role>) = if q.bless.unwrap_or(true) {
        let pending = host
            .pending_roles
            .iter()
            .copied()
            .filter(|r| !asked.contains(r))
            .collect();
        (asked, pending)
    } else {
        let granted = host
            .roles
            .iter()
            .copied()
            .filter(|r| asked.contains(r))
            .collect::<Vec<_>>();
        let pending = asked
            .iter()
            .copied()
            .filter(|r| !granted.contains(r))
            .collect();
        (granted, pending)
    };
    app.store
        .set_roles(&id, &granted, &pending)
        .await?
        .ok_or_else(|| runner_not_found(&id))?;
    Ok(Json(RunnerRolesInfo {
        roles: granted
            .iter()
            .map(|r| RoleItem::Named {
                role_name: r.to_string(),
            })
            .collect(),
    }))
}

async fn remove_runner(
    State(app): S,
    Extension(c): Conn,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authenticate(&headers, c.remote.ip())?;
    let source = c.remote.ip().to_string();
    let e = event(app.now(), "host_removed", None, None, Some(&source), None);
    match app.store.remove_host(&id, &e).await? {
        Some(gone) => {
            app.forget_addresses(&gone);
            Ok(Json(serde_json::json!({})))
        }
        None => Err(runner_not_found(&id)),
    }
}

/// The most memory a host may report, in MiB (2 PiB, what ECE's 32-bit `capacity.memory`
/// holds): figures a node sends are checked, so a hostile one cannot put 2^64−1 into the
/// registry and every sum over it.
const MAX_MEMORY_MB: u64 = i32::MAX as u64;

/// Checks a host's self-description: a DNS-shaped hostname, IP literals, a sane zone.
fn check_facts(h: &HostFacts) -> Result<(), ApiError> {
    if h.memory_mb > MAX_MEMORY_MB {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            format!("host.memory_mb must be at most {MAX_MEMORY_MB}"),
        ));
    }
    if !muster_protocol::addr::is_dns_name(&h.hostname) {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            "host.hostname must be a DNS name (letters, digits, '-', '.')",
        ));
    }
    if h.addresses.len() > 32 || h.addresses.iter().any(|a| a.parse::<IpAddr>().is_err()) {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            "host.addresses must be at most 32 IP addresses",
        ));
    }
    if h.zone.len() > 64
        || !h
            .zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            "host.zone must be at most 64 of [A-Za-z0-9._-]",
        ));
    }
    Ok(())
}

/// The longest an ephemeral token may be asked to last: ten years.
pub const MAX_TOKEN_VALIDITY_SECS: u64 = 10 * 365 * 86_400;

/// A bounded memory of recent answers, by key, each good until a time (unix seconds): the caches
/// below. When it holds `MAX` entries, the ones past their time go, then all if it is still
/// full.
pub struct Recent<V, const MAX: usize>(Mutex<HashMap<String, (V, u64)>>);

impl<V, const MAX: usize> Default for Recent<V, MAX> {
    fn default() -> Self {
        Recent(Mutex::new(HashMap::new()))
    }
}

impl<V: Clone, const MAX: usize> Recent<V, MAX> {
    fn get(&self, key: &str, now: u64) -> Option<V> {
        let m = self.0.lock().ok()?;
        m.get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone())
    }

    fn insert(&self, key: &str, v: V, until: u64, now: u64) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= MAX {
                m.retain(|_, (_, u)| *u > now);
                if m.len() >= MAX {
                    m.clear();
                }
            }
            m.insert(key.to_string(), (v, until));
        }
    }

    fn forget(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(key);
        }
    }
}

/// Tokens whose signature has verified, by their SHA-256: a fleet booting with one token pays
/// for the signature check once, not once per host. Only what the signature proves is
/// remembered; the time window and the store's record are checked on every use.
pub type VerifiedTokens = Recent<token::Claims, 1024>;

/// The transport keys of this coordinator's recent joins, by node id, until their reservation
/// expires: the commit that follows (most often on the same connection) checks its proof
/// without reading the reservation back. A node id is fresh and its key never changes, so an
/// entry cannot go stale; a miss (another coordinator's join, a restart) reads the store.
pub type JoinKeys = Recent<Vec<u8>, 4096>;

/// Why a roles token was refused: its code, the message for the caller, and the token id it
/// names (only a claim when the signature did not verify), for the audit log.
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub token_id: Option<String>,
}

impl Refusal {
    fn new(code: ErrorCode, message: &str, token_id: Option<String>) -> Refusal {
        Refusal {
            code,
            message: message.to_string(),
            token_id,
        }
    }
}

/// Verifies a token against the platform's public key and the store: signature, times, known,
/// not revoked, allowed from `source`. Needs no secret, so a director runs it too.
pub async fn verify_token(
    store: &dyn Store,
    verify_key: &[u8],
    verified: &VerifiedTokens,
    tok: &Secret,
    source: IpAddr,
    now: u64,
) -> Result<Result<(token::Claims, TokenRecord), Refusal>, ApiError> {
    let (claims, hash) = match verify_signature(verify_key, verified, tok, now) {
        Ok(x) => x,
        Err(r) => return Ok(Err(r)),
    };
    let rec = store.token(&claims.sub).await?;
    Ok(check_record(claims, rec, &hash, source, now))
}

/// The token's signature and time window; its claims and its hash.
fn verify_signature(
    verify_key: &[u8],
    verified: &VerifiedTokens,
    tok: &Secret,
    now: u64,
) -> Result<(token::Claims, String), Refusal> {
    let hash = sha256_hex(tok.expose().trim().as_bytes());
    let checked = match verified.get(&hash, now) {
        Some(c) => token::check_time(&c, now).map(|()| c),
        None => token::verify(tok.expose(), verify_key, now).inspect(|c| {
            verified.insert(&hash, c.clone(), u64::MAX, now);
        }),
    };
    match checked {
        Ok(c) => Ok((c, hash)),
        Err(e) => {
            // The id of a token that fails verification is only a claim, made by whoever sent
            // it: it reaches the audit log only if it has the shape of a token id (a UUID), so
            // no attacker-chosen text (newlines, escapes, markup) is stored.
            let id = token::inspect(tok.expose())
                .ok()
                .map(|c| c.sub)
                .filter(|s| uuid::Uuid::try_parse(s).is_ok());
            Err(Refusal::new(e.code(), &e.to_string(), id))
        }
    }
}

/// The store's record of a verified token: known (by its hash), not revoked, allowed from
/// `source`.
fn check_record(
    claims: token::Claims,
    rec: Option<TokenRecord>,
    hash: &str,
    source: IpAddr,
    now: u64,
) -> Result<(token::Claims, TokenRecord), Refusal> {
    let unknown = |id: String| {
        Refusal::new(
            ErrorCode::TokenUnknown,
            "roles token is not known to this platform",
            Some(id),
        )
    };
    let Some(rec) = rec else {
        return Err(unknown(claims.sub));
    };
    if !constant_eq(&rec.hash, hash) {
        return Err(unknown(claims.sub));
    }
    if rec.revoked {
        return Err(if rec.expires.is_some_and(|e| e < now) {
            Refusal::new(ErrorCode::TokenExpired, "roles token expired", Some(rec.id))
        } else {
            Refusal::new(
                ErrorCode::TokenRevoked,
                "roles token was revoked",
                Some(rec.id),
            )
        });
    }
    if !rec.allowed_sources.is_empty()
        && !rec
            .allowed_sources
            .iter()
            .filter_map(|s| parse_cidr(s))
            .any(|n| n.contains(&source))
    {
        return Err(Refusal {
            code: ErrorCode::TokenSource,
            message: format!("roles token may not be used from {source}"),
            token_id: Some(rec.id),
        });
    }
    Ok((claims, rec))
}

/// Token records a join has read lately, by token id, for [`TOKEN_RECORD_SECONDS`]: a fleet
/// booting with one token reads its record once a few seconds, not once per host. A join's
/// early check may so see a record up to that old; the reservation re-reads the record in
/// its own transaction and refuses a revoked or used-up token there, so nothing is signed
/// into the registry on a stale one. A revocation through this coordinator drops the copy at
/// once.
pub type TokenRecords = Recent<TokenRecord, 1024>;

/// How long a token record read by a join is used again.
const TOKEN_RECORD_SECONDS: u64 = 5;

impl App {
    /// Verifies a token against the signature and the store. Refusals are audited.
    async fn check_token(
        &self,
        tok: &Secret,
        source: IpAddr,
    ) -> Result<(token::Claims, TokenRecord), ApiError> {
        if let Some(wait) = self.token_failures.blocked(source, self.now()) {
            return Err(rate_limited(source, wait));
        }
        let now = self.now();
        let checked =
            match verify_signature(&self.platform.verify_key, &self.verified_tokens, tok, now) {
                Ok((claims, hash)) => {
                    let rec = match self.token_records.get(&claims.sub, now) {
                        Some(rec) => Some(rec),
                        None => {
                            let rec = self.store.token(&claims.sub).await?;
                            if let Some(rec) = &rec {
                                let until = now + TOKEN_RECORD_SECONDS;
                                self.token_records.insert(&rec.id, rec.clone(), until, now);
                            }
                            rec
                        }
                    };
                    check_record(claims, rec, &hash, source, now)
                }
                Err(r) => Err(r),
            };
        match checked {
            Ok(ok) => Ok(ok),
            Err(r) => Err(self.refused(r, source).await),
        }
    }

    /// Counts, audits and logs a refused token; the error to answer.
    pub(crate) async fn refused(&self, r: Refusal, source: IpAddr) -> ApiError {
        self.metrics.refusals.fetch_add(1, Ordering::Relaxed);
        self.token_failures.failed(source, self.now());
        refusal_logged(self.store.as_ref(), &r, source, self.now()).await;
        ApiError::new(r.code, r.message)
    }

    /// A host's leaf: its name and addresses, but no address another registered host holds
    /// (its certificate would stand in for that host's), as its name is its own.
    fn leaf(&self, node_id: &str, host: &HostFacts, coordinator: bool) -> Leaf {
        let mut sans = pki::host_sans(&host.hostname, &host.addresses);
        sans.retain(|s| match s {
            rcgen::SanType::IpAddress(ip) => !self.address_taken(ip, &host.hostname),
            _ => true,
        });
        Leaf {
            common_name: node_id.to_string(),
            sans,
            coordinator,
            validity: time::Duration::days(self.config.cert_validity_days.into()),
        }
    }

    /// The leaf of a host's HTTP certificate. The HTTP CA also signs this coordinator's own
    /// serving certificate, which installers and admins check against it, so a host that is
    /// not a coordinator is not certified for the names and addresses this coordinator
    /// answers on, whatever it says about itself: its certificate could stand in for the
    /// coordinator's.
    fn http_leaf(&self, node_id: &str, host: &HostFacts, coordinator: bool) -> Leaf {
        let mut leaf = self.leaf(node_id, host, coordinator);
        if !coordinator {
            if let Ok(reserved) = self.reserved_names.read() {
                leaf.sans.retain(|s| !reserved.contains(&pki::san_key(s)));
            }
        }
        leaf
    }

    fn bundle(&self, r: &Reservation, now: u64) -> Bundle {
        Bundle {
            node_id: r.node_id.clone(),
            psk: Secret::new(self.platform.psk(&r.node_id)),
            roles: r.roles.clone(),
            pending_roles: r.pending_roles.clone(),
            token_id: r.token_id.clone(),
            transport_ca_pem: self.platform.transport_ca.cert_pem.clone(),
            http_ca_pem: self.platform.http_ca.cert_pem.clone(),
            transport_cert_pem: r.transport_cert_pem.clone(),
            http_cert_pem: r.http_cert_pem.clone(),
            coordinators: self.advertise.clone(),
            remaining_seconds: r.expires_at.saturating_sub(now),
            issued_at: now,
            cert_not_after: r.cert_not_after,
        }
    }
}

fn time_of(now: u64) -> Result<time::OffsetDateTime, ApiError> {
    time::OffsetDateTime::from_unix_timestamp(now as i64)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "clock out of range"))
}

async fn join(
    State(app): S,
    Extension(c): Conn,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Bundle>, ApiError> {
    let source = c.remote.ip();
    let mut req: JoinRequest = parse_json(body)?;
    let (claims, rec) = app.check_token(&req.token, source).await?;
    check_facts(&req.host)?;
    // DNS names are one name in any letter case: the registry, the replacement rule and the
    // certificates know a host by its name in lower case, so `ALLOC-1` is `alloc-1`.
    req.host.hostname.make_ascii_lowercase();
    let now = app.now();
    let mut requested = req.roles.clone();
    muster_protocol::role::normalize(&mut requested);
    let (roles, pending) = if rec.kind == TokenKind::Initial {
        // A role-less token enrolls the host with nothing granted: what it asked for waits
        // for an operator (`PUT …/runners/{id}/roles`).
        (vec![], requested)
    } else {
        let checked = token::Claims {
            roles: rec.roles.clone(),
            kind: rec.kind,
            ..claims
        };
        match token::grant_roles(&checked, &requested) {
            Ok(r) => (r, vec![]),
            Err(e) => {
                app.metrics.refusals.fetch_add(1, Ordering::Relaxed);
                app.audit("refused", Some(&rec.id), None, Some(source), Some(e.code()))
                    .await;
                return Err(ApiError::new(e.code(), e.to_string()));
            }
        }
    };
    // A join under the name of a registered host replaces it when it commits (a rebuilt host).
    // That takes a token granting every role the registered host has: a weaker one (say, the
    // role-less initial token) must not knock a coordinator off the registry. Refused as a
    // bad token is (counted against the source): the answer names the host's roles, so a
    // token holder may not ask about name after name.
    if let Some(old) = app.store.host_named(&req.host.hostname).await? {
        if !crate::store::may_replace(&old, &roles) {
            let e = replace_refused(&old);
            let r = Refusal {
                code: ErrorCode::HostReplaceRoles,
                message: e.message,
                token_id: Some(rec.id),
            };
            return Err(app.refused(r, source).await);
        }
    }
    let allowed = pki::host_sans(&req.host.hostname, &req.host.addresses);
    let transport = pki::check_csr(&req.transport_csr, &allowed)
        .map_err(|e| ApiError::new(e.code(), format!("transport CSR: {e}")))?;
    let http = pki::check_csr(&req.http_csr, &allowed)
        .map_err(|e| ApiError::new(e.code(), format!("HTTP CSR: {e}")))?;
    // Time-ordered (UUIDv7: 48 bits of milliseconds, 74 random): the registry's indexes on node
    // id grow at their end, so a storm of joins writes a few pages per batch, not one per host.
    let node_id = uuid::Uuid::now_v7().to_string();
    let t = time_of(now)?;
    let tcert = app.platform.transport_ca.sign(
        &transport.public_key,
        &app.leaf(&node_id, &req.host, false),
        t,
    )?;
    let hcert = app.platform.http_ca.sign(
        &http.public_key,
        &app.http_leaf(&node_id, &req.host, roles.contains(&Role::Coordinator)),
        t,
    )?;
    let mut host = req.host.clone();
    if host.zone.is_empty() {
        host.zone = app.config.default_zone.clone();
    }
    let r = Reservation {
        node_id,
        token_id: rec.id.clone(),
        key_hash: transport.key_hash,
        spki_der: transport.spki_der,
        host,
        roles,
        pending_roles: pending,
        serials: vec![tcert.serial, hcert.serial],
        transport_cert_pem: tcert.pem,
        http_cert_pem: hcert.pem,
        cert_not_after: tcert.not_after.min(hcert.not_after),
        created: now,
        expires_at: now + app.config.reservation_seconds,
        source: source.to_string(),
        committed: false,
    };
    // A reservation under this join's own node id is this join's: a store that retried the
    // write after losing its answer (etcd's client does) finds it there. It is new, as
    // `Reserved`; only an earlier join of the same key has another node id. The store audited
    // the use with it.
    let outcome = match app.store.reserve(&r, now).await? {
        ReserveOutcome::Existing(e) if e.node_id == r.node_id => ReserveOutcome::Reserved,
        other => other,
    };
    let r = match outcome {
        ReserveOutcome::Reserved => {
            app.metrics.joins.fetch_add(1, Ordering::Relaxed);
            r
        }
        ReserveOutcome::Existing(existing) => *existing,
        // The record changed since the early check (revoked, or removed, meanwhile or on
        // another coordinator): refused as that check would have.
        outcome @ (ReserveOutcome::UnknownToken | ReserveOutcome::Revoked) => {
            app.token_records.forget(&rec.id);
            let r = if matches!(outcome, ReserveOutcome::Revoked) {
                Refusal::new(
                    ErrorCode::TokenRevoked,
                    "roles token was revoked",
                    Some(rec.id),
                )
            } else {
                Refusal::new(
                    ErrorCode::TokenUnknown,
                    "roles token is not known to this platform",
                    Some(rec.id),
                )
            };
            return Err(app.refused(r, source).await);
        }
        // Not counted against the source: a fleet behind one address racing a one-use token
        // must hear "use limit reached", not be held off.
        ReserveOutcome::UseLimitReached => {
            app.metrics.refusals.fetch_add(1, Ordering::Relaxed);
            app.audit(
                "refused",
                Some(&rec.id),
                None,
                Some(source),
                Some(ErrorCode::TokenUseLimit),
            )
            .await;
            return Err(ApiError::new(
                ErrorCode::TokenUseLimit,
                "roles token has reached its use limit",
            ));
        }
    };
    app.join_keys
        .insert(&r.node_id, r.spki_der.clone(), r.expires_at, now);
    Ok(Json(app.bundle(&r, now)))
}

/// A coordinator answers recovery as a director does (a new coordinator joining a live
/// platform over its shared store).
async fn recover(
    State(app): S,
    Extension(c): Conn,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Recovery>, ApiError> {
    crate::director::recover(
        app.store.as_ref(),
        &app.config,
        &app.token_failures,
        &app.verified_tokens,
        body,
        c.remote.ip(),
        app.now(),
    )
    .await
    .map(Json)
}

async fn commit(
    State(app): S,
    Extension(c): Conn,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<CommitReply>, ApiError> {
    let req: CommitRequest = parse_json(body)?;
    let now = app.now();
    let spki = match app.join_keys.get(&req.node_id, now) {
        Some(spki) => spki,
        None => match app.store.reservation(&req.node_id).await? {
            Some(r) if r.expires_at > now => r.spki_der,
            _ => match app.store.host(&req.node_id).await? {
                Some(h) => h.spki_der,
                None => return Err(ApiError::new(ErrorCode::JoinUnknown, "no join reservation with that node id: it expired or never existed; run the install again")),
            },
        },
    };
    let proof = base64::engine::general_purpose::STANDARD
        .decode(&req.proof)
        .map_err(|_| {
            ApiError::new(
                ErrorCode::RequestInvalid,
                "proof must be the signature in standard base64",
            )
        })?;
    if !app.platform.check_psk(&req.node_id, req.psk.expose())
        || !pki::verify_proof(
            &spki,
            &commit_message(&req.node_id, req.psk.expose()),
            &proof,
        )
    {
        tracing::warn!(source = %c.remote.ip(), node_id = %req.node_id, "commit with a wrong PSK or proof of possession");
        return Err(ApiError::new(
            ErrorCode::JoinProof,
            "commit refused: the PSK or the proof of possession of the new key is wrong",
        ));
    }
    // The store audits the commit (and the host it replaced) with it.
    let source = c.remote.ip().to_string();
    match app.store.commit(&req.node_id, now, &source).await? {
        CommitOutcome::Committed { host, replaced } => {
            app.join_keys.forget(&host.node_id);
            if let Ok(mut a) = app.host_addresses.write() {
                a.add(&host.host);
            }
            app.metrics.commits.fetch_add(1, Ordering::Relaxed);
            if let Some(old) = replaced {
                tracing::info!(hostname = %old.host.hostname, old = %old.node_id, new = %host.node_id, "host re-enrolled; old record replaced and its certificates revoked");
            }
            Ok(Json(CommitReply {
                node_id: host.node_id,
                registered: true,
                connected: true,
            }))
        }
        CommitOutcome::AlreadyCommitted(host) => {
            let connected = connected(&app, &host);
            Ok(Json(CommitReply {
                node_id: host.node_id,
                registered: true,
                connected,
            }))
        }
        CommitOutcome::Unknown => Err(ApiError::new(
            ErrorCode::JoinUnknown,
            "the join reservation expired before the commit; run the install again",
        )),
        // Registered under this name since the join (which checked the same): refused here too,
        // inside the commit's own transaction.
        CommitOutcome::ReplaceRefused(old) => Err(replace_refused(&old)),
        // Audited, not counted against the source: the caller proved the PSK and the key, so
        // there is nothing to guess, and a fleet behind one address may be re-enrolling.
        CommitOutcome::TokenRevoked(token_id) => {
            app.token_records.forget(&token_id);
            app.metrics.refusals.fetch_add(1, Ordering::Relaxed);
            let code = ErrorCode::TokenRevoked;
            app.audit(
                "refused",
                Some(&token_id),
                None,
                Some(c.remote.ip()),
                Some(code),
            )
            .await;
            Err(ApiError::new(
                code,
                "roles token was revoked after this join; the host is not registered",
            ))
        }
    }
}

/// The refusal of a join or commit that would replace `old` without all its roles.
fn replace_refused(old: &HostRecord) -> ApiError {
    ApiError::new(
        ErrorCode::HostReplaceRoles,
        format!(
            "a host named {} is registered with roles [{}] this join does not grant; use a token that grants them, or remove that host first",
            old.host.hostname,
            muster_protocol::role::join(&old.roles)
        ),
    )
}

/// The enrolled node behind a mutual-TLS request: its certificate must be current (not
/// revoked, one of the host's own) and its host registered.
async fn node_of(app: &App, c: &ConnInfo) -> Result<HostRecord, ApiError> {
    let Some(der) = c.peer_cert.as_deref() else {
        return Err(ApiError::new(
            ErrorCode::NodeCertRequired,
            "this call needs the node's transport certificate (mutual TLS)",
        ));
    };
    let Some((node_id, serial)) = pki::cert_identity(der) else {
        return Err(ApiError::new(
            ErrorCode::NodeCertRequired,
            "client certificate has no node identity",
        ));
    };
    if app.store.is_revoked(&serial).await? {
        return Err(ApiError::new(
            ErrorCode::NodeUnknown,
            "this certificate was revoked (host removed, replaced or renewed)",
        ));
    }
    match app.store.host(&node_id).await? {
        Some(h) if h.serials.contains(&serial) => Ok(h),
        _ => Err(ApiError::new(
            ErrorCode::NodeUnknown,
            "this node is not registered; enroll it again",
        )),
    }
}

async fn heartbeat(
    State(app): S,
    Extension(c): Conn,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let hb: Heartbeat = parse_json(body)?;
    if hb.memory_used_mb > MAX_MEMORY_MB {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            format!("memory_used_mb must be at most {MAX_MEMORY_MB}"),
        ));
    }
    let h = node_of(&app, &c).await?;
    let now = app.now();
    let h = app
        .store
        .heartbeat(&h.node_id, now, hb.memory_used_mb)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NodeUnknown, "node removed"))?;
    app.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
    Ok(Json(HeartbeatReply {
        node_id: h.node_id,
        roles: h.roles,
        pending_roles: h.pending_roles,
        coordinators: app.advertise.clone(),
        server_time: now,
    }))
}

async fn renew(
    State(app): S,
    Extension(c): Conn,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<RenewReply>, ApiError> {
    let req: RenewRequest = parse_json(body)?;
    let h = node_of(&app, &c).await?;
    let allowed = pki::host_sans(&h.host.hostname, &h.host.addresses);
    let transport = pki::check_csr(&req.transport_csr, &allowed)
        .map_err(|e| ApiError::new(e.code(), format!("transport CSR: {e}")))?;
    let http = pki::check_csr(&req.http_csr, &allowed)
        .map_err(|e| ApiError::new(e.code(), format!("HTTP CSR: {e}")))?;
    let t = time_of(app.now())?;
    let tcert = app.platform.transport_ca.sign(
        &transport.public_key,
        &app.leaf(&h.node_id, &h.host, false),
        t,
    )?;
    let hcert = app.platform.http_ca.sign(
        &http.public_key,
        &app.http_leaf(&h.node_id, &h.host, h.roles.contains(&Role::Coordinator)),
        t,
    )?;
    let not_after = tcert.not_after.min(hcert.not_after);
    // The pair this host renewed with stays valid until its next renewal: if this answer never
    // reaches it, it still has a certificate to try again with. Any other old pair (the answer
    // to an earlier renewal that was lost) is revoked.
    let keep = c
        .peer_cert
        .as_deref()
        .and_then(|der| pki::cert_identity(der))
        .map(|(_, serial)| pair_of(&h.serials, &serial))
        .unwrap_or_default();
    // Removed meanwhile (leave, an admin): the certificates just signed are never handed out.
    app.store
        .replace_certs(&h.node_id, &[tcert.serial, hcert.serial], &keep, not_after)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NodeUnknown, "this node was removed"))?;
    app.metrics.renewals.fetch_add(1, Ordering::Relaxed);
    Ok(Json(RenewReply {
        transport_cert_pem: tcert.pem,
        http_cert_pem: hcert.pem,
        transport_ca_pem: app.platform.transport_ca.cert_pem.clone(),
        http_ca_pem: app.platform.http_ca.cert_pem.clone(),
        cert_not_after: not_after,
    }))
}

/// The transport and HTTP pair among a host's serials that `serial` belongs to.
fn pair_of(serials: &[String], serial: &str) -> Vec<String> {
    serials
        .chunks(2)
        .find(|pair| pair.iter().any(|s| s == serial))
        .map(<[String]>::to_vec)
        .unwrap_or_default()
}

async fn leave(State(app): S, Extension(c): Conn) -> Result<Json<serde_json::Value>, ApiError> {
    let h = node_of(&app, &c).await?;
    let source = c.remote.ip().to_string();
    let e = event(app.now(), "host_left", None, None, Some(&source), None);
    if let Some(gone) = app.store.remove_host(&h.node_id, &e).await? {
        app.forget_addresses(&gone);
    }
    Ok(Json(serde_json::json!({})))
}

/// Elasticsearch's transport port, where `nodes_addresses` says the enrolled hosts listen.
const ES_TRANSPORT_PORT: u16 = 9300;

async fn es_enroll_node(
    State(app): S,
    Extension(c): Conn,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Credentials first: whether the feature is on is not for anyone to learn.
    app.authenticate(&headers, c.remote.ip())?;
    if !app.config.es_enroll_node {
        return Err(ApiError::new(ErrorCode::FeatureDisabled, "the enroll-node API is off (es_enroll_node: true in the server config turns it on; it hands out the HTTP CA key)"));
    }
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let node_id = uuid::Uuid::new_v4().to_string();
    let leaf = Leaf {
        common_name: node_id,
        sans: vec![],
        coordinator: false,
        validity: time::Duration::days(app.config.cert_validity_days.into()),
    };
    let cert = app
        .platform
        .transport_ca
        .sign(&key, &leaf, time_of(app.now())?)?;
    // As Elasticsearch answers: the transport addresses of the nodes already there (the
    // registered hosts), for the new node's discovery.
    let nodes_addresses = app
        .store
        .hosts()
        .await?
        .iter()
        .filter_map(|h| h.host.addresses.first())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, ES_TRANSPORT_PORT).to_string())
        .collect();
    let mut resp = Json(EsEnrollNodeReply {
        http_ca_key: b64(&app.platform.http_ca.key_der()),
        http_ca_cert: b64(&app.platform.http_ca.cert_der),
        transport_ca_cert: b64(&app.platform.transport_ca.cert_der),
        transport_key: b64(&key.serialize_der()),
        transport_cert: b64(&cert.der),
        nodes_addresses,
    })
    .into_response();
    // Elastic's clients check that they talk to Elasticsearch by this header.
    resp.headers_mut().insert(
        "x-elastic-product",
        axum::http::HeaderValue::from_static("Elasticsearch"),
    );
    Ok(resp)
}

/// This API as an OpenAPI 3 document, the one kept in the repository.
const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}

async fn readyz(State(app): S) -> Response {
    match app.store.platform().await {
        Ok(Some(_)) => (StatusCode::OK, "ready\n").into_response(),
        _ => ApiError::new(ErrorCode::StoreUnavailable, "store not ready").into_response(),
    }
}

async fn metrics(State(app): S) -> Response {
    let m = &app.metrics;
    let mut out = String::new();
    for (name, help, v) in [
        ("muster_joins_total", "Join reservations made.", &m.joins),
        (
            "muster_commits_total",
            "Joins committed (hosts registered).",
            &m.commits,
        ),
        ("muster_refusals_total", "Joins refused.", &m.refusals),
        (
            "muster_heartbeats_total",
            "Heartbeats received.",
            &m.heartbeats,
        ),
        (
            "muster_renewals_total",
            "Certificate renewals.",
            &m.renewals,
        ),
        (
            "muster_tokens_created_total",
            "Roles tokens created.",
            &m.tokens_created,
        ),
        (
            "muster_login_failures_total",
            "Failed admin logins.",
            &m.login_failures,
        ),
        (
            "muster_reservations_expired_total",
            "Joins expired uncommitted.",
            &m.reservations_expired,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            v.load(Ordering::Relaxed)
        ));
    }
    if let Ok(hosts) = app.store.hosts().await {
        out.push_str(&format!(
            "# HELP muster_hosts Registered hosts.\n# TYPE muster_hosts gauge\nmuster_hosts {}\n",
            hosts.len()
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Installer downloads one source address may have in flight; past it, `429
/// request.rate_limited`. Each streams in chunks (an HTTP/2 stream queues at most 64 KiB), so a
/// source holds a few hundred KiB, not a copy of the file per request.
const MAX_DOWNLOADS_PER_SOURCE: usize = 4;
/// The chunk a download reads and sends at a time.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// The installer file, opened, with its length.
async fn installer_file(app: &App) -> Result<(tokio::fs::File, u64), ApiError> {
    let path = app
        .config
        .installer_path
        .clone()
        .unwrap_or_else(|| "/usr/lib/muster/muster-x86_64".into());
    let missing = || {
        ApiError::new(
            ErrorCode::NotFound,
            "no installer binary on this coordinator (set installer_path in the server config)",
        )
    };
    let f = tokio::fs::File::open(&path).await.map_err(|_| missing())?;
    let m = f.metadata().await.map_err(|_| missing())?;
    if !m.is_file() {
        return Err(missing());
    }
    Ok((f, m.len()))
}

/// `hooks/install.sh`, as served: musterd fills in the address it was reached at, its serving
/// key's pin and the HTTP CA, so the script fetches the installer over the same pinned TLS.
const INSTALL_SH: &str = include_str!("../../hooks/install.sh");

async fn install_script(State(app): S, headers: HeaderMap) -> Response {
    // The address the client used, when it is a plain host[:port]; it ends up inside a
    // single-quoted shell string, so anything else falls back to the advertised address.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_string)
        .or_else(|| app.advertise.first().cloned())
        .unwrap_or_default();
    let script = render_install_script(
        &host,
        &app.serving_key.curl_pin(),
        &app.platform.http_ca.cert_pem,
    );
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        script,
    )
        .into_response()
}

/// Fills the served values into `install.sh`.
pub fn render_install_script(coordinator: &str, curl_pin: &str, ca_pem: &str) -> String {
    INSTALL_SH
        .replacen("@COORDINATOR@", coordinator, 1)
        .replacen("@PIN@", curl_pin, 1)
        .replacen("@CA_PEM@", ca_pem.trim_end(), 1)
}

/// A download slot of the client's address, or `429 request.rate_limited`.
fn download_slot(app: &Arc<App>, c: &ConnInfo) -> Result<crate::limit::Slot, ApiError> {
    app.downloads.take(c.remote.ip()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::RequestRateLimited,
            format!(
                "{} has {MAX_DOWNLOADS_PER_SOURCE} installer downloads in flight; retry once one is done",
                c.remote.ip()
            ),
        )
    })
}

async fn download_installer(State(app): S, Extension(c): Conn) -> Result<Response, ApiError> {
    let permit = download_slot(&app, &c)?;
    let (file, len) = installer_file(&app).await?;
    // The permit rides with the body: it is given back when the last chunk is sent, or the
    // client goes away.
    use futures_util::StreamExt;
    let chunks =
        tokio_util::io::ReaderStream::with_capacity(file, DOWNLOAD_CHUNK).map(move |chunk| {
            let _held = &permit;
            chunk
        });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

async fn download_installer_sha256(
    State(app): S,
    Extension(c): Conn,
) -> Result<Response, ApiError> {
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let _permit = download_slot(&app, &c)?;
    let (mut file, _) = installer_file(&app).await?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; DOWNLOAD_CHUNK];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| {
            ApiError::new(ErrorCode::Internal, format!("reading the installer: {e}"))
        })?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(format!("{}  muster-x86_64\n", hex::encode(hash.finalize())).into_response())
}

/// Tests: a coordinator's App on a fresh SQLite store in `dir`, and the store.
#[cfg(test)]
pub(crate) async fn test_app(
    dir: &std::path::Path,
) -> anyhow::Result<(Arc<crate::store::sqlite::SqliteStore>, Arc<App>)> {
    let store = Arc::new(crate::store::sqlite::SqliteStore::open(
        &dir.join("muster.db"),
    )?);
    let (platform, _, _) =
        crate::platform::Platform::init(store.as_ref(), &[], None, 1_800_000_000).await?;
    let key = pki::ServingKey::load_or_create(dir)?;
    let app = App::new(store.clone(), platform, Config::default(), key);
    Ok((store, app))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep that cannot expire reservations (here their table is gone) still retires the
    /// expired tokens, and says what failed.
    #[tokio::test]
    async fn a_sweep_that_fails_half_way_does_the_other_half() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("muster.db");
        let (store, app) = test_app(dir.path()).await?;
        let mut t = crate::store::conformance::token("gone-by", None);
        t.kind = TokenKind::Ephemeral;
        t.expires = Some(1_000);
        store.insert_token(&t, None).await?;
        rusqlite::Connection::open(&path)?.execute_batch("DROP TABLE reservations")?;
        let swept = app.sweep().await;
        assert!(swept.is_err_and(|e| e.to_string().contains("reservations")));
        assert_eq!(store.token("gone-by").await?.map(|t| t.revoked), Some(true));
        Ok(())
    }

    #[test]
    fn token_records_are_used_again_for_a_few_seconds_and_forgotten_on_revocation() {
        let rec = TokenRecord {
            id: "t1".into(),
            hash: "00".into(),
            kind: TokenKind::Persistent,
            roles: vec![Role::Allocator],
            created: 0,
            expires: None,
            max_uses: None,
            uses: 0,
            allowed_sources: vec![],
            revoked: false,
        };
        let r = TokenRecords::default();
        r.insert("t1", rec.clone(), 100 + TOKEN_RECORD_SECONDS, 100);
        assert_eq!(
            r.get("t1", 100 + TOKEN_RECORD_SECONDS - 1),
            Some(rec.clone())
        );
        assert_eq!(
            r.get("t1", 100 + TOKEN_RECORD_SECONDS),
            None,
            "read again after that"
        );
        r.insert("t1", rec.clone(), 200 + TOKEN_RECORD_SECONDS, 200);
        r.forget("t1");
        assert_eq!(r.get("t1", 200), None);
    }

    #[test]
    fn join_keys_are_remembered_until_their_reservation_expires_and_stay_bounded() {
        const MAX: usize = 4096;
        let k = JoinKeys::default();
        k.insert("a", b"key-a".to_vec(), 100, 0);
        assert_eq!(k.get("a", 99).as_deref(), Some(&b"key-a"[..]));
        assert_eq!(k.get("a", 100), None, "expired with its reservation");
        assert_eq!(k.get("b", 0), None);
        k.forget("a");
        assert_eq!(k.get("a", 0), None);
        for i in 0..MAX + 10 {
            k.insert(&format!("n{i}"), b"k".to_vec(), 1000, 0);
        }
        let len = k.0.lock().map(|m| m.len()).unwrap_or(usize::MAX);
        assert!(len <= MAX, "{len}");
        assert!(k.get(&format!("n{}", MAX + 9), 0).is_some());
        // When full, the entries past their time go first.
        let k = JoinKeys::default();
        for i in 0..MAX {
            k.insert(
                &format!("n{i}"),
                b"k".to_vec(),
                if i == 0 { 2000 } else { 10 },
                0,
            );
        }
        k.insert("new", b"k".to_vec(), 2000, 20);
        assert!(k.get("n0", 20).is_some() && k.get("new", 20).is_some());
        let len = k.0.lock().map(|m| m.len()).unwrap_or(usize::MAX);
        assert_eq!(len, 2);
    }
}
