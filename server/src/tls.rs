//! TLS for both listeners: the provider and its tuning, the coordinator's serving certificate
//! (issued from the HTTP CA, renewed while it runs) and the director's, issued ahead of time.

use crate::app::App;
use crate::pki::Leaf;
use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// The TLS provider every listener uses: ring, with AES-128-GCM/SHA-256 first (SHA-256 runs in
/// hardware on current x86 and ARM CPUs, SHA-384 does not), then the rest of ring's defaults.
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// What every listener sets on its TLS config: the server's cipher suite order, and no session
/// tickets: nothing would use them (an installer is a new process each time; the agent builds
/// a new client for each heartbeat, from the certificates on disk then).
pub fn tune(cfg: &mut rustls::ServerConfig) {
    cfg.ignore_client_order = true;
    cfg.send_tls13_tickets = 0;
}

/// How long a serving certificate is valid.
const SERVING_VALIDITY: time::Duration = time::Duration::days(30);
/// A serving certificate this old is issued again: a third of its life, so a coordinator that
/// runs for months keeps a valid one, and hosts whose clocks are days off still accept it.
const SERVING_RENEW_AFTER: u64 = 10 * 86_400;

/// The coordinator's serving certificate, over the data folder's serving key, from the HTTP CA,
/// marked as a coordinator's and naming what [`App::own_names`] gives; issued again once it is
/// [`SERVING_RENEW_AFTER`] old or those names changed, without a restart (every handshake asks
/// this for the current one).
pub struct ServingCert {
    current: std::sync::RwLock<Issued>,
}

/// A serving certificate with its chain and key, when it was issued (unix seconds) and the
/// names it was issued for.
pub(crate) struct Issued {
    key: Arc<rustls::sign::CertifiedKey>,
    at: u64,
    names: Vec<String>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServingCert")
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

impl ServingCert {
    pub fn new(app: &App) -> anyhow::Result<Arc<ServingCert>> {
        Ok(Arc::new(ServingCert {
            current: std::sync::RwLock::new(issue(app, app.now())?),
        }))
    }

    /// Issues the certificate again if the current one is due at `now` or no longer names
    /// what this coordinator answers on; whether it did.
    pub fn renew_if_due(&self, app: &App, now: u64) -> anyhow::Result<bool> {
        let (due, names_changed) = {
            let c = self
                .current
                .read()
                .map_err(|_| anyhow::anyhow!("serving certificate lock poisoned"))?;
            (
                now.saturating_sub(c.at) >= SERVING_RENEW_AFTER,
                c.names != app.own_names(),
            )
        };
        if !due && !names_changed {
            return Ok(false);
        }
        let fresh = issue(app, now)?;
        *self
            .current
            .write()
            .map_err(|_| anyhow::anyhow!("serving certificate lock poisoned"))? = fresh;
        if names_changed {
            tracing::info!("serving certificate issued again for this coordinator's new names");
        } else {
            tracing::info!("serving certificate issued again");
        }
        Ok(true)
    }

