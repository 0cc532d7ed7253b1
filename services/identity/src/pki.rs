//! The PKI: CA certificates, CSR checks and X.509-SVIDs, by the rules of `X509-SVID.md`.
//!
//! rcgen builds certificates and x509-parser reads them. rcgen signs whatever a CSR asks for
//! (a CSR asking for `CA:TRUE` becomes a CA), so a CSR is only ever a proof of possession: its
//! self-signature is checked, its public key is taken, and **every** field of the certificate is
//! built here. Serials are always random (rcgen derives them from the key otherwise), leaves
//! carry an explicit `CA:FALSE`, and no CA carries URI name constraints (rustls-webpki rejects
//! every leaf under such a CA).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo as ParsedSpki;

use crate::spiffe::{SpiffeId, TrustDomain};

/// How far in the past a certificate's `notBefore` is put, for peers whose clocks lag.
pub const BACKDATE_SECONDS: i64 = 60;
/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Most DNS names a leaf carries.
pub const MAX_DNS_NAMES: usize = 32;
/// RSA keys shorter than this are refused.
pub const MIN_RSA_BITS: usize = 2048;
/// RSA keys longer than this are refused (their signature checks cost too much to offer to
/// anyone with a token).
pub const MAX_RSA_BITS: usize = 8192;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// What is wrong with a CSR, a certificate or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    /// The input (a CSR, an imported CA) breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// Building or signing a certificate failed.
    #[error("certificate building failed: {0}")]
    Build(String),
}

fn invalid(s: impl Into<String>) -> PkiError {
    PkiError::Invalid(s.into())
}

fn build(e: impl std::fmt::Display) -> PkiError {
    PkiError::Build(e.to_string())
}

/// The key type of a CA Capstan generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKeyType {
    /// ECDSA P-256 with SHA-256 (the default).
    EcP256,
    /// Ed25519.
    Ed25519,
}

impl CaKeyType {
    /// Parses `ec-p256` or `ed25519`.
    pub fn parse(s: &str) -> Result<CaKeyType, PkiError> {
        match s {
            "ec-p256" => Ok(CaKeyType::EcP256),
            "ed25519" => Ok(CaKeyType::Ed25519),
            _ => Err(invalid(format!(
                "unknown CA key type {s:?} (use ec-p256 or ed25519)"
            ))),
        }
    }

    /// The name `parse` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            CaKeyType::EcP256 => "ec-p256",
            CaKeyType::Ed25519 => "ed25519",
        }
    }
}

/// A random positive certificate serial: 16 bytes, 126 bits of entropy, minimal DER.
pub fn random_serial(rng: &dyn capstan_core::rng::Rng) -> Result<[u8; 16], PkiError> {
    let mut s = [0u8; 16];
    rng.fill(&mut s)
        .map_err(|_| PkiError::Build("no randomness for the serial".into()))?;
    s[0] = (s[0] & 0x3f) | 0x40;
    Ok(s)
}

/// The serial as lowercase hex (how records and the API name certificates).
pub fn serial_hex(serial: &[u8]) -> String {
    serial.iter().map(|b| format!("{b:02x}")).collect()
}

fn datetime(unix: i64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(build)
}

/// A CA's material as generated or imported: its certificate, the intermediates above it (for
/// an imported CA), the root peers trust, and its private key (PKCS#8 DER, to be sealed).
#[derive(Debug, Clone)]
pub struct CaMaterial {
    /// The CA certificate (DER).
    pub cert_der: Vec<u8>,
    /// Certificates between the CA and the root, nearest first (empty for a generated root).
    pub intermediates_der: Vec<Vec<u8>>,
    /// The root peers trust (the CA itself when Capstan generated it).
    pub root_der: Vec<u8>,
    /// PKCS#8 DER of the private key.
    pub key_pkcs8: Vec<u8>,
    /// Validity.
    pub not_before: i64,
    /// Validity.
    pub not_after: i64,
}

