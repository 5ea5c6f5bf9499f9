//! Certificate authorities, CSR checks and certificate signing.
//!
//! Two CAs, as in Elasticsearch: the transport CA signs node identities (used for mutual TLS
//! between hosts and coordinators), the HTTP CA signs HTTP-layer certificates, including the
//! coordinator's own serving certificate. Every certificate's subject is set here, never copied
//! from a CSR: `O=Muster`, `OU=coordinator` for a coordinator's HTTP certificate and `OU=node`
//! for everything else, so an installer can tell a coordinator from an ordinary node.

use ::time::{Duration, OffsetDateTime};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use x509_parser::prelude::*;

pub use muster_protocol::cert::{is_coordinator_cert, ORG, OU_COORDINATOR, OU_NODE};

pub use muster_protocol::csr::{
    check_csr, host_sans, ip_from_bytes, CheckedCsr, CsrError, CsrKey, MAX_CSR_LEN,
};

/// A CA: its certificate and key, ready to sign.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    key: KeyPair,
    issuer: Certificate,
}

impl Ca {
    /// Makes a new CA with a P-256 key, valid for ten years.
    pub fn generate(common_name: &str, now: OffsetDateTime) -> anyhow::Result<Ca> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, "ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ca::load(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its PEM certificate and PEM PKCS#8 key.
    pub fn load(cert_pem: &str, key_pem: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = pem_to_der(cert_pem)?;
        anyhow::ensure!(
            muster_protocol::cert::spki_pin_of_cert(&cert_der)
                == Some(muster_protocol::pin::spki_pin(&key.public_key_der())),
            "the CA certificate does not hold the CA's key"
        );
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // Re-signing the parsed parameters gives an issuer with the same name and key
        // identifier; only its subject and key are used to sign.
        let issuer = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key,
            issuer,
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// The `sha256:` pin of this CA's public key.
    pub fn pin(&self) -> String {
        muster_protocol::pin::spki_pin(&self.key.public_key_der())
    }

    /// Signs a leaf certificate for `public_key`.
    pub fn sign(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        leaf: &Leaf,
        now: OffsetDateTime,
    ) -> anyhow::Result<Signed> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(
            &leaf.common_name,
            if leaf.coordinator {
                OU_COORDINATOR
            } else {
                OU_NODE
            },
        );
        params.subject_alt_names = leaf.sans.clone();
        // No basicConstraints at all: rcgen's ExplicitNoCa writes `cA FALSE` out, which DER
        // forbids (a DEFAULT value is left out) and strict parsers (Python's cryptography)
        // refuse. Without keyCertSign in the key usage a leaf cannot sign certificates anyway.
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + leaf.validity;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        let not_after = params.not_after.unix_timestamp().max(0) as u64;
        let cert = params.signed_by(public_key, &self.issuer, &self.key)?;
        Ok(Signed {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            serial: hex::encode(serial.to_bytes()),
            not_after,
        })
    }
}

/// A coordinator's TLS serving key. A platform keeps one, sealed with its secrets and shared by
/// every coordinator, so the `--pinnedpubkey` pin of an install line holds at any coordinator,
/// across restarts and after a restore. Each coordinator also keeps one in its data folder: it
/// names the coordinator (the names it publishes are filed under its pin), and it serves TLS
/// for a platform made before the shared key existed. The certificate over the serving key is
/// made anew at each start.
pub struct ServingKey {
    key: KeyPair,
}

impl ServingKey {
    /// The key file's name inside the data folder.
    pub const FILE: &'static str = "serving-key.pem";

