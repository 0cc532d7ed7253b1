//! RFC 9068 JWT access tokens: key generation, signing and verification.
//!
//! Signing uses `ring` directly with a parsed key pair held in memory (parsing PKCS#8 on every
//! token would halve throughput). Verification uses `jsonwebtoken` for the signature, but every
//! time-based check runs here against the injected clock, and only the algorithm a key was
//! published with is accepted for it: `none`, and HMAC with a public key, cannot verify.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    RSA_PKCS1_SHA256,
};
use serde::{Deserialize, Serialize};

use crate::clock::UnixTime;
use crate::crypto::Secret;
use crate::rng::{random_b64, RandCoreAdapter, Rng};
use crate::CoreError;

/// A JWS signing algorithm Capstan issues tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    /// ECDSA P-256 with SHA-256 (the default).
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    RS256,
}

impl Alg {
    /// Every algorithm Capstan can sign with.
    pub const ALL: [Alg; 3] = [Alg::ES256, Alg::EdDSA, Alg::RS256];

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
            Alg::RS256 => "RS256",
        }
    }

    /// Parses a JOSE name.
    pub fn parse(s: &str) -> Result<Alg, CoreError> {
        Alg::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| CoreError::invalid("signing algorithm", "must be ES256, EdDSA or RS256"))
    }

    fn jwt_alg(self) -> Algorithm {
        match self {
            Alg::ES256 => Algorithm::ES256,
            Alg::EdDSA => Algorithm::EdDSA,
            Alg::RS256 => Algorithm::RS256,
        }
    }
}

/// A public JSON Web Key (RFC 7517) as published in a JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `EC`, `OKP` or `RSA`.
    pub kty: String,
    /// Key id.
    pub kid: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// The algorithm this key signs with.
    pub alg: String,
    /// Curve, for `EC` and `OKP` keys.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crv: Option<String>,
    /// X coordinate (EC) or public key (OKP), base64url.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x: Option<String>,
    /// Y coordinate (EC), base64url.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
    /// RSA modulus, base64url.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n: Option<String>,
    /// RSA exponent, base64url.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e: Option<String>,
}

/// A freshly generated key pair: the private half as PKCS#8 DER (to be sealed before storing) and
/// the public half as a JWK.
pub struct GeneratedKey {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Alg,
    /// PKCS#8 DER of the private key.
    pub private_pkcs8: Secret<Vec<u8>>,
    /// The public key.
    pub public: Jwk,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Generates a signing key pair for `alg`.
pub fn generate_key(alg: Alg, rng: &dyn Rng) -> Result<GeneratedKey, CoreError> {
    let sys = ring::rand::SystemRandom::new();
    let kid = random_b64(rng, 12)?;
    let crypto = |_| CoreError::Crypto("key generation failed");
    let (pkcs8, mut jwk) = match alg {
        Alg::ES256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &sys)
                .map_err(crypto)?;
            let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &sys)
                .map_err(|_| CoreError::Crypto("key generation failed"))?;
            // Uncompressed point: 0x04 || X (32) || Y (32).
            let p = kp.public_key().as_ref();
            let jwk = Jwk {
                kty: "EC".into(),
                crv: Some("P-256".into()),
                x: Some(b64(&p[1..33])),
                y: Some(b64(&p[33..65])),
                ..empty_jwk()
            };
            (doc.as_ref().to_vec(), jwk)
        }
        Alg::EdDSA => {
            let doc = Ed25519KeyPair::generate_pkcs8(&sys).map_err(crypto)?;
            let kp = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                .map_err(|_| CoreError::Crypto("key generation failed"))?;
            let jwk = Jwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: Some(b64(kp.public_key().as_ref())),
                ..empty_jwk()
            };
            (doc.as_ref().to_vec(), jwk)
        }
        Alg::RS256 => {
            use rsa::pkcs8::EncodePrivateKey;
            use rsa::traits::PublicKeyParts;
            let mut adapter = RandCoreAdapter::new(rng);
            let key = rsa::RsaPrivateKey::new(&mut adapter, 2048)
                .map_err(|_| CoreError::Crypto("RSA key generation failed"))?;
            if adapter.failed {
                return Err(CoreError::Crypto("rng failure during RSA key generation"));
            }
            let der = key
                .to_pkcs8_der()
                .map_err(|_| CoreError::Crypto("RSA key encoding failed"))?;
            let jwk = Jwk {
                kty: "RSA".into(),
                n: Some(b64(&key.n().to_bytes_be())),
                e: Some(b64(&key.e().to_bytes_be())),
                ..empty_jwk()
            };
            (der.as_bytes().to_vec(), jwk)
        }
    };
    jwk.kid = kid.clone();
    jwk.alg = alg.as_str().into();
    Ok(GeneratedKey {
        kid,
        alg,
        private_pkcs8: Secret::new(pkcs8),
        public: jwk,
    })
}

