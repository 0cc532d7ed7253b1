//! The policy service over HTTP: Capstan guarding itself, the policy API and its input checks
//! (authorization itself is in `authorization`).

use reqwest::Method;
use serde_json::{json, Value};

use capstan_tests::{Creds, Ctx, TestServer};

capstan_tests::on_both_backends!(
    guarded_calls_are_denied_logged_and_allowed_with_the_permission,
    managed_policies_keep_five_versions_and_validate,
    policy_api_refuses_bad_input_clearly,
);

pub(crate) const ORDER: &str = "crn:capstan:orders:default:order/42";

pub(crate) async fn service_client(s: &TestServer, admin: &str, name: &str) -> Creds {
    s.create_client(admin, json!({"name": name, "scopes": ["orders:read", "orders:write"], "audiences": ["capstan", "orders-api"]}))
        .await
}

pub(crate) async fn put(
    s: &TestServer,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
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
        (Method::GET, "/v1/decisions?trace_id=not-a-trace", None, 400),
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
