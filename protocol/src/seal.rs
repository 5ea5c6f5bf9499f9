//! Sealing: the platform's secrets (CA keys, token signing key, PSK key, store credentials) are
//! kept in the store encrypted, so a copy of the store (an etcd snapshot, a backup file) gives
//! nothing away.
//!
//! A random 256-bit data key encrypts the secrets (AES-256-GCM). The data key itself is kept
//! twice: wrapped under a key derived from the emergency token (argon2id), inside the store, and
//! in the clear in each coordinator's own data folder (`unseal.key`, mode 0600). A coordinator
//! starts from its `unseal.key`; a new one gets its `unseal.key` by unwrapping with the
//! emergency token: `musterd unseal`, `musterd restore`, or `muster install` with the emergency
//! token against a director (see [`unwrap_data_key`]).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The data key's file name in a data folder.
pub const UNSEAL_KEY_FILE: &str = "unseal.key";
/// Context (AEAD associated data) of the sealed secrets.
pub const SEALED_CONTEXT: &str = "muster platform secrets v2";
/// Context of the data key wrapped under the emergency token.
pub const WRAP_CONTEXT: &str = "muster data key v2";

/// Why sealing or unsealing failed. Never carries key material.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SealError(pub String);

fn err(s: &str) -> SealError {
    SealError(s.to_string())
}

/// A 256-bit key, wiped when dropped.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn generate() -> Result<DataKey, SealError> {
        let mut k = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut k[..])
            .map_err(|_| err("no randomness for the data key"))?;
        Ok(DataKey(k))
    }

    /// The key as `unseal.key` holds it (base64).
    pub fn encode(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(&self.0[..]))
    }

    pub fn decode(text: &str) -> Result<DataKey, SealError> {
        let raw = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| err("the unseal key is not base64"))?,
        );
        let arr: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| err("the unseal key is not 32 bytes"))?;
        Ok(DataKey(Zeroizing::new(arr)))
    }

    /// The key derived from the emergency token that wraps the data key: argon2id v1.3 with
    /// 19 MiB, 2 passes, 1 lane. Written out, not the crate's default, which may change: every
    /// platform's wrapped key depends on these staying as they are.
    pub fn from_emergency_token(token: &str, salt: &[u8]) -> Result<DataKey, SealError> {
        let mut k = Zeroizing::new([0u8; 32]);
        let params = argon2::Params::new(19_456, 2, 1, Some(32))
            .map_err(|e| SealError(format!("argon2 parameters: {e}")))?;
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(token.trim().as_bytes(), salt, &mut k[..])
            .map_err(|e| SealError(format!("deriving the wrapping key: {e}")))?;
        Ok(DataKey(k))
    }

    fn aead(&self) -> Result<LessSafeKey, SealError> {
        let k = UnboundKey::new(&AES_256_GCM, &self.0[..]).map_err(|_| err("bad AES key"))?;
        Ok(LessSafeKey::new(k))
    }

    /// Encrypts `plain`: base64 of nonce and ciphertext with its tag.
    pub fn seal(&self, plain: &[u8], context: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| err("no randomness for a nonce"))?;
        let mut buf = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| err("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(B64.encode(out))
    }

    /// Decrypts what [`DataKey::seal`] made with the same `context`; fails on any other key.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let raw = B64
            .decode(sealed)
            .map_err(|_| err("sealed data is not base64"))?;
        if raw.len() <= NONCE_LEN {
            return Err(err("sealed data is too short"));
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| err("bad nonce"))?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let n = self
            .aead()?
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| err("wrong key"))?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// The data key, unwrapped with the emergency token from the platform record's `wrapped_key`
/// and `kdf_salt`, and checked to open its `sealed` secrets before anyone writes it down.
pub fn unwrap_data_key(
    emergency_token: &str,
    kdf_salt: &str,
    wrapped_key: &str,
    sealed: &str,
) -> Result<DataKey, SealError> {
    let salt = B64
        .decode(kdf_salt)
        .map_err(|_| err("the platform's key salt is not base64"))?;
    let wrapping = DataKey::from_emergency_token(emergency_token, &salt)?;
    let key = wrapping
        .open(wrapped_key, WRAP_CONTEXT)
        .map_err(|_| err("the emergency token does not unseal this platform"))?;
    let key = DataKey::decode(std::str::from_utf8(&key).map_err(|_| err("unwrapped key"))?)?;
    key.open(sealed, SEALED_CONTEXT)
        .map_err(|_| err("the unwrapped key does not open the platform's secrets"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every platform's wrapped data key depends on this derivation: it must never change.
    /// (The value is what argon2 0.5's default, argon2id m=19456 t=2 p=1, gave when the
    /// parameters were written out.)
    #[test]
    fn wrapping_keys_derive_as_they_always_have() -> Result<(), SealError> {
        let k = DataKey::from_emergency_token("an emergency token", b"0123456789abcdef")?;
        assert_eq!(
            hex_of(&k.0[..]),
            "e0286e911f9976bd0e5522dc448a924a8cb48f6463af3b0232ad9e25c1ef4fc8"
        );
        Ok(())
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn seals_and_opens_only_with_the_same_key_and_context() -> Result<(), SealError> {
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
    fn the_wrapping_key_depends_on_token_and_salt() -> Result<(), SealError> {
        let a = DataKey::from_emergency_token("token-a", b"saltsaltsalt")?;
        let b = DataKey::from_emergency_token("token-b", b"saltsaltsalt")?;
        let s = a.seal(b"data key", "wrap")?;
        assert!(b.open(&s, "wrap").is_err());
        let a2 = DataKey::from_emergency_token("token-a", b"saltsaltsalt")?;
        assert_eq!(&a2.open(&s, "wrap")?[..], b"data key");
        Ok(())
    }

    #[test]
    fn unwraps_only_with_the_emergency_token() -> Result<(), SealError> {
        let key = DataKey::generate()?;
        let sealed = key.seal(b"{}", SEALED_CONTEXT)?;
        let salt = B64.encode(b"0123456789abcdef");
        let wrapped = DataKey::from_emergency_token("the-token", b"0123456789abcdef")?
            .seal(key.encode().as_bytes(), WRAP_CONTEXT)?;
        let back = unwrap_data_key("the-token", &salt, &wrapped, &sealed)?;
        assert_eq!(&back.open(&sealed, SEALED_CONTEXT)?[..], b"{}");
        let e = unwrap_data_key("another-token", &salt, &wrapped, &sealed).err();
        assert!(e.is_some_and(|e| e.to_string().contains("does not unseal")));
        Ok(())
    }
}
