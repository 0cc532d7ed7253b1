//! The trace collector from its clients' side: spans sent by the SDK's real exporter
//! (`capstan_sdk::telemetry`, OTLP/HTTP protobuf with a token from a `TokenSource`) and read back
//! through Jaeger's query API, OTLP JSON and `capstanctl traces`.

use std::time::Duration;

use capstan_sdk::proto::trace::{
    find_tag, JaegerResponse, RefType, TagValue, Trace, PRINCIPAL_TAG,
};
use capstan_sdk::telemetry::opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use capstan_sdk::telemetry::opentelemetry::{Context, KeyValue};
use capstan_sdk::telemetry::{self, Telemetry};
use capstan_sdk::{Capstan, Clock as _, Error, SystemClock, TokenSource};
use capstan_tests::{on_both_backends, Creds, Ctx, TestServer};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::cli::Ctl;

on_both_backends!(
    sdk_spans_come_back_from_jaegers_api_and_as_otlp,
    capstanctl_traces_lists_searches_and_shows_a_tree,
);

/// The SDK's exporter acting as `creds`, with the server's clock (tokens expire on it).
fn telemetry_as(s: &TestServer, creds: &Creds, service: &str) -> (Telemetry, TokenSource) {
    let capstan = Capstan::new(&s.base, "default")
        .unwrap()
        .with_clock(s.clock.clone());
    let tokens = capstan.token_source(&creds.id, &creds.secret, &[]);
    let t = telemetry::init(&capstan, tokens.clone(), service).unwrap();
    (t, tokens)
}

/// A request as a service traces it: a server span and a child that failed. The trace id.
fn checkout(t: &Telemetry, order: &str) -> String {
    let tracer = t.tracer("trace-client-test");
    let root = tracer
        .span_builder("POST /checkout")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("order.id", order.to_owned()),
            KeyValue::new("order.items", 3_i64),
        ])
        .start(&tracer);
    let id = root.span_context().trace_id().to_string();
    let cx = Context::current_with_span(root);
    let mut child = tracer.start_with_context("charge card", &cx);
    child.set_attribute(KeyValue::new("payment.provider", "acme"));
    child.set_status(Status::error("card declined"));
    child.end();
    cx.span().end();
    id
}

