//! The identity service's records and the CA rotation slots, as plain data and pure functions.
//!
//! A CA's slot is never stored: it follows from the records and the time, so every replica
//! agrees without coordination.
//! - **prepared**: created, in the bundle, not signing yet (`activates_at` is in the future);
//! - **active**: the newest untainted CA whose `activates_at` has passed: it signs every leaf;
//! - **retired**: an older CA, or a tainted one. It stays in the bundle until the last leaf it
//!   can have signed has expired (it stopped signing at `retired_at`, and no leaf lives longer
//!   than the deployment's maximum SVID lifetime), so a rotation never breaks a handshake.

use capstan_core::clock::UnixTime;
use capstan_core::ids::{PrincipalId, TenantId};
use capstan_core::jwt::Jwk;
use serde::Serialize;

/// One CA generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    /// Its id (`g<generation>`).
    pub id: String,
    /// 1, 2, 3, …: unique, increasing.
    pub generation: i64,
    /// `generated` or `imported`.
    pub origin: String,
    /// Key type (`ec-p256`, `ed25519`, or `imported`).
    pub key_type: String,
    /// The CA certificate, DER.
    pub cert_der: Vec<u8>,
    /// Intermediates between it and the root, DER, nearest first.
    pub intermediates_der: Vec<Vec<u8>>,
    /// The root peers trust, DER (the CA itself when generated).
    pub root_der: Vec<u8>,
    /// The CA's private key, PKCS#8 sealed under the master key.
    pub key_sealed: Vec<u8>,
    /// The JWT-SVID signing key's id.
    pub jwt_kid: String,
    /// The JWT-SVID signing key's public half.
    pub jwt_public: Jwk,
    /// The JWT-SVID signing key, PKCS#8 sealed under the master key.
    pub jwt_key_sealed: Vec<u8>,
    /// Certificate validity.
    pub not_before: UnixTime,
    /// Certificate validity.
    pub not_after: UnixTime,
    /// When it was made.
    pub created_at: UnixTime,
    /// When it starts signing.
    pub activates_at: UnixTime,
    /// When it was tainted (it stopped signing then).
    pub tainted_at: Option<UnixTime>,
}

/// A CA's rotation slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// In the bundle, not signing yet.
    Prepared,
    /// Signing.
    Active,
    /// Not signing; in the bundle until its leaves have expired.
    Retired,
}

/// The CA that signs now: the newest CA whose activation has come, unless it is tainted or
/// expired (then none signs until a new one is made: an older CA never signs again).
pub fn active(cas: &[CaRecord], now: UnixTime) -> Option<&CaRecord> {
    cas.iter()
        .filter(|c| c.activates_at <= now)
        .max_by_key(|c| c.generation)
        .filter(|c| c.tainted_at.is_none() && c.not_after > now)
}

/// The newest prepared CA, if any.
pub fn prepared(cas: &[CaRecord], now: UnixTime) -> Option<&CaRecord> {
    cas.iter()
        .filter(|c| c.tainted_at.is_none() && c.activates_at > now)
        .max_by_key(|c| c.generation)
}

/// A CA's slot now.
pub fn slot(ca: &CaRecord, cas: &[CaRecord], now: UnixTime) -> Slot {
    if ca.tainted_at.is_none() && ca.activates_at > now {
        Slot::Prepared
    } else if active(cas, now).is_some_and(|a| a.generation == ca.generation) {
        Slot::Active
    } else {
        Slot::Retired
    }
}

/// When a CA stopped signing: its taint, or the activation of a newer CA, whichever came
/// first; its expiry if neither; `None` while it may still sign.
pub fn retired_at(ca: &CaRecord, cas: &[CaRecord], now: UnixTime) -> Option<UnixTime> {
    let superseded = cas
        .iter()
        .filter(|c| c.generation > ca.generation && c.activates_at <= now)
        .map(|c| c.activates_at.max(ca.activates_at))
        .min();
    let ends = [
        ca.tainted_at,
        superseded,
        Some(ca.not_after).filter(|t| *t <= now),
    ];
    ends.into_iter().flatten().min()
}

/// The CAs peers must trust now: prepared and active ones, and retired ones until every leaf
/// they signed has expired (`max_leaf_ttl` after they stopped signing, plus `leeway`), never
/// past their own expiry. Oldest first.
pub fn published(
    cas: &[CaRecord],
    now: UnixTime,
    max_leaf_ttl: i64,
    leeway: i64,
) -> Vec<&CaRecord> {
    let mut out: Vec<&CaRecord> = cas
        .iter()
        .filter(|c| c.not_after > now)
        .filter(|c| match retired_at(c, cas, now) {
            None => true,
            Some(at) => at + max_leaf_ttl + leeway > now,
        })
        .collect();
    out.sort_by_key(|c| c.generation);
    out
}

