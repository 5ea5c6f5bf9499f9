//! The node protocol (docs/protocol.md): join and commit with a roles token, then heartbeat,
//! renew and leave with the node's transport certificate; recovery with the emergency token.

use super::{parse_json, Body, Conn, ConnInfo, S};
use crate::app::App;
use crate::error::ApiError;
use crate::pki;
use crate::service::admission::{self, HoldOff, Refusal};
use crate::service::registry::{self, MAX_MEMORY_MB};
use crate::store::{CommitOutcome, HostRecord, Reservation, ReserveOutcome};
use axum::extract::{Extension, State};
use axum::Json;
use base64::Engine;
use muster_protocol::node::*;
use muster_protocol::token::{self, Secret, TokenKind};
use muster_protocol::{ErrorCode, Role};

pub async fn join(State(app): S, Extension(c): Conn, body: Body) -> Result<Json<Bundle>, ApiError> {
    let _enrolling = crate::store::Enrolling::enter();
    let source = c.remote.ip();
    let mut req: JoinRequest = parse_json(body)?;
    let (claims, rec) = app.admission.admit(&req.token, source, app.now()).await?;
    registry::check_facts(&req.host)?;
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
                let r = Refusal::new(e.code(), e.to_string(), Some(rec.id));
                return Err(app.admission.refuse(r, source, now, HoldOff::No).await);
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
            let e = registry::replace_refused(&old);
            let r = Refusal::new(ErrorCode::HostReplaceRoles, e.message, Some(rec.id));
            return Err(app.admission.refuse(r, source, now, HoldOff::Yes).await);
        }
    }
    // Time-ordered (UUIDv7: 48 bits of milliseconds, 74 random): the registry's indexes on node
    // id grow at their end, so a storm of joins writes a few pages per batch, not one per host.
    let node_id = uuid::Uuid::now_v7().to_string();
    let coordinator = roles.contains(&Role::Coordinator);
    let issued = app.issuer().issue(
        &node_id,
        &req.host,
        coordinator,
        &req.transport_csr,
        &req.http_csr,
        now,
    )?;
    let mut host = req.host.clone();
    if host.zone.is_empty() {
        host.zone = app.config.default_zone.clone();
    }
    let cert_not_after = issued.not_after();
    let r = Reservation {
        node_id,
        token_id: rec.id.clone(),
        key_hash: issued.key_hash,
        spki_der: issued.spki_der,
        host,
        roles,
        pending_roles: pending,
        serials: vec![issued.transport.serial, issued.http.serial],
        transport_cert_pem: issued.transport.pem,
        http_cert_pem: issued.http.pem,
        certs_der: Some([issued.transport.der, issued.http.der]),
        cert_not_after,
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
    // Only a reservation this request made is bound to this connection (`JoinedHere`): an
    // earlier join of the same key may have been made elsewhere, and a CSR can be replayed.
    let (r, made_here) = match outcome {
        ReserveOutcome::Reserved => {
            app.metrics.joins.inc();
            (r, true)
        }
        ReserveOutcome::Existing(existing) => (*existing, false),
        // The record changed since the early check (revoked, or removed, meanwhile or on
        // another coordinator): refused as that check would have.
        outcome @ (ReserveOutcome::UnknownToken | ReserveOutcome::Revoked) => {
            app.admission.forget(&rec.id);
            let r = if matches!(outcome, ReserveOutcome::Revoked) {
                admission::revoked(rec.id)
            } else {
                admission::unknown(rec.id)
            };
            return Err(app.admission.refuse(r, source, now, HoldOff::Yes).await);
        }
        // Not counted against the source: a fleet behind one address racing a one-use token
        // must hear "use limit reached", not be held off.
        ReserveOutcome::UseLimitReached => {
            let r = Refusal::new(
                ErrorCode::TokenUseLimit,
                "roles token has reached its use limit",
                Some(rec.id),
            );
            return Err(app.admission.refuse(r, source, now, HoldOff::No).await);
        }
    };
    app.join_keys
        .insert(&r.node_id, r.spki_der.clone(), r.expires_at, now);
    if made_here {
        c.joined.set(&r.node_id);
    }
    Ok(Json(bundle(&app, &r, now)))
}

/// What a join answers: the node's identity, its certificates and the CAs.
fn bundle(app: &App, r: &Reservation, now: u64) -> Bundle {
    Bundle {
        node_id: r.node_id.clone(),
        psk: Secret::new(app.platform.psk(&r.node_id)),
        roles: r.roles.clone(),
        pending_roles: r.pending_roles.clone(),
        token_id: r.token_id.clone(),
        transport_ca_pem: app.platform.transport_ca.cert_pem.clone(),
        http_ca_pem: app.platform.http_ca.cert_pem.clone(),
        transport_cert_pem: r.transport_cert_pem.clone(),
        http_cert_pem: r.http_cert_pem.clone(),
        coordinators: app.advertise.clone(),
        remaining_seconds: r.expires_at.saturating_sub(now),
        issued_at: now,
        cert_not_after: r.cert_not_after,
    }
}

/// A coordinator answers recovery as a director does (a new coordinator joining a live
/// platform over its shared store).
pub async fn recover(
    State(app): S,
    Extension(c): Conn,
    body: Body,
) -> Result<Json<Recovery>, ApiError> {
    app.recoverer()
        .recover(|| parse_json(body), c.remote.ip(), app.now())
        .await
        .map(Json)
}

