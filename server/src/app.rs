//! The `App`: one coordinator's state (store, platform, config) and its services
//! (`crate::service`), which the HTTP handlers (`crate::http`), the sweeper and the command
//! line share.

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pki;
use crate::platform::Platform;
use crate::service::admission::Admission;
use crate::service::auth::Auth;
use crate::service::cache::JoinKeys;
use crate::service::issuance::Issuer;
use crate::service::names::Names;
use crate::service::recovery::Recoverer;
use crate::service::registry::View;
use crate::service::tokens;
use crate::store::{event, Store};
use muster_protocol::api::*;
use std::net::IpAddr;
use std::sync::Arc;

pub use crate::service::system_now;

/// Installer downloads one source address may have in flight; past it, `429
/// request.rate_limited`. Each streams in chunks (an HTTP/2 stream queues at most 64 KiB), so a
/// source holds a few hundred KiB, not a copy of the file per request.
pub const MAX_DOWNLOADS_PER_SOURCE: usize = 4;

pub struct App {
    pub store: Arc<dyn Store>,
    pub platform: Platform,
    pub config: Config,
    pub advertise: Vec<String>,
    /// The key of the TLS serving certificate: the platform's, or (a platform made before it
    /// kept one) the one in the data folder.
    pub serving_key: pki::ServingKey,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    /// The web console's sessions.
    pub sessions: crate::service::sessions::Sessions,
    pub admission: Admission,
    pub names: Names,
    pub join_keys: JoinKeys,
    /// Installer downloads in flight per source ([`MAX_DOWNLOADS_PER_SOURCE`]).
    pub downloads: Arc<crate::limit::PerSource>,
    pub clock: fn() -> u64,
}

impl App {
    pub fn new(
        store: Arc<dyn Store>,
        mut platform: Platform,
        config: Config,
        local_key: pki::ServingKey,
    ) -> Arc<App> {
        // This coordinator's id among the platform's coordinators: the hex SPKI SHA-256 of the
        // key in its data folder.
        let coordinator_id = muster_protocol::pin::spki_pin(&local_key.key_pair().public_key_der())
            .trim_start_matches(muster_protocol::pin::PREFIX)
            .to_string();
        let serving_key = platform.serving_key.take().unwrap_or(local_key);
        let advertise = config.advertise_or_default();
        let metrics = Arc::new(Metrics::default());
        let auth = Auth::new(
            &platform,
            store.clone(),
            config.login_failures_per_minute,
            metrics.clone(),
        );
        let admission = Admission::new(
            store.clone(),
            platform.verify_key.clone(),
            config.token_failures_per_minute,
            metrics.clone(),
        );
        let names = Names::new(store.clone(), coordinator_id, advertise.clone());
        Arc::new(App {
            store,
            platform,
            config,
            advertise,
            serving_key,
            metrics,
            auth,
            sessions: Default::default(),
            admission,
            names,
            join_keys: JoinKeys::default(),
            downloads: Arc::new(crate::limit::PerSource::new(MAX_DOWNLOADS_PER_SOURCE)),
            clock: system_now,
        })
    }

    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Signs hosts' certificates.
    pub fn issuer(&self) -> Issuer<'_> {
        Issuer {
            platform: &self.platform,
            names: &self.names,
            validity: time::Duration::days(self.config.cert_validity_days.into()),
        }
    }

    /// The named API keys.
    pub fn keys(&self) -> crate::service::credentials::Keys<'_> {
        crate::service::credentials::Keys {
            store: self.store.as_ref(),
            key: self.platform.credential_key(),
            user: &self.platform.admin_user,
            bootstrap_hash: &self.platform.api_key_hash,
            platform_created: self.platform.created,
        }
    }

    /// Answers recovery with the emergency token.
    pub fn recoverer(&self) -> Recoverer<'_> {
        Recoverer {
            store: self.store.as_ref(),
            config: &self.config,
            failures: self.admission.failures(),
            verified: self.admission.verified(),
        }
    }

    /// The registry as the API shows it now.
    pub fn view(&self) -> View<'_> {
        View {
            now: self.now(),
            heartbeat_timeout: self.config.heartbeat_timeout_seconds,
            default_zone: &self.config.default_zone,
        }
    }

    /// Creates a token, records it and audits it as made by `actor`. Used by the API and by
    /// `musterd token create`.
    pub async fn create_token(
        &self,
        req: &CreateTokenRequest,
        actor: &str,
        source: Option<IpAddr>,
    ) -> Result<CreateTokenReply, ApiError> {
        let (roles, kind) = tokens::check_request(req)?;
        let (tok, mut rec) = self.platform.make_token(
            None,
            kind,
            roles,
            req.validity_in_seconds,
            req.max_uses,
            req.allowed_sources.clone(),
            &self.advertise,
            self.now(),
        )?;
        rec.description = req.description.clone();
        let source = source.map(|s| s.to_string());
        let created = event(
            rec.created,
            "created",
            actor,
            Some(&rec.id),
            None,
            source.as_deref(),
            None,
        );
        self.store.insert_token(&rec, Some(&created)).await?;
        self.metrics.tokens_created.inc();
        let install_command = self
            .advertise
            .first()
            .map(|c| tokens::install_line(c, &self.serving_key.curl_pin(), &tok));
        Ok(CreateTokenReply {
            token: tok,
            token_id: rec.id,
            install_command,
        })
    }

    /// What this coordinator answers on, as last read.
    pub fn own_names(&self) -> Vec<String> {
        self.names.own()
    }

    /// Publishes this coordinator's names for the platform's other coordinators.
    pub async fn publish_names(&self) -> anyhow::Result<()> {
        self.names.publish().await
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

    /// Reads again which addresses the registered hosts hold, when due (or at once, `now`).
    pub async fn refresh_addresses(&self, now: bool) -> anyhow::Result<()> {
        self.names.refresh_addresses(self.now(), now).await
    }

    /// Removes expired reservations (giving their uses back) and retires expired ephemeral
    /// tokens. Run periodically.
    pub async fn sweep(&self) -> anyhow::Result<()> {
        if let Err(e) = self.names.refresh().await {
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
        let tokens = tokens::expire(self.store.as_ref(), now).await;
        for r in expired? {
            self.metrics.reservations_expired.inc();
            tracing::info!(node_id = %r.node_id, token_id = %r.token_id, "join reservation expired; certificates revoked, token use returned");
        }
        tokens
    }
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
    use muster_protocol::token::TokenKind;

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
}
