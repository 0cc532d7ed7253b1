//! The exporter against a scripted collector and token endpoint (axum on port 0): the bearer
//! token on every export, renewal after a 401, a refusal as a typed error, and flushing on
//! both runtime flavours without deadlock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use axum::routing::post;
use axum::{Json, Router};
use opentelemetry::trace::{Span as _, Tracer as _};
use opentelemetry::KeyValue;
use serde_json::json;

use super::*;

/// What the collector saw of one export.
#[derive(Debug, Clone)]
struct Seen {
    authorization: String,
    content_type: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct Script {
    tokens_issued: AtomicUsize,
    /// Exports to refuse with a 401 before accepting.
    unauthorized: AtomicUsize,
    /// Refuse every export with a 403.
    forbidden: bool,
    /// Take exports but refuse their spans (OTLP partial success).
    partial: bool,
    seen: Mutex<Vec<Seen>>,
}

async fn collector(script: Arc<Script>) -> Capstan {
    let s1 = script.clone();
    let app = Router::new()
        .route(
            "/t/default/oauth2/token",
            post(move || {
                let n = s1.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    Json(json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": 900}))
                }
            }),
        )
        .route(
            "/v1/traces",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let s = script.clone();
                async move {
                    let h = |k: &str| {
                        headers
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    s.seen.lock().unwrap().push(Seen {
                        authorization: h("authorization"),
                        content_type: h("content-type"),
                        body: body.to_vec(),
                    });
                    if s.forbidden {
                        let body = crate::proto::refusal::forbidden(
                            "trace:Ingest",
                            "crn:capstan:trace:default:service/orders-test",
                            "implicit_deny",
                        );
                        return (StatusCode::FORBIDDEN, Json(body).into_response());
                    }
                    let refuse = s
                        .unauthorized
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if refuse {
                        let body = crate::proto::refusal::unauthenticated("token expired");
                        return (StatusCode::UNAUTHORIZED, Json(body).into_response());
                    }
                    let answer = ExportTraceServiceResponse {
                        partial_success: s.partial.then(|| ExportTracePartialSuccess {
                            rejected_spans: 1,
                            error_message: "svc_test may not report spans of service \"orders-test\" (trace:Ingest)".into(),
                        }),
                    };
                    (StatusCode::OK, prost::Message::encode_to_vec(&answer).into_response())
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Capstan::new(&format!("http://{addr}"), "default").unwrap()
}

fn start(capstan: &Capstan) -> Telemetry {
    let tokens = capstan.token_source("svc_test", "secret", &[]);
    init(capstan, tokens, "orders-test").unwrap()
}

fn end_span(t: &Telemetry, name: &'static str) {
    let mut span = t.tracer("capstan-sdk-test").start(name);
    span.set_attribute(KeyValue::new("order.id", 42));
    span.end();
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_export_carries_a_bearer_token_from_the_source() {
    let script = Arc::new(Script::default());
    let capstan = collector(script.clone()).await;
    let t = start(&capstan);
    end_span(&t, "checkout");
    t.flush().await.unwrap();
    end_span(&t, "refund");
    t.flush().await.unwrap();

    let seen = script.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one export per flush");
    for s in &seen {
        assert_eq!(s.authorization, "Bearer tok-1", "the cached token");
        assert_eq!(s.content_type, "application/x-protobuf");
        assert!(contains(&s.body, "orders-test"), "service.name is sent");
        assert!(contains(&s.body, "order.id"), "attributes are sent");
    }
    assert!(contains(&seen[0].body, "checkout"));
    assert!(contains(&seen[1].body, "refund"));
    assert_eq!(script.tokens_issued.load(Ordering::SeqCst), 1);
    t.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_renewed_once() {
    let script = Arc::new(Script {
        unauthorized: AtomicUsize::new(1),
        ..Script::default()
    });
    let capstan = collector(script.clone()).await;
    let t = start(&capstan);
    end_span(&t, "checkout");
    t.flush().await.unwrap();
    let seen = script.seen.lock().unwrap().clone();
    let auth: Vec<&str> = seen.iter().map(|s| s.authorization.as_str()).collect();
    assert_eq!(auth, ["Bearer tok-1", "Bearer tok-2"]);
    t.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_the_typed_api_error() {
    let script = Arc::new(Script {
        forbidden: true,
        ..Script::default()
    });
    let capstan = collector(script.clone()).await;
    let t = start(&capstan);
    end_span(&t, "checkout");
    match t.flush().await {
        Err(Error::Api {
            status: 403, body, ..
        }) => assert_eq!(body["action"], "trace:Ingest"),
        other => panic!("{other:?}"),
    }
    t.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_the_collector_refused_are_an_error_of_flush() {
    let script = Arc::new(Script {
        partial: true,
        ..Script::default()
    });
    let capstan = collector(script.clone()).await;
    let t = start(&capstan);
    end_span(&t, "checkout");
    match t.flush().await {
        Err(Error::SpansRefused { rejected, message }) => {
            assert_eq!(rejected, 1);
            assert!(message.contains("trace:Ingest"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Once said, it is not said again for a flush that exported nothing.
    t.flush().await.unwrap();
    t.shutdown().await.unwrap();
}

/// The current-thread runtime is the one the exports need: `shutdown` must not block it.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_flushes_on_a_current_thread_runtime() {
    let script = Arc::new(Script::default());
    let capstan = collector(script.clone()).await;
    let t = start(&capstan);
    end_span(&t, "checkout");
    tokio::time::timeout(std::time::Duration::from_secs(3), t.shutdown())
        .await
        .expect("no deadlock")
        .unwrap();
    assert_eq!(script.seen.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn drop_flushes_on_a_multi_thread_runtime() {
    let script = Arc::new(Script::default());
    let capstan = collector(script.clone()).await;
    let t = start(&capstan);
    end_span(&t, "checkout");
    drop(t);
    assert_eq!(script.seen.lock().unwrap().len(), 1);
}

#[test]
fn init_needs_a_tokio_runtime() {
    let capstan = Capstan::new("http://127.0.0.1:1", "default").unwrap();
    let tokens = capstan.token_source("svc_test", "secret", &[]);
    match init(&capstan, tokens, "x") {
        Err(Error::Config(m)) => assert!(m.contains("Tokio runtime"), "{m}"),
        other => panic!("{other:?}"),
    }
}
