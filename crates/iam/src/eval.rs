//! The decision procedure (`iam-evaluation.md`, "Decision procedure"): explicit deny anywhere,
//! then guardrails, then identity or resource allow, then the permissions boundary.
//!
//! Only the policies handed in are looked at, and inside each only the statements indexed under
//! the action's service (plus wildcard ones), so a decision costs what the applicable statements
//! cost, not what the tenant's policies cost.

use crate::context::Context;
use crate::document::{Effect, Policy, Principals, ResourcePattern, Statement, Targets};
use crate::index::IdentityIndex;
use crate::pattern::arn_parts;

/// What is asked: may `principal` do `action` on `resource`, in `context`?
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The principal id (`sub`).
    pub principal: &'a str,
    /// `<service>:<Action>`.
    pub action: &'a str,
    /// The resource's CRN.
    pub resource: &'a str,
    /// Condition keys, including the ones Capstan fills (`capstan:principal`, …).
    pub context: &'a Context,
}

/// A policy as it takes part in a decision.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Policy name.
    pub name: &'a str,
    /// Policy version.
    pub version: u32,
    /// The compiled document.
    pub policy: &'a Policy,
}

/// Every policy that applies to one request.
#[derive(Debug, Clone, Default)]
pub struct Applicable<'a> {
    /// Policies attached to the principal and its groups.
    pub identity: Vec<Source<'a>>,
    /// The same identity policies merged into one index; when given, it is used instead of
    /// `identity` (which may then be empty).
    pub identity_index: Option<&'a IdentityIndex>,
    /// The policies of resources (CRN patterns) that match the requested resource.
    pub resource: Vec<Source<'a>>,
    /// The principal's permissions boundary.
    pub boundary: Option<Source<'a>>,
    /// The tenant's guardrails.
    pub guardrails: Vec<Source<'a>>,
}

/// Allow or Deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// An identity or resource policy allows, and nothing denies or limits.
    Allowed,
    /// A Deny statement matched.
    ExplicitDeny,
    /// Nothing allowed.
    ImplicitDeny,
    /// The permissions boundary does not allow.
    Boundary,
    /// No tenant guardrail allows.
    Guardrail,
    /// The resource belongs to another tenant: refused before any policy is read (tenants are
    /// the isolation boundary; the caller decides what "another tenant" is).
    OtherTenant,
}

impl Reason {
    /// The wire name (`explicit_deny`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::ExplicitDeny => "explicit_deny",
            Reason::ImplicitDeny => "implicit_deny",
            Reason::Boundary => "boundary",
            Reason::Guardrail => "guardrail",
            Reason::OtherTenant => "other_tenant",
        }
    }
}

/// A statement that produced the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Policy name.
    pub policy: String,
    /// Policy version.
    pub version: u32,
    /// Statement `Sid`, or `#<index>`.
    pub sid: String,
}

/// A decision with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Allow or Deny.
    pub decision: Decision,
    /// Why.
    pub reason: Reason,
    /// The statements that decided: the matching Deny statements for an explicit deny, the
    /// matching Allow statements for an allow; empty otherwise.
    pub matched: Vec<Matched>,
}

/// The request, prepared once for all statements.
struct Prepared<'a> {
    req: &'a Request<'a>,
    action: String,
    service: String,
    resource_parts: Vec<&'a str>,
}

impl<'a> Prepared<'a> {
    fn new(req: &'a Request<'a>) -> Prepared<'a> {
        let action = req.action.to_ascii_lowercase();
        let service = action.split_once(':').map_or("", |(s, _)| s).to_owned();
        Prepared {
            req,
            action,
            service,
            resource_parts: arn_parts(req.resource),
        }
    }
}

fn resource_matches(p: &ResourcePattern, prep: &Prepared<'_>) -> bool {
    match p {
        ResourcePattern::Any => true,
        ResourcePattern::Parts(parts) => {
            parts.len() == prep.resource_parts.len()
                && parts.iter().zip(&prep.resource_parts).all(|(pat, value)| {
                    if pat.has_vars() {
                        // An unresolved variable matches nothing.
                        pat.resolve(prep.req.context, false)
                            .is_some_and(|p| p.matches(value))
                    } else {
                        pat.matches(value)
                    }
                })
        }
    }
}

fn principal_in(p: &Principals, principal: &str) -> bool {
    p.any || p.ids.iter().any(|id| id == principal)
}

