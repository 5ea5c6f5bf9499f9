//! Director mode: `musterd` on a director host, the store's home, holding no unsealed secret.
//!
//! A director loads only the public half of the platform record (the token verify key and the
//! CA certificates) and serves with a certificate a coordinator issued it ahead of time
//! (`musterd director-cert`), so installers' CA pins hold. It answers one thing: a recovery made
//! with the emergency token asking for the coordinator role, with the store settings and the
//! platform's secrets still sealed. The data key inside is wrapped under the emergency token, so
//! the answer is worth nothing to anyone who does not already hold that token. Everything else
//! (joins with other tokens, the admin API) is refused: a director signs nothing.

use crate::config::Config;
use crate::error::ApiError;
use crate::http::{parse_json, ConnInfo};
use crate::limit::FailureLimiter;
use crate::service::cache::VerifiedTokens;
use crate::service::recovery::Recoverer;
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use muster_protocol::node::Recovery;
use muster_protocol::{paths, ErrorCode};
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

type S = State<Arc<Director>>;

pub fn router(d: Arc<Director>) -> Router {
    let max = d.config.max_body_bytes;
    Router::new()
        .merge(crate::http::console::director_routes())
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
            crate::http::refuse_declared_oversize,
        ))
        .layer(axum::middleware::from_fn(crate::http::request_deadline))
        .with_state(d)
}

async fn recover_handler(
    State(d): S,
    Extension(c): Extension<ConnInfo>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Recovery>, ApiError> {
    let recoverer = Recoverer {
        store: d.store.as_ref(),
        config: &d.config,
        failures: &d.token_failures,
        verified: &d.verified_tokens,
    };
    recoverer
        .recover(|| parse_json(body), c.remote.ip(), (d.clock)())
        .await
        .map(Json)
}

async fn readyz(State(d): S) -> Response {
    match d.store.platform().await {
        Ok(Some(_)) => (StatusCode::OK, "ready\n").into_response(),
        _ => ApiError::new(ErrorCode::StoreUnavailable, "store not ready").into_response(),
    }
}