fn empty_jwk() -> Jwk {
    Jwk {
        kty: String::new(),
        kid: String::new(),
        use_: "sig".into(),
        alg: String::new(),
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
    }
}

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A private key ready to sign, with its JWS header pre-encoded.
pub struct SigningKey {
    kid: String,
    alg: Alg,
    header_b64: String,
    pair: Pair,
    sys: ring::rand::SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// The `typ` header of RFC 9068 access tokens.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

impl SigningKey {
    /// Loads a PKCS#8 private key.
    pub fn from_pkcs8(kid: &str, alg: Alg, pkcs8: &[u8]) -> Result<SigningKey, CoreError> {
        let sys = ring::rand::SystemRandom::new();
        let bad = |_| CoreError::Crypto("private key does not parse");
        let pair = match alg {
            Alg::ES256 => Pair::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &sys)
                    .map_err(bad)?,
            ),
            Alg::EdDSA => Pair::Ed(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .map_err(|_| CoreError::Crypto("private key does not parse"))?,
            ),
            Alg::RS256 => Pair::Rsa(
                RsaKeyPair::from_pkcs8(pkcs8)
                    .map_err(|_| CoreError::Crypto("private key does not parse"))?,
            ),
        };
        let header = serde_json::to_vec(&Header {
            alg: alg.as_str(),
            typ: ACCESS_TOKEN_TYP,
            kid,
        })
        .map_err(|_| CoreError::Crypto("header encoding"))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            alg,
            header_b64: b64(&header),
            pair,
            sys,
        })
    }

    /// The same key with another `typ` header (`JWT` for JWT-SVIDs; access tokens keep
    /// `at+jwt`).
    pub fn with_typ(mut self, typ: &str) -> Result<SigningKey, CoreError> {
        let header = serde_json::to_vec(&Header {
            alg: self.alg.as_str(),
            typ,
            kid: &self.kid,
        })
        .map_err(|_| CoreError::Crypto("header encoding"))?;
        self.header_b64 = b64(&header);
        Ok(self)
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Signs `claims` as a compact JWS.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, CoreError> {
        let payload =
            serde_json::to_vec(claims).map_err(|_| CoreError::Crypto("claims encoding"))?;
        let mut out = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 400);
        out.push_str(&self.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut out);
        let fail = |_| CoreError::Crypto("signing failed");
        let sig = match &self.pair {
            Pair::Ecdsa(k) => {
                let mut sig = k
                    .sign(&self.sys, out.as_bytes())
                    .map_err(fail)?
                    .as_ref()
                    .to_vec();
                to_low_s(&mut sig);
                sig
            }
            Pair::Ed(k) => k.sign(out.as_bytes()).as_ref().to_vec(),
            Pair::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &self.sys, out.as_bytes(), &mut sig)
                    .map_err(fail)?;
                sig
            }
        };
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&sig, &mut out);
        Ok(out)
    }
}

/// The order of P-256 (big-endian).
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// ⌊n / 2⌋ for P-256: the largest `s` of a low-S signature.
const P256_HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Whether an ES256 signature (`r ‖ s`, 64 bytes) is in low-S form. ECDSA signatures are
/// malleable: `(r, n - s)` verifies as well as `(r, s)`. Capstan signs and accepts only the
/// low-S form, so each token has exactly one valid encoding.
fn is_low_s(sig: &[u8]) -> bool {
    sig.len() == 64 && sig[32..] <= P256_HALF_N[..]
}

/// Rewrites an ES256 signature (`r ‖ s`) to its low-S form: `s := n - s` when `s > n / 2`.
fn to_low_s(sig: &mut [u8]) {
    if sig.len() == 64 && !is_low_s(sig) {
        negate_s(sig);
    }
}

/// `s := n - s` on a 64-byte `r ‖ s` (big-endian, with borrow).
fn negate_s(sig: &mut [u8]) {
    let s = &mut sig[32..];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P256_N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        s[i] = (d + 256 * borrow) as u8;
    }
}

/// A public key ready to verify.
pub struct VerifyingKey {
    /// The algorithm the key was published with; the only one accepted for it.
    pub alg: Alg,
    decoding: DecodingKey,
}

