//! Admin credentials: HTTP Basic with the admin user and password, or `Authorization: ApiKey
//! KEY`. Failures are counted and held against their source address.

use crate::error::ApiError;
use crate::limit::FailureLimiter;
use crate::metrics::Metrics;
use crate::platform::{sha256_hex, Platform};
use base64::Engine;
use muster_protocol::ErrorCode;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Who an admin request authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The admin user, by name, with its password.
    User(String),
    /// The platform's API key.
    ApiKey,
}

impl Credential {
    /// How audit events name it ([`AuditEvent::actor`](muster_protocol::api::AuditEvent)).
    pub fn actor(&self) -> String {
        match self {
            Credential::User(name) => format!("user:{name}"),
            Credential::ApiKey => "api-key".to_string(),
        }
    }
}

/// Checks admin credentials against the platform's.
pub struct Auth {
    admin_user: String,
    admin_password_hash: String,
    api_key_hash: String,
    failures: FailureLimiter,
    metrics: Arc<Metrics>,
    /// SHA-256 of the admin password once it has verified, so argon2 runs once, not per call.
    verified_password: Mutex<Option<String>>,
}

impl Auth {
    pub fn new(platform: &Platform, failures_per_minute: u32, metrics: Arc<Metrics>) -> Auth {
        Auth {
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
    pub fn check(
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
            constant_eq(&sha256_hex(key.trim().as_bytes()), &self.api_key_hash)
                .then_some(Credential::ApiKey)
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

    fn check_password(&self, password: &str) -> bool {
        let digest = sha256_hex(password.as_bytes());
        if let Ok(cache) = self.verified_password.lock() {
            if let Some(c) = cache.as_deref() {
                return constant_eq(c, &digest);
            }
        }
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let ok = PasswordHash::new(&self.admin_password_hash)
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
        Ok((Auth::new(&platform, per_minute, metrics), secrets))
    }

    fn basic(user: &str, password: &str) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b}")
    }

    #[tokio::test]
    async fn the_admin_password_and_the_api_key_pass_in_any_scheme_case() -> anyhow::Result<()> {
        let (auth, s) = auth(10).await?;
        let ip: IpAddr = "192.0.2.1".parse()?;
        let user = auth.check(Some(&basic(&s.admin_user, &s.admin_password)), ip, 0);
        assert_eq!(user.ok(), Some(Credential::User(s.admin_user.clone())));
        // Again, from the remembered digest.
        assert!(auth
            .check(Some(&basic(&s.admin_user, &s.admin_password)), ip, 0)
            .is_ok());
        let key = auth.check(Some(&format!("apikey {}", s.api_key)), ip, 0);
        assert_eq!(key.ok(), Some(Credential::ApiKey));
        assert_eq!(auth.metrics.login_failures.get(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn wrong_credentials_are_refused_counted_and_held_against_their_source(
    ) -> anyhow::Result<()> {
        let (auth, s) = auth(4).await?;
        let ip: IpAddr = "192.0.2.1".parse()?;
        let code = |r: Result<Credential, ApiError>| r.err().map(|e| e.code);
        assert_eq!(code(auth.check(None, ip, 0)), Some(ErrorCode::AuthRequired));
        for wrong in [
            basic(&s.admin_user, "not-it"),
            basic("root", &s.admin_password),
            "ApiKey not-the-key".to_string(),
            "Bearer x".to_string(),
        ] {
            assert_eq!(
                code(auth.check(Some(&wrong), ip, 0)),
                Some(ErrorCode::AuthInvalid),
                "{wrong}"
            );
        }
        assert_eq!(auth.metrics.login_failures.get(), 4);
        // Over budget: held off, even with the right password; another source is not.
        let right = basic(&s.admin_user, &s.admin_password);
        assert_eq!(
            code(auth.check(Some(&right), ip, 1)),
            Some(ErrorCode::AuthRateLimited)
        );
        assert!(auth.check(Some(&right), "192.0.2.2".parse()?, 1).is_ok());
        Ok(())
    }
}
