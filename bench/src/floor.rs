//! The floor: the least an enrollment server can do per request, built from the crates musterd
//! uses. One TLS handshake (rustls), one token verification (EdDSA, `muster_protocol::token`),
//! one CSR check (`musterd::pki::check_csr`), one certificate signature (`musterd::pki::Ca`);
//! no store, no second certificate, no commit.

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use hyper_util::rt::TokioIo;
use muster_protocol::node::JoinRequest;
use muster_protocol::token::{self, Claims, TokenKind};
use musterd::pki::{self, Ca, Leaf};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

struct Floor {
    ca: Ca,
    verify_key: Vec<u8>,
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
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("generating the token key"))?;
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("loading the token key"))?;
    let verify_key = ring::signature::KeyPair::public_key(&kp).as_ref().to_vec();
    let t = now.unix_timestamp() as u64;
    let claims = Claims {
        sub: "floor".into(),
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
    let tok = token::sign(&claims, pkcs8.as_ref()).context("signing the floor's token")?;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let leaf = Leaf {
        common_name: "floor".into(),
        sans: vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())],
        coordinator: true,
        validity: time::Duration::days(1),
    };
    let cert = ca.sign(&key, &leaf, now)?;
    let chain = vec![
        CertificateDer::from(cert.der),
        CertificateDer::from(ca.cert_der.clone()),
    ];
    // The same TLS choices as musterd's listener, so the comparison is of the work done.
    let mut cfg = rustls::ServerConfig::builder_with_provider(musterd::serve::tls_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    musterd::serve::tune(&mut cfg);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

    let pins = vec![ca.pin()];
    let router = Router::new()
        .route("/join", post(join))
        .with_state(Arc::new(Floor { ca, verify_key }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let ready = Ready {
        port: listener.local_addr()?.port(),
        token: tok,
        pins,
    };
    std::fs::write(dir.join("ready.json"), serde_json::to_vec(&ready)?)?;
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
            let svc = hyper_util::service::TowerToHyperService::new(
                router.map_request(|r: axum::extract::Request<hyper::body::Incoming>| r),
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
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
