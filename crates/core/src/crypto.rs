//! Secrets at rest: the master key, sealing (AES-256-GCM) and keyed hashing (HMAC-SHA-256).
//!
//! Client secrets are server-generated with ≥ 256 bits of entropy, so a fast keyed hash with a
//! server-side pepper is the right tool (RFC 9700 guidance); slow password hashes are for humans.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;

use crate::rng::Rng;
use crate::CoreError;

/// A value that must never be printed or logged. `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(v: T) -> Self {
        Secret(v)
    }
    /// The secret value itself; call sites are easy to audit.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The installation's master key: 32 random bytes from which the sealing key for signing keys and
/// the pepper for client secrets are derived.
#[derive(Clone)]
pub struct MasterKey(Secret<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate(rng: &dyn Rng) -> Result<MasterKey, CoreError> {
        let mut k = [0u8; 32];
        rng.fill(&mut k)?;
        Ok(MasterKey(Secret(k)))
    }

    /// Parses 32 bytes given as base64 (standard or URL-safe, padded or not) or 64 hex digits.
    pub fn parse(s: &str) -> Result<MasterKey, CoreError> {
        let s = s.trim();
        let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .ok()
        } else {
            STANDARD
                .decode(s)
                .ok()
                .or_else(|| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
        };
        let bytes = bytes.ok_or_else(|| {
            CoreError::invalid("master key", "must be 32 bytes as base64 or 64 hex digits")
        })?;
        let k: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CoreError::invalid("master key", "must decode to exactly 32 bytes"))?;
        Ok(MasterKey(Secret(k)))
    }

    /// The key as standard base64, for writing to a 0600 file.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.expose())
    }

    fn derive(&self, label: &str) -> [u8; 32] {
        // HMAC as a KDF over a uniformly random key (HKDF-Expand with one block).
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.0.expose());
        let tag = hmac::sign(&key, label.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The AEAD used for secrets at rest.
    pub fn sealer(&self) -> Result<Sealer, CoreError> {
        let k = self.derive("capstan/seal/v1");
        let key = UnboundKey::new(&AES_256_GCM, &k).map_err(|_| CoreError::Crypto("aead key"))?;
        Ok(Sealer(LessSafeKey::new(key)))
    }

    /// The keyed hash for client secrets.
    pub fn secret_hasher(&self) -> SecretHasher {
        SecretHasher(hmac::Key::new(
            hmac::HMAC_SHA256,
            &self.derive("capstan/client-secret/v1"),
        ))
    }
}

/// Encrypts and authenticates small blobs (private keys) under a key derived from the master key.
/// Output layout: `version(1) || nonce(12) || ciphertext || tag(16)`.
pub struct Sealer(LessSafeKey);

const SEAL_V1: u8 = 1;

impl Sealer {
    /// Encrypts `plaintext`; `aad` binds the ciphertext to its context (e.g. tenant and key id).
    pub fn seal(&self, rng: &dyn Rng, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)?;
        let mut buf = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| CoreError::Crypto("seal"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(SEAL_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts what [`Sealer::seal`] produced with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CoreError> {
        let (version, rest) = sealed
            .split_first()
            .ok_or(CoreError::Crypto("sealed blob is empty"))?;
        if *version != SEAL_V1 || rest.len() < NONCE_LEN {
            return Err(CoreError::Crypto("sealed blob has an unknown format"));
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CoreError::Crypto("nonce"))?;
        let mut buf = ct.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| CoreError::Crypto("cannot decrypt: wrong master key or tampered data"))?;
        Ok(plain.to_vec())
    }
}

/// HMAC-SHA-256 keyed by a pepper derived from the master key.
#[derive(Clone)]
pub struct SecretHasher(hmac::Key);

impl SecretHasher {
    /// The keyed hash of `secret`, as stored.
    pub fn hash(&self, secret: &str) -> Vec<u8> {
        hmac::sign(&self.0, secret.as_bytes()).as_ref().to_vec()
    }

    /// Compares `secret` with a stored hash in constant time.
    pub fn verify(&self, secret: &str, stored: &[u8]) -> bool {
        hmac::verify(&self.0, secret.as_bytes(), stored).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SystemRng;

    #[test]
    fn seal_round_trip_and_aad_binding() {
        let rng = SystemRng::new();
        let mk = MasterKey::generate(&rng).unwrap();
        let s = mk.sealer().unwrap();
        let sealed = s.seal(&rng, b"private", b"t1/k1").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"private"));
        assert_eq!(s.open(&sealed, b"t1/k1").unwrap(), b"private");
        assert!(s.open(&sealed, b"t1/k2").is_err());
        let other = MasterKey::generate(&rng).unwrap().sealer().unwrap();
        assert!(other.open(&sealed, b"t1/k1").is_err());
    }

    #[test]
    fn master_key_formats() {
        let rng = SystemRng::new();
        let mk = MasterKey::generate(&rng).unwrap();
        let again = MasterKey::parse(&mk.to_base64()).unwrap();
        assert_eq!(mk.0.expose(), again.0.expose());
        assert!(MasterKey::parse(&"ab".repeat(32)).is_ok());
        assert!(MasterKey::parse("short").is_err());
        assert_eq!(format!("{mk:?}"), "MasterKey([redacted])");
    }

    #[test]
    fn hasher_verifies_only_the_right_secret() {
        let rng = SystemRng::new();
        let h = MasterKey::generate(&rng).unwrap().secret_hasher();
        let stored = h.hash("s3cret");
        assert!(h.verify("s3cret", &stored));
        assert!(!h.verify("s3cret2", &stored));
    }
}
