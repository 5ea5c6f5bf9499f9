//! What both sides read in Muster's certificates: the mark that tells a coordinator's
//! certificate from an ordinary node's, and a CA certificate's public-key pin.
//!
//! `musterd` sets every subject itself, never from a CSR: `O=Muster`, `OU=coordinator` for a
//! coordinator's HTTP certificate, `OU=node` for everything else.

use x509_parser::prelude::*;

/// The organization every Muster certificate names.
pub const ORG: &str = "Muster";
/// The organizational unit that marks a coordinator's certificate.
pub const OU_COORDINATOR: &str = "coordinator";
/// The organizational unit of every other certificate Muster issues.
pub const OU_NODE: &str = "node";

/// Whether a DER certificate is marked as a coordinator's.
pub fn is_coordinator_cert(der: &[u8]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let s = cert.subject();
    s.iter_organization().any(|a| a.as_str() == Ok(ORG))
        && s.iter_organizational_unit()
            .any(|a| a.as_str() == Ok(OU_COORDINATOR))
}

/// The `sha256:` pin of a DER certificate's public key.
pub fn spki_pin_of_cert(der: &[u8]) -> Option<String> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some(crate::pin::spki_pin(c.public_key().raw))
}

/// The DER of the first PEM block in `pem`.
pub fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem)
        .ok()
        .map(|(_, p)| p.contents)
}