    /// The current certificate (DER).
    #[cfg(test)]
    fn current_der(&self) -> Option<Vec<u8>> {
        let c = self.current.read().ok()?;
        c.key.cert.first().map(|d| d.to_vec())
    }
}

/// A serving certificate valid from `now`, naming what this coordinator answers on.
pub(crate) fn issue(app: &App, now: u64) -> anyhow::Result<Issued> {
    let names = app.own_names();
    let mut sans = Vec::new();
    for n in &names {
        let san = match n.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => match n.clone().try_into() {
                Ok(d) => rcgen::SanType::DnsName(d),
                Err(_) => continue,
            },
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let key = app.serving_key.key_pair();
    let leaf = Leaf {
        common_name: "musterd".into(),
        sans,
        coordinator: true,
        validity: SERVING_VALIDITY,
    };
    let at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(now)?)?;
    let cert = app.platform.http_ca.sign(key, &leaf, at)?;
    let chain = vec![
        CertificateDer::from(cert.der),
        CertificateDer::from(app.platform.http_ca.cert_der.clone()),
    ];
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = tls_provider().key_provider.load_private_key(der)?;
    Ok(Issued {
        key: Arc::new(rustls::sign::CertifiedKey::new(chain, signer)),
        at: now,
        names,
    })
}

/// Builds the TLS config: the serving certificate `cert` gives, client certificates from the
/// transport CA accepted (enrolled nodes) but not required.
pub fn tls_config(app: &App, cert: Arc<ServingCert>) -> anyhow::Result<rustls::ServerConfig> {
    listener_config(&app.platform.transport_ca.cert_der, cert)
}

/// [`tls_config`] over any certificate source and transport CA (DER): what the benchmark
/// times a handshake with.
pub fn listener_config(
    transport_ca_der: &[u8],
    cert: Arc<dyn rustls::server::ResolvesServerCert>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = tls_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(transport_ca_der.to_vec()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tune(&mut cfg);
    Ok(cfg)
}

/// The TLS config of a director: the certificate a coordinator issued it
/// (`musterd director-cert`), from its data folder. No client certificates: a director serves
/// no enrolled node.
pub fn director_tls_config(data_dir: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let cert = data_dir.join(crate::director::CERT_FILE);
    let key = data_dir.join(crate::director::KEY_FILE);
    let missing = |p: &std::path::Path| {
        format!(
            "reading {}: a director serves with a certificate a coordinator issues it; run on a \
             coordinator: musterd director-cert --address HOST:PORT --output DIR, and copy DIR's \
             files into {}",
            p.display(),
            data_dir.display()
        )
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .with_context(|| missing(&cert))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some(days) = director_cert_days_left(&chain[0], now, &cert)? {
        let say = format!(
            "{} runs out in {days} days: installers, and recovery with them, will refuse this \
             director then; issue a new one on a coordinator (musterd director-cert) while one \
             is up",
            cert.display()
        );
        eprintln!("musterd: warning: {say}");
        tracing::warn!("{say}");
    }
    let key = PrivateKeyDer::from_pem_file(&key).with_context(|| missing(&key))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(tls_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tune(&mut cfg);
    Ok(cfg)
}

/// Days left under which a director warns at start that its certificate will run out.
const DIRECTOR_CERT_WARN_DAYS: u64 = 60;

/// A director's certificate at `now`: an error once it has run out (nothing would accept it:
/// better a director that does not start than one that looks up and cannot serve a recovery),
/// the days left when they are fewer than [`DIRECTOR_CERT_WARN_DAYS`], else nothing.
fn director_cert_days_left(
    der: &[u8],
    now: u64,
    path: &std::path::Path,
) -> anyhow::Result<Option<u64>> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let until = u64::try_from(c.validity().not_after.timestamp()).unwrap_or(0);
    anyhow::ensure!(
        until > now,
        "{} has run out: installers, and recovery with them, refuse it; issue a new one on a \
         coordinator (musterd director-cert) and copy it here",
        path.display()
    );
    let days = (until - now) / 86_400;
    Ok((days < DIRECTOR_CERT_WARN_DAYS).then_some(days))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn a_director_warns_before_its_certificate_runs_out_and_stops_after() -> anyhow::Result<()> {
        let now = ::time::OffsetDateTime::now_utc();
        let ca = crate::pki::Ca::generate("ca", now)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let leaf = Leaf {
            common_name: "director".into(),
            sans: vec![],
            coordinator: true,
            validity: ::time::Duration::days(90),
        };
        let der = ca.sign(&key, &leaf, now)?.der;
        let t = now.unix_timestamp() as u64;
        let p = std::path::Path::new("director-cert.pem");
        assert_eq!(director_cert_days_left(&der, t, p)?, None);
        assert_eq!(director_cert_days_left(&der, t + 40 * 86_400, p)?, Some(50));
        let err = director_cert_days_left(&der, t + 91 * 86_400, p).err();
        assert!(err.is_some_and(|e| e.to_string().contains("has run out")));
        Ok(())
    }

    /// A coordinator that runs for months keeps a valid serving certificate: it is issued again
    /// once it is ten days old, without a restart.
    #[tokio::test]
    async fn the_serving_certificate_is_issued_again_before_it_runs_out() -> anyhow::Result<()> {
        use x509_parser::prelude::*;
        let dir = tempfile::tempdir()?;
        let (_, app) = crate::app::test_app(dir.path()).await?;
        let cert = ServingCert::new(&app)?;
        let first = cert.current_der().unwrap_or_default();
        let now = app.now();
        assert!(!cert.renew_if_due(&app, now + SERVING_RENEW_AFTER - 1)?);
        assert_eq!(cert.current_der().unwrap_or_default(), first);
        let later = now + SERVING_RENEW_AFTER;
        assert!(cert.renew_if_due(&app, later)?);
        let second = cert.current_der().unwrap_or_default();
        assert_ne!(second, first);
        let (_, parsed) = X509Certificate::from_der(&second)?;
        let from = parsed.validity().not_before.timestamp();
        let until = parsed.validity().not_after.timestamp();
        assert!(from <= later as i64 && from > now as i64, "{from}");
        assert_eq!(until - from, SERVING_VALIDITY.whole_seconds() + 300);
        // Not again until it is due again.
        assert!(!cert.renew_if_due(&app, later + 1)?);
        Ok(())
    }

    /// A coordinator whose addresses change (DHCP, a new interface) publishes the new ones for
    /// the other coordinators and is certified for them at once, not at its next restart.
    #[tokio::test]
    async fn the_serving_certificate_follows_the_coordinators_addresses() -> anyhow::Result<()> {
        use x509_parser::prelude::*;
        let dir = tempfile::tempdir()?;
        let (store, app) = crate::app::test_app(dir.path()).await?;
        app.publish_names().await?;
        let cert = ServingCert::new(&app)?;
        let now = app.now();
        let ips = |der: &[u8]| -> anyhow::Result<Vec<std::net::IpAddr>> {
            let (_, c) = X509Certificate::from_der(der)?;
            let mut out = Vec::new();
            if let Some(san) = c.subject_alternative_name()? {
                for n in &san.value.general_names {
                    if let GeneralName::IPAddress(b) = n {
                        out.extend(crate::pki::ip_from_bytes(b));
                    }
                }
            }
            Ok(out)
        };
        let new_ip: std::net::IpAddr = "192.0.2.77".parse()?;
        assert!(!ips(&cert.current_der().unwrap_or_default())?.contains(&new_ip));
        // Nothing changed: nothing published, nothing issued.
        assert!(!app.names.set_own(app.own_names()).await?);
        assert!(!cert.renew_if_due(&app, now + 1)?);

        let mut names = app.own_names();
        names.push(new_ip.to_string());
        // One read is not enough (it may be an odd one); two in a row are.
        assert!(!app.names.read(names.clone()).await?);
        assert!(!cert.renew_if_due(&app, now + 1)?);
        assert!(app.names.read(names.clone()).await?);
        assert!(store
            .coordinator_names()
            .await?
            .contains(&new_ip.to_string()));
        assert!(cert.renew_if_due(&app, now + 1)?);
        assert!(ips(&cert.current_der().unwrap_or_default())?.contains(&new_ip));
        assert!(!cert.renew_if_due(&app, now + 2)?);

        // The address goes away again: no longer published, no longer certified.
        names.retain(|n| n != &new_ip.to_string());
        assert!(app.names.set_own(names).await?);
        assert!(!store
            .coordinator_names()
            .await?
            .contains(&new_ip.to_string()));
        assert!(cert.renew_if_due(&app, now + 3)?);
        assert!(!ips(&cert.current_der().unwrap_or_default())?.contains(&new_ip));
        Ok(())
    }
}
