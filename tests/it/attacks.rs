//! The holes found by attacking the issuer and the policy engine (issue 7), each as a test that
//! failed before its fix.

use reqwest::Method;
use serde_json::{json, Value};

use capstan_tests::{Creds, Ctx, TestServer};

use crate::policy::{put, service_client};

capstan_tests::on_both_backends!(
    simulate_needs_the_permissions_of_what_it_does,
    authorize_refuses_resources_of_another_tenant,
    revoking_another_clients_token_is_decided_by_the_policy_engine,
    small_mistakes_get_clear_json_answers,
    token_forms_are_parsed_in_bounded_time,
    far_future_dates_are_invalid_not_wrapped,
    delegated_administration_is_scoped_by_policy_name_and_boundary,
    validation_warns_about_condition_keys_nothing_fills,
    stored_policies_that_no_longer_compile_deny_what_they_constrain,
    control_characters_are_refused_and_cannot_erase_the_audit_log,
    caches_that_requests_grow_are_bounded,
    an_emergency_rotation_supersedes_and_a_withdrawn_key_stops_verifying,
    a_client_sending_partial_headers_is_cut_off,
    what_a_decision_reads_is_bounded,
);

/// A service client whose only policy is `document`, and an API token of it.
async fn with_only(s: &TestServer, admin: &str, name: &str, document: Value) -> (Creds, String) {
    let c = service_client(s, admin, name).await;
    let (status, body) = put(
        s,
        admin,
        &format!("/v1/policies/{name}Only"),
        Some(document),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put(
        s,
        admin,
        &format!("/v1/principals/{}/policies/{name}Only", c.id),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let token = s.token("default", &c, &[("audience", "capstan")]).await;
    (c, token)
}

fn allow(actions: &[&str], resource: &str) -> Value {
    json!({"Version": "2012-10-17",
           "Statement": {"Effect": "Allow", "Action": actions, "Resource": resource}})
}

/// 7.2: `replay` reads the decision log and `requests` decides like `/v1/authorize`, so each
/// needs that permission besides `policy:Simulate`.
async fn simulate_needs_the_permissions_of_what_it_does(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let admin_token = s.token("default", &admin, &[]).await;
    let (_, sim) = with_only(
        &s,
        &admin_token,
        "Sim",
        allow(
            &["policy:Simulate"],
            "crn:capstan:policy:default:simulation",
        ),
    )
    .await;
    let replay = json!({"changes": [], "replay": 5});
    let requests = json!({"changes": [], "requests": [{"principal": admin.id,
        "action": "auth:ListClients", "resource": "crn:capstan:auth:default:clients/*"}]});
    let (status, body) = s
        .api(Method::POST, "/v1/simulate", &sim, Some(replay.clone()))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["action"], "policy:ListDecisions");
    let (status, body) = s
        .api(Method::POST, "/v1/simulate", &sim, Some(requests.clone()))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["action"], "policy:Authorize");

    let (_, full) = with_only(
        &s,
        &admin_token,
        "SimFull",
        allow(
            &[
                "policy:Simulate",
                "policy:Authorize",
                "policy:ListDecisions",
            ],
            "crn:capstan:policy:default:*",
        ),
    )
    .await;
    for body in [replay, requests] {
        let (status, answer) = s.api(Method::POST, "/v1/simulate", &full, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
    }
    s.shutdown().await;
}

/// 7.3: an administrator of tenant t2 asking `/v1/authorize` about a resource of `default` (or
/// of a wildcard tenant) gets Deny `other_tenant`, as the guard path answers.
async fn authorize_refuses_resources_of_another_tenant(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let admin_token = s.token("default", &admin, &[]).await;
    let (status, created) = s
        .api(
            Method::POST,
            "/v1/tenants",
            &admin_token,
            Some(json!({"id": "t2"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let t2 = Creds::from_json(&created["admin_client"]);
    let t2_token = s.token("t2", &t2, &[]).await;
    let ask = |resource: &str| json!({"principal": t2.id, "action": "auth:ListClients", "resource": resource});
    for resource in [
        "crn:capstan:auth:default:clients/*",
        "crn:capstan:auth:*:clients/*",
        "crn:capstan:auth:t2",
    ] {
        let (status, d) = s
            .api(
                Method::POST,
                "/v1/authorize",
                &t2_token,
                Some(ask(resource)),
            )
            .await;
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["decision"], "Deny", "{resource}: {d}");
        assert_eq!(d["reason"], "other_tenant", "{resource}: {d}");
    }
    let (_, d) = s
        .api(
            Method::POST,
            "/v1/authorize",
            &t2_token,
            Some(ask("crn:capstan:auth:t2:clients/*")),
        )
        .await;
    assert_eq!(d["decision"], "Allow", "{d}");
    s.shutdown().await;
}

/// 7.4: revoking another client's token is `auth:RevokeToken`, decided by the policy engine like
/// every privileged act; the admin flag alone no longer grants it.
async fn revoking_another_clients_token_is_decided_by_the_policy_engine(ctx: &Ctx) {
    let s = ctx.server().await;
    let root = s.admin().await;
    let root_token = s.token("default", &root, &[]).await;
    let orders = service_client(&s, &root_token, "orders").await;
    let revoke = |who: Creds, token: String| {
        let s = &s;
        async move {
            s.oauth("default", "revoke", &who, &[("token", &token)])
                .await
                .status()
                .as_u16()
        }
    };
    let active = |token: String| {
        let (s, root) = (&s, root.clone());
        async move { s.introspect("default", &root, &token).await["active"] == true }
    };

    // An administrator (AdministratorAccess) may.
    let t = s.token("default", &orders, &[]).await;
    assert_eq!(revoke(root.clone(), t.clone()).await, 200);
    assert!(!active(t).await);

    // An admin client whose AdministratorAccess was detached may not: no second admin model.
    let other_admin = s.admin().await;
    let (status, body) = s
        .api(
            Method::DELETE,
            &format!(
                "/v1/principals/{}/policies/AdministratorAccess",
                other_admin.id
            ),
            &root_token,
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let t = s.token("default", &orders, &[]).await;
    assert_eq!(revoke(other_admin, t.clone()).await, 400);
    assert!(active(t).await);

    // A plain client granted auth:RevokeToken on orders' tokens may, and only on those.
    let grant = allow(
        &["auth:RevokeToken"],
        &format!("crn:capstan:auth:default:clients/{}", orders.id),
    );
    let (revoker, _) = with_only(&s, &root_token, "Revoker", grant).await;
    let t = s.token("default", &orders, &[]).await;
    assert_eq!(revoke(revoker.clone(), t.clone()).await, 200);
    assert!(!active(t).await);
    let root_t = s.token("default", &root, &[]).await;
    assert_eq!(revoke(revoker, root_t.clone()).await, 400);
    assert!(active(root_t).await);
    s.shutdown().await;
}

/// 7.17: `[]` is not a body; 409 messages show ids, not Rust `Debug`; a path parameter that is
/// not UTF-8 gets a JSON 400 like every other error.
async fn small_mistakes_get_clear_json_answers(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let token = s.token("default", &admin, &[]).await;
    let (status, body) = s
        .api(Method::POST, "/v1/keys/rotate", &token, Some(json!([])))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("JSON object"),
        "{body}"
    );

    let t2 = json!({"id": "t2"});
    let (status, _) = s
        .api(Method::POST, "/v1/tenants", &token, Some(t2.clone()))
        .await;
    assert_eq!(status, 201);
    let (status, body) = s.api(Method::POST, "/v1/tenants", &token, Some(t2)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["message"], "tenant \"t2\" already exists");

    let r = s
        .http
        .get(s.url("/v1/clients/%FF%FE"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "bad_request", "{body}");
    s.shutdown().await;
}

/// 7.11: repeated-parameter detection is a set lookup, and the parameter count is capped, so
/// an unauthenticated token request costs bounded work.
async fn token_forms_are_parsed_in_bounded_time(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let many: Vec<(String, String)> = (0..2_000).map(|i| (format!("p{i}"), "x".into())).collect();
    let r = s
        .http
        .post(s.url("/t/default/oauth2/token"))
        .basic_auth(&admin.id, Some(&admin.secret))
        .form(&many)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("at most 32"),
        "{body}"
    );
    // Repeats are still refused.
    let r = s
        .oauth(
            "default",
            "token",
            &admin,
            &[("grant_type", "client_credentials"), ("grant_type", "x")],
        )
        .await;
    assert_eq!(r.status(), 400);
    s.shutdown().await;
}

/// 7.7: a year past 9999 wrapped around (584555988-01-01 read as 1938), so `DateGreaterThan`
/// a far-future date allowed today. Such a literal is now an invalid document.
async fn far_future_dates_are_invalid_not_wrapped(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let token = s.token("default", &admin, &[]).await;
    let doc = json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow",
        "Action": "orders:Get*", "Resource": "*",
        "Condition": {"DateGreaterThan": {"capstan:CurrentTime": "584555988-01-01T00:00:00Z"}}}});
    let (status, body) = put(&s, &token, "/v1/policies/Wrapped", Some(doc)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_policy", "{body}");
    assert!(
        body["errors"][0]["path"]
            .as_str()
            .unwrap()
            .contains("DateGreaterThan"),
        "{body}"
    );
    s.shutdown().await;
}

/// 7.1: an attach right named no policy, so any attach right was full administration. The
/// guard context now carries `policy:PolicyName` (attach, detach, put, delete) and
/// `policy:PermissionsBoundary` (boundaries, and creating a client with one), so delegated
/// administration can be written as in the README.
async fn delegated_administration_is_scoped_by_policy_name_and_boundary(ctx: &Ctx) {
    let s = ctx.server().await;
    let root = s.admin().await;
    let root_token = s.token("default", &root, &[]).await;
    let docs = [
        (
            "OrdersRead",
            allow(&["orders:Get*"], "crn:capstan:orders:default:*"),
        ),
        ("DelegatedBoundary", allow(&["orders:*"], "*")),
        (
            "DelegatedAdmin",
            json!({"Version": "2012-10-17", "Statement": [
                {"Sid": "AttachOnlyOrdersPolicies", "Effect": "Allow",
                 "Action": ["policy:AttachPrincipalPolicy", "policy:DetachPrincipalPolicy"],
                 "Resource": "crn:capstan:policy:default:principal/*",
                 "Condition": {"StringLike": {"policy:PolicyName": "Orders*"}}},
                {"Sid": "CreateOnlyBounded", "Effect": "Allow", "Action": "auth:CreateClient",
                 "Resource": "crn:capstan:auth:default:clients/*",
                 "Condition": {"StringEquals": {"policy:PermissionsBoundary": "DelegatedBoundary"}}}
            ]}),
        ),
    ];
    for (name, doc) in docs {
        let (status, body) = put(&s, &root_token, &format!("/v1/policies/{name}"), Some(doc)).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    let delegate = service_client(&s, &root_token, "delegate").await;
    let (status, _) = put(
        &s,
        &root_token,
        &format!("/v1/principals/{}/policies/DelegatedAdmin", delegate.id),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let d = s
        .token("default", &delegate, &[("audience", "capstan")])
        .await;
    let worker = service_client(&s, &root_token, "worker").await;

    // May not make itself (or anyone) an administrator…
    for (target, policy) in [
        (&delegate.id, "AdministratorAccess"),
        (&worker.id, "PolicyFullAccess"),
    ] {
        let (status, body) = put(
            &s,
            &d,
            &format!("/v1/principals/{target}/policies/{policy}"),
            None,
        )
        .await;
        assert_eq!(status, 403, "{policy}: {body}");
        assert_eq!(body["action"], "policy:AttachPrincipalPolicy");
    }
    // …but may hand out the orders policies.
    let (status, body) = put(
        &s,
        &d,
        &format!("/v1/principals/{}/policies/OrdersRead", worker.id),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");

    // Creates clients only with the boundary it was given.
    let new = |boundary: Option<&str>| {
        let mut b = json!({"name": "made-by-delegate", "audiences": ["orders-api"]});
        if let Some(x) = boundary {
            b["permissions_boundary"] = json!(x);
        }
        b
    };
    for boundary in [None, Some("AdministratorAccess")] {
        let (status, body) = s
            .api(Method::POST, "/v1/clients", &d, Some(new(boundary)))
            .await;
        assert_eq!(status, 403, "{boundary:?}: {body}");
    }
    let (status, made) = s
        .api(
            Method::POST,
            "/v1/clients",
            &d,
            Some(new(Some("DelegatedBoundary"))),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    // The boundary holds whatever is attached to the new client later.
    let made_id = made["client_id"].as_str().unwrap();
    let (status, _) = put(
        &s,
        &root_token,
        &format!("/v1/principals/{made_id}/policies/AdministratorAccess"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (_, decision) = s
        .api(
            Method::POST,
            "/v1/authorize",
            &root_token,
            Some(json!({"principal": made_id, "action": "auth:ListClients",
                        "resource": "crn:capstan:auth:default:clients/*"})),
        )
        .await;
    assert_eq!(decision["decision"], "Deny", "{decision}");
    assert_eq!(decision["reason"], "boundary", "{decision}");
    // An unknown boundary is a 400, and leaves no client behind.
    let (status, body) = s
        .api(
            Method::POST,
            "/v1/clients",
            &root_token,
            Some(new(Some("Nope"))),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (_, clients) = s.api(Method::GET, "/v1/clients", &root_token, None).await;
    assert_eq!(
        clients
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "made-by-delegate")
            .count(),
        1
    );
    s.shutdown().await;
}

/// 7.1: `policies:validate` warns on condition keys that Capstan never fills and that no caller
/// could supply (a `capstan:` key it does not set, or a key without a service prefix).
async fn validation_warns_about_condition_keys_nothing_fills(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let token = s.token("default", &admin, &[]).await;
    let doc = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Action": "orders:Get*", "Resource": "*",
        "Condition": {"StringEquals": {
            "capstan:PrincipleTag/team": "a",
            "team": "a",
            "capstan:PrincipalTag/team": "a",
            "orders:Region": "eu",
            "policy:PolicyName": "x"}}}]});
    let (status, v) = s
        .api(Method::POST, "/v1/policies:validate", &token, Some(doc))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["valid"], true);
    let mut paths: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "$.Statement[0].Condition.StringEquals.capstan:PrincipleTag/team",
            "$.Statement[0].Condition.StringEquals.team",
        ]
    );
    s.shutdown().await;
}

/// 7.5: a stored boundary or guardrail that no longer compiles was skipped, which widened
/// access. It now denies everything it could have constrained, and is counted in /metrics.
async fn stored_policies_that_no_longer_compile_deny_what_they_constrain(ctx: &Ctx) {
    use capstan_db::on_pool;

    let mut settings = ctx.settings();
    settings.public_url = Some("http://capstan.test".into());
    let a = ctx.server_with(settings.clone()).await;
    let root = a.admin().await;
    let root_token = a.token("default", &root, &[]).await;
    let p = service_client(&a, &root_token, "bounded").await;
    let (status, _) = put(
        &a,
        &root_token,
        "/v1/policies/Bounded",
        Some(allow(&["orders:*"], "*")),
    )
    .await;
    assert_eq!(status, 200);
    for path in [format!(
        "/v1/principals/{}/policies/AdministratorAccess",
        p.id
    )] {
        assert_eq!(put(&a, &root_token, &path, None).await.0, 204);
    }
    let (status, _) = put(
        &a,
        &root_token,
        &format!("/v1/principals/{}/boundary", p.id),
        Some(json!({"policy": "Bounded"})),
    )
    .await;
    assert_eq!(status, 204);
    let corrupt = |table: &'static str, column: &'static str, name: &'static str| {
        let db = ctx.db();
        async move {
            let sql = format!(
                "UPDATE {table} SET document = '{{\"Version\":\"2012-10-17\",\"Statement\":{{\"Effect\":\"Maybe\",\"Action\":\"*\",\"Resource\":\"*\"}}}}' WHERE {column} = '{name}'"
            );
            on_pool!(&db, |pool| sqlx::query(&sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()))
            .unwrap()
        }
    };
    assert_eq!(corrupt("policy_versions", "name", "Bounded").await, 1);

    // A fresh server compiles what is stored: the broken boundary denies everything.
    let b = ctx.server_with(settings.clone()).await;
    let ask = |action: &str| {
        json!({"principal": p.id, "action": action,
        "resource": "crn:capstan:auth:default:clients/*"})
    };
    for action in ["auth:ListClients", "orders:GetOrder"] {
        let (_, d) = b
            .api(
                Method::POST,
                "/v1/authorize",
                &root_token,
                Some(ask(action)),
            )
            .await;
        assert_eq!(d["decision"], "Deny", "{action}: {d}");
        assert_eq!(d["matched"][0]["sid"], "DoesNotCompile", "{d}");
    }
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("capstan_policy_compile_failures_total 1"),
        "{metrics}"
    );

    // A broken guardrail denies the whole tenant, its administrators included.
    let (status, body) = put(
        &a,
        &root_token,
        "/v1/guardrails/Everything",
        Some(allow(&["*"], "*")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(corrupt("policy_guardrails", "name", "Everything").await, 1);
    let c = ctx.server_with(settings).await;
    let (status, body) = c.api(Method::GET, "/v1/clients", &root_token, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "explicit_deny", "{body}");
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

/// 7.10: a NUL in a guarded path reached the decision log, and on Postgres failed the whole
/// batch, erasing other principals' records. Names, paths and logged fields now refuse control
/// characters with a 400, and a batch that still fails is written row by row.
async fn control_characters_are_refused_and_cannot_erase_the_audit_log(ctx: &Ctx) {
    use capstan_core::ids::TenantId;
    use capstan_policy::service::Subject;

    let s = ctx.server().await;
    let admin = s.admin().await;
    let token = s.token("default", &admin, &[]).await;
    let nobody = service_client(&s, &token, "nobody").await;
    let nobody_token = s
        .token("default", &nobody, &[("audience", "capstan")])
        .await;
    let cases = [
        (Method::PUT, "/v1/groups/a%00b", None, &nobody_token),
        (
            Method::PUT,
            "/v1/policies/P%0A",
            Some(allow(&["a:b"], "*")),
            &token,
        ),
        (
            Method::POST,
            "/v1/authorize",
            Some(
                json!({"principal": admin.id, "action": "a:b", "resource": "crn:capstan:x:default:a\u{0}"}),
            ),
            &token,
        ),
        (
            Method::POST,
            "/v1/clients",
            Some(json!({"name": "evil\u{0}", "audiences": ["a"]})),
            &token,
        ),
        (
            Method::PUT,
            &format!("/v1/principals/{}/tags", admin.id),
            Some(json!({"tags": {"team": "a\u{0}b"}})),
            &token,
        ),
    ];
    for (method, path, body, bearer) in cases {
        let (status, answer) = s.api(method.clone(), path, bearer, body).await;
        assert_eq!(status, 400, "{method} {path}: {answer}");
        assert_eq!(answer["error"], "bad_request", "{method} {path}: {answer}");
    }

    // A record the database refuses (NUL, on Postgres) costs only itself.
    let policy = &s.server.app.policy;
    let tenant = TenantId::default_tenant();
    let who = Subject {
        principal: admin.id.clone(),
        ..Default::default()
    };
    policy
        .decide(
            &tenant,
            &who,
            "orders:Bad",
            "crn:capstan:orders:default:a\u{0}",
            None,
        )
        .await
        .unwrap();
    policy
        .decide(
            &tenant,
            &who,
            "orders:Kept",
            "crn:capstan:orders:default:a",
            None,
        )
        .await
        .unwrap();
    policy.flush_decisions().await;
    let (status, log) = s
        .api(Method::GET, "/v1/decisions?limit=1000", &token, None)
        .await;
    assert_eq!(status, 200, "{log}");
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|d| d["action"] == "orders:Kept"),
        "{log}"
    );
    s.shutdown().await;
}

