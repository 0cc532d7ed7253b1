//! "Conditions" and "Policy variables".

use capstan_iam::{Context, Limits, Policy, PolicyKind};
use serde_json::{json, Value};

use crate::{allow, allowed, identity};

const R: &str = "crn:capstan:orders:acme:order/42";

/// Whether `condition` holds for `ctx` (one Allow statement guarded by it).
fn holds(condition: Value, ctx: &Context) -> bool {
    let p = identity(allow("orders:*", "*", json!({ "Condition": condition })));
    allowed(&p, "orders:GetOrder", R, ctx)
}

fn ctx(pairs: &[(&str, &[&str])]) -> Context {
    let mut c = Context::new();
    for (k, v) in pairs {
        c.set(k, v.iter().copied());
    }
    c
}

#[test]
fn every_operator() {
    type Case<'a> = (&'a str, Value, &'a [&'a str], bool);
    let cases: Vec<Case> = vec![
        ("StringEquals", json!("a"), &["a"], true),
        ("StringEquals", json!("a"), &["A"], false),
        ("StringNotEquals", json!("a"), &["b"], true),
        ("StringNotEquals", json!("a"), &["a"], false),
        ("StringEqualsIgnoreCase", json!("ÄbC"), &["äBc"], true),
        ("StringNotEqualsIgnoreCase", json!("abc"), &["ABC"], false),
        ("StringLike", json!("team-*"), &["team-pay"], true),
        ("StringLike", json!("team-?"), &["team-pay"], false),
        ("StringNotLike", json!("team-*"), &["ops"], true),
        ("StringEquals", json!("a*"), &["abc"], false),
        ("NumericEquals", json!(10), &["10"], true),
        ("NumericEquals", json!("10"), &["10.0"], true),
        ("NumericNotEquals", json!(10), &["11"], true),
        ("NumericLessThan", json!("10.5"), &["10.25"], true),
        ("NumericLessThan", json!(10), &["10"], false),
        ("NumericLessThanEquals", json!(10), &["10"], true),
        ("NumericGreaterThan", json!(-1.5), &["-1.25"], true),
        ("NumericGreaterThanEquals", json!(3), &["2.999"], false),
        ("NumericEquals", json!(1), &["one"], false),
        (
            "DateLessThan",
            json!("2026-12-01T00:00:00Z"),
            &["2026-11-24T10:00:00Z"],
            true,
        ),
        ("DateLessThan", json!("2026-12-01"), &["1795480000"], true),
        (
            "DateGreaterThan",
            json!(1795480000),
            &["2027-01-01T00:00:00+01:00"],
            true,
        ),
        (
            "DateEquals",
            json!("2026-11-24T01:00:00+01:00"),
            &["2026-11-24T00:00:00Z"],
            true,
        ),
        ("DateNotEquals", json!("2026-11-24"), &["2026-11-25"], true),
        (
            "DateLessThanEquals",
            json!("2026-11-24"),
            &["2026-11-24T00:00:00Z"],
            true,
        ),
        (
            "DateGreaterThanEquals",
            json!("2026-11-24"),
            &["2026-11-23"],
            false,
        ),
        ("Bool", json!(true), &["true"], true),
        ("Bool", json!("false"), &["true"], false),
        ("BinaryEquals", json!("aGVsbG8="), &["aGVsbG8="], true),
        ("BinaryEquals", json!("aGVsbG8="), &["aGVsbG9="], false),
        ("IpAddress", json!("10.0.0.0/8"), &["10.1.2.3"], true),
        ("IpAddress", json!("10.0.0.0/8"), &["11.1.2.3"], false),
        ("IpAddress", json!("10.1.2.3"), &["10.1.2.3"], true),
        ("IpAddress", json!("10.1.2.3"), &["10.1.2.4"], false),
        ("IpAddress", json!("2001:db8::/32"), &["2001:db8::1"], true),
        ("IpAddress", json!("2001:db8::1"), &["2001:db8::2"], false),
        (
            "NotIpAddress",
            json!(["10.0.0.0/8", "192.168.0.0/16"]),
            &["8.8.8.8"],
            true,
        ),
        (
            "NotIpAddress",
            json!(["10.0.0.0/8", "192.168.0.0/16"]),
            &["192.168.1.1"],
            false,
        ),
        ("ArnLike", json!("crn:capstan:orders:*:order/*"), &[R], true),
        (
            "ArnEquals",
            json!("crn:capstan:orders:acme:order/42"),
            &[R],
            true,
        ),
        ("ArnNotLike", json!("crn:capstan:billing:*:*"), &[R], true),
        (
            "ArnNotEquals",
            json!("crn:capstan:orders:acme:order/42"),
            &[R],
            false,
        ),
    ];
    for (op, value, req, want) in cases {
        let got = holds(json!({ op: { "k": value } }), &ctx(&[("k", req)]));
        assert_eq!(got, want, "{op} {value} vs {req:?}");
    }
}

