//! Token admission: a roles token in, its claims and the store's record out, or a [`Refusal`].
//! Every refusal goes through [`Admission::refuse`], the one place that counts it, audits it,
//! logs it and (unless told not to) holds it against its source.

use super::cache::{TokenRecords, VerifiedTokens, TOKEN_RECORD_SECONDS};
use crate::error::ApiError;
use crate::limit::FailureLimiter;
use crate::metrics::Metrics;
use crate::platform::sha256_hex;
use crate::store::{actor, Store, TokenRecord};
use muster_protocol::token::{self, Secret};
use muster_protocol::ErrorCode;
use std::net::IpAddr;
use std::sync::Arc;

/// Why a roles token was refused: its code, the message for the caller, and the token id it
/// names (only a claim when the signature did not verify), for the audit log.
#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub token_id: Option<String>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>, token_id: Option<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            token_id,
        }
    }
}

/// Whether a refusal counts against its source's budget of refused tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldOff {
    /// A guess (a bad, unknown or revoked token, a name asked about): counted against the
    /// source, which is held off once over budget.
    Yes,
    /// Not a guess (a fleet behind one address racing a one-use token, a caller that proved
    /// its key): counted and audited only.
    No,
}

/// Admits roles tokens for joins.
pub struct Admission {
    store: Arc<dyn Store>,
    verify_key: Vec<u8>,
    failures: FailureLimiter,
    verified: VerifiedTokens,
    records: TokenRecords,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub fn new(
        store: Arc<dyn Store>,
        verify_key: Vec<u8>,
        failures_per_minute: u32,
        metrics: Arc<Metrics>,
    ) -> Admission {
        Admission {
            store,
            verify_key,
            failures: FailureLimiter::new(failures_per_minute),
            verified: VerifiedTokens::default(),
            records: TokenRecords::default(),
            metrics,
        }
    }

    /// The limiter of refused tokens per source, which recovery shares.
    pub fn failures(&self) -> &FailureLimiter {
        &self.failures
    }

    /// The tokens whose signature verified, which recovery shares.
    pub fn verified(&self) -> &VerifiedTokens {
        &self.verified
    }

