//! The trace collector end to end: spans made by the OpenTelemetry SDK and sent by the real
//! `opentelemetry-otlp` exporter (HTTP protobuf, HTTP JSON, gRPC with gzip) come back through
//! the Jaeger v1, Jaeger v3 and OTLP query APIs with their attributes, events, links, status
//! and ingesting principal; the receiver's errors (gzip bomb, malformed bodies, invalid spans,
//! services a principal may not report, overload); retention; tenants; query scoping.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use opentelemetry::trace::{
    Link, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue as PKeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as PResource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as PSpan};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData, SpanExporter};
use prost::Message;
use reqwest::Method;
use serde_json::{json, Value};

use capstan_tests::{Creds, Ctx, TestServer};

capstan_tests::on_both_backends!(
    sdk_exporters_round_trip_through_every_query_api,
    receiver_errors_and_partial_success,
    a_principal_reports_only_the_services_it_may,
    overload_answers_429_with_retry_after_and_memory_stays_bounded,
    retention_removes_old_spans,
    tenants_do_not_see_each_others_spans,
    queries_show_only_services_the_caller_may_query,
    retried_exports_store_each_span_once,
    spans_are_stored_after_the_database_drops_its_connections,
    hostile_exports_are_contained,
    the_otlp_ports_have_the_main_listeners_limits,
);

async fn admin_token(s: &TestServer) -> String {
    let admin = s.admin().await;
    s.token("default", &admin, &[]).await
}

/// A client of `tenant` whose policy `name` allows `actions` on `resource`; with its token.
async fn principal(
    s: &TestServer,
    admin: &str,
    name: &str,
    actions: &[&str],
    resource: &str,
) -> (Creds, String) {
    let (status, v) = s
        .api(
            Method::PUT,
            &format!("/v1/policies/{name}"),
            admin,
            Some(
                json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow",
                "Action": actions, "Resource": resource}}),
            ),
        )
        .await;
    assert!(status == 200 || status == 201, "{v}");
    let c = s
        .create_client(admin, json!({ "name": name, "audiences": ["capstan"] }))
        .await;
    let (status, v) = s
        .api(
            Method::PUT,
            &format!("/v1/principals/{}/policies/{name}", c.id),
            admin,
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "{status} {v}");
    let t = s.token("default", &c, &[]).await;
    (c, t)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spans made by the OpenTelemetry SDK: a server span with typed attributes and an event, and
/// a client child with a link and an error status.
fn sdk_spans() -> Vec<SpanData> {
    let memory = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(memory.clone())
        .build();
    let tracer = provider.tracer("capstan-tests");
    let linked = SpanContext::new(
        opentelemetry::trace::TraceId::from_hex("11111111111111111111111111111111").unwrap(),
        opentelemetry::trace::SpanId::from_hex("2222222222222222").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let root = tracer
        .span_builder("GET /cart")
        .with_kind(SpanKind::Server)
        .with_attributes(vec![
            KeyValue::new("http.method", "GET"),
            KeyValue::new("http.status_code", 200_i64),
            KeyValue::new("cache.hit", true),
            KeyValue::new("load", 0.5),
        ])
        .start(&tracer);
    let cx = Context::current_with_span(root);
    {
        let mut child = tracer
            .span_builder("SELECT carts")
            .with_kind(SpanKind::Client)
            .with_links(vec![Link::with_context(linked)])
            .start_with_context(&tracer, &cx);
        use opentelemetry::trace::Span as _;
        child.add_event("retry", vec![KeyValue::new("attempt", 2_i64)]);
        child.set_status(Status::error("db timeout"));
        child.end();
    }
    cx.span().end();
    let spans = memory.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 2);
    spans
}

fn resource(service: &str) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("deployment.environment", "test"))
        .build()
}

fn trace_hex(spans: &[SpanData]) -> String {
    spans[0].span_context.trace_id().to_string()
}

/// The server, with the gRPC receiver on a free port.
async fn server_with_grpc(ctx: &Ctx) -> (TestServer, u16) {
    let port = free_port();
    let mut settings = ctx.settings();
    settings.service_config.insert(
        "trace".into(),
        json!({"otlp_grpc_listen": format!("127.0.0.1:{port}")}),
    );
    (ctx.server_with(settings).await, port)
}

async fn get(s: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let (status, v) = s.api(Method::GET, path, token, None).await;
    (status, v)
}

