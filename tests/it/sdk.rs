//! The Rust SDK against a real server: its verifier refuses what Capstan's refuses, its token
//! source sends one request for many callers, its authorizer and retries; and the `orders`
//! example, protected by the SDK's layer, allowed and denied by policies put with capstanctl.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_sdk::{
    AuthorizeRequest, Capstan, Error, TokenError, Transport, TransportConfig, VerifyError,
};
use capstan_tests::{on_both_backends, Ctx, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::Ctl;

on_both_backends!(
    the_verifier_refuses_what_capstan_refuses,
    unknown_kids_refetch_the_jwks_at_most_once_per_interval,
    one_token_request_for_a_hundred_callers,
    the_authorizer_decides_and_caches,
    the_orders_example_is_allowed_and_denied_by_policies_put_with_capstanctl,
);

fn capstan(s: &TestServer) -> Capstan {
    Capstan::new(&s.base, "default")
        .unwrap()
        .with_clock(s.clock.clone())
}

async fn the_verifier_refuses_what_capstan_refuses(ctx: &Ctx) {
    let s = ctx.server().await;
    let (_, orders) = s.orders_client().await;
    let token = s
        .token("default", &orders, &[("audience", "orders-api")])
        .await;
    let verifier = capstan(&s).verifier("orders-api").await.unwrap();
    let claims = verifier.verify(&token).await.unwrap();
    assert_eq!(claims.sub, orders.id);
    assert_eq!(claims.tenant, "default");

    for (what, forged) in capstan_tests::server::forged_tokens(&s, "default", &token).await {
        assert!(
            matches!(verifier.verify(&forged).await, Err(VerifyError::Invalid(_))),
            "{what} verified"
        );
        let r = s
            .auth()
            .verify_token(
                &capstan_core::ids::TenantId::default_tenant(),
                &forged,
                None,
            )
            .await
            .unwrap();
        assert!(r.is_err(), "Capstan refuses {what} too");
    }
    // Another audience, and tokens of another tenant's issuer.
    let billing = capstan(&s).verifier("billing-api").await.unwrap();
    assert!(matches!(
        billing.verify(&token).await,
        Err(VerifyError::Invalid(TokenError::WrongAudience))
    ));
    // nbf in the future beyond the leeway, then expiry (900 s plus the 5 s leeway), as Capstan.
    s.clock.advance(-60);
    assert!(matches!(
        verifier.verify(&token).await,
        Err(VerifyError::Invalid(TokenError::NotYetValid))
    ));
    s.clock.advance(60 + 904);
    assert!(verifier.verify(&token).await.is_ok());
    s.clock.advance(1);
    assert!(matches!(
        verifier.verify(&token).await,
        Err(VerifyError::Invalid(TokenError::Expired))
    ));
    s.shutdown().await;
}

async fn unknown_kids_refetch_the_jwks_at_most_once_per_interval(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin_token, orders) = s.orders_client().await;
    let token = s
        .token("default", &orders, &[("audience", "orders-api")])
        .await;
    let verifier = capstan(&s).verifier("orders-api").await.unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(verifier.jwks_fetches(), 1);
    // Many tokens naming keys nobody published: at most one refetch per interval.
    let (h, p, sig) = {
        let v: Vec<&str> = token.split('.').collect();
        (v[0].to_owned(), v[1].to_owned(), v[2].to_owned())
    };
    let _ = (h, sig);
    let forge = |i: usize| {
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            json!({"alg": "ES256", "typ": "at+jwt", "kid": format!("forged-{i}")}).to_string(),
        );
        format!("{header}.{p}.AAAA")
    };
    // Within the interval after a fetch: none.
    for i in 0..50 {
        assert!(matches!(
            verifier.verify(&forge(i)).await,
            Err(VerifyError::Invalid(TokenError::UnknownKey))
        ));
    }
    assert_eq!(verifier.jwks_fetches(), 1, "no refetch within the interval");
    s.clock.advance(31);
    for i in 0..50 {
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            json!({"alg": "ES256", "typ": "at+jwt", "kid": format!("forged-{i}")}).to_string(),
        );
        let forged = format!("{header}.{p}.AAAA");
        assert!(matches!(
            verifier.verify(&forged).await,
            Err(VerifyError::Invalid(TokenError::UnknownKey))
        ));
    }
    assert_eq!(
        verifier.jwks_fetches(),
        2,
        "one refetch for fifty unknown kids"
    );
    // A key published later is found once the interval has passed.
    let (status, k) = s
        .api(
            Method::POST,
            "/v1/keys/rotate",
            &admin_token,
            Some(json!({"publish_delay_seconds": 0})),
        )
        .await;
    assert_eq!(status, 201, "{k}");
    s.clock.advance(2);
    let fresh = s
        .token("default", &orders, &[("audience", "orders-api")])
        .await;
    assert!(fresh.contains('.'));
    s.clock.advance(30);
    let claims = verifier.verify(&fresh).await.unwrap();
    assert_eq!(claims.sub, orders.id);
    assert_eq!(verifier.jwks_fetches(), 3);
    // A withdrawn key stops verifying once the cached set is older than its maximum age.
    let old_kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let (status, _) = s
        .api(
            Method::DELETE,
            &format!("/v1/keys/{old_kid}"),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    s.clock.advance(301);
    let still = s
        .token("default", &orders, &[("audience", "orders-api")])
        .await;
    assert!(verifier.verify(&still).await.is_ok());
    s.shutdown().await;
}

