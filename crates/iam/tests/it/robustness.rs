//! Robustness under arbitrary input: the document parser, the pattern matcher and the condition
//! evaluator never panic, and no case takes more than a small time budget (debug build; release
//! is about ten times faster). Run more cases with `PROPTEST_CASES=100000 cargo test -p
//! capstan-iam robustness`.

use std::time::{Duration, Instant};

use capstan_iam::{evaluate, Applicable, Context, Limits, Policy, PolicyKind, Request, Source};
use proptest::prelude::*;
use serde_json::{json, Value};

/// The most one case may take in a debug build.
const BUDGET: Duration = Duration::from_millis(50);

/// Text with the characters that matter to the grammar and the matcher.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('*'),
            Just('?'),
            Just(':'),
            Just('/'),
            Just('$'),
            Just('{'),
            Just('}'),
            Just('a'),
            Just('b'),
            Just('\0'),
            any::<char>(),
        ],
        0..max,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        text(40).prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Value::Null),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("Version".to_owned()),
                    Just("Statement".to_owned()),
                    Just("Effect".to_owned()),
                    Just("Action".to_owned()),
                    Just("NotAction".to_owned()),
                    Just("Resource".to_owned()),
                    Just("Principal".to_owned()),
                    Just("Condition".to_owned()),
                    Just("StringLike".to_owned()),
                    Just("ArnLike".to_owned()),
                    Just("DateGreaterThan".to_owned()),
                    Just("NumericLessThan".to_owned()),
                    Just("IpAddress".to_owned()),
                    text(12),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn within_budget<T>(f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    assert!(start.elapsed() < BUDGET, "took {:?}", start.elapsed());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any JSON, and any text, parses to a policy or to issues with paths: never a panic.
    #[test]
    fn the_parser_takes_anything(doc in value(), raw in text(300)) {
        for kind in [PolicyKind::Identity, PolicyKind::Resource] {
            within_budget(|| Policy::parse(&doc.to_string(), kind, &Limits::default()).ok());
            within_budget(|| Policy::parse(&raw, kind, &Limits::default()).ok());
        }
    }

    /// Any pattern the limits accept, against any request up to the request limits, decides
    /// within the budget; variables resolve from any context.
    #[test]
    fn matching_and_conditions_stay_cheap(
        action in text(16),
        resource in text(24),
        req_action in text(256),
        req_resource in text(2048),
        tag in text(64),
    ) {
        let doc = json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": [action.clone(), "*"], "Resource": [resource.clone(),
                format!("crn:capstan:x:t:{resource}")],
             "Condition": {"StringLike": {"capstan:PrincipalTag/t": [tag.clone(), "${capstan:PrincipalTag/t}*"]},
                           "ArnLike": {"capstan:r": format!("crn:capstan:x:${{capstan:PrincipalTag/t}}:{resource}")}}},
            {"Effect": "Deny", "NotAction": action, "NotResource": resource}
        ]});
        let Ok(parsed) = Policy::parse(&doc.to_string(), PolicyKind::Identity, &Limits::default()) else {
            return Ok(());
        };
        let ctx = Context::new()
            .with("capstan:PrincipalTag/t", [tag.as_str()])
            .with("capstan:r", [req_resource.as_str()]);
        let src = Source { name: "p", version: 1, policy: &parsed.policy };
        let applicable = Applicable {
            identity: vec![src],
            identity_index: None,
            resource: Vec::new(),
            boundary: None,
            guardrails: Vec::new(),
        };
        within_budget(|| evaluate(
            &Request { principal: "svc_a", action: &req_action, resource: &req_resource, context: &ctx },
            &applicable,
        ));
    }
}
