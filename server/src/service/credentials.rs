//! Admin credentials beyond the platform record: named API keys (made, listed, revoked) and a
//! changed admin password, each change audited with who made it.
//!
//! `musterd init` makes the admin password and one API key, named `bootstrap`, and keeps their
//! hashes in the platform record, whose public part is sealed with its secrets. What changes
//! later lives in records of its own ([`ApiKeyRecord`], [`PasswordRecord`]), each carrying a MAC
//! under the platform's [`CredentialKey`]: someone who can write to the store but does not hold
//! the platform's secrets cannot add a key or a password of their own. (They can still delete
//! or roll back records, as they can delete hosts: the store is trusted with availability.)
//!
//! [`crate::service::auth`] reads these records for every admin request, so a key revoked or a
//! password changed through one coordinator holds on every coordinator at once.

use crate::error::ApiError;
use crate::platform::{sha256_hex, CredentialKey};
use crate::store::{event, ApiKeyRecord, Store};
use muster_protocol::api::{ApiKeyInfo, CreateApiKeyRequest};
use muster_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

/// The name of the API key `musterd init` made.
pub const BOOTSTRAP: &str = "bootstrap";

/// The longest description a key may carry, in characters (as a token's).
pub const MAX_DESCRIPTION: usize = 200;

/// The longest API key name, in characters.
pub const MAX_NAME: usize = 64;

/// The shortest and longest admin password, in characters.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 12..=256;

/// What a changed admin password leaves in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordRecord {
    pub user: String,
    /// argon2id, PHC string form.
    pub hash: String,
    pub changed: u64,
    /// Who changed it (an audit actor).
    pub changed_by: String,
    /// [`CredentialKey::mac`] of [`password_mac_parts`].
    pub mac: String,
}

/// What an API key record's MAC covers: its name, hash and time of making.
pub fn key_mac_parts(k: &ApiKeyRecord) -> [String; 4] {
    [
        "api-key".into(),
        k.name.clone(),
        k.hash.clone(),
        k.created.to_string(),
    ]
}

/// What a password record's MAC covers.
pub fn password_mac_parts(p: &PasswordRecord) -> [String; 4] {
    [
        "admin-password".into(),
        p.user.clone(),
        p.hash.clone(),
        p.changed.to_string(),
    ]
}

fn refs(parts: &[String; 4]) -> [&str; 4] {
    [&parts[0], &parts[1], &parts[2], &parts[3]]
}

/// Whether a key record was made by a coordinator of this platform.
pub fn key_is_genuine(key: &CredentialKey, k: &ApiKeyRecord) -> bool {
    key.verify(&refs(&key_mac_parts(k)), &k.mac)
}

/// The password record the store holds, checked: `Ok(None)` when the password was never
/// changed, an error when the record there was not made by this platform.
pub fn password_record(
    key: &CredentialKey,
    bytes: Option<&[u8]>,
) -> anyhow::Result<Option<PasswordRecord>> {
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let rec: PasswordRecord = serde_json::from_slice(bytes)
        .map_err(|e| anyhow::anyhow!("the admin password record does not read: {e}"))?;
    anyhow::ensure!(
        key.verify(&refs(&password_mac_parts(&rec)), &rec.mac),
        "the admin password record in the store was not written by this platform's \
         coordinators; set the password again with `PATCH /api/v1/user`"
    );
    Ok(Some(rec))
}

/// An API key name, checked and in lower case.
pub fn check_name(name: &str) -> Result<String, ApiError> {
    let lower = name.to_ascii_lowercase();
    let ok = (1..=MAX_NAME).contains(&lower.len())
        && lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok {
        return Err(ApiError::new(
            ErrorCode::ApiKeyInvalid,
            format!("an API key name is 1 to {MAX_NAME} of a-z, 0-9, '.', '_' and '-'"),
        ));
    }
    Ok(lower)
}

/// A new admin password, checked.
pub fn check_password(p: &str) -> Result<(), ApiError> {
    let n = p.chars().count();
    if !PASSWORD_CHARS.contains(&n) || p.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::RequestInvalid,
            format!(
                "security.password must be {} to {} characters, none of them control characters",
                PASSWORD_CHARS.start(),
                PASSWORD_CHARS.end()
            ),
        ));
    }
    Ok(())
}

/// RFC 3339 of unix time `t`.
pub fn rfc3339(t: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t as i64)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// How the API shows a key record.
pub fn info(k: &ApiKeyRecord, user: &str) -> ApiKeyInfo {
    ApiKeyInfo {
        id: k.name.clone(),
        key: None,
        description: k.description.clone(),
        creation_date: rfc3339(k.created),
        user_id: user.to_string(),
        created_by: Some(k.created_by.clone()),
        revoked_date: k.revoked.map(rfc3339),
    }
}

/// The platform's credentials as the key service needs them.
pub struct Keys<'a> {
    pub store: &'a dyn Store,
    pub key: CredentialKey,
    /// The admin user the keys act for.
    pub user: &'a str,
    /// The `bootstrap` key's hash and the platform's creation time.
    pub bootstrap_hash: &'a str,
    pub platform_created: u64,
}

