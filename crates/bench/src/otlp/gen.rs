//! Deterministic synthetic spans shaped like an instrumented HTTP fleet: 20 services, 20
//! operations, traces of 10 spans, 10 attributes per span (strings and integers with the
//! OpenTelemetry semantic-convention names), a resource per service as an SDK sends it.
//!
//! Span `g` of a data set (a global index) is always the same span: its trace is `g / 10`, and
//! its ids, service, operation and times come from a hash of the data set's seed and `g`, so the
//! OTLP bodies sent to the server and the rows copied into Postgres are built from the same
//! requests without keeping either around.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValueKind;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};

/// Spans in one export request, as the OpenTelemetry SDKs' batch processor sends by default.
pub const SPANS_PER_REQUEST: usize = 512;
/// Spans of one trace.
pub const SPANS_PER_TRACE: u64 = 10;

/// The services.
pub const SERVICES: [&str; 20] = [
    "frontend",
    "api-gateway",
    "auth",
    "user-profile",
    "cart",
    "checkout",
    "payment",
    "fraud-detection",
    "pricing",
    "currency",
    "product-catalog",
    "search",
    "recommendation",
    "inventory",
    "shipping",
    "quote",
    "email",
    "notification",
    "accounting",
    "ad",
];

/// The operations (method, route); the span name is `"{method} {route}"`.
pub const OPERATIONS: [(&str, &str); 20] = [
    ("GET", "/api/v1/products/{id}"),
    ("GET", "/api/v1/products"),
    ("POST", "/api/v1/cart/items"),
    ("DELETE", "/api/v1/cart/items/{id}"),
    ("GET", "/api/v1/cart"),
    ("POST", "/api/v1/checkout"),
    ("POST", "/api/v1/payments"),
    ("GET", "/api/v1/payments/{id}"),
    ("GET", "/api/v1/users/{id}"),
    ("PUT", "/api/v1/users/{id}"),
    ("POST", "/api/v1/sessions"),
    ("GET", "/api/v1/search"),
    ("GET", "/api/v1/recommendations"),
    ("GET", "/api/v1/inventory/{sku}"),
    ("POST", "/api/v1/shipments"),
    ("GET", "/api/v1/quotes/{id}"),
    ("POST", "/api/v1/emails"),
    ("POST", "/api/v1/notifications"),
    ("POST", "/api/v1/ledger/entries"),
    ("GET", "/api/v1/ads"),
];

const USER_AGENTS: [&str; 4] = [
    "okhttp/4.12.0",
    "Go-http-client/1.1",
    "python-requests/2.31.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
];

/// The span name of operation `op`.
pub fn operation_name(op: usize) -> String {
    let (method, route) = OPERATIONS[op % OPERATIONS.len()];
    format!("{method} {route}")
}

/// Which spans a data set holds and when they start.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Distinguishes data sets (their ids never collide).
    pub seed: u64,
    /// Spans in the data set.
    pub spans: u64,
    /// Every trace starts at or before this (Unix ns).
    pub newest_ns: i64,
    /// Traces start over `[newest_ns - spread_ns, newest_ns]` in the order of their spans'
    /// indexes, as spans of live services arrive, each up to [`JITTER_NS`] early.
    pub spread_ns: i64,
}

/// How much earlier than its place in the order a trace may start: exporters batch for a few
/// seconds, and traces last a while, so arrivals are only roughly in time order.
pub const JITTER_NS: i64 = 5_000_000_000;