    /// Loads the key from `data_dir`, or makes it there (mode 0600) if there is none. Two
    /// processes starting at once agree on one key: the file is linked into place only if
    /// absent, never replaced.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<ServingKey> {
        let path = data_dir.join(Self::FILE);
        if let Some(k) = Self::load(&path)? {
            return Ok(k);
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let pem = zeroize::Zeroizing::new(key.serialize_pem());
        let mut tmp = tempfile::Builder::new()
            .prefix(".serving-key-")
            .tempfile_in(data_dir)
            .map_err(|e| anyhow::anyhow!("creating a file in {}: {e}", data_dir.display()))?;
        tmp.write_all(pem.as_bytes())?;
        tmp.as_file().sync_all()?;
        match std::fs::hard_link(tmp.path(), &path) {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(data_dir) {
                    let _ = d.sync_all();
                }
                Ok(ServingKey { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(&path)?
                .ok_or_else(|| anyhow::anyhow!("{} vanished while being read", path.display())),
            Err(e) => Err(anyhow::anyhow!("writing {}: {e}", path.display())),
        }
    }

    fn load(path: &Path) -> anyhow::Result<Option<ServingKey>> {
        let pem = match std::fs::read_to_string(path) {
            Ok(p) => zeroize::Zeroizing::new(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
        };
        let key = Self::from_pem(&pem).map_err(|_| {
            anyhow::anyhow!(
                "{} is not a PEM private key; remove it and a new one is made at the next start \
                 (on a platform made before it kept a serving key, install lines printed before \
                 then stop working)",
                path.display()
            )
        })?;
        Ok(Some(key))
    }

    /// A key from PKCS#8 PEM (the platform's, unsealed).
    pub fn from_pem(pem: &str) -> anyhow::Result<ServingKey> {
        let key = KeyPair::from_pem(pem).map_err(|_| anyhow::anyhow!("not a PEM private key"))?;
        Ok(ServingKey { key })
    }

    pub fn key_pair(&self) -> &KeyPair {
        &self.key
    }

    /// The pin in curl's `--pinnedpubkey` form: `sha256//` and the base64 SHA-256 of the
    /// public key's SubjectPublicKeyInfo.
    pub fn curl_pin(&self) -> String {
        use base64::Engine;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.key.public_key_der());
        format!(
            "sha256//{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    }
}

/// What a leaf certificate should say.
pub struct Leaf {
    pub common_name: String,
    pub sans: Vec<SanType>,
    pub coordinator: bool,
    pub validity: Duration,
}

/// A signed certificate.
pub struct Signed {
    pub pem: String,
    pub der: Vec<u8>,
    /// Lowercase hex of the serial number.
    pub serial: String,
    pub not_after: u64,
}

fn dn(cn: &str, ou: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORG);
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::CommonName, cn);
    dn
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // and no leading zero byte, so the encoding keeps all 16 bytes
    SerialNumber::from_slice(&b)
}

/// A certificate's DER as PEM, exactly as the signer writes it (rcgen: 64-column lines, LF).
pub fn certificate_pem(der: &[u8]) -> String {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    ::pem::encode_config(&::pem::Pem::new("CERTIFICATE", der), config)
}

/// Decodes the first PEM block.
pub fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("parsing PEM: {e}"))?;
    Ok(p.contents)
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
pub fn host_of_address(a: &str) -> &str {
    muster_protocol::addr::split(a).0
}

/// How a name compares with a subject alternative name: an address in its canonical form, a
/// DNS name in lower case.
pub fn san_key_of_name(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// [`san_key_of_name`] of a subject alternative name.
pub fn san_key(s: &SanType) -> String {
    match s {
        SanType::IpAddress(ip) => ip.to_string(),
        SanType::DnsName(d) => d.as_str().to_ascii_lowercase(),
        other => format!("{other:?}"),
    }
}

/// Verifies a proof of possession: `signature` over `message` by the key in `spki_der`.
pub fn verify_proof(spki_der: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(spki_der) else {
        return false;
    };
    let alg: &dyn ring::signature::VerificationAlgorithm = match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(ec)) if ec.key_size() == 256 => {
            &ring::signature::ECDSA_P256_SHA256_ASN1
        }
        Ok(x509_parser::public_key::PublicKey::EC(ec)) if ec.key_size() == 384 => {
            &ring::signature::ECDSA_P384_SHA384_ASN1
        }
        Ok(x509_parser::public_key::PublicKey::RSA(_)) => {
            &ring::signature::RSA_PKCS1_2048_8192_SHA256
        }
        _ if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => {
            &ring::signature::ED25519
        }
        _ => return false,
    };
    ring::signature::UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(message, signature)
        .is_ok()
}

