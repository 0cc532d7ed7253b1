//! Wire types of the identity service: CAs, X.509-SVIDs, JWT-SVIDs, registration entries and
//! join tokens.

use serde::{Deserialize, Serialize};

/// `POST /v1/identity/svids`: a PKCS#10 certificate signing request. Only its public key is
/// used (after its self-signature is checked); every certificate field is Capstan's.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueSvid {
    /// The CSR, PEM (`-----BEGIN CERTIFICATE REQUEST-----`).
    pub csr: String,
}

/// An issued X.509-SVID.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SvidResponse {
    /// The SPIFFE ID in the certificate's URI SAN.
    pub spiffe_id: String,
    /// The leaf, then any intermediates up to (not including) the root, PEM.
    pub svid_chain_pem: String,
    /// The leaf's `notAfter` (Unix seconds).
    pub expires_at: i64,
    /// Every root peers must trust now (prepared, active and retired CAs), PEM.
    pub bundle_pem: String,
    /// The leaf's serial, lowercase hex.
    pub serial: String,
    /// The CA that signed it.
    pub ca_id: String,
    /// When to renew: half the lifetime (clients add jitter).
    pub renew_after: i64,
}

/// `POST /v1/identity/jwt-svids`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueJwtSvid {
    /// The audience (one string) or audiences (an array) the token is for.
    pub audience: crate::auth::Audience,
    /// Lifetime in seconds (capped by the deployment's maximum).
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

/// An issued JWT-SVID.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JwtSvidResponse {
    /// The compact JWT; its `sub` is the SPIFFE ID.
    pub token: String,
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// `exp` (Unix seconds).
    pub expires_at: i64,
}

/// `POST /v1/identity/ca/rotate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateCa {
    /// Seconds between publishing the new CA in the bundle and signing with it (the
    /// deployment's default when absent). A rotation while a CA is prepared activates it now.
    #[serde(default)]
    pub activate_in_seconds: Option<i64>,
}

/// A CA generation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaView {
    /// Its id (`g<generation>`).
    pub id: String,
    /// 1, 2, 3, …
    pub generation: i64,
    /// `prepared`, `active` or `retired`.
    pub slot: String,
    /// `generated` or `imported`.
    pub origin: String,
    /// `ec-p256`, `ed25519` or `imported`.
    pub key_type: String,
    /// The certificate's Subject.
    pub subject: String,
    /// The certificate's serial, hex.
    pub serial: String,
    /// Validity (Unix seconds).
    pub not_before: i64,
    /// Validity (Unix seconds).
    pub not_after: i64,
    /// When it signs (or signed) its first leaf.
    pub activates_at: i64,
    /// When it stopped signing, if it has.
    pub retired_at: Option<i64>,
    /// When it was tainted, if it was.
    pub tainted_at: Option<i64>,
    /// Whether peers must trust it now (it is in the bundle).
    pub in_bundle: bool,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// `POST /v1/identity/entries`: what a principal's SVIDs carry beyond the defaults.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEntry {
    /// The principal it registers (in the caller's tenant).
    pub principal: String,
    /// A SPIFFE path under the tenant's prefix (`payments/orders` gives
    /// `spiffe://<td>/t/<tenant>/payments/orders`); the default ID when absent.
    #[serde(default)]
    pub spiffe_path: Option<String>,
    /// DNS SANs.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// SVID lifetime in seconds (default 3600, capped by the deployment's maximum).
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

/// `PUT /v1/identity/entries/{principal}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEntry {
    /// As in [`NewEntry`].
    #[serde(default)]
    pub spiffe_path: Option<String>,
    /// As in [`NewEntry`].
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// As in [`NewEntry`].
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

/// A registration entry.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntryView {
    /// The principal.
    pub principal: String,
    /// The SPIFFE ID its SVIDs carry.
    pub spiffe_id: String,
    /// The path, if the entry sets one.
    pub spiffe_path: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// SVID lifetime (effective, after the cap).
    pub ttl_seconds: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// `POST /v1/identity/join-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    /// The principal the token yields an SVID for (in the caller's tenant).
    pub principal: String,
    /// Lifetime in seconds (default 3600, at most 7 days).
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

/// A join token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinTokenResponse {
    /// The token: `Authorization: JoinToken <token>` on `POST /v1/identity/svids`, once.
    pub token: String,
    /// The principal.
    pub principal: String,
    /// The SPIFFE ID the SVID will carry.
    pub spiffe_id: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// An issued certificate, as recorded for audit.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SvidRecordView {
    /// Serial, hex.
    pub serial: String,
    /// The principal.
    pub principal: String,
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// The signing CA.
    pub ca_id: String,
    /// `bearer` or `join_token`.
    pub via: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub not_after: i64,
}
