//! Plain domain types of the issuer.

use capstan_core::clock::UnixTime;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_core::jwt::{Alg, Jwk};

/// A tenant and the algorithm its keys sign with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Tenant id.
    pub id: TenantId,
    /// Algorithm of newly generated signing keys.
    pub signing_alg: Alg,
    /// Creation time.
    pub created_at: UnixTime,
}

/// An OAuth2 client: a service principal with a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Client id, which is also the principal id and the tokens' `sub`.
    pub id: PrincipalId,
    /// Owning tenant.
    pub tenant: TenantId,
    /// Human-readable name.
    pub name: String,
    /// Keyed hash of the current secret.
    pub secret_hash: Vec<u8>,
    /// Keyed hash of the previous secret and when it stops working (rotation grace period).
    pub previous_secret: Option<(Vec<u8>, UnixTime)>,
    /// Scopes the client may request.
    pub scopes: Vec<String>,
    /// Audiences the client may request tokens for.
    pub audiences: Vec<String>,
    /// Per-client access-token lifetime.
    pub token_ttl_seconds: Option<i64>,
    /// Administrator of its tenant (until the policy engine takes over).
    pub admin: bool,
    /// RFC 8705 `tls_client_auth`: the URI SAN (a SPIFFE ID) its client certificate must carry
    /// to authenticate at the token endpoint instead of a secret (which it then cannot use);
    /// its tokens are bound to that certificate.
    pub tls_client_auth_san_uri: Option<String>,
    /// Creation time.
    pub created_at: UnixTime,
    /// Last change.
    pub updated_at: UnixTime,
}

/// A signing key as stored: public JWK in clear, private key sealed under the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Owning tenant.
    pub tenant: TenantId,
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Alg,
    /// Public key.
    pub public_jwk: Jwk,
    /// PKCS#8 private key sealed with AAD `tenant/kid`.
    pub private_key_sealed: Vec<u8>,
    /// Creation (and publication) time.
    pub created_at: UnixTime,
    /// When it starts signing.
    pub activates_at: UnixTime,
}

/// A revoked token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Position in the revocation feed.
    pub seq: i64,
    /// Tenant of the token.
    pub tenant: String,
    /// The token's `jti`.
    pub jti: String,
    /// The token's `exp`; the record can be dropped after it.
    pub expires_at: UnixTime,
}

/// The issuer URL of `tenant`: `{public_url}/t/{tenant}`.
pub fn issuer_url(public_url: &str, tenant: &TenantId) -> String {
    format!("{}/t/{}", public_url.trim_end_matches('/'), tenant)
}

/// Which keys a JWKS publishes and which key signs, derived from the key list and the time.
///
/// Keys sorted by activation: key *i* signs from its activation until key *i+1* activates, and
/// stays published until `max_ttl` after that, when every token it signed has expired. A key is
/// published from its creation, so a rotation with a publish delay puts the key in the JWKS
/// before any token carries its `kid`.
pub fn published_keys(keys: &[StoredKey], now: UnixTime, max_ttl: i64) -> Vec<&StoredKey> {
    let mut sorted: Vec<&StoredKey> = keys.iter().collect();
    sorted.sort_by(|a, b| order(a).cmp(&order(b)));
    let mut out = Vec::new();
    for (i, k) in sorted.iter().enumerate() {
        let superseded_at = sorted[i + 1..]
            .iter()
            .map(|n| n.activates_at)
            .find(|&a| a <= now);
        match superseded_at {
            Some(at) if at + max_ttl <= now => {}
            _ => out.push(*k),
        }
    }
    out
}

/// The key that signs at `now`: the most recently activated one.
pub fn active_key(keys: &[StoredKey], now: UnixTime) -> Option<&StoredKey> {
    keys.iter()
        .filter(|k| k.activates_at <= now)
        .max_by(|a, b| order(a).cmp(&order(b)))
}

/// Keys in activation order; the kid breaks ties so every server picks the same signer.
fn order(k: &StoredKey) -> (UnixTime, UnixTime, &str) {
    (k.activates_at, k.created_at, k.kid.as_str())
}

/// When a key rotated in at `now` with `delay` starts signing: after the delay, and strictly
/// after the newest existing key, so two rotations in one second still take effect in order.
pub fn activation_time(existing: &[StoredKey], now: UnixTime, delay: i64) -> UnixTime {
    let after_newest = existing.iter().map(|k| k.activates_at + 1).max();
    (now + delay).max(after_newest.unwrap_or(UnixTime::MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, created: i64, activates: i64) -> StoredKey {
        StoredKey {
            tenant: TenantId::default_tenant(),
            kid: kid.into(),
            alg: Alg::ES256,
            public_jwk: Jwk {
                kty: "EC".into(),
                kid: kid.into(),
                use_: "sig".into(),
                alg: "ES256".into(),
                crv: None,
                x: None,
                y: None,
                n: None,
                e: None,
            },
            private_key_sealed: vec![],
            created_at: created,
            activates_at: activates,
        }
    }

    fn kids(v: Vec<&StoredKey>) -> Vec<&str> {
        v.into_iter().map(|k| k.kid.as_str()).collect()
    }

    #[test]
    fn rotations_in_one_second_activate_in_order() {
        let mut keys = vec![key("a", 100, 100)];
        let t = activation_time(&keys, 100, 0);
        assert_eq!(t, 101);
        keys.push(key("b", 100, t));
        let t = activation_time(&keys, 100, 0);
        assert_eq!(t, 102);
        keys.push(key("c", 100, t));
        assert_eq!(active_key(&keys, 102).unwrap().kid, "c");
        assert_eq!(active_key(&keys, 101).unwrap().kid, "b");
        // A delay beyond the newest key wins.
        assert_eq!(activation_time(&keys, 100, 600), 700);
        // Equal activation times (concurrent rotations on two servers): the kid decides.
        let tied = vec![key("y", 5, 10), key("x", 5, 10)];
        assert_eq!(active_key(&tied, 10).unwrap().kid, "y");
    }

    #[test]
    fn rotation_publishes_before_signing_and_retires_after_max_ttl() {
        let keys = vec![key("a", 0, 0), key("b", 100, 700)];
        // Before b activates: a signs, both are published.
        assert_eq!(active_key(&keys, 500).unwrap().kid, "a");
        assert_eq!(kids(published_keys(&keys, 500, 900)), ["a", "b"]);
        // After activation: b signs, a is still published for max_ttl.
        assert_eq!(active_key(&keys, 700).unwrap().kid, "b");
        assert_eq!(kids(published_keys(&keys, 1599, 900)), ["a", "b"]);
        assert_eq!(kids(published_keys(&keys, 1600, 900)), ["b"]);
    }
}
