//! Document validation: errors with JSON paths, warnings, limits.

use capstan_iam::{Issue, Limits, Policy, PolicyKind};
use serde_json::{json, Value};

fn errors(doc: &str, kind: PolicyKind) -> Vec<Issue> {
    Policy::parse(doc, kind, &Limits::default()).expect_err("should be refused")
}

fn first_error(doc: Value) -> (String, String) {
    let e = errors(&doc.to_string(), PolicyKind::Identity);
    (e[0].path.clone(), e[0].message.clone())
}

#[test]
fn errors_name_the_json_path() {
    let st = |extra: Value| {
        let mut s = json!({"Effect": "Allow", "Action": "orders:Get", "Resource": "*"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                s.as_object_mut().unwrap().remove(k);
            } else {
                s[k] = v.clone();
            }
        }
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "x:y", "Resource": "*"}, s]})
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            st(json!({"Effect": "Permit"})),
            "$.Statement[1].Effect",
            "Allow",
        ),
        (
            st(json!({"Effect": null})),
            "$.Statement[1].Effect",
            "Allow",
        ),
        (
            st(json!({"Action": null})),
            "$.Statement[1]",
            "Action or NotAction",
        ),
        (
            st(json!({"NotAction": "a:b"})),
            "$.Statement[1]",
            "not both",
        ),
        (
            st(json!({"Action": ["orders:Get", "nocolon"]})),
            "$.Statement[1].Action[1]",
            "<service>:<Action>",
        ),
        (st(json!({"Action": []})), "$.Statement[1].Action", "empty"),
        (
            st(json!({"Resource": "orders/1"})),
            "$.Statement[1].Resource",
            "CRN",
        ),
        (
            st(json!({"Principal": "*"})),
            "$.Statement[1]",
            "only allowed in resource policies",
        ),
        (
            st(json!({"Condition": {"StringEqualz": {"k": "v"}}})),
            "$.Statement[1].Condition.StringEqualz",
            "unknown condition operator",
        ),
        (
            st(json!({"Condition": {"NumericLessThan": {"k": "ten"}}})),
            "$.Statement[1].Condition.NumericLessThan.k",
            "number",
        ),
        (
            st(json!({"Condition": {"IpAddress": {"k": "10.0.0.0/33"}}})),
            "$.Statement[1].Condition.IpAddress.k",
            "CIDR",
        ),
        (
            st(json!({"Condition": {"DateLessThan": {"k": "soon"}}})),
            "$.Statement[1].Condition.DateLessThan.k",
            "date",
        ),
        (
            st(json!({"Condition": {"StringEquals": {"k": {"nested": 1}}}})),
            "$.Statement[1].Condition.StringEquals.k",
            "string",
        ),
        (
            st(json!({"Condition": {"ForAllValues:Null": {"k": "true"}}})),
            "$.Statement[1].Condition.ForAllValues:Null",
            "Null",
        ),
        (
            st(json!({"Bogus": 1})),
            "$.Statement[1].Bogus",
            "unknown element",
        ),
        (
            st(json!({"Sid": "has space"})),
            "$.Statement[1].Sid",
            "letters and digits",
        ),
        (
            json!({"Version": "2020-01-01", "Statement": []}),
            "$.Version",
            "2012-10-17",
        ),
        (
            json!({"Version": "2012-10-17"}),
            "$",
            "Statement is required",
        ),
        (
            json!({"Version": "2012-10-17", "Statement": "x"}),
            "$.Statement",
            "object",
        ),
        (
            json!({"Version": "2012-10-17", "Statement": [{"Sid": "A", "Effect": "Allow", "Action": "a:b", "Resource": "*"},
            {"Sid": "A", "Effect": "Deny", "Action": "a:b", "Resource": "*"}]}),
            "$.Statement[1].Sid",
            "twice",
        ),
        (json!([1, 2]), "$", "object"),
    ];
    for (doc, path, words) in cases {
        let (p, m) = first_error(doc.clone());
        assert_eq!(p, path, "{doc}: {m}");
        assert!(m.contains(words), "{doc}: {m:?} should mention {words:?}");
    }
    assert_eq!(errors("{not json", PolicyKind::Identity)[0].path, "$");
    // Resource policies must name principals.
    let doc = json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "a:b", "Resource": "*"}});
    assert!(errors(&doc.to_string(), PolicyKind::Resource)[0]
        .message
        .contains("Principal"));
    // Every error is reported at once.
    let doc = json!({"Version": "2012-10-17", "Statement": [{"Effect": "X", "Action": "a:b", "Resource": "*"}, {"Effect": "Allow", "Action": "bad", "Resource": "*"}]});
    assert_eq!(errors(&doc.to_string(), PolicyKind::Identity).len(), 2);
}

