//! The load generator: N simulated installers, each on its own TLS connection from its own
//! loopback address, doing the real protocol against one of the targets.

use muster::install::Key;
use muster::net::PinnedVerifier;
use muster_protocol::node::{
    commit_message, Bundle, CommitReply, CommitRequest, HostFacts, JoinRequest,
};
use muster_protocol::paths;
use muster_protocol::token::Secret;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the installers talk to.
#[derive(Clone)]
pub enum Target {
    /// musterd: join, then commit on the same connection.
    Muster { base: String, token: String },
    /// Several coordinators of one platform: each installer enrolls through one of them,
    /// chosen by its host name, as a fleet given every coordinator's address spreads.
    Spread { bases: Vec<String>, token: String },
    /// The floor server: one request, one handshake, one token check, one CSR check, one
    /// signature.
    Floor { base: String, token: String },
    /// `cfssl serve`: one authenticated sign request (HMAC-SHA256 over the request).
    Cfssl { base: String, auth_key: Vec<u8> },
    /// step-ca: one sign request with a one-time token (an ES256 JWT) minted for it.
    StepCa {
        base: String,
        minter: Arc<crate::stepca::Minter>,
    },
}

/// One installer's material, made before the clock starts: fresh keys and CSRs.
pub struct Prepared {
    hostname: String,
    tkey: Key,
    transport_csr: String,
    http_csr: String,
}

/// Makes `n` installers' keys and CSRs, host names `{prefix}-{i}`.
pub fn prepare(prefix: &str, n: usize) -> anyhow::Result<Vec<Prepared>> {
    (0..n)
        .map(|i| prepare_one(&format!("{prefix}-{i}")))
        .collect()
}

fn prepare_one(hostname: &str) -> anyhow::Result<Prepared> {
    let tkey = Key::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let hkey = Key::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let transport_csr = tkey
        .csr(hostname, &[])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let http_csr = hkey
        .csr(hostname, &[])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Prepared {
        hostname: hostname.to_string(),
        tkey,
        transport_csr,
        http_csr,
    })
}

/// Full TLS handshakes made by every installer so far: each checks the server's certificate.
pub static FULL_HANDSHAKES: AtomicU64 = AtomicU64::new(0);
/// Session tickets (TLS 1.3) and sessions (TLS 1.2) servers offered for resumption, all
/// declined.
pub static TICKETS_DECLINED: AtomicU64 = AtomicU64::new(0);
/// The TLS client config every installer uses: pinned to the target's CA, as `muster` is, and
/// with no session kept, so every connection is a full handshake as a new host's is (clients
/// cloned from one config would otherwise share its session store and resume).
pub fn tls(pins: Vec<String>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client(Arc::new(PinnedVerifier::new(pins)))
}

/// [`tls`] for a server that is no coordinator: its chain checked up to `root` (DER), as any
/// TLS client checks one, instead of to a pin and the coordinator's mark.
pub fn tls_to_root(root: Vec<u8>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(root))?;
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()?;
    client(webpki)
}

fn client(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Counting(verifier);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::store(Arc::new(NoSessions));
    Ok(Arc::new(cfg))
}

/// A certificate verifier that counts the full handshakes it checks.
#[derive(Debug)]
struct Counting(Arc<dyn rustls::client::danger::ServerCertVerifier>);