/// Generates a self-signed CA for `td`: `cA=true` (path length 0: it signs only leaves),
/// keyUsage critical `keyCertSign | cRLSign | digitalSignature`, the trust domain's ID as its
/// URI SAN, no name constraints, and a Subject unique to this generation (it names the
/// generation and the serial).
pub fn generate_ca(
    td: &TrustDomain,
    generation: i64,
    key_type: CaKeyType,
    now: i64,
    ttl_seconds: i64,
    serial: [u8; 16],
) -> Result<CaMaterial, PkiError> {
    let alg = match key_type {
        CaKeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        CaKeyType::Ed25519 => &rcgen::PKCS_ED25519,
    };
    let key = KeyPair::generate_for(alg).map_err(build)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Capstan");
    dn.push(
        DnType::CommonName,
        format!(
            "Capstan CA {td} generation {generation} {}",
            &serial_hex(&serial)[..8]
        ),
    );
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(td.id().try_into().map_err(build)?)];
    let not_before = now - BACKDATE_SECONDS;
    let not_after = now + ttl_seconds;
    params.not_before = datetime(not_before)?;
    params.not_after = datetime(not_after)?;
    let cert = params.self_signed(&key).map_err(build)?;
    Ok(CaMaterial {
        cert_der: cert.der().to_vec(),
        intermediates_der: Vec::new(),
        root_der: cert.der().to_vec(),
        key_pkcs8: key.serialize_der(),
        not_before,
        not_after,
    })
}

/// Every certificate of a PEM text, in order.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let p = p.map_err(|e| invalid(format!("not PEM: {e}")))?;
        if p.label == "CERTIFICATE" {
            out.push(p.contents);
        }
    }
    Ok(out)
}

/// DER certificates as one PEM text.
pub fn to_pem(ders: &[&[u8]]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| invalid(format!("a certificate does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes after a certificate"));
    }
    Ok(cert)
}

/// Checks an upstream-signed CA to import: `cert_pem` holds the CA certificate first, then the
/// chain up to and including the organisation's root; `key_pem` its private key. The CA must be
/// a CA with `keyCertSign` and no name constraints, the key must be its key, and each
/// certificate must be signed by the next, ending at a self-signed root.
pub fn import_ca(cert_pem: &str, key_pem: &str, now: i64) -> Result<CaMaterial, PkiError> {
    let ders = pem_certificates(cert_pem)?;
    let Some(first) = ders.first() else {
        return Err(invalid("the certificate file holds no CERTIFICATE block"));
    };
    let key = KeyPair::from_pem(key_pem)
        .map_err(|e| invalid(format!("the private key does not parse: {e}")))?;
    let ca = parse_cert(first)?;
    if !ca.is_ca() {
        return Err(invalid(
            "the certificate is not a CA (basicConstraints cA is not true)",
        ));
    }
    match ca.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => {}
        _ => return Err(invalid("the CA certificate's keyUsage lacks keyCertSign")),
    }
    if matches!(ca.name_constraints(), Ok(Some(_))) {
        return Err(invalid(
            "the CA certificate has name constraints: rustls-webpki would reject every leaf under it",
        ));
    }
    if ca.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(invalid("the private key is not the CA certificate's key"));
    }
    let validity = ca.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if not_after <= now {
        return Err(invalid("the CA certificate has expired"));
    }
    let certs = ders
        .iter()
        .map(|d| parse_cert(d))
        .collect::<Result<Vec<_>, _>>()?;
    for pair in certs.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| {
                invalid(format!(
                    "\"{}\" is not signed by the next certificate, \"{}\": give the chain in order, up to the root",
                    pair[0].subject(),
                    pair[1].subject()
                ))
            })?;
    }
    let root = certs.last().ok_or_else(|| invalid("empty chain"))?;
    if root.subject() != root.issuer() || root.verify_signature(None).is_err() {
        return Err(invalid(
            "the chain does not end at a self-signed root: append the upstream intermediates and root to the certificate file",
        ));
    }
    if let Some(c) = certs.iter().skip(1).find(|c| !c.is_ca()) {
        return Err(invalid(format!(
            "\"{}\" in the chain is not a CA certificate",
            c.subject()
        )));
    }
    let root_der = ders.last().cloned().unwrap_or_default();
    // The bundle publishes the root as a JWK: a key type it cannot express would break it.
    x509_svid_jwk(&root_der).map_err(|e| {
        invalid(format!(
            "the root's key cannot be published in a SPIFFE bundle (EC P-256/P-384, Ed25519 or RSA): {e}"
        ))
    })?;
    let intermediates_der = if ders.len() > 1 {
        ders[1..ders.len() - 1].to_vec()
    } else {
        Vec::new()
    };
    Ok(CaMaterial {
        cert_der: first.clone(),
        intermediates_der,
        root_der,
        key_pkcs8: key.serialize_der(),
        not_before,
        not_after,
    })
}

/// A loaded CA, ready to sign leaves.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    /// The chain a leaf is sent with after itself: the CA and its intermediates (DER).
    pub chain_der: Vec<Vec<u8>>,
    /// When the CA expires (a leaf never outlives it).
    pub not_after: i64,
}

