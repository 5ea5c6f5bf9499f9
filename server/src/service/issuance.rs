//! Issuance: a host's two CSRs in, its transport and HTTP certificates out. Join, renewal and
//! recovery of a coordinator all sign through here, so what a certificate may name is decided
//! in one place.

use super::names::Names;
use crate::error::ApiError;
use crate::pki::{self, Leaf, Signed};
use crate::platform::Platform;
use muster_protocol::node::HostFacts;
use muster_protocol::ErrorCode;

/// Signs hosts' certificates with the platform's CAs, leaving out what they may not name.
pub struct Issuer<'a> {
    pub platform: &'a Platform,
    pub names: &'a Names,
    pub validity: time::Duration,
}

/// A host's signed pair, with what identifies its transport key.
pub struct Issued {
    pub transport: Signed,
    pub http: Signed,
    /// SHA-256 of the transport key's SubjectPublicKeyInfo (hex): the same key across retries.
    pub key_hash: String,
    /// The transport key's SubjectPublicKeyInfo, for the proof of possession at commit.
    pub spki_der: Vec<u8>,
}

impl Issued {
    /// When the first of the two certificates runs out.
    pub fn not_after(&self) -> u64 {
        self.transport.not_after.min(self.http.not_after)
    }
}

impl Issuer<'_> {
    /// Checks both CSRs (they may name only the host's name and addresses) and signs them for
    /// `node_id`. `coordinator` marks the HTTP certificate as a coordinator's.
    pub fn issue(
        &self,
        node_id: &str,
        host: &HostFacts,
        coordinator: bool,
        transport_csr: &str,
        http_csr: &str,
        now: u64,
    ) -> Result<Issued, ApiError> {
        let allowed = pki::host_sans(&host.hostname, &host.addresses);
        let transport = pki::check_csr(transport_csr, &allowed)
            .map_err(|e| ApiError::new(e.code(), format!("transport CSR: {e}")))?;
        let http = pki::check_csr(http_csr, &allowed)
            .map_err(|e| ApiError::new(e.code(), format!("HTTP CSR: {e}")))?;
        let t = time_of(now)?;
        let tcert = self.platform.transport_ca.sign(
            &transport.public_key,
            &self.leaf(node_id, host, false),
            t,
        )?;
        let hcert = self.platform.http_ca.sign(
            &http.public_key,
            &self.http_leaf(node_id, host, coordinator),
            t,
        )?;
        Ok(Issued {
            transport: tcert,
            http: hcert,
            key_hash: transport.key_hash,
            spki_der: transport.spki_der,
        })
    }

    /// A host's leaf: its name and addresses, but no address another registered host holds
    /// (its certificate would stand in for that host's), as its name is its own.
    pub fn leaf(&self, node_id: &str, host: &HostFacts, coordinator: bool) -> Leaf {
        let mut sans = pki::host_sans(&host.hostname, &host.addresses);
        sans.retain(|s| match s {
            rcgen::SanType::IpAddress(ip) => !self.names.address_taken(ip, &host.hostname),
            _ => true,
        });
        Leaf {
            common_name: node_id.to_string(),
            sans,
            coordinator,
            validity: self.validity,
        }
    }

    /// The leaf of a host's HTTP certificate. The HTTP CA also signs the coordinators' own
    /// serving certificates, which installers and admins check against it, so a host that is
    /// not a coordinator is not certified for the names and addresses coordinators answer on,
    /// whatever it says about itself: its certificate could stand in for a coordinator's.
    pub fn http_leaf(&self, node_id: &str, host: &HostFacts, coordinator: bool) -> Leaf {
        let mut leaf = self.leaf(node_id, host, coordinator);
        if !coordinator {
            leaf.sans.retain(|s| !self.names.reserved(&pki::san_key(s)));
        }
        leaf
    }
}

/// `now` (unix seconds) as a time to sign at.
pub fn time_of(now: u64) -> Result<time::OffsetDateTime, ApiError> {
    time::OffsetDateTime::from_unix_timestamp(now as i64)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "clock out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use rcgen::{CertificateParams, KeyPair, SanType};
    use std::sync::Arc;

    fn csr(sans: &[&str]) -> anyhow::Result<String> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        for s in sans {
            p.subject_alt_names.push(match s.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(s.to_string().try_into()?),
            });
        }
        Ok(p.serialize_request(&key)?.pem()?)
    }

    fn sans(der: &[u8]) -> anyhow::Result<Vec<String>> {
        use x509_parser::prelude::*;
        let (_, cert) = parse_x509_certificate(der)?;
        let mut out = vec![];
        if let Some(ext) = cert.subject_alternative_name()? {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(d) => out.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        out.extend(crate::pki::ip_from_bytes(b).map(|ip| ip.to_string()))
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    fn host(name: &str, addresses: &[&str]) -> HostFacts {
        HostFacts {
            hostname: name.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            memory_mb: 0,
            zone: String::new(),
        }
    }

    #[tokio::test]
    async fn a_host_is_certified_for_its_own_names_but_not_a_coordinators_or_another_hosts(
    ) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(crate::store::sqlite::SqliteStore::open(
            &dir.path().join("muster.db"),
        )?);
        let (platform, _, _) = Platform::init(store.as_ref(), &[], None, 1_800_000_000).await?;
        let names = Names::new(store, "c1".into(), vec!["coord.example:12443".into()]);
        names.registered(&host("older", &["10.0.0.6"]));
        let issuer = Issuer {
            platform: &platform,
            names: &names,
            validity: time::Duration::days(3),
        };
        let web = host("web", &["10.0.0.5", "10.0.0.6", "127.0.0.1"]);
        let asked = ["web", "10.0.0.5", "10.0.0.6", "127.0.0.1"];
        let issued = issuer
            .issue(
                "n1",
                &web,
                false,
                &csr(&asked)?,
                &csr(&asked)?,
                1_800_000_000,
            )
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        assert_eq!(
            sans(&issued.transport.der)?,
            ["web", "10.0.0.5", "127.0.0.1"]
        );
        assert_eq!(
            sans(&issued.http.der)?,
            ["web", "10.0.0.5"],
            "127.0.0.1 is the coordinator's"
        );
        assert_eq!(issued.not_after(), 1_800_000_000 + 3 * 86_400);
        // A coordinator's HTTP certificate keeps the coordinators' names.
        let coord = issuer
            .issue(
                "n2",
                &web,
                true,
                &csr(&asked)?,
                &csr(&asked)?,
                1_800_000_000,
            )
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        assert_eq!(sans(&coord.http.der)?, ["web", "10.0.0.5", "127.0.0.1"]);
        // A CSR asking for a name that is not the host's is refused, by which CSR.
        let refused = issuer.issue(
            "n3",
            &web,
            false,
            &csr(&asked)?,
            &csr(&["coord.example"])?,
            0,
        );
        let e = refused.err().map(|e| (e.code, e.message));
        assert_eq!(
            e.as_ref().map(|(c, m)| (*c, m.starts_with("HTTP CSR: "))),
            Some((ErrorCode::CsrSan, true)),
            "{e:?}"
        );
        Ok(())
    }
}
