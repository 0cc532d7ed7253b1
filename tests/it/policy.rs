//! The policy service over HTTP: Capstan guarding itself, the policy API, authorization.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use capstan_tests::{Creds, Ctx, TestServer};

capstan_tests::on_both_backends!(
    guarded_calls_are_denied_logged_and_allowed_with_the_permission,
    managed_policies_keep_five_versions_and_validate,
    authorize_resolves_groups_boundaries_tags_resource_policies_and_guardrails,
    a_policy_change_on_one_server_is_enforced_by_another_within_a_second,
    policy_api_refuses_bad_input_clearly,
    simulate_shows_what_changes_would_do_without_doing_it,
    a_recreated_policy_is_never_served_from_a_stale_compilation,
);

const ORDER: &str = "crn:capstan:orders:default:order/42";

async fn service_client(s: &TestServer, admin: &str, name: &str) -> Creds {
    s.create_client(admin, json!({"name": name, "scopes": ["orders:read", "orders:write"], "audiences": ["capstan", "orders-api"]}))
        .await
}

async fn put(s: &TestServer, token: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    s.api(Method::PUT, path, token, body).await
}

async fn guarded_calls_are_denied_logged_and_allowed_with_the_permission(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin, _) = s.orders_client().await;
    let ci = service_client(&s, &admin, "ci").await;
    let ci_token = s.token("default", &ci, &[("audience", "capstan")]).await;
    let new_client = json!({"name": "x", "audiences": ["a"]});

    let (status, body) = s
        .api(
            Method::POST,
            "/v1/clients",
            &ci_token,
            Some(new_client.clone()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "implicit_deny");
    assert_eq!(body["action"], "auth:CreateClient");
    let (status, body) = s.api(Method::GET, "/v1/policies", &ci_token, None).await;
    assert_eq!(
        (status, body["action"].as_str()),
        (403, Some("policy:ListPolicies"))
    );

    // The refusal is in the decision log.
    let (status, log) = s
        .api(
            Method::GET,
            &format!("/v1/decisions?principal={}&decision=Deny", ci.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{log}");
    let entry = log
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["action"] == "auth:CreateClient")
        .expect("logged");
    assert_eq!(entry["resource"], "crn:capstan:auth:default:clients/*");
    assert_eq!(entry["reason"], "implicit_deny");
    assert!(entry["policy_revision"].as_i64().unwrap() >= 1);

    // With the permission the same call succeeds, at once (the change drops the cache).
    let (status, _) = put(
        &s,
        &admin,
        &format!("/v1/principals/{}/policies/AuthFullAccess", ci.id),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = s
        .api(
            Method::POST,
            "/v1/clients",
            &ci_token,
            Some(new_client.clone()),
        )
        .await;
    assert_eq!(status, 201);
    let (status, log) = s
        .api(
            Method::GET,
            &format!("/v1/decisions?principal={}&decision=Allow", ci.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let allowed = log
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["action"] == "auth:CreateClient")
        .expect("allow logged");
    assert_eq!(allowed["matched"][0]["policy"], "AuthFullAccess");
    // Still nothing outside auth.
    let (status, _) = s.api(Method::GET, "/v1/policies", &ci_token, None).await;
    assert_eq!(status, 403);

    // An explicit deny beats even AdministratorAccess.
    let (status, _) = put(&s, &admin, "/v1/policies/NoClientDeletes", Some(json!({"Version": "2012-10-17",
        "Statement": {"Sid": "NoDeletes", "Effect": "Deny", "Action": "auth:DeleteClient", "Resource": "*"}}))).await;
    assert_eq!(status, 200);
    let admin_id = s
        .auth()
        .verify_access_token(&admin)
        .await
        .unwrap()
        .principal;
    let (status, _) = put(
        &s,
        &admin,
        &format!("/v1/principals/{admin_id}/policies/NoClientDeletes"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = s
        .api(
            Method::DELETE,
            &format!("/v1/clients/{}", ci.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["reason"], "explicit_deny");
    // Detaching lifts it.
    let (status, _) = s
        .api(
            Method::DELETE,
            &format!("/v1/principals/{admin_id}/policies/NoClientDeletes"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = s
        .api(
            Method::DELETE,
            &format!("/v1/clients/{}", ci.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 204);
    s.shutdown().await;
}

use capstan_core::authz::TokenVerifier;

async fn managed_policies_keep_five_versions_and_validate(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin, _) = s.orders_client().await;
    for i in 1..=6 {
        let doc = json!({"Version": "2012-10-17", "Statement": {"Sid": format!("V{i}"), "Effect": "Allow", "Action": "orders:Get*", "Resource": "*"}});
        let (status, body) = put(&s, &admin, "/v1/policies/OrdersRead", Some(doc)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], i);
    }
    let (status, list) = s.api(Method::GET, "/v1/policies", &admin, None).await;
    assert_eq!(status, 200);
    let ours = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "OrdersRead")
        .unwrap();
    assert_eq!(ours["versions"], json!([2, 3, 4, 5, 6]));
    assert_eq!(ours["default_version"], 6);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "AdministratorAccess" && p["builtin"] == true));
    let (status, v3) = s
        .api(
            Method::GET,
            "/v1/policies/OrdersRead?version=3",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (v3["version"].as_i64(), v3["default"].as_bool()),
        (Some(3), Some(false))
    );
    assert_eq!(v3["document"]["Statement"]["Sid"], "V3");
    let (status, _) = s
        .api(
            Method::GET,
            "/v1/policies/OrdersRead?version=1",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 404, "the oldest version was dropped");
    let (_, current) = s
        .api(Method::GET, "/v1/policies/OrdersRead", &admin, None)
        .await;
    assert_eq!(
        (current["version"].as_i64(), current["default"].as_bool()),
        (Some(6), Some(true))
    );

    // Invalid documents: 400 with every error and its JSON path; nothing stored.
    let (status, body) = put(&s, &admin, "/v1/policies/OrdersRead", Some(json!({"Version": "2012-10-17",
        "Statement": [{"Effect": "Permit", "Action": "orders:Get", "Resource": "*"}, {"Effect": "Allow", "Action": "nocolon", "Resource": "*"}]}))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_policy");
    let paths: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["$.Statement[0].Effect", "$.Statement[1].Action"]);
    let (_, current) = s
        .api(Method::GET, "/v1/policies/OrdersRead", &admin, None)
        .await;
    assert_eq!(current["version"], 6);

    // Validate without saving: errors and warnings.
    let (status, v) = s.api(Method::POST, "/v1/policies:validate", &admin, Some(json!({"Version": "2012-10-17",
        "Statement": {"Effect": "Allow", "Action": "*", "NotResource": "crn:capstan:auth:default:*"}}))).await;
    assert_eq!(status, 200);
    assert_eq!(v["valid"], true);
    assert_eq!(v["warnings"][0]["path"], "$.Statement.NotResource");
    let (_, v) = s
        .api(
            Method::POST,
            "/v1/policies:validate",
            &admin,
            Some(json!({"Statement": {"Effect": "Allow"}})),
        )
        .await;
    assert_eq!(v["valid"], false);
    assert!(v["errors"].as_array().unwrap().len() >= 2);

    // Built-ins are read-only; attached policies cannot be deleted.
    let (status, _) = put(
        &s,
        &admin,
        "/v1/policies/AdministratorAccess",
        Some(json!({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}})),
    )
    .await;
    assert_eq!(status, 409);
    let (status, builtin) = s
        .api(
            Method::GET,
            "/v1/policies/AdministratorAccess",
            &admin,
            None,
        )
        .await;
    assert_eq!((status, builtin["builtin"].as_bool()), (200, Some(true)));
    let (status, _) = put(&s, &admin, "/v1/groups/readers", None).await;
    assert_eq!(status, 204);
    let (status, _) = put(&s, &admin, "/v1/groups/readers/policies/OrdersRead", None).await;
    assert_eq!(status, 204);
    let (status, body) = s
        .api(Method::DELETE, "/v1/policies/OrdersRead", &admin, None)
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = s
        .api(
            Method::DELETE,
            "/v1/groups/readers/policies/OrdersRead",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = s
        .api(Method::DELETE, "/v1/policies/OrdersRead", &admin, None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = s
        .api(Method::GET, "/v1/policies/OrdersRead", &admin, None)
        .await;
    assert_eq!(status, 404);
    s.shutdown().await;
}

async fn authorize(s: &TestServer, token: &str, req: Value) -> Value {
    let (status, body) = s.api(Method::POST, "/v1/authorize", token, Some(req)).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn authorize_resolves_groups_boundaries_tags_resource_policies_and_guardrails(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin, _) = s.orders_client().await;
    let svc = service_client(&s, &admin, "orders").await;
    let who = json!(svc.id);
    let ask = |action: &str, resource: &str| json!({"principal": who, "action": action, "resource": resource});

    let d = authorize(&s, &admin, ask("orders:GetOrder", ORDER)).await;
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("Deny"), Some("implicit_deny"))
    );
    let rev0 = d["policy_revision"].as_i64().unwrap();

    // Nested groups: svc ∈ team ∈ org; the policy hangs on org.
    put(&s, &admin, "/v1/policies/OrdersAccess", Some(json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Read", "Effect": "Allow", "Action": "orders:Get*", "Resource": "crn:capstan:orders:default:*"},
        {"Sid": "TeamWrite", "Effect": "Allow", "Action": "orders:Put*", "Resource": "crn:capstan:orders:default:order/*",
         "Condition": {"StringEquals": {"capstan:PrincipalTag/team": "payments"}}},
        {"Sid": "OwnHome", "Effect": "Allow", "Action": "orders:*", "Resource": "crn:capstan:orders:default:home/${capstan:principal}/*"}]}))).await;
    for g in ["org", "team"] {
        assert_eq!(
            put(&s, &admin, &format!("/v1/groups/{g}"), None).await.0,
            204
        );
    }
    assert_eq!(
        put(&s, &admin, "/v1/groups/org/members/group:team", None)
            .await
            .0,
        204
    );
    assert_eq!(
        put(
            &s,
            &admin,
            &format!("/v1/groups/team/members/{}", svc.id),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        put(&s, &admin, "/v1/groups/org/policies/OrdersAccess", None)
            .await
            .0,
        204
    );
    let d = authorize(&s, &admin, ask("orders:GetOrder", ORDER)).await;
    assert_eq!(d["decision"], "Allow");
    assert_eq!(
        d["matched"],
        json!([{"policy": "OrdersAccess", "version": 1, "sid": "Read"}])
    );
    assert!(d["policy_revision"].as_i64().unwrap() > rev0);
    // Policy variables.
    let home = format!("crn:capstan:orders:default:home/{}/cart", svc.id);
    assert_eq!(
        authorize(&s, &admin, ask("orders:DeleteCart", &home)).await["decision"],
        "Allow"
    );
    assert_eq!(
        authorize(
            &s,
            &admin,
            ask(
                "orders:DeleteCart",
                "crn:capstan:orders:default:home/svc_other/cart"
            )
        )
        .await["decision"],
        "Deny"
    );
    // Tags feed capstan:PrincipalTag/*.
    assert_eq!(
        authorize(&s, &admin, ask("orders:PutOrder", ORDER)).await["decision"],
        "Deny"
    );
    assert_eq!(
        put(
            &s,
            &admin,
            &format!("/v1/principals/{}/tags", svc.id),
            Some(json!({"tags": {"team": "payments"}}))
        )
        .await
        .0,
        204
    );
    assert_eq!(
        authorize(&s, &admin, ask("orders:PutOrder", ORDER)).await["decision"],
        "Allow"
    );

    // A boundary narrows what identity policies grant.
    let (status, body) = put(
        &s,
        &admin,
        "/v1/policies/OnlyReads",
        Some(json!({"Statement": {"Effect": "Allow", "Action": "orders:Get*", "Resource": "*"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        put(
            &s,
            &admin,
            &format!("/v1/principals/{}/boundary", svc.id),
            Some(json!({"policy": "OnlyReads"}))
        )
        .await
        .0,
        204
    );
    let d = authorize(&s, &admin, ask("orders:PutOrder", ORDER)).await;
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("Deny"), Some("boundary"))
    );
    assert_eq!(
        authorize(&s, &admin, ask("orders:GetOrder", ORDER)).await["decision"],
        "Allow"
    );
    assert_eq!(
        s.api(
            Method::DELETE,
            &format!("/v1/principals/{}/boundary", svc.id),
            &admin,
            None
        )
        .await
        .0,
        204
    );

    // A resource policy can grant on its own, or deny.
    let other = service_client(&s, &admin, "billing").await;
    let d = authorize(
        &s,
        &admin,
        json!({"principal": other.id, "action": "orders:GetOrder", "resource": ORDER}),
    )
    .await;
    assert_eq!(d["decision"], "Deny");
    let (status, body) = put(&s, &admin, "/v1/resource-policies/crn:capstan:orders:default:order/*", Some(json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "BillingReads", "Effect": "Allow", "Principal": {"Capstan": other.id}, "Action": "orders:GetOrder", "Resource": "*"},
        {"Sid": "NoRefunds", "Effect": "Deny", "Principal": "*", "Action": "orders:Refund*", "Resource": "*"}]}))).await;
    assert_eq!(status, 200, "{body}");
    let d = authorize(
        &s,
        &admin,
        json!({"principal": other.id, "action": "orders:GetOrder", "resource": ORDER}),
    )
    .await;
    assert_eq!(d["decision"], "Allow");
    assert_eq!(d["matched"][0]["sid"], "BillingReads");
    put(
        &s,
        &admin,
        "/v1/policies/Refunder",
        Some(json!({"Statement": {"Effect": "Allow", "Action": "orders:*", "Resource": "*"}})),
    )
    .await;
    put(
        &s,
        &admin,
        &format!("/v1/principals/{}/policies/Refunder", svc.id),
        None,
    )
    .await;
    let d = authorize(&s, &admin, ask("orders:RefundOrder", ORDER)).await;
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("Deny"), Some("explicit_deny"))
    );
    let (status, rp) = s
        .api(
            Method::GET,
            "/v1/resource-policies/crn:capstan:orders:default:order/*",
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (status, rp["Statement"][1]["Sid"].as_str()),
        (200, Some("NoRefunds"))
    );

    // Guardrails bound the whole tenant, administrators included.
    let (status, _) = put(
        &s,
        &admin,
        "/v1/guardrails/NoBilling",
        Some(json!({"Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "billing:*", "Resource": "*"}]})),
    )
    .await;
    assert_eq!(status, 200);
    let d = authorize(
        &s,
        &admin,
        ask("billing:Pay", "crn:capstan:billing:default:invoice/1"),
    )
    .await;
    assert_eq!(d["reason"], "explicit_deny");
    // A guardrail that allows only orders and policy actions shuts out even an admin's auth calls.
    let (status, _) = put(&s, &admin, "/v1/guardrails/NoBilling", Some(json!({"Statement": {"Effect": "Allow", "Action": ["orders:*", "policy:*"], "Resource": "*"}}))).await;
    assert_eq!(status, 200);
    let admin_id = s
        .auth()
        .verify_access_token(&admin)
        .await
        .unwrap()
        .principal;
    let d = authorize(&s, &admin, json!({"principal": admin_id, "action": "auth:ListClients", "resource": "crn:capstan:auth:default:clients/*"})).await;
    assert_eq!(d["reason"], "guardrail");
    assert_eq!(
        s.api(Method::DELETE, "/v1/guardrails/NoBilling", &admin, None)
            .await
            .0,
        204
    );

    // Token-based: principal, client and scopes come from the token.
    let (status, _) = s
        .api(
            Method::DELETE,
            &format!("/v1/principals/{}/policies/Refunder", svc.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 204);
    put(&s, &admin, "/v1/policies/ScopedWrites", Some(json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "orders:Write*", "Resource": "*",
        "Condition": {"ForAnyValue:StringEquals": {"capstan:TokenScopes": "orders:write"}}}}))).await;
    put(
        &s,
        &admin,
        &format!("/v1/principals/{}/policies/ScopedWrites", svc.id),
        None,
    )
    .await;
    let read_only = s
        .token(
            "default",
            &svc,
            &[("scope", "orders:read"), ("audience", "orders-api")],
        )
        .await;
    let read_write = s
        .token(
            "default",
            &svc,
            &[
                ("scope", "orders:read orders:write"),
                ("audience", "orders-api"),
            ],
        )
        .await;
    let tok = |t: &str| json!({"token": t, "action": "orders:WriteOrder", "resource": ORDER});
    assert_eq!(
        authorize(&s, &admin, tok(&read_only)).await["decision"],
        "Deny"
    );
    assert_eq!(
        authorize(&s, &admin, tok(&read_write)).await["decision"],
        "Allow"
    );

    // Batch: decisions in request order.
    let (status, b) = s
        .api(
            Method::POST,
            "/v1/authorize:batch",
            &admin,
            Some(json!({"requests": [
        ask("orders:GetOrder", ORDER), ask("billing:Pay", ORDER), tok(&read_write)]})),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    let ds: Vec<&str> = b["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["decision"].as_str().unwrap())
        .collect();
    assert_eq!(ds, ["Allow", "Deny", "Allow"]);
    s.shutdown().await;
}

async fn a_policy_change_on_one_server_is_enforced_by_another_within_a_second(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.public_url = Some("http://capstan.test".into());
    let a = ctx.server_with(settings.clone()).await;
    let b = ctx.server_with(settings).await;
    let (admin, _) = a.orders_client().await;
    let svc = service_client(&a, &admin, "orders").await;
    let ask = json!({"principal": svc.id, "action": "orders:GetOrder", "resource": ORDER});
    assert_eq!(
        authorize(&b, &admin, ask.clone()).await["decision"],
        "Deny",
        "B caches the tenant first"
    );
    put(
        &a,
        &admin,
        "/v1/policies/Reads",
        Some(json!({"Statement": {"Effect": "Allow", "Action": "orders:Get*", "Resource": "*"}})),
    )
    .await;
    put(
        &a,
        &admin,
        &format!("/v1/principals/{}/policies/Reads", svc.id),
        None,
    )
    .await;
    let start = Instant::now();
    loop {
        if authorize(&b, &admin, ask.clone()).await["decision"] == "Allow" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "B never saw the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    a.shutdown().await;
    b.shutdown().await;
}

async fn policy_api_refuses_bad_input_clearly(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin, _) = s.orders_client().await;
    type Case<'a> = (Method, &'a str, Option<Value>, u16);
    let cases: Vec<Case> = vec![
        (
            Method::PUT,
            "/v1/policies/bad%20name",
            Some(json!({"Statement": []})),
            400,
        ),
        (Method::PUT, "/v1/policies/Empty", None, 400),
        (Method::PUT, "/v1/groups/no%20spaces", None, 400),
        (Method::PUT, "/v1/groups/ghost/members/svc_abc", None, 404),
        (
            Method::PUT,
            "/v1/principals/not-a-principal/policies/AdministratorAccess",
            None,
            400,
        ),
        (
            Method::PUT,
            "/v1/principals/svc_abc/policies/NoSuchPolicy",
            None,
            404,
        ),
        (
            Method::DELETE,
            "/v1/principals/svc_abc/policies/AdministratorAccess",
            None,
            404,
        ),
        (
            Method::PUT,
            "/v1/principals/svc_abc/boundary",
            Some(json!({"policy": "NoSuchPolicy"})),
            404,
        ),
        (
            Method::PUT,
            "/v1/principals/svc_abc/boundary",
            Some(json!({"nope": 1})),
            400,
        ),
        (
            Method::PUT,
            "/v1/principals/svc_abc/tags",
            Some(json!({"tags": {"bad key!": "v"}})),
            400,
        ),
        (
            Method::PUT,
            "/v1/resource-policies/crn:capstan:orders:other-tenant:x",
            Some(
                json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "a:b", "Resource": "*"}}),
            ),
            400,
        ),
        (
            Method::PUT,
            "/v1/resource-policies/crn:capstan:orders:default:x",
            Some(json!({"Statement": {"Effect": "Allow", "Action": "a:b", "Resource": "*"}})),
            400,
        ),
        (Method::GET, "/v1/guardrails/none", None, 404),
        (Method::GET, "/v1/policies/X?version=abc", None, 400),
        (
            Method::POST,
            "/v1/authorize",
            Some(json!({"action": "orders:Get", "resource": ORDER})),
            400,
        ),
        (
            Method::POST,
            "/v1/authorize",
            Some(
                json!({"principal": "svc_a", "token": "x", "action": "orders:Get", "resource": ORDER}),
            ),
            400,
        ),
        (
            Method::POST,
            "/v1/authorize",
            Some(json!({"token": "garbage", "action": "orders:Get", "resource": ORDER})),
            400,
        ),
        (
            Method::POST,
            "/v1/authorize",
            Some(
                json!({"principal": "svc_a", "action": "orders:Get", "resource": ORDER, "context": {"capstan:principal": "svc_admin"}}),
            ),
            400,
        ),
        (
            Method::POST,
            "/v1/authorize",
            Some(json!({"principal": "svc_a", "action": "noservice", "resource": ORDER})),
            400,
        ),
        (
            Method::POST,
            "/v1/authorize:batch",
            Some(json!({"requests": []})),
            400,
        ),
        (Method::GET, "/v1/decisions?limit=0", None, 400),
        (Method::GET, "/v1/decisions?decision=Maybe", None, 400),
    ];
    for (m, path, body, want) in cases {
        let (status, v) = s.api(m.clone(), path, &admin, body).await;
        assert_eq!(status, want, "{m} {path}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{m} {path}: {v}"
        );
    }
    s.shutdown().await;
}

