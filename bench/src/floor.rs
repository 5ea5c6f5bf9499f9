//! The floors: the least an enrollment server can do, built from the crates musterd uses.
//!
//! - The floor (`POST /join`): per request one TLS handshake (rustls), one token verification
//!   (EdDSA, `muster_protocol::token`), one CSR check (`musterd::pki::check_csr`), one
//!   certificate signature (`musterd::pki::Ca`); no store, no second certificate, no commit.
//! - The protocol floor (musterd's own join and commit paths): the node protocol as the design
//!   fixes it, and nothing more: the token (its signature checked once per token, as musterd
//!   does), two CSR checks, two signatures, the PSK, then the commit, bound to the joined key
//!   by the join's connection as musterd's is (its proof of possession checked only when it
//!   comes on another). Reservations live in memory only: no store, no audit, no token
//!   records. What musterd spends beyond it is the price of durability and bookkeeping.

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hyper_util::rt::TokioIo;
use muster_protocol::node::{commit_message, Bundle, CommitReply, CommitRequest, JoinRequest};
use muster_protocol::paths;
use muster_protocol::token::{self, Claims, TokenKind};
use musterd::http::JoinedHere;
use musterd::pki::{self, Ca, Leaf};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

struct Floor {
    ca: Ca,
    verify_key: Vec<u8>,
    /// The protocol floor's second CA (musterd signs HTTP certificates with its own).
    http_ca: Ca,
    /// Per-node PSKs are an HMAC of the node id under this key, as musterd makes them.
    psk_key: ring::hmac::Key,
    /// Joins not committed yet: node id → transport SPKI (DER). Memory only.
    joined: Mutex<HashMap<String, Vec<u8>>>,
    /// Tokens whose signature verified, by their SHA-256, as musterd remembers them: the
    /// protocol floor is allowed every shortcut musterd takes.
    verified: Mutex<HashMap<Vec<u8>, Claims>>,
}

/// What the load generator needs from a running floor.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Ready {
    pub port: u16,
    pub token: String,
    pub pins: Vec<String>,
}

/// Serves until killed; writes `ready.json` into `dir` once listening.
pub async fn serve(listen: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let ca = Ca::generate("Muster floor CA", now)?;
    let rng = ring::rand::SystemRandom::new();
    let (tok, verify_key) = roles_token("floor", &ca, now)?;
    let (chain, key) = serving_cert(&ca, "floor", now)?;
    let cfg = tls_config(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

    let pins = vec![ca.pin()];
    let mut psk_key = [0u8; 32];
    ring::rand::SecureRandom::fill(&rng, &mut psk_key)
        .map_err(|_| anyhow::anyhow!("generating the PSK key"))?;
    let floor = Floor {
        ca,
        verify_key,
        http_ca: Ca::generate("Muster floor HTTP CA", now)?,
        psk_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &psk_key),
        joined: Mutex::new(HashMap::new()),
        verified: Mutex::new(HashMap::new()),
    };
    let router = Router::new()
        .route("/join", post(join))
        .route(paths::JOIN, post(protocol_join))
        .route(paths::COMMIT, post(protocol_commit))
        .with_state(Arc::new(floor));
    let listener = musterd::serve::listen(listen)?;
    let ready = Ready {
        port: listener.local_addr()?.port(),
        token: tok,
        pins,
    };
    // Whole or not at all: the storm reads it as soon as it is there.
    std::fs::write(dir.join("ready.json.new"), serde_json::to_vec(&ready)?)?;
    std::fs::rename(dir.join("ready.json.new"), dir.join("ready.json"))?;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            // As musterd's listener does: the join made on this connection (`JoinedHere`).
            let joined = Arc::new(JoinedHere::default());
            let svc = hyper_util::service::TowerToHyperService::new(router.map_request(
                move |mut r: axum::extract::Request<hyper::body::Incoming>| {
                    r.extensions_mut().insert(joined.clone());
                    r
                },
            ));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// A persistent allocator roles token for `sub`, pinned to `ca`, signed by a key made for it:
/// the token, and the key's public half (what a server verifies it with).
pub fn roles_token(
    sub: &str,
    ca: &Ca,
    now: time::OffsetDateTime,
) -> anyhow::Result<(String, Vec<u8>)> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("generating the token key"))?;
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("loading the token key"))?;
    let t = now.unix_timestamp() as u64;
    let claims = Claims {
        sub: sub.into(),
        roles: vec![muster_protocol::Role::Allocator],
        iss: token::ISSUER.into(),
        iat: t,
        nbf: t,
        exp: None,
        persistent: true,
        kind: TokenKind::Persistent,
        coordinators: vec![],
        pins: vec![ca.pin()],
        max_uses: None,
    };
    let tok = token::sign(&claims, pkcs8.as_ref()).context("signing the token")?;
    let verify_key = ring::signature::KeyPair::public_key(&kp).as_ref().to_vec();
    Ok((tok, verify_key))
}