/// The bundle's `spiffe_sequence`: the time of its last change (a CA created, tainted, or
/// dropped), so it only grows while the set of published CAs changes.
pub fn bundle_sequence(cas: &[CaRecord], now: UnixTime, max_leaf_ttl: i64, leeway: i64) -> i64 {
    cas.iter()
        .flat_map(|c| {
            let dropped = retired_at(c, cas, now)
                .map(|at| (at + max_leaf_ttl + leeway).min(c.not_after))
                .or(Some(c.not_after))
                .filter(|t| *t <= now);
            [
                Some(c.created_at),
                c.tainted_at.filter(|t| *t <= now),
                dropped,
            ]
        })
        .flatten()
        .max()
        .unwrap_or(0)
}

/// A registration entry: what a principal's SVIDs carry beyond the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Tenant.
    pub tenant: TenantId,
    /// The principal it registers.
    pub principal: PrincipalId,
    /// A path under the tenant's prefix replacing the default (`payments/orders`).
    pub spiffe_path: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// SVID lifetime (capped by the deployment's maximum).
    pub ttl_seconds: Option<i64>,
    /// Timestamps.
    pub created_at: UnixTime,
    /// Timestamps.
    pub updated_at: UnixTime,
}

/// An issued certificate, kept for audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidRecord {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Tenant.
    pub tenant: TenantId,
    /// The principal it was issued to.
    pub principal: PrincipalId,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The CA that signed it.
    pub ca_id: String,
    /// How the requester authenticated: `bearer` or `join_token`.
    pub via: String,
    /// Validity.
    pub issued_at: UnixTime,
    /// Validity.
    pub not_after: UnixTime,
}

/// A join token, as stored: only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// HMAC of the token under the master key.
    pub hash: Vec<u8>,
    /// Tenant.
    pub tenant: TenantId,
    /// The principal it yields an SVID for.
    pub principal: PrincipalId,
    /// Validity.
    pub created_at: UnixTime,
    /// Validity.
    pub expires_at: UnixTime,
    /// When it was used, and the serial it yielded.
    pub used: Option<(UnixTime, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(generation: i64, activates_at: i64) -> CaRecord {
        CaRecord {
            id: format!("g{generation}"),
            generation,
            origin: "generated".into(),
            key_type: "ec-p256".into(),
            cert_der: Vec::new(),
            intermediates_der: Vec::new(),
            root_der: Vec::new(),
            key_sealed: Vec::new(),
            jwt_kid: String::new(),
            jwt_public: Jwk {
                kty: "EC".into(),
                kid: String::new(),
                use_: "jwt-svid".into(),
                alg: "ES256".into(),
                crv: None,
                x: None,
                y: None,
                n: None,
                e: None,
            },
            jwt_key_sealed: Vec::new(),
            not_before: activates_at,
            not_after: activates_at + 100_000,
            created_at: activates_at.min(1000),
            activates_at,
            tainted_at: None,
        }
    }

    #[test]
    fn slots_follow_time_and_taint() {
        let mut cas = vec![ca(1, 1000), ca(2, 2000)];
        assert_eq!(slot(&cas[0], &cas, 1500), Slot::Active);
        assert_eq!(slot(&cas[1], &cas, 1500), Slot::Prepared);
        assert_eq!(published(&cas, 1500, 3600, 5).len(), 2);
        // The new CA activates; the old one is retired but published until its leaves expire.
        assert_eq!(slot(&cas[0], &cas, 2500), Slot::Retired);
        assert_eq!(active(&cas, 2500).unwrap().generation, 2);
        assert_eq!(retired_at(&cas[0], &cas, 2500), Some(2000));
        assert_eq!(published(&cas, 2000 + 3600 + 4, 3600, 5).len(), 2);
        assert_eq!(published(&cas, 2000 + 3600 + 5, 3600, 5).len(), 1);
        // Tainting the active CA retires it at once; nothing is active until a new one is.
        let seq_before = bundle_sequence(&cas, 3000, 3600, 5);
        cas[1].tainted_at = Some(3000);
        assert_eq!(slot(&cas[1], &cas, 3000), Slot::Retired);
        assert!(active(&cas, 3000).is_none());
        assert!(bundle_sequence(&cas, 3000, 3600, 5) > seq_before);
        // Dropping the first CA from the bundle changes the sequence too.
        let seq_tainted = bundle_sequence(&cas, 3000, 3600, 5);
        assert!(bundle_sequence(&cas, 2000 + 3600 + 5, 3600, 5) > seq_tainted);
    }
}
