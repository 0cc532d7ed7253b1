//! The OAuth2 issuer over HTTP.

use capstan_auth::tokens::Inactive;
use capstan_core::ids::TenantId;
use capstan_core::jwt::TokenError;
use reqwest::Method;
use serde_json::{json, Value};

use capstan_tests::{verify_with_jwks, Creds, Ctx};

capstan_tests::on_both_backends!(
    client_token_verifies_against_jwks_for_every_algorithm,
    token_endpoint_errors_follow_rfc6749,
    forged_expired_early_wrong_audience_and_revoked_tokens_are_rejected,
);

async fn client_token_verifies_against_jwks_for_every_algorithm(ctx: &Ctx) {
    let s = ctx.server().await;
    let (admin_token, orders) = s.orders_client().await;

    // Discovery points at the endpoints that work.
    let meta: Value = s
        .get_json("/.well-known/oauth-authorization-server/t/default")
        .await;
    let issuer = s.url("/t/default");
    assert_eq!(meta["issuer"], issuer.as_str());
    assert_eq!(meta["token_endpoint"], format!("{issuer}/oauth2/token"));
    let oidc: Value = s
        .get_json("/t/default/.well-known/openid-configuration")
        .await;
    assert_eq!(oidc, meta);

    let token = s
        .token(
            "default",
            &orders,
            &[("scope", "orders:read"), ("audience", "orders-api")],
        )
        .await;
    let jwks: Value = s
        .http
        .get(meta["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims = verify_with_jwks(&jwks, &token, &issuer, "orders-api").unwrap();
    assert_eq!(claims["sub"], orders.id.as_str());
    assert_eq!(claims["client_id"], orders.id.as_str());
    assert_eq!(claims["scope"], "orders:read");
    assert_eq!(claims["tenant"], "default");
    assert_eq!(claims["aud"], "orders-api");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!(claims["jti"].as_str().unwrap().len() >= 22);
    // client_secret_post works too, and a token without scope/audience gets all allowed ones.
    let r = s
        .http
        .post(s.url("/t/default/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", orders.id.as_str()),
            ("client_secret", orders.secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "orders:read orders:write");
    let claims = verify_with_jwks(
        &jwks,
        body["access_token"].as_str().unwrap(),
        &issuer,
        "billing-api",
    )
    .unwrap();
    assert_eq!(claims["aud"], json!(["orders-api", "billing-api"]));

    // EdDSA and RS256 tenants.
    for alg in ["EdDSA", "RS256"] {
        let id = format!("t-{}", alg.to_lowercase());
        let (status, created) = s
            .api(
                Method::POST,
                "/v1/tenants",
                &admin_token,
                Some(json!({"id": id, "signing_alg": alg})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let tadmin = Creds::from_json(&created["admin_client"]);
        let t = s.token(&id, &tadmin, &[]).await;
        let jwks = s.jwks(&id).await;
        assert_eq!(jwks["keys"][0]["alg"], alg);
        let claims = verify_with_jwks(&jwks, &t, &s.url(&format!("/t/{id}")), "capstan").unwrap();
        assert_eq!(claims["tenant"], id.as_str());
        // The other tenant's JWKS does not verify it.
        assert!(verify_with_jwks(
            &s.jwks("default").await,
            &t,
            &s.url(&format!("/t/{id}")),
            "capstan"
        )
        .is_err());
        // The tenant admin acts in its own tenant only.
        let tt = s.token(&id, &tadmin, &[]).await;
        let (status, list) = s.api(Method::GET, "/v1/clients", &tt, None).await;
        assert_eq!(status, 200);
        assert_eq!(list.as_array().unwrap().len(), 1);
        let (status, _) = s.api(Method::GET, "/v1/tenants", &tt, None).await;
        assert_eq!(status, 403);
    }
    s.shutdown().await;
}

async fn oauth_error(r: reqwest::Response) -> (u16, String, reqwest::header::HeaderMap) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v: Value = r.json().await.unwrap();
    assert!(v["error_description"].is_string(), "{v}");
    (status, v["error"].as_str().unwrap().to_owned(), headers)
}

async fn token_endpoint_errors_follow_rfc6749(ctx: &Ctx) {
    let s = ctx.server().await;
    let (_, orders) = s.orders_client().await;
    let url = s.url("/t/default/oauth2/token");

    let wrong = Creds {
        id: orders.id.clone(),
        secret: "cps_wrong".into(),
    };
    let (status, code, h) = oauth_error(
        s.oauth(
            "default",
            "token",
            &wrong,
            &[("grant_type", "client_credentials")],
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "invalid_client"));
    assert!(h["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    assert_eq!(h["cache-control"], "no-store");

    let unknown = Creds {
        id: "svc_nosuchclient".into(),
        secret: orders.secret.clone(),
    };
    let (status, code, _) = oauth_error(
        s.oauth(
            "default",
            "token",
            &unknown,
            &[("grant_type", "client_credentials")],
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "invalid_client"));

    // Authenticated requests that break a rule: (form, status, RFC 6749 error code).
    let cc = ("grant_type", "client_credentials");
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("grant_type", "password")],
            400,
            "unsupported_grant_type",
        ),
        (
            vec![cc, ("scope", "orders:read admin")],
            400,
            "invalid_scope",
        ),
        (
            vec![cc, ("audience", "payments-api")],
            400,
            "invalid_target",
        ),
        (vec![("scope", "orders:read")], 400, "invalid_request"),
    ];
    for (form, want_status, want_code) in cases {
        let (status, code, _) =
            oauth_error(s.oauth("default", "token", &orders, &form).await).await;
        assert_eq!(
            (status, code.as_str()),
            (want_status, want_code),
            "{form:?}"
        );
    }

    // No client authentication at all.
    let r = s
        .http
        .post(&url)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let (status, code, _) = oauth_error(r).await;
    assert_eq!((status, code.as_str()), (401, "invalid_client"));

    // Two authentication methods at once.
    let r = s
        .http
        .post(&url)
        .basic_auth(&orders.id, Some(&orders.secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", orders.id.as_str()),
            ("client_secret", orders.secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let (status, code, _) = oauth_error(r).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));

    // Repeated parameter, wrong content type, broken Basic header.
    let r = s
        .http
        .post(&url)
        .basic_auth(&orders.id, Some(&orders.secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(oauth_error(r).await.1, "invalid_request");
    let r = s
        .http
        .post(&url)
        .basic_auth(&orders.id, Some(&orders.secret))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(oauth_error(r).await.1, "invalid_request");
    let r = s
        .http
        .post(&url)
        .header("authorization", "Basic !!!notbase64")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let (status, code, _) = oauth_error(r).await;
    assert_eq!((status, code.as_str()), (401, "invalid_client"));

    // Unknown tenant.
    let r = s
        .oauth(
            "nosuch",
            "token",
            &orders,
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status(), 404);
    // The client exists only in its own tenant.
    let (admin_token, _) = s.orders_client().await;
    let (st, _) = s
        .api(
            Method::POST,
            "/v1/tenants",
            &admin_token,
            Some(json!({"id": "other"})),
        )
        .await;
    assert_eq!(st, 201);
    let r = s
        .oauth(
            "other",
            "token",
            &orders,
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(oauth_error(r).await.0, 401);
    s.shutdown().await;
}

async fn forged_expired_early_wrong_audience_and_revoked_tokens_are_rejected(ctx: &Ctx) {
    let s = ctx.server().await;
    let (_, orders) = s.orders_client().await;
    let tenant = TenantId::default_tenant();
    let token = s
        .token("default", &orders, &[("audience", "orders-api")])
        .await;
    let verify = |t: String| {
        let auth = s.auth().clone();
        async move {
            auth.verify_token(&TenantId::default_tenant(), &t, None)
                .await
                .expect("storage answers")
        }
    };
    assert!(verify(token.clone()).await.is_ok());
    assert_eq!(
        s.introspect("default", &orders, &token).await["active"],
        true
    );

    for (what, forged) in capstan_tests::server::forged_tokens(&s, "default", &token).await {
        assert!(verify(forged.clone()).await.is_err(), "{what} verified");
        assert_eq!(
            s.introspect("default", &orders, &forged).await,
            json!({"active": false}),
            "{what}"
        );
        let (status, _) = s.api(Method::GET, "/v1/clients", &forged, None).await;
        assert_eq!(status, 401, "{what}");
    }

    // Wrong audience: Capstan's verifier with an expected audience, introspection with one, and
    // the admin API (which wants audience "capstan").
    let auth = s.auth().clone();
    assert_eq!(
        auth.verify_token(&tenant, &token, Some("billing-api"))
            .await
            .unwrap(),
        Err(Inactive::Token(TokenError::WrongAudience))
    );
    assert!(auth
        .verify_token(&tenant, &token, Some("orders-api"))
        .await
        .unwrap()
        .is_ok());
    let r = s
        .oauth(
            "default",
            "introspect",
            &orders,
            &[("token", &token), ("audience", "billing-api")],
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"active": false}));
    let (status, body) = s.api(Method::GET, "/v1/clients", &token, None).await;
    assert_eq!(status, 401, "{body}");

    // nbf in the future: the clock stands before the token was issued (beyond the leeway).
    s.clock.advance(-60);
    assert_eq!(
        verify(token.clone()).await,
        Err(Inactive::Token(TokenError::NotYetValid))
    );
    assert_eq!(
        s.introspect("default", &orders, &token).await["active"],
        false
    );
    s.clock.advance(60);
    assert!(verify(token.clone()).await.is_ok());

    // Expired: 900 s lifetime plus the 5 s leeway.
    s.clock.advance(904);
    assert!(verify(token.clone()).await.is_ok());
    s.clock.advance(1);
    assert_eq!(
        verify(token.clone()).await,
        Err(Inactive::Token(TokenError::Expired))
    );
    assert_eq!(
        s.introspect("default", &orders, &token).await["active"],
        false
    );

    // Revoked.
    let fresh = s.token("default", &orders, &[]).await;
    assert_eq!(
        s.introspect("default", &orders, &fresh).await["active"],
        true
    );
    let r = s
        .oauth(
            "default",
            "revoke",
            &orders,
            &[("token", &fresh), ("token_type_hint", "access_token")],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(verify(fresh.clone()).await, Err(Inactive::Revoked));
    assert_eq!(
        s.introspect("default", &orders, &fresh).await,
        json!({"active": false})
    );
    // Revoking again, or revoking garbage, is still 200 (RFC 7009 §2.2).
    assert_eq!(
        s.oauth("default", "revoke", &orders, &[("token", &fresh)])
            .await
            .status(),
        200
    );
    assert_eq!(
        s.oauth("default", "revoke", &orders, &[("token", "nonsense")])
            .await
            .status(),
        200
    );
    // Introspection and revocation require client authentication.
    let anon = s
        .http
        .post(s.url("/t/default/oauth2/introspect"))
        .form(&[("token", fresh.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    // A client may not revoke another client's token.
    let (admin_token, other) = s.orders_client().await;
    let theirs = s.token("default", &other, &[]).await;
    let r = s
        .oauth("default", "revoke", &orders, &[("token", &theirs)])
        .await;
    assert_eq!(oauth_error(r).await.1, "unauthorized_client");
    assert_eq!(
        s.introspect("default", &orders, &theirs).await["active"],
        true
    );
    let _ = admin_token;
    s.shutdown().await;
}
