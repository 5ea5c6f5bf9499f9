//! Director mode: `musterd` on a director host, the store's home, holding no unsealed secret.
//!
//! A director loads only the public half of the platform record (the token verify key and the
//! CA certificates) and serves with a certificate a coordinator issued it ahead of time
//! (`musterd director-cert`), so installers' CA pins hold. It answers one thing: a recovery made
//! with the emergency token asking for the coordinator role, with the store settings and the
//! platform's secrets still sealed. The data key inside is wrapped under the emergency token, so
//! the answer is worth nothing to anyone who does not already hold that token. Everything else
//! (joins with other tokens, the admin API) is refused: a director signs nothing.

use crate::app::{
    audit, parse_json, rate_limited, refusal_logged, verify_token, ConnInfo, Refusal,
    VerifiedTokens,
};
use crate::config::{Backend, Config};
use crate::error::ApiError;
use crate::limit::FailureLimiter;
use crate::platform::PublicPlatform;
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use muster_protocol::node::{RecoverRequest, Recovery, StoreSettings};
use muster_protocol::token::{self, TokenKind};
use muster_protocol::{paths, ErrorCode, Role};
use std::net::IpAddr;
use std::sync::Arc;

/// The file names of the director's serving certificate (leaf, then the HTTP CA) and key in
/// its data folder.
pub const CERT_FILE: &str = "director-cert.pem";
pub const KEY_FILE: &str = "director-key.pem";

pub struct Director {
    pub store: Arc<dyn Store>,
    pub config: Config,
    pub token_failures: FailureLimiter,
    pub verified_tokens: VerifiedTokens,
    pub clock: fn() -> u64,
}

/// Where the shared store is, as a recovering coordinator should reach it; `None` for the
/// embedded store, which no other host can share.
pub fn store_settings(config: &Config) -> Option<StoreSettings> {
    match config.store.backend {
        Backend::Sqlite => None,
        Backend::Etcd => Some(StoreSettings {
            endpoints: config.store.etcd.endpoints.clone(),
            prefix: config.store.etcd.prefix.clone(),
            tls: config.store.etcd.tls.is_some(),
        }),
    }
}

/// Answers a recovery request: the emergency token, the coordinator role among those asked,
/// a shared store. Needs no secret. Refusals and successes are audited.
pub async fn recover(
    store: &dyn Store,
    config: &Config,
    limiter: &FailureLimiter,
    verified: &VerifiedTokens,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    source: IpAddr,
    now: u64,
) -> Result<Recovery, ApiError> {
    if let Some(wait) = limiter.blocked(source, now) {
        return Err(rate_limited(source, wait));
    }
    let req: RecoverRequest = parse_json(body)?;
    let public = PublicPlatform::load(store).await?;
    let refuse = |r: Refusal| async move {
        limiter.failed(source, now);
        refusal_logged(store, &r, source, now).await;
        ApiError::new(r.code, r.message)
    };
    let (claims, rec) =
        match verify_token(store, &public.verify_key, verified, &req.token, source, now).await? {
            Ok(ok) => ok,
            Err(r) => return Err(refuse(r).await),
        };
    if rec.kind != TokenKind::Emergency || rec.id != public.emergency_token_id {
        return Err(refuse(Refusal {
            code: ErrorCode::RecoveryToken,
            message: "recovery takes the platform's emergency token; this is a roles token".into(),
            token_id: Some(rec.id),
        })
        .await);
    }
    let checked = token::Claims {
        roles: rec.roles.clone(),
        kind: rec.kind,
        ..claims
    };
    let granted = match token::grant_roles(&checked, &req.roles) {
        Ok(g) => g,
        Err(e) => {
            return Err(refuse(Refusal {
                code: e.code(),
                message: e.to_string(),
                token_id: Some(rec.id),
            })
            .await)
        }
    };
    if !granted.contains(&Role::Coordinator) {
        return Err(refuse(Refusal {
            code: ErrorCode::RecoveryRole,
            message: "recovery brings up a coordinator: ask for the coordinator role \
                      (--roles coordinator,director,proxy)"
                .into(),
            token_id: Some(rec.id),
        })
        .await);
    }
    let Some(settings) = store_settings(config) else {
        return Err(ApiError::new(
            ErrorCode::RecoveryStore,
            "this coordinator keeps the platform in its own data folder (sqlite), which no \
             other host can share; recover a single host with `musterd backup` and `musterd restore`",
        ));
    };
    audit(
        store,
        now,
        "recovery",
        Some(&rec.id),
        None,
        Some(source),
        None,
    )
    .await;
    tracing::warn!(%source, "emergency recovery: handed the sealed platform to a new coordinator");
    Ok(public.recovery(settings))
}

type S = State<Arc<Director>>;

pub fn router(d: Arc<Director>) -> Router {
    let max = d.config.max_body_bytes;
    Router::new()
        .route(paths::RECOVER, post(recover_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            ApiError::new(
                ErrorCode::DirectorOnly,
                "this musterd is a director: it holds no unsealed secret and signs nothing; it \
                 answers only recovery with the emergency token \
                 (muster install --roles-token <emergency token> --roles coordinator,director,proxy)",
            )
        })
        .layer(DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(
            max,
            crate::app::refuse_declared_oversize,
        ))
        .with_state(d)
}

async fn recover_handler(
    State(d): S,
    Extension(c): Extension<ConnInfo>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Recovery>, ApiError> {
    let now = (d.clock)();
    recover(
        d.store.as_ref(),
        &d.config,
        &d.token_failures,
        &d.verified_tokens,
        body,
        c.remote.ip(),
        now,
    )
    .await
    .map(Json)
}

async fn readyz(State(d): S) -> Response {
    match d.store.platform().await {
        Ok(Some(_)) => (StatusCode::OK, "ready\n").into_response(),
        _ => ApiError::new(ErrorCode::StoreUnavailable, "store not ready").into_response(),
    }
}
