//! Sealing: the platform's secrets (CA keys, token signing key, PSK key) are kept in the store
//! encrypted, so a copy of the store (an etcd snapshot, a backup file) gives nothing away.
//!
//! A random 256-bit data key encrypts the secrets (AES-256-GCM). The data key itself is kept
//! twice: wrapped under a key derived from the emergency token (argon2id), inside the store, and
//! in the clear in each coordinator's own data folder (`unseal.key`, mode 0600). A coordinator
//! starts from its `unseal.key`; a new one, or one restored from a backup, gets its
//! `unseal.key` by unwrapping with the emergency token (`musterd unseal`, `musterd restore`).

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The data key's file name in a data folder.
pub const UNSEAL_KEY_FILE: &str = "unseal.key";

/// A 256-bit key, wiped when dropped.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn generate() -> anyhow::Result<DataKey> {
        let mut k = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut k[..])
            .map_err(|_| anyhow::anyhow!("no randomness for the data key"))?;
        Ok(DataKey(k))
    }

    /// The key as `unseal.key` holds it (base64).
    pub fn encode(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(&self.0[..]))
    }

    pub fn decode(text: &str) -> anyhow::Result<DataKey> {
        let raw = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| anyhow::anyhow!("the unseal key is not base64"))?,
        );
        let arr: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("the unseal key is not 32 bytes"))?;
        Ok(DataKey(Zeroizing::new(arr)))
    }

    /// The key derived from the emergency token that wraps the data key.
    pub fn from_emergency_token(token: &str, salt: &[u8]) -> anyhow::Result<DataKey> {
        let mut k = Zeroizing::new([0u8; 32]);
        argon2::Argon2::default()
            .hash_password_into(token.trim().as_bytes(), salt, &mut k[..])
            .map_err(|e| anyhow::anyhow!("deriving the wrapping key: {e}"))?;
        Ok(DataKey(k))
    }

    fn aead(&self) -> anyhow::Result<LessSafeKey> {
        let k = UnboundKey::new(&AES_256_GCM, &self.0[..])
            .map_err(|_| anyhow::anyhow!("bad AES key"))?;
        Ok(LessSafeKey::new(k))
    }

    /// Encrypts `plain`: base64 of nonce and ciphertext with its tag.
    pub fn seal(&self, plain: &[u8], context: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
        let mut buf = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(B64.encode(out))
    }

    /// Decrypts what [`DataKey::seal`] made with the same `context`; fails on any other key.
    pub fn open(&self, sealed: &str, context: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let raw = B64.decode(sealed).context("sealed data is not base64")?;
        anyhow::ensure!(raw.len() > NONCE_LEN, "sealed data is too short");
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let n = self
            .aead()?
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| anyhow::anyhow!("wrong key"))?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// Reads the emergency token from `MUSTER_EMERGENCY_TOKEN` or a file: never from argv.
pub fn emergency_token(file: Option<&std::path::Path>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("reading the emergency token from {}", f.display()))?;
        return Ok(Zeroizing::new(t.trim().to_string()));
    }
    match std::env::var("MUSTER_EMERGENCY_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(Zeroizing::new(t.trim().to_string())),
        _ => anyhow::bail!(
            "the emergency token is needed: set MUSTER_EMERGENCY_TOKEN or pass --emergency-token-file"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_with_the_same_key_and_context() -> anyhow::Result<()> {
        let k = DataKey::generate()?;
        let s = k.seal(b"ca key", "platform")?;
        assert_eq!(&k.open(&s, "platform")?[..], b"ca key");
        assert!(k.open(&s, "other").is_err());
        assert!(DataKey::generate()?.open(&s, "platform").is_err());
        let back = DataKey::decode(&k.encode())?;
        assert_eq!(&back.open(&s, "platform")?[..], b"ca key");
        Ok(())
    }

    #[test]
    fn the_wrapping_key_depends_on_token_and_salt() -> anyhow::Result<()> {
        let a = DataKey::from_emergency_token("token-a", b"saltsaltsalt")?;
        let b = DataKey::from_emergency_token("token-b", b"saltsaltsalt")?;
        let s = a.seal(b"data key", "wrap")?;
        assert!(b.open(&s, "wrap").is_err());
        let a2 = DataKey::from_emergency_token("token-a", b"saltsaltsalt")?;
        assert_eq!(&a2.open(&s, "wrap")?[..], b"data key");
        Ok(())
    }
}
