//! Identifiers that cannot be constructed invalid ("parse, don't validate").

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::rng::{random_base32, Rng};
use crate::CoreError;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses `s`, or says which rule it breaks.
            pub fn parse(s: &str) -> Result<Self, CoreError> {
                $check(s).map_err(|reason| CoreError::invalid($what, reason))?;
                Ok($name(s.to_owned()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                $name::parse(s)
            }
        }
    };
}

string_id!(
    /// A tenant: the isolation boundary. Lowercase letters, digits and `-`, 1–63 characters,
    /// starting with a letter (usable as a DNS label, a path segment and a CRN part).
    TenantId,
    "tenant id",
    check_tenant
);

string_id!(
    /// A principal: a service (OAuth2 client, `svc_…`) or a user (`usr_…`). Unique across all
    /// tenants and kinds, so it never collides with another principal's; it is the token's `sub`.
    PrincipalId,
    "principal id",
    check_principal
);

/// The tenant every fresh installation starts with.
pub const DEFAULT_TENANT: &str = "default";

impl TenantId {
    /// The `default` tenant.
    pub fn default_tenant() -> TenantId {
        TenantId(DEFAULT_TENANT.to_owned())
    }
}

/// What kind of principal an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A service, authenticated as an OAuth2 client.
    Service,
    /// A person.
    User,
}

impl PrincipalKind {
    fn prefix(self) -> &'static str {
        match self {
            PrincipalKind::Service => "svc_",
            PrincipalKind::User => "usr_",
        }
    }

    /// The kind's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Service => "service",
            PrincipalKind::User => "user",
        }
    }
}

impl PrincipalId {
    /// A fresh random id of the given kind (128 bits of randomness).
    pub fn generate(kind: PrincipalKind, rng: &dyn Rng) -> Result<PrincipalId, CoreError> {
        Ok(PrincipalId(format!(
            "{}{}",
            kind.prefix(),
            random_base32(rng, 16)?
        )))
    }

    /// The kind this id names.
    pub fn kind(&self) -> PrincipalKind {
        if self.0.starts_with(PrincipalKind::User.prefix()) {
            PrincipalKind::User
        } else {
            PrincipalKind::Service
        }
    }
}

fn check_tenant(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a lowercase letter".into());
    }
    if s.ends_with('-') {
        return Err("must not end with '-'".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters, digits and '-' are allowed".into());
    }
    Ok(())
}

fn check_principal(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix(PrincipalKind::Service.prefix())
        .or_else(|| s.strip_prefix(PrincipalKind::User.prefix()))
        .ok_or("must start with 'svc_' or 'usr_'")?;
    if rest.is_empty() || rest.len() > 64 {
        return Err("must have 1 to 64 characters after the prefix".into());
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err("only lowercase letters and digits may follow the prefix".into());
    }
    Ok(())
}

/// Checks an OAuth2 scope token (RFC 6749 §3.3: `%x21 / %x23-5B / %x5D-7E`, at most 128 bytes).
pub fn check_scope_token(s: &str) -> Result<(), CoreError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CoreError::invalid(
            "scope",
            format!("{s:?} is not a valid scope token (RFC 6749 §3.3: 1-128 printable ASCII characters, no space, '\"' or '\\\\')"),
        ))
    }
}

/// Checks an audience value: 1–256 printable ASCII characters without spaces.
pub fn check_audience(s: &str) -> Result<(), CoreError> {
    let ok = !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| (0x21..=0x7E).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CoreError::invalid(
            "audience",
            format!("{s:?} must be 1-256 printable ASCII characters without spaces"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SystemRng;

    #[test]
    fn tenant_ids() {
        assert!(TenantId::parse("default").is_ok());
        assert!(TenantId::parse("team-a1").is_ok());
        for bad in ["", "Default", "1abc", "a_b", "a-", &"a".repeat(64)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn principal_ids_round_trip_and_are_distinct() {
        let rng = SystemRng::new();
        let a = PrincipalId::generate(PrincipalKind::Service, &rng).unwrap();
        let b = PrincipalId::generate(PrincipalKind::Service, &rng).unwrap();
        assert_ne!(a, b);
        assert_eq!(PrincipalId::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.kind(), PrincipalKind::Service);
        assert!(PrincipalId::parse("svc_").is_err());
        assert!(PrincipalId::parse("bob").is_err());
        assert!(PrincipalId::parse("svc_ABC").is_err());
    }

    #[test]
    fn scopes() {
        assert!(check_scope_token("orders:read").is_ok());
        assert!(check_scope_token("a b").is_err());
        assert!(check_scope_token("a\"b").is_err());
        assert!(check_scope_token("").is_err());
    }
}