/// Common name and serial (lowercase hex) of a DER certificate.
pub fn cert_identity(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some((cn, hex::encode(cert.raw_serial())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_loads_only_with_its_own_key() -> anyhow::Result<()> {
        let now = ::time::OffsetDateTime::now_utc();
        let (a, b) = (Ca::generate("a", now)?, Ca::generate("b", now)?);
        Ca::load(&a.cert_pem, &a.key_pem())?;
        let err = Ca::load(&a.cert_pem, &b.key_pem())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("the CA certificate does not hold the CA's key")
        );
        Ok(())
    }

    fn csr(sans: Vec<SanType>, ca: bool, alg: &'static rcgen::SignatureAlgorithm) -> String {
        let key = KeyPair::generate_for(alg).unwrap_or_else(|e| panic!("keygen: {e}"));
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        if ca {
            // rcgen will not put basicConstraints in a CSR itself; a hostile client would, so
            // add it by hand: SEQUENCE { BOOLEAN TRUE } under 2.5.29.19.
            let mut ext = rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 19],
                vec![0x30, 0x03, 0x01, 0x01, 0xff],
            );
            ext.set_criticality(true);
            p.custom_extensions.push(ext);
        }
        p.serialize_request(&key)
            .and_then(|r| r.pem())
            .unwrap_or_else(|e| panic!("csr: {e}"))
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.to_string().try_into().unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn csr_checks() {
        let allowed = host_sans("node-1.example", &["10.0.0.5".into()]);
        let ip = SanType::IpAddress("10.0.0.5".parse().unwrap_or_else(|e| panic!("{e}")));
        let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
        let cases: Vec<(&str, String, Result<(), CsrError>)> = vec![
            (
                "own names",
                csr(vec![dns("node-1.example"), ip], false, p256),
                Ok(()),
            ),
            ("no SANs", csr(vec![], false, &rcgen::PKCS_ED25519), Ok(())),
            (
                "foreign SAN",
                csr(vec![dns("coordinator.example")], false, p256),
                Err(CsrError::San("coordinator.example".into())),
            ),
            ("CA request", csr(vec![], true, p256), Err(CsrError::Ca)),
            (
                "not PEM",
                "hello".into(),
                Err(CsrError::Invalid("not PEM".into())),
            ),
        ];
        for (name, pem, want) in cases {
            assert_eq!(check_csr(&pem, &allowed).map(|_| ()), want, "case {name}");
        }
    }

    #[test]
    fn a_certificate_certifies_the_key_its_request_holds() -> anyhow::Result<()> {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate("test CA", now)?;
        // The certificate signed for a checked request holds exactly the request's key.
        let certifies = |pem: &str, what: &str| -> anyhow::Result<()> {
            let checked = check_csr(pem, &[]).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            let leaf = Leaf {
                common_name: "n1".into(),
                sans: vec![],
                coordinator: false,
                validity: Duration::days(1),
            };
            let signed = ca.sign(&checked.public_key, &leaf, now)?;
            let (_, cert) = x509_parser::parse_x509_certificate(&signed.der)?;
            assert_eq!(
                cert.tbs_certificate.subject_pki.raw,
                &checked.spki_der[..],
                "{what}"
            );
            Ok(())
        };
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            certifies(&csr(vec![], false, alg), &format!("{alg:?}"))?;
        }
        // Requests signed with another digest than their key's usual one (openssl makes them):
        // the certificate still describes the key as it is.
        let dir = tempfile::tempdir()?;
        for (name, genkey, digest) in [
            ("p256-sha384", "ec:prime256v1", "-sha384"),
            ("p384-sha256", "ec:secp384r1", "-sha256"),
            ("rsa-sha512", "rsa:2048", "-sha512"),
        ] {
            let (kind, param) = genkey.split_once(':').unwrap_or(("", ""));
            let key = dir.path().join(format!("{name}.key"));
            let mut gen = std::process::Command::new("openssl");
            gen.args(["genpkey", "-out"]).arg(&key);
            if kind == "ec" {
                gen.args(["-algorithm", "EC", "-pkeyopt"])
                    .arg(format!("ec_paramgen_curve:{param}"));
            } else {
                gen.args(["-algorithm", "RSA", "-pkeyopt"])
                    .arg(format!("rsa_keygen_bits:{param}"));
            }
            assert!(gen.status()?.success(), "{name}: openssl genpkey");
            let out = std::process::Command::new("openssl")
                .args(["req", "-new", digest, "-subj", "/CN=x", "-key"])
                .arg(&key)
                .output()?;
            assert!(out.status.success(), "{name}: openssl req");
            certifies(&String::from_utf8(out.stdout)?, name)?;
        }
        Ok(())
    }

    #[test]
    fn signs_and_marks_coordinators() -> anyhow::Result<()> {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate("test CA", now)?;
        let reloaded = Ca::load(&ca.cert_pem, &ca.key_pem())?;
        assert_eq!(ca.pin(), reloaded.pin());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        for coordinator in [false, true] {
            let leaf = Leaf {
                common_name: "n1".into(),
                sans: vec![],
                coordinator,
                validity: Duration::days(1),
            };
            let s = reloaded.sign(&key, &leaf, now)?;
            assert_eq!(is_coordinator_cert(&s.der), coordinator);
            assert_eq!(
                cert_identity(&s.der).map(|(cn, serial)| (cn, serial.len())),
                Some(("n1".into(), 32))
            );
        }
        Ok(())
    }

    #[test]
    fn advertised_addresses_compare_with_certificate_names() {
        assert_eq!(host_of_address("coord-1.example:12443"), "coord-1.example");
        assert_eq!(host_of_address("[2001:db8::1]:12443"), "2001:db8::1");
        assert_eq!(host_of_address("2001:db8::1"), "2001:db8::1");
        assert_eq!(host_of_address("10.0.0.1"), "10.0.0.1");
        assert_eq!(san_key_of_name("Coord-1.Example"), "coord-1.example");
        assert_eq!(san_key_of_name("2001:0db8::0001"), "2001:db8::1");
        let sans = host_sans("COORD-1.example", &["2001:db8::1".into()]);
        let keys: Vec<String> = sans.iter().map(san_key).collect();
        assert_eq!(keys, ["coord-1.example", "2001:db8::1"]);
    }

    #[test]
    fn proof_of_possession() -> anyhow::Result<()> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let rng = ring::rand::SystemRandom::new();
        let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let sig = kp.sign(&rng, b"msg").map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(verify_proof(&key.public_key_der(), b"msg", sig.as_ref()));
        assert!(!verify_proof(&key.public_key_der(), b"other", sig.as_ref()));
        Ok(())
    }
}
