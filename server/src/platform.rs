//! The platform: its CAs, token signing key, PSK key and admin credentials, made once by
//! `musterd init` and loaded by every other command.

use crate::pki::Ca;
use crate::seal::{unwrap_data_key, DataKey, SEALED_CONTEXT, WRAP_CONTEXT};
use crate::store::{Store, TokenRecord};
use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use muster_protocol::node::{Recovery, StoreSettings, StoreTls};
use muster_protocol::token::{Claims, TokenKind, ISSUER};
use muster_protocol::Role;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The platform record as the store keeps it: public parts in the clear, secrets sealed (see
/// [`crate::seal`]).
#[derive(Serialize, Deserialize)]
struct PlatformRecord {
    version: u32,
    #[serde(flatten)]
    public: Public,
    /// [`Secrets`] as JSON, sealed with the data key.
    sealed: String,
    /// The data key, sealed with the key derived from the emergency token.
    wrapped_key: String,
    /// base64 salt of that derivation.
    kdf_salt: String,
}

/// What is public.
#[derive(Serialize, Deserialize)]
struct Public {
    created: u64,
    transport_ca_cert: String,
    http_ca_cert: String,
    /// base64 raw Ed25519 public key.
    verify_key: String,
    admin_user: String,
    admin_password_hash: String,
    /// hex SHA-256 of the API key.
    api_key_hash: String,
    emergency_token_id: String,
}

/// What is sealed.
#[derive(Serialize, Deserialize)]
struct Secrets {
    transport_ca_key: String,
    http_ca_key: String,
    /// base64 PKCS#8 Ed25519.
    signing_key: String,
    /// base64 key for the per-node PSKs.
    psk_key: String,
    /// TLS material for etcd, handed (still sealed) to a coordinator that recovers the platform.
    #[serde(default)]
    store_tls: Option<StoreTls>,
    /// hex SHA-256 of the [`Public`] part as `init` wrote it: sealed with the secrets, so a
    /// public part changed in the store (an admin password hash, an API key hash, a token key
    /// of someone else's) does not load. Records made before it have none; for them the token
    /// key and the CA certificates are still checked against the sealed keys.
    #[serde(default)]
    public_sha256: Option<String>,
    /// PKCS#8 PEM of the key every coordinator of the platform serves TLS with, so the pin of
    /// an install line holds at any coordinator and after a restore. Records made before it
    /// have none; their coordinators serve with the key in their data folder.
    #[serde(default)]
    serving_key: Option<String>,
}

/// The digest of a public part that its secrets hold.
fn public_digest(p: &Public) -> anyhow::Result<String> {
    Ok(sha256_hex(&serde_json::to_vec(p)?))
}

/// Whether a record's public part is the one sealed with its secrets: its digest when the
/// secrets hold one, and in any case the token verify key that of the sealed signing key (the
/// CA certificates are checked against their keys by [`Ca::load`]).
fn check_public(p: &Public, s: &Secrets) -> anyhow::Result<()> {
    let changed = "the platform record's public part (admin credentials, token key, CA \
                   certificates) is not the one sealed with its secrets: the store was changed \
                   outside musterd; restore it from a backup";
    if let Some(d) = &s.public_sha256 {
        anyhow::ensure!(*d == public_digest(p)?, changed);
    }
    let pkcs8 = Zeroizing::new(
        B64.decode(&s.signing_key)
            .context("decoding the signing key")?,
    );
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| anyhow::anyhow!("loading the signing key"))?;
    let verify = B64
        .decode(&p.verify_key)
        .context("decoding the verify key")?;
    anyhow::ensure!(
        ring::signature::KeyPair::public_key(&kp).as_ref() == verify.as_slice(),
        changed
    );
    Ok(())
}

const RECORD_VERSION: u32 = 2;

/// The platform as a director sees it: public keys and certificates, and the secrets still
/// sealed. Nothing here signs anything.
pub struct PublicPlatform {
    pub verify_key: Vec<u8>,
    pub http_ca_pem: String,
    pub transport_ca_pem: String,
    pub emergency_token_id: String,
    wrapped_key: String,
    kdf_salt: String,
    sealed: String,
}

