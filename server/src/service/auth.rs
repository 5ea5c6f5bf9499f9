//! Admin credentials: HTTP Basic with the admin user and password, or `Authorization: ApiKey
//! KEY` with a named API key ([`super::credentials`]). Failures are counted and held against
//! their source address. Every check reads the credential records from the store, so a key
//! revoked or a password changed through any coordinator holds here at once.

use super::credentials::{self, key_is_genuine, BOOTSTRAP};
use crate::error::ApiError;
use crate::limit::FailureLimiter;
use crate::metrics::Metrics;
use crate::platform::{sha256_hex, CredentialKey, Platform};
use crate::store::Store;
use base64::Engine;
use muster_protocol::ErrorCode;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Who an admin request authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The admin user, by name, with its password.
    User(String),
    /// An API key, by name (`bootstrap` for the one `musterd init` made).
    ApiKey(String),
}

impl Credential {
    /// How audit events name it ([`AuditEvent::actor`](muster_protocol::api::AuditEvent)).
    pub fn actor(&self) -> String {
        match self {
            Credential::User(name) => format!("user:{name}"),
            Credential::ApiKey(name) => format!("api-key:{name}"),
        }
    }
}

/// Checks admin credentials against the platform's and the store's.
pub struct Auth {
    store: Arc<dyn Store>,
    key: CredentialKey,
    pub admin_user: String,
    admin_password_hash: String,
    api_key_hash: String,
    failures: FailureLimiter,
    metrics: Arc<Metrics>,
    /// The argon2 hash last verified and the SHA-256 of the password that verified against
    /// it, so argon2 runs once per password, not per call.
    verified_password: Mutex<Option<(String, String)>>,
}

impl Auth {
    pub fn new(
        platform: &Platform,
        store: Arc<dyn Store>,
        failures_per_minute: u32,
        metrics: Arc<Metrics>,
    ) -> Auth {
        Auth {
            store,
            key: platform.credential_key(),
            admin_user: platform.admin_user.clone(),
            admin_password_hash: platform.admin_password_hash.clone(),
            api_key_hash: platform.api_key_hash.clone(),
            failures: FailureLimiter::new(failures_per_minute),
            metrics,
            verified_password: Mutex::new(None),
        }
    }

    /// Checks the `Authorization` header of a request from `source`; a source with too many
    /// failures lately is held off before its credentials are looked at.
    pub async fn check(
        &self,
        authorization: Option<&str>,
        source: IpAddr,
        now: u64,
    ) -> Result<Credential, ApiError> {
        if let Some(wait) = self.failures.blocked(source, now) {
            return Err(ApiError::new(
                ErrorCode::AuthRateLimited,
                format!("too many failed logins from {source}; wait {wait}s"),
            ));
        }
        let Some(header) = authorization else {
            return Err(ApiError::new(
                ErrorCode::AuthRequired,
                "authentication required: HTTP Basic or `Authorization: ApiKey KEY`",
            ));
        };
        let ok = if let Some(key) = strip_scheme(header, "ApiKey") {
            self.check_key(key.trim()).await?
        } else if let Some(b) = strip_scheme(header, "Basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok());
            match decoded.as_deref().and_then(|d| d.split_once(':')) {
                // The password is checked whatever the user, so an unknown user costs what a
                // wrong password does and the answer's time tells nothing about user names.
                Some((user, password)) => {
                    let password_ok = self.check_password(password).await?;
                    (constant_eq(user, &self.admin_user) && password_ok)
                        .then(|| Credential::User(user.to_string()))
                }
                None => None,
            }
        } else {
            None
        };
        if let Some(who) = ok {
            return Ok(who);
        }
        self.metrics.login_failures.inc();
        self.failures.failed(source, now);
        tracing::warn!(%source, "admin authentication failed");
        Err(ApiError::new(
            ErrorCode::AuthInvalid,
            "wrong user, password or API key",
        ))
    }

    /// Checks that `password` is the admin password now, as a change of it asks: a wrong one
    /// counts as a failed login of `source`.
    pub async fn confirm_password(
        &self,
        password: &str,
        source: IpAddr,
        now: u64,
    ) -> Result<(), ApiError> {
        if let Some(wait) = self.failures.blocked(source, now) {
            return Err(ApiError::new(
                ErrorCode::AuthRateLimited,
                format!("too many failed logins from {source}; wait {wait}s"),
            ));
        }
        if self.check_password(password).await? {
            return Ok(());
        }
        self.metrics.login_failures.inc();
        self.failures.failed(source, now);
        tracing::warn!(%source, "admin password change: the current password was wrong");
        Err(ApiError::new(
            ErrorCode::PasswordRequired,
            "security.current_password is not the admin password",
        ))
    }

