//! Authorization over HTTP: groups, boundaries, tags, resource policies and guardrails deciding
//! `/v1/authorize`; changes reaching other servers; simulation; stale compilations.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use capstan_core::authz::TokenVerifier;
use capstan_tests::{Ctx, TestServer};

use crate::policy::{put, service_client, ORDER};

capstan_tests::on_both_backends!(
    authorize_resolves_groups_boundaries_tags_resource_policies_and_guardrails,
    a_policy_change_on_one_server_is_enforced_by_another_within_a_second,
    simulate_shows_what_changes_would_do_without_doing_it,
    a_recreated_policy_is_never_served_from_a_stale_compilation,
);

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