#[test]
fn aws_string_like_matches_where_arn_like_does_not() {
    let p = "arn:aws:someservice:*:111122223333:finance/*";
    let v =
        "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/document.txt";
    let c = ctx(&[("k", &[v])]);
    assert!(holds(json!({"StringLike": {"k": p}}), &c));
    assert!(!holds(json!({"ArnLike": {"k": p}}), &c));
}

#[test]
fn and_across_operators_and_keys_or_across_values_nor_for_negated() {
    let c = ctx(&[("a", &["1"]), ("b", &["x"])]);
    assert!(holds(
        json!({"StringEquals": {"a": ["0", "1"], "b": "x"}}),
        &c
    ));
    assert!(
        !holds(json!({"StringEquals": {"a": "1", "b": "y"}}), &c),
        "AND across keys"
    );
    assert!(
        !holds(
            json!({"StringEquals": {"a": "1"}, "StringLike": {"b": "y*"}}),
            &c
        ),
        "AND across operators"
    );
    assert!(
        !holds(json!({"StringNotEquals": {"a": ["0", "1"]}}), &c),
        "negated: must match none"
    );
    assert!(holds(json!({"StringNotEquals": {"a": ["0", "2"]}}), &c));
}

#[test]
fn missing_keys_if_exists_and_null() {
    let none = Context::new();
    assert!(
        !holds(json!({"StringEquals": {"k": "a"}}), &none),
        "positive on missing key is false"
    );
    assert!(
        holds(json!({"StringNotEquals": {"k": "a"}}), &none),
        "negated on missing key is true"
    );
    assert!(holds(json!({"StringEqualsIfExists": {"k": "a"}}), &none));
    assert!(holds(json!({"NumericLessThanIfExists": {"k": 3}}), &none));
    assert!(!holds(
        json!({"NumericLessThanIfExists": {"k": 3}}),
        &ctx(&[("k", &["5"])])
    ));
    assert!(holds(json!({"Null": {"k": "true"}}), &none));
    assert!(!holds(json!({"Null": {"k": "false"}}), &none));
    assert!(holds(
        json!({"Null": {"k": "false"}}),
        &ctx(&[("k", &["v"])])
    ));
    assert!(!holds(
        json!({"Null": {"k": "true"}}),
        &ctx(&[("k", &["v"])])
    ));
}

#[test]
fn set_operators_on_missing_empty_and_multivalued_keys() {
    let none = Context::new();
    let empty = ctx(&[("k", &[])]);
    let some = ctx(&[("k", &["read", "write"])]);
    // AWS: ForAllValues:StringEquals on a missing key → true; ForAnyValue → false.
    assert!(holds(
        json!({"ForAllValues:StringEquals": {"k": ["read"]}}),
        &none
    ));
    assert!(holds(
        json!({"ForAllValues:StringEquals": {"k": ["read"]}}),
        &empty
    ));
    assert!(!holds(
        json!({"ForAnyValue:StringEquals": {"k": ["read"]}}),
        &none
    ));
    assert!(!holds(
        json!({"ForAnyValue:StringEquals": {"k": ["read"]}}),
        &empty
    ));
    assert!(holds(
        json!({"ForAllValues:StringEquals": {"k": ["read", "write", "admin"]}}),
        &some
    ));
    assert!(!holds(
        json!({"ForAllValues:StringEquals": {"k": ["read"]}}),
        &some
    ));
    assert!(holds(
        json!({"ForAnyValue:StringEquals": {"k": ["write", "admin"]}}),
        &some
    ));
    assert!(!holds(
        json!({"ForAnyValue:StringEquals": {"k": ["admin"]}}),
        &some
    ));
    assert!(holds(
        json!({"ForAnyValue:StringLike": {"k": "wr*"}}),
        &some
    ));
    assert!(holds(
        json!({"ForAllValues:StringNotEquals": {"k": ["admin"]}}),
        &some
    ));
    assert!(!holds(
        json!({"ForAnyValue:StringNotEquals": {"k": ["read", "write"]}}),
        &some
    ));
    assert!(holds(
        json!({"ForAnyValue:StringEqualsIfExists": {"k": "x"}}),
        &none
    ));
}

