//! Rotation over HTTP: signing keys published before they sign and kept until their last token
//! expires, client secrets with a grace period, and deleted clients' tokens.

use reqwest::Method;
use serde_json::json;

use capstan_tests::{verify_with_jwks_at, Creds, Ctx};

capstan_tests::on_both_backends!(
    rotation_publishes_before_signing_and_keeps_old_keys_until_expiry,
    secret_rotation_grace_period,
    deleted_client_tokens_become_inactive,
);

async fn rotation_publishes_before_signing_and_keeps_old_keys_until_expiry(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin_token, orders) = s.orders_client().await;
    let issuer = s.url("/t/default");
    let old_token = s
        .token("default", &orders, &[("audience", "orders-api")])
        .await;
    let old_kid = jsonwebtoken::decode_header(&old_token)
        .unwrap()
        .kid
        .unwrap();

    let (status, key) = s
        .api(
            Method::POST,
            "/v1/keys/rotate",
            &admin_token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let new_kid = key["kid"].as_str().unwrap().to_owned();
    assert_eq!(
        key["activates_at"].as_i64().unwrap() - key["created_at"].as_i64().unwrap(),
        600
    );

    // Published at once, not signing yet.
    let jwks = s.jwks("default").await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&new_kid.as_str()) && kids.contains(&old_kid.as_str()));
    let t = s.token("default", &orders, &[]).await;
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().kid.unwrap(),
        old_kid
    );

    // After the publish delay the new key signs; the old token still verifies.
    s.clock.advance(600);
    let t = s
        .token("default", &orders, &[("audience", "orders-api")])
        .await;
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().kid.unwrap(),
        new_kid
    );
    let jwks = s.jwks("default").await;
    verify_with_jwks_at(&jwks, &t, &issuer, "orders-api", false).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        s.introspect("default", &orders, &old_token).await["active"],
        true
    );

    // Once every token of the old key could have expired (max TTL after it was superseded), it
    // leaves the JWKS; tokens of the new key still verify.
    s.clock.advance(86_400);
    let jwks = s.jwks("default").await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [new_kid.as_str()]);
    let t = s.token("default", &orders, &[]).await;
    assert_eq!(s.introspect("default", &orders, &t).await["active"], true);

    // Rotation with delay 0 and another algorithm signs at once (the first admin token has long
    // expired, and was signed by the retired key).
    let (status, _) = s.api(Method::GET, "/v1/keys", &admin_token, None).await;
    assert_eq!(status, 401);
    let admin = s.admin().await;
    let admin_token = s.token("default", &admin, &[]).await;
    let (status, key) = s
        .api(
            Method::POST,
            "/v1/keys/rotate",
            &admin_token,
            Some(json!({"alg": "EdDSA", "publish_delay_seconds": 0})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let t = s.token("default", &orders, &[]).await;
    let h = jsonwebtoken::decode_header(&t).unwrap();
    assert_eq!(h.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(s.introspect("default", &orders, &t).await["active"], true);
    let (status, keys) = s.api(Method::GET, "/v1/keys", &admin_token, None).await;
    assert_eq!(status, 200);
    assert_eq!(keys.as_array().unwrap().len(), 2);

    // Two rotations in the same second take effect in order, one second apart.
    let rotate = |alg: &'static str| {
        s.api(
            Method::POST,
            "/v1/keys/rotate",
            &admin_token,
            Some(json!({"alg": alg, "publish_delay_seconds": 0})),
        )
    };
    let (_, rs) = rotate("RS256").await;
    let (_, es) = rotate("ES256").await;
    assert_eq!(
        es["activates_at"].as_i64().unwrap(),
        rs["activates_at"].as_i64().unwrap() + 1
    );
    s.clock.advance(2);
    let t = s.token("default", &orders, &[]).await;
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().kid.unwrap(),
        es["kid"].as_str().unwrap()
    );
    s.shutdown().await;
}

async fn secret_rotation_grace_period(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin_token, orders) = s.orders_client().await;
    let path = format!("/v1/clients/{}/secret", orders.id);
    let (status, rotated) = s
        .api(
            Method::POST,
            &path,
            &admin_token,
            Some(json!({"grace_period_seconds": 300})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let fresh = Creds {
        id: orders.id.clone(),
        secret: rotated["client_secret"].as_str().unwrap().into(),
    };
    assert_ne!(fresh.secret, orders.secret);
    s.token("default", &fresh, &[]).await;
    s.token("default", &orders, &[]).await;
    s.clock.advance(300);
    let r = s
        .oauth(
            "default",
            "token",
            &orders,
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status(), 401);
    s.token("default", &fresh, &[]).await;
    // Without a grace period the old secret stops at once.
    let (_, again) = s.api(Method::POST, &path, &admin_token, None).await;
    let r = s
        .oauth(
            "default",
            "token",
            &fresh,
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status(), 401);
    let newest = Creds {
        id: orders.id.clone(),
        secret: again["client_secret"].as_str().unwrap().into(),
    };
    s.token("default", &newest, &[]).await;
    s.shutdown().await;
}

async fn deleted_client_tokens_become_inactive(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin_token, orders) = s.orders_client().await;
    let t = s.token("default", &orders, &[]).await;
    let admin = s.admin().await;
    assert_eq!(s.introspect("default", &admin, &t).await["active"], true);
    let (status, _) = s
        .api(
            Method::DELETE,
            &format!("/v1/clients/{}", orders.id),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        s.introspect("default", &admin, &t).await,
        json!({"active": false})
    );
    let r = s
        .oauth(
            "default",
            "token",
            &orders,
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status(), 401);
    let (status, _) = s
        .api(
            Method::GET,
            &format!("/v1/clients/{}", orders.id),
            &admin_token,
            None,
        )
        .await;
    assert_eq!(status, 404);
    s.shutdown().await;
}