fn statement_matches(st: &Statement, prep: &Prepared<'_>) -> bool {
    let action = match &st.actions {
        Targets::Only(list) => list.iter().any(|p| p.matches(&prep.action)),
        Targets::Except(list) => !list.iter().any(|p| p.matches(&prep.action)),
    };
    if !action {
        return false;
    }
    let resource = match &st.resources {
        Targets::Only(list) => list.iter().any(|p| resource_matches(p, prep)),
        Targets::Except(list) => !list.iter().any(|p| resource_matches(p, prep)),
    };
    if !resource {
        return false;
    }
    let principal = match &st.principals {
        None => true,
        Some(Targets::Only(list)) => list.iter().any(|p| principal_in(p, prep.req.principal)),
        Some(Targets::Except(list)) => !list.iter().any(|p| principal_in(p, prep.req.principal)),
    };
    principal && st.conditions.iter().all(|c| c.holds(prep.req.context))
}

/// Matching statements of one policy, split by effect.
#[derive(Default)]
struct Hits {
    allow: Vec<Matched>,
    deny: Vec<Matched>,
}

/// One pass over the candidate statements of `src`.
fn scan(src: &Source<'_>, prep: &Prepared<'_>) -> Hits {
    let mut hits = Hits::default();
    for st in src.policy.candidates(&prep.action, &prep.service) {
        if statement_matches(st, prep) {
            let m = Matched {
                policy: src.name.to_owned(),
                version: src.version,
                sid: st.sid.clone(),
            };
            match st.effect {
                Effect::Allow => hits.allow.push(m),
                Effect::Deny => hits.deny.push(m),
            }
        }
    }
    hits
}

/// One pass over the candidate statements of a merged identity index.
fn scan_index(ix: &IdentityIndex, prep: &Prepared<'_>) -> Hits {
    let mut hits = Hits::default();
    for ((name, version, _), st) in ix.candidates(&prep.action, &prep.service) {
        if statement_matches(st, prep) {
            let m = Matched {
                policy: name.clone(),
                version: *version,
                sid: st.sid.clone(),
            };
            match st.effect {
                Effect::Allow => hits.allow.push(m),
                Effect::Deny => hits.deny.push(m),
            }
        }
    }
    hits
}

/// Decides `req` against the applicable policies.
pub fn evaluate(req: &Request<'_>, applicable: &Applicable<'_>) -> Outcome {
    let prep = Prepared::new(req);
    let scan_all =
        |sources: &[Source<'_>]| sources.iter().map(|s| scan(s, &prep)).collect::<Vec<_>>();
    let identity = match applicable.identity_index {
        Some(ix) => vec![scan_index(ix, &prep)],
        None => scan_all(&applicable.identity),
    };
    let resource = scan_all(&applicable.resource);
    let boundary = applicable.boundary.as_ref().map(|b| scan(b, &prep));
    let guardrails = scan_all(&applicable.guardrails);
    let outcome = |decision, reason, matched| Outcome {
        decision,
        reason,
        matched,
    };
    let denies: Vec<Matched> = identity
        .iter()
        .chain(&resource)
        .chain(boundary.iter())
        .chain(&guardrails)
        .flat_map(|h| h.deny.iter().cloned())
        .collect();
    if !denies.is_empty() {
        return outcome(Decision::Deny, Reason::ExplicitDeny, denies);
    }
    if !guardrails.is_empty() && guardrails.iter().all(|h| h.allow.is_empty()) {
        return outcome(Decision::Deny, Reason::Guardrail, Vec::new());
    }
    if boundary.as_ref().is_some_and(|b| b.allow.is_empty()) {
        // Step 5 comes after the candidate allow is known, but decides the same way either
        // way: a boundary that does not allow denies.
        return outcome(Decision::Deny, Reason::Boundary, Vec::new());
    }
    let allows: Vec<Matched> = identity
        .into_iter()
        .chain(resource)
        .flat_map(|h| h.allow)
        .collect();
    if allows.is_empty() {
        outcome(Decision::Deny, Reason::ImplicitDeny, Vec::new())
    } else {
        outcome(Decision::Allow, Reason::Allowed, allows)
    }
}

/// Whether a CRN pattern (as written in `Resource` or as a resource-policy key) matches `crn`.
/// Variables are not expanded here.
pub fn crn_matches(pattern: &str, crn: &str) -> bool {
    match crate::document::compile_resource(pattern) {
        Ok(p) => {
            let ctx = Context::new();
            let req = Request {
                principal: "",
                action: "",
                resource: crn,
                context: &ctx,
            };
            resource_matches(&p, &Prepared::new(&req))
        }
        Err(_) => false,
    }
}