async fn simulate_shows_what_changes_would_do_without_doing_it(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin, _) = s.orders_client().await;
    let svc = service_client(&s, &admin, "orders").await;
    let get = json!({"principal": svc.id, "action": "orders:GetOrder", "resource": ORDER});
    let pay = json!({"principal": svc.id, "action": "billing:Pay", "resource": ORDER});
    let changes = json!([
        {"op": "put_policy", "name": "Reads", "document": {"Statement": {"Effect": "Allow", "Action": "orders:Get*", "Resource": "*"}}},
        {"op": "attach", "policy": "Reads", "principal": svc.id}]);
    let (status, r) = s
        .api(
            Method::POST,
            "/v1/simulate",
            &admin,
            Some(json!({"changes": changes, "requests": [pay, get]})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["changed"], 1);
    let first = &r["results"][0];
    assert_eq!(
        (first["action"].as_str(), first["changed"].as_bool()),
        (Some("orders:GetOrder"), Some(true)),
        "changed first"
    );
    assert_eq!(first["before"]["decision"], "Deny");
    assert_eq!(first["after"]["decision"], "Allow");
    assert_eq!(first["after"]["matched"][0]["policy"], "Reads");
    assert_eq!(r["results"][1]["changed"], false);
    // Nothing was stored or granted.
    assert_eq!(
        s.api(Method::GET, "/v1/policies/Reads", &admin, None)
            .await
            .0,
        404
    );
    assert_eq!(authorize(&s, &admin, get.clone()).await["decision"], "Deny");

    // Replay the recorded decisions against a detach: the admin's own calls would be denied.
    let admin_id = s
        .auth()
        .verify_access_token(&admin)
        .await
        .unwrap()
        .principal;
    let (status, r) = s.api(Method::POST, "/v1/simulate", &admin, Some(json!({
        "changes": [{"op": "detach", "policy": "AdministratorAccess", "principal": admin_id}], "replay": 20}))).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["changed"].as_u64().unwrap() >= 1, "{r}");
    let first = &r["results"][0];
    assert_eq!(
        (
            first["before"]["decision"].as_str(),
            first["after"]["decision"].as_str()
        ),
        (Some("Allow"), Some("Deny"))
    );
    assert_eq!(first["principal"], admin_id.as_str());

    for bad in [
        json!({"changes": [], "requests": [get], "replay": 3}),
        json!({"changes": []}),
        json!({"changes": [{"op": "attach", "policy": "Nope", "principal": svc.id}], "requests": [get]}),
        json!({"changes": [{"op": "explode"}], "requests": [get]}),
        json!({"changes": [{"op": "put_policy", "name": "X", "document": {"Statement": {"Effect": "Maybe"}}}], "requests": [get]}),
    ] {
        let (status, v) = s
            .api(Method::POST, "/v1/simulate", &admin, Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
    s.shutdown().await;
}

async fn a_recreated_policy_is_never_served_from_a_stale_compilation(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.public_url = Some("http://capstan.test".into());
    let a = ctx.server_with(settings.clone()).await;
    let b = ctx.server_with(settings).await;
    let (admin, _) = a.orders_client().await;
    let svc = service_client(&a, &admin, "orders").await;
    let ask = json!({"principal": svc.id, "action": "orders:GetOrder", "resource": ORDER});
    let attach = format!("/v1/principals/{}/policies/Flip", svc.id);
    put(
        &a,
        &admin,
        "/v1/policies/Flip",
        Some(json!({"Statement": {"Effect": "Allow", "Action": "orders:*", "Resource": "*"}})),
    )
    .await;
    put(&a, &admin, &attach, None).await;
    assert_eq!(
        authorize(&a, &admin, ask.clone()).await["decision"],
        "Allow"
    );
    // B compiles version 1 (the Allow) too.
    let start = Instant::now();
    while authorize(&b, &admin, ask.clone()).await["decision"] != "Allow" {
        assert!(start.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Delete and recreate: version 1 again, now a Deny.
    assert_eq!(a.api(Method::DELETE, &attach, &admin, None).await.0, 204);
    assert_eq!(
        a.api(Method::DELETE, "/v1/policies/Flip", &admin, None)
            .await
            .0,
        204
    );
    let (status, v) = put(&a, &admin, "/v1/policies/Flip", Some(json!({"Statement": {"Sid": "Now", "Effect": "Deny", "Action": "orders:*", "Resource": "*"}}))).await;
    assert_eq!((status, v["version"].as_i64()), (200, Some(1)));
    put(&a, &admin, &attach, None).await;
    let d = authorize(&a, &admin, ask.clone()).await;
    assert_eq!(
        (d["reason"].as_str(), d["matched"][0]["sid"].as_str()),
        (Some("explicit_deny"), Some("Now"))
    );
    let start = Instant::now();
    loop {
        let d = authorize(&b, &admin, ask.clone()).await;
        if d["reason"] == "explicit_deny" {
            assert_eq!(d["matched"][0]["sid"], "Now");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "B still serves the old compilation: {d}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}
