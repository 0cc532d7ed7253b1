//! Three `capstan serve` processes on one Postgres and one public URL behave as one system:
//! what one does, the others see within a second; killing one loses no acknowledged write; a
//! rolling restart drops no request a live replica could have served.

use std::time::{Duration, Instant};

use capstan_core::crypto::MasterKey;
use capstan_core::rng::SystemRng;
use capstan_tests::db::{create_postgres_database, drop_postgres_database, unique_name};
use capstan_tests::server::verify_with_jwks;
use serde_json::{json, Value};
use tokio::process::Child;

use crate::binary::{capstan, start, terminate};

const PUBLIC: &str = "http://capstan.test";

struct Replica {
    child: Child,
    base: String,
}

async fn replica(url: &str, key: &str) -> Replica {
    let mut cmd = capstan(&[
        "serve",
        "--database-url",
        url,
        "--listen",
        "127.0.0.1:0",
        "--public-url",
        PUBLIC,
        "--no-migrate",
    ]);
    cmd.env("CAPSTAN_MASTER_KEY", key);
    let (child, addr, _) = start(cmd).await;
    Replica {
        child,
        base: format!("http://{addr}"),
    }
}

async fn token(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{base}/t/default/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
}

async fn token_text(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
    let r = token(http, base, id, secret).await.unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls `check` until it holds, for at most a second.
async fn within_a_second<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(1);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_postgres_behave_as_one() {
    let Ok(admin_url) = std::env::var("DATABASE_URL") else {
        eprintln!("SKIPPED three_replicas_on_one_postgres_behave_as_one: DATABASE_URL is not set");
        return;
    };
    let name = unique_name("capstan_t");
    let url = create_postgres_database(&admin_url, &name).await.unwrap();
    let key = MasterKey::generate(&SystemRng::new()).unwrap().to_base64();
    let out = capstan(&["migrate", "--database-url", &url])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let mut boot = capstan(&["bootstrap", "--database-url", &url, "--public-url", PUBLIC]);
    boot.env("CAPSTAN_MASTER_KEY", &key);
    let out = boot.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (aid, asecret) = (
        admin["client_id"].as_str().unwrap().to_owned(),
        admin["client_secret"].as_str().unwrap().to_owned(),
    );
    let a = replica(&url, &key).await;
    let b = replica(&url, &key).await;
    let c = replica(&url, &key).await;
    let http = reqwest::Client::new();
    let admin_token = token_text(&http, &a.base, &aid, &asecret).await;
    let api = |base: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // A client made on A gets tokens from B that verify on C (introspection and its JWKS).
    let (status, made) = api(
        &a.base,
        reqwest::Method::POST,
        "/v1/clients",
        Some(json!({"name": "orders", "audiences": ["orders-api"]})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let (oid, osecret) = (
        made["client_id"].as_str().unwrap().to_owned(),
        made["client_secret"].as_str().unwrap().to_owned(),
    );
    let t = token_text(&http, &b.base, &oid, &osecret).await;
    let jwks: Value = http
        .get(format!("{}/t/default/oauth2/jwks", c.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    verify_with_jwks(&jwks, &t, &format!("{PUBLIC}/t/default"), "orders-api").unwrap();
    let introspect = |base: String, tok: String| {
        let http = http.clone();
        let (oid, osecret) = (oid.clone(), osecret.clone());
        async move {
            http.post(format!("{base}/t/default/oauth2/introspect"))
                .basic_auth(oid, Some(osecret))
                .form(&[("token", tok.as_str())])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["active"]
                == true
        }
    };
    assert!(introspect(c.base.clone(), t.clone()).await);

    // A key rotation on A shows in every JWKS.
    let (status, rotated) = api(
        &a.base,
        reqwest::Method::POST,
        "/v1/keys/rotate",
        Some(json!({"publish_delay_seconds": 0})),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    let kid = rotated["kid"].as_str().unwrap().to_owned();
    for r in [&b, &c] {
        let base = r.base.clone();
        within_a_second("the rotated key in every JWKS", || {
            let (http, base, kid) = (http.clone(), base.clone(), kid.clone());
            async move {
                let j: String = http
                    .get(format!("{base}/t/default/oauth2/jwks"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                j.contains(&kid)
            }
        })
        .await;
    }

    // A revocation on B takes effect on C.
    let r = http
        .post(format!("{}/t/default/oauth2/revoke", b.base))
        .basic_auth(&oid, Some(&osecret))
        .form(&[("token", t.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    within_a_second("the revocation on C", || {
        let f = introspect(c.base.clone(), t.clone());
        async move { !f.await }
    })
    .await;

    // A policy change on A takes effect on C.
    let ask = json!({"principal": oid, "action": "orders:GetOrder",
        "resource": "crn:capstan:orders:default:order/1"});
    let (_, d) = api(
        &c.base,
        reqwest::Method::POST,
        "/v1/authorize",
        Some(ask.clone()),
    )
    .await;
    assert_eq!(d["decision"], "Deny");
    let (status, _) = api(
        &a.base,
        reqwest::Method::PUT,
        "/v1/policies/OrdersRead",
        Some(
            json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow",
            "Action": "orders:Get*", "Resource": "*"}}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = api(
        &a.base,
        reqwest::Method::PUT,
        &format!("/v1/principals/{oid}/policies/OrdersRead"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    within_a_second("the policy change on C", || {
        let f = api(
            &c.base,
            reqwest::Method::POST,
            "/v1/authorize",
            Some(ask.clone()),
        );
        async move { f.await.1["decision"] == "Allow" }
    })
    .await;

    // SIGKILL B right after it acknowledged a write: the write is there, A and C keep serving.
    let (status, late) = api(
        &b.base,
        reqwest::Method::POST,
        "/v1/clients",
        Some(json!({"name": "acknowledged", "audiences": ["x"]})),
    )
    .await;
    assert_eq!(status, 201);
    let mut b = b;
    b.child.start_kill().unwrap();
    let _ = b.child.wait().await;
    let late_id = late["client_id"].as_str().unwrap();
    let (status, _) = api(
        &a.base,
        reqwest::Method::GET,
        &format!("/v1/clients/{late_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "the acknowledged client survives the kill");
    for base in [&a.base, &c.base] {
        let r = token(&http, base, &oid, &osecret).await.unwrap();
        assert_eq!(r.status(), 200);
    }

    // Rolling restart of A under load, the way Kubernetes does it: A leaves the rotation (its
    // endpoint is removed during the preStop pause), then gets SIGTERM, then a new replica joins.
    // Every request of the load must succeed.
    let live = std::sync::Arc::new(std::sync::RwLock::new(vec![a.base.clone(), c.base.clone()]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4usize {
        let (http, stop, live, oid, osecret) = (
            http.clone(),
            stop.clone(),
            live.clone(),
            oid.clone(),
            osecret.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let base = {
                    let l = live.read().unwrap();
                    l[(worker + n) % l.len()].clone()
                };
                let r = token(&http, &base, &oid, &osecret)
                    .await
                    .unwrap_or_else(|e| panic!("a request to a live replica failed: {e}"));
                assert_eq!(r.status(), 200);
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    live.write().unwrap().retain(|b| *b != a.base);
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate(a.child).await;
    let a2 = replica(&url, &key).await;
    live.write().unwrap().push(a2.base.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        assert!(l.await.unwrap() > 0);
    }

    terminate(a2.child).await;
    terminate(c.child).await;
    let _ = drop_postgres_database(&admin_url, &name).await;
}