async fn one_token_request_for_a_hundred_callers(ctx: &Ctx) {
    let s = ctx.server().await;
    let (_, orders) = s.orders_client().await;
    let tokens = capstan(&s).token_source(&orders.id, &orders.secret, &["orders:read"]);
    let calls = (0..100).map(|_| {
        let t = tokens.clone();
        tokio::spawn(async move { t.token(Some("orders-api")).await.unwrap() })
    });
    let mut got = Vec::new();
    for c in calls {
        got.push(c.await.unwrap());
    }
    assert_eq!(tokens.requests_sent(), 1, "single flight");
    assert!(got.iter().all(|t| t == &got[0]));
    let verifier = capstan(&s).verifier("orders-api").await.unwrap();
    let claims = verifier.verify(got[0].secret()).await.unwrap();
    assert_eq!(claims.scope, "orders:read");
    // Cached until a fifth of the lifetime is left (900 s → refreshed from 720 s on).
    s.clock.advance(700);
    assert_eq!(tokens.token(Some("orders-api")).await.unwrap(), got[0]);
    assert_eq!(tokens.requests_sent(), 1);
    s.clock.advance(30);
    let next = tokens.token(Some("orders-api")).await.unwrap();
    assert_ne!(next, got[0], "refreshed ahead of expiry");
    assert_eq!(tokens.requests_sent(), 2);
    // Per audience.
    let billing = tokens.token(Some("billing-api")).await.unwrap();
    assert_ne!(billing, next);
    assert_eq!(tokens.requests_sent(), 3);
    // Long after expiry, 100 callers again wait for one request.
    s.clock.advance(5_000);
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let t = tokens.clone();
            tokio::spawn(async move { t.token(Some("orders-api")).await.unwrap() })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    assert_eq!(tokens.requests_sent(), 4);
    // A wrong secret is a typed OAuth error.
    let bad = capstan(&s).token_source(&orders.id, "wrong", &[]);
    match bad.token(None).await {
        Err(Error::OAuth { error, .. }) => assert_eq!(error, "invalid_client"),
        other => panic!("{other:?}"),
    }
    s.shutdown().await;
}