/// Checks one trace in every query API: attributes, events, links, status, principal.
async fn check_trace(s: &TestServer, token: &str, id: &str, service: &str, principal: &str) {
    // Jaeger v1.
    let (status, v) = get(s, token, &format!("/api/traces/{id}")).await;
    assert_eq!(status, 200, "{v}");
    let trace = &v["data"][0];
    assert_eq!(trace["traceID"], id);
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{trace}");
    let root = spans
        .iter()
        .find(|s| s["operationName"] == "GET /cart")
        .unwrap();
    let child = spans
        .iter()
        .find(|s| s["operationName"] == "SELECT carts")
        .unwrap();
    let tag = |span: &Value, key: &str| -> Value {
        span["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == key)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        tag(root, "http.method"),
        json!({"key": "http.method", "type": "string", "value": "GET"})
    );
    assert_eq!(tag(root, "http.status_code")["type"], "int64");
    assert_eq!(tag(root, "http.status_code")["value"], 200);
    assert_eq!(tag(root, "cache.hit")["type"], "bool");
    assert_eq!(tag(root, "load")["type"], "float64");
    assert_eq!(tag(root, "span.kind")["value"], "server");
    assert_eq!(tag(child, "span.kind")["value"], "client");
    assert_eq!(tag(child, "error")["value"], true);
    assert_eq!(tag(child, "otel.status_description")["value"], "db timeout");
    let refs = child["references"].as_array().unwrap();
    assert!(refs
        .iter()
        .any(|r| r["refType"] == "CHILD_OF" && r["spanID"] == root["spanID"]));
    assert!(refs
        .iter()
        .any(|r| r["refType"] == "FOLLOWS_FROM" && r["spanID"] == "2222222222222222"));
    let log = &child["logs"][0];
    assert!(log["timestamp"].as_u64().unwrap() > 1_000_000_000_000_000);
    assert_eq!(
        log["fields"][0],
        json!({"key": "event", "type": "string", "value": "retry"})
    );
    assert_eq!(log["fields"][1]["value"], 2);
    assert!(
        root["startTime"].as_u64().unwrap() < 10_000_000_000_000_000,
        "microseconds"
    );
    let pid = root["processID"].as_str().unwrap();
    let process = &trace["processes"][pid];
    assert_eq!(process["serviceName"], service);
    let ptags = process["tags"].as_array().unwrap();
    assert!(
        ptags.contains(&json!({"key": "capstan.principal", "type": "string", "value": principal}))
    );
    assert!(ptags.iter().any(|t| t["key"] == "deployment.environment"));

    // OTLP JSON, and Jaeger v3 (the same inside `result`).
    let (status, otlp) = get(s, token, &format!("/v1/traces/{id}")).await;
    assert_eq!(status, 200, "{otlp}");
    let (status, v3) = get(s, token, &format!("/api/v3/traces/{id}")).await;
    assert_eq!(status, 200, "{v3}");
    assert_eq!(v3["result"], otlp);
    let rs = &otlp["resourceSpans"][0];
    let rattrs = rs["resource"]["attributes"].as_array().unwrap();
    assert!(
        rattrs.contains(&json!({"key": "capstan.principal", "value": {"stringValue": principal}}))
    );
    assert!(rattrs.contains(&json!({"key": "service.name", "value": {"stringValue": service}})));
    let ospans: Vec<&Value> = rs["scopeSpans"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|ss| ss["spans"].as_array().unwrap())
        .collect();
    assert_eq!(ospans.len(), 2);
    let ochild = ospans.iter().find(|s| s["name"] == "SELECT carts").unwrap();
    assert_eq!(ochild["traceId"], id);
    assert_eq!(ochild["kind"], 3);
    assert_eq!(ochild["status"]["code"], 2);
    assert_eq!(ochild["status"]["message"], "db timeout");
    assert_eq!(ochild["events"][0]["name"], "retry");
    assert_eq!(ochild["links"][0]["spanId"], "2222222222222222");
    let oroot = ospans.iter().find(|s| s["name"] == "GET /cart").unwrap();
    assert!(oroot["attributes"]
        .as_array()
        .unwrap()
        .contains(&json!({"key": "http.status_code", "value": {"intValue": "200"}})));
}

async fn sdk_exporters_round_trip_through_every_query_api(ctx: &Ctx) {
    let (s, grpc_port) = server_with_grpc(ctx).await;
    let admin = admin_token(&s).await;
    let (c, t) = principal(
        &s,
        &admin,
        "Checkout",
        &["trace:Ingest", "trace:Query"],
        "crn:capstan:trace:default:service/checkout*",
    )
    .await;
    let bearer: HashMap<String, String> =
        HashMap::from([("Authorization".into(), format!("Bearer {t}"))]);
    let mut sent = Vec::new();
    for (service, protocol) in [
        ("checkout-proto", opentelemetry_otlp::Protocol::HttpBinary),
        ("checkout-json", opentelemetry_otlp::Protocol::HttpJson),
    ] {
        let spans = sdk_spans();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(reqwest::Client::new())
            .with_protocol(protocol)
            .with_endpoint(s.url("/v1/traces"))
            .with_headers(bearer.clone())
            .build()
            .unwrap();
        exporter.set_resource(&resource(service));
        exporter.export(spans.clone()).await.unwrap();
        sent.push((service, trace_hex(&spans)));
    }
    {
        let spans = sdk_spans();
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {t}").parse().unwrap());
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://127.0.0.1:{grpc_port}"))
            .with_compression(opentelemetry_otlp::Compression::Gzip)
            .with_metadata(metadata)
            .build()
            .unwrap();
        exporter.set_resource(&resource("checkout-grpc"));
        exporter.export(spans.clone()).await.unwrap();
        sent.push(("checkout-grpc", trace_hex(&spans)));
    }
    // The SDK stamped spans with the real time; the server's manual clock started earlier.
    s.clock.advance(60);
    for (service, id) in &sent {
        check_trace(&s, &t, id, service, &c.id).await;
        // Found by search: service + operation + tag, in the last hour; v1 and v3.
        let q = format!(
            "/api/traces?service={service}&operation=GET%20/cart&tags=%7B%22http.method%22%3A%22GET%22%7D&lookback=1h&limit=20"
        );
        let (status, v) = get(&s, &t, &q).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["data"][0]["traceID"], id.as_str());
        let (_, none) = get(
            &s,
            &t,
            &format!("/api/traces?service={service}&tags=%7B%22http.method%22%3A%22POST%22%7D"),
        )
        .await;
        assert_eq!(none["data"], json!([]));
        let (_, v3) = get(
            &s,
            &t,
            &format!(
                "/api/v3/traces?query.service_name={service}&query.operation_name=SELECT%20carts"
            ),
        )
        .await;
        assert_eq!(
            v3["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"],
            id.as_str(),
            "{v3}"
        );
        let (_, ops) = get(&s, &t, &format!("/api/services/{service}/operations")).await;
        assert_eq!(ops["data"], json!(["GET /cart", "SELECT carts"]));
        let (_, ops) = get(
            &s,
            &t,
            &format!("/api/operations?service={service}&spanKind=server"),
        )
        .await;
        assert_eq!(
            ops["data"],
            json!([{"name": "GET /cart", "spanKind": "server"}])
        );
        let (_, red) = get(
            &s,
            &t,
            &format!("/v1/trace-metrics?service={service}&window=1h"),
        )
        .await;
        let child = red["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["operation"] == "SELECT carts")
            .unwrap();
        assert_eq!(child["requests"], 1);
        assert_eq!(child["errors"], 1);
    }
    let (_, services) = get(&s, &t, "/api/services").await;
    assert_eq!(
        services["data"],
        json!(["checkout-grpc", "checkout-json", "checkout-proto"])
    );
    let (_, v3) = get(&s, &t, "/api/v3/services").await;
    assert_eq!(v3["services"], services["data"]);
    s.server.shutdown().await.unwrap();
}

fn kv(key: &str, v: &str) -> PKeyValue {
    PKeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

fn now_ns(s: &TestServer) -> u64 {
    use capstan_core::clock::Clock;
    s.clock.now() as u64 * 1_000_000_000
}

/// An export with `n` spans of `service` (each with a distinct id), starting `start_ns`.
fn export(service: &str, trace: u8, n: usize, start_ns: u64) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| PSpan {
            trace_id: vec![trace; 16],
            span_id: ((i as u64) + 1).to_be_bytes().to_vec(),
            name: format!("op{}", i % 3),
            kind: 2,
            start_time_unix_nano: start_ns,
            end_time_unix_nano: start_ns + 1_000_000,
            attributes: vec![kv("k", "v"), kv("payload", &"x".repeat(100))],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(PResource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post_raw(
    s: &TestServer,
    token: Option<&str>,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut r = s
        .http
        .post(s.url("/v1/traces"))
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(e) = encoding {
        r = r.header("content-encoding", e);
    }
    r.send().await.unwrap()
}

/// Posts `req` as protobuf with `token`.
async fn send(s: &TestServer, token: &str, req: ExportTraceServiceRequest) -> reqwest::Response {
    post_raw(
        s,
        Some(token),
        "application/x-protobuf",
        None,
        req.encode_to_vec(),
    )
    .await
}

/// The `partial_success` of an answer (none when every span was taken).
async fn refused(r: reqwest::Response) -> i64 {
    assert_eq!(r.status(), 200);
    let resp = ExportTraceServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    resp.partial_success.map_or(0, |p| p.rejected_spans)
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

async fn receiver_errors_and_partial_success(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    let now = now_ns(&s);
    // gzip protobuf works and answers protobuf.
    let body = export("shop", 1, 3, now).encode_to_vec();
    let r = post_raw(
        &s,
        Some(&t),
        "application/x-protobuf",
        Some("gzip"),
        gzip(&body),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let resp = ExportTraceServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert!(resp.partial_success.is_none());
    // A gzip bomb: small on the wire, over the cap once inflated.
    let bomb = gzip(&vec![0u8; 40 << 20]);
    assert!(bomb.len() < 1 << 20);
    let r = post_raw(&s, Some(&t), "application/x-protobuf", Some("gzip"), bomb).await;
    assert_eq!(r.status(), 413);
    let st = tonic_types::Status::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(st.code, tonic::Code::ResourceExhausted as i32);
    // Malformed protobuf and JSON: 400 with a google.rpc.Status in the same encoding.
    let r = post_raw(
        &s,
        Some(&t),
        "application/x-protobuf",
        None,
        vec![0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(r.status(), 400);
    let st = tonic_types::Status::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(st.code, tonic::Code::InvalidArgument as i32);
    assert!(!st.message.is_empty());
    let r = post_raw(
        &s,
        Some(&t),
        "application/json",
        None,
        b"{\"resourceSpans\": 7}".to_vec(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], 3, "{v}");
    // Wrong content type, no credentials.
    let r = post_raw(&s, Some(&t), "text/plain", None, b"x".to_vec()).await;
    assert_eq!(r.status(), 415);
    let r = post_raw(&s, None, "application/x-protobuf", None, body.clone()).await;
    assert_eq!(r.status(), 401);
    // Invalid spans are counted in partial_success, never stored; the valid one is.
    let start = now.to_string();
    let json_body = json!({"resourceSpans": [{"resource": {"attributes": [
      {"key": "service.name", "value": {"stringValue": "shop"}}]},
    "scopeSpans": [{"spans": [
      {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "ok",
       "startTimeUnixNano": start, "endTimeUnixNano": (now + 5).to_string()},
      {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203332", "name": "snake",
       "start_time_unix_nano": start},
      {"traceId": "00000000000000000000000000000000", "spanId": "b7ad6b7169203333", "name": "zero",
       "startTimeUnixNano": start, "endTimeUnixNano": start},
      {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203334", "name": "backwards",
       "startTimeUnixNano": start, "endTimeUnixNano": (now - 5).to_string()}
    ]}]}]});
    let r = post_raw(
        &s,
        Some(&t),
        "application/json",
        None,
        json_body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["partialSuccess"]["rejectedSpans"], 3, "{v}");
    assert!(v["partialSuccess"]["errorMessage"]
        .as_str()
        .unwrap()
        .contains("startTimeUnixNano"));
    let (status, v) = get(&s, &t, "/api/traces/0af7651916cd43dd8448eb211c80319c").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = v["data"][0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["operationName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ok"]);
    // 64-bit times sent as JSON numbers (the protobuf JSON mapping allows them) are taken.
    let json_body = json!({"resourceSpans": [{"resource": {"attributes": [
      {"key": "service.name", "value": {"stringValue": "shop"}},
      {"key": "startTimeUnixNano", "value": {"intValue": 7}}]},
    "scopeSpans": [{"spans": [
      {"traceId": "0af7651916cd43dd8448eb211c80319e", "spanId": "b7ad6b7169203335", "name": "numeric",
       "startTimeUnixNano": now, "endTimeUnixNano": now + 9,
       "events": [{"timeUnixNano": now + 1, "name": "tick"}]}
    ]}]}]});
    let r = post_raw(
        &s,
        Some(&t),
        "application/json",
        None,
        json_body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v.get("partialSuccess")
            .is_none_or(|p| p["rejectedSpans"].as_i64().unwrap_or(0) == 0),
        "{v}"
    );
    let (status, v) = get(&s, &t, "/api/traces/0af7651916cd43dd8448eb211c80319e").await;
    assert_eq!(status, 200);
    let span = &v["data"][0]["spans"][0];
    assert_eq!(span["operationName"], "numeric");
    assert_eq!(span["startTime"], now / 1000, "{span}");
    assert_eq!(span["logs"][0]["timestamp"], (now + 1) / 1000, "{span}");
    // A negative or fractional time is still malformed.
    let r = post_raw(
        &s,
        Some(&t),
        "application/json",
        None,
        br#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": -5}]}]}]}"#
            .to_vec(),
    )
    .await;
    assert_eq!(r.status(), 400);
    // Query errors say what is wrong.
    let (status, v) = get(&s, &t, "/api/traces?lookback=1h").await;
    assert_eq!(status, 400);
    assert!(
        v["errors"][0]["msg"].as_str().unwrap().contains("service"),
        "{v}"
    );
    let (status, _) = get(&s, &t, "/api/traces/zz").await;
    assert_eq!(status, 400);
    let (status, v) = get(&s, &t, "/api/traces/0af7651916cd43dd8448eb211c80319d").await;
    assert_eq!(status, 404);
    assert_eq!(v["errors"][0]["code"], 404);
    let (status, _) = get(&s, &t, "/api/traces?service=shop&minDuration=fast").await;
    assert_eq!(status, 400);
    s.server.shutdown().await.unwrap();
}

async fn a_principal_reports_only_the_services_it_may(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = admin_token(&s).await;
    let (c, t) = principal(
        &s,
        &admin,
        "Orders",
        &["trace:Ingest"],
        "crn:capstan:trace:default:service/orders",
    )
    .await;
    let now = now_ns(&s);
    let mut req = export("orders", 7, 2, now);
    req.resource_spans
        .extend(export("payments", 8, 3, now).resource_spans);
    let r = send(&s, &t, req).await;
    assert_eq!(r.status(), 200);
    let resp = ExportTraceServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    let partial = resp.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 3);
    assert!(
        partial.error_message.contains("payments"),
        "{}",
        partial.error_message
    );
    // The orders spans are stored, attributed to the principal; no payments span is.
    let (_, v) = get(&s, &admin, &format!("/api/traces/{}", "07".repeat(16))).await;
    assert_eq!(v["data"][0]["spans"].as_array().unwrap().len(), 2);
    let p = &v["data"][0]["processes"]["p1"]["tags"];
    assert!(p
        .as_array()
        .unwrap()
        .contains(&json!({"key": "capstan.principal", "type": "string", "value": c.id})));
    let (status, _) = get(&s, &admin, &format!("/api/traces/{}", "08".repeat(16))).await;
    assert_eq!(status, 404);
    let (_, services) = get(&s, &admin, "/api/services").await;
    assert_eq!(services["data"], json!(["orders"]));
    // The decision log shows the refused claim.
    s.server.shutdown().await.unwrap();
}

async fn metric(s: &TestServer, name: &str) -> f64 {
    let text = s.metrics().await;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn overload_answers_429_with_retry_after_and_memory_stays_bounded(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings.service_config.insert(
        "trace".into(),
        json!({"queue_bytes": 1 << 20, "linger_ms": 0, "min_batch": 1}),
    );
    let s = ctx.server_with(settings).await;
    let t = admin_token(&s).await;
    let now = now_ns(&s);
    // Hold the span table so the writers wait.
    let db = ctx.db();
    let lock: Box<dyn std::any::Any + Send> = match &db {
        capstan_db::Db::Postgres(p) => {
            let mut tx = p.begin().await.unwrap();
            sqlx::query("LOCK TABLE trace_spans IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .unwrap();
            Box::new(tx)
        }
        capstan_db::Db::Sqlite(p) => {
            let mut conn = p.acquire().await.unwrap().detach();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut conn)
                .await
                .unwrap();
            Box::new(conn)
        }
    };
    // ~400 KiB per export: a 1 MiB queue holds two or three.
    let mut pending = Vec::new();
    let mut refused = None;
    for i in 0..12u8 {
        let body = export("busy", 20 + i, 2000, now).encode_to_vec();
        let http = s.http.clone();
        let url = s.url("/v1/traces");
        let t = t.clone();
        let h = tokio::spawn(async move {
            http.post(url)
                .bearer_auth(t)
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await
                .unwrap()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        if h.is_finished() {
            let r = h.await.unwrap();
            if r.status() == 429 {
                refused = Some(r);
                break;
            }
            continue;
        }
        pending.push(h);
    }
    let r = refused.expect("an export is refused while the queue is full");
    assert_eq!(r.headers()["retry-after"], "1");
    let st = tonic_types::Status::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(st.code, tonic::Code::ResourceExhausted as i32);
    let queued = metric(&s, "capstan_trace_queued_bytes").await;
    assert!(queued > 0.0 && queued <= (1 << 20) as f64, "{queued}");
    assert!(metric(&s, "capstan_trace_overloaded_total").await >= 1.0);
    drop(lock);
    // What was accepted into the queue is stored once the table is free.
    for h in pending {
        let r = h.await.unwrap();
        assert!(r.status() == 200 || r.status() == 503, "{}", r.status());
    }
    let r = send(&s, &t, export("busy", 99, 10, now)).await;
    assert_eq!(r.status(), 200);
    s.server.shutdown().await.unwrap();
}

async fn retention_removes_old_spans(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    let now = now_ns(&s);
    let r = send(&s, &t, export("old", 5, 2, now)).await;
    assert_eq!(r.status(), 200);
    let trace = "05".repeat(16);
    let (status, _) = get(&s, &t, &format!("/api/traces/{trace}")).await;
    assert_eq!(status, 200);
    let svc = s.service("trace");
    let day = (now / 86_400_000_000_000) as i64;
    let partitions = || async {
        match ctx.db() {
            capstan_db::Db::Postgres(p) => sqlx::query_scalar::<_, String>(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_class t ON t.oid = i.inhparent WHERE t.relname = 'trace_spans'",
            )
            .fetch_all(&p)
            .await
            .unwrap(),
            capstan_db::Db::Sqlite(_) => Vec::new(),
        }
    };
    let today = capstan_trace::store::partition_name(day);
    if matches!(ctx.db(), capstan_db::Db::Postgres(_)) {
        assert!(partitions().await.contains(&today));
    }
    // Eight days later (retention 7), housekeeping drops the day.
    s.clock.advance(8 * 86_400);
    svc.housekeeping().await.unwrap();
    if matches!(ctx.db(), capstan_db::Db::Postgres(_)) {
        let now_parts = partitions().await;
        assert!(!now_parts.contains(&today), "{now_parts:?}");
        // Today's and tomorrow's partitions exist ahead of writes.
        assert!(now_parts.contains(&capstan_trace::store::partition_name(day + 8)));
    }
    let t = admin_token(&s).await;
    let (status, _) = get(&s, &t, &format!("/api/traces/{trace}")).await;
    assert_eq!(status, 404);
    let (_, services) = get(&s, &t, "/api/services").await;
    assert_eq!(services["data"], json!([]));
    // Spans older than retention are refused, not stored.
    let r = send(&s, &t, export("old", 6, 1, now)).await;
    assert_eq!(refused(r).await, 1);
    s.server.shutdown().await.unwrap();
}

async fn tenants_do_not_see_each_others_spans(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    let (status, created) = s
        .api(Method::POST, "/v1/tenants", &t, Some(json!({"id": "acme"})))
        .await;
    assert_eq!(status, 201, "{created}");
    let acme = Creds::from_json(&created["admin_client"]);
    let acme_t = s.token("acme", &acme, &[]).await;
    let now = now_ns(&s);
    let r = send(&s, &t, export("shared-name", 3, 2, now)).await;
    assert_eq!(r.status(), 200);
    let r = send(&s, &acme_t, export("acme-only", 4, 1, now)).await;
    assert_eq!(r.status(), 200);
    let (_, v) = get(&s, &acme_t, "/api/services").await;
    assert_eq!(v["data"], json!(["acme-only"]));
    let (status, _) = get(&s, &acme_t, &format!("/api/traces/{}", "03".repeat(16))).await;
    assert_eq!(status, 404);
    let (_, v) = get(&s, &acme_t, "/api/traces?service=shared-name").await;
    assert_eq!(v["data"], json!([]));
    let (_, v) = get(&s, &t, "/api/services").await;
    assert_eq!(v["data"], json!(["shared-name"]));
    s.server.shutdown().await.unwrap();
}

async fn queries_show_only_services_the_caller_may_query(ctx: &Ctx) {
    let s = ctx.server().await;
    let admin = admin_token(&s).await;
    let now = now_ns(&s);
    // One trace across two services: frontend calls payments.
    let mut req = export("frontend", 9, 1, now);
    let mut child = export("payments", 9, 1, now);
    child.resource_spans[0].scope_spans[0].spans[0].span_id = vec![0, 0, 0, 0, 0, 0, 0, 9];
    child.resource_spans[0].scope_spans[0].spans[0].parent_span_id = 1u64.to_be_bytes().to_vec();
    req.resource_spans.extend(child.resource_spans);
    let r = send(&s, &admin, req).await;
    assert_eq!(r.status(), 200);
    let (_, deps) = get(&s, &admin, "/api/dependencies?lookback=3600000").await;
    assert_eq!(
        deps["data"],
        json!([{"parent": "frontend", "child": "payments", "callCount": 1}])
    );
    let (_, t) = principal(
        &s,
        &admin,
        "FrontendReader",
        &["trace:Query"],
        "crn:capstan:trace:default:service/frontend",
    )
    .await;
    let (_, v) = get(&s, &t, "/api/services").await;
    assert_eq!(v["data"], json!(["frontend"]));
    let (_, v) = get(&s, &t, &format!("/api/traces/{}", "09".repeat(16))).await;
    let spans = v["data"][0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 1, "{v}");
    let (status, _) = get(&s, &t, "/api/traces?service=payments").await;
    assert_eq!(status, 403);
    let (status, _) = get(&s, &t, "/v1/trace-metrics?service=payments").await;
    assert_eq!(status, 403);
    // The graph reads every service: it needs trace:Query on all of them.
    let (status, _) = get(&s, &t, "/api/dependencies?lookback=3600000").await;
    assert_eq!(status, 403);
    // Without trace:Ingest, nothing is stored.
    let r = send(&s, &t, export("frontend", 10, 1, now)).await;
    assert_eq!(refused(r).await, 1);
    s.server.shutdown().await.unwrap();
}

async fn retried_exports_store_each_span_once(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    let now = now_ns(&s);
    let body = export("retry", 11, 5, now).encode_to_vec();
    for _ in 0..3 {
        let r = post_raw(&s, Some(&t), "application/x-protobuf", None, body.clone()).await;
        assert_eq!(r.status(), 200);
    }
    // The same ids again claiming another start time that day: still the spans already stored.
    const SECOND: u64 = 1_000_000_000;
    let other = if now % (86_400 * SECOND) >= 2 * SECOND {
        now - SECOND
    } else {
        now + SECOND
    };
    let r = post_raw(
        &s,
        Some(&t),
        "application/x-protobuf",
        None,
        export("retry", 11, 5, other).encode_to_vec(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let (_, v) = get(&s, &t, &format!("/api/traces/{}", "0b".repeat(16))).await;
    assert_eq!(v["data"][0]["spans"].as_array().unwrap().len(), 5);
    let n: i64 = match ctx.db() {
        capstan_db::Db::Postgres(p) => sqlx::query_scalar("SELECT COUNT(*) FROM trace_spans")
            .fetch_one(&p)
            .await
            .unwrap(),
        capstan_db::Db::Sqlite(p) => sqlx::query_scalar("SELECT COUNT(*) FROM trace_spans")
            .fetch_one(&p)
            .await
            .unwrap(),
    };
    assert_eq!(n, 5);
    s.server.shutdown().await.unwrap();
}

/// Batches go on connections the store keeps; when Postgres drops every connection (a restart,
/// a failover), the next export is stored on a fresh one rather than failed.
async fn spans_are_stored_after_the_database_drops_its_connections(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    let now = now_ns(&s);
    let r = post_raw(
        &s,
        Some(&t),
        "application/x-protobuf",
        None,
        export("kept", 12, 3, now).encode_to_vec(),
    )
    .await;
    assert_eq!(r.status(), 200);
    if let capstan_db::Db::Postgres(p) = ctx.db() {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&p)
        .await
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let r = post_raw(
        &s,
        Some(&t),
        "application/x-protobuf",
        None,
        export("kept", 13, 3, now).encode_to_vec(),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, v) = get(&s, &t, &format!("/api/traces/{}", "0d".repeat(16))).await;
    assert_eq!(v["data"][0]["spans"].as_array().unwrap().len(), 3, "{v}");
    s.server.shutdown().await.unwrap();
}

/// What an attacker with one token tries: a gzip bomb over gRPC (and no token at all), span
/// names past the index's byte limit, too many services in one export, a forged principal.
async fn hostile_exports_are_contained(ctx: &Ctx) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let (s, grpc_port) = server_with_grpc(ctx).await;
    let t = admin_token(&s).await;
    let now = now_ns(&s);
    let endpoint = format!("http://127.0.0.1:{grpc_port}");
    // No token: refused before the body is read.
    let mut client = TraceServiceClient::connect(endpoint.clone()).await.unwrap();
    let err = client.export(export("g", 1, 1, now)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // A gzip bomb: tiny on the wire, 40 MiB inflated, over the 16 MiB cap.
    let mut bomb = export("g", 1, 1, now);
    bomb.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(kv("pad", &"x".repeat(40 << 20)));
    let mut client = TraceServiceClient::connect(endpoint)
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let mut req = tonic::Request::new(bomb);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {t}").parse().unwrap());
    let err = client.export(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // A name longer than an index entry may be: stored (the operation column truncated), and
    // the rest of the batch with it.
    let mut req = export("names", 12, 2, now);
    req.resource_spans[0].scope_spans[0].spans[0].name = "\u{8a9e}".repeat(1024);
    assert_eq!(refused(send(&s, &t, req).await).await, 0);
    let (_, v) = get(&s, &t, &format!("/api/traces/{}", "0c".repeat(16))).await;
    assert_eq!(v["data"][0]["spans"].as_array().unwrap().len(), 2, "{v}");
    // At most 64 services per export; a client cannot claim capstan.principal.
    let mut req = export("svc-0", 13, 1, now);
    for i in 1..70 {
        let mut more = export(&format!("svc-{i}"), 13, 1, now);
        more.resource_spans[0].scope_spans[0].spans[0].span_id = vec![1, 0, 0, 0, 0, 0, 0, i as u8];
        req.resource_spans.extend(more.resource_spans);
    }
    req.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(kv("capstan.principal", "svc_forged"));
    assert_eq!(refused(send(&s, &t, req).await).await, 6);
    let (_, v) = get(&s, &t, &format!("/api/traces/{}", "0d".repeat(16))).await;
    let trace = &v["data"][0];
    assert_eq!(trace["spans"].as_array().unwrap().len(), 64);
    assert!(!trace.to_string().contains("svc_forged"), "{trace}");
    s.server.shutdown().await.unwrap();
}

/// The OTLP ports are served like the main listener: exports work there, and a client
/// trickling its headers is cut off after the header read timeout instead of holding a
/// connection for ever.
async fn the_otlp_ports_have_the_main_listeners_limits(ctx: &Ctx) {
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (http_port, grpc_port) = (free_port(), free_port());
    let mut settings = ctx.settings();
    settings.header_read_timeout = Duration::from_secs(1);
    settings.service_config.insert(
        "trace".into(),
        json!({
            "otlp_http_listen": format!("127.0.0.1:{http_port}"),
            "otlp_grpc_listen": format!("127.0.0.1:{grpc_port}"),
        }),
    );
    let s = ctx.server_with(settings).await;
    let t = admin_token(&s).await;
    let now = now_ns(&s);
    let r = s
        .http
        .post(format!("http://127.0.0.1:{http_port}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .bearer_auth(&t)
        .body(export("side-door", 9, 2, now).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(refused(r).await, 0);
    let (status, v) = get(&s, &t, "/api/services").await;
    assert_eq!(status, 200);
    assert!(
        v["data"].as_array().unwrap().contains(&json!("side-door")),
        "{v}"
    );
    for port in [http_port, grpc_port] {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        conn.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "port {port}: the connection is still open after 10 s"
        );
        assert!(started.elapsed() >= Duration::from_millis(500));
    }
    s.server.shutdown().await.unwrap();
}
