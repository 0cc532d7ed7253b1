//! The decision log by trace (W3C Trace Context): a guarded call or a `/v1/authorize` that
//! carries a `traceparent` is logged with its trace id, and `GET /v1/decisions?trace_id=` finds
//! the decisions one trace made.

use reqwest::Method;
use serde_json::{json, Value};

use capstan_core::authz::TokenVerifier;
use capstan_tests::{Ctx, TestServer};

use crate::policy::{service_client, ORDER};

capstan_tests::on_both_backends!(decisions_are_found_by_the_trace_that_made_them);

/// Sends a `/v1` request with a bearer token and the given `traceparent` headers (none, one, or
/// several); returns status and JSON body.
async fn traced(
    s: &TestServer,
    method: Method,
    path: &str,
    bearer: &str,
    traceparents: &[&str],
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = s.http.request(method, s.url(path)).bearer_auth(bearer);
    for tp in traceparents {
        req = req.header("traceparent", *tp);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The decisions of `GET /v1/decisions?<query>` as (principal, action, decision, trace_id).
async fn decisions(
    s: &TestServer,
    admin: &str,
    query: &str,
) -> Vec<(String, String, String, Value)> {
    let (status, log) = s
        .api(Method::GET, &format!("/v1/decisions?{query}"), admin, None)
        .await;
    assert_eq!(status, 200, "{log}");
    log.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["principal"].as_str().unwrap().to_owned(),
                d["action"].as_str().unwrap().to_owned(),
                d["decision"].as_str().unwrap().to_owned(),
                d.get("trace_id").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// "Why was this request denied" is one lookup: a guarded call and a `/v1/authorize` call that
/// carry a `traceparent` are logged with its trace id, and `?trace_id=` finds exactly them.
async fn decisions_are_found_by_the_trace_that_made_them(ctx: &Ctx) {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const OTHER: &str = "0af7651916cd43dd8448eb211c80319c";
    let tp = |trace: &str| format!("00-{trace}-00f067aa0ba902b7-01");
    let s = ctx.server().await;
    let (admin, _) = s.orders_client().await;
    let admin_id = s
        .auth()
        .verify_access_token(&admin)
        .await
        .unwrap()
        .principal
        .to_string();
    let ci = service_client(&s, &admin, "ci").await;
    let ci_token = s.token("default", &ci, &[("audience", "capstan")]).await;

    // In the trace: a guarded call that is denied, and an authorization asked for another
    // principal (itself guarded: two decisions).
    let (status, body) = traced(
        &s,
        Method::POST,
        "/v1/clients",
        &ci_token,
        &[&tp(TRACE)],
        Some(json!({"name": "x", "audiences": ["a"]})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = traced(
        &s,
        Method::POST,
        "/v1/authorize",
        &admin,
        &[&tp(TRACE)],
        Some(json!({"principal": ci.id, "action": "orders:Get", "resource": ORDER})),
    )
    .await;
    assert_eq!(
        (status, body["decision"].as_str()),
        (200, Some("Deny")),
        "{body}"
    );
    // Not in it: another trace, no trace, and traceparents that are not valid (uppercase; two
    // headers), which are ignored rather than refused.
    let (status, _) = traced(
        &s,
        Method::GET,
        "/v1/policies",
        &ci_token,
        &[&tp(OTHER)],
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = traced(&s, Method::GET, "/v1/groups", &ci_token, &[], None).await;
    assert_eq!(status, 403);
    let upper = tp(&TRACE.to_uppercase());
    let (status, _) = traced(
        &s,
        Method::GET,
        "/v1/guardrails",
        &ci_token,
        &[&upper],
        None,
    )
    .await;
    assert_eq!(
        status, 403,
        "a malformed traceparent does not fail the request"
    );
    let (status, _) = traced(
        &s,
        Method::GET,
        "/v1/resource-policies",
        &ci_token,
        &[&tp(TRACE), &tp(OTHER)],
        None,
    )
    .await;
    assert_eq!(status, 403);

    let trace = Value::from(TRACE);
    let want = vec![
        (
            ci.id.clone(),
            "orders:Get".to_owned(),
            "Deny".to_owned(),
            trace.clone(),
        ),
        (
            admin_id.clone(),
            "policy:Authorize".to_owned(),
            "Allow".to_owned(),
            trace.clone(),
        ),
        (
            ci.id.clone(),
            "auth:CreateClient".to_owned(),
            "Deny".to_owned(),
            trace.clone(),
        ),
    ];
    assert_eq!(
        decisions(&s, &admin, &format!("trace_id={TRACE}")).await,
        want,
        "newest first"
    );
    // A trace id copied in uppercase names the same trace.
    assert_eq!(
        decisions(&s, &admin, &format!("trace_id={}", TRACE.to_uppercase())).await,
        want
    );
    // It combines with the other filters.
    assert_eq!(
        decisions(
            &s,
            &admin,
            &format!("trace_id={TRACE}&decision=Deny&principal={}", ci.id)
        )
        .await,
        [want[0].clone(), want[2].clone()]
    );
    assert_eq!(
        decisions(&s, &admin, &format!("trace_id={OTHER}")).await,
        [(
            ci.id.clone(),
            "policy:ListPolicies".to_owned(),
            "Deny".to_owned(),
            Value::from(OTHER)
        )]
    );
    // The calls without a valid traceparent are logged without a trace id.
    let untraced: Vec<_> = decisions(&s, &admin, &format!("principal={}&limit=1000", ci.id))
        .await
        .into_iter()
        .filter(|(_, a, _, _)| {
            [
                "policy:ListGroups",
                "policy:ListGuardrails",
                "policy:ListResourcePolicies",
            ]
            .contains(&a.as_str())
        })
        .collect();
    assert_eq!(untraced.len(), 3, "{untraced:?}");
    assert!(
        untraced.iter().all(|(_, _, _, t)| t.is_null()),
        "{untraced:?}"
    );

    // OAuth revocation of another client's token is a guarded act too, logged in its trace.
    const REVOKE: &str = "a3ce929d0e0e47364bf92f3577b34da6";
    let r = s
        .http
        .post(s.url("/t/default/oauth2/revoke"))
        .basic_auth(&ci.id, Some(&ci.secret))
        .header("traceparent", tp(REVOKE))
        .form(&[("token", admin.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "{}", r.text().await.unwrap());
    assert_eq!(
        decisions(&s, &admin, &format!("trace_id={REVOKE}")).await,
        [(
            ci.id.clone(),
            "auth:RevokeToken".to_owned(),
            "Deny".to_owned(),
            Value::from(REVOKE)
        )]
    );

    // A trace id that is not one is refused, saying why.
    for bad in [
        "4bf92f3577b34da6a3ce929d0e0e473",
        "4bf92f3577b34da6a3ce929d0e0e47360",
        "4bf92f3577b34da6a3ce929d0e0e473g",
        "00000000000000000000000000000000",
        "",
    ] {
        let (status, body) = s
            .api(
                Method::GET,
                &format!("/v1/decisions?trace_id={bad}"),
                &admin,
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("trace_id")),
            "{bad:?}: {body}"
        );
    }
    s.shutdown().await;
}