impl Keys<'_> {
    /// Makes a key; the answer holds it, this once.
    pub async fn create(
        &self,
        req: &CreateApiKeyRequest,
        actor: &str,
        source: &str,
        now: u64,
    ) -> Result<ApiKeyInfo, ApiError> {
        if let Some(d) = &req.description {
            if d.chars().count() > MAX_DESCRIPTION || d.chars().any(char::is_control) {
                return Err(ApiError::new(
                    ErrorCode::ApiKeyInvalid,
                    format!(
                        "description must be at most {} characters, none of them control characters",
                        MAX_DESCRIPTION
                    ),
                ));
            }
        }
        let name = match &req.name {
            Some(n) => check_name(n)?,
            None => format!("key-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        };
        if name == BOOTSTRAP {
            return Err(taken(&name));
        }
        let secret = {
            let mut b = zeroize::Zeroizing::new([0u8; 32]);
            rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
            use base64::Engine;
            zeroize::Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[..]))
        };
        let mut rec = ApiKeyRecord {
            name: name.clone(),
            hash: sha256_hex(secret.as_bytes()),
            created: now,
            created_by: actor.to_string(),
            description: req.description.clone(),
            revoked: None,
            mac: String::new(),
        };
        rec.mac = self.key.mac(&refs(&key_mac_parts(&rec)));
        let e = about(now, "api_key_created", actor, source, &name);
        if !self.store.insert_api_key(&rec, &e).await? {
            return Err(taken(&name));
        }
        tracing::info!(key = %name, %actor, "API key created");
        let mut shown = info(&rec, self.user);
        shown.key = Some(secret.to_string());
        Ok(shown)
    }

    /// Every key, the `bootstrap` one first, revoked ones too.
    pub async fn list(&self) -> Result<Vec<ApiKeyInfo>, ApiError> {
        let records = self.store.api_keys().await?;
        let mut all = Vec::with_capacity(records.len() + 1);
        if !records.iter().any(|k| k.name == BOOTSTRAP) {
            all.push(info(&self.bootstrap(), self.user));
        }
        all.extend(
            records
                .iter()
                .filter(|k| k.name == BOOTSTRAP || key_is_genuine(&self.key, k))
                .map(|k| info(k, self.user)),
        );
        Ok(all)
    }

    /// Revokes key `name` (any case): it opens nothing from now on, on every coordinator.
    pub async fn revoke(
        &self,
        name: &str,
        actor: &str,
        source: &str,
        now: u64,
    ) -> Result<(), ApiError> {
        let name = check_name(name).map_err(|_| not_found(name))?;
        let e = about(now, "api_key_revoked", actor, source, &name);
        let done = if name == BOOTSTRAP
            && !self
                .store
                .api_keys()
                .await?
                .iter()
                .any(|k| k.name == BOOTSTRAP)
        {
            // The bootstrap key lives in the platform record; its revocation is a record of
            // its own under its name.
            let mut rec = self.bootstrap();
            rec.revoked = Some(now);
            self.store.insert_api_key(&rec, &e).await?
        } else {
            self.store.revoke_api_key(&name, now, &e).await?
        };
        if !done {
            return Err(not_found(&name));
        }
        tracing::info!(key = %name, %actor, "API key revoked");
        Ok(())
    }

    fn bootstrap(&self) -> ApiKeyRecord {
        let mut rec = ApiKeyRecord {
            name: BOOTSTRAP.into(),
            hash: self.bootstrap_hash.to_string(),
            created: self.platform_created,
            created_by: crate::store::actor::LOCAL.into(),
            description: Some("made by musterd init".into()),
            revoked: None,
            mac: String::new(),
        };
        rec.mac = self.key.mac(&refs(&key_mac_parts(&rec)));
        rec
    }
}

/// Changes the admin password of `user`: from now on, on every coordinator, only the new one
/// signs in. Audited as `password_changed`.
pub async fn change_password(
    store: &dyn Store,
    key: &CredentialKey,
    user: &str,
    new: &str,
    actor: &str,
    source: &str,
    now: u64,
) -> Result<PasswordRecord, ApiError> {
    check_password(new)?;
    let hash = crate::platform::hash_password(new)?;
    let mut rec = PasswordRecord {
        user: user.to_string(),
        hash,
        changed: now,
        changed_by: actor.to_string(),
        mac: String::new(),
    };
    rec.mac = key.mac(&refs(&password_mac_parts(&rec)));
    let bytes = serde_json::to_vec(&rec).map_err(anyhow::Error::from)?;
    let mut e = event(
        now,
        "password_changed",
        actor,
        None,
        None,
        Some(source),
        None,
    );
    e.target = Some(format!("user:{user}"));
    store.set_admin_password(&bytes, &e).await?;
    tracing::info!(%user, %actor, "admin password changed");
    Ok(rec)
}

fn about(
    now: u64,
    what: &str,
    actor: &str,
    source: &str,
    name: &str,
) -> muster_protocol::api::AuditEvent {
    let mut e = event(now, what, actor, None, None, Some(source), None);
    e.target = Some(format!("api-key:{name}"));
    e
}

fn taken(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ApiKeyNameTaken,
        format!(
            "an API key named {name:?} exists already (names of revoked keys are not given again)"
        ),
    )
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ApiKeyNotFound,
        format!("no API key named {name:?} that is not revoked"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_kept_in_lower_case() {
        assert_eq!(
            check_name("CI-Pipeline.2").ok().as_deref(),
            Some("ci-pipeline.2")
        );
        for bad in ["", "a b", "ключ", "a/b", &"x".repeat(65), "<script>"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_long_enough_and_printable() {
        assert!(check_password("correct horse battery").is_ok());
        for bad in ["short", "twelve\nchars", &"x".repeat(257)] {
            assert!(check_password(bad).is_err(), "{bad:?}");
        }
    }
}