/// `GET path?query` with a bearer token: status and JSON.
async fn get(s: &TestServer, token: &str, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
    let r = s
        .http
        .get(s.url(path))
        .query(query)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET path?query`, which must answer 200 with a `T`.
async fn get_ok<T: DeserializeOwned>(
    s: &TestServer,
    token: &str,
    path: &str,
    query: &[(&str, &str)],
) -> T {
    let (status, v) = get(s, token, path, query).await;
    assert_eq!(status, 200, "{path}: {v}");
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{path}: {e}: {v}"))
}

/// The trace `checkout` sent, as Jaeger's JSON, sent by `principal`.
fn assert_checkout(t: &Trace, id: &str, order: &str, principal: &str, now_us: u64) {
    assert_eq!(t.trace_id, id);
    assert_eq!(t.spans.len(), 2, "{t:?}");
    let roots = t.roots();
    assert_eq!(roots.len(), 1, "{t:?}");
    let root = roots[0];
    assert_eq!(root.operation_name, "POST /checkout");
    assert_eq!(root.trace_id, id);
    let tag = |s: &capstan_sdk::proto::trace::Span, k: &str| find_tag(&s.tags, k).cloned();
    assert_eq!(tag(root, "order.id"), Some(TagValue::String(order.into())));
    assert_eq!(tag(root, "order.items"), Some(TagValue::Int64(3)));
    assert_eq!(
        tag(root, "span.kind"),
        Some(TagValue::String("server".into()))
    );
    assert!(root.references.is_empty(), "{:?}", root.references);
    // Times are microseconds of the real clock, within the last minute.
    assert!(
        root.start_time <= now_us && root.start_time + 60_000_000 > now_us,
        "{} vs {now_us}",
        root.start_time
    );

    let child = t.spans.iter().find(|s| s.span_id != root.span_id).unwrap();
    assert_eq!(child.operation_name, "charge card");
    assert_eq!(child.references.len(), 1);
    assert_eq!(child.references[0].ref_type, RefType::ChildOf);
    assert_eq!(child.parent_span_id(), Some(root.span_id.as_str()));
    assert_eq!(
        tag(child, "payment.provider"),
        Some(TagValue::String("acme".into()))
    );
    assert_eq!(
        tag(child, "otel.status_code"),
        Some(TagValue::String("ERROR".into()))
    );
    assert_eq!(
        tag(child, "otel.status_description"),
        Some(TagValue::String("card declined".into()))
    );
    assert_eq!(tag(child, "error"), Some(TagValue::Bool(true)));
    assert!(child.start_time >= root.start_time && child.end_time() <= root.end_time());

    for s in &t.spans {
        let p = t.process(s).unwrap();
        assert_eq!(p.service_name, "checkout");
        assert_eq!(
            find_tag(&p.tags, PRINCIPAL_TAG),
            Some(&TagValue::String(principal.into())),
            "the sender, as the collector saw it"
        );
    }
}

/// `GET /api/traces?service=checkout&lookback=1h&…`: the traces found.
async fn search_api(s: &TestServer, token: &str, q: Vec<(&str, &str)>) -> Vec<Trace> {
    let mut query = vec![("service", "checkout"), ("lookback", "1h")];
    query.extend(q);
    get_ok::<JaegerResponse<Trace>>(s, token, "/api/traces", &query)
        .await
        .data
}

/// `capstanctl traces search --service checkout …` (JSON): the ids of the traces found.
async fn search_cli(ctl: &Ctl, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["traces", "search", "--service", "checkout"];
    args.extend_from_slice(extra);
    let v = ctl.ok(&args).await.json();
    let r: JaegerResponse<Trace> = serde_json::from_value(v).unwrap();
    r.data.into_iter().map(|t| t.trace_id).collect()
}

async fn sdk_spans_come_back_from_jaegers_api_and_as_otlp(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let (t, tokens) = telemetry_as(&s, &admin, "checkout");
    let id = checkout(&t, "ord-1");
    // The collector answers once the spans are committed: no waiting after the flush.
    t.flush().await.unwrap();
    assert_eq!(tokens.requests_sent(), 1);
    let now_us = (SystemClock.now() as u64 + 1) * 1_000_000;
    // The exporter stamps spans with the real time; the server's manual clock started earlier
    // (a search ends at the server's now).
    s.clock.advance(60);
    let token = s.token("default", &admin, &[]).await;

    let services: JaegerResponse<String> = get_ok(&s, &token, "/api/services", &[]).await;
    assert!(
        services.data.contains(&"checkout".to_owned()),
        "{services:?}"
    );
    assert_eq!(services.total, services.data.len() as i64);
    assert!(services.errors.is_none());
    let ops: JaegerResponse<String> =
        get_ok(&s, &token, "/api/services/checkout/operations", &[]).await;
    for op in ["POST /checkout", "charge card"] {
        assert!(ops.data.contains(&op.to_owned()), "{op}: {ops:?}");
    }

    // Search: by service, then narrowed by operation, tags and duration.
    let search = |q: Vec<(&'static str, &'static str)>| search_api(&s, &token, q);
    let found = search(vec![]).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_checkout(&found[0], &id, "ord-1", &admin.id, now_us);
    assert_eq!(search(vec![("operation", "charge card")]).await.len(), 1);
    assert!(search(vec![("operation", "refund")]).await.is_empty());
    let tags = vec![("tags", r#"{"payment.provider":"acme"}"#)];
    assert_eq!(search(tags).await.len(), 1);
    let tags = vec![("tags", r#"{"payment.provider":"other"}"#)];
    assert!(search(tags).await.is_empty());
    assert!(search(vec![("minDuration", "1h")]).await.is_empty());

    // By id: Jaeger's JSON, and OTLP's.
    let by_id: JaegerResponse<Trace> = get_ok(&s, &token, &format!("/api/traces/{id}"), &[]).await;
    assert_eq!(by_id.data.len(), 1);
    assert_checkout(&by_id.data[0], &id, "ord-1", &admin.id, now_us);
    let otlp: Value = get_ok(&s, &token, &format!("/v1/traces/{id}"), &[]).await;
    let resource_spans = otlp["resourceSpans"].as_array().unwrap();
    let attr = |rs: &Value, k: &str| {
        rs["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"]["stringValue"].clone())
    };
    let mut names = Vec::new();
    for rs in resource_spans {
        assert_eq!(attr(rs, "service.name"), Some(json!("checkout")), "{rs}");
        assert_eq!(attr(rs, PRINCIPAL_TAG), Some(json!(admin.id)), "{rs}");
        for ss in rs["scopeSpans"].as_array().unwrap() {
            for span in ss["spans"].as_array().unwrap() {
                assert_eq!(span["traceId"], id.as_str(), "hex, as OTLP JSON has it");
                names.push(span["name"].as_str().unwrap().to_owned());
            }
        }
    }
    names.sort();
    assert_eq!(names, ["POST /checkout", "charge card"]);
    let unknown = "0000000000000000000000000000abcd";
    let (status, _) = get(&s, &token, &format!("/api/traces/{unknown}"), &[]).await;
    assert_eq!(status, 404);
    let (status, _) = get(&s, &token, &format!("/v1/traces/{unknown}"), &[]).await;
    assert_eq!(status, 404);

    // Every export asks the token source: once the token has expired, the next export carries
    // a new one and is accepted.
    s.clock.advance(16 * 60);
    let later = checkout(&t, "ord-2");
    t.flush().await.unwrap();
    assert_eq!(tokens.requests_sent(), 2, "a new token for the export");
    let token = s.token("default", &admin, &[]).await;
    let again: JaegerResponse<Trace> =
        get_ok(&s, &token, &format!("/api/traces/{later}"), &[]).await;
    assert_eq!(again.data[0].spans.len(), 2);

    // A principal that may not report the service: flush says so, and nothing is stored.
    let weak = s
        .create_client(&token, json!({"name": "weak", "audiences": ["capstan"]}))
        .await;
    let (tw, _) = telemetry_as(&s, &weak, "checkout");
    let refused = checkout(&tw, "ord-3");
    match tw.flush().await {
        Err(Error::SpansRefused { rejected, message }) => {
            assert_eq!(rejected, 2);
            assert!(message.contains("trace:Ingest"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let (status, _) = get(&s, &token, &format!("/api/traces/{refused}"), &[]).await;
    assert_eq!(status, 404);

    tw.shutdown().await.unwrap();
    t.shutdown().await.unwrap();
    s.shutdown().await;
}

async fn capstanctl_traces_lists_searches_and_shows_a_tree(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = s.admin().await;
    let (t, _) = telemetry_as(&s, &admin, "checkout");
    let first = checkout(&t, "ord-1");
    // Another trace, started later.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = checkout(&t, "ord-2");
    t.flush().await.unwrap();
    s.clock.advance(60);
    let ctl = Ctl::new(&s);
    ctl.login_dev(&admin).await;

    // Services and operations: the server's answer as JSON, names in a table.
    let v = ctl.ok(&["traces", "services"]).await.json();
    assert!(
        v["data"].as_array().unwrap().contains(&json!("checkout")),
        "{v}"
    );
    assert!(
        v["errors"].is_null(),
        "the envelope as the server sent it: {v}"
    );
    let o = ctl.ok(&["-o", "table", "traces", "services"]).await;
    assert_eq!(o.out.lines().next(), Some("SERVICE"));
    assert!(o.out.lines().any(|l| l == "checkout"), "{}", o.out);
    let o = ctl
        .ok(&["-o", "table", "traces", "operations", "checkout"])
        .await;
    assert!(o.out.lines().any(|l| l == "POST /checkout"), "{}", o.out);
    assert!(o.out.lines().any(|l| l == "charge card"), "{}", o.out);

    // Search: one row per trace, newest first, with the root span's service and operation.
    let o = ctl
        .ok(&["-o", "table", "traces", "search", "--service", "checkout"])
        .await;
    let lines: Vec<&str> = o.out.lines().collect();
    assert_eq!(lines.len(), 3, "{}", o.out);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "TRACE_ID",
            "SERVICE",
            "OPERATION",
            "SPANS",
            "DURATION",
            "START"
        ]
    );
    for (line, id) in lines[1..].iter().zip([&second, &first]) {
        assert!(line.starts_with(id.as_str()), "{}", o.out);
        assert!(
            line.contains("  checkout  POST /checkout  2  "),
            "{}",
            o.out
        );
    }
    // JSON is Jaeger's answer; flags narrow it.
    let search = |extra: &'static [&'static str]| search_cli(&ctl, extra);
    assert_eq!(search(&["--tag", "order.id=ord-1"]).await, [first.as_str()]);
    assert_eq!(
        search(&[
            "--tag",
            "order.id=ord-1",
            "--tag",
            "http.request.method=GET"
        ])
        .await,
        Vec::<String>::new(),
        "every tag must match"
    );
    assert_eq!(search(&["--operation", "charge card"]).await.len(), 2);
    assert_eq!(search(&["--limit", "1"]).await.len(), 1);
    assert_eq!(
        search(&["--lookback", "30m", "--max-duration", "1h"])
            .await
            .len(),
        2
    );
    assert!(search(&["--min-duration", "1h"]).await.is_empty());
    let o = ctl
        .ok(&[
            "-o",
            "table",
            "traces",
            "search",
            "--service",
            "checkout",
            "--operation",
            "refund",
        ])
        .await;
    assert_eq!(o.out, "");
    assert!(o.err.contains("no traces"), "{}", o.err);

    // Usage and the server's refusals, with their exit codes.
    let o = ctl
        .run(&[
            "traces",
            "search",
            "--service",
            "checkout",
            "--tag",
            "nokey",
        ])
        .await;
    assert_eq!(o.code, 2, "{}", o.err);
    assert_eq!(
        ctl.run(&["traces", "search"]).await.code,
        2,
        "--service is required"
    );
    let o = ctl
        .run(&[
            "traces",
            "search",
            "--service",
            "checkout",
            "--lookback",
            "forever",
        ])
        .await;
    assert_eq!(o.code, 1);
    assert!(
        o.err.contains("lookback"),
        "Jaeger's error message: {}",
        o.err
    );

    // One trace as a tree: the root, then its child indented, with the sender and the status.
    let o = ctl.ok(&["-o", "table", "traces", "get", &first]).await;
    let lines: Vec<&str> = o.out.lines().collect();
    assert!(
        lines[0].starts_with(&format!("trace {first}: 2 spans, ")),
        "{}",
        o.out
    );
    assert!(lines[1].starts_with("SERVICE (PRINCIPAL)"), "{}", o.out);
    let who = format!("checkout ({})", admin.id);
    assert!(lines[2].starts_with(&who), "{}", o.out);
    assert!(lines[2].contains("POST /checkout"), "{}", o.out);
    assert!(lines[3].starts_with(&format!("  {who}")), "{}", o.out);
    assert!(lines[3].contains("charge card"), "{}", o.out);
    assert!(lines[3].ends_with("ERROR: card declined"), "{}", o.out);
    assert_eq!(lines.len(), 4, "{}", o.out);
    // …and as OTLP JSON.
    let v = ctl.ok(&["traces", "get", &first]).await.json();
    let spans: usize = v["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rs| rs["scopeSpans"].as_array().unwrap())
        .map(|ss| ss["spans"].as_array().unwrap().len())
        .sum();
    assert_eq!(spans, 2, "{v}");
    let unknown = "0000000000000000000000000000abcd";
    for format in ["table", "json"] {
        let o = ctl.run(&["-o", format, "traces", "get", unknown]).await;
        assert_eq!(o.code, 4, "{format}: {}", o.err);
        assert!(o.err.contains("not found"), "{}", o.err);
    }

    // A principal without trace:Query on the service is denied, with the action named.
    let token = s.token("default", &admin, &[]).await;
    let weak = s
        .create_client(&token, json!({"name": "weak", "audiences": ["capstan"]}))
        .await;
    let weak_ctl = Ctl::new(&s);
    weak_ctl.login_dev(&weak).await;
    let o = weak_ctl
        .run(&["traces", "search", "--service", "checkout"])
        .await;
    assert_eq!(o.code, 3, "{}", o.err);
    assert!(o.err.contains("trace:Query"), "{}", o.err);

    t.shutdown().await.unwrap();
    s.shutdown().await;
}