#[test]
fn variables_resolve_default_escape_and_fail_safely() {
    let c = ctx(&[
        ("capstan:principal", &["svc_a"]),
        ("capstan:principaltag/team", &["pay"]),
    ]);
    assert!(holds(
        json!({"StringEquals": {"k": "${capstan:principal}"}}),
        &ctx(&[("k", &["svc_a"]), ("capstan:principal", &["svc_a"])])
    ));
    assert!(holds(
        json!({"StringLike": {"k": "team/${capstan:PrincipalTag/team}/*"}}),
        &ctx(&[
            ("k", &["team/pay/x"]),
            ("capstan:principaltag/team", &["pay"])
        ])
    ));
    // Default value when the key is missing.
    assert!(holds(
        json!({"StringEquals": {"k": "${capstan:PrincipalTag/dept, 'none'}"}}),
        &ctx(&[("k", &["none"])])
    ));
    // Escapes are literal.
    assert!(holds(
        json!({"StringEquals": {"k": "a${*}b${?}${$}"}}),
        &ctx(&[("k", &["a*b?$"])])
    ));
    assert!(!holds(
        json!({"StringLike": {"k": "a${*}"}}),
        &ctx(&[("k", &["abc"])])
    ));
    // Unresolved: positive operators don't match, negated ones do.
    let k = ctx(&[("k", &["x"])]);
    assert!(!holds(
        json!({"StringEquals": {"k": "${capstan:nothing}"}}),
        &k
    ));
    assert!(holds(
        json!({"StringNotEquals": {"k": "${capstan:nothing}"}}),
        &k
    ));
    // A Resource with an unresolved variable matches nothing.
    let p = identity(allow(
        "orders:*",
        "crn:capstan:orders:acme:home/${capstan:principal}/*",
        json!({}),
    ));
    assert!(allowed(
        &p,
        "orders:Get",
        "crn:capstan:orders:acme:home/svc_a/x",
        &c
    ));
    assert!(!allowed(
        &p,
        "orders:Get",
        "crn:capstan:orders:acme:home/svc_b/x",
        &c
    ));
    assert!(!allowed(
        &p,
        "orders:Get",
        "crn:capstan:orders:acme:home/svc_a/x",
        &Context::new()
    ));
    // A variable may stand for any part of a CRN, the tenant's too; its colon does not split
    // the pattern, and a substituted value never spans two parts.
    let p = identity(allow(
        "orders:*",
        "crn:capstan:orders:${capstan:tenant}:home/${capstan:principal}",
        json!({}),
    ));
    let t = ctx(&[
        ("capstan:principal", &["svc_a"]),
        ("capstan:tenant", &["acme"]),
    ]);
    assert!(allowed(
        &p,
        "orders:Get",
        "crn:capstan:orders:acme:home/svc_a",
        &t
    ));
    assert!(!allowed(
        &p,
        "orders:Get",
        "crn:capstan:orders:other:home/svc_a",
        &t
    ));
    let colon = ctx(&[
        ("capstan:principal", &["svc_a"]),
        ("capstan:tenant", &["acme:home"]),
    ]);
    assert!(!allowed(
        &p,
        "orders:Get",
        "crn:capstan:orders:acme:home:home/svc_a",
        &colon
    ));
    // Under 2008-10-17 `${…}` is literal text.
    let p = identity(
        json!({"Version": "2008-10-17", "Statement": {"Effect": "Allow", "Action": "orders:*",
        "Resource": "*", "Condition": {"StringEquals": {"k": "${capstan:principal}"}}}}),
    );
    assert!(allowed(
        &p,
        "orders:Get",
        R,
        &ctx(&[
            ("k", &["${capstan:principal}"]),
            ("capstan:principal", &["svc_a"])
        ])
    ));
    assert!(!allowed(
        &p,
        "orders:Get",
        R,
        &ctx(&[("k", &["svc_a"]), ("capstan:principal", &["svc_a"])])
    ));
}

#[test]
fn variables_are_refused_where_iam_forbids_them() {
    for op in [
        "NumericEquals",
        "DateEquals",
        "IpAddress",
        "BinaryEquals",
        "Bool",
    ] {
        let doc = allow(
            "orders:*",
            "*",
            json!({"Condition": {op: {"k": "${capstan:x}"}}}),
        );
        let errs =
            Policy::parse(&doc.to_string(), PolicyKind::Identity, &Limits::default()).unwrap_err();
        assert!(
            errs[0].path.ends_with(&format!("Condition.{op}.k")),
            "{errs:?}"
        );
    }
}

/// A value substituted into an ArnLike pattern is literal: a tag `project = "*"` must not turn
/// `…:order/${capstan:PrincipalTag/project}` into "every order" (it did, through a second parse).
#[test]
fn arn_like_substitutions_are_literal() {
    let c = json!({"ArnLike": {"capstan:resource":
        "crn:capstan:orders:acme:order/${capstan:PrincipalTag/project}"}});
    let with = |project: &str| {
        ctx(&[
            ("capstan:PrincipalTag/project", &[project]),
            ("capstan:resource", &[R]),
        ])
    };
    assert!(holds(c.clone(), &with("42")));
    assert!(
        !holds(c.clone(), &with("*")),
        "a substituted * is no wildcard"
    );
    assert!(
        !holds(c.clone(), &with("4?")),
        "a substituted ? is no wildcard"
    );
    // The policy's own wildcards still are, and a variable may stand in any part.
    let own =
        json!({"ArnLike": {"capstan:resource": "crn:capstan:orders:${capstan:tenant}:order/*"}});
    assert!(holds(
        own.clone(),
        &ctx(&[("capstan:tenant", &["acme"]), ("capstan:resource", &[R])])
    ));
    assert!(!holds(
        own,
        &ctx(&[("capstan:tenant", &["*"]), ("capstan:resource", &[R])])
    ));
    // A substituted colon does not split a part.
    let colon = json!({"ArnLike": {"capstan:resource": "crn:capstan:orders:acme:${capstan:PrincipalTag/p}"}});
    assert!(!holds(
        colon,
        &ctx(&[
            ("capstan:PrincipalTag/p", &["*:*"]),
            ("capstan:resource", &[R])
        ])
    ));
}
