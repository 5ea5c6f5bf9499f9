//! The coordinator's checks of a certificate signing request: parsed, signature, key type and
//! size, no CA request, and names within what the host may claim. Here, apart from the server,
//! so the fuzz targets reach them without the server's dependencies.

use crate::ErrorCode;
use rcgen::SanType;
use std::net::IpAddr;
use x509_parser::prelude::*;

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// Why a CSR is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("CSR is not valid: {0}")]
    Invalid(String),
    #[error("CSR key is not accepted: {0} (use ECDSA P-256/P-384, Ed25519 or RSA of at least 2048 bits)")]
    KeyType(String),
    #[error("CSR asks for a CA certificate; Muster issues leaf certificates only")]
    Ca,
    #[error("CSR names {0:?}, which this host may not claim (only its hostname and addresses)")]
    San(String),
}

impl CsrError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CsrError::Invalid(_) => ErrorCode::CsrInvalid,
            CsrError::KeyType(_) => ErrorCode::CsrKeyType,
            CsrError::Ca => ErrorCode::CsrCa,
            CsrError::San(_) => ErrorCode::CsrSan,
        }
    }
}

/// A CSR that passed the checks: its public key, ready to certify.
pub struct CheckedCsr {
    pub public_key: CsrKey,
    /// SHA-256 of the SubjectPublicKeyInfo (hex): identifies the key across retries.
    pub key_hash: String,
    /// The DER SubjectPublicKeyInfo, to check the proof of possession at commit.
    pub spki_der: Vec<u8>,
}

/// The public key of a checked CSR, ready to certify.
pub struct CsrKey {
    raw: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
}

impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        self.alg
    }
}

/// Checks a CSR: parses, signature, key type and size, no CA request, and SANs within
/// `allowed` (the host's own name and addresses).
pub fn check_csr(pem: &str, allowed: &[SanType]) -> Result<CheckedCsr, CsrError> {
    if pem.len() > MAX_CSR_LEN {
        return Err(CsrError::Invalid(format!(
            "longer than {MAX_CSR_LEN} bytes"
        )));
    }
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| CsrError::Invalid("not PEM".into()))?;
    if p.label != "CERTIFICATE REQUEST" {
        return Err(CsrError::Invalid(format!(
            "PEM block is {:?}, not CERTIFICATE REQUEST",
            p.label
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(&p.contents)
        .map_err(|_| CsrError::Invalid("not a PKCS#10 request".into()))?;
    if !rest.is_empty() {
        return Err(CsrError::Invalid("trailing data".into()));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key = spki
        .parsed()
        .map_err(|_| CsrError::KeyType("unparsable public key".into()))?;
    match &key {
        x509_parser::public_key::PublicKey::EC(ec) if matches!(ec.key_size(), 256 | 384) => {}
        x509_parser::public_key::PublicKey::RSA(rsa) if (2048..=8192).contains(&rsa.key_size()) => {
        }
        x509_parser::public_key::PublicKey::Unknown(_)
            if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => {}
        other => {
            return Err(CsrError::KeyType(format!(
                "{} bits of algorithm {}",
                other.key_size(),
                spki.algorithm.algorithm.to_id_string()
            )))
        }
    }
    // Key type first: ring cannot check a signature by a key it refuses (RSA < 2048), and
    // "key not accepted" is the more useful answer.
    csr.verify_signature()
        .map_err(|_| CsrError::Invalid("signature does not verify".into()))?;
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::Ca),
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        let ok = match name {
                            GeneralName::DNSName(d) => allowed.iter().any(|a| matches!(a, SanType::DnsName(n) if n.as_str().eq_ignore_ascii_case(d))),
                            GeneralName::IPAddress(b) => ip_from_bytes(b).is_some_and(|ip| allowed.contains(&SanType::IpAddress(ip))),
                            _ => false,
                        };
                        if !ok {
                            let shown = match name {
                                GeneralName::DNSName(d) => d.to_string(),
                                GeneralName::IPAddress(b) => ip_from_bytes(b)
                                    .map(|i| i.to_string())
                                    .unwrap_or_else(|| "an odd IP".into()),
                                other => format!("{other}"),
                            };
                            return Err(CsrError::San(shown));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let spki_der = spki.raw.to_vec();
    let key_hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&spki_der))
    };
    // What rcgen needs to certify the key, taken from the request already parsed and checked
    // (rcgen's own CSR reader would parse it and verify its signature a second time). The
    // algorithm says how the certificate describes the key, so it follows from the key itself
    // (its type and curve), not from how the request happens to be signed: a P-256 key in a
    // request signed with SHA-384 is still a P-256 key.
    let alg: &'static rcgen::SignatureAlgorithm = match &key {
        x509_parser::public_key::PublicKey::EC(_) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == x509_parser::oid_registry::OID_EC_P256 => {
                    &rcgen::PKCS_ECDSA_P256_SHA256
                }
                Some(c) if c == x509_parser::oid_registry::OID_NIST_EC_P384 => {
                    &rcgen::PKCS_ECDSA_P384_SHA384
                }
                _ => {
                    return Err(CsrError::KeyType(
                        "an elliptic curve other than P-256 and P-384".into(),
                    ))
                }
            }
        }
        x509_parser::public_key::PublicKey::RSA(_) => &rcgen::PKCS_RSA_SHA256,
        _ => &rcgen::PKCS_ED25519,
    };
    Ok(CheckedCsr {
        public_key: CsrKey {
            raw: spki.subject_public_key.data.to_vec(),
            alg,
        },
        key_hash,
        spki_der,
    })
}

pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The SANs a host may claim: its hostname and the IP literals it reports.
pub fn host_sans(hostname: &str, addresses: &[String]) -> Vec<SanType> {
    let mut sans = Vec::new();
    if let Ok(n) = hostname.to_string().try_into() {
        sans.push(SanType::DnsName(n));
    }
    for a in addresses {
        if let Ok(ip) = a.parse::<IpAddr>() {
            if !sans.contains(&SanType::IpAddress(ip)) {
                sans.push(SanType::IpAddress(ip));
            }
        }
    }
    sans
}
