//! The decision procedure (`iam-evaluation.md`, "Decision procedure"): explicit deny anywhere,
//! then guardrails, then identity or resource allow, then the permissions boundary.
//!
//! Only the policies handed in are looked at, and inside each only the statements indexed under
//! the action's service (plus wildcard ones), so a decision costs what the applicable statements
//! cost, not what the tenant's policies cost.

use crate::context::Context;
use crate::document::{Effect, Policy, Principals, ResourcePattern, Statement, Targets};
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

/// The matching statements of `src` with `effect`, appended to `out`; whether any matched.
fn collect(src: &Source<'_>, prep: &Prepared<'_>, effect: Effect, out: &mut Vec<Matched>) -> bool {
    let before = out.len();
    for st in src.policy.candidates(&prep.action, &prep.service) {
        if st.effect == effect && statement_matches(st, prep) {
            out.push(Matched {
                policy: src.name.to_owned(),
                version: src.version,
                sid: st.sid.clone(),
            });
        }
    }
    out.len() > before
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

/// Decides `req` against the applicable policies.
pub fn evaluate(req: &Request<'_>, applicable: &Applicable<'_>) -> Outcome {
    let prep = Prepared::new(req);
    let all = applicable
        .identity
        .iter()
        .chain(applicable.resource.iter())
        .chain(applicable.boundary.iter())
        .chain(applicable.guardrails.iter());
    let mut denies = Vec::new();
    for src in all {
        collect(src, &prep, Effect::Deny, &mut denies);
    }
    let outcome = |decision, reason, matched| Outcome {
        decision,
        reason,
        matched,
    };
    if !denies.is_empty() {
        return outcome(Decision::Deny, Reason::ExplicitDeny, denies);
    }
    let mut scratch = Vec::new();
    if !applicable.guardrails.is_empty()
        && !applicable
            .guardrails
            .iter()
            .any(|g| collect(g, &prep, Effect::Allow, &mut scratch))
    {
        return outcome(Decision::Deny, Reason::Guardrail, Vec::new());
    }
    let mut allows = Vec::new();
    for src in applicable.identity.iter().chain(applicable.resource.iter()) {
        collect(src, &prep, Effect::Allow, &mut allows);
    }
    if let Some(b) = &applicable.boundary {
        if !collect(b, &prep, Effect::Allow, &mut scratch) {
            return outcome(Decision::Deny, Reason::Boundary, Vec::new());
        }
    }
    if allows.is_empty() {
        outcome(Decision::Deny, Reason::ImplicitDeny, Vec::new())
    } else {
        outcome(Decision::Allow, Reason::Allowed, allows)
    }
}
