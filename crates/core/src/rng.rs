//! Injected randomness for identifiers and secrets.
//!
//! Signature nonces and RSA blinding inside `ring` use the operating system's generator directly;
//! everything Capstan itself generates (ids, secrets, key ids) goes through [`Rng`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::CoreError;

/// A cryptographically secure source of random bytes.
pub trait Rng: Send + Sync + 'static {
    /// Fills `dest` with random bytes.
    fn fill(&self, dest: &mut [u8]) -> Result<(), CoreError>;
}

/// The operating system's generator.
#[derive(Debug)]
pub struct SystemRng(ring::rand::SystemRandom);

impl Default for SystemRng {
    fn default() -> Self {
        SystemRng::new()
    }
}

impl SystemRng {
    /// A handle on the OS generator.
    pub fn new() -> Self {
        SystemRng(ring::rand::SystemRandom::new())
    }
}

impl Rng for SystemRng {
    fn fill(&self, dest: &mut [u8]) -> Result<(), CoreError> {
        ring::rand::SecureRandom::fill(&self.0, dest).map_err(|_| CoreError::Crypto("rng failure"))
    }
}

/// `n` random bytes, base64url without padding.
pub fn random_b64(rng: &dyn Rng, n: usize) -> Result<String, CoreError> {
    let mut buf = vec![0u8; n];
    rng.fill(&mut buf)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// `n` random bytes as lowercase base32 (RFC 4648 alphabet, no padding): safe in URLs, paths and
/// CRNs, and easy to read aloud.
pub fn random_base32(rng: &dyn Rng, n: usize) -> Result<String, CoreError> {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut buf = vec![0u8; n];
    rng.fill(&mut buf)?;
    let mut out = String::with_capacity(n * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in buf {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    Ok(out)
}

/// Adapts an [`Rng`] to `rand_core` for crates that want one (RSA key generation).
///
/// `rand_core`'s `fill_bytes` cannot fail, so a failure is remembered in `failed` and the caller
/// must discard whatever was generated when it is set.
pub struct RandCoreAdapter<'a> {
    rng: &'a dyn Rng,
    /// Set when the underlying generator failed at least once.
    pub failed: bool,
}

impl<'a> RandCoreAdapter<'a> {
    /// Wraps `rng`.
    pub fn new(rng: &'a dyn Rng) -> Self {
        RandCoreAdapter { rng, failed: false }
    }
}

impl rand_core::RngCore for RandCoreAdapter<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if self.rng.fill(dest).is_err() {
            self.failed = true;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.rng
            .fill(dest)
            .map_err(|_| rand_core::Error::from(std::num::NonZeroU32::MIN))
    }
}

impl rand_core::CryptoRng for RandCoreAdapter<'_> {}
