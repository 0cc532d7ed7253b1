//! Capstan resource names: `crn:capstan:<service>:<tenant>:<path>`, the resource of every
//! guarded act (the analog of an AWS ARN).

use std::fmt;

use crate::error::CoreError;
use crate::ids::TenantId;

/// A parsed CRN. It cannot be constructed invalid: the service is a lowercase name, the tenant a
/// [`TenantId`], and the path is non-empty text without control characters (it may hold `*`, as
/// in `clients/*`, the resource of acts on every client).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Crn {
    text: String,
    /// Byte offsets of the ends of the service and the tenant in `text`.
    service_end: usize,
    tenant_end: usize,
}

const PREFIX: &str = "crn:capstan:";

impl Crn {
    /// The CRN of `path` owned by `service` in `tenant`.
    pub fn new(service: &'static str, tenant: &TenantId, path: &str) -> Crn {
        let text = format!("{PREFIX}{service}:{tenant}:{path}");
        let service_end = PREFIX.len() + service.len();
        let tenant_end = service_end + 1 + tenant.as_str().len();
        Crn {
            text,
            service_end,
            tenant_end,
        }
    }

    /// Parses `crn:capstan:<service>:<tenant>:<path>`.
    pub fn parse(s: &str) -> Result<Crn, CoreError> {
        let invalid = |why: &str| CoreError::invalid("CRN", why.to_owned());
        let rest = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| invalid("must start with crn:capstan:"))?;
        let mut parts = rest.splitn(3, ':');
        let (Some(service), Some(tenant), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("must be crn:capstan:<service>:<tenant>:<path>"));
        };
        if service.is_empty()
            || service.len() > 63
            || !service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid("the service must be 1-63 of a-z, 0-9 and -"));
        }
        TenantId::parse(tenant).map_err(|_| invalid("the tenant is not a tenant id"))?;
        if path.is_empty() || path.len() > 1024 || path.chars().any(char::is_control) {
            return Err(invalid(
                "the path must be 1-1024 characters without control characters",
            ));
        }
        let service_end = PREFIX.len() + service.len();
        Ok(Crn {
            text: s.to_owned(),
            service_end,
            tenant_end: service_end + 1 + tenant.len(),
        })
    }

    /// The owning service (`auth`, `policy`, …).
    pub fn service(&self) -> &str {
        &self.text[PREFIX.len()..self.service_end]
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.text[self.service_end + 1..self.tenant_end]
    }

    /// The path within the service (`clients/svc_…`).
    pub fn path(&self) -> &str {
        &self.text[self.tenant_end + 1..]
    }

    /// The whole CRN.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Crn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Crn {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_alike() {
        let t = TenantId::parse("acme").unwrap();
        let c = Crn::new("auth", &t, "clients/*");
        assert_eq!(c.as_str(), "crn:capstan:auth:acme:clients/*");
        assert_eq!(
            (c.service(), c.tenant(), c.path()),
            ("auth", "acme", "clients/*")
        );
        assert_eq!(Crn::parse(c.as_str()).unwrap(), c);
        let p = Crn::parse("crn:capstan:orders:acme:order/a:b").unwrap();
        assert_eq!(p.path(), "order/a:b");
    }

    #[test]
    fn refuses_what_is_not_a_crn() {
        for bad in [
            "arn:aws:s3:::b",
            "crn:capstan:auth:acme",
            "crn:capstan::acme:x",
            "crn:capstan:Auth:acme:x",
            "crn:capstan:auth:*:x",
            "crn:capstan:auth:acme:",
            "crn:capstan:auth:acme:a\u{0}b",
        ] {
            assert!(Crn::parse(bad).is_err(), "{bad}");
        }
    }
}