impl rustls::client::danger::ServerCertVerifier for Counting {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        FULL_HANDSHAKES.fetch_add(1, Ordering::Relaxed);
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A session store that keeps nothing: what servers offer is counted and dropped.
#[derive(Debug)]
struct NoSessions;

impl rustls::client::ClientSessionStore for NoSessions {
    fn set_kx_hint(&self, _: rustls::pki_types::ServerName<'static>, _: rustls::NamedGroup) {}

    fn kx_hint(&self, _: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        None
    }

    fn set_tls12_session(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
        TICKETS_DECLINED.fetch_add(1, Ordering::Relaxed);
    }

    fn tls12_session(
        &self,
        _: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &rustls::pki_types::ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        _: rustls::client::Tls13ClientSessionValue,
    ) {
        TICKETS_DECLINED.fetch_add(1, Ordering::Relaxed);
    }

    fn take_tls13_ticket(
        &self,
        _: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        None
    }
}

/// Installer `w`'s source address: one per concurrent installer, as if each were its own
/// host (127.20.0.1, 127.20.0.2, …).
fn source(w: usize) -> IpAddr {
    IpAddr::from([
        127,
        20 + (w / 62_500) as u8,
        ((w / 250) % 250) as u8,
        (w % 250 + 1) as u8,
    ])
}

/// What one storm measured on the client side.
#[derive(Default)]
pub struct Run {
    pub ok: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub wall: Duration,
    /// Sorted latencies of the successful enrollments.
    pub latencies: Vec<Duration>,
}

impl Run {
    /// Counts one installer: its latency, or why it failed.
    fn add(&mut self, outcome: Result<Duration, String>) {
        match outcome {
            Ok(took) => self.latencies.push(took),
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Adds what another part of the same storm counted.
    fn merge(&mut self, other: Run) {
        self.latencies.extend(other.latencies);
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// The storm is over after `wall`: the successes counted, their latencies sorted.
    fn finish(mut self, wall: Duration) -> Run {
        self.wall = wall;
        self.ok = self.latencies.len();
        self.latencies.sort();
        self
    }

    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }
}

/// How the installers come.
#[derive(Clone, Copy)]
pub enum Load {
    /// This many in flight at all times (closed loop): as one ends the next begins, so the
    /// server always has a queue.
    Concurrent(usize),
    /// Each on its own schedule, at this many per second on average (open loop, exponential
    /// gaps, as independent hosts booting): a fleet coming up over a while. Latency counts
    /// from each host's arrival.
    Arrivals(f64),
}

/// Runs `work.len()` enrollments, the installers coming as `load` says.
pub async fn storm(
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
    load: Load,
    work: Arc<Vec<Prepared>>,
) -> Run {
    match load {
        Load::Concurrent(c) => closed(target, tls, c, work).await,
        Load::Arrivals(rate) => open(target, tls, rate, work).await,
    }
}

/// `work.len()` enrollments with `concurrency` installers in flight.
async fn closed(
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
    concurrency: usize,
    work: Arc<Vec<Prepared>>,
) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency.min(work.len()) {
        let (target, tls, work, next) = (target.clone(), tls.clone(), work.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut part = Run::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = work.get(i) else { break };
                let t0 = Instant::now();
                let outcome = once(&target, &tls, source(w), p).await;
                part.add(outcome.map(|()| t0.elapsed()).map_err(|e| format!("{e:#}")));
            }
            part
        }));
    }
    let mut run = Run::default();
    for t in tasks {
        match t.await {
            Ok(part) => run.merge(part),
            Err(e) => run.add(Err(e.to_string())),
        }
    }
    run.finish(start.elapsed())
}

