//! smallstep's step-ca as the storm's second peer: the server an operator would pick instead
//! of Muster for "a one-time token and a CSR in, a certificate out" (`POST /1.0/sign` with
//! `{"csr", "ott"}`, the token a JWT signed by a JWK provisioner, each token usable once).
//!
//! Built from Debian's Go sources by `bench/stepca/build.sh` (see bench/stepca/README.md).
//! Configured as a user would deploy it: a root and an intermediate CA (P-256), one JWK
//! provisioner, and the badger database that remembers used tokens (`step ca init`'s
//! default), in a fresh directory per run.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;
use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The provisioner's name: the tokens' issuer.
const PROVISIONER: &str = "muster-bench";

/// What an installer needs to mint step-ca tokens: the provisioner's key and where tokens go.
pub struct Minter {
    key: jsonwebtoken::EncodingKey,
    kid: String,
    /// `https://127.0.0.1:PORT/1.0/sign`: the audience step-ca checks.
    aud: String,
}

impl Minter {
    /// A one-time token for a certificate naming `host`: ES256, valid five minutes, its own
    /// `jti`.
    pub fn token(&self, host: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = serde_json::json!({
            "iss": PROVISIONER,
            "aud": self.aud,
            "sub": host,
            "sans": [host],
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

/// The step-ca binary `bench/stepca/build.sh` makes, if it is there.
pub fn binary() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    // target/release/muster-storm → target/stepca/step-ca
    let p = me.parent()?.parent()?.join("stepca/step-ca");
    p.exists().then_some(p)
}

/// Makes the CA, the provisioner and `ca.json` in `dir` and starts step-ca on `port` (through
/// `wrap`, which pins it to the servers' core); the process, the minter, and the DER of the
/// root CA its TLS certificate chains to. Tokens must be minted after this returns: step-ca refuses
/// any issued before it started.
pub async fn start(
    step_ca: &Path,
    dir: &Path,
    port: u16,
    wrap: impl Fn(&Path) -> Command,
) -> anyhow::Result<(Child, Minter, Vec<u8>)> {
    let (root, inter, inter_key) = cas()?;
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    let path = |n: &str| certs.join(n);
    std::fs::write(path("root_ca.crt"), root.pem())?;
    std::fs::write(path("intermediate_ca.crt"), inter.pem())?;
    std::fs::write(path("intermediate_ca_key"), inter_key.serialize_pem())?;
    let root_der = root.der().to_vec();

    // The provisioner: a P-256 key, its public half as a JWK.
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
        .map_err(|_| anyhow::anyhow!("making the provisioner key"))?;
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("loading the provisioner key"))?;
    let point = ring::signature::KeyPair::public_key(&pair).as_ref();
    anyhow::ensure!(point.len() == 65, "a P-256 point is 65 bytes");
    let (x, y) = (B64U.encode(&point[1..33]), B64U.encode(&point[33..65]));
    let kid = "bench".to_string();
    let config = serde_json::json!({
        "root": path("root_ca.crt"),
        "federatedRoots": null,
        "crt": path("intermediate_ca.crt"),
        "key": path("intermediate_ca_key"),
        "address": format!("127.0.0.1:{port}"),
        "insecureAddress": "",
        "dnsNames": ["127.0.0.1"],
        "logger": {"format": "text"},
        "db": {"type": "badgerv2", "dataSource": dir.join("db")},
        "authority": {"provisioners": [{
            "type": "JWK", "name": PROVISIONER,
            "key": {"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256",
                    "x": x, "y": y}
        }]},
        "tls": {
            "cipherSuites": ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                             "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
            "minVersion": 1.2, "maxVersion": 1.3, "renegotiation": false
        }
    });
    let ca_json = dir.join("ca.json");
    std::fs::write(&ca_json, serde_json::to_vec_pretty(&config)?)?;
    let child = wrap(step_ca)
        .arg(&ca_json)
        .env("STEPPATH", dir.join("step"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("step-ca.log"))?)
        .spawn()?;
    crate::wait_port(port).await?;
    // Listening is not serving yet: the first token must come after its start time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let minter = Minter {
        key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
        kid,
        aud: format!("https://127.0.0.1:{port}/1.0/sign"),
    };
    Ok((child, minter, root_der))
}

/// A root CA and an intermediate it signs (P-256, ten years), with the intermediate's key.
fn cas() -> anyhow::Result<(rcgen::Certificate, rcgen::Certificate, KeyPair)> {
    let ca = |name: &str, depth: u8| -> anyhow::Result<CertificateParams> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(depth));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(1);
        p.not_after = now + time::Duration::days(3650);
        Ok(p)
    };
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let root = ca("Muster bench step root CA", 1)?.self_signed(&root_key)?;
    let inter_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let inter =
        ca("Muster bench step intermediate CA", 0)?.signed_by(&inter_key, &root, &root_key)?;
    Ok((root, inter, inter_key))
}
