//! SPIFFE IDs and trust domains, by the rules of the SPIFFE standard (`SPIFFE-ID.md`), and the
//! IDs Capstan gives principals.
//!
//! A principal's SPIFFE ID is `spiffe://<trust-domain>/t/<tenant>/<principal-id>` unless a
//! registration entry gives it another path under its tenant's prefix
//! (`spiffe://<trust-domain>/t/<tenant>/<path>`). The default is stable: it is made of ids that
//! never change. Entry paths may not take the shape of a principal id, so no entry can claim
//! another principal's default ID.

use std::fmt;

use capstan_core::ids::{PrincipalId, TenantId};

/// Longest SPIFFE ID, in bytes (SPIFFE-ID.md §2.3).
pub const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A SPIFFE rule broken; the message says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpiffeError(pub String);

fn err(s: impl Into<String>) -> SpiffeError {
    SpiffeError(s.into())
}

/// A trust domain name: lowercase letters, digits, `.`, `-` and `_`; no port, no userinfo.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name (`example.org`, not `spiffe://example.org`).
    pub fn parse(s: &str) -> Result<TrustDomain, SpiffeError> {
        if s.is_empty() {
            return Err(err("the trust domain is empty"));
        }
        if s.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(err(format!(
                "the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"
            )));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(*c)))
        {
            return Err(err(format!(
                "the trust domain {s:?} has {c:?}: only lowercase letters, digits, '.', '-' and '_' are allowed"
            )));
        }
        Ok(TrustDomain(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<name>` (the URI SAN of its CA certificates).
    pub fn id(&self) -> String {
        format!("spiffe://{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workload SPIFFE ID: `spiffe://<trust-domain>/<path>` with a non-empty path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    text: String,
    /// Where the path starts in `text` (at its first `/`).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and checks a workload SPIFFE ID.
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeError> {
        if s.len() > MAX_ID_LEN {
            return Err(err(format!("a SPIFFE ID is at most {MAX_ID_LEN} bytes")));
        }
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| {
            err(format!(
                "{s:?} is not a SPIFFE ID: it must start with spiffe://"
            ))
        })?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        TrustDomain::parse(td)?;
        if path.is_empty() {
            return Err(err(format!(
                "{s:?} has no path: a workload SPIFFE ID needs one"
            )));
        }
        check_path(path)?;
        Ok(SpiffeId {
            text: s.to_owned(),
            path_start: "spiffe://".len() + td.len(),
        })
    }

    /// The ID of `path` (which starts with `/`) in `td`.
    pub fn new(td: &TrustDomain, path: &str) -> Result<SpiffeId, SpiffeError> {
        SpiffeId::parse(&format!("spiffe://{td}{path}"))
    }

    /// The trust domain name.
    pub fn trust_domain(&self) -> &str {
        &self.text["spiffe://".len()..self.path_start]
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.text[self.path_start..]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Checks a SPIFFE path (`/a/b`): segments of `[a-zA-Z0-9.-_]`, none empty, `.` or `..`, no
/// trailing `/`, no percent-encoding.
pub fn check_path(path: &str) -> Result<(), SpiffeError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(err(format!("the path {path:?} must start with '/'")));
    };
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err(err(format!(
                "the path {path:?} has an empty segment (a '//' or a trailing '/')"
            )));
        }
        if seg == "." || seg == ".." {
            return Err(err(format!(
                "the path {path:?} has a {seg:?} segment, which SPIFFE forbids"
            )));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-._".contains(*c)))
        {
            return Err(err(format!(
                "the path {path:?} has {c:?}: segments may hold only letters, digits, '.', '-' and '_'"
            )));
        }
    }
    Ok(())
}

/// The prefix of every SPIFFE ID of `tenant`: `/t/<tenant>`.
pub fn tenant_prefix(tenant: &TenantId) -> String {
    format!("/t/{tenant}")
}

/// A principal's default SPIFFE ID: `spiffe://<td>/t/<tenant>/<principal>`.
pub fn default_id(td: &TrustDomain, tenant: &TenantId, principal: &PrincipalId) -> SpiffeId {
    SpiffeId {
        text: format!("spiffe://{td}/t/{tenant}/{principal}"),
        path_start: "spiffe://".len() + td.as_str().len(),
    }
}

/// Checks the path a registration entry gives a principal, relative to its tenant's prefix
/// (`payments/orders` → `spiffe://<td>/t/<tenant>/payments/orders`), and returns the full ID.
/// A path that is a principal id is refused: it is somebody's default ID.
pub fn entry_id(td: &TrustDomain, tenant: &TenantId, path: &str) -> Result<SpiffeId, SpiffeError> {
    if PrincipalId::parse(path).is_ok() {
        return Err(err(format!(
            "the path {path:?} is a principal id: it would be that principal's SPIFFE ID"
        )));
    }
    let full = format!("{}/{path}", tenant_prefix(tenant));
    check_path(&full)?;
    SpiffeId::new(td, &full)
}

/// The tenant a SPIFFE ID of trust domain `td` belongs to, from its `/t/<tenant>/` prefix.
pub fn tenant_of(td: &TrustDomain, id: &SpiffeId) -> Option<TenantId> {
    if id.trust_domain() != td.as_str() {
        return None;
    }
    let mut segs = id.path().strip_prefix("/t/")?.split('/');
    let tenant = segs.next()?;
    segs.next()?;
    TenantId::parse(tenant).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_standard() {
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa-1/x_y.z").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa-1/x_y.z");
        for bad in [
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/a/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/./b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a%20b",
            "spiffe://Example.org/a",
            "spiffe://example.org:443/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a?q=1",
            "spiffe://example.org/a#f",
            "https://example.org/a",
            "spiffe:///a",
            "spiffe://example.org/a\u{0}b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_ID_LEN));
        assert!(SpiffeId::parse(&long).is_err());
    }

    #[test]
    fn principals_get_stable_ids_and_entries_cannot_take_them() {
        let td = TrustDomain::parse("capstan.local").unwrap();
        let t = TenantId::parse("acme").unwrap();
        let p = PrincipalId::parse("svc_abc123").unwrap();
        let id = default_id(&td, &t, &p);
        assert_eq!(id.as_str(), "spiffe://capstan.local/t/acme/svc_abc123");
        assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id);
        assert_eq!(tenant_of(&td, &id), Some(t.clone()));
        assert!(entry_id(&td, &t, "svc_other").is_err());
        assert!(entry_id(&td, &t, "../other/x").is_err());
        assert!(entry_id(&td, &t, "").is_err());
        assert_eq!(
            entry_id(&td, &t, "payments/orders").unwrap().as_str(),
            "spiffe://capstan.local/t/acme/payments/orders"
        );
        let other = TrustDomain::parse("other.org").unwrap();
        assert_eq!(tenant_of(&other, &id), None);
        assert!(TrustDomain::parse("Capstan.local").is_err());
        assert!(TrustDomain::parse("a:1").is_err());
    }
}