impl CaSigner {
    /// Loads a CA from its certificate, intermediates and PKCS#8 key. The chain sent after a
    /// leaf leaves out `root_der` (peers have it in their bundle).
    pub fn load(
        cert_der: &[u8],
        intermediates_der: &[Vec<u8>],
        key_pkcs8: &[u8],
        root_der: &[u8],
    ) -> Result<CaSigner, PkiError> {
        let key = KeyPair::try_from(key_pkcs8).map_err(build)?;
        let not_after = parse_cert(cert_der)?.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&cert_der.to_vec().into(), key).map_err(build)?;
        let mut chain_der = vec![cert_der.to_vec()];
        chain_der.extend(intermediates_der.iter().cloned());
        chain_der.retain(|c| c.as_slice() != root_der);
        Ok(CaSigner {
            issuer,
            chain_der,
            not_after,
        })
    }
}

/// A certificate's Subject and serial (hex), for display; empty when it does not parse.
pub fn describe(cert_der: &[u8]) -> (String, String) {
    match parse_cert(cert_der) {
        Ok(c) => (c.subject().to_string(), serial_hex(c.raw_serial())),
        Err(_) => (String::new(), String::new()),
    }
}

/// The kind of public key a CSR carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256.
    EcP256,
    /// ECDSA P-384.
    EcP384,
    /// Ed25519.
    Ed25519,
    /// RSA with this many bits.
    Rsa(usize),
}

/// A CSR whose self-signature verified: only its public key is used.
#[derive(Debug)]
pub struct CheckedCsr {
    spki: SubjectPublicKeyInfo,
    /// The key's kind.
    pub key: KeyKind,
    /// The URI SANs the CSR asked for (never put in a certificate; checked by the caller).
    pub requested_uris: Vec<String>,
    /// The DNS SANs the CSR asked for (never put in a certificate as such).
    pub requested_dns: Vec<String>,
}

fn rsa_bits(modulus: &[u8]) -> usize {
    let m: Vec<u8> = modulus.iter().copied().skip_while(|b| *b == 0).collect();
    match m.first() {
        Some(b) => (m.len() - 1) * 8 + (8 - b.leading_zeros() as usize),
        None => 0,
    }
}

fn key_kind(spki: &ParsedSpki<'_>) -> Result<KeyKind, PkiError> {
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            match curve.as_deref() {
                Some(OID_P256) => Ok(KeyKind::EcP256),
                Some(OID_P384) => Ok(KeyKind::EcP384),
                Some(other) => Err(invalid(format!(
                    "the CSR's key is on curve {other}, which is not accepted (use P-256, P-384, Ed25519 or RSA >= 2048)"
                ))),
                None => Err(invalid(
                    "the CSR's EC key names no curve (explicit curve parameters are not accepted)",
                )),
            }
        }
        OID_ED25519 => Ok(KeyKind::Ed25519),
        OID_RSA => match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                let bits = rsa_bits(rsa.modulus);
                if bits < MIN_RSA_BITS {
                    Err(invalid(format!(
                        "the CSR's RSA key has {bits} bits: at least {MIN_RSA_BITS} are required"
                    )))
                } else if bits > MAX_RSA_BITS {
                    Err(invalid(format!(
                        "the CSR's RSA key has {bits} bits: at most {MAX_RSA_BITS} are accepted"
                    )))
                } else {
                    Ok(KeyKind::Rsa(bits))
                }
            }
            _ => Err(invalid("the CSR's RSA key does not parse")),
        },
        other => Err(invalid(format!(
            "the CSR's key algorithm {other} is not accepted (use P-256, P-384, Ed25519 or RSA >= 2048)"
        ))),
    }
}

/// Checks a PEM (or DER) CSR: it parses, its self-signature verifies, its key is an accepted
/// kind and size, and it asks for nothing a leaf may never have (`cA=true`, `keyCertSign`,
/// `cRLSign`): such a CSR is refused, not quietly downgraded, so the requester learns its
/// request was wrong. The SANs it asks for are returned for the caller to check; they are never
/// copied into a certificate.
pub fn check_csr(input: &[u8]) -> Result<CheckedCsr, PkiError> {
    if input.len() > MAX_CSR_BYTES {
        return Err(invalid(format!("the CSR is over {MAX_CSR_BYTES} bytes")));
    }
    let der = if input.starts_with(b"-----") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(input)
            .map_err(|_| invalid("the CSR is not valid PEM"))?;
        if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
            return Err(invalid(format!(
                "the PEM block is a {:?}, not a CERTIFICATE REQUEST",
                pem.label
            )));
        }
        pem.contents
    } else {
        input.to_vec()
    };
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| invalid(format!("the CSR does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes after the CSR"));
    }
    // The key kind first: a weak or unknown key is named as such (ring would also refuse to
    // verify its signature, with a less useful message).
    let spki_parsed = &csr.certification_request_info.subject_pki;
    let key = key_kind(spki_parsed)?;
    csr.verify_signature().map_err(|_| {
        invalid("the CSR's self-signature does not verify: it must be signed by its own key")
    })?;
    let mut requested_uris = Vec::new();
    let mut requested_dns = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(invalid(
                        "the CSR asks for CA:TRUE: an SVID is never a CA certificate",
                    ))
                }
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                    return Err(invalid(
                        "the CSR asks for keyCertSign or cRLSign: an SVID may not sign certificates",
                    ))
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => requested_uris.push((*u).to_owned()),
                            GeneralName::DNSName(d) => requested_dns.push((*d).to_owned()),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let spki = SubjectPublicKeyInfo::from_der(spki_parsed.raw)
        .map_err(|_| invalid("the CSR's public key is not of an accepted kind"))?;
    Ok(CheckedCsr {
        spki,
        key,
        requested_uris,
        requested_dns,
    })
}

