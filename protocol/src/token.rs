//! Roles tokens: signed JWTs (EdDSA, Ed25519) that let a host join.
//!
//! As in ECE, `sub` is the token id and `roles` its roles. Muster adds the coordinator addresses
//! and the CA public-key pins, so a new host needs nothing but the token to make a pinned first
//! contact. The algorithm is pinned: a token with `alg: none` or any other algorithm is refused
//! before its signature is looked at.
//!
//! Two checks live here. [`inspect`] reads a token without its key (the installer uses it
//! before any network call: format, expiry, roles); [`verify`] checks the signature too (the
//! server). Both take `now` (seconds since the epoch) from the caller.

use crate::error::ErrorCode;
use crate::role::Role;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The only signing algorithm Muster issues or accepts.
pub const ALGORITHM: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::EdDSA;
/// The `alg` header value of [`ALGORITHM`].
pub const ALGORITHM_NAME: &str = "EdDSA";
/// The issuer every Muster token names.
pub const ISSUER: &str = "muster";
/// Clock difference tolerated between a host and a coordinator, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// Lifetime of an ephemeral token when the request gives none (ECE: one hour).
pub const DEFAULT_EPHEMERAL_SECS: u64 = 3600;
/// Largest token accepted, in bytes: a real one is well under 2 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The four kinds of roles token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Expires after `validity_in_seconds` (default one hour).
    Ephemeral,
    /// Valid until deleted.
    Persistent,
    /// Made once by `musterd init`; recovers the platform; cannot be deleted.
    Emergency,
    /// Made once by `musterd init`; no roles.
    Initial,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Ephemeral => "ephemeral",
            TokenKind::Persistent => "persistent",
            TokenKind::Emergency => "emergency",
            TokenKind::Initial => "initial",
        }
    }
}

/// The claims of a roles token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The token id.
    pub sub: String,
    /// Roles a host may ask for with this token.
    pub roles: Vec<Role>,
    pub iss: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not valid before, seconds since the epoch.
    pub nbf: u64,
    /// Expiry, seconds since the epoch; none for persistent, initial and emergency tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    pub persistent: bool,
    pub kind: TokenKind,
    /// Coordinator addresses (`host:port`) a host may enroll through.
    pub coordinators: Vec<String>,
    /// `sha256:` pins of the CA public keys a coordinator's certificate must chain to.
    pub pins: Vec<String>,
    /// How many hosts may enroll with this token; none for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
}

/// Why a token is refused. Each variant has its own stable API code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three base64url parts, or a part that is not the JSON it should be.
    #[error("roles token is malformed: {0}")]
    Malformed(String),
    /// The header names another algorithm than EdDSA (`none` included).
    #[error("roles token uses algorithm {0:?}; only EdDSA is accepted")]
    Algorithm(String),
    /// The signature does not verify with this platform's key.
    #[error(
        "roles token signature does not verify: it was not issued by this platform or was edited"
    )]
    Signature,
    /// `iss` is not Muster's.
    #[error("roles token issuer is {0:?}, not a Muster platform")]
    Issuer(String),
    /// `exp` is in the past (beyond the leeway).
    #[error("roles token expired {ago}s ago (at {exp}, unix time)")]
    Expired { exp: u64, ago: u64 },
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("roles token is not valid for another {wait}s; if it was just made, check this host's clock")]
    NotYetValid { wait: u64 },
    /// A requested role is not among the token's roles.
    #[error("roles token does not grant role(s) {}; it grants [{}]", crate::role::join(.missing), crate::role::join(.granted))]
    RoleNotGranted {
        missing: Vec<Role>,
        granted: Vec<Role>,
    },
    /// The emergency token asked for the allocator role.
    #[error("the emergency token never enrolls an allocator; use an allocator roles token")]
    EmergencyAllocator,
}

impl TokenError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Malformed(_) => ErrorCode::TokenMalformed,
            TokenError::Algorithm(_) => ErrorCode::TokenAlgorithm,
            TokenError::Signature => ErrorCode::TokenSignature,
            TokenError::Issuer(_) => ErrorCode::TokenIssuer,
            TokenError::Expired { .. } => ErrorCode::TokenExpired,
            TokenError::NotYetValid { .. } => ErrorCode::TokenNotYetValid,
            TokenError::RoleNotGranted { .. } => ErrorCode::TokenRole,
            TokenError::EmergencyAllocator => ErrorCode::TokenEmergencyAllocator,
        }
    }
}

/// A token string: its `Debug` and `Display` never show it.
///
/// Its bytes are overwritten when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is sent or hashed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Overwrite the bytes before the allocation is freed: `clear` keeps the buffer, and
        // writing as many NULs as there were bytes lands in that same buffer.
        let len = self.0.len();
        self.0.clear();
        self.0.extend(std::iter::repeat_n('\0', len));
        std::hint::black_box(&self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
}