/// A serving certificate for 127.0.0.1 from `ca`, marked a coordinator's as musterd's is: its
/// chain (with `ca`) and its key.
pub fn serving_cert(
    ca: &Ca,
    name: &str,
    now: time::OffsetDateTime,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let leaf = Leaf {
        common_name: name.into(),
        sans: vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())],
        coordinator: true,
        validity: time::Duration::days(1),
    };
    let cert = ca.sign(&key, &leaf, now)?;
    let chain = vec![
        CertificateDer::from(cert.der),
        CertificateDer::from(ca.cert_der.clone()),
    ];
    Ok((
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

/// The floors' TLS config: the same choices as musterd's listener (provider, tuning), so the
/// comparison is of the work done; no client certificates asked for.
pub fn tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(musterd::serve::tls_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    musterd::serve::tune(&mut cfg);
    Ok(cfg)
}

async fn join(State(f): State<Arc<Floor>>, body: Bytes) -> (StatusCode, String) {
    let Ok(req) = serde_json::from_slice::<JoinRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, "body".into());
    };
    let now = time::OffsetDateTime::now_utc();
    if token::verify(
        req.token.expose(),
        &f.verify_key,
        now.unix_timestamp() as u64,
    )
    .is_err()
    {
        return (StatusCode::FORBIDDEN, "token".into());
    }
    let allowed = pki::host_sans(&req.host.hostname, &req.host.addresses);
    let Ok(csr) = pki::check_csr(&req.transport_csr, &allowed) else {
        return (StatusCode::BAD_REQUEST, "csr".into());
    };
    let leaf = Leaf {
        common_name: req.host.hostname.clone(),
        sans: allowed,
        coordinator: false,
        validity: time::Duration::days(90),
    };
    match f.ca.sign(&csr.public_key, &leaf, now) {
        Ok(c) => (StatusCode::OK, c.pem),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "sign".into()),
    }
}

impl Floor {
    /// A token's claims: its signature checked once, its time window on every use.
    fn verify(&self, tok: &str, now: u64) -> Result<Claims, StatusCode> {
        let hash = ring::digest::digest(&ring::digest::SHA256, tok.as_bytes())
            .as_ref()
            .to_vec();
        let lock = || {
            self.verified
                .lock()
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
        };
        let known = lock()?.get(&hash).cloned();
        match known {
            Some(c) if c.nbf <= now && c.exp.is_none_or(|e| now < e) => Ok(c),
            Some(_) => Err(StatusCode::FORBIDDEN),
            None => {
                let c =
                    token::verify(tok, &self.verify_key, now).map_err(|_| StatusCode::FORBIDDEN)?;
                lock()?.insert(hash, c.clone());
                Ok(c)
            }
        }
    }
}

/// The protocol floor's join: what musterd's join must do by design, without a store.
async fn protocol_join(
    State(f): State<Arc<Floor>>,
    Extension(here): Extension<Arc<JoinedHere>>,
    body: Bytes,
) -> Result<Json<Bundle>, StatusCode> {
    let req: JoinRequest = serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let now = time::OffsetDateTime::now_utc();
    let t = now.unix_timestamp() as u64;
    let claims = f.verify(req.token.expose(), t)?;
    let roles = token::grant_roles(&claims, &req.roles).map_err(|_| StatusCode::FORBIDDEN)?;
    let allowed = pki::host_sans(&req.host.hostname, &req.host.addresses);
    let transport =
        pki::check_csr(&req.transport_csr, &allowed).map_err(|_| StatusCode::BAD_REQUEST)?;
    let http = pki::check_csr(&req.http_csr, &allowed).map_err(|_| StatusCode::BAD_REQUEST)?;
    let node_id = uuid::Uuid::now_v7().to_string();
    let leaf = Leaf {
        common_name: node_id.clone(),
        sans: allowed,
        coordinator: false,
        validity: time::Duration::days(90),
    };
    let internal = |_| StatusCode::INTERNAL_SERVER_ERROR;
    let tcert =
        f.ca.sign(&transport.public_key, &leaf, now)
            .map_err(internal)?;
    let hcert = f
        .http_ca
        .sign(&http.public_key, &leaf, now)
        .map_err(internal)?;
    let psk = ring::hmac::sign(&f.psk_key, node_id.as_bytes());
    f.joined
        .lock()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .insert(node_id.clone(), transport.spki_der);
    here.set(&node_id);
    Ok(Json(Bundle {
        node_id,
        psk: token::Secret::new(URL_SAFE_NO_PAD.encode(psk.as_ref())),
        roles,
        pending_roles: vec![],
        token_id: claims.sub,
        transport_ca_pem: f.ca.cert_pem.clone(),
        http_ca_pem: f.http_ca.cert_pem.clone(),
        transport_cert_pem: tcert.pem,
        http_cert_pem: hcert.pem,
        coordinators: vec![],
        remaining_seconds: 600,
        issued_at: t,
        cert_not_after: tcert.not_after.min(hcert.not_after),
    }))
}

/// The protocol floor's commit: the PSK, and the joined key held by the join's connection or
/// proven by the commit's signature.
async fn protocol_commit(
    State(f): State<Arc<Floor>>,
    Extension(here): Extension<Arc<JoinedHere>>,
    body: Bytes,
) -> Result<Json<CommitReply>, StatusCode> {
    let req: CommitRequest = serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let spki = f
        .joined
        .lock()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .remove(&req.node_id)
        .ok_or(StatusCode::NOT_FOUND)?;
    let psk_ok = URL_SAFE_NO_PAD
        .decode(req.psk.expose())
        .is_ok_and(|tag| ring::hmac::verify(&f.psk_key, req.node_id.as_bytes(), &tag).is_ok());
    let proof = STANDARD
        .decode(&req.proof)
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    // The PSK first, as musterd: a wrong one costs an HMAC, not a signature check.
    if !psk_ok
        || !(here.is(&req.node_id)
            || pki::verify_proof(
                &spki,
                &commit_message(&req.node_id, req.psk.expose()),
                &proof,
            ))
    {
        return Err(StatusCode::FORBIDDEN);
    }
    Ok(Json(CommitReply {
        node_id: req.node_id,
        registered: true,
        connected: true,
    }))
}