impl PublicPlatform {
    pub async fn load(store: &dyn Store) -> anyhow::Result<PublicPlatform> {
        let rec = Platform::record(store).await?;
        Ok(PublicPlatform {
            verify_key: B64
                .decode(&rec.public.verify_key)
                .context("decoding the verify key")?,
            http_ca_pem: rec.public.http_ca_cert,
            transport_ca_pem: rec.public.transport_ca_cert,
            emergency_token_id: rec.public.emergency_token_id,
            wrapped_key: rec.wrapped_key,
            kdf_salt: rec.kdf_salt,
            sealed: rec.sealed,
        })
    }

    /// What a recovering coordinator gets: useless without the emergency token.
    pub fn recovery(&self, store: StoreSettings) -> Recovery {
        Recovery {
            store,
            wrapped_key: self.wrapped_key.clone(),
            kdf_salt: self.kdf_salt.clone(),
            sealed: self.sealed.clone(),
            http_ca_pem: self.http_ca_pem.clone(),
            transport_ca_pem: self.transport_ca_pem.clone(),
        }
    }
}

/// A loaded platform, ready to sign.
pub struct Platform {
    pub transport_ca: Ca,
    pub http_ca: Ca,
    signing_key: Zeroizing<Vec<u8>>,
    pub verify_key: Vec<u8>,
    psk_key: Zeroizing<Vec<u8>>,
    pub admin_user: String,
    pub admin_password_hash: String,
    pub api_key_hash: String,
    pub emergency_token_id: String,
    /// When `musterd init` made it (unix seconds).
    pub created: u64,
    /// The platform's TLS serving key, shared by its coordinators (None for a platform made
    /// before it was kept there).
    pub serving_key: Option<crate::pki::ServingKey>,
}

/// What `init` prints once and writes to `bootstrap-secrets.json`.
#[derive(Serialize, Deserialize)]
pub struct BootstrapSecrets {
    pub admin_user: String,
    pub admin_password: String,
    pub emergency_token: String,
    pub roles_token: String,
    pub ca_fingerprint: String,
    pub api_key: String,
}

fn random_secret(bytes: usize) -> Zeroizing<String> {
    let mut b = Zeroizing::new(vec![0u8; bytes]);
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[..]))
}

pub fn sha256_hex(s: &[u8]) -> String {
    hex::encode(Sha256::digest(s))
}

/// An argon2id hash of an admin password, in the PHC string form.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the admin password: {e}"))?
        .to_string())
}

/// The key that signs credential records kept outside the platform record (API keys, a
/// changed admin password): derived from the sealed PSK key, so only a coordinator that
/// unsealed the platform makes or accepts one.
#[derive(Clone)]
pub struct CredentialKey(ring::hmac::Key);

impl CredentialKey {
    /// Hex HMAC-SHA256 over `parts`, each preceded by its length.
    pub fn mac(&self, parts: &[&str]) -> String {
        hex::encode(ring::hmac::sign(&self.0, &Self::message(parts)).as_ref())
    }

    /// Whether `mac` is [`CredentialKey::mac`] of `parts`, compared in constant time.
    pub fn verify(&self, parts: &[&str], mac: &str) -> bool {
        hex::decode(mac)
            .map(|given| ring::hmac::verify(&self.0, &Self::message(parts), &given).is_ok())
            .unwrap_or(false)
    }

    fn message(parts: &[&str]) -> Vec<u8> {
        let mut m = Vec::new();
        for p in parts {
            m.extend_from_slice(&(p.len() as u64).to_be_bytes());
            m.extend_from_slice(p.as_bytes());
        }
        m
    }
}