async fn the_authorizer_decides_and_caches(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let admin_token = s.token("default", &admin, &[]).await;
    let c = capstan(&s);
    let authz = c
        .authorizer(c.token_source(&admin.id, &admin.secret, &[]))
        .with_cache(5, 100);
    let req = |id: &str| AuthorizeRequest {
        principal: Some(admin.id.clone()),
        token: None,
        action: "auth:ListClients".into(),
        resource: format!("crn:capstan:auth:default:clients/{id}"),
        context: None,
    };
    let d = authz.authorize(req("a")).await.unwrap();
    assert_eq!(d.decision, "Allow");

    let before = count(&s, &admin_token).await;
    authz.authorize(req("a")).await.unwrap();
    assert_eq!(
        count(&s, &admin_token).await,
        before,
        "served from the cache"
    );
    s.clock.advance(6);
    authz.authorize(req("a")).await.unwrap();
    assert_eq!(
        count(&s, &admin_token).await,
        before + 1,
        "expired from the cache"
    );
    let batch = authz
        .authorize_batch(vec![
            req("b"),
            AuthorizeRequest {
                action: "orders:Nope".into(),
                principal: Some("svc_nobody".into()),
                ..req("c")
            },
        ])
        .await
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0].decision, "Allow");
    assert_eq!(batch[1].decision, "Deny");
    // An API error is typed, with Capstan's body.
    let weak = s
        .create_client(
            &admin_token,
            json!({"name": "weak", "audiences": ["capstan"]}),
        )
        .await;
    let weak_authz = c.authorizer(c.token_source(&weak.id, &weak.secret, &[]));
    match weak_authz.authorize(req("a")).await {
        Err(Error::Api {
            status: 403, body, ..
        }) => assert_eq!(body["action"], "policy:Authorize"),
        other => panic!("{other:?}"),
    }
    s.shutdown().await;
}

/// A server answering 503 with `Retry-After: 1` twice, then 200; and one that never answers.
#[tokio::test]
async fn retries_honour_retry_after_and_calls_time_out() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new()
        .route(
            "/flaky",
            axum::routing::get(move || {
                let h = h.clone();
                async move {
                    if h.fetch_add(1, Ordering::SeqCst) < 2 {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "1")],
                            "{}",
                        )
                    } else {
                        (
                            axum::http::StatusCode::OK,
                            [("retry-after", "0")],
                            "{\"ok\":true}",
                        )
                    }
                }
            }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let t = Transport::new(TransportConfig {
        timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .unwrap();
    let started = Instant::now();
    let v = t
        .json(t.http().get(format!("http://{addr}/flaky")))
        .await
        .unwrap();
    assert_eq!(v, json!({"ok": true}));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited what Retry-After said"
    );
    match t.json(t.http().get(format!("http://{addr}/slow"))).await {
        Err(Error::Timeout { .. }) => {}
        other => panic!("{other:?}"),
    }
    match t.json(t.http().get("http://127.0.0.1:1/")).await {
        Err(e @ Error::Unreachable { .. }) => assert!(e.to_string().contains("127.0.0.1:1")),
        other => panic!("{other:?}"),
    }
}

