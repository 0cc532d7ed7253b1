//! Properties that must hold for any policies and request.

use capstan_iam::{
    evaluate, Applicable, Context, Decision, IdentityIndex, Limits, Policy, PolicyKind, Request,
    Source,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const ACTIONS: [&str; 5] = ["orders:Get", "orders:*", "billing:Pay", "*", "orders:G?t"];
const RESOURCES: [&str; 4] = [
    "*",
    "crn:capstan:orders:acme:order/*",
    "crn:capstan:orders:acme:order/1",
    "crn:capstan:billing:acme:*",
];
const REQ_ACTIONS: [&str; 3] = ["orders:Get", "billing:Pay", "orders:Put"];
const REQ_RESOURCES: [&str; 3] = [
    "crn:capstan:orders:acme:order/1",
    "crn:capstan:orders:acme:order/2",
    "crn:capstan:billing:acme:inv/9",
];

fn statement() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        0..ACTIONS.len(),
        0..RESOURCES.len(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(allow, a, r, not_action, cond)| {
            let mut s =
                json!({"Effect": if allow { "Allow" } else { "Deny" }, "Resource": RESOURCES[r]});
            s[if not_action { "NotAction" } else { "Action" }] = json!(ACTIONS[a]);
            if cond {
                s["Condition"] = json!({"StringEquals": {"team": "pay"}});
            }
            s
        })
}

fn policy() -> impl Strategy<Value = Value> {
    prop::collection::vec(statement(), 1..5)
        .prop_map(|s| json!({"Version": "2012-10-17", "Statement": s}))
}

fn compile(doc: &Value, kind: PolicyKind) -> Policy {
    Policy::parse(&doc.to_string(), kind, &Limits::default())
        .unwrap()
        .policy
}

#[derive(Debug)]
struct Case {
    identity: Vec<Policy>,
    boundary: Option<Policy>,
    guardrail: Option<Policy>,
    action: &'static str,
    resource: &'static str,
    ctx: Context,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(policy(), 0..4),
        prop::option::of(policy()),
        prop::option::of(policy()),
        0..REQ_ACTIONS.len(),
        0..REQ_RESOURCES.len(),
        any::<bool>(),
    )
        .prop_map(|(ids, b, g, a, r, team)| Case {
            identity: ids
                .iter()
                .map(|d| compile(d, PolicyKind::Identity))
                .collect(),
            boundary: b.map(|d| compile(&d, PolicyKind::Identity)),
            guardrail: g.map(|d| compile(&d, PolicyKind::Identity)),
            action: REQ_ACTIONS[a],
            resource: REQ_RESOURCES[r],
            ctx: if team {
                Context::new().with("team", ["pay"])
            } else {
                Context::new()
            },
        })
}

fn decide(c: &Case, extra_identity: Option<&Policy>, resource: Option<&Policy>) -> Decision {
    let mut identity: Vec<Source<'_>> = c
        .identity
        .iter()
        .map(|p| Source {
            name: "p",
            version: 1,
            policy: p,
        })
        .collect();
    if let Some(p) = extra_identity {
        identity.push(Source {
            name: "extra",
            version: 1,
            policy: p,
        });
    }
    let app = Applicable {
        identity,
        identity_index: None,
        resource: resource
            .into_iter()
            .map(|p| Source {
                name: "rp",
                version: 1,
                policy: p,
            })
            .collect(),
        boundary: c.boundary.as_ref().map(|p| Source {
            name: "b",
            version: 1,
            policy: p,
        }),
        guardrails: c
            .guardrail
            .iter()
            .map(|p| Source {
                name: "g",
                version: 1,
                policy: p,
            })
            .collect(),
    };
    evaluate(
        &Request {
            principal: "svc_me",
            action: c.action,
            resource: c.resource,
            context: &c.ctx,
        },
        &app,
    )
    .decision
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn adding_a_matching_deny_never_yields_allow(c in case()) {
        let deny = compile(&json!({"Statement": {"Effect": "Deny", "Action": c.action, "Resource": c.resource}}), PolicyKind::Identity);
        prop_assert_eq!(decide(&c, Some(&deny), None), Decision::Deny);
    }

    #[test]
    fn adding_an_allow_never_turns_allow_into_deny(c in case(), extra in policy()) {
        let allows_only: Value = {
            let mut d = extra.clone();
            for s in d["Statement"].as_array_mut().unwrap() {
                s["Effect"] = json!("Allow");
            }
            d
        };
        let extra = compile(&allows_only, PolicyKind::Identity);
        if decide(&c, None, None) == Decision::Allow {
            prop_assert_eq!(decide(&c, Some(&extra), None), Decision::Allow);
        }
    }

    #[test]
    fn resource_statements_for_other_principals_never_change_a_decision(c in case(), extra in policy()) {
        let before = decide(&c, None, None);
        let mut d = extra.clone();
        for s in d["Statement"].as_array_mut().unwrap() {
            s["Principal"] = json!({"Capstan": ["svc_other", "usr_someone"]});
        }
        let rp = compile(&d, PolicyKind::Resource);
        prop_assert_eq!(decide(&c, None, Some(&rp)), before);
    }
}

fn outcome(c: &Case, indexed: bool) -> capstan_iam::Outcome {
    let owned: Vec<(String, u32, std::sync::Arc<Policy>)> = c
        .identity
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                format!("p{i}"),
                i as u32 + 1,
                std::sync::Arc::new(p.clone()),
            )
        })
        .collect();
    let index = IdentityIndex::new(owned.clone());
    let identity: Vec<Source<'_>> = owned
        .iter()
        .map(|(n, v, p)| Source {
            name: n,
            version: *v,
            policy: p,
        })
        .collect();
    let app = Applicable {
        identity: if indexed { vec![] } else { identity },
        identity_index: indexed.then_some(&index),
        resource: vec![],
        boundary: c.boundary.as_ref().map(|p| Source {
            name: "b",
            version: 1,
            policy: p,
        }),
        guardrails: c
            .guardrail
            .iter()
            .map(|p| Source {
                name: "g",
                version: 1,
                policy: p,
            })
            .collect(),
    };
    evaluate(
        &Request {
            principal: "svc_me",
            action: c.action,
            resource: c.resource,
            context: &c.ctx,
        },
        &app,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn the_merged_identity_index_decides_exactly_like_scanning_each_policy(c in case()) {
        prop_assert_eq!(outcome(&c, true), outcome(&c, false));
    }
}
