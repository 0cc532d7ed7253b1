//! The config service over HTTP: compare-and-set, schemas, history/diff/rollback, SSE watch
//! with resume under concurrent writers, compaction resets, replica fan-out, long poll,
//! secrets (masked in answers, sealed at rest), rollouts and policy scoping.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use capstan_tests::{Creds, Ctx, TestServer};

capstan_tests::on_both_backends!(
    compare_and_set_and_patch,
    schema_rejects_with_a_clear_message,
    history_diff_and_rollback,
    watcher_resumes_without_gaps_under_concurrent_writers,
    compacted_since_gets_a_reset,
    write_on_one_replica_reaches_a_watcher_on_another,
    long_poll_answers_on_change_or_304,
    secrets_are_masked_and_sealed_at_rest,
    rollouts_target_by_tags_principals_and_percentage,
    policy_scopes_a_principal_to_its_namespace,
    slow_watcher_is_dropped_not_buffered,
    watchers_are_bounded_per_principal,
    narrow_grants_cannot_widen_through_rollouts_schemas_or_history,
    watch_ends_when_the_grant_goes_or_the_token_expires,
    writes_that_change_nothing_make_no_revision,
);

async fn admin_token(s: &TestServer) -> String {
    let admin = s.admin().await;
    s.token("default", &admin, &[]).await
}

/// A client with `policies` attached, and its token.
async fn principal_with(
    s: &TestServer,
    admin: &str,
    name: &str,
    policies: &[&str],
) -> (Creds, String) {
    let c = s
        .create_client(admin, json!({ "name": name, "audiences": ["capstan"] }))
        .await;
    for p in policies {
        let (status, v) = s
            .api(
                Method::PUT,
                &format!("/v1/principals/{}/policies/{p}", c.id),
                admin,
                None,
            )
            .await;
        assert!(status == 200 || status == 204, "{status} {v}");
    }
    let t = s.token("default", &c, &[]).await;
    (c, t)
}

async fn put(s: &TestServer, token: &str, path: &str, v: Value) -> (u16, Value) {
    s.api(Method::PUT, &format!("/v1/config/{path}"), token, Some(v))
        .await
}

async fn get(s: &TestServer, token: &str, path: &str) -> (u16, Value) {
    s.api(Method::GET, &format!("/v1/config/{path}"), token, None)
        .await
}

