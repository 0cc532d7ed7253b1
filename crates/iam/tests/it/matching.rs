//! "Matching": actions, resources, principals, key names.

use capstan_iam::{evaluate, Applicable, Context, Decision, Request};
use serde_json::json;

use crate::{allow, allowed, identity, resource_policy, src};

const R: &str = "crn:capstan:orders:acme:order/42";

#[test]
fn actions_are_case_insensitive_with_wildcards_anywhere() {
    let ctx = Context::new();
    let cases = [
        ("orders:GetOrder", "orders:GetOrder", true),
        ("Orders:getorder", "orders:GETORDER", true),
        ("orders:Get*", "orders:GetOrder", true),
        ("orders:*Order", "orders:RefundOrder", true),
        ("orders:G?tOrder", "orders:GetOrder", true),
        ("orders:G?tOrder", "orders:GeetOrder", false),
        ("*", "anything:AtAll", true),
        ("ord*:Get*", "orders:GetOrder", true),
        ("orders:Get*", "billing:GetOrder", false),
        ("orders:Get", "orders:GetOrder", false),
    ];
    for (pattern, action, want) in cases {
        let p = identity(allow(pattern, "*", json!({})));
        assert_eq!(allowed(&p, action, R, &ctx), want, "{pattern} vs {action}");
    }
}

#[test]
fn resources_are_case_sensitive_and_star_crosses_slashes() {
    let ctx = Context::new();
    let cases = [
        ("crn:capstan:orders:acme:order/42", R, true),
        ("crn:capstan:orders:acme:Order/42", R, false),
        ("crn:capstan:orders:acme:order/*", R, true),
        ("crn:capstan:orders:*:order/4?", R, true),
        ("crn:capstan:orders:other:order/*", R, false),
        // AWS: arn:aws:s3:::bucket/*/test/* matches bucket/1/2/test/3/object.jpg and bucket//test/object.jpg
        (
            "crn:capstan:s3:acme:bucket/*/test/*",
            "crn:capstan:s3:acme:bucket/1/2/test/3/object.jpg",
            true,
        ),
        (
            "crn:capstan:s3:acme:bucket/*/test/*",
            "crn:capstan:s3:acme:bucket//test/object.jpg",
            true,
        ),
        (
            "crn:capstan:s3:acme:bucket/*/test/*",
            "crn:capstan:s3:acme:bucket/1/2/tes/3",
            false,
        ),
        // `*` in a colon part does not cross into the next part; the path keeps its colons.
        ("crn:capstan:*:acme:order/42", R, true),
        ("crn:capstan:*", R, false),
        (
            "crn:capstan:config:acme:ns/*",
            "crn:capstan:config:acme:ns/a:b",
            true,
        ),
        ("*", R, true),
    ];
    for (pattern, resource, want) in cases {
        let p = identity(allow("orders:GetOrder", pattern, json!({})));
        assert_eq!(
            allowed(&p, "orders:GetOrder", resource, &ctx),
            want,
            "{pattern} vs {resource}"
        );
    }
}

#[test]
fn not_action_and_not_resource_match_everything_else() {
    let ctx = Context::new();
    // NotAction with Allow still applies only within the statement's Resource.
    let p = identity(json!({"Version": "2012-10-17", "Statement": {
        "Effect": "Allow", "NotAction": "orders:Delete*", "Resource": "crn:capstan:orders:acme:*"}}));
    assert!(allowed(&p, "orders:GetOrder", R, &ctx));
    assert!(!allowed(&p, "orders:DeleteOrder", R, &ctx));
    assert!(!allowed(
        &p,
        "orders:GetOrder",
        "crn:capstan:orders:other:order/1",
        &ctx
    ));
    let p = identity(json!({"Version": "2012-10-17", "Statement": {
        "Effect": "Allow", "Action": ["orders:*"], "NotResource": ["crn:capstan:orders:acme:secret/*"]}}));
    assert!(allowed(&p, "orders:GetOrder", R, &ctx));
    assert!(!allowed(
        &p,
        "orders:GetOrder",
        "crn:capstan:orders:acme:secret/x",
        &ctx
    ));
}

#[test]
fn principals_in_resource_policies_only_whole_star_is_a_wildcard() {
    let ctx = Context::new();
    let decide = |principal_element: serde_json::Value, who: &str| {
        let doc = json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow",
            "Principal": principal_element, "Action": "orders:GetOrder", "Resource": R}});
        let rp = resource_policy(doc);
        let applicable = Applicable {
            resource: vec![src("rp", &rp)],
            ..Default::default()
        };
        evaluate(
            &Request {
                principal: who,
                action: "orders:GetOrder",
                resource: R,
                context: &ctx,
            },
            &applicable,
        )
        .decision
    };
    assert_eq!(decide(json!("*"), "svc_anyone"), Decision::Allow);
    assert_eq!(
        decide(json!({"Capstan": "svc_a"}), "svc_a"),
        Decision::Allow
    );
    assert_eq!(
        decide(json!({"Capstan": ["svc_b", "svc_a"]}), "svc_a"),
        Decision::Allow
    );
    assert_eq!(decide(json!({"Capstan": "svc_b"}), "svc_a"), Decision::Deny);
    assert_eq!(
        decide(json!({"Capstan": "svc_*"}), "svc_a"),
        Decision::Deny,
        "no partial wildcards"
    );
    assert_eq!(decide(json!({"Capstan": "*"}), "svc_a"), Decision::Allow);
    // NotPrincipal: everyone but the listed.
    let doc = json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow",
        "NotPrincipal": {"Capstan": "svc_b"}, "Action": "orders:GetOrder", "Resource": R}});
    let rp = resource_policy(doc);
    let app = Applicable {
        resource: vec![src("rp", &rp)],
        ..Default::default()
    };
    let d = |who| {
        evaluate(
            &Request {
                principal: who,
                action: "orders:GetOrder",
                resource: R,
                context: &ctx,
            },
            &app,
        )
        .decision
    };
    assert_eq!(d("svc_a"), Decision::Allow);
    assert_eq!(d("svc_b"), Decision::Deny);
}

#[test]
fn condition_key_names_are_case_insensitive() {
    let p = identity(allow(
        "orders:*",
        "*",
        json!({"Condition": {"StringEquals": {"Capstan:PrincipalTag/Team": "pay"}}}),
    ));
    let ctx = Context::new().with("capstan:principaltag/team", ["pay"]);
    assert!(allowed(&p, "orders:GetOrder", R, &ctx));
    let ctx = Context::new().with("CAPSTAN:PRINCIPALTAG/TEAM", ["pay"]);
    assert!(allowed(&p, "orders:GetOrder", R, &ctx));
    // Values stay case-sensitive.
    let ctx = Context::new().with("capstan:principaltag/team", ["Pay"]);
    assert!(!allowed(&p, "orders:GetOrder", R, &ctx));
}

#[test]
fn crn_patterns_for_resource_policies() {
    use capstan_iam::crn_matches;
    assert!(crn_matches("crn:capstan:orders:acme:order/*", R));
    assert!(crn_matches("*", R));
    assert!(crn_matches(R, R));
    assert!(!crn_matches("crn:capstan:orders:acme:order/4", R));
    assert!(!crn_matches("crn:capstan:orders:other:order/*", R));
    assert!(!crn_matches("not a crn", R));
}
