//! The `/v1` admin API and the operations endpoints.

use reqwest::Method;
use serde_json::{json, Value};

use capstan_tests::{Creds, Ctx};

capstan_tests::on_both_backends!(
    malformed_requests_get_4xx_with_a_message_never_5xx,
    only_admins_of_the_tenant_may_call_the_admin_api,
    clients_crud_and_token_ttl_override,
    operations_endpoints,
);

async fn malformed_requests_get_4xx_with_a_message_never_5xx(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin, orders) = s.orders_client().await;
    let big = "x".repeat(70 * 1024);
    // (method, path, bearer token, body, expected status)
    type Case<'a> = (Method, String, Option<&'a str>, Option<String>, u16);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/clients".into(),
            Some(&admin),
            Some("{not json".into()),
            400,
        ),
        (
            Method::POST,
            "/v1/clients".into(),
            Some(&admin),
            Some("[]".into()),
            400,
        ),
        (
            Method::POST,
            "/v1/clients".into(),
            Some(&admin),
            Some(r#"{"name":"x","audiences":["a"],"bogus":1}"#.into()),
            400,
        ),
        (
            Method::POST,
            "/v1/clients".into(),
            Some(&admin),
            Some(r#"{"name":"","audiences":["a"]}"#.into()),
            400,
        ),
        (
            Method::POST,
            "/v1/clients".into(),
            Some(&admin),
            Some(r#"{"name":"x","audiences":[]}"#.into()),
            400,
        ),
        (
            Method::POST,
            "/v1/clients".into(),
            Some(&admin),
            Some(r#"{"name":"x","audiences":["a"],"scopes":["has space"]}"#.into()),
            400,
        ),
        (
            Method::POST,
            "/v1/clients".into(),
            Some(&admin),
            Some(r#"{"name":"x","audiences":["a"],"token_ttl_seconds":1}"#.into()),
            400,
        ),
        (
            Method::POST,
            "/v1/clients".into(),
            Some(&admin),
            Some(r#"{"name":"x","audiences":["a"],"token_ttl_seconds":"ten"}"#.into()),
            400,
        ),
        (
            Method::POST,
            "/v1/clients".into(),
            Some(&admin),
            Some(format!(r#"{{"name":"{big}","audiences":["a"]}}"#)),
            413,
        ),
        (
            Method::GET,
            "/v1/clients/not-an-id".into(),
            Some(&admin),
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/clients/svc_doesnotexist".into(),
            Some(&admin),
            None,
            404,
        ),
        (
            Method::DELETE,
            "/v1/clients/svc_doesnotexist".into(),
            Some(&admin),
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/clients/svc_doesnotexist/secret".into(),
            Some(&admin),
            None,
            404,
        ),
        (
            Method::POST,
            format!("/v1/clients/{}/secret", orders.id),
            Some(&admin),
            Some(r#"{"grace_period_seconds":-1}"#.into()),
            400,
        ),
        (
            Method::POST,
            "/v1/keys/rotate".into(),
            Some(&admin),
            Some(r#"{"alg":"HS256"}"#.into()),
            400,
        ),
        (
            Method::POST,
            "/v1/keys/rotate".into(),
            Some(&admin),
            Some(r#"{"publish_delay_seconds":-5}"#.into()),
            400,
        ),
        (
            Method::POST,
            "/v1/tenants".into(),
            Some(&admin),
            Some(r#"{"id":"Bad_Tenant"}"#.into()),
            400,
        ),
        (
            Method::POST,
            "/v1/tenants".into(),
            Some(&admin),
            Some(r#"{"id":"default"}"#.into()),
            409,
        ),
        (
            Method::POST,
            "/v1/tenants".into(),
            Some(&admin),
            Some(r#"{"id":"x","signing_alg":"none"}"#.into()),
            400,
        ),
        (Method::GET, "/v1/clients".into(), None, None, 401),
        (
            Method::GET,
            "/v1/clients".into(),
            Some("garbage"),
            None,
            401,
        ),
        (Method::PUT, "/v1/clients".into(), Some(&admin), None, 405),
        (
            Method::GET,
            "/v1/nothing-here".into(),
            Some(&admin),
            None,
            404,
        ),
        (Method::GET, "/t/NOPE/oauth2/jwks".into(), None, None, 404),
        (
            Method::GET,
            "/t/nope/.well-known/openid-configuration".into(),
            None,
            None,
            404,
        ),
        (
            Method::POST,
            "/t/default/oauth2/introspect".into(),
            None,
            Some("token=x".into()),
            401,
        ),
    ];
    for (method, path, bearer, body, want) in cases {
        let mut req = s.http.request(method.clone(), s.url(&path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(b) = body {
            let ct = if path.starts_with("/t/") {
                "application/x-www-form-urlencoded"
            } else {
                "application/json"
            };
            req = req.header("content-type", ct).body(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{method} {path}: {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: body is not JSON: {text:?}"));
        let msg = v.get("message").or_else(|| v.get("error_description"));
        assert!(
            msg.and_then(Value::as_str).is_some_and(|m| !m.is_empty()),
            "{method} {path}: no message in {v}"
        );
    }
    // Nothing was lost: the server still works and the valid client is intact.
    s.token("default", &orders, &[]).await;
    s.shutdown().await;
}

async fn only_admins_of_the_tenant_may_call_the_admin_api(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin, _) = s.orders_client().await;
    // A service client that holds a token for the Capstan API, but has no policy.
    let user = s
        .create_client(&admin, json!({"name": "ci", "audiences": ["capstan"]}))
        .await;
    let token = s.token("default", &user, &[]).await;
    let (status, body) = s
        .api(
            Method::POST,
            "/v1/clients",
            &token,
            Some(json!({"name": "x", "audiences": ["a"]})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    assert_eq!(body["action"], "auth:CreateClient");
    assert_eq!(body["reason"], "implicit_deny");
    assert!(body["resource"]
        .as_str()
        .unwrap()
        .starts_with("crn:capstan:auth:default:"));
    for (m, p) in [
        (Method::GET, "/v1/clients"),
        (Method::GET, "/v1/tenants"),
        (Method::POST, "/v1/keys/rotate"),
    ] {
        let (status, _) = s.api(m, p, &token, None).await;
        assert_eq!(status, 403, "{p}");
    }
    // With the permission the same call succeeds.
    let (status, _) = s
        .api(
            Method::POST,
            "/v1/clients",
            &admin,
            Some(json!({"name": "x", "audiences": ["a"]})),
        )
        .await;
    assert_eq!(status, 201);

    // Another tenant's admin sees only its own tenant and cannot manage tenants.
    let (status, created) = s
        .api(
            Method::POST,
            "/v1/tenants",
            &admin,
            Some(json!({"id": "team-b"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["tenant"]["issuer"], s.url("/t/team-b").as_str());
    let b = Creds::from_json(&created["admin_client"]);
    let bt = s.token("team-b", &b, &[]).await;
    let (status, list) = s.api(Method::GET, "/v1/clients", &bt, None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b.id.as_str()]);
    let (status, _) = s
        .api(Method::GET, &format!("/v1/clients/{}", user.id), &bt, None)
        .await;
    assert_eq!(status, 404, "another tenant's client is not visible");
    let (status, body) = s
        .api(
            Method::POST,
            "/v1/tenants",
            &bt,
            Some(json!({"id": "team-c"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["reason"], "other_tenant");
    let (status, tenants) = s.api(Method::GET, "/v1/tenants", &admin, None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["default", "team-b"]);
    s.shutdown().await;
}

async fn clients_crud_and_token_ttl_override(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin, _) = s.orders_client().await;
    let c = s
        .create_client(&admin, json!({"name": "short", "scopes": ["a", "a", "b"], "audiences": ["api"], "token_ttl_seconds": 120}))
        .await;
    assert!(c.id.starts_with("svc_") && c.secret.starts_with("cps_"));
    let (status, got) = s
        .api(Method::GET, &format!("/v1/clients/{}", c.id), &admin, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["name"], "short");
    assert_eq!(got["scopes"], json!(["a", "b"]));
    assert_eq!(got["token_ttl_seconds"], 120);
    assert!(got.get("client_secret").is_none() && got.get("secret_hash").is_none());
    let r = s
        .oauth(
            "default",
            "token",
            &c,
            &[("grant_type", "client_credentials")],
        )
        .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["expires_in"], 120);
    let (status, list) = s.api(Method::GET, "/v1/clients", &admin, None).await;
    assert_eq!(status, 200);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c.get("client_secret").is_none()));
    assert_eq!(list.as_array().unwrap().len(), 3);
    s.shutdown().await;
}

async fn operations_endpoints(ctx: &Ctx) {
    let s = ctx.server().await;
    let (_, orders) = s.orders_client().await;
    s.token("default", &orders, &[]).await;
    let get = |p: &str| s.http.get(s.url(p)).send();
    let r = get("/healthz").await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(text.contains("capstan_http_requests_total{route=\"/t/{tenant}/oauth2/token\",method=\"POST\",status=\"200\"}"), "{text}");
    assert!(text.contains(
        "capstan_http_request_duration_seconds_bucket{route=\"/t/{tenant}/oauth2/token\""
    ));
    assert!(text.contains("capstan_tokens_issued_total 2"), "{text}");
    let doc: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/t/{tenant}/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server/t/{tenant}",
        "/t/{tenant}/oauth2/jwks",
        "/t/{tenant}/oauth2/token",
        "/t/{tenant}/oauth2/introspect",
        "/t/{tenant}/oauth2/revoke",
        "/v1/tenants",
        "/v1/clients",
        "/v1/clients/{id}",
        "/v1/clients/{id}/secret",
        "/v1/keys/rotate",
        "/v1/keys",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    assert!(
        paths["/v1/clients"].get("post").is_some() && paths["/v1/clients"].get("get").is_some()
    );
    assert!(paths["/v1/clients/{id}"].get("delete").is_some());
    // An unmigrated database is not ready.
    s.shutdown().await;
}
