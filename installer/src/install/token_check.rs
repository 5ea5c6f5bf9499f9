//! The install flow, step 1: the roles token checked on this host before any enrollment
//! traffic, and the coordinators to try.
//!
//! Part of `install`, using none of it: it depends on `cli`, `common`, `net`, `progress`,
//! `exit` and `muster-protocol` only.

use crate::cli::Settings;
use crate::common::{coordinator_list, now};
use crate::exit::{Exit, Failure, Result};
use crate::net::Client;
use crate::progress::Progress;
use muster_protocol::token::{self, Claims};
use muster_protocol::Role;

/// What the token lets this run do, checked before any enrollment traffic.
pub struct Checked {
    pub claims: Claims,
    /// The roles asked for that the token grants (none for an initial token).
    pub granted: Vec<Role>,
    /// The coordinators to try: `--coordinator-host` first, then the token's.
    pub coordinators: Vec<String>,
}

/// Step 1: the token checked locally (format, algorithm, issuer, expiry, roles) before any
/// enrollment traffic, and the coordinators to try.
pub async fn check_token(s: &Settings, p: &mut Progress) -> Result<Checked> {
    p.step("checking the roles token");
    let claims = token::inspect(&s.token).map_err(|e| {
        Failure::new(
            Exit::TokenRefused,
            format!("{e}; get a new token from the coordinator"),
        )
    })?;

    if claims.pins.is_empty()
        || !claims
            .pins
            .iter()
            .all(|p| muster_protocol::pin::is_well_formed(p))
    {
        return Err(Failure::new(
            Exit::TokenRefused,
            "roles token carries no usable CA pin; get a new token",
        ));
    }
    let granted = if claims.kind == token::TokenKind::Initial {
        vec![]
    } else {
        token::grant_roles(&claims, &s.roles)
            .map_err(|e| Failure::new(Exit::RoleNotAllowed, format!("{e}")))?
    };
    let coordinators = coordinator_list(s.coordinator_host.as_deref(), &claims.coordinators);
    if coordinators.is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            "no coordinator: pass --coordinator-host HOST[:PORT]",
        ));
    }
    if let Err(e) = token::check_time(&claims, now()) {
        // Still no enrollment traffic: one pinned look at a coordinator's clock, to say
        // whether this host's clock is the problem and by how much.
        let mut message = format!("{e}");
        let skew = match Client::clock_probe(coordinators.clone(), claims.pins.clone()) {
            Ok(c) => c.probe_skew().await,
            Err(_) => None,
        };
        if let Some(note) = skew.and_then(crate::net::skew_note) {
            message.push_str(&note);
        }
        return Err(Failure::new(Exit::TokenRefused, message));
    }
    p.note(&format!(
        "token {} ({}), roles [{}], coordinator {}",
        claims.sub,
        claims.kind.as_str(),
        muster_protocol::role::join(if claims.kind == token::TokenKind::Initial {
            &s.roles
        } else {
            &granted
        }),
        coordinators[0]
    ));
    Ok(Checked {
        claims,
        granted,
        coordinators,
    })
}
