//! Wire types of the issuer: the `/v1` administration API and the OAuth2 token and
//! introspection answers.

use serde::{Deserialize, Serialize};

/// The `aud` claim: one audience is written as a string, several as an array (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// Builds the claim from a list.
    pub fn from_vec(mut v: Vec<String>) -> Audience {
        if v.len() == 1 {
            Audience::One(v.remove(0))
        } else {
            Audience::Many(v)
        }
    }

    /// Whether `aud` is among the audiences.
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }

    /// The audiences as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a.clone()],
            Audience::Many(v) => v.clone(),
        }
    }
}

/// `POST /v1/clients` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// Human-readable name (1–200 characters).
    pub name: String,
    /// Scopes the client may request (RFC 6749 scope tokens).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Audiences the client may request tokens for (at least one).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Access-token lifetime in seconds (60 to the server's maximum); the server default if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ttl_seconds: Option<i64>,
    /// A managed or built-in policy to set as the new principal's permissions boundary. The
    /// create call's guard context carries it as `policy:PermissionsBoundary`, so a delegated
    /// administrator can be allowed to create principals only with a given boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions_boundary: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post` (both take the secret), or
    /// `tls_client_auth` (RFC 8705: the client authenticates at the token endpoint with its
    /// X.509-SVID over mTLS, never with the secret, and its tokens are bound to the
    /// certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<String>,
    /// For `tls_client_auth`: the URI SAN its certificate must carry [its own SPIFFE ID,
    /// `spiffe://<trust domain>/t/<tenant>/<client id>`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_auth_san_uri: Option<String>,
}

/// A client as shown by the API (never its secret or hash).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClientView {
    /// Client id (also the principal id and `sub`).
    pub client_id: String,
    /// Tenant.
    pub tenant: String,
    /// Name.
    pub name: String,
    /// Allowed scopes.
    pub scopes: Vec<String>,
    /// Allowed audiences.
    pub audiences: Vec<String>,
    /// Token lifetime override.
    pub token_ttl_seconds: Option<i64>,
    /// Tenant administrator.
    pub admin: bool,
    /// How it authenticates at the token endpoint: `client_secret_basic` (or `_post`), or
    /// `tls_client_auth`.
    #[serde(default = "secret_basic")]
    pub token_endpoint_auth_method: String,
    /// For `tls_client_auth`: the URI SAN its certificate must carry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tls_client_auth_san_uri: Option<String>,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// When the previous secret stops working, during a rotation grace period.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub previous_secret_expires_at: Option<i64>,
}

/// A client together with its secret, returned once at creation or rotation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClientWithSecret {
    /// The client.
    #[serde(flatten)]
    pub client: ClientView,
    /// The secret; it cannot be retrieved again.
    pub client_secret: String,
}

/// `POST /v1/tenants` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Tenant id: lowercase letters, digits and `-`, starting with a letter.
    pub id: String,
    /// `ES256` (default), `EdDSA` or `RS256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_alg: Option<String>,
}

/// A tenant as shown by the API.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantView {
    /// Tenant id.
    pub id: String,
    /// Signing algorithm.
    pub signing_alg: String,
    /// Issuer URL.
    pub issuer: String,
    /// Creation time.
    pub created_at: i64,
}

/// A new tenant and its first administrator.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedTenant {
    /// The tenant.
    pub tenant: TenantView,
    /// Its administrator client, with the secret shown once.
    pub admin_client: ClientWithSecret,
}

/// `POST /v1/keys/rotate` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Algorithm of the new key (and of later keys); the tenant's current one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Seconds before the new key signs; the server default if absent. 0 signs at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_delay_seconds: Option<i64>,
    /// An emergency rotation: the new key signs at once, and keys still waiting to sign are
    /// withdrawn (a pending key with a long delay can no longer hold back a replacement).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supersede: bool,
}

/// A signing key's public facts.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyView {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: String,
    /// When it was published.
    pub created_at: i64,
    /// When it starts (started) signing.
    pub activates_at: i64,
}

/// `POST /v1/clients/{id}/secret` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// Seconds the old secret keeps working (0–30 days); 0 or absent ends it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// The JWT access token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds.
    pub expires_in: i64,
    /// Granted scopes, space-separated.
    pub scope: String,
}

/// An introspection answer (RFC 7662 §2.2). Inactive tokens carry only `active: false`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Introspection {
    /// Whether the token is currently active.
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Granted scopes.
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Client the token was issued to.
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Subject.
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Audiences.
    pub aud: Option<Audience>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Issuer.
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Expiry.
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Issued at.
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Not before.
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Token id.
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// `Bearer`.
    pub token_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Tenant.
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Confirmation of a certificate-bound token (RFC 8705 §3.2): `{"x5t#S256": …}`.
    pub cnf: Option<serde_json::Value>,
}

fn secret_basic() -> String {
    "client_secret_basic".into()
}