async fn compare_and_set_and_patch(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    let (status, v) = put(&s, &t, "payments/prod/pool", json!(5)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["revision"], 1);
    // Reads carry the revision as an ETag.
    let r = s
        .http
        .get(s.url("/v1/config/payments/prod"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["etag"], "\"1\"");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"revision": 1, "values": {"pool": 5}}));
    // If-None-Match with the current revision: 304.
    let r = s
        .http
        .get(s.url("/v1/config/payments/prod"))
        .bearer_auth(&t)
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // Compare-and-set: the right revision wins, a stale one gets 409.
    let cas = |rev: &str, v: Value| {
        s.http
            .put(s.url("/v1/config/payments/prod/pool"))
            .bearer_auth(&t)
            .header("if-match", rev.to_owned())
            .json(&v)
            .send()
    };
    let r = cas("\"1\"", json!(6)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let r = cas("\"1\"", json!(7)).await.unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "conflict");
    assert!(
        v["message"].as_str().unwrap().contains("revision is 2"),
        "{v}"
    );
    let (_, v) = get(&s, &t, "payments/prod/pool").await;
    assert_eq!(v, json!({"key": "pool", "value": 6, "revision": 2}));
    // Two concurrent CAS writers on the same revision: exactly one wins.
    let (a, b) = tokio::join!(cas("\"2\"", json!(100)), cas("\"2\"", json!(200)));
    let mut codes = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    codes.sort();
    assert_eq!(codes, [200, 409]);
    // PATCH: atomic, with expect_revision.
    let (status, v) = s
        .api(
            Method::PATCH,
            "/v1/config/payments/prod",
            &t,
            Some(json!({"set": {"a": 1, "b": {"x": [1, 2]}}, "delete": ["pool"], "expect_revision": 1})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    let (status, v) = s
        .api(
            Method::PATCH,
            "/v1/config/payments/prod",
            &t,
            Some(json!({"set": {"a": 1, "b": {"x": [1, 2]}}, "delete": ["pool"], "expect_revision": 3})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["revision"], 4);
    let (_, v) = get(&s, &t, "payments/prod").await;
    assert_eq!(v["values"], json!({"a": 1, "b": {"x": [1, 2]}}));
    // A refused patch changes nothing, and leaves no revision behind (gap-free).
    let (status, _) = s
        .api(
            Method::PATCH,
            "/v1/config/payments/prod",
            &t,
            Some(json!({"set": {"c": 1}, "delete": ["c"]})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, v) = s
        .api(Method::DELETE, "/v1/config/payments/prod/a", &t, None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["revision"], 5);
    let (status, _) = s
        .api(Method::DELETE, "/v1/config/payments/prod/a", &t, None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = get(&s, &t, "payments/prod/a").await;
    assert_eq!(status, 404);
    // Names are checked; endpoints' names are reserved.
    for path in [
        "pay%00ments/prod/k",
        "payments/prod/watch",
        "payments/schema/k",
        "payments/prod/a%2Fb",
    ] {
        let (status, v) = put(&s, &t, path, json!(1)).await;
        assert!(status == 400 || status == 405, "{path}: {status} {v}");
    }
    let (status, v) = put(
        &s,
        &t,
        &format!("payments/prod/{}", "k".repeat(300)),
        json!(1),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    // A value over the limit.
    let (status, v) = put(&s, &t, "payments/prod/big", json!("x".repeat(70_000))).await;
    assert_eq!(status, 413, "{v}");
    // Another environment has its own revisions.
    let (_, v) = put(&s, &t, "payments/staging/pool", json!(1)).await;
    assert_eq!(v["revision"], 1);
    // An environment never written reads as empty at revision 0.
    let (status, v) = get(&s, &t, "payments/dev").await;
    assert_eq!((status, v), (200, json!({"revision": 0, "values": {}})));
    s.shutdown().await;
}

async fn schema_rejects_with_a_clear_message(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    let (status, v) = put(&s, &t, "payments/prod/pool", json!(5)).await;
    assert_eq!(status, 200, "{v}");
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "pool": {"type": "integer", "minimum": 1, "maximum": 100},
            "mode": {"enum": ["fast", "safe"]}
        },
        "required": ["pool"]
    });
    // Not a schema: 400.
    let (status, v) = put(&s, &t, "payments/schema", json!({"type": 12})).await;
    assert_eq!(status, 400, "{v}");
    // Existing values violating it: 422, naming the environment.
    let (status, _) = put(&s, &t, "payments/prod/pool", json!(500)).await;
    assert_eq!(status, 200);
    let (status, v) = put(&s, &t, "payments/schema", schema.clone()).await;
    assert_eq!(status, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("`prod`"), "{v}");
    put(&s, &t, "payments/prod/pool", json!(5)).await;
    let (status, v) = put(&s, &t, "payments/schema", schema.clone()).await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = get(&s, &t, "payments/schema").await;
    assert_eq!(v, schema);
    // A violating write: 422 with the path and the rule.
    let (status, v) = put(&s, &t, "payments/prod/pool", json!(0)).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"], "schema_violation");
    assert_eq!(v["errors"][0]["path"], "/pool");
    assert_eq!(v["errors"][0]["rule"], "minimum");
    assert!(v["message"].as_str().unwrap().contains("/pool"), "{v}");
    let (status, v) = put(&s, &t, "payments/prod/mode", json!("turbo")).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["rule"], "enum");
    // Deleting a required key violates it too.
    let (status, v) = s
        .api(Method::DELETE, "/v1/config/payments/prod/pool", &t, None)
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["rule"], "required");
    // A new environment of the namespace is held to it as well.
    let (status, _) = put(&s, &t, "payments/staging/mode", json!("fast")).await;
    assert_eq!(status, 422);
    // Nothing refused was stored.
    let (_, v) = get(&s, &t, "payments/prod").await;
    assert_eq!(v["values"], json!({"pool": 5}));
    // Remote references are never fetched.
    let (status, v) = put(
        &s,
        &t,
        "other/schema",
        json!({"$ref": "http://127.0.0.1:1/schema.json"}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (status, _) = s
        .api(Method::DELETE, "/v1/config/payments/schema", &t, None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = put(&s, &t, "payments/prod/pool", json!(0)).await;
    assert_eq!(status, 200);
    s.shutdown().await;
}

async fn history_diff_and_rollback(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    put(&s, &t, "app/prod/a", json!(1)).await; // 1
    put(&s, &t, "app/prod/b", json!("x")).await; // 2
    put(&s, &t, "app/prod/a", json!(2)).await; // 3
    s.api(Method::DELETE, "/v1/config/app/prod/b", &t, None)
        .await; // 4
    let (status, h) = get(&s, &t, "app/prod/history").await;
    assert_eq!(status, 200, "{h}");
    let revs: Vec<i64> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revs, [4, 3, 2, 1]);
    assert_eq!(h["entries"][0]["keys"], json!(["b"]));
    assert_eq!(h["entries"][0]["kind"], "write");
    assert!(h["entries"][0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("svc_"));
    let (_, h) = get(&s, &t, "app/prod/history?limit=2&before=4").await;
    assert_eq!(h["entries"].as_array().unwrap().len(), 2);
    assert_eq!(h["entries"][0]["revision"], 3);
    let (status, d) = get(&s, &t, "app/prod/diff?from=2&to=4").await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        d["changes"],
        json!([{"key": "a", "before": 1, "after": 2}, {"key": "b", "before": "x"}])
    );
    // Rollback to 2: a new revision equal to revision 2.
    let (status, v) = s
        .api(
            Method::POST,
            "/v1/config/app/prod/rollback",
            &t,
            Some(json!({"to_revision": 2})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["revision"], 5);
    let (_, now) = get(&s, &t, "app/prod").await;
    assert_eq!(now["values"], json!({"a": 1, "b": "x"}));
    let (_, d) = get(&s, &t, "app/prod/diff?from=2&to=5").await;
    assert_eq!(d["changes"], json!([]));
    let (_, h) = get(&s, &t, "app/prod/history?limit=1").await;
    assert_eq!(h["entries"][0]["kind"], "rollback");
    let (status, _) = s
        .api(
            Method::POST,
            "/v1/config/app/prod/rollback",
            &t,
            Some(json!({"to_revision": 99})),
        )
        .await;
    assert_eq!(status, 404);
    s.shutdown().await;
}

/// A minimal SSE client over a reqwest response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug, Clone)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: Value,
}

impl Sse {
    async fn open(s: &TestServer, token: &str, path: &str, last: Option<i64>) -> Sse {
        let mut req = s
            .http
            .get(s.url(path))
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(l) = last {
            req = req.header("last-event-id", l.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (comments skipped), or None when the stream ends.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().into();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().into());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                        any = true;
                    }
                }
                if !any {
                    continue;
                }
                ev.data = serde_json::from_str(&data).unwrap_or(Value::Null);
                return Some(ev);
            }
            match self.resp.chunk().await {
                Ok(Some(c)) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                _ => return None,
            }
        }
    }

    async fn next_within(&mut self, d: Duration) -> SseEvent {
        tokio::time::timeout(d, self.next())
            .await
            .expect("no event in time")
            .expect("stream ended")
    }
}

