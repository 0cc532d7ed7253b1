//! The policy engine's one integration-test binary: table-driven tests for every bullet of
//! `shared/reference/iam-evaluation.md`, document validation, and property tests.

// Tests may unwrap and panic: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conditions;
mod decisions;
mod matching;
mod properties;
mod robustness;
mod validation;

use capstan_iam::{
    evaluate, Applicable, Context, Decision, Limits, Outcome, Policy, PolicyKind, Request, Source,
};
use serde_json::Value;

/// Test helper.
pub fn identity(doc: Value) -> Policy {
    Policy::parse(&doc.to_string(), PolicyKind::Identity, &Limits::default())
        .unwrap_or_else(|e| panic!("policy does not parse: {e:?}"))
        .policy
}

/// Test helper.
pub fn resource_policy(doc: Value) -> Policy {
    Policy::parse(&doc.to_string(), PolicyKind::Resource, &Limits::default())
        .unwrap_or_else(|e| panic!("policy does not parse: {e:?}"))
        .policy
}

/// Test helper.
pub fn src<'a>(name: &'a str, p: &'a Policy) -> Source<'a> {
    Source {
        name,
        version: 1,
        policy: p,
    }
}

/// One Allow statement with `extra` merged in (Condition, NotAction, …).
/// Test helper.
pub fn allow(action: &str, resource: &str, extra: Value) -> Value {
    let mut st = serde_json::json!({"Effect": "Allow", "Action": action, "Resource": resource});
    if let (Some(st), Some(extra)) = (st.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            st.insert(k.clone(), v.clone());
        }
    }
    serde_json::json!({"Version": "2012-10-17", "Statement": [st]})
}

/// Decides with identity policies only.
/// Test helper.
pub fn decide(
    policies: &[&Policy],
    principal: &str,
    action: &str,
    resource: &str,
    ctx: &Context,
) -> Outcome {
    let applicable = Applicable {
        identity: policies.iter().map(|p| src("p", p)).collect(),
        ..Default::default()
    };
    evaluate(
        &Request {
            principal,
            action,
            resource,
            context: ctx,
        },
        &applicable,
    )
}

/// Test helper.
pub fn allowed(p: &Policy, action: &str, resource: &str, ctx: &Context) -> bool {
    decide(&[p], "svc_a", action, resource, ctx).decision == Decision::Allow
}