/// SplitMix64: a cheap, well-mixed hash of one word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Shape {
    fn hash(&self, what: u64, x: u64) -> u64 {
        mix(mix(self.seed ^ what.wrapping_mul(0x2545_f491_4f6c_dd1d)) ^ x)
    }

    fn trace_id(&self, trace: u64) -> Vec<u8> {
        let mut id = Vec::with_capacity(16);
        id.extend_from_slice(&self.hash(1, trace).to_be_bytes());
        // Never all zero: the low word is odd.
        id.extend_from_slice(&(self.hash(2, trace) | 1).to_be_bytes());
        id
    }

    fn span_id(&self, trace: u64, j: u64) -> Vec<u8> {
        (self.hash(3, trace * SPANS_PER_TRACE + j) | 1)
            .to_be_bytes()
            .to_vec()
    }

    fn trace_start(&self, trace: u64) -> i64 {
        let traces = (self.spans / SPANS_PER_TRACE).max(1);
        let place = trace.min(traces) as f64 / traces as f64;
        let jitter = (self.hash(4, trace) % JITTER_NS as u64) as i64;
        // Leave room for the trace's own spans after its start.
        self.newest_ns - 50_000_000 - self.spread_ns + (place * self.spread_ns as f64) as i64
            - jitter
    }

    /// The service and operation of span `g` (uniform over all 400 pairs).
    pub fn service_and_operation(&self, g: u64) -> (usize, usize) {
        let h = self.hash(5, g);
        (
            (h % SERVICES.len() as u64) as usize,
            ((h >> 32) % OPERATIONS.len() as u64) as usize,
        )
    }

    /// Span `g`, and the index of its service.
    fn span(&self, g: u64) -> (usize, Span) {
        let trace = g / SPANS_PER_TRACE;
        let j = g % SPANS_PER_TRACE;
        let h = self.hash(6, g);
        let (service, op) = self.service_and_operation(g);
        let (method, route) = OPERATIONS[op];
        let start = self.trace_start(trace) + j as i64 * 2_000_000;
        let duration = 100_000 + (h % 40_000_000) as i64;
        let error = h.is_multiple_of(50);
        let status_code: i64 = if error {
            500
        } else if h.is_multiple_of(7) {
            404
        } else {
            200
        };
        let id = (h >> 20) % 1_000_000;
        let target = route
            .replace("{id}", &id.to_string())
            .replace("{sku}", &format!("SKU-{id:06}"));
        let attributes = vec![
            kv_str("http.method", method),
            kv_str("http.route", route),
            kv_int("http.status_code", status_code),
            kv_str("http.target", &target),
            kv_str(
                "net.peer.name",
                &format!("{}-{:x}.prod.svc.cluster.local", SERVICES[service], h % 16),
            ),
            kv_int("net.peer.port", 8080),
            kv_str("user.id", &format!("user-{}", (h >> 8) % 100_000)),
            kv_str("http.user_agent", USER_AGENTS[(h >> 40) as usize % 4]),
            kv_int("http.request_content_length", ((h >> 12) % 4096) as i64),
            kv_str("thread.name", "tokio-runtime-worker"),
        ];
        let span = Span {
            trace_id: self.trace_id(trace),
            span_id: self.span_id(trace, j),
            parent_span_id: if j == 0 {
                Vec::new()
            } else {
                self.span_id(trace, (j - 1) / 2)
            },
            flags: 0x101,
            name: format!("{method} {route}"),
            kind: if j == 0 { 2 } else { 2 + (j % 2) as i32 },
            start_time_unix_nano: start as u64,
            end_time_unix_nano: (start + duration) as u64,
            attributes,
            status: error.then(|| Status {
                message: "upstream returned 500".into(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        };
        (service, span)
    }

    /// The export request of spans `first .. first + n`: one `ResourceSpans` per service in it,
    /// as a collector batching for several services sends.
    pub fn export(&self, first: u64, n: usize) -> ExportTraceServiceRequest {
        let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES.len()];
        for g in first..first + n as u64 {
            let (service, span) = self.span(g);
            by_service[service].push(span);
        }
        let resource_spans = by_service
            .into_iter()
            .enumerate()
            .filter(|(_, spans)| !spans.is_empty())
            .map(|(service, spans)| ResourceSpans {
                resource: Some(resource(service)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "opentelemetry-instrumentation-http".into(),
                        version: "0.30.0".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    }
}

fn resource(service: usize) -> Resource {
    let name = SERVICES[service];
    Resource {
        attributes: vec![
            kv_str("service.name", name),
            kv_str("service.version", "2.14.3"),
            kv_str(
                "service.instance.id",
                &format!("{name}-6d5f8c7b9-{:05x}", mix(service as u64) % 0xfffff),
            ),
            kv_str("host.name", &format!("ip-10-0-{service}-17.ec2.internal")),
            kv_str("deployment.environment", "production"),
            kv_str("telemetry.sdk.name", "opentelemetry"),
            kv_str("telemetry.sdk.language", "rust"),
            kv_str("telemetry.sdk.version", "0.30.0"),
        ],
        ..Default::default()
    }
}

fn kv_str(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(AnyValueKind::StringValue(v.into())),
        }),
    }
}

fn kv_int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(AnyValueKind::IntValue(v)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn shape() -> Shape {
        Shape {
            seed: 7,
            spans: 1024,
            newest_ns: 1_900_000_000_000_000_000,
            spread_ns: 3_600_000_000_000,
        }
    }

    #[test]
    fn requests_hold_distinct_valid_spans() {
        let s = shape();
        let a = s.export(0, SPANS_PER_REQUEST);
        let b = s.export(SPANS_PER_REQUEST as u64, SPANS_PER_REQUEST);
        let mut ids = HashSet::new();
        let mut n = 0;
        for rs in a.resource_spans.iter().chain(&b.resource_spans) {
            for span in &rs.scope_spans[0].spans {
                n += 1;
                assert!(ids.insert((span.trace_id.clone(), span.span_id.clone())));
                assert_eq!(span.attributes.len(), 10);
                assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
                assert!(span.start_time_unix_nano as i64 <= s.newest_ns);
                assert!(
                    span.start_time_unix_nano as i64 >= s.newest_ns - s.spread_ns - 60e9 as i64
                );
            }
        }
        assert_eq!(n, 2 * SPANS_PER_REQUEST);
        // Deterministic: the same request twice.
        assert_eq!(s.export(0, SPANS_PER_REQUEST), a);
    }

    #[test]
    fn every_service_and_operation_pair_occurs() {
        let s = shape();
        let pairs: HashSet<_> = (0..20_000).map(|g| s.service_and_operation(g)).collect();
        assert_eq!(pairs.len(), SERVICES.len() * OPERATIONS.len());
    }
}