impl VerifyingKey {
    /// Builds a verifier from a published JWK.
    pub fn from_jwk(jwk: &Jwk) -> Result<VerifyingKey, CoreError> {
        let alg = Alg::parse(&jwk.alg)?;
        let missing = || CoreError::invalid("jwk", "missing key component");
        let bad = |_| CoreError::invalid("jwk", "bad key component");
        let decoding = match (alg, jwk.kty.as_str()) {
            (Alg::ES256, "EC") => DecodingKey::from_ec_components(
                jwk.x.as_deref().ok_or_else(missing)?,
                jwk.y.as_deref().ok_or_else(missing)?,
            )
            .map_err(bad)?,
            (Alg::EdDSA, "OKP") => {
                DecodingKey::from_ed_components(jwk.x.as_deref().ok_or_else(missing)?)
                    .map_err(bad)?
            }
            (Alg::RS256, "RSA") => DecodingKey::from_rsa_components(
                jwk.n.as_deref().ok_or_else(missing)?,
                jwk.e.as_deref().ok_or_else(missing)?,
            )
            .map_err(bad)?,
            _ => return Err(CoreError::invalid("jwk", "key type does not match alg")),
        };
        Ok(VerifyingKey { alg, decoding })
    }
}

pub use capstan_proto::auth::Audience;

/// Claims of a Capstan access token (RFC 9068 plus `tenant`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: `{public_url}/t/{tenant}`.
    pub iss: String,
    /// Subject: the principal id.
    pub sub: String,
    /// Audience(s).
    pub aud: Audience,
    /// Expiry.
    pub exp: UnixTime,
    /// Issued at.
    pub iat: UnixTime,
    /// Not before.
    pub nbf: UnixTime,
    /// Token id, used for revocation.
    pub jti: String,
    /// The OAuth2 client the token was issued to.
    pub client_id: String,
    /// Space-separated granted scopes.
    pub scope: String,
    /// The tenant.
    pub tenant: String,
    /// Confirmation (RFC 8705 §3.1): the token is bound to the client certificate whose
    /// SHA-256 thumbprint this is, and is only good over a connection presenting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The `cnf` claim of a certificate-bound token (RFC 8705 §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url (no padding) SHA-256 of the DER certificate.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The RFC 8705 thumbprint of a DER certificate: base64url (no padding) of its SHA-256.
pub fn x5t_s256(der: &[u8]) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Why a token was refused. The message is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS, or an unknown/`none` algorithm.
    #[error("token is malformed")]
    Malformed,
    /// `typ` is not `at+jwt`.
    #[error("token is not an access token (typ must be at+jwt)")]
    WrongType,
    /// No published key has this `kid`.
    #[error("token is signed by an unknown key")]
    UnknownKey,
    /// The header's `alg` differs from the key's published algorithm.
    #[error("token algorithm does not match the signing key")]
    AlgorithmMismatch,
    /// The signature does not verify, or the claims are not an access token's.
    #[error("token signature or claims are invalid")]
    BadSignature,
    /// `iss` is not the expected issuer.
    #[error("token was issued by another issuer")]
    WrongIssuer,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The expected audience is not in `aud`.
    #[error("token is not meant for this audience")]
    WrongAudience,
    /// The token is bound to a client certificate (RFC 8705 `cnf`) the connection does not
    /// present.
    #[error("token is bound to a client certificate this connection does not present")]
    CertificateMismatch,
}

/// Checks an RFC 8705 binding: a token with `cnf` is good only with the certificate (DER) whose
/// thumbprint it names; a token without one with any connection.
pub fn check_confirmation(
    claims: &AccessClaims,
    cert_der: Option<&[u8]>,
) -> Result<(), TokenError> {
    match &claims.cnf {
        None => Ok(()),
        Some(c) if cert_der.map(x5t_s256).as_deref() == Some(c.x5t_s256.as_str()) => Ok(()),
        Some(_) => Err(TokenError::CertificateMismatch),
    }
}

/// What a verification checks besides the signature.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// Required `iss`.
    pub issuer: &'a str,
    /// Required member of `aud`, if any.
    pub audience: Option<&'a str>,
    /// The current time.
    pub now: UnixTime,
    /// Allowed clock skew in seconds for `exp` and `nbf`.
    pub leeway: i64,
}