/// `work.len()` enrollments arriving at `rate` per second on average.
async fn open(
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
    rate: f64,
    work: Arc<Vec<Prepared>>,
) -> Run {
    use rand::Rng;
    let start = tokio::time::Instant::now();
    let mut at = start;
    let mut tasks = Vec::new();
    let mut rng = rand::thread_rng();
    for i in 0..work.len() {
        // Exponential gaps: the arrivals of independent hosts (a Poisson process).
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        at += Duration::from_secs_f64(-u.ln() / rate.max(1e-9));
        let (target, tls, work) = (target.clone(), tls.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let result = match work.get(i) {
                Some(p) => once(&target, &tls, source(i), p).await,
                None => Err(anyhow::anyhow!("no installer {i}")),
            };
            result.map(|()| at.elapsed()).map_err(|e| format!("{e:#}"))
        }));
    }
    let mut run = Run::default();
    for t in tasks {
        run.add(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    run.finish(start.elapsed())
}

/// One installer: a new client (so a new connection and TLS handshake), then the requests.
async fn once(
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
    from: IpAddr,
    p: &Prepared,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((**tls).clone())
        .local_address(from)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(120))
        .build()?;
    let host = HostFacts {
        hostname: p.hostname.clone(),
        addresses: vec![],
        memory_mb: 4096,
        zone: String::new(),
    };
    match target {
        Target::Muster { base, token } => muster(&http, base, token, host, p).await?,
        Target::Spread { bases, token } => {
            let pick = p
                .hostname
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
            let base = bases
                .get(pick % bases.len().max(1))
                .ok_or_else(|| anyhow::anyhow!("no coordinator to enroll through"))?;
            muster(&http, base, token, host, p).await?
        }
        Target::Floor { base, token } => {
            let join = JoinRequest {
                token: Secret::new(token.as_str()),
                transport_csr: p.transport_csr.clone(),
                http_csr: String::new(),
                host,
                roles: vec![],
            };
            ok(http.post(format!("{base}/join")).json(&join)).await?;
        }
        Target::Cfssl { base, auth_key } => {
            use base64::engine::general_purpose::STANDARD;
            use base64::Engine;
            let request = serde_json::to_vec(&serde_json::json!({
                "certificate_request": p.transport_csr,
                "hosts": [p.hostname],
            }))?;
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, auth_key);
            let tag = ring::hmac::sign(&key, &request);
            let body = serde_json::json!({
                "token": STANDARD.encode(tag.as_ref()),
                "request": STANDARD.encode(&request),
            });
            let v: serde_json::Value = ok(http
                .post(format!("{base}/api/v1/cfssl/authsign"))
                .json(&body))
            .await?
            .json()
            .await?;
            anyhow::ensure!(v["success"] == true, "cfssl: {v}");
        }
        Target::StepCa { base, minter } => {
            let body = serde_json::json!({
                "csr": p.transport_csr,
                "ott": minter.token(&p.hostname)?,
            });
            let v: serde_json::Value = ok(http.post(format!("{base}/1.0/sign")).json(&body))
                .await?
                .json()
                .await?;
            anyhow::ensure!(v["crt"].is_string(), "step-ca: {v}");
        }
    }
    Ok(())
}

/// One installer of musterd's protocol through `base`: join, then commit on the same
/// connection.
async fn muster(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    host: HostFacts,
    p: &Prepared,
) -> anyhow::Result<()> {
    let join = JoinRequest {
        token: Secret::new(token),
        transport_csr: p.transport_csr.clone(),
        http_csr: p.http_csr.clone(),
        host,
        roles: vec![],
    };
    let b: Bundle = ok(http.post(format!("{base}{}", paths::JOIN)).json(&join))
        .await?
        .json()
        .await?;
    let proof = p
        .tkey
        .sign(&commit_message(&b.node_id, b.psk.expose()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let commit = CommitRequest {
        node_id: b.node_id.clone(),
        psk: b.psk.clone(),
        proof: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, proof),
    };
    let _: CommitReply = ok(http.post(format!("{base}{}", paths::COMMIT)).json(&commit))
        .await?
        .json()
        .await?;
    Ok(())
}

async fn ok(req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
    let r = req.send().await?;
    if !r.status().is_success() {
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        anyhow::bail!("{status}: {}", body.chars().take(300).collect::<String>());
    }
    Ok(r)
}

/// Enrolls `n` more hosts as fast as it can, keys made on the way: grows the registry between
/// measured storms. Returns how many failed.
pub async fn fill(
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (target, tls, next, prefix) = (
            target.clone(),
            tls.clone(),
            next.clone(),
            prefix.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let done = match prepare_one(&format!("{prefix}-{i}")) {
                    Ok(p) => once(&target, &tls, source(w), &p).await.is_ok(),
                    Err(_) => false,
                };
                failed += usize::from(!done);
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(0);
    }
    failed
}