/// Checks a DNS name for a SAN: 1–253 bytes of LDH labels (a leading `*.` wildcard is refused).
pub fn check_dns_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{name:?} is not a DNS name (letters, digits and '-' in dot-separated labels)"
        )))
    }
}

/// What Capstan puts in a leaf.
#[derive(Debug, Clone)]
pub struct LeafSpec<'a> {
    /// The one URI SAN.
    pub spiffe_id: &'a SpiffeId,
    /// DNS SANs (from the principal's registration entry).
    pub dns_names: &'a [String],
    /// Issue time; `notBefore` is [`BACKDATE_SECONDS`] earlier.
    pub now: i64,
    /// `notAfter` (capped by the CA's).
    pub not_after: i64,
    /// A random serial ([`random_serial`]).
    pub serial: [u8; 16],
}

/// Signs an X.509-SVID for the CSR's key: exactly one URI SAN (the SPIFFE ID) plus the DNS
/// names given, `CA:FALSE` (critical), keyUsage critical `digitalSignature | keyEncipherment |
/// keyAgreement`, extendedKeyUsage `serverAuth, clientAuth`, the random serial, a backdated
/// `notBefore`, and a `notAfter` no later than the CA's. Returns the DER.
pub fn sign_leaf(
    ca: &CaSigner,
    csr: &CheckedCsr,
    spec: &LeafSpec<'_>,
) -> Result<(Vec<u8>, i64), PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Capstan");
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&spec.serial));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut sans = vec![SanType::URI(
        spec.spiffe_id.as_str().try_into().map_err(build)?,
    )];
    if spec.dns_names.len() > MAX_DNS_NAMES {
        return Err(invalid(format!("at most {MAX_DNS_NAMES} DNS names")));
    }
    for d in spec.dns_names {
        check_dns_name(d)?;
        sans.push(SanType::DnsName(d.as_str().try_into().map_err(build)?));
    }
    params.subject_alt_names = sans;
    params.use_authority_key_identifier_extension = true;
    let not_after = spec.not_after.min(ca.not_after);
    params.not_before = datetime(spec.now - BACKDATE_SECONDS)?;
    params.not_after = datetime(not_after)?;
    let cert = params.signed_by(&csr.spki, &ca.issuer).map_err(build)?;
    Ok((cert.der().to_vec(), not_after))
}