/// Splits a token and checks its header's algorithm. Returns the payload part.
fn split_checked(token: &str) -> Result<&str, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed(format!(
            "longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed("header is not base64url".into()))?;
    let header: RawHeader = serde_json::from_slice(&header)
        .map_err(|_| TokenError::Malformed("header is not a JSON object".into()))?;
    match header.alg.as_deref() {
        Some(ALGORITHM_NAME) => Ok(payload),
        Some(other) => Err(TokenError::Algorithm(other.chars().take(32).collect())),
        None => Err(TokenError::Malformed("header has no alg".into())),
    }
}

fn decode_payload(payload: &str) -> Result<Claims, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed("claims are not base64url".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("claims do not parse: {e}")))
}

/// Reads a token's claims without checking its signature, for the installer's local checks and
/// `muster token inspect`. Checks the format, the algorithm and the issuer only.
pub fn inspect(token: &str) -> Result<Claims, TokenError> {
    let claims = decode_payload(split_checked(token)?)?;
    if claims.iss != ISSUER {
        return Err(TokenError::Issuer(claims.iss.chars().take(64).collect()));
    }
    Ok(claims)
}

/// Verifies a token with the platform's public key (raw 32-byte Ed25519): format, pinned
/// algorithm, signature, issuer, and the time window at `now` with [`LEEWAY_SECS`]. The caller
/// then checks id, revocation, use count, source and roles against its store.
pub fn verify(token: &str, public_key: &[u8], now: u64) -> Result<Claims, TokenError> {
    split_checked(token)?;
    let key = jsonwebtoken::DecodingKey::from_ed_der(public_key);
    let mut validation = jsonwebtoken::Validation::new(ALGORITHM);
    // Time and issuer are checked below, so that each failure gets its own code and message.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(token.trim(), &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidSignature => TokenError::Signature,
            ErrorKind::InvalidAlgorithm => TokenError::Algorithm("mismatch".into()),
            ErrorKind::Json(_) => TokenError::Malformed("claims do not parse".into()),
            _ => TokenError::Malformed("token does not decode".into()),
        }
    })?;
    let claims = data.claims;
    if claims.iss != ISSUER {
        return Err(TokenError::Issuer(claims.iss.chars().take(64).collect()));
    }
    check_time(&claims, now)?;
    Ok(claims)
}

/// Checks the time window: not before `nbf`/`iat`, not after `exp`, each with the leeway.
pub fn check_time(claims: &Claims, now: u64) -> Result<(), TokenError> {
    let start = claims.nbf.max(claims.iat);
    if start > now.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::NotYetValid { wait: start - now });
    }
    if let Some(exp) = claims.exp {
        if now > exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired {
                exp,
                ago: now - exp,
            });
        }
    }
    Ok(())
}

/// Decides which roles a host gets: the requested ones (all the token grants, when none are
/// requested), refused if any is not granted or if the emergency token asks for allocator.
pub fn grant_roles(claims: &Claims, requested: &[Role]) -> Result<Vec<Role>, TokenError> {
    if claims.kind == TokenKind::Emergency && requested.contains(&Role::Allocator) {
        return Err(TokenError::EmergencyAllocator);
    }
    if requested.is_empty() {
        let mut all = claims.roles.clone();
        crate::role::normalize(&mut all);
        return Ok(all);
    }
    let missing: Vec<Role> = requested
        .iter()
        .copied()
        .filter(|r| !claims.roles.contains(r))
        .collect();
    if !missing.is_empty() {
        return Err(TokenError::RoleNotGranted {
            missing,
            granted: claims.roles.clone(),
        });
    }
    let mut granted = requested.to_vec();
    crate::role::normalize(&mut granted);
    Ok(granted)
}

