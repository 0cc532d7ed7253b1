//! The platform kit seen from outside: error bodies and request ids, body limits and content
//! types on every route, conflicts under concurrency, and a database outage.

use std::time::{Duration, Instant};

use capstan_tests::db::{create_postgres_database, drop_postgres_database, unique_name};
use capstan_tests::{Ctx, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

capstan_tests::on_both_backends!(
    fallbacks_are_json_with_request_ids,
    oversized_bodies_are_413_and_wrong_content_types_415_on_every_route,
    invalid_json_names_its_path,
    concurrent_puts_of_one_policy_across_two_servers_never_fail,
    openapi_lists_exactly_the_routes_served,
);

async fn admin_token(s: &TestServer) -> String {
    let admin = s.admin().await;
    s.token("default", &admin, &[]).await
}

async fn fallbacks_are_json_with_request_ids(ctx: &Ctx) {
    let s = ctx.server().await;
    for (method, path, status, code) in [
        (Method::GET, "/nope", 404, "not_found"),
        (Method::DELETE, "/healthz", 405, "method_not_allowed"),
        (Method::PATCH, "/v1/clients", 405, "method_not_allowed"),
    ] {
        let r = s.http.request(method, s.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert!(r.headers().contains_key("x-request-id"), "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
    s.shutdown().await;
}

/// Every `/v1` operation of the OpenAPI document, with its path parameters filled in.
fn v1_operations(doc: &Value) -> Vec<(Method, String, bool)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for (m, op) in item.as_object().unwrap() {
            let method = match m.as_str() {
                "post" => Method::POST,
                "put" => Method::PUT,
                "patch" => Method::PATCH,
                "delete" => Method::DELETE,
                "get" => Method::GET,
                _ => continue,
            };
            ops.push((method, concrete.clone(), op.get("requestBody").is_some()));
        }
    }
    ops
}

async fn oversized_bodies_are_413_and_wrong_content_types_415_on_every_route(ctx: &Ctx) {
    let s = ctx.server().await;
    let token = admin_token(&s).await;
    let doc: Value = s.get_json("/openapi.json").await;
    let ops = v1_operations(&doc);
    assert!(ops.len() > 30, "the document lists the API: {}", ops.len());
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(70 * 1024));
    let mut with_body = 0;
    for (method, path, has_body) in ops {
        // The OTLP receiver speaks OTLP: its own body limit, google.rpc.Status errors, protobuf
        // or JSON (tests/it/trace.rs).
        if path == "/v1/traces" {
            continue;
        }
        let r = s
            .http
            .request(method.clone(), s.url(&path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "payload_too_large", "{method} {path}");
        if has_body {
            with_body += 1;
            let r = s
                .http
                .request(method.clone(), s.url(&path))
                .bearer_auth(&token)
                .header("content-type", "text/plain")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 415, "{method} {path}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"], "unsupported_media_type", "{method} {path}");
        }
    }
    assert!(with_body >= 10, "{with_body} operations take a body");
    s.shutdown().await;
}