/// Applies an event to a local copy of the values.
fn apply(values: &mut BTreeMap<String, Value>, ev: &SseEvent) -> i64 {
    match ev.event.as_str() {
        "reset" => {
            values.clear();
            for (k, v) in ev.data["values"].as_object().unwrap() {
                values.insert(k.clone(), v.clone());
            }
        }
        "change" => {
            for c in ev.data["changes"].as_array().unwrap() {
                let k = c["key"].as_str().unwrap().to_owned();
                if c["deleted"] == true {
                    values.remove(&k);
                } else {
                    values.insert(k, c["value"].clone());
                }
            }
        }
        other => panic!("unexpected event {other}: {:?}", ev.data),
    }
    let rev = ev.data["revision"].as_i64().unwrap();
    assert_eq!(ev.id.as_deref(), Some(rev.to_string().as_str()));
    rev
}

async fn watcher_resumes_without_gaps_under_concurrent_writers(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    put(&s, &t, "orders/prod/seed", json!(0)).await;
    let mut w = Sse::open(&s, &t, "/v1/config/orders/prod/watch", None).await;
    let mut values = BTreeMap::new();
    let first = w.next_within(Duration::from_secs(5)).await;
    assert_eq!(first.event, "reset");
    let mut last = apply(&mut values, &first);
    assert_eq!(last, 1);
    // Three writers, 20 writes each, concurrently.
    let writers: Vec<_> = (0..3)
        .map(|n| {
            let http = s.http.clone();
            let url = s.url("");
            let t = t.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    let r = http
                        .put(format!("{url}/v1/config/orders/prod/w{n}"))
                        .bearer_auth(&t)
                        .json(&json!(i))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    if i % 7 == 3 {
                        http.delete(format!("{url}/v1/config/orders/prod/w{n}"))
                            .bearer_auth(&t)
                            .send()
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    let total = 1 + 60 + 3 * 3; // seed, writes, deletes (i = 3, 10, 17)
    let mut seen = vec![last];
    let mut reconnects = 0;
    while last < total {
        // Drop the connection every 10 events and resume with Last-Event-ID.
        if seen.len() % 10 == 0 && reconnects < 5 {
            drop(w);
            reconnects += 1;
            w = Sse::open(&s, &t, "/v1/config/orders/prod/watch", Some(last)).await;
        }
        let ev = w.next_within(Duration::from_secs(10)).await;
        assert_eq!(ev.event, "change", "{:?}", ev.data);
        let rev = apply(&mut values, &ev);
        assert_eq!(rev, last + 1, "missed, duplicated or reordered");
        last = rev;
        seen.push(rev);
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(reconnects >= 3);
    // The local copy equals the server's.
    let (_, now) = get(&s, &t, "orders/prod").await;
    assert_eq!(now["revision"], total);
    assert_eq!(Value::Object(values.into_iter().collect()), now["values"]);
    s.shutdown().await;
}

async fn compacted_since_gets_a_reset(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings
        .service_config
        .insert("config".into(), json!({ "history_revisions": 3 }));
    let s = ctx.server_with(settings).await;
    let t = admin_token(&s).await;
    for i in 0..10 {
        put(&s, &t, "orders/prod/k", json!(i)).await;
    }
    s.service("config").housekeeping().await.unwrap();
    let (_, h) = get(&s, &t, "orders/prod/history").await;
    assert_eq!(h["oldest"], 8, "{h}");
    // Resuming from 2: the log no longer reaches back, so a reset with everything.
    let mut w = Sse::open(&s, &t, "/v1/config/orders/prod/watch?since=2", None).await;
    let ev = w.next_within(Duration::from_secs(5)).await;
    assert_eq!(ev.event, "reset");
    assert_eq!(ev.data["revision"], 10);
    assert_eq!(ev.data["values"], json!({"k": 9}));
    // Resuming from 8: the kept revisions 9 and 10.
    let mut w = Sse::open(&s, &t, "/v1/config/orders/prod/watch", Some(8)).await;
    let a = w.next_within(Duration::from_secs(5)).await;
    let b = w.next_within(Duration::from_secs(5)).await;
    assert_eq!((a.event.as_str(), b.event.as_str()), ("change", "change"));
    assert_eq!(
        a.data,
        json!({"revision": 9, "changes": [{"key": "k", "value": 8}]})
    );
    assert_eq!(b.data["revision"], 10);
    // Diff and rollback to a compacted revision: 404.
    let (status, _) = get(&s, &t, "orders/prod/diff?from=2").await;
    assert_eq!(status, 404);
    s.shutdown().await;
}

async fn write_on_one_replica_reaches_a_watcher_on_another(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.public_url = Some("http://capstan.test".into());
    let a = ctx.server_with(settings.clone()).await;
    let b = ctx.server_with(settings).await;
    let t = admin_token(&a).await;
    let mut w = Sse::open(&b, &t, "/v1/config/orders/prod/watch", None).await;
    let ev = w.next_within(Duration::from_secs(5)).await;
    assert_eq!(
        (ev.event.as_str(), &ev.data["revision"]),
        ("reset", &json!(0))
    );
    for i in 1..=3 {
        let (status, _) = put(&a, &t, "orders/prod/k", json!(i)).await;
        assert_eq!(status, 200);
        let ev = w.next_within(Duration::from_secs(3)).await;
        assert_eq!(ev.event, "change");
        assert_eq!(
            ev.data,
            json!({"revision": i, "changes": [{"key": "k", "value": i}]})
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

async fn long_poll_answers_on_change_or_304(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    put(&s, &t, "orders/prod/k", json!(1)).await;
    // Nothing newer than 1 within the wait: 304.
    let r = s
        .http
        .get(s.url("/v1/config/orders/prod?since=1&wait=300ms"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // Already newer: at once.
    let (status, v) = get(&s, &t, "orders/prod?since=0&wait=30s").await;
    assert_eq!((status, &v["revision"]), (200, &json!(1)));
    // A write while waiting: answered with it.
    let poll = {
        let http = s.http.clone();
        let url = s.url("/v1/config/orders/prod?since=1&wait=20s");
        let t = t.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = http.get(url).bearer_auth(&t).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap(),
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    put(&s, &t, "orders/prod/k", json!(2)).await;
    let (status, v, took) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["revision"], 2);
    assert_eq!(v["values"]["k"], 2);
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (status, _) = get(&s, &t, "orders/prod?since=1&wait=forever").await;
    assert_eq!(status, 400);
    s.shutdown().await;
}

async fn secrets_are_masked_and_sealed_at_rest(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    let secret = "s3cr3t-db-password-value";
    let (status, v) = put(
        &s,
        &t,
        "payments/prod/db_password?secret=true",
        json!(secret),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    put(&s, &t, "payments/prod/pool", json!(5)).await;
    // A schema annotation makes a key secret too, sealing what was stored clear.
    put(
        &s,
        &t,
        "payments/prod/api_key",
        json!("clear-then-sealed-key"),
    )
    .await;
    let (status, v) = put(
        &s,
        &t,
        "payments/schema",
        json!({"type": "object", "properties": {"api_key": {"type": "string", "x-capstan-secret": true}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // The administrator may read secrets.
    let (_, v) = get(&s, &t, "payments/prod").await;
    assert_eq!(v["values"]["db_password"], secret);
    assert_eq!(v["secrets"], json!(["api_key", "db_password"]));
    // A reader without config:ReadSecret sees them masked, in reads and in watches.
    let (_, reader) = principal_with(&s, &t, "reader", &["ConfigReadOnly"]).await;
    let (_, v) = get(&s, &t.clone(), "payments/prod/db_password").await;
    assert_eq!(v["value"], secret);
    let (status, v) = get(&s, &reader, "payments/prod/db_password").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["value"], "********");
    assert_eq!(
        (v["secret"].clone(), v["masked"].clone()),
        (json!(true), json!(true))
    );
    let (_, v) = get(&s, &reader, "payments/prod").await;
    assert_eq!(v["values"]["db_password"], "********");
    assert_eq!(v["values"]["api_key"], "********");
    assert_eq!(v["values"]["pool"], 5);
    let mut w = Sse::open(&s, &reader, "/v1/config/payments/prod/watch", None).await;
    let ev = w.next_within(Duration::from_secs(5)).await;
    assert_eq!(ev.data["values"]["db_password"], "********");
    let mut wa = Sse::open(&s, &t, "/v1/config/payments/prod/watch", None).await;
    wa.next_within(Duration::from_secs(5)).await;
    put(
        &s,
        &t,
        "payments/prod/db_password",
        json!("rotated-password-2"),
    )
    .await;
    let ev = w.next_within(Duration::from_secs(5)).await;
    assert_eq!(ev.data["changes"][0]["value"], "********");
    assert_eq!(ev.data["changes"][0]["masked"], true);
    let ev = wa.next_within(Duration::from_secs(5)).await;
    assert_eq!(ev.data["changes"][0]["value"], "rotated-password-2");
    // Writing a secret key without ?secret keeps it secret.
    let (_, v) = get(&s, &reader, "payments/prod/db_password").await;
    assert_eq!(v["masked"], true);
    // At rest: no clear text in any config table.
    let db = ctx.db();
    for (table, col) in [("config_values", "value"), ("config_log", "body")] {
        let rows: Vec<String> = capstan_db::on_pool!(&db, |p| {
            sqlx::query_scalar(&format!("SELECT {col} FROM {table}"))
                .fetch_all(p)
                .await
                .unwrap()
        });
        assert!(!rows.is_empty());
        for r in rows {
            // Even the revision written before the schema sealed api_key was resealed.
            for clear in [secret, "rotated-password-2", "clear-then-sealed-key"] {
                assert!(!r.contains(clear), "{table} holds a secret in clear: {r}");
            }
        }
    }
    let sealed: Vec<(String, bool)> = capstan_db::on_pool!(&db, |p| {
        sqlx::query_as("SELECT key, secret FROM config_values ORDER BY key")
            .fetch_all(p)
            .await
            .unwrap()
    });
    assert_eq!(
        sealed,
        [
            ("api_key".into(), true),
            ("db_password".into(), true),
            ("pool".into(), false)
        ]
    );
    s.shutdown().await;
}

async fn rollouts_target_by_tags_principals_and_percentage(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    put(&s, &t, "orders/prod/limit", json!(10)).await;
    let (canary, canary_t) = principal_with(&s, &t, "canary", &["ConfigReadOnly"]).await;
    let (other, other_t) = principal_with(&s, &t, "other", &["ConfigReadOnly"]).await;
    let (status, v) = s
        .api(
            Method::PUT,
            &format!("/v1/principals/{}/tags", canary.id),
            &t,
            Some(json!({"tags": {"tier": "canary"}})),
        )
        .await;
    assert!(status == 200 || status == 204, "{v}");
    let mut w_canary = Sse::open(&s, &canary_t, "/v1/config/orders/prod/watch", None).await;
    let mut w_other = Sse::open(&s, &other_t, "/v1/config/orders/prod/watch", None).await;
    w_canary.next_within(Duration::from_secs(5)).await;
    w_other.next_within(Duration::from_secs(5)).await;
    // Bad targeting is refused.
    let (status, _) = put(
        &s,
        &t,
        "orders/prod/rollouts/bad",
        json!({"match": {"percentage": 10, "tags": {"a": "b"}}, "set": {"limit": 1}}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, v) = put(
        &s,
        &t,
        "orders/prod/rollouts/canary",
        json!({"match": {"tags": {"tier": "canary"}}, "set": {"limit": 20}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["revision"], 2);
    let (_, v) = get(&s, &canary_t, "orders/prod").await;
    assert_eq!(v["values"]["limit"], 20);
    let (_, v) = get(&s, &other_t, "orders/prod").await;
    assert_eq!(v["values"]["limit"], 10);
    let ev = w_canary.next_within(Duration::from_secs(5)).await;
    assert_eq!(
        ev.data,
        json!({"revision": 2, "changes": [{"key": "limit", "value": 20}]})
    );
    let ev = w_other.next_within(Duration::from_secs(5)).await;
    assert_eq!(
        ev.data,
        json!({"revision": 2, "changes": [{"key": "limit", "value": 10}]})
    );
    // By principal id.
    put(
        &s,
        &t,
        "orders/prod/rollouts/named",
        json!({"match": {"principals": [other.id]}, "set": {"flag": true}}),
    )
    .await;
    let (_, v) = get(&s, &other_t, "orders/prod/flag").await;
    assert_eq!(v["value"], true);
    let (status, _) = get(&s, &canary_t, "orders/prod/flag").await;
    assert_eq!(status, 404);
    // By percentage: a stable hash of principal id and rollout name.
    put(
        &s,
        &t,
        "orders/prod/rollouts/half",
        json!({"match": {"percentage": 50}, "set": {"pct": "new"}}),
    )
    .await;
    for (id, token) in [(&canary.id, &canary_t), (&other.id, &other_t)] {
        let inside = capstan_config::model::bucket(id, "half") < 50;
        let (_, v) = get(&s, token, "orders/prod").await;
        assert_eq!(v["values"].get("pct").is_some(), inside, "{id}: {v}");
    }
    let (_, list) = get(&s, &t, "orders/prod/rollouts").await;
    assert_eq!(list.as_array().unwrap().len(), 3);
    // Promote: the rollout's values become the base for everyone, as a new revision.
    let (status, v) = s
        .api(
            Method::POST,
            "/v1/config/orders/prod/rollouts/canary/promote",
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = get(&s, &other_t, "orders/prod/limit").await;
    assert_eq!(v["value"], 20);
    // Abort: dropped, nobody sees it.
    let (status, _) = s
        .api(
            Method::POST,
            "/v1/config/orders/prod/rollouts/named/abort",
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = get(&s, &other_t, "orders/prod/flag").await;
    assert_eq!(status, 404);
    let (status, _) = s
        .api(
            Method::POST,
            "/v1/config/orders/prod/rollouts/named/abort",
            &t,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (_, h) = get(&s, &t, "orders/prod/history?limit=2").await;
    assert_eq!(h["entries"][0]["kind"], "abort");
    assert_eq!(h["entries"][1]["kind"], "promote");
    // A reader may not manage rollouts.
    let (status, _) = put(
        &s,
        &canary_t,
        "orders/prod/rollouts/mine",
        json!({"match": {"percentage": 100}, "set": {"limit": 999}}),
    )
    .await;
    assert_eq!(status, 403);
    s.shutdown().await;
}

async fn policy_scopes_a_principal_to_its_namespace(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    put(&s, &t, "payments/prod/key", json!("p")).await;
    let (status, v) = s
        .api(
            Method::PUT,
            "/v1/policies/OrdersConfig",
            &t,
            Some(
                json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow",
                "Action": ["config:GetValue", "config:PutValue", "config:Watch"],
                "Resource": "crn:capstan:config:default:namespace/orders/*"}}),
            ),
        )
        .await;
    assert!(status == 200 || status == 201, "{v}");
    let (_, orders_t) = principal_with(&s, &t, "orders", &["OrdersConfig"]).await;
    let (status, v) = put(&s, &orders_t, "orders/prod/k", json!(1)).await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = get(&s, &orders_t, "orders/prod").await;
    assert_eq!(status, 200);
    for (method, path) in [
        (Method::GET, "/v1/config/payments/prod"),
        (Method::GET, "/v1/config/payments/prod/key"),
        (Method::PUT, "/v1/config/payments/prod/key"),
        (Method::GET, "/v1/config/payments/prod/watch"),
        (Method::DELETE, "/v1/config/orders/prod/k"),
        (Method::GET, "/v1/config/orders/prod/history"),
        (Method::PUT, "/v1/config/orders/schema"),
    ] {
        let body = (method == Method::PUT).then(|| json!({"type": "object"}));
        let (status, v) = s.api(method, path, &orders_t, body).await;
        assert_eq!(status, 403, "{path}: {v}");
        assert!(v["action"].as_str().unwrap().starts_with("config:"), "{v}");
    }
    // Without a token: 401.
    let r = s
        .http
        .get(s.url("/v1/config/orders/prod"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    s.shutdown().await;
}

async fn slow_watcher_is_dropped_not_buffered(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings
        .service_config
        .insert("config".into(), json!({ "watch_buffer": 4 }));
    let s = ctx.server_with(settings).await;
    let t = admin_token(&s).await;
    put(&s, &t, "orders/prod/k", json!(0)).await;
    let mut w = Sse::open(&s, &t, "/v1/config/orders/prod/watch", None).await;
    w.next_within(Duration::from_secs(5)).await;
    // The watcher reads nothing while 200 large revisions are written.
    let big = "x".repeat(60_000);
    for i in 0..200 {
        let (status, _) = put(&s, &t, "orders/prod/k", json!(format!("{i}{big}"))).await;
        assert_eq!(status, 200);
    }
    // It is told it was dropped (after whatever fit in its socket), and the stream ends.
    let mut last = 1;
    loop {
        let ev = w.next_within(Duration::from_secs(10)).await;
        if ev.event == "dropped" {
            assert!(ev.data["reason"].as_str().unwrap().contains("behind"));
            break;
        }
        let rev = ev.data["revision"].as_i64().unwrap();
        assert_eq!(rev, last + 1);
        last = rev;
    }
    assert!(last < 201, "the watcher was never dropped");
    assert!(w.next().await.is_none());
    s.shutdown().await;
}

async fn watchers_are_bounded_per_principal(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.service_config.insert(
        "config".into(),
        json!({ "max_watchers_per_principal": 2, "max_watchers": 3 }),
    );
    let s = ctx.server_with(settings).await;
    let t = admin_token(&s).await;
    let (_, other) = principal_with(&s, &t, "other", &["ConfigReadOnly"]).await;
    let (_, third) = principal_with(&s, &t, "third", &["ConfigReadOnly"]).await;
    let a = Sse::open(&s, &t, "/v1/config/orders/prod/watch", None).await;
    let _b = Sse::open(&s, &t, "/v1/config/orders/prod/watch", None).await;
    let watch = |token: &str| {
        s.http
            .get(s.url("/v1/config/orders/prod/watch"))
            .bearer_auth(token)
            .send()
    };
    let r = watch(&t).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Another principal still gets one, up to the server's limit.
    let _c = Sse::open(&s, &other, "/v1/config/orders/prod/watch", None).await;
    assert_eq!(watch(&third).await.unwrap().status(), 429);
    // A closed stream frees its slot.
    drop(a);
    let mut freed = false;
    for _ in 0..50 {
        let r = watch(&t).await.unwrap();
        if r.status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "a closed watch stream kept its slot");
    s.shutdown().await;
}

/// A policy document allowing `actions` on `resource`.
async fn put_policy(s: &TestServer, admin: &str, name: &str, statements: Value) {
    let (status, v) = s
        .api(
            Method::PUT,
            &format!("/v1/policies/{name}"),
            admin,
            Some(json!({"Version": "2012-10-17", "Statement": statements})),
        )
        .await;
    assert!(status == 200 || status == 201, "{v}");
}

async fn narrow_grants_cannot_widen_through_rollouts_schemas_or_history(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    put(&s, &t, "orders/prod/db.host", json!("db-1")).await;
    put(&s, &t, "orders/prod/limit", json!(10)).await;
    // May manage rollouts and write `limit`, nothing else.
    put_policy(
        &s,
        &t,
        "RolloutOps",
        json!([
            {"Effect": "Allow", "Action": ["config:ManageRollout", "config:GetValue", "config:GetRollout"],
             "Resource": "crn:capstan:config:default:namespace/orders/env/prod/key/*"},
            {"Effect": "Allow", "Action": "config:PutValue",
             "Resource": "crn:capstan:config:default:namespace/orders/env/prod/key/limit"}
        ]),
    )
    .await;
    let (_, ops) = principal_with(&s, &t, "ops", &["RolloutOps"]).await;
    // A rollout may not set a key its author may not write (everyone would read it).
    let (status, v) = put(
        &s,
        &ops,
        "orders/prod/rollouts/evil",
        json!({"match": {"percentage": 100}, "set": {"db.host": "attacker"}}),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["action"], "config:PutValue");
    let (status, v) = put(
        &s,
        &ops,
        "orders/prod/rollouts/ok",
        json!({"match": {"percentage": 100}, "set": {"limit": 20}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // Promoting a rollout another principal made with keys the caller may not write: 403.
    put(
        &s,
        &t,
        "orders/prod/rollouts/admins",
        json!({"match": {"percentage": 100}, "set": {"db.host": "db-2"}}),
    )
    .await;
    let (status, v) = s
        .api(
            Method::POST,
            "/v1/config/orders/prod/rollouts/admins/promote",
            &ops,
            None,
        )
        .await;
    assert_eq!(status, 403, "{v}");
    let (status, _) = s
        .api(
            Method::POST,
            "/v1/config/orders/prod/rollouts/ok/promote",
            &ops,
            None,
        )
        .await;
    assert_eq!(status, 200);

    // A key made secret later: history and rollback do not show or unseal it.
    put(&s, &t, "pay/prod/token", json!("early-clear-token")).await; // 1
    put(&s, &t, "pay/prod/other", json!(1)).await; // 2
    let (status, v) = put(&s, &t, "pay/prod/token?secret=true", json!("sealed-token")).await; // 3
    assert_eq!(status, 200, "{v}");
    let (_, reader) = principal_with(&s, &t, "reader", &["ConfigReadOnly"]).await;
    put_policy(
        &s,
        &t,
        "History",
        json!([{"Effect": "Allow", "Action": ["config:ListHistory", "config:GetValue"],
                "Resource": "crn:capstan:config:default:namespace/pay/*"}]),
    )
    .await;
    let (_, historian) = principal_with(&s, &t, "historian", &["History"]).await;
    let (status, d) = get(&s, &historian, "pay/prod/diff?from=1&to=3").await;
    assert_eq!(status, 200, "{d}");
    assert!(!d.to_string().contains("early-clear-token"), "{d}");
    assert!(!d.to_string().contains("sealed-token"), "{d}");
    let (_, d) = get(&s, &historian, "pay/prod/diff?from=0&to=1").await;
    assert_eq!(d["changes"][0]["after"], "********", "{d}");
    let (status, v) = s
        .api(
            Method::POST,
            "/v1/config/pay/prod/rollback",
            &t,
            Some(json!({"to_revision": 1})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = get(&s, &reader, "pay/prod/token").await;
    assert_eq!(v["value"], "********", "rollback unsealed the key: {v}");
    // Writing it again without ?secret keeps it sealed.
    put(&s, &t, "pay/prod/token", json!("third")).await;
    let (_, v) = get(&s, &reader, "pay/prod/token").await;
    assert_eq!(v["masked"], true);
    // A schema editor who may not read the secrets cannot probe them with 422s.
    put_policy(
        &s,
        &t,
        "SchemaOnly",
        json!([{"Effect": "Allow", "Action": "config:PutSchema",
                "Resource": "crn:capstan:config:default:namespace/pay/schema"}]),
    )
    .await;
    let (_, editor) = principal_with(&s, &t, "editor", &["SchemaOnly"]).await;
    let (status, v) = put(
        &s,
        &editor,
        "pay/schema",
        json!({"properties": {"token": {"pattern": "^t"}}}),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["action"], "config:ReadSecret");
    // Watching or diffing needs GetValue too.
    put_policy(
        &s,
        &t,
        "WatchOnly",
        json!([{"Effect": "Allow", "Action": ["config:Watch", "config:ListHistory"],
                "Resource": "crn:capstan:config:default:namespace/pay/*"}]),
    )
    .await;
    let (_, watcher) = principal_with(&s, &t, "watcher", &["WatchOnly"]).await;
    for path in ["pay/prod/watch", "pay/prod/diff?from=1"] {
        let (status, v) = get(&s, &watcher, path).await;
        assert_eq!(status, 403, "{path}: {v}");
    }
    // Revisions are never negative.
    for path in [
        "pay/prod/diff?from=-1",
        "pay/prod/diff?from=0&to=-9223372036854775808",
        "pay/prod?since=-1",
    ] {
        let (status, v) = get(&s, &t, path).await;
        assert_eq!(status, 400, "{path}: {v}");
    }
    let (status, _) = s
        .api(
            Method::POST,
            "/v1/config/pay/prod/rollback",
            &t,
            Some(json!({"to_revision": i64::MIN})),
        )
        .await;
    assert_eq!(status, 400);
    s.shutdown().await;
}

async fn watch_ends_when_the_grant_goes_or_the_token_expires(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings
        .service_config
        .insert("config".into(), json!({ "reauthorize_seconds": 1 }));
    let s = ctx.server_with(settings).await;
    let t = admin_token(&s).await;
    put(&s, &t, "orders/prod/k", json!(1)).await;
    let (reader, reader_t) = principal_with(&s, &t, "reader", &["ConfigReadOnly"]).await;
    let mut w = Sse::open(&s, &reader_t, "/v1/config/orders/prod/watch", None).await;
    assert_eq!(w.next_within(Duration::from_secs(5)).await.event, "reset");
    let (status, _) = s
        .api(
            Method::DELETE,
            &format!("/v1/principals/{}/policies/ConfigReadOnly", reader.id),
            &t,
            None,
        )
        .await;
    assert!(status == 200 || status == 204);
    let ev = w.next_within(Duration::from_secs(10)).await;
    assert_eq!(ev.event, "dropped", "{:?}", ev.data);
    assert!(ev.data["reason"].as_str().unwrap().contains("no longer"));
    assert!(w.next().await.is_none());
    // A token about to expire: the stream ends when it does.
    let (_, fresh) = principal_with(&s, &t, "fresh", &["ConfigReadOnly"]).await;
    use capstan_core::clock::Clock;
    let ttl = 900; // the default token lifetime
    s.clock.advance(ttl - 2);
    let mut w = Sse::open(&s, &fresh, "/v1/config/orders/prod/watch", None).await;
    assert_eq!(w.next_within(Duration::from_secs(5)).await.event, "reset");
    let ev = w.next_within(Duration::from_secs(10)).await;
    assert_eq!(ev.event, "dropped", "{:?}", ev.data);
    assert!(ev.data["reason"].as_str().unwrap().contains("expired"));
    let _ = s.clock.now();
    s.shutdown().await;
}

async fn writes_that_change_nothing_make_no_revision(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    let (_, v) = put(&s, &t, "orders/prod/k", json!({"a": 1})).await;
    assert_eq!(v["revision"], 1);
    let (status, v) = put(&s, &t, "orders/prod/k", json!({"a": 1})).await;
    assert_eq!((status, &v["revision"]), (200, &json!(1)));
    let (_, v) = s
        .api(
            Method::PATCH,
            "/v1/config/orders/prod",
            &t,
            Some(json!({"set": {"k": {"a": 1}}, "delete": ["missing"]})),
        )
        .await;
    assert_eq!(v["revision"], 1);
    let (_, h) = get(&s, &t, "orders/prod/history").await;
    assert_eq!(h["entries"].as_array().unwrap().len(), 1);
    s.shutdown().await;
}