pub async fn commit(
    State(app): S,
    Extension(c): Conn,
    body: Body,
) -> Result<Json<CommitReply>, ApiError> {
    let _enrolling = crate::store::Enrolling::enter();
    let req: CommitRequest = parse_json(body)?;
    let now = app.now();
    // On the connection whose join made the reservation, that connection binds the commit
    // to it (`JoinedHere`); anywhere else the proof does, checked against the key the join
    // certified.
    let spki = if c.joined.is(&req.node_id) {
        None
    } else {
        Some(match app.join_keys.get(&req.node_id, now) {
            Some(spki) => spki,
            None => match app.store.reservation(&req.node_id).await? {
                Some(r) if r.expires_at > now => r.spki_der,
                _ => match app.store.host(&req.node_id).await? {
                    Some(h) => h.spki_der,
                    None => return Err(ApiError::new(ErrorCode::JoinUnknown, "no join reservation with that node id: it expired or never existed; run the install again")),
                },
            },
        })
    };
    let proof = base64::engine::general_purpose::STANDARD
        .decode(&req.proof)
        .map_err(|_| {
            ApiError::new(
                ErrorCode::RequestInvalid,
                "proof must be the signature in standard base64",
            )
        })?;
    // The PSK first: a wrong one costs an HMAC, not a signature check.
    if !app.platform.check_psk(&req.node_id, req.psk.expose())
        || !spki.is_none_or(|spki| {
            pki::verify_proof(
                &spki,
                &commit_message(&req.node_id, req.psk.expose()),
                &proof,
            )
        })
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
            app.names.registered(&host.host);
            app.metrics.commits.inc();
            let roles: Vec<String> = host.roles.iter().map(ToString::to_string).collect();
            app.metrics.enrolled(roles.iter().map(String::as_str));
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
            let connected = app.view().connected(&host);
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
        CommitOutcome::ReplaceRefused(old) => Err(registry::replace_refused(&old)),
        // Audited, not counted against the source: the caller proved the PSK and the key, so
        // there is nothing to guess, and a fleet behind one address may be re-enrolling.
        CommitOutcome::TokenRevoked(token_id) => {
            app.admission.forget(&token_id);
            let r = Refusal::new(
                ErrorCode::TokenRevoked,
                "roles token was revoked after this join; the host is not registered",
                Some(token_id),
            );
            Err(app
                .admission
                .refuse(r, c.remote.ip(), now, HoldOff::No)
                .await)
        }
    }
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

pub async fn heartbeat(
    State(app): S,
    Extension(c): Conn,
    headers: axum::http::HeaderMap,
    body: Body,
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
    // Every Muster agent names its version in its User-Agent (`muster/0.1.0`), agents already
    // in the field included; anything else records none.
    let version = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(registry::agent_version);
    let h = app
        .store
        .heartbeat(&h.node_id, now, hb.memory_used_mb, version.as_deref())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NodeUnknown, "node removed"))?;
    app.metrics.heartbeats.inc();
    Ok(Json(HeartbeatReply {
        node_id: h.node_id,
        roles: h.roles,
        pending_roles: h.pending_roles,
        coordinators: app.advertise.clone(),
        server_time: now,
    }))
}

pub async fn renew(
    State(app): S,
    Extension(c): Conn,
    body: Body,
) -> Result<Json<RenewReply>, ApiError> {
    let req: RenewRequest = parse_json(body)?;
    let h = node_of(&app, &c).await?;
    let issued = app.issuer().issue(
        &h.node_id,
        &h.host,
        h.roles.contains(&Role::Coordinator),
        &req.transport_csr,
        &req.http_csr,
        app.now(),
    )?;
    let not_after = issued.not_after();
    // The pair this host renewed with stays valid until its next renewal: if this answer never
    // reaches it, it still has a certificate to try again with. Any other old pair (the answer
    // to an earlier renewal that was lost) is revoked.
    let keep = c
        .peer_cert
        .as_deref()
        .and_then(|der| pki::cert_identity(der))
        .map(|(_, serial)| registry::pair_of(&h.serials, &serial))
        .unwrap_or_default();
    // Removed meanwhile (leave, an admin): the certificates just signed are never handed out.
    let serials = [issued.transport.serial, issued.http.serial];
    app.store
        .replace_certs(&h.node_id, &serials, &keep, not_after)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NodeUnknown, "this node was removed"))?;
    app.metrics.renewals.inc();
    Ok(Json(RenewReply {
        transport_cert_pem: issued.transport.pem,
        http_cert_pem: issued.http.pem,
        transport_ca_pem: app.platform.transport_ca.cert_pem.clone(),
        http_ca_pem: app.platform.http_ca.cert_pem.clone(),
        cert_not_after: not_after,
    }))
}

pub async fn leave(State(app): S, Extension(c): Conn) -> Result<Json<serde_json::Value>, ApiError> {
    let h = node_of(&app, &c).await?;
    let source = c.remote.ip().to_string();
    let by = crate::store::actor::host(&h.node_id);
    let e = crate::store::event(app.now(), "host_left", &by, None, None, Some(&source), None);
    if let Some(gone) = app.store.remove_host(&h.node_id, &e).await? {
        app.names.forget_addresses(&gone);
    }
    Ok(Json(serde_json::json!({})))
}
