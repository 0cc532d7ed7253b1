//! "Decision procedure": explicit deny, guardrails, identity ∪ resource, boundary, implicit deny.

use capstan_iam::{evaluate, Applicable, Context, Decision, Matched, Reason, Request};
use serde_json::json;

use crate::{allow, identity, resource_policy, src};

const R: &str = "crn:capstan:orders:acme:order/42";
const A: &str = "orders:GetOrder";

fn deny(action: &str, resource: &str) -> serde_json::Value {
    json!({"Version": "2012-10-17", "Statement": [{"Sid": "NoWay", "Effect": "Deny", "Action": action, "Resource": resource}]})
}

fn run(app: &Applicable<'_>) -> (Decision, Reason, Vec<Matched>) {
    let ctx = Context::new();
    let o = evaluate(
        &Request {
            principal: "svc_a",
            action: A,
            resource: R,
            context: &ctx,
        },
        app,
    );
    (o.decision, o.reason, o.matched)
}

#[test]
fn the_procedure_step_by_step() {
    let allow_all = identity(allow("orders:*", "*", json!({"Sid": "All"})));
    let allow_get = identity(allow(A, R, json!({"Sid": "Get"})));
    let deny_get = identity(deny(A, R));
    let allow_other = identity(allow("billing:*", "*", json!({})));
    let rp_allow = resource_policy(
        json!({"Version": "2012-10-17", "Statement": {"Sid": "Rp", "Effect": "Allow",
        "Principal": {"Capstan": "svc_a"}, "Action": A, "Resource": R}}),
    );
    let rp_deny = resource_policy(
        json!({"Version": "2012-10-17", "Statement": {"Effect": "Deny",
        "Principal": "*", "Action": "orders:*", "Resource": "*"}}),
    );

    // Nothing applies: implicit deny.
    let (d, r, m) = run(&Applicable::default());
    assert_eq!((d, r, m.len()), (Decision::Deny, Reason::ImplicitDeny, 0));
    let (d, r, _) = run(&Applicable {
        identity: vec![src("other", &allow_other)],
        ..Default::default()
    });
    assert_eq!((d, r), (Decision::Deny, Reason::ImplicitDeny));

    // Identity allow, with the matched statements.
    let (d, r, m) = run(&Applicable {
        identity: vec![src("all", &allow_all), src("get", &allow_get)],
        ..Default::default()
    });
    assert_eq!((d, r), (Decision::Allow, Reason::Allowed));
    let sids: Vec<_> = m
        .iter()
        .map(|m| (m.policy.as_str(), m.sid.as_str()))
        .collect();
    assert_eq!(sids, [("all", "All"), ("get", "Get")]);

    // Resource policy allow alone is enough (identity ∪ resource).
    let (d, _, m) = run(&Applicable {
        resource: vec![src("rp", &rp_allow)],
        ..Default::default()
    });
    assert_eq!(d, Decision::Allow);
    assert_eq!(m[0].sid, "Rp");

    // An explicit deny anywhere wins: identity, resource policy, boundary or guardrail.
    for (where_, app) in [
        (
            "identity",
            Applicable {
                identity: vec![src("all", &allow_all), src("deny", &deny_get)],
                ..Default::default()
            },
        ),
        (
            "resource",
            Applicable {
                identity: vec![src("all", &allow_all)],
                resource: vec![src("rp", &rp_deny)],
                ..Default::default()
            },
        ),
        (
            "boundary",
            Applicable {
                identity: vec![src("all", &allow_all)],
                boundary: Some(src("deny", &deny_get)),
                ..Default::default()
            },
        ),
        (
            "guardrail",
            Applicable {
                identity: vec![src("all", &allow_all)],
                guardrails: vec![src("all", &allow_all), src("deny", &deny_get)],
                ..Default::default()
            },
        ),
    ] {
        let (d, r, m) = run(&app);
        assert_eq!((d, r), (Decision::Deny, Reason::ExplicitDeny), "{where_}");
        assert!(!m.is_empty(), "{where_}: the deny statement is named");
    }
    let (_, _, m) = run(&Applicable {
        identity: vec![src("all", &allow_all), src("deny", &deny_get)],
        ..Default::default()
    });
    assert_eq!(
        m,
        vec![Matched {
            policy: "deny".into(),
            version: 1,
            sid: "NoWay".into()
        }]
    );

    // Guardrails: one must allow.
    let (d, r, _) = run(&Applicable {
        identity: vec![src("all", &allow_all)],
        guardrails: vec![src("g", &allow_other)],
        ..Default::default()
    });
    assert_eq!((d, r), (Decision::Deny, Reason::Guardrail));
    let (d, _, _) = run(&Applicable {
        identity: vec![src("all", &allow_all)],
        guardrails: vec![src("g", &allow_other), src("g2", &allow_get)],
        ..Default::default()
    });
    assert_eq!(d, Decision::Allow);
    // A guardrail allow grants nothing by itself.
    let (d, r, _) = run(&Applicable {
        guardrails: vec![src("g", &allow_all)],
        ..Default::default()
    });
    assert_eq!((d, r), (Decision::Deny, Reason::ImplicitDeny));

    // Boundary: effective permissions are identity ∩ boundary.
    let (d, r, _) = run(&Applicable {
        identity: vec![src("all", &allow_all)],
        boundary: Some(src("b", &allow_other)),
        ..Default::default()
    });
    assert_eq!((d, r), (Decision::Deny, Reason::Boundary));
    let (d, _, m) = run(&Applicable {
        identity: vec![src("all", &allow_all)],
        boundary: Some(src("b", &allow_get)),
        ..Default::default()
    });
    assert_eq!(d, Decision::Allow);
    assert_eq!(
        m.len(),
        1,
        "the boundary explains nothing; the identity allow does"
    );
    // A boundary allow grants nothing by itself.
    let (d, _, _) = run(&Applicable {
        boundary: Some(src("b", &allow_all)),
        ..Default::default()
    });
    assert_eq!(d, Decision::Deny);
}

