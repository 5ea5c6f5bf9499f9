//! Talking to coordinators: TLS pinned to the CA public keys the token carries, the
//! coordinator check, retries with capped exponential backoff and jitter, failover across
//! coordinator addresses, and the clock-skew check.

use crate::exit::{Exit, Failure, Result};
use muster_protocol::{ApiErrorBody, ErrorCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Accepts a server certificate only if it chains to a CA whose public-key pin is one of
/// `pins`, and is marked as a coordinator's (`O=Muster, OU=coordinator`).
///
/// The host name is not what is trusted here, the pin is (as kubeadm's token discovery): a
/// coordinator reached by an address its certificate does not list still passes, as long as
/// the chain and the mark check out.
#[derive(Debug)]
pub struct PinnedVerifier {
    pins: Vec<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Why the last handshake was refused, for a clear error.
    pub refusal: Arc<Mutex<Option<String>>>,
    /// Check the chain at a time inside the server certificate's validity instead of this
    /// host's clock: only for reading a coordinator's clock when this host's is suspect.
    ignore_clock: bool,
}

impl PinnedVerifier {
    pub fn new(pins: Vec<String>) -> Self {
        PinnedVerifier {
            pins,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            refusal: Arc::new(Mutex::new(None)),
            ignore_clock: false,
        }
    }

    fn refuse(&self, why: String) -> rustls::Error {
        if let Ok(mut r) = self.refusal.lock() {
            *r = Some(why.clone());
        }
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    }
}

/// A moment inside a certificate's validity (a minute after its start).
fn valid_time_of(der: &[u8]) -> Option<UnixTime> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(der).ok()?;
    let start = u64::try_from(c.validity().not_before.timestamp()).ok()?;
    Some(UnixTime::since_unix_epoch(Duration::from_secs(start + 60)))
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(anchor) = intermediates.iter().find(|c| {
            muster_protocol::cert::spki_pin_of_cert(c).is_some_and(|p| self.pins.contains(&p))
        }) else {
            return Err(self.refuse(format!(
                "the coordinator's certificate chain has no CA with a pinned public key (pins: {})",
                self.pins.join(", ")
            )));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| self.refuse(format!("pinned CA certificate is unusable: {e}")))?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| self.refuse(format!("building the verifier: {e}")))?;
        let now = if self.ignore_clock {
            valid_time_of(end_entity).unwrap_or(now)
        } else {
            now
        };
        match webpki.verify_server_cert(end_entity, &[], server_name, ocsp, now) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet
                | CertificateError::Expired
                | CertificateError::NotValidYetContext { .. }
                | CertificateError::ExpiredContext { .. },
            )) => {
                return Err(self.refuse(
                    "the coordinator's certificate is not valid at this host's time: check this host's clock (NTP)".into(),
                ))
            }
            // The chain verified (names are checked last); the pin is the trust anchor.
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => {}
            Err(e) => {
                return Err(self.refuse(format!(
                    "the coordinator's certificate does not verify against the pinned CA: {e}"
                )))
            }
        }
        if !muster_protocol::cert::is_coordinator_cert(end_entity) {
            return Err(self.refuse(
                "the server's certificate is signed by the pinned CA but is not a coordinator's (it belongs to an ordinary node)".into(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client for one or more coordinators.
pub struct Client {
    http: reqwest::Client,
    coordinators: Vec<String>,
    refusal: Arc<Mutex<Option<String>>>,
    deadline: Instant,
    /// Prints retry notices for a person.
    pub verbose: bool,
}

/// A client certificate for mutual TLS: PEM chain and PEM key.
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
}

impl Client {
    pub fn new(
        coordinators: Vec<String>,
        pins: Vec<String>,
        identity: Option<&ClientIdentity>,
        timeout: Duration,
    ) -> Result<Client> {
        Client::with_verifier(coordinators, PinnedVerifier::new(pins), identity, timeout)
    }

    /// A client for reading coordinators' clocks only: the pin and the coordinator mark are
    /// checked, but at a time inside the server certificate's validity, since this host's
    /// clock is what is in doubt. Nothing secret is sent with it.
    pub fn clock_probe(coordinators: Vec<String>, pins: Vec<String>) -> Result<Client> {
        let verifier = PinnedVerifier {
            ignore_clock: true,
            ..PinnedVerifier::new(pins)
        };
        Client::with_verifier(coordinators, verifier, None, Duration::from_secs(5))
    }

    fn with_verifier(
        coordinators: Vec<String>,
        verifier: PinnedVerifier,
        identity: Option<&ClientIdentity>,
        timeout: Duration,
    ) -> Result<Client> {
        let refusal = verifier.refusal.clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::new(Exit::Other, format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut tls = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => {
                use rustls::pki_types::pem::PemObject;
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| {
                            Failure::new(Exit::Other, format!("reading the node certificate: {e}"))
                        })?;
                let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                    .map_err(|e| Failure::new(Exit::Other, format!("reading the node key: {e}")))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    Failure::new(Exit::Other, format!("loading the node certificate: {e}"))
                })?
            }
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .hickory_dns(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .user_agent(concat!("muster/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::new(Exit::Other, format!("HTTP client setup: {e}")))?;
        Ok(Client {
            http,
            coordinators,
            refusal,
            deadline: deadline_after(timeout),
            verbose: false,
        })
    }

    /// Gives the next calls `timeout` from now: a step of its own (the commit) does not make do
    /// with what an earlier one (a join that waited for the network) left over.
    pub fn restart_clock(&mut self, timeout: Duration) {
        self.deadline = deadline_after(timeout);
    }

    /// POSTs `body` to `path`, trying each coordinator in turn and backing off while none
    /// answers, until the deadline. A refusal that cannot change is returned at once.
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
    ) -> Result<R> {
        let mut attempt: u32 = 0;
        let mut last = String::from("no coordinator address to try");
        loop {
            for i in 0..self.coordinators.len() {
                let coord = self.coordinators[i].clone();
                match self.try_post(&coord, path, body).await {
                    Ok(r) => {
                        // The coordinator that answered goes first next time (the commit rides
                        // the join's connection).
                        self.coordinators.swap(0, i);
                        return Ok(r);
                    }
                    Err(Attempt::Final(f)) => return Err(f),
                    Err(Attempt::Retry(why)) => {
                        if self.verbose {
                            eprintln!("  {coord}: {why}");
                        }
                        last = format!("{coord}: {why}");
                    }
                }
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Err(Failure::new(
                    Exit::Unreachable,
                    format!("no coordinator answered before the timeout (last: {last}); check the address and the network, then run again (or raise --timeout)"),
                ));
            }
            let delay = backoff(attempt, rand::random::<f64>()).min(self.deadline - now);
            if self.verbose {
                eprintln!("  retrying in {:.1}s", delay.as_secs_f64());
            }
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// The coordinator that answered last (the first given, before any answer).
    pub fn current(&self) -> Option<&str> {
        self.coordinators.first().map(String::as_str)
    }

    /// This host's clock minus a coordinator's (from its `Date` header), asking each in turn
    /// once; none if none answers.
    pub async fn probe_skew(&self) -> Option<i64> {
        for coord in &self.coordinators {
            let resp = self
                .http
                .get(format!("https://{coord}/healthz"))
                .send()
                .await;
            if let Some(date) = resp.ok().and_then(|r| {
                r.headers()
                    .get(reqwest::header::DATE)
                    .and_then(|d| d.to_str().ok())
                    .and_then(|d| httpdate::parse_http_date(d).ok())
            }) {
                return Some(clock_skew(date));
            }
        }
        None
    }

    async fn try_post<B: Serialize, R: DeserializeOwned>(
        &self,
        coord: &str,
        path: &str,
        body: &B,
    ) -> std::result::Result<R, Attempt> {
        let url = format!("https://{coord}{path}");
        if let Ok(mut r) = self.refusal.lock() {
            *r = None;
        }
        let resp = match self.http.post(&url).json(body).send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(why) = self.refusal.lock().ok().and_then(|mut r| r.take()) {
                    return Err(Attempt::Final(Failure::new(
                        Exit::PinMismatch,
                        format!("refusing {coord}: {why}. The token pins the platform's CA; this server is not that platform's coordinator, or someone is in between. Check --coordinator-host."),
                    )));
                }
                return Err(Attempt::Retry(describe(&e)));
            }
        };
        let status = resp.status();
        let skew = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .map(clock_skew);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Attempt::Retry(describe(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Attempt::Final(Failure::new(
                    Exit::Other,
                    format!("{coord} answered {path} with a body that does not parse: {e}"),
                ))
            });
        }
        let body: Option<ApiErrorBody> = serde_json::from_slice(&bytes).ok();
        let code = body.as_ref().and_then(|b| b.code());
        let message = body
            .as_ref()
            .map(|b| b.message().to_string())
            .unwrap_or_else(|| format!("HTTP {status}"));
        if status.is_server_error()
            || status.as_u16() == 429
            || code.is_some_and(|c| c.is_retryable())
        {
            return Err(Attempt::Retry(format!("{status}: {message}")));
        }
        let exit = match code {
            Some(ErrorCode::TokenRole)
            | Some(ErrorCode::TokenEmergencyAllocator)
            | Some(ErrorCode::RecoveryRole)
            | Some(ErrorCode::HostReplaceRoles) => Exit::RoleNotAllowed,
            Some(c)
                if c.as_str().starts_with("token.")
                    || c == ErrorCode::DirectorOnly
                    || c == ErrorCode::RecoveryToken =>
            {
                Exit::TokenRefused
            }
            Some(ErrorCode::NodeUnknown) | Some(ErrorCode::NodeCertRequired) => Exit::NotEnrolled,
            _ => Exit::Other,
        };
        let mut message = match code {
            Some(c) => format!("{coord} refused: {message} ({})", c.as_str()),
            None => format!("{coord} refused: {message}"),
        };
        if let (Some(ErrorCode::TokenExpired | ErrorCode::TokenNotYetValid), Some(note)) =
            (code, skew.and_then(skew_note))
        {
            message.push_str(&note);
        }
        let mut f = Failure::new(exit, message);
        f.code = code.map(|c| c.as_str().to_string());
        Err(Attempt::Final(f))
    }
}

/// `timeout` from now. A timeout too long to add to the clock (`--timeout` in the billions of
/// years) means no deadline worth the name: a century.
fn deadline_after(timeout: Duration) -> Instant {
    Instant::now()
        .checked_add(timeout)
        .or_else(|| Instant::now().checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or_else(Instant::now)
}

enum Attempt {
    Retry(String),
    Final(Failure),
}

/// What to say about a clock difference beyond the tokens' leeway; nothing within it.
pub fn skew_note(skew: i64) -> Option<String> {
    let leeway = muster_protocol::token::LEEWAY_SECS;
    (skew.unsigned_abs() > leeway).then(|| {
        format!(
            "; this host's clock is {}s {} the coordinator's (more than the {leeway}s allowed): fix the clock (NTP) and run again",
            skew.unsigned_abs(),
            if skew > 0 { "ahead of" } else { "behind" },
        )
    })
}

/// This host's clock minus the coordinator's, in seconds.
fn clock_skew(server: std::time::SystemTime) -> i64 {
    let now = std::time::SystemTime::now();
    match now.duration_since(server) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(&format!(": {x}"));
        src = x.source();
    }
    s
}

/// Capped exponential backoff with full jitter: 0.5 s doubling to 15 s, times `jitter` in
/// [0.5, 1).
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = 0.5 * 2f64.powi(attempt.min(10) as i32);
    Duration::from_secs_f64(base.min(15.0) * (0.5 + jitter.clamp(0.0, 1.0) / 2.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commit gets a full `--timeout` of its own after a join that used up the first one.
    #[test]
    fn a_later_step_gets_a_timeout_of_its_own() -> Result<()> {
        let mut c = Client::new(vec!["c:1".into()], vec![], None, Duration::ZERO)?;
        assert!(c.deadline <= Instant::now());
        c.restart_clock(Duration::from_secs(60));
        assert!(c.deadline > Instant::now() + Duration::from_secs(50));
        c.restart_clock(Duration::MAX);
        assert!(c.deadline > Instant::now() + Duration::from_secs(50 * 365 * 86_400));
        Ok(())
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(30, 1.0), Duration::from_secs(15));
        assert!(backoff(30, 0.0) >= Duration::from_secs_f64(7.5));
    }
}
