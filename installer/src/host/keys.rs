//! Host files layer: the host's private keys, generated here and never sent anywhere, and what
//! they sign (CSRs, the commit's proof of possession).
//!
//! Depends only on `layout`, `owner`, `exit` and `muster-protocol`.

use crate::exit::{Exit, Failure, Result};
use crate::layout::{self, File};
use crate::owner::Owners;
use std::path::Path;
use zeroize::Zeroizing;

/// A generated or reloaded private key.
pub struct Key {
    pub pair: rcgen::KeyPair,
}

impl Key {
    pub fn generate() -> Result<Key> {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|pair| Key { pair })
            .map_err(|e| Failure::new(Exit::Other, format!("generating a key: {e}")))
    }

    /// The key `f` an earlier run wrote, if it is there, is Muster's (owner, mode, no
    /// symlink: anything else is refused) and parses.
    pub fn load(root: &Path, f: File, o: &Owners) -> Result<Option<Key>> {
        let Some(bytes) = layout::read_written(root, f, o)?.map(Zeroizing::new) else {
            return Ok(None);
        };
        let pem = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
        Ok(rcgen::KeyPair::from_pem(&pem).ok().map(|pair| Key { pair }))
    }

    pub fn from_pem(pem: &str) -> Result<Key> {
        rcgen::KeyPair::from_pem(pem)
            .map(|pair| Key { pair })
            .map_err(|e| Failure::new(Exit::Other, format!("reading a saved key: {e}")))
    }

    pub fn pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.pair.serialize_pem())
    }

    /// A CSR naming the host and its addresses.
    pub fn csr(&self, hostname: &str, addresses: &[String]) -> Result<String> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, hostname);
        if let Ok(n) = hostname.to_string().try_into() {
            params.subject_alt_names.push(rcgen::SanType::DnsName(n));
        }
        for a in addresses {
            if let Ok(ip) = a.parse() {
                params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
            }
        }
        params
            .serialize_request(&self.pair)
            .and_then(|r| r.pem())
            .map_err(|e| Failure::new(Exit::Other, format!("making a CSR: {e}")))
    }

    /// A CSR with no names (renewal: the coordinator certifies the names it has on record).
    pub fn csr_bare(&self) -> Result<String> {
        rcgen::CertificateParams::default()
            .serialize_request(&self.pair)
            .and_then(|r| r.pem())
            .map_err(|e| Failure::new(Exit::Other, format!("making a CSR: {e}")))
    }

    /// Signs the commit message: the proof of possession.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let rng = ring::rand::SystemRandom::new();
        let der = Zeroizing::new(self.pair.serialize_der());
        let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &der,
            &rng,
        )
        .map_err(|_| Failure::new(Exit::Other, "loading the node key to sign the commit"))?;
        kp.sign(&rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Failure::new(Exit::Other, "signing the commit"))
    }
}