    /// The key's name, if `key` is one that is not revoked.
    async fn check_key(&self, key: &str) -> Result<Option<Credential>, ApiError> {
        let hash = sha256_hex(key.as_bytes());
        let records = self.store.api_keys().await?;
        if constant_eq(&hash, &self.api_key_hash) {
            let revoked = records
                .iter()
                .any(|k| k.name == BOOTSTRAP && k.revoked.is_some());
            return Ok((!revoked).then(|| Credential::ApiKey(BOOTSTRAP.into())));
        }
        Ok(records
            .iter()
            .find(|k| {
                constant_eq(&hash, &k.hash) && k.revoked.is_none() && key_is_genuine(&self.key, k)
            })
            .map(|k| Credential::ApiKey(k.name.clone())))
    }

    /// Whether `password` is the admin password now: the one last set through the API, or
    /// the one `musterd init` made.
    async fn check_password(&self, password: &str) -> Result<bool, ApiError> {
        let stored = self.store.admin_password().await?;
        let hash = match credentials::password_record(&self.key, stored.as_deref()) {
            Ok(Some(rec)) => rec.hash,
            Ok(None) => self.admin_password_hash.clone(),
            Err(e) => {
                // Not falling back to the first password: a record broken on purpose must
                // not bring it back.
                tracing::error!(error = %format!("{e:#}"), "admin password");
                return Ok(false);
            }
        };
        let digest = sha256_hex(password.as_bytes());
        if let Ok(cache) = self.verified_password.lock() {
            if let Some((h, d)) = cache.as_ref() {
                if *h == hash {
                    return Ok(constant_eq(d, &digest));
                }
            }
        }
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let ok = PasswordHash::new(&hash)
            .map(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        if ok {
            if let Ok(mut cache) = self.verified_password.lock() {
                *cache = Some((hash, digest));
            }
        }
        Ok(ok)
    }
}

/// The credentials of an `Authorization` header of `scheme`, matched as HTTP says: the scheme's
/// name in any case, then a space.
fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (name, rest) = header.split_once(' ')?;
    name.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// Whether two strings are equal, in a time that depends only on their length.
pub fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn auth(per_minute: u32) -> anyhow::Result<(Auth, crate::platform::BootstrapSecrets)> {
        let dir = tempfile::tempdir()?;
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("muster.db"))?;
        let (platform, secrets, _) = Platform::init(&store, &[], None, 1_800_000_000).await?;
        let metrics = Arc::new(Metrics::default());
        Ok((
            Auth::new(&platform, Arc::new(store), per_minute, metrics),
            secrets,
        ))
    }

    fn basic(user: &str, password: &str) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b}")
    }

    #[tokio::test]
    async fn the_admin_password_and_the_api_key_pass_in_any_scheme_case() -> anyhow::Result<()> {
        let (auth, s) = auth(10).await?;
        let ip: IpAddr = "192.0.2.1".parse()?;
        let user = auth
            .check(Some(&basic(&s.admin_user, &s.admin_password)), ip, 0)
            .await;
        assert_eq!(user.ok(), Some(Credential::User(s.admin_user.clone())));
        // Again, from the remembered digest.
        assert!(auth
            .check(Some(&basic(&s.admin_user, &s.admin_password)), ip, 0)
            .await
            .is_ok());
        let key = auth
            .check(Some(&format!("apikey {}", s.api_key)), ip, 0)
            .await;
        assert_eq!(key.ok(), Some(Credential::ApiKey(BOOTSTRAP.into())));
        assert_eq!(auth.metrics.login_failures.get(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn named_keys_and_a_changed_password_hold_at_once_and_forged_records_open_nothing(
    ) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(crate::store::sqlite::SqliteStore::open(
            &dir.path().join("muster.db"),
        )?);
        let (platform, s, _) = Platform::init(store.as_ref(), &[], None, 1_800_000_000).await?;
        let auth = Auth::new(&platform, store.clone(), 100, Arc::new(Metrics::default()));
        let ip: IpAddr = "192.0.2.1".parse()?;
        let keys = credentials::Keys {
            store: store.as_ref(),
            key: platform.credential_key(),
            user: &platform.admin_user,
            bootstrap_hash: &platform.api_key_hash,
            platform_created: 1_800_000_000,
        };
        let req = muster_protocol::api::CreateApiKeyRequest {
            name: Some("CI".into()),
            ..Default::default()
        };
        let api = |e: ApiError| anyhow::anyhow!("{}: {}", e.code.as_str(), e.message);
        let made = keys
            .create(&req, "user:admin", "192.0.2.1", 5)
            .await
            .map_err(api)?;
        let ci = made.key.clone().unwrap_or_default();
        let with = |k: &str| format!("ApiKey {k}");
        assert_eq!(
            auth.check(Some(&with(&ci)), ip, 6).await.ok(),
            Some(Credential::ApiKey("ci".into()))
        );
        keys.revoke("ci", "user:admin", "192.0.2.1", 7)
            .await
            .map_err(api)?;
        assert!(auth.check(Some(&with(&ci)), ip, 8).await.is_err());
        // The bootstrap key too.
        keys.revoke("Bootstrap", "api-key:ci", "192.0.2.1", 9)
            .await
            .map_err(api)?;
        assert!(auth.check(Some(&with(&s.api_key)), ip, 10).await.is_err());
        let listed: Vec<(String, bool)> = keys
            .list()
            .await
            .map_err(api)?
            .into_iter()
            .map(|k| (k.id, k.revoked_date.is_some()))
            .collect();
        assert_eq!(listed, [("bootstrap".into(), true), ("ci".into(), true)]);

        // A key written into the store without the platform's secrets opens nothing.
        let forged_key = "an attacker's key";
        let forged = crate::store::ApiKeyRecord {
            name: "forged".into(),
            hash: sha256_hex(forged_key.as_bytes()),
            created: 1,
            created_by: "user:admin".into(),
            description: None,
            revoked: None,
            mac: "00".repeat(32),
        };
        let e = crate::store::event(1, "api_key_created", "x", None, None, None, None);
        store.insert_api_key(&forged, &e).await?;
        assert!(auth.check(Some(&with(forged_key)), ip, 11).await.is_err());

        // A changed password: the old one is refused, the new one passes.
        let new = "a brand new admin password";
        credentials::change_password(
            store.as_ref(),
            &platform.credential_key(),
            "admin",
            new,
            "user:admin",
            "192.0.2.1",
            12,
        )
        .await
        .map_err(api)?;
        assert!(auth
            .check(Some(&basic("admin", &s.admin_password)), ip, 13)
            .await
            .is_err());
        assert_eq!(
            auth.check(Some(&basic("admin", new)), ip, 14).await.ok(),
            Some(Credential::User("admin".into()))
        );
        // A password record not made by the platform: no password opens, not even the first.
        let forged = credentials::PasswordRecord {
            user: "admin".into(),
            hash: crate::platform::hash_password("the attacker's password")?,
            changed: 15,
            changed_by: "user:admin".into(),
            mac: "00".repeat(32),
        };
        store
            .set_admin_password(&serde_json::to_vec(&forged)?, &e)
            .await?;
        for pw in ["the attacker's password", new, s.admin_password.as_str()] {
            assert!(auth.check(Some(&basic("admin", pw)), ip, 16).await.is_err());
        }
        Ok(())
    }

    #[tokio::test]
    async fn wrong_credentials_are_refused_counted_and_held_against_their_source(
    ) -> anyhow::Result<()> {
        let (auth, s) = auth(4).await?;
        let ip: IpAddr = "192.0.2.1".parse()?;
        let code = |r: Result<Credential, ApiError>| r.err().map(|e| e.code);
        assert_eq!(
            code(auth.check(None, ip, 0).await),
            Some(ErrorCode::AuthRequired)
        );
        for wrong in [
            basic(&s.admin_user, "not-it"),
            basic("root", &s.admin_password),
            "ApiKey not-the-key".to_string(),
            "Bearer x".to_string(),
        ] {
            assert_eq!(
                code(auth.check(Some(&wrong), ip, 0).await),
                Some(ErrorCode::AuthInvalid),
                "{wrong}"
            );
        }
        assert_eq!(auth.metrics.login_failures.get(), 4);
        // Over budget: held off, even with the right password; another source is not.
        let right = basic(&s.admin_user, &s.admin_password);
        assert_eq!(
            code(auth.check(Some(&right), ip, 1).await),
            Some(ErrorCode::AuthRateLimited)
        );
        assert!(auth
            .check(Some(&right), "192.0.2.2".parse()?, 1)
            .await
            .is_ok());
        Ok(())
    }
}
