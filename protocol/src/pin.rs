//! CA public-key pins: `sha256:` and the hex SHA-256 of a certificate's SubjectPublicKeyInfo.
//!
//! As kubeadm's `--discovery-token-ca-cert-hash`, the pin covers the public key, not the whole
//! certificate, so a renewed CA certificate over the same key keeps every token valid.

use sha2::{Digest, Sha256};

/// The prefix every pin carries, naming its hash.
pub const PREFIX: &str = "sha256:";

/// The pin of a DER-encoded SubjectPublicKeyInfo.
pub fn spki_pin(spki_der: &[u8]) -> String {
    format!("{PREFIX}{}", hex::encode(Sha256::digest(spki_der)))
}

/// Whether `pin` is well-formed: the prefix and 64 lowercase hex digits.
pub fn is_well_formed(pin: &str) -> bool {
    pin.strip_prefix(PREFIX)
        .map(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_shape() {
        let p = spki_pin(b"not really an spki");
        assert!(is_well_formed(&p), "{p}");
        assert!(!is_well_formed("sha256:ABC"));
        assert!(!is_well_formed(&p.replace("sha256:", "sha1:")));
    }
}
