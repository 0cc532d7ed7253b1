//! Several servers on one database: changes on one are enforced by the others within 1 s.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use capstan_tests::{Ctx, TestServer};

capstan_tests::on_both_backends!(
    changes_on_one_server_reach_another_within_a_second,
    a_crowd_on_a_cold_replica_loads_each_cache_once,
);

/// Polls `check` until it holds; returns how long that took (fails after 3 s).
async fn within<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{what}: not seen after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn active(s: &TestServer, creds: &capstan_tests::Creds, token: &str) -> bool {
    s.introspect("default", creds, token).await["active"] == json!(true)
}

async fn changes_on_one_server_reach_another_within_a_second(ctx: &Ctx) {
    // Servers of one deployment share the public URL, hence the issuer.
    let mut settings = ctx.settings();
    settings.public_url = Some("http://capstan.test".into());
    let a = ctx.server_with(settings.clone()).await;
    let b = ctx.server_with(settings).await;
    let (admin_token, orders) = a.orders_client().await;
    let admin = a.admin().await;

    // Revocation on A.
    let token = a.token("default", &orders, &[]).await;
    assert!(
        active(&b, &admin, &token).await,
        "B sees A's token as active first"
    );
    let r = a
        .oauth("default", "revoke", &orders, &[("token", &token)])
        .await;
    assert_eq!(r.status(), 200);
    let took = within("revocation", || async { !active(&b, &admin, &token).await }).await;
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");

    // Client deletion on A (B has the client cached: it just introspected its token).
    let t2 = a.token("default", &orders, &[]).await;
    assert!(active(&b, &admin, &t2).await);
    let (status, _) = a
        .api(
            Method::DELETE,
            &format!("/v1/clients/{}", orders.id),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let took = within("client deletion", || async {
        !active(&b, &admin, &t2).await
    })
    .await;
    assert!(took < Duration::from_secs(1), "deletion took {took:?}");

    // Secret rotation on A: B refuses the old secret.
    let (_, svc) = a.orders_client().await;
    b.token("default", &svc, &[]).await;
    let (status, _) = a
        .api(
            Method::POST,
            &format!("/v1/clients/{}/secret", svc.id),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let took = within("secret rotation", || async {
        b.oauth(
            "default",
            "token",
            &svc,
            &[("grant_type", "client_credentials")],
        )
        .await
        .status()
            == 401
    })
    .await;
    assert!(
        took < Duration::from_secs(1),
        "secret rotation took {took:?}"
    );

    // Key rotation on A is published by B.
    let before = b.jwks("default").await["keys"].as_array().unwrap().len();
    let (status, key) = a
        .api(
            Method::POST,
            "/v1/keys/rotate",
            &admin_token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201);
    let kid = key["kid"].as_str().unwrap().to_owned();
    let took = within("key rotation", || async {
        let jwks: Value = b.jwks("default").await;
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid.as_str())
    })
    .await;
    assert!(took < Duration::from_secs(1), "key rotation took {took:?}");
    assert_eq!(
        b.jwks("default").await["keys"].as_array().unwrap().len(),
        before + 1
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A counter's value in a `/metrics` text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{metrics}"))
}

/// Every client reconnecting at once to a replica that has nothing cached yet (it just started)
/// costs one storage read per cache entry and one signature check per token, not one per request.
async fn a_crowd_on_a_cold_replica_loads_each_cache_once(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.public_url = Some("http://capstan.test".into());
    let a = ctx.server_with(settings.clone()).await;
    let admin = a.admin().await;
    let token = a.token("default", &admin, &[]).await;
    let b = ctx.server_with(settings).await;
    let names = [
        "capstan_token_signature_checks_total",
        "capstan_auth_key_loads_total",
        "capstan_auth_client_loads_total",
        "capstan_policy_snapshot_loads_total",
    ];
    let text = b.metrics().await;
    let before: Vec<u64> = names.iter().map(|n| counter(&text, n)).collect();

    let mut crowd = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let req = b.http.get(b.url("/v1/clients")).bearer_auth(&token);
        crowd.spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    }
    while let Some(r) = crowd.join_next().await {
        assert_eq!(r.unwrap().unwrap(), 200);
    }

    let text = b.metrics().await;
    for (name, before) in names.iter().zip(before) {
        let n = counter(&text, name) - before;
        assert!(
            n <= 1,
            "{name}: {n} for 200 concurrent requests with one token"
        );
    }
}