/// A CA certificate's public key as a JWK for the SPIFFE bundle (`use: x509-svid`, the
/// certificate in `x5c`).
pub fn x509_svid_jwk(cert_der: &[u8]) -> Result<serde_json::Value, PkiError> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let cert = parse_cert(cert_der)?;
    let spki = cert.public_key();
    let mut jwk = serde_json::Map::new();
    jwk.insert("use".into(), "x509-svid".into());
    match key_kind(spki)? {
        KeyKind::EcP256 | KeyKind::EcP384 => {
            let (crv, n) = match key_kind(spki)? {
                KeyKind::EcP256 => ("P-256", 32),
                _ => ("P-384", 48),
            };
            let point = spki.subject_public_key.as_ref();
            if point.len() != 1 + 2 * n || point[0] != 4 {
                return Err(invalid("the CA's EC point is not uncompressed"));
            }
            jwk.insert("kty".into(), "EC".into());
            jwk.insert("crv".into(), crv.into());
            jwk.insert("x".into(), URL_SAFE_NO_PAD.encode(&point[1..=n]).into());
            jwk.insert("y".into(), URL_SAFE_NO_PAD.encode(&point[n + 1..]).into());
        }
        KeyKind::Ed25519 => {
            jwk.insert("kty".into(), "OKP".into());
            jwk.insert("crv".into(), "Ed25519".into());
            jwk.insert(
                "x".into(),
                URL_SAFE_NO_PAD
                    .encode(spki.subject_public_key.as_ref())
                    .into(),
            );
        }
        KeyKind::Rsa(_) => {
            let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
                return Err(invalid("the CA's RSA key does not parse"));
            };
            let strip = |b: &[u8]| {
                b.iter()
                    .copied()
                    .skip_while(|x| *x == 0)
                    .collect::<Vec<_>>()
            };
            jwk.insert("kty".into(), "RSA".into());
            jwk.insert(
                "n".into(),
                URL_SAFE_NO_PAD.encode(strip(rsa.modulus)).into(),
            );
            jwk.insert(
                "e".into(),
                URL_SAFE_NO_PAD.encode(strip(rsa.exponent)).into(),
            );
        }
    }
    jwk.insert("x5c".into(), serde_json::json!([STANDARD.encode(cert_der)]));
    Ok(serde_json::Value::Object(jwk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_core::rng::SystemRng;

    fn td() -> TrustDomain {
        TrustDomain::parse("capstan.local").unwrap()
    }

    fn csr(params: CertificateParams, key: &KeyPair) -> String {
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    /// CSRs made by OpenSSL (testdata/, `openssl req -new …`): weak RSA and curves outside the
    /// accepted set are refused with a message naming what is accepted; RSA 2048 passes.
    #[test]
    fn weak_keys_and_unknown_curves_are_refused() {
        for (name, pem) in [
            ("RSA 1024", include_str!("../testdata/rsa1024.csr")),
            ("secp256k1", include_str!("../testdata/secp256k1.csr")),
            ("P-521", include_str!("../testdata/p521.csr")),
        ] {
            let err = check_csr(pem.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("{name} accepted"));
            let msg = err.to_string();
            assert!(
                msg.contains("P-256") || msg.contains("2048"),
                "{name}: {msg}"
            );
        }
        let ok = check_csr(include_str!("../testdata/rsa2048.csr").as_bytes()).unwrap();
        assert!(matches!(ok.key, KeyKind::Rsa(_)));
    }

    #[test]
    fn a_leaf_is_built_from_the_csr_key_only() {
        let rng = SystemRng::new();
        let ca = generate_ca(
            &td(),
            1,
            CaKeyType::EcP256,
            1_800_000_000,
            86_400,
            random_serial(&rng).unwrap(),
        )
        .unwrap();
        let signer = CaSigner::load(&ca.cert_der, &[], &ca.key_pkcs8, &ca.root_der).unwrap();
        assert!(signer.chain_der.is_empty());
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::URI("spiffe://other/x".try_into().unwrap()));
        let checked = check_csr(csr(p, &key).as_bytes()).unwrap();
        assert_eq!(checked.requested_uris, vec!["spiffe://other/x"]);
        let id = SpiffeId::parse("spiffe://capstan.local/t/default/svc_a").unwrap();
        let (der, not_after) = sign_leaf(
            &signer,
            &checked,
            &LeafSpec {
                spiffe_id: &id,
                dns_names: &[],
                now: 1_800_000_000,
                not_after: 1_800_003_600,
                serial: random_serial(&rng).unwrap(),
            },
        )
        .unwrap();
        assert_eq!(not_after, 1_800_003_600);
        let cert = parse_cert(&der).unwrap();
        assert!(!cert.is_ca());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        assert_eq!(cert.public_key().raw, key.subject_public_key_info());
        cert.verify_signature(Some(parse_cert(&ca.cert_der).unwrap().public_key()))
            .unwrap();
    }

    #[test]
    fn csrs_asking_for_ca_powers_or_weak_keys_are_refused() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        assert!(check_csr(csr(p, &key).as_bytes())
            .unwrap_err()
            .to_string()
            .contains("CA:TRUE"));
        let mut p = CertificateParams::default();
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        assert!(check_csr(csr(p, &key).as_bytes()).is_err());
        // A CSR whose signature does not match its key.
        let good = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let mut der = good.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        assert!(check_csr(&der)
            .unwrap_err()
            .to_string()
            .contains("self-signature"));
        assert!(check_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
        .is_err());
        assert!(check_csr(&vec![b'a'; MAX_CSR_BYTES + 1]).is_err());
    }

    #[test]
    fn rsa_bits_ignore_leading_zeros() {
        assert_eq!(rsa_bits(&[0, 0x80, 0, 0]), 24);
        assert_eq!(rsa_bits(&[0x01, 0]), 9);
        assert_eq!(rsa_bits(&[]), 0);
    }
}
