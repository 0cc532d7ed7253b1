//! Built-in policies, shipped as JSON in `policies/`: attachable by name in every tenant,
//! read-only, version 1.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use capstan_iam::{Limits, Policy, PolicyKind};

/// Name and document of every built-in policy.
pub const BUILTIN: [(&str, &str); 13] = [
    (
        "AdministratorAccess",
        include_str!("../../../policies/AdministratorAccess.json"),
    ),
    (
        "ReadOnlyAccess",
        include_str!("../../../policies/ReadOnlyAccess.json"),
    ),
    (
        "AuthFullAccess",
        include_str!("../../../policies/AuthFullAccess.json"),
    ),
    (
        "AuthReadOnly",
        include_str!("../../../policies/AuthReadOnly.json"),
    ),
    (
        "PolicyFullAccess",
        include_str!("../../../policies/PolicyFullAccess.json"),
    ),
    (
        "PolicyReadOnly",
        include_str!("../../../policies/PolicyReadOnly.json"),
    ),
    (
        "IdentityFullAccess",
        include_str!("../../../policies/IdentityFullAccess.json"),
    ),
    (
        "IdentityReadOnly",
        include_str!("../../../policies/IdentityReadOnly.json"),
    ),
    (
        "IdentityWorkload",
        include_str!("../../../policies/IdentityWorkload.json"),
    ),
    (
        "ConfigFullAccess",
        include_str!("../../../policies/ConfigFullAccess.json"),
    ),
    (
        "ConfigReadOnly",
        include_str!("../../../policies/ConfigReadOnly.json"),
    ),
    (
        "TraceFullAccess",
        include_str!("../../../policies/TraceFullAccess.json"),
    ),
    (
        "TraceReadOnly",
        include_str!("../../../policies/TraceReadOnly.json"),
    ),
];

/// The policy every administrator client gets.
pub const ADMINISTRATOR: &str = "AdministratorAccess";

/// The compiled built-in policies (documents that do not compile are left out and logged; the
/// test suite compiles every one).
pub fn compiled() -> &'static HashMap<&'static str, Arc<Policy>> {
    static CELL: OnceLock<HashMap<&'static str, Arc<Policy>>> = OnceLock::new();
    CELL.get_or_init(|| {
        BUILTIN
            .iter()
            .filter_map(|(name, text)| {
                match Policy::parse(text, PolicyKind::Identity, &Limits::default()) {
                    Ok(p) => Some((*name, Arc::new(p.policy))),
                    Err(e) => {
                        tracing::error!(policy = name, errors = ?e, "built-in policy does not compile");
                        None
                    }
                }
            })
            .collect()
    })
}

/// The document text of a built-in policy.
pub fn document(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_builtin_compiles() {
        assert_eq!(super::compiled().len(), super::BUILTIN.len());
    }
}