#[test]
fn statements_of_other_services_are_not_consulted_but_wildcards_are() {
    // Many statements for other services, one wildcard-service statement and a NotAction one.
    let mut statements: Vec<serde_json::Value> = (0..90)
        .map(|i| json!({"Effect": "Deny", "Action": format!("svc{i}:*"), "Resource": "*"}))
        .collect();
    statements
        .push(json!({"Sid": "Wild", "Effect": "Allow", "Action": "ord*:Get*", "Resource": "*"}));
    statements
        .push(json!({"Sid": "Except", "Effect": "Allow", "NotAction": "billing:*", "Resource": R}));
    let p = identity(json!({"Version": "2012-10-17", "Statement": statements}));
    let (d, _, m) = run(&Applicable {
        identity: vec![src("big", &p)],
        ..Default::default()
    });
    assert_eq!(d, Decision::Allow);
    let sids: Vec<_> = m.iter().map(|m| m.sid.as_str()).collect();
    assert_eq!(sids, ["Wild", "Except"]);
    let ctx = Context::new();
    let o = evaluate(
        &Request {
            principal: "svc_a",
            action: "svc7:Anything",
            resource: R,
            context: &ctx,
        },
        &Applicable {
            identity: vec![src("big", &p)],
            ..Default::default()
        },
    );
    assert_eq!(o.reason, Reason::ExplicitDeny);
    assert_eq!(o.matched[0].sid, "#7");
}

#[test]
fn a_statement_indexed_under_several_keys_matches_once() {
    let p = identity(json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Both", "Effect": "Allow", "Action": ["orders:GetOrder", "Orders:Get*", "orders:G?tOrder"], "Resource": "*"},
        {"Sid": "Exact", "Effect": "Allow", "Action": "ORDERS:GETORDER", "Resource": "*"}]}));
    let (d, _, m) = run(&Applicable {
        identity: vec![src("p", &p)],
        ..Default::default()
    });
    assert_eq!(d, Decision::Allow);
    let sids: Vec<_> = m.iter().map(|m| m.sid.as_str()).collect();
    assert_eq!(sids, ["Both", "Exact"]);
}