impl Platform {
    /// Creates a platform in `store`; refuses if it already holds one.
    pub async fn init(
        store: &dyn Store,
        advertise: &[String],
        store_tls: Option<StoreTls>,
        now: u64,
    ) -> anyhow::Result<(Platform, BootstrapSecrets, DataKey)> {
        if store.platform().await?.is_some() {
            bail!("this data folder already holds a platform; refusing to create another over it");
        }
        let t = time::OffsetDateTime::from_unix_timestamp(now as i64).context("clock")?;
        let transport_ca = Ca::generate("Muster transport CA", t)?;
        let http_ca = Ca::generate("Muster HTTP CA", t)?;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("generating the signing key"))?;
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("loading the signing key"))?;
        let verify_key = ring::signature::KeyPair::public_key(&kp).as_ref().to_vec();
        let psk_key = random_secret(32);
        let admin_password = random_secret(24);
        let api_key = random_secret(32);
        let admin_password_hash = hash_password(&admin_password)?;
        let emergency_token_id = uuid::Uuid::new_v4().to_string();
        let public = Public {
            created: now,
            transport_ca_cert: transport_ca.cert_pem.clone(),
            http_ca_cert: http_ca.cert_pem.clone(),
            verify_key: B64.encode(&verify_key),
            admin_user: "admin".into(),
            admin_password_hash,
            api_key_hash: sha256_hex(api_key.as_bytes()),
            emergency_token_id: emergency_token_id.clone(),
        };
        let secrets = Secrets {
            transport_ca_key: transport_ca.key_pem(),
            http_ca_key: http_ca.key_pem(),
            signing_key: B64.encode(pkcs8.as_ref()),
            psk_key: psk_key.to_string(),
            store_tls,
            public_sha256: Some(public_digest(&public)?),
            serving_key: Some(
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem(),
            ),
        };
        let platform = Platform::from_parts(&public, &secrets)?;
        let (emergency_token, emergency) = platform.make_token(
            Some(emergency_token_id),
            TokenKind::Emergency,
            Role::EMERGENCY.to_vec(),
            None,
            None,
            vec![],
            advertise,
            now,
        )?;
        let (roles_token, initial) = platform.make_token(
            None,
            TokenKind::Initial,
            vec![],
            None,
            None,
            vec![],
            advertise,
            now,
        )?;
        // Seal: the secrets under a new data key, the data key under the emergency token.
        let key = DataKey::generate()?;
        let mut salt = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut salt[..]);
        let wrapping = DataKey::from_emergency_token(&emergency_token, &salt)?;
        let secrets_json = Zeroizing::new(serde_json::to_vec(&secrets)?);
        let rec = PlatformRecord {
            version: RECORD_VERSION,
            public,
            sealed: key.seal(&secrets_json, SEALED_CONTEXT)?,
            wrapped_key: wrapping.seal(key.encode().as_bytes(), WRAP_CONTEXT)?,
            kdf_salt: B64.encode(salt),
        };
        let bytes = Zeroizing::new(serde_json::to_vec(&rec)?);
        store.insert_token(&emergency, None).await?;
        store.insert_token(&initial, None).await?;
        // Refused: someone else's platform, or ours (a store that retried a write whose answer
        // was lost, as the etcd client does). The record holds fresh random salt and keys, so
        // equal bytes can only be ours.
        if !store.init_platform(&bytes).await?
            && store.platform().await?.as_deref() != Some(&bytes[..])
        {
            bail!("another musterd created a platform in this store at the same time");
        }
        let bootstrap = BootstrapSecrets {
            admin_user: rec.public.admin_user.clone(),
            admin_password: admin_password.to_string(),
            emergency_token,
            roles_token,
            ca_fingerprint: platform.http_ca.pin(),
            api_key: api_key.to_string(),
        };
        Ok((platform, bootstrap, key))
    }

    async fn record(store: &dyn Store) -> anyhow::Result<PlatformRecord> {
        let bytes = store
            .platform()
            .await?
            .context("no platform in this store: run `musterd init` first")?;
        let rec: PlatformRecord =
            serde_json::from_slice(&bytes).context("reading the platform record")?;
        anyhow::ensure!(
            rec.version == RECORD_VERSION,
            "the platform record is version {}; this musterd reads version {RECORD_VERSION}",
            rec.version
        );
        Ok(rec)
    }

    /// Loads the platform, unsealing its secrets with this coordinator's data key.
    pub async fn load(store: &dyn Store, key: &DataKey) -> anyhow::Result<Platform> {
        let rec = Platform::record(store).await?;
        let json = key.open(&rec.sealed, SEALED_CONTEXT).map_err(|_| {
            anyhow::anyhow!(
                "this data folder's unseal key does not open this store's platform; \
                 run `musterd unseal` with the emergency token"
            )
        })?;
        let secrets: Secrets =
            serde_json::from_slice(&json).context("reading the unsealed secrets")?;
        check_public(&rec.public, &secrets)?;
        Platform::from_parts(&rec.public, &secrets)
    }

    /// The data key, unwrapped with the emergency token.
    pub async fn unwrap_key(store: &dyn Store, emergency_token: &str) -> anyhow::Result<DataKey> {
        let rec = Platform::record(store).await?;
        if let Ok(claims) = muster_protocol::token::inspect(emergency_token) {
            anyhow::ensure!(
                claims.sub == rec.public.emergency_token_id,
                "that is not this platform's emergency token (its id is {}, the platform's {})",
                claims.sub,
                rec.public.emergency_token_id
            );
        }
        Ok(unwrap_data_key(
            emergency_token,
            &rec.kdf_salt,
            &rec.wrapped_key,
            &rec.sealed,
        )?)
    }

    fn from_parts(p: &Public, s: &Secrets) -> anyhow::Result<Platform> {
        Ok(Platform {
            transport_ca: Ca::load(&p.transport_ca_cert, &s.transport_ca_key)
                .context("loading the transport CA")?,
            http_ca: Ca::load(&p.http_ca_cert, &s.http_ca_key).context("loading the HTTP CA")?,
            signing_key: Zeroizing::new(
                B64.decode(&s.signing_key)
                    .context("decoding the signing key")?,
            ),
            verify_key: B64
                .decode(&p.verify_key)
                .context("decoding the verify key")?,
            psk_key: Zeroizing::new(s.psk_key.as_bytes().to_vec()),
            admin_user: p.admin_user.clone(),
            admin_password_hash: p.admin_password_hash.clone(),
            api_key_hash: p.api_key_hash.clone(),
            emergency_token_id: p.emergency_token_id.clone(),
            created: p.created,
            serving_key: s
                .serving_key
                .as_deref()
                .map(crate::pki::ServingKey::from_pem)
                .transpose()
                .context("loading the platform's serving key")?,
        })
    }

    /// The pins tokens carry: the HTTP CA's public key (it signs the coordinator's certificate).
    pub fn pins(&self) -> Vec<String> {
        vec![self.http_ca.pin()]
    }

    /// Signs a new token and returns it with its record (id and hash only).
    #[allow(clippy::too_many_arguments)]
    pub fn make_token(
        &self,
        id: Option<String>,
        kind: TokenKind,
        mut roles: Vec<Role>,
        validity: Option<u64>,
        max_uses: Option<u32>,
        allowed_sources: Vec<String>,
        advertise: &[String],
        now: u64,
    ) -> anyhow::Result<(String, TokenRecord)> {
        muster_protocol::role::normalize(&mut roles);
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let exp = (kind == TokenKind::Ephemeral).then(|| {
            now.saturating_add(validity.unwrap_or(muster_protocol::token::DEFAULT_EPHEMERAL_SECS))
        });
        let claims = Claims {
            sub: id.clone(),
            roles: roles.clone(),
            iss: ISSUER.into(),
            iat: now,
            nbf: now,
            exp,
            persistent: kind != TokenKind::Ephemeral,
            kind,
            coordinators: advertise.to_vec(),
            pins: self.pins(),
            max_uses,
        };
        let token = muster_protocol::token::sign(&claims, &self.signing_key)
            .context("signing the token")?;
        let rec = TokenRecord {
            id,
            hash: sha256_hex(token.as_bytes()),
            kind,
            roles,
            created: now,
            expires: exp,
            max_uses,
            uses: 0,
            allowed_sources,
            revoked: false,
            description: None,
        };
        Ok((token, rec))
    }

    fn psk_hmac(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.psk_key)
    }

    /// The key of credential records ([`CredentialKey`]). Derived under a label that is no
    /// node id (node ids are UUIDs), so it is no host's PSK.
    pub fn credential_key(&self) -> CredentialKey {
        let derived = ring::hmac::sign(&self.psk_hmac(), b"muster credential records: v1");
        CredentialKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            derived.as_ref(),
        ))
    }

    /// The PSK of a node: an HMAC of its id, so a retried join gets the same one back without
    /// the server storing it.
    pub fn psk(&self, node_id: &str) -> String {
        let tag = ring::hmac::sign(&self.psk_hmac(), node_id.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Checks a PSK in constant time.
    pub fn check_psk(&self, node_id: &str, psk: &str) -> bool {
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(psk) {
            Ok(tag) => ring::hmac::verify(&self.psk_hmac(), node_id.as_bytes(), &tag).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    /// The platform record, read and written as the store keeps it.
    async fn record(store: &SqliteStore) -> anyhow::Result<serde_json::Value> {
        let bytes = store.platform().await?.context("no platform")?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    fn overwrite(db: &std::path::Path, rec: &serde_json::Value) -> anyhow::Result<()> {
        let c = rusqlite::Connection::open(db)?;
        c.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'platform'",
            rusqlite::params![serde_json::to_vec(rec)?],
        )?;
        Ok(())
    }

    #[tokio::test]
    async fn a_public_part_changed_in_the_store_does_not_load() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("muster.db");
        let store = SqliteStore::open(&db)?;
        let (_, _, key) = Platform::init(&store, &[], None, 1_700_000_000).await?;
        let untouched = record(&store).await?;
        Platform::load(&store, &key).await?;

        // Each public field an attacker with write access to the store would want, swapped:
        // the admin's credentials, the token key, the emergency token's id.
        let other = SqliteStore::open(&dir.path().join("other.db"))?;
        Platform::init(&other, &[], None, 1_700_000_000).await?;
        let other = record(&other).await?;
        for (field, value) in [
            ("http_ca_cert", other["http_ca_cert"].clone()),
            (
                "api_key_hash",
                serde_json::json!(sha256_hex(b"an attacker's key")),
            ),
            (
                "admin_password_hash",
                serde_json::json!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"),
            ),
            ("verify_key", serde_json::json!(B64.encode([7u8; 32]))),
            (
                "emergency_token_id",
                serde_json::json!("00000000-0000-0000-0000-000000000000"),
            ),
        ] {
            let mut rec = untouched.clone();
            rec[field] = value;
            overwrite(&db, &rec)?;
            let err = match Platform::load(&store, &key).await {
                Ok(_) => anyhow::bail!("a platform with its {field} changed loaded"),
                Err(e) => format!("{e:#}"),
            };
            anyhow::ensure!(
                err.contains("not the one sealed with its secrets"),
                "{field}: {err}"
            );
        }
        overwrite(&db, &untouched)?;
        Platform::load(&store, &key).await?;
        Ok(())
    }

    #[test]
    fn a_record_without_a_digest_still_checks_its_token_key() -> anyhow::Result<()> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("keygen"))?;
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("load"))?;
        let mut public = Public {
            created: 1,
            transport_ca_cert: String::new(),
            http_ca_cert: String::new(),
            verify_key: B64.encode(ring::signature::KeyPair::public_key(&kp).as_ref()),
            admin_user: "admin".into(),
            admin_password_hash: String::new(),
            api_key_hash: String::new(),
            emergency_token_id: String::new(),
        };
        let secrets = Secrets {
            transport_ca_key: String::new(),
            http_ca_key: String::new(),
            signing_key: B64.encode(pkcs8.as_ref()),
            psk_key: String::new(),
            store_tls: None,
            public_sha256: None,
            serving_key: None,
        };
        check_public(&public, &secrets)?;
        public.verify_key = B64.encode([7u8; 32]);
        anyhow::ensure!(check_public(&public, &secrets).is_err());
        Ok(())
    }
}