    /// Verifies a token against the signature and the store (its record read again at most
    /// every [`TOKEN_RECORD_SECONDS`]). Refusals are counted, audited and held against `source`.
    pub async fn admit(
        &self,
        tok: &Secret,
        source: IpAddr,
        now: u64,
    ) -> Result<(token::Claims, TokenRecord), ApiError> {
        if let Some(wait) = self.failures.blocked(source, now) {
            return Err(rate_limited(source, wait));
        }
        let checked = match verify_signature(&self.verify_key, &self.verified, tok, now) {
            Ok((claims, hash)) => {
                let rec = match self.records.get(&claims.sub, now) {
                    Some(rec) => Some(rec),
                    None => {
                        let rec = self.store.token(&claims.sub).await?;
                        if let Some(rec) = &rec {
                            let until = now + TOKEN_RECORD_SECONDS;
                            self.records.insert(&rec.id, rec.clone(), until, now);
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
            Err(r) => Err(self.refuse(r, source, now, HoldOff::Yes).await),
        }
    }

    /// Counts, audits and logs a refused token, holding it against `source` if `hold_off`
    /// says so; the error to answer.
    pub async fn refuse(
        &self,
        r: Refusal,
        source: IpAddr,
        now: u64,
        hold_off: HoldOff,
    ) -> ApiError {
        self.metrics.refused(r.code.as_str());
        if hold_off == HoldOff::Yes {
            self.failures.failed(source, now);
        }
        refusal_logged(self.store.as_ref(), &r, source, now).await;
        ApiError::new(r.code, r.message)
    }

    /// Drops the copy of a token's record (revoked, or found changed by the store).
    pub fn forget(&self, token_id: &str) {
        self.records.forget(token_id);
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
    let by = r
        .token_id
        .as_deref()
        .map_or(actor::ANONYMOUS.to_string(), actor::token);
    let from = source.to_string();
    let (token_id, reason) = (r.token_id.as_deref(), Some(r.code.as_str()));
    let e = crate::store::event(now, "refused", &by, token_id, None, Some(&from), reason);
    super::audit(store, &e).await;
    tracing::info!(%source, code = r.code.as_str(), token_id = r.token_id.as_deref().unwrap_or("-"), "token refused");
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
            Err(Refusal::new(e.code(), e.to_string(), id))
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
    let Some(rec) = rec else {
        return Err(unknown(claims.sub));
    };
    if !super::auth::constant_eq(&rec.hash, hash) {
        return Err(unknown(claims.sub));
    }
    if rec.revoked {
        return Err(if rec.expires.is_some_and(|e| e < now) {
            Refusal::new(ErrorCode::TokenExpired, "roles token expired", Some(rec.id))
        } else {
            revoked(rec.id)
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

/// The refusal of a token the platform does not know.
pub fn unknown(token_id: String) -> Refusal {
    Refusal::new(
        ErrorCode::TokenUnknown,
        "roles token is not known to this platform",
        Some(token_id),
    )
}

/// The refusal of a revoked token.
pub fn revoked(token_id: String) -> Refusal {
    Refusal::new(
        ErrorCode::TokenRevoked,
        "roles token was revoked",
        Some(token_id),
    )
}

/// An address or a CIDR network; a bare address is a network of one.
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_protocol::token::TokenKind;

    fn claims(sub: &str) -> token::Claims {
        token::Claims {
            sub: sub.into(),
            roles: vec![],
            iss: "muster".into(),
            iat: 0,
            nbf: 0,
            exp: None,
            persistent: false,
            kind: TokenKind::Ephemeral,
            coordinators: vec![],
            pins: vec![],
            max_uses: None,
        }
    }

    fn record(id: &str, hash: &str) -> TokenRecord {
        TokenRecord {
            hash: hash.into(),
            kind: TokenKind::Ephemeral,
            ..crate::store::conformance::token(id, None)
        }
    }

    fn code(r: Result<(token::Claims, TokenRecord), Refusal>) -> Option<ErrorCode> {
        r.err().map(|r| r.code)
    }

    #[test]
    fn a_record_is_checked_for_hash_revocation_expiry_and_source() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let ok = record("t", "aa");
        assert!(check_record(claims("t"), Some(ok.clone()), "aa", ip, 100).is_ok());
        assert_eq!(
            code(check_record(claims("t"), None, "aa", ip, 100)),
            Some(ErrorCode::TokenUnknown)
        );
        assert_eq!(
            code(check_record(claims("t"), Some(ok.clone()), "bb", ip, 100)),
            Some(ErrorCode::TokenUnknown),
            "a record of that id with another hash is another token"
        );
        let gone = TokenRecord {
            revoked: true,
            ..ok.clone()
        };
        assert_eq!(
            code(check_record(claims("t"), Some(gone.clone()), "aa", ip, 100)),
            Some(ErrorCode::TokenRevoked)
        );
        let lapsed = TokenRecord {
            expires: Some(50),
            ..gone
        };
        assert_eq!(
            code(check_record(claims("t"), Some(lapsed), "aa", ip, 100)),
            Some(ErrorCode::TokenExpired)
        );
        let fenced = TokenRecord {
            allowed_sources: vec!["10.9.0.0/16".into(), "10.1.2.4".into()],
            ..ok.clone()
        };
        let refused = check_record(claims("t"), Some(fenced.clone()), "aa", ip, 100);
        assert_eq!(
            refused.as_ref().err().map(|r| r.message.as_str()),
            Some("roles token may not be used from 10.1.2.3")
        );
        let inside = TokenRecord {
            allowed_sources: vec!["10.1.0.0/16".into()],
            ..fenced
        };
        assert!(check_record(claims("t"), Some(inside), "aa", ip, 100).is_ok());
    }

    #[test]
    fn sources_are_networks_or_single_addresses() {
        assert_eq!(parse_cidr("10.0.0.0/8").map(|n| n.prefix_len()), Some(8));
        assert_eq!(parse_cidr("10.0.0.1").map(|n| n.prefix_len()), Some(32));
        assert_eq!(parse_cidr("2001:db8::1").map(|n| n.prefix_len()), Some(128));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("example.com").is_none());
    }
}