/// 7.9: every unknown client id at the token endpoint was cached as a miss forever, and every
/// made-up principal in /v1/authorize got an index of its own. Both are bounded now.
async fn caches_that_requests_grow_are_bounded(ctx: &Ctx) {
    use capstan_auth::tokens::ClientCredentials;
    use capstan_core::ids::{PrincipalId, PrincipalKind, TenantId};
    use capstan_core::rng::SystemRng;
    use capstan_policy::service::Subject;

    let s = ctx.server().await;
    let tenant = TenantId::default_tenant();
    let rng = SystemRng::new();
    let auth = s.auth();
    for _ in 0..10_500 {
        let creds = ClientCredentials {
            client_id: PrincipalId::generate(PrincipalKind::Service, &rng)
                .unwrap()
                .to_string(),
            client_secret: "x".into(),
        };
        assert!(auth.authenticate_client(&tenant, &creds).await.is_err());
    }
    let (_, misses) = auth.cached_clients();
    assert!(misses <= 10_000, "{misses} misses cached");

    let policy = &s.server.app.policy;
    for _ in 0..5_000 {
        let who = Subject {
            principal: PrincipalId::generate(PrincipalKind::Service, &rng)
                .unwrap()
                .to_string(),
            ..Default::default()
        };
        policy
            .decide_unlogged(
                &tenant,
                &who,
                "orders:Get",
                "crn:capstan:orders:default:o",
                None,
            )
            .await
            .unwrap();
    }
    assert_eq!(policy.cached_indexes(&tenant).await.unwrap(), 0);

    // Mint-and-revoke: each revoked id is kept only until its token expires.
    let admin = s.admin().await;
    let before = auth.revoked_count();
    for _ in 0..50 {
        let t = s.token("default", &admin, &[]).await;
        let r = s.oauth("default", "revoke", &admin, &[("token", &t)]).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(auth.revoked_count(), before + 50);
    s.clock.advance(900 + 60);
    auth.housekeeping().await.unwrap();
    assert_eq!(auth.revoked_count(), 0);
    s.shutdown().await;
}

fn kid_of(token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

/// 7.13: a rotation with a long publish delay held back every later key, so a compromised key
/// kept signing. `supersede` signs at once and withdraws pending keys; `DELETE /v1/keys/{kid}`
/// withdraws a key from the JWKS at once, and its tokens stop verifying on every server.
async fn an_emergency_rotation_supersedes_and_a_withdrawn_key_stops_verifying(ctx: &Ctx) {
    use std::time::{Duration, Instant};

    let mut settings = ctx.settings();
    settings.public_url = Some("http://capstan.test".into());
    let a = ctx.server_with(settings.clone()).await;
    let b = ctx.server_with(settings).await;
    let root = a.admin().await;
    let token = a.token("default", &root, &[]).await;
    let old = kid_of(&token);
    // Later than the first key's activation second (keys activate in strict order).
    a.clock.advance(10);
    let (status, slow) = a
        .api(
            Method::POST,
            "/v1/keys/rotate",
            &token,
            Some(json!({"publish_delay_seconds": 2_592_000})),
        )
        .await;
    assert_eq!(status, 201, "{slow}");
    let (status, fast) = a
        .api(
            Method::POST,
            "/v1/keys/rotate",
            &token,
            Some(json!({"supersede": true})),
        )
        .await;
    assert_eq!(status, 201, "{fast}");
    let (_, keys) = a.api(Method::GET, "/v1/keys", &token, None).await;
    let listed: Vec<String> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !listed.contains(&slow["kid"].as_str().unwrap().to_owned()),
        "{listed:?}"
    );
    let fresh = a.token("default", &root, &[]).await;
    assert_eq!(
        kid_of(&fresh),
        fast["kid"].as_str().unwrap(),
        "the new key signs at once"
    );

    // The signing key cannot be withdrawn; the old one can, and its tokens die everywhere.
    let (status, body) = a
        .api(
            Method::DELETE,
            &format!("/v1/keys/{}", kid_of(&fresh)),
            &fresh,
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(b.introspect("default", &root, &token).await["active"] == true);
    let (status, body) = a
        .api(Method::DELETE, &format!("/v1/keys/{old}"), &fresh, None)
        .await;
    assert_eq!(status, 204, "{body}");
    let jwks = a.jwks("default").await;
    assert!(!jwks.to_string().contains(&old), "{jwks}");
    assert_eq!(
        a.introspect("default", &root, &token).await["active"],
        false
    );
    let deadline = Instant::now() + Duration::from_secs(1);
    while b.introspect("default", &root, &token).await["active"] == true {
        assert!(
            Instant::now() < deadline,
            "server b still accepts the withdrawn key's token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// 7.12: a connection sending partial headers stayed open indefinitely. Headers must now
/// arrive within `header_read_timeout_seconds`.
async fn a_client_sending_partial_headers_is_cut_off(ctx: &Ctx) {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut settings = ctx.settings();
    settings.header_read_timeout = Duration::from_secs(1);
    let s = ctx.server_with(settings).await;
    let mut conn = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection is still open after 10 s");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // A well-behaved client is still served.
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.shutdown().await;
}

/// 7.8: matching costs grow with wildcards, text and the number of policies. Values hold at
/// most 16 wildcards, actions and resources at most 2 KiB (path parameters 1 KiB), and a
/// principal or group at most 20 attached policies (a principal at most 10 groups), so the worst
/// decision costs a measured ~2 ms (docs/BENCHMARKS.md).
async fn what_a_decision_reads_is_bounded(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let token = s.token("default", &admin, &[]).await;
    let greedy = format!("*{}", "?".repeat(6_000));
    let (status, body) = put(
        &s,
        &token,
        "/v1/policies/Greedy",
        Some(allow(&["a:b"], &greedy)),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("wildcard"),
        "{body}"
    );

    let big = format!("crn:capstan:orders:default:{}", "a".repeat(3_000));
    let (status, _) = s
        .api(
            Method::POST,
            "/v1/authorize",
            &token,
            Some(json!({"principal": admin.id, "action": "orders:Get", "resource": big})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .api(
            Method::GET,
            &format!("/v1/guardrails/{}", "g".repeat(2_000)),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 400);

    let target = service_client(&s, &token, "crowded").await;
    for i in 0..21 {
        let name = format!("P{i}");
        let (status, _) = put(
            &s,
            &token,
            &format!("/v1/policies/{name}"),
            Some(allow(&["a:b"], "*")),
        )
        .await;
        assert_eq!(status, 200);
        let (status, body) = put(
            &s,
            &token,
            &format!("/v1/principals/{}/policies/{name}", target.id),
            None,
        )
        .await;
        if i < 20 {
            assert_eq!(status, 204, "{body}");
        } else {
            assert_eq!(status, 409, "{body}");
            assert!(
                body["message"].as_str().unwrap().contains("limit is 20"),
                "{body}"
            );
        }
    }
    for i in 0..11 {
        let group = format!("g{i}");
        assert_eq!(
            put(&s, &token, &format!("/v1/groups/{group}"), None)
                .await
                .0,
            204
        );
        let (status, body) = put(
            &s,
            &token,
            &format!("/v1/groups/{group}/members/{}", target.id),
            None,
        )
        .await;
        assert_eq!(status, if i < 10 { 204 } else { 409 }, "{body}");
    }
    // Nesting counts too: g0 inside another group would put the principal in 11.
    assert_eq!(put(&s, &token, "/v1/groups/outer", None).await.0, 204);
    let (status, body) = put(&s, &token, "/v1/groups/outer/members/group:g0", None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("11 groups"),
        "{body}"
    );
    // A group whose principals have room may be nested.
    let (status, body) = put(&s, &token, "/v1/groups/outer/members/group:g10", None).await;
    assert_eq!(status, 204, "{body}");
    s.shutdown().await;
}