/// Signs claims into a token with the platform's PKCS#8 Ed25519 key.
pub fn sign(claims: &Claims, pkcs8_der: &[u8]) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = jsonwebtoken::Header::new(ALGORITHM);
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(pkcs8_der),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(kind: TokenKind, roles: Vec<Role>, exp: Option<u64>) -> Claims {
        Claims {
            sub: "7a4db5a0-d05b-43f7-84a3-cddb81f5254f".into(),
            roles,
            iss: ISSUER.into(),
            iat: 1000,
            nbf: 1000,
            exp,
            persistent: exp.is_none(),
            kind,
            coordinators: vec!["127.0.0.1:12443".into()],
            pins: vec![crate::pin::spki_pin(b"x")],
            max_uses: None,
        }
    }

    fn keypair() -> (Vec<u8>, Vec<u8>) {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map(|d| d.as_ref().to_vec());
        let pkcs8 = pkcs8.unwrap_or_default();
        let kp = ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8);
        let public = kp
            .map(|k| k.public_key().as_ref().to_vec())
            .unwrap_or_default();
        (pkcs8, public)
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let (sk, pk) = keypair();
        let c = claims(TokenKind::Persistent, vec![Role::Allocator], None);
        let t = sign(&c, &sk).unwrap_or_default();
        assert_eq!(verify(&t, &pk, 2000), Ok(c.clone()));
        assert_eq!(inspect(&t), Ok(c));
    }

    #[test]
    fn forged_tokens_are_refused_with_their_own_error() {
        let (sk, pk) = keypair();
        let (_, other_pk) = keypair();
        let c = claims(TokenKind::Persistent, vec![Role::Allocator], None);
        let good = sign(&c, &sk).unwrap_or_default();
        let parts: Vec<&str> = good.split('.').collect();
        let mut escalated = c.clone();
        escalated.roles = Role::ALL.to_vec();
        let edited_payload = b64(&serde_json::to_string(&escalated).unwrap_or_default());
        let cases: Vec<(&str, String, TokenError)> = vec![
            (
                "empty",
                String::new(),
                TokenError::Malformed("expected three dot-separated parts".into()),
            ),
            (
                "two parts",
                format!("{}.{}", parts[0], parts[1]),
                TokenError::Malformed("expected three dot-separated parts".into()),
            ),
            (
                "alg none",
                format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), parts[1]),
                TokenError::Algorithm("none".into()),
            ),
            (
                "alg HS256 (key confusion)",
                format!(
                    "{}.{}.{}",
                    b64(r#"{"alg":"HS256","typ":"JWT"}"#),
                    parts[1],
                    parts[2]
                ),
                TokenError::Algorithm("HS256".into()),
            ),
            (
                "edited claims",
                format!("{}.{}.{}", parts[0], edited_payload, parts[2]),
                TokenError::Signature,
            ),
            (
                "oversized",
                "a".repeat(MAX_TOKEN_LEN + 1),
                TokenError::Malformed(format!("longer than {MAX_TOKEN_LEN} bytes")),
            ),
            (
                "garbage header",
                format!("!!.{}.{}", parts[1], parts[2]),
                TokenError::Malformed("header is not base64url".into()),
            ),
        ];
        for (name, token, want) in cases {
            assert_eq!(verify(&token, &pk, 2000), Err(want), "case {name}");
        }
        assert_eq!(
            verify(&good, &other_pk, 2000),
            Err(TokenError::Signature),
            "another platform's key"
        );
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let (sk, pk) = keypair();
        let mut c = claims(TokenKind::Persistent, vec![], None);
        c.iss = "current".into();
        let t = sign(&c, &sk).unwrap_or_default();
        assert_eq!(
            verify(&t, &pk, 2000),
            Err(TokenError::Issuer("current".into()))
        );
        assert_eq!(inspect(&t), Err(TokenError::Issuer("current".into())));
    }

    #[test]
    fn time_window_has_leeway() {
        let c = claims(TokenKind::Ephemeral, vec![], Some(5000));
        let cases = [
            (1000 - LEEWAY_SECS, Ok(())),
            (
                1000 - LEEWAY_SECS - 1,
                Err(TokenError::NotYetValid {
                    wait: LEEWAY_SECS + 1,
                }),
            ),
            (5000 + LEEWAY_SECS, Ok(())),
            (
                5000 + LEEWAY_SECS + 1,
                Err(TokenError::Expired {
                    exp: 5000,
                    ago: LEEWAY_SECS + 1,
                }),
            ),
        ];
        for (now, want) in cases {
            assert_eq!(check_time(&c, now), want, "now {now}");
        }
    }

    #[test]
    fn roles_are_granted_or_refused() {
        let c = claims(
            TokenKind::Persistent,
            vec![Role::Proxy, Role::Allocator],
            None,
        );
        assert_eq!(grant_roles(&c, &[]), Ok(vec![Role::Allocator, Role::Proxy]));
        assert_eq!(grant_roles(&c, &[Role::Proxy]), Ok(vec![Role::Proxy]));
        assert_eq!(
            grant_roles(&c, &[Role::Coordinator, Role::Proxy]),
            Err(TokenError::RoleNotGranted {
                missing: vec![Role::Coordinator],
                granted: c.roles.clone()
            })
        );
        let e = claims(TokenKind::Emergency, Role::EMERGENCY.to_vec(), None);
        assert_eq!(
            grant_roles(&e, &[Role::Allocator]),
            Err(TokenError::EmergencyAllocator)
        );
        assert_eq!(
            grant_roles(&e, &[]),
            Ok(vec![Role::Coordinator, Role::Proxy, Role::Director])
        );
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("eyJhbGciOi.secret.value");
        assert_eq!(format!("{s} {s:?}"), "<redacted> Secret(<redacted>)");
    }
}