async fn the_orders_example_is_allowed_and_denied_by_policies_put_with_capstanctl(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let ctl = Ctl::new(&s);
    ctl.login_dev(&admin).await;
    // The orders service asks the policy engine: it may call /v1/authorize, nothing else.
    let svc = ctl
        .ok(&[
            "clients",
            "create",
            "--name",
            "orders",
            "--audience",
            "capstan",
        ])
        .await
        .json();
    let svc_id = svc["client_id"].as_str().unwrap().to_owned();
    let f = ctl.file("authorizer.json", &json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "policy:Authorize", "Resource": "crn:capstan:policy:default:authorizer"}]}));
    ctl.ok(&["policies", "put", "OrdersAuthorizer", &f]).await;
    ctl.ok(&["attach", "OrdersAuthorizer", "--principal", &svc_id])
        .await;
    // A caller of the orders API.
    let shop = ctl
        .ok(&[
            "clients",
            "create",
            "--name",
            "shop",
            "--audience",
            "orders-api",
            "--audience",
            "capstan",
        ])
        .await
        .json();
    let shop_id = shop["client_id"].as_str().unwrap().to_owned();
    let shop_creds = capstan_tests::Creds::from_json(&shop);

    let cfg = capstan_example_orders::Config {
        capstan: s.base.clone(),
        tenant: "default".into(),
        client_id: svc_id.clone(),
        client_secret: svc["client_secret"].as_str().unwrap().to_owned(),
        audience: "orders-api".into(),
    };
    let router = capstan_example_orders::app(&cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orders = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, token: Option<String>| {
        let mut r = http.request(method, format!("{orders}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, body, challenge)
        }
    };
    let token = s
        .token("default", &shop_creds, &[("audience", "orders-api")])
        .await;

    // Without a policy: 403 with Capstan's body.
    let (status, body, _) = call(Method::GET, "/orders/41", Some(token.clone())).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        json!({"error": "forbidden", "message": "not allowed to orders:GetOrder on crn:capstan:orders:default:order/41", "action": "orders:GetOrder", "resource": "crn:capstan:orders:default:order/41", "reason": "implicit_deny"})
    );
    // The same shape as Capstan's own refusals.
    let shop_api = s
        .token("default", &shop_creds, &[("audience", "capstan")])
        .await;
    let (status, capstan_body) = s.api(Method::GET, "/v1/clients", &shop_api, None).await;
    assert_eq!(status, 403);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&body), keys(&capstan_body));

    // A policy put with capstanctl allows reading orders, not deleting them.
    let f = ctl.file("orders-read.json", &json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "orders:GetOrder", "Resource": "crn:capstan:orders:default:order/*"}]}));
    ctl.ok(&["policies", "put", "OrdersRead", &f]).await;
    ctl.ok(&["attach", "OrdersRead", "--principal", &shop_id])
        .await;
    let (status, body, _) = call(Method::GET, "/orders/42", Some(token.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["read_by"], shop_id.as_str());
    let (status, body, _) = call(Method::DELETE, "/orders/42", Some(token.clone())).await;
    assert_eq!(status, 403);
    assert_eq!(body["action"], "orders:DeleteOrder");
    // Detached: denied again (an order not read before, so no cached decision).
    ctl.ok(&["detach", "OrdersRead", "--principal", &shop_id])
        .await;
    let (status, _, _) = call(Method::GET, "/orders/43", Some(token.clone())).await;
    assert_eq!(status, 403);
    // The layer forwards the request's traceparent: the decision is found by its trace.
    const TRACE: &str = "5b8efff798038103d269b633813fc60c";
    let r = http
        .get(format!("{orders}/orders/44"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE}-eee19b7ec3c1b174-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let admin_token = s.token("default", &admin, &[]).await;
    let (status, log) = s
        .api(
            Method::GET,
            &format!("/v1/decisions?trace_id={TRACE}"),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{log}");
    // The decision for the caller, and the orders service's own `policy:Authorize` to ask it.
    let seen: Vec<(&str, &str, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["principal"].as_str().unwrap(),
                d["action"].as_str().unwrap(),
                d["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (shop_id.as_str(), "orders:GetOrder", "Deny"),
            (svc_id.as_str(), "policy:Authorize", "Allow"),
        ],
        "{log}"
    );

    // 401s: no token, a forged one, one meant for another audience.
    let (status, body, challenge) = call(Method::GET, "/orders/42", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthenticated");
    assert!(challenge.unwrap().starts_with("Bearer realm=\"capstan\""));
    for (what, forged) in capstan_tests::server::forged_tokens(&s, "default", &token).await {
        let (status, body, _) = call(Method::GET, "/orders/42", Some(forged)).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    let (status, body, _) = call(Method::GET, "/orders/42", Some(shop_api)).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], "token is not meant for this audience");
    server.abort();
    s.shutdown().await;
}

async fn count(s: &TestServer, t: &str) -> usize {
    let (_, v) = s
        .api(Method::GET, "/v1/decisions?limit=1000", t, None)
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .filter(|d| d["resource"] == "crn:capstan:auth:default:clients/a")
        .count()
}