async fn invalid_json_names_its_path(ctx: &Ctx) {
    let s = ctx.server().await;
    let token = admin_token(&s).await;
    let (status, body) = s
        .api(
            Method::POST,
            "/v1/clients",
            &token,
            Some(json!({"name": "x", "audiences": ["a", 7]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("$.audiences[1]"), "{msg}");
    // An optional body left empty is fine whatever its declared type (curl -d '').
    let r = s
        .http
        .post(s.url("/v1/keys/rotate"))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (status, body) = s
        .api(
            Method::POST,
            "/v1/authorize",
            &token,
            Some(json!({"principal": 5, "action": "a:b", "resource": "r"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("$.principal"),
        "{body}"
    );
    s.shutdown().await;
}

async fn concurrent_puts_of_one_policy_across_two_servers_never_fail(ctx: &Ctx) {
    // Replicas share one public URL, so a token of one is valid on the other.
    let mut settings = ctx.settings();
    settings.public_url = Some("http://capstan.test".into());
    let a = ctx.server_with(settings.clone()).await;
    let b = ctx.server_with(settings).await;
    let token = admin_token(&a).await;
    let doc = json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow",
        "Action": "orders:Get*", "Resource": "*"}});
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (http, url) = if i % 2 == 0 {
            (a.http.clone(), a.url("/v1/policies/Shared"))
        } else {
            (b.http.clone(), b.url("/v1/policies/Shared"))
        };
        let (token, doc) = (token.clone(), doc.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .put(url)
                .bearer_auth(token)
                .json(&doc)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        versions.push(body["version"].as_i64().unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=64).collect::<Vec<_>>());
    a.shutdown().await;
    b.shutdown().await;
}

/// A database outage: the server's role loses its logins and its connections are killed. Writes
/// answer 503 with `Retry-After` at once, and the body says nothing of the database; JWKS and
/// introspection keep answering from memory; writes succeed again soon after logins return.
/// Postgres only: SQLite has no server to lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_503_and_recovers() {
    let Ok(admin_url) = std::env::var("DATABASE_URL") else {
        eprintln!("SKIPPED database_outage_is_503_and_recovers: DATABASE_URL is not set");
        return;
    };
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    let role = unique_name("capstan_role");
    let name = unique_name("capstan_t");
    sqlx::query(&format!("CREATE ROLE \"{role}\" LOGIN"))
        .execute(&admin)
        .await
        .unwrap();
    let db_url = create_postgres_database(&admin_url, &name).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{name}\" OWNER TO \"{role}\""))
        .execute(&admin)
        .await
        .unwrap();
    // The server connects as the role.
    let url = db_url.replacen("://", &format!("://{role}@"), 1);
    let url = match url.split_once('@') {
        // Drop any user the admin URL carried: `role@user@host` → `role@host`.
        Some((head, rest)) if rest.contains('@') => {
            format!("{head}@{}", rest.split_once('@').unwrap().1)
        }
        _ => url,
    };
    let ctx = Ctx::postgres().await.unwrap();
    let mut settings = ctx.settings();
    settings.database_url = url;
    let s = ctx.server_with(settings).await;
    let admin_creds = s.admin().await;
    let token = s.token("default", &admin_creds, &[]).await;
    let new_client = json!({"name": "during-outage", "audiences": ["api"]});
    let (status, _) = s
        .api(
            Method::POST,
            "/v1/clients",
            &token,
            Some(new_client.clone()),
        )
        .await;
    assert_eq!(status, 201);
    // Let the feed deliver the setup's own changes (they evict cache entries), then warm the
    // caches that must keep answering.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.introspect("default", &admin_creds, &token).await["active"],
        true
    );
    let _ = s.jwks("default").await;

    sqlx::query(&format!("ALTER ROLE \"{role}\" NOLOGIN"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&role)
        .execute(&admin)
        .await
        .unwrap();

    let started = Instant::now();
    let r = s
        .http
        .post(s.url("/v1/clients"))
        .bearer_auth(&token)
        .json(&new_client)
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"], "unavailable", "{text}");
    assert!(body["request_id"].is_string(), "{text}");
    for leak in [
        role.as_str(),
        "sqlx",
        "login",
        "connection",
        "postgres",
        "database",
    ] {
        assert!(!text.to_lowercase().contains(leak), "{leak} in {text}");
    }
    // Served from memory: the JWKS and the introspection of a known token.
    let jwks = s
        .http
        .get(s.url("/t/default/oauth2/jwks"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
    assert_eq!(
        s.introspect("default", &admin_creds, &token).await["active"],
        true
    );

    sqlx::query(&format!("ALTER ROLE \"{role}\" LOGIN"))
        .execute(&admin)
        .await
        .unwrap();
    let back = Instant::now();
    loop {
        let (status, body) = s
            .api(
                Method::POST,
                "/v1/clients",
                &token,
                Some(new_client.clone()),
            )
            .await;
        if status == 201 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "writes did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.shutdown().await;
    ctx.cleanup().await;
    let _ = drop_postgres_database(&admin_url, &name).await;
    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{role}\""))
        .execute(&admin)
        .await;
}

/// `/openapi.json` against the router: the same paths, and on each path exactly the methods
/// that do not fall through to the 405 fallback.
async fn openapi_lists_exactly_the_routes_served(ctx: &Ctx) {
    let s = ctx.server().await;
    let token = admin_token(&s).await;
    let doc: Value = s.get_json("/openapi.json").await;
    let documented = doc["paths"].as_object().unwrap();
    let mut served: Vec<String> = s
        .server
        .app
        .paths()
        .iter()
        .map(|p| p.replace("{*", "{"))
        .collect();
    served.sort();
    let mut listed: Vec<String> = documented.keys().cloned().collect();
    listed.sort();
    assert_eq!(served, listed, "served paths vs /openapi.json");
    for path in &served {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let r = s
                .http
                .request(method.clone(), s.url(&concrete))
                .bearer_auth(&token)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            // A watch stream never ends: its headers say it is routed.
            let streaming = r
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let body: Value = if streaming {
                Value::Null
            } else {
                r.json().await.unwrap_or(Value::Null)
            };
            let routed = status != 405 && body["message"] != "no such endpoint";
            let key = method.as_str().to_ascii_lowercase();
            assert_eq!(
                routed,
                documented[path].get(&key).is_some(),
                "{method} {path}: answered {status} {body}"
            );
        }
    }
    s.shutdown().await;
}
