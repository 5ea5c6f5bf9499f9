//! Roles tokens: what a request may ask for, the line that enrolls a host with one, revocation
//! and expiry. Minting and signing are the platform's (`Platform::make_token`).

use super::admission::parse_cidr;
use super::auth::constant_eq;
use crate::error::ApiError;
use crate::platform::sha256_hex;
use crate::store::{actor, event, Store, TokenRecord};
use muster_protocol::api::CreateTokenRequest;
use muster_protocol::token::{self, TokenKind};
use muster_protocol::{ErrorCode, Role};

/// The longest an ephemeral token may be asked to last: ten years.
pub const MAX_TOKEN_VALIDITY_SECS: u64 = 10 * 365 * 86_400;

/// The roles and kind a token request asks for, once every field is checked.
/// The longest description a token may carry, in characters.
pub const MAX_DESCRIPTION: usize = 200;

pub fn check_request(req: &CreateTokenRequest) -> Result<(Vec<Role>, TokenKind), ApiError> {
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
    if let Some(d) = &req.description {
        if d.chars().count() > MAX_DESCRIPTION || d.chars().any(char::is_control) {
            return Err(ApiError::new(
                ErrorCode::RequestInvalid,
                format!("description must be at most {MAX_DESCRIPTION} characters, none of them control characters"),
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
    Ok((roles, kind))
}

/// Role names from a request body, sorted and without repeats; an unknown name is refused.
pub fn parse_roles(names: &[String]) -> Result<Vec<Role>, ApiError> {
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

/// Revokes the live token `given` names: its id or, as ECE takes it, the token itself (known by
/// its hash, so only its holder can name it that way). The emergency token is never revoked.
/// The id of the token revoked.
pub async fn revoke(
    store: &dyn Store,
    given: &str,
    actor: &str,
    source: &str,
    now: u64,
) -> Result<String, ApiError> {
    let unknown = || {
        ApiError::new(
            ErrorCode::EceTokenId,
            "no live token has that id, and no live token of this platform is that",
        )
    };
    let t = if given.contains('.') {
        let given = given.trim();
        let id = token::inspect(given).map_err(|_| unknown())?.sub;
        store
            .token(&id)
            .await?
            .filter(|t| constant_eq(&t.hash, &sha256_hex(given.as_bytes())))
    } else {
        store.token(given).await?
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
    let e = event(now, "revoked", actor, Some(&t.id), None, Some(source), None);
    store.revoke_token(&t.id, &e).await?;
    Ok(t.id)
}

/// Whether an ephemeral token is past its expiry and its leeway at `now`, and not yet retired.
pub fn expired(t: &TokenRecord, now: u64) -> bool {
    !t.revoked
        && t.expires
            .is_some_and(|e| e.saturating_add(token::LEEWAY_SECS) < now)
}

/// Retires the ephemeral tokens past their expiry (and its leeway).
pub async fn expire(store: &dyn Store, now: u64) -> anyhow::Result<()> {
    for t in store.tokens().await? {
        if expired(&t, now) {
            let e = event(
                now,
                "expired",
                actor::MUSTERD,
                Some(&t.id),
                None,
                None,
                None,
            );
            store.revoke_token(&t.id, &e).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(roles: &[&str]) -> CreateTokenRequest {
        CreateTokenRequest {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    fn code(r: Result<(Vec<Role>, TokenKind), ApiError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn a_token_request_is_checked_field_by_field() {
        let ok = check_request(&request(&["proxy", "allocator", "proxy"]));
        assert_eq!(
            ok.ok(),
            Some((vec![Role::Allocator, Role::Proxy], TokenKind::Ephemeral))
        );
        assert_eq!(
            code(check_request(&request(&["root"]))),
            Some(ErrorCode::RoleUnknown)
        );
        let mut r = request(&["allocator"]);
        r.allowed_sources = vec!["10.0.0.0/8".into(), "not-a-net".into()];
        assert_eq!(code(check_request(&r)), Some(ErrorCode::RequestInvalid));
        for v in [0, MAX_TOKEN_VALIDITY_SECS + 1] {
            let mut r = request(&["allocator"]);
            r.validity_in_seconds = Some(v);
            assert_eq!(
                code(check_request(&r)),
                Some(ErrorCode::RequestInvalid),
                "{v}"
            );
        }
        let mut r = request(&["allocator"]);
        r.max_uses = Some(0);
        assert_eq!(code(check_request(&r)), Some(ErrorCode::RequestInvalid));
        let mut r = request(&[]);
        r.persistent = true;
        assert_eq!(
            check_request(&r).ok(),
            Some((vec![], TokenKind::Persistent))
        );
    }

    #[test]
    fn a_token_expires_after_its_leeway_once() {
        let mut t = crate::store::conformance::token("t", None);
        t.expires = Some(100);
        assert!(!expired(&t, 100 + token::LEEWAY_SECS));
        assert!(expired(&t, 101 + token::LEEWAY_SECS));
        t.revoked = true;
        assert!(!expired(&t, 10_000), "retired already");
        t.revoked = false;
        t.expires = None;
        assert!(!expired(&t, u64::MAX), "a token without expiry");
    }

    #[test]
    fn the_install_line_carries_the_token_in_the_environment_only() {
        let line = install_line("c.example:12443", "sha256//PIN", "tok.en.x");
        assert!(line.starts_with(
            "curl -fsSk --pinnedpubkey 'sha256//PIN' https://c.example:12443/install.sh | "
        ));
        assert!(line
            .ends_with("MUSTER_ROLES_TOKEN='tok.en.x' sudo --preserve-env=MUSTER_ROLES_TOKEN sh"));
    }
}