#[test]
fn single_values_and_single_statements_need_no_brackets() {
    let doc = json!({"Statement": {"Effect": "Allow", "Action": "orders:Get", "Resource": "*"}});
    let p = Policy::parse(&doc.to_string(), PolicyKind::Identity, &Limits::default()).unwrap();
    assert_eq!(p.policy.statements.len(), 1);
    assert_eq!(p.policy.statements[0].sid, "#0");
}

#[test]
fn warnings_for_legal_but_dangerous_documents() {
    let warn = |doc: Value| {
        Policy::parse(&doc.to_string(), PolicyKind::Identity, &Limits::default())
            .unwrap()
            .warnings
    };
    let w = warn(
        json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "orders:*", "Resource": "*",
        "Condition": {"ForAllValues:StringEquals": {"capstan:TokenScopes": ["read"]}}}}),
    );
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].path, "$.Statement.Condition");
    assert!(w[0].message.contains("ForAllValues"));
    let w = warn(
        json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "*", "NotResource": "crn:capstan:auth:acme:*"}}),
    );
    assert!(
        w[0].message
            .contains("every action on every other resource"),
        "{w:?}"
    );
    let w = warn(
        json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "NotAction": "auth:*", "Resource": "*"}}),
    );
    assert!(w[0].message.contains("NotAction"));
    // The same shapes with Deny are the safe idiom: no warning.
    let w = warn(
        json!({"Version": "2012-10-17", "Statement": {"Effect": "Deny", "Action": "*", "NotResource": "crn:capstan:auth:acme:*",
        "Condition": {"ForAllValues:StringEquals": {"k": "v"}}}}),
    );
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn limits_are_counted_and_refused_clearly() {
    let limits = Limits {
        max_chars: 400,
        max_statements: 3,
        max_values: 4,
        max_depth: 6,
        max_wildcards: 16,
    };
    let parse = |doc: Value| Policy::parse(&doc.to_string(), PolicyKind::Identity, &limits);
    let st = json!({"Effect": "Allow", "Action": "a:b", "Resource": "*"});
    let e = parse(json!({"Statement": [st, st, st, st]})).unwrap_err();
    assert!(
        e[0].message.contains("4 statements; the limit is 3"),
        "{e:?}"
    );
    let e = parse(json!({"Statement": {"Effect": "Allow", "Action": ["a:b", "a:c", "a:d", "a:e", "a:f"], "Resource": "*"}})).unwrap_err();
    assert_eq!(e[0].path, "$.Statement.Action");
    assert!(e[0].message.contains("the limit is 4"));
    let e = parse(json!({"Statement": {"Effect": "Allow", "Action": "a:b", "Resource": "*", "Condition": {"StringEquals": {"k": ["1", "2", "3", "4", "5"]}}}})).unwrap_err();
    assert_eq!(e[0].path, "$.Statement.Condition.StringEquals.k");
    let long = "x".repeat(500);
    let e = parse(
        json!({"Statement": {"Effect": "Allow", "Action": format!("a:{long}"), "Resource": "*"}}),
    )
    .unwrap_err();
    assert!(e[0].message.contains("non-whitespace characters"));
    // Whitespace does not count.
    let spaced = format!("{{ {} \"Statement\": {{\"Effect\": \"Allow\", \"Action\": \"a:b\", \"Resource\": \"*\"}} }}", " ".repeat(1000));
    assert!(Policy::parse(&spaced, PolicyKind::Identity, &limits).is_ok());
    let e = parse(json!({"Statement": {"Effect": "Allow", "Action": "a:b", "Resource": "*", "Condition": {"StringEquals": {"k": [[[["deep"]]]]}}}})).unwrap_err();
    assert!(e[0].message.contains("levels deep"), "{e:?}");
    // Deep nesting far past serde's limits is refused, never a crash.
    // Patterns whose matching cost an attacker could grow: `*` followed by thousands of `?`.
    let greedy = format!("*{}", "?".repeat(6_000));
    let e = parse(json!({"Statement": {"Effect": "Allow", "Action": "a:b", "Resource": greedy}}));
    assert!(
        Policy::parse(
            &json!({"Statement": {"Effect": "Allow", "Action": "a:b", "Resource": format!("*{}", "?".repeat(6_000))}}).to_string(),
            PolicyKind::Identity,
            &Limits { max_chars: 1_000_000, ..limits }
        )
        .unwrap_err()[0]
            .message
            .contains("6001 wildcard characters (* or ?); the limit is 16"),
        "{e:?}"
    );
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Policy::parse(
        &deep,
        PolicyKind::Identity,
        &Limits {
            max_chars: 1_000_000,
            ..limits
        }
    )
    .is_err());
}

#[test]
fn deny_all_is_a_real_deny_everything_policy() {
    for kind in [PolicyKind::Identity, PolicyKind::Resource] {
        let p = Policy::deny_all(kind);
        assert_eq!(p.statements.len(), 1);
        assert_eq!(p.statements[0].sid, "DoesNotCompile");
    }
}