/// Reads a token's claims without verifying anything, to find out which tenant's keys to use.
pub fn peek_claims(token: &str) -> Option<AccessClaims> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Verifies an access token: header `typ`, a published `kid` whose algorithm matches, the
/// signature, `iss`, `exp`, `nbf` and (optionally) `aud`.
pub fn verify<'k>(
    token: &str,
    key_for: impl FnOnce(&str) -> Option<&'k VerifyingKey>,
    expect: Expect<'_>,
) -> Result<AccessClaims, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(TokenError::WrongType);
    }
    let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
    let key = key_for(kid).ok_or(TokenError::UnknownKey)?;
    if header.alg != key.alg.jwt_alg() {
        return Err(TokenError::AlgorithmMismatch);
    }
    if key.alg == Alg::ES256 {
        let sig = token
            .rsplit_once('.')
            .and_then(|(_, s)| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or(TokenError::Malformed)?;
        if !is_low_s(&sig) {
            return Err(TokenError::BadSignature);
        }
    }
    let mut validation = Validation::new(key.alg.jwt_alg());
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)
        .map_err(|_| TokenError::BadSignature)?
        .claims;
    check_claims(&claims, expect)?;
    Ok(claims)
}

/// The claim checks of [`verify`] (issuer, expiry, not-before, audience), for claims whose
/// signature was verified earlier.
pub fn check_claims(claims: &AccessClaims, expect: Expect<'_>) -> Result<(), TokenError> {
    if claims.iss != expect.issuer {
        return Err(TokenError::WrongIssuer);
    }
    if expect.now >= claims.exp + expect.leeway {
        return Err(TokenError::Expired);
    }
    if claims.nbf > expect.now + expect.leeway {
        return Err(TokenError::NotYetValid);
    }
    if let Some(aud) = expect.audience {
        if !claims.aud.contains(aud) {
            return Err(TokenError::WrongAudience);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SystemRng;

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://x/t/default".into(),
            sub: "svc_a".into(),
            aud: Audience::One("orders".into()),
            exp: now + 60,
            iat: now,
            nbf: now,
            jti: "j1".into(),
            client_id: "svc_a".into(),
            scope: "read".into(),
            tenant: "default".into(),
            cnf: None,
        }
    }

    /// The high-S twin of a valid ES256 token verifies with a plain ECDSA check, and is refused.
    #[test]
    fn es256_signatures_are_low_s_and_high_s_is_refused() {
        let rng = SystemRng::new();
        let g = generate_key(Alg::ES256, &rng).unwrap();
        let sk = SigningKey::from_pkcs8(&g.kid, Alg::ES256, g.private_pkcs8.expose()).unwrap();
        let vk = VerifyingKey::from_jwk(&g.public).unwrap();
        let expect = Expect {
            issuer: "https://x/t/default",
            audience: None,
            now: 1000,
            leeway: 0,
        };
        for _ in 0..64 {
            let token = sk.sign(&claims(1000)).unwrap();
            let (signed, sig) = token.rsplit_once('.').unwrap();
            let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            assert!(is_low_s(&sig));
            assert!(verify(&token, |_| Some(&vk), expect).is_ok());
            negate_s(&mut sig);
            let twin = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&sig));
            // The twin is a valid ECDSA signature (the library alone would accept it)…
            let mut v = Validation::new(Algorithm::ES256);
            v.validate_exp = false;
            v.required_spec_claims.clear();
            v.validate_aud = false;
            assert!(jsonwebtoken::decode::<AccessClaims>(&twin, &vk.decoding, &v).is_ok());
            // …and Capstan refuses it.
            assert_eq!(
                verify(&twin, |_| Some(&vk), expect),
                Err(TokenError::BadSignature)
            );
        }
    }

    #[test]
    fn every_algorithm_signs_and_verifies() {
        let rng = SystemRng::new();
        for alg in Alg::ALL {
            let g = generate_key(alg, &rng).unwrap();
            let sk = SigningKey::from_pkcs8(&g.kid, alg, g.private_pkcs8.expose()).unwrap();
            let vk = VerifyingKey::from_jwk(&g.public).unwrap();
            let token = sk.sign(&claims(1000)).unwrap();
            let expect = Expect {
                issuer: "https://x/t/default",
                audience: Some("orders"),
                now: 1000,
                leeway: 0,
            };
            let got = verify(&token, |kid| (kid == g.kid).then_some(&vk), expect).unwrap();
            assert_eq!(got, claims(1000));
            let late = Expect {
                now: 1060,
                ..expect
            };
            assert_eq!(
                verify(&token, |_| Some(&vk), late),
                Err(TokenError::Expired)
            );
            let early = Expect { now: 999, ..expect };
            assert_eq!(
                verify(&token, |_| Some(&vk), early),
                Err(TokenError::NotYetValid)
            );
            let other = Expect {
                audience: Some("billing"),
                ..expect
            };
            assert_eq!(
                verify(&token, |_| Some(&vk), other),
                Err(TokenError::WrongAudience)
            );
        }
    }
}
