//! The trace domain with no I/O: an OTLP export request checked span by span and turned into
//! rows attributed to the principal that sent it, and stored rows turned back into OTLP
//! (`TracesData`) and Jaeger's JSON. No axum or sqlx in it.
//!
//! A row keeps the span, its resource and its scope as their protobuf encoding (what the client
//! sent, re-encoded), so every attribute, event, link and status comes back as it arrived; the
//! columns beside them (ids, service, operation, times, status, a flat `tags` map) are what the
//! searches use.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValueKind;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
use prost::Message;
use serde_json::{json, Map, Value};

/// The service of spans whose resource names none (the OpenTelemetry default).
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// The resource attribute (OTLP) and process tag (Jaeger) naming the ingesting principal.
pub const PRINCIPAL_ATTRIBUTE: &str = "capstan.principal";
/// Longest service name (it is part of a CRN).
pub const MAX_SERVICE_LEN: usize = 256;
/// Longest span name (characters).
pub const MAX_NAME_LEN: usize = 1024;
/// Longest operation kept in the searched column (bytes; the span keeps its whole name).
pub const MAX_NAME_BYTES: usize = 1024;
/// Nanoseconds in a day.
pub const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// One span ready for storage.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRow {
    /// The tenant it was sent to.
    pub tenant: String,
    /// 16 bytes.
    pub trace_id: Vec<u8>,
    /// 8 bytes.
    pub span_id: Vec<u8>,
    /// 8 bytes, or none for a root span.
    pub parent_span_id: Option<Vec<u8>>,
    /// The service its resource claims (`service.name`).
    pub service: String,
    /// The principal that sent it (`svc_…`, or `anonymous`).
    pub principal: String,
    /// The span's name (the operation).
    pub name: String,
    /// `SpanKind` (0 unspecified … 5 consumer).
    pub kind: i16,
    /// Start, Unix nanoseconds.
    pub start_ns: i64,
    /// End minus start, nanoseconds.
    pub duration_ns: i64,
    /// `Status.code` (0 unset, 1 ok, 2 error).
    pub status_code: i16,
    /// Resource and span attributes as one flat JSON object of strings (the span's win), for
    /// tag searches.
    pub tags: String,
    /// The span, protobuf.
    pub span: Vec<u8>,
    /// Its resource, protobuf.
    pub resource: Vec<u8>,
    /// Its instrumentation scope, protobuf.
    pub scope: Vec<u8>,
}

/// What an export request's spans must satisfy besides their own rules.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Now, Unix nanoseconds.
    pub now_ns: i64,
    /// Spans starting before this are refused (they would fall outside retention).
    pub oldest_ns: i64,
    /// Spans starting after this are refused (a clock far ahead).
    pub newest_ns: i64,
}

/// The spans of one resource of a request: one claimed service.
#[derive(Debug, Default)]
pub struct ServiceSpans {
    /// The claimed service.
    pub service: String,
    /// Its valid spans.
    pub rows: Vec<SpanRow>,
}

/// An export request checked: valid spans grouped by claimed service, and the refused ones.
#[derive(Debug, Default)]
pub struct Checked {
    /// Valid spans by service (in request order).
    pub services: Vec<ServiceSpans>,
    /// How many spans were refused.
    pub rejected: i64,
    /// Why (the first few reasons, for `partial_success.error_message`).
    pub errors: Vec<String>,
}

impl Checked {
    fn reject(&mut self, n: usize, why: String) {
        self.rejected += n as i64;
        if self.errors.len() < 5 && n > 0 {
            self.errors.push(why);
        }
    }

    /// Refuses every span of `service` (the principal may not report it).
    pub fn refuse_service(&mut self, service: &str, why: String) {
        let mut n = 0;
        for s in self.services.iter_mut().filter(|s| s.service == service) {
            n += s.rows.len();
            s.rows.clear();
        }
        self.reject(n, why);
    }

    /// The message of `partial_success`, empty when nothing was refused.
    pub fn error_message(&self) -> String {
        if self.rejected == 0 {
            return String::new();
        }
        let mut m = self.errors.join("; ");
        if self.rejected as usize > self.errors.len() {
            m.push_str(" (and others like them)");
        }
        m
    }

    /// The accepted spans.
    pub fn into_rows(self) -> Vec<SpanRow> {
        self.services.into_iter().flat_map(|s| s.rows).collect()
    }

    /// How many spans were accepted.
    pub fn accepted(&self) -> usize {
        self.services.iter().map(|s| s.rows.len()).sum()
    }
}

/// The service a resource claims.
pub fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValueKind::StringValue(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned())
}

/// A service name Capstan can name in a CRN: 1 to 256 characters, no control characters.
pub fn check_service_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_SERVICE_LEN {
        return Err(format!("service.name must be 1 to {MAX_SERVICE_LEN} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err("service.name must not contain control characters".into());
    }
    Ok(())
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|x| *x == 0)
}

/// Why a span cannot be stored, if it cannot.
fn check_span(span: &Span, w: &Window) -> Result<(), String> {
    if span.trace_id.len() != 16 || all_zero(&span.trace_id) {
        return Err("a span's traceId must be 16 bytes, not all zero (hex in JSON)".into());
    }
    if span.span_id.len() != 8 || all_zero(&span.span_id) {
        return Err("a span's spanId must be 8 bytes, not all zero (hex in JSON)".into());
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err("a span's parentSpanId must be empty or 8 bytes".into());
    }
    if span.start_time_unix_nano == 0 || span.end_time_unix_nano == 0 {
        return Err(
            "a span needs startTimeUnixNano and endTimeUnixNano (OTLP/JSON field names are lowerCamelCase)"
                .into(),
        );
    }
    if span.end_time_unix_nano < span.start_time_unix_nano {
        return Err("a span's endTimeUnixNano is before its startTimeUnixNano".into());
    }
    let start = i64::try_from(span.start_time_unix_nano).unwrap_or(i64::MAX);
    if start < w.oldest_ns {
        return Err("a span starts before the retention window".into());
    }
    if start > w.newest_ns {
        return Err("a span starts more than a day in the future".into());
    }
    if i64::try_from(span.end_time_unix_nano).is_err() {
        return Err("a span's endTimeUnixNano is out of range".into());
    }
    if span.name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "a span's name is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if span.name.contains('\0') {
        return Err("a span's name must not contain NUL".into());
    }
    if !(0..=5).contains(&span.kind) {
        return Err("a span's kind must be 0 to 5".into());
    }
    if let Some(s) = &span.status {
        if !(0..=2).contains(&s.code) {
            return Err("a span's status code must be 0 to 2".into());
        }
    }
    Ok(())
}

/// An attribute value as the text tag searches compare with.
pub fn value_text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(AnyValueKind::StringValue(s)) => s.clone(),
        Some(AnyValueKind::BoolValue(b)) => b.to_string(),
        Some(AnyValueKind::IntValue(i)) => i.to_string(),
        Some(AnyValueKind::DoubleValue(d)) => d.to_string(),
        Some(AnyValueKind::BytesValue(b)) => base64::engine::general_purpose::STANDARD.encode(b),
        Some(other) => any_json(other).to_string(),
    }
}

/// An array or key-value list as plain JSON.
fn any_json(v: &AnyValueKind) -> Value {
    match v {
        AnyValueKind::StringValue(s) => Value::String(s.clone()),
        AnyValueKind::BoolValue(b) => Value::Bool(*b),
        AnyValueKind::IntValue(i) => json!(i),
        AnyValueKind::DoubleValue(d) => json!(d),
        AnyValueKind::BytesValue(b) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        AnyValueKind::ArrayValue(a) => Value::Array(
            a.values
                .iter()
                .map(|v| v.value.as_ref().map_or(Value::Null, any_json))
                .collect(),
        ),
        AnyValueKind::KvlistValue(l) => Value::Object(
            l.values
                .iter()
                .map(|kv| {
                    let v = kv
                        .value
                        .as_ref()
                        .and_then(|v| v.value.as_ref())
                        .map_or(Value::Null, any_json);
                    (kv.key.clone(), v)
                })
                .collect(),
        ),
    }
}

/// Postgres `jsonb` cannot hold NUL: tag text replaces it.
fn no_nul(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

fn tags_json(resource: &[KeyValue], span: &[KeyValue]) -> String {
    let mut m = Map::new();
    for kv in resource.iter().chain(span) {
        // `capstan.*` is Capstan's to say (the principal): a client cannot forge it.
        if kv.key.starts_with("capstan.") {
            continue;
        }
        m.insert(
            no_nul(&kv.key),
            Value::String(no_nul(&value_text(kv.value.as_ref()))),
        );
    }
    Value::Object(m).to_string()
}

/// Bounds on what one export may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Distinct services (resources' `service.name`) per export; spans of more are refused.
    pub max_services: usize,
    /// Attributes, events and links per span, and attributes per resource (OpenTelemetry's
    /// default limit is 128).
    pub max_items: usize,
    /// A resource's encoded size.
    pub max_resource_bytes: usize,
    /// The rows one export may become, in bytes (more is 413).
    pub max_row_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_services: 64,
            max_items: 128,
            max_resource_bytes: 64 << 10,
            max_row_bytes: 64 << 20,
        }
    }
}

/// The bytes a row holds in memory (what the ingest queue counts).
pub fn row_bytes(r: &SpanRow) -> usize {
    r.span.len() + r.resource.len() + r.scope.len() + r.tags.len() + r.name.len() + 128
}

/// The services an export claims, each once, in order, at most `max` (more are left out: their
/// spans are refused by [`check`]).
pub fn claimed_services(req: &ExportTraceServiceRequest, max: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let s = service_name(rs.resource.as_ref());
        if out.len() < max && check_service_name(&s).is_ok() && seen.insert(s.clone()) {
            out.push(s);
        }
    }
    out
}

/// Longest prefix of `s` of at most `max` bytes, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Checks every span of `req` and makes rows of the valid ones, attributed to `principal` in
/// `tenant`. Spans of services in `allowed`'s complement are refused with `refusal(service)`;
/// invalid spans are counted and described, never stored. Errs (413) when the rows would pass
/// `limits.max_row_bytes`.
pub fn check(
    req: ExportTraceServiceRequest,
    tenant: &str,
    principal: &str,
    w: &Window,
    limits: &Limits,
    allowed: &dyn Fn(&str) -> Option<String>,
) -> Result<Checked, String> {
    let mut out = Checked::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut budget = limits.max_row_bytes;
    for rs in req.resource_spans {
        let ResourceSpans {
            resource,
            scope_spans,
            ..
        } = rs;
        let service = service_name(resource.as_ref());
        let count: usize = scope_spans.iter().map(|s| s.spans.len()).sum();
        if let Err(e) = check_service_name(&service) {
            out.reject(count, e);
            continue;
        }
        if let Some(why) = allowed(&service) {
            out.reject(count, why);
            continue;
        }
        let resource = resource.unwrap_or_default();
        let names = resource
            .attributes
            .iter()
            .filter(|kv| kv.key == "service.name")
            .count();
        if names > 1 {
            out.reject(count, "a resource must name one service.name".into());
            continue;
        }
        let resource_bytes = resource.encode_to_vec();
        if resource.attributes.len() > limits.max_items
            || resource_bytes.len() > limits.max_resource_bytes
        {
            out.reject(
                count,
                format!(
                    "a resource may have at most {} attributes and {} bytes",
                    limits.max_items, limits.max_resource_bytes
                ),
            );
            continue;
        }
        let mut rows = Vec::with_capacity(count.min(4096));
        for ss in scope_spans {
            let ScopeSpans { scope, spans, .. } = ss;
            let scope_bytes = scope.unwrap_or_default().encode_to_vec();
            if scope_bytes.len() > limits.max_resource_bytes {
                out.reject(spans.len(), "an instrumentation scope is too large".into());
                continue;
            }
            for span in spans {
                if let Err(e) = check_span(&span, w) {
                    out.reject(1, e);
                    continue;
                }
                if span.attributes.len() > limits.max_items
                    || span.events.len() > limits.max_items
                    || span.links.len() > limits.max_items
                {
                    out.reject(
                        1,
                        format!(
                            "a span may have at most {} attributes, events and links each",
                            limits.max_items
                        ),
                    );
                    continue;
                }
                let start = span.start_time_unix_nano as i64;
                let end = span.end_time_unix_nano as i64;
                let row = SpanRow {
                    tenant: tenant.to_owned(),
                    trace_id: span.trace_id.clone(),
                    span_id: span.span_id.clone(),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| span.parent_span_id.clone()),
                    service: service.clone(),
                    principal: principal.to_owned(),
                    // Index entries have a byte limit: the column keeps at most 1 KiB.
                    name: truncate(&span.name, MAX_NAME_BYTES).to_owned(),
                    kind: span.kind as i16,
                    start_ns: start,
                    duration_ns: end - start,
                    status_code: span.status.as_ref().map_or(0, |s| s.code as i16),
                    tags: tags_json(&resource.attributes, &span.attributes),
                    span: span.encode_to_vec(),
                    resource: resource_bytes.clone(),
                    scope: scope_bytes.clone(),
                };
                budget = budget.checked_sub(row_bytes(&row)).ok_or_else(|| {
                    format!(
                        "the export would take more than {} bytes in memory; send smaller batches",
                        limits.max_row_bytes
                    )
                })?;
                rows.push(row);
            }
        }
        match index.get(&service) {
            Some(&i) => out.services[i].rows.extend(rows),
            None => {
                index.insert(service.clone(), out.services.len());
                out.services.push(ServiceSpans { service, rows });
            }
        }
    }
    Ok(out)
}

/// A stored span as read back.
#[derive(Debug, Clone)]
pub struct StoredSpan {
    /// The claimed service.
    pub service: String,
    /// The ingesting principal.
    pub principal: String,
    /// The span, protobuf.
    pub span: Vec<u8>,
    /// Its resource, protobuf.
    pub resource: Vec<u8>,
    /// Its scope, protobuf.
    pub scope: Vec<u8>,
}

/// A stored span decoded.
struct Decoded {
    service: String,
    principal: String,
    span: Span,
    resource: Resource,
    resource_key: Vec<u8>,
    scope: InstrumentationScope,
    scope_key: Vec<u8>,
}

fn decode(rows: Vec<StoredSpan>) -> Vec<Decoded> {
    rows.into_iter()
        .filter_map(|r| {
            let span = Span::decode(r.span.as_slice()).ok()?;
            let resource = Resource::decode(r.resource.as_slice()).ok()?;
            let scope = InstrumentationScope::decode(r.scope.as_slice()).ok()?;
            Some(Decoded {
                service: r.service,
                principal: r.principal,
                span,
                resource,
                resource_key: r.resource,
                scope,
                scope_key: r.scope,
            })
        })
        .collect()
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(AnyValueKind::StringValue(value.to_owned())),
        }),
    }
}

/// Stored spans as OTLP `TracesData`: one `ResourceSpans` per resource and principal, whose
/// resource carries the ingesting principal as `capstan.principal` beside what the client sent.
pub fn to_otlp(rows: Vec<StoredSpan>) -> TracesData {
    let mut out: Vec<ResourceSpans> = Vec::new();
    let mut index: HashMap<(Vec<u8>, String), usize> = HashMap::new();
    let mut scopes: HashMap<(usize, Vec<u8>), usize> = HashMap::new();
    for d in decode(rows) {
        let key = (d.resource_key, d.principal.clone());
        let i = *index.entry(key).or_insert_with(|| {
            let mut resource = d.resource.clone();
            resource
                .attributes
                .retain(|kv| kv.key != PRINCIPAL_ATTRIBUTE);
            resource
                .attributes
                .push(string_kv(PRINCIPAL_ATTRIBUTE, &d.principal));
            out.push(ResourceSpans {
                resource: Some(resource),
                scope_spans: Vec::new(),
                schema_url: String::new(),
            });
            out.len() - 1
        });
        let rs = &mut out[i];
        let n = rs.scope_spans.len();
        let p = *scopes.entry((i, d.scope_key)).or_insert(n);
        if p == n {
            rs.scope_spans.push(ScopeSpans {
                scope: Some(d.scope),
                spans: Vec::new(),
                schema_url: String::new(),
            });
        }
        rs.scope_spans[p].spans.push(d.span);
    }
    TracesData {
        resource_spans: out,
    }
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

/// A trace id from 32 hex digits (either case), or a Jaeger-style shorter one (left-padded).
pub fn parse_trace_id(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{s:0>32}");
    let bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&padded[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<_>>()?;
    (!all_zero(&bytes)).then_some(bytes)
}

fn jaeger_tag(key: &str, v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(AnyValueKind::BoolValue(b)) => json!({"key": key, "type": "bool", "value": b}),
        Some(AnyValueKind::IntValue(i)) => json!({"key": key, "type": "int64", "value": i}),
        Some(AnyValueKind::DoubleValue(d)) => json!({"key": key, "type": "float64", "value": d}),
        Some(AnyValueKind::BytesValue(b)) => json!({"key": key, "type": "binary",
            "value": base64::engine::general_purpose::STANDARD.encode(b)}),
        _ => json!({"key": key, "type": "string", "value": value_text(v)}),
    }
}

fn str_tag(key: &str, value: &str) -> Value {
    json!({"key": key, "type": "string", "value": value})
}

/// `SpanKind` as Jaeger's `span.kind` tag.
pub fn kind_name(kind: i32) -> Option<&'static str> {
    match kind {
        1 => Some("internal"),
        2 => Some("server"),
        3 => Some("client"),
        4 => Some("producer"),
        5 => Some("consumer"),
        _ => None,
    }
}

/// Jaeger's `span.kind` name as `SpanKind`.
pub fn kind_from_name(name: &str) -> Option<i16> {
    match name {
        "unspecified" | "" => Some(0),
        "internal" => Some(1),
        "server" => Some(2),
        "client" => Some(3),
        "producer" => Some(4),
        "consumer" => Some(5),
        _ => None,
    }
}

fn micros(ns: u64) -> u64 {
    ns / 1000
}

/// A Jaeger trace being built: spans, processes by id, and process ids by (resource, principal).
type JaegerTrace = (
    Vec<Value>,
    Vec<(String, Value)>,
    HashMap<(Vec<u8>, String), String>,
);

/// Stored spans as Jaeger traces (the v1 query API's JSON: times in microseconds, typed tags,
/// `references`, `processes`), one per trace id, in the order of `order` (trace ids); each
/// process carries the ingesting principal as the tag `capstan.principal`.
pub fn to_jaeger(rows: Vec<StoredSpan>, order: &[Vec<u8>]) -> Vec<Value> {
    let mut traces: BTreeMap<Vec<u8>, JaegerTrace> = BTreeMap::new();
    for d in decode(rows) {
        let entry = traces.entry(d.span.trace_id.clone()).or_default();
        let (spans, processes, ids) = entry;
        let pkey = (d.resource_key.clone(), d.principal.clone());
        let pid = match ids.get(&pkey) {
            Some(p) => p.clone(),
            None => {
                let p = format!("p{}", ids.len() + 1);
                let mut tags: Vec<Value> = d
                    .resource
                    .attributes
                    .iter()
                    .filter(|kv| kv.key != "service.name" && kv.key != PRINCIPAL_ATTRIBUTE)
                    .map(|kv| jaeger_tag(&kv.key, kv.value.as_ref()))
                    .collect();
                tags.push(str_tag(PRINCIPAL_ATTRIBUTE, &d.principal));
                processes.push((p.clone(), json!({"serviceName": d.service, "tags": tags})));
                ids.insert(pkey, p.clone());
                p
            }
        };
        spans.push(jaeger_span(&d, &pid));
    }
    let mut out = Vec::with_capacity(traces.len());
    for id in order {
        if let Some((spans, processes, _)) = traces.remove(id) {
            let processes: Map<String, Value> = processes.into_iter().collect();
            out.push(json!({
                "traceID": hex(id),
                "spans": spans,
                "processes": processes,
                "warnings": null,
            }));
        }
    }
    out
}

fn jaeger_span(d: &Decoded, pid: &str) -> Value {
    let s = &d.span;
    let trace = hex(&s.trace_id);
    let mut refs = Vec::new();
    if !s.parent_span_id.is_empty() {
        refs.push(
            json!({"refType": "CHILD_OF", "traceID": trace, "spanID": hex(&s.parent_span_id)}),
        );
    }
    for l in &s.links {
        refs.push(json!({"refType": "FOLLOWS_FROM", "traceID": hex(&l.trace_id), "spanID": hex(&l.span_id)}));
    }
    let mut tags: Vec<Value> = s
        .attributes
        .iter()
        .filter(|kv| kv.key != PRINCIPAL_ATTRIBUTE)
        .map(|kv| jaeger_tag(&kv.key, kv.value.as_ref()))
        .collect();
    if let Some(k) = kind_name(s.kind) {
        tags.push(str_tag("span.kind", k));
    }
    if let Some(st) = &s.status {
        match st.code {
            1 => tags.push(str_tag("otel.status_code", "OK")),
            2 => {
                tags.push(str_tag("otel.status_code", "ERROR"));
                tags.push(json!({"key": "error", "type": "bool", "value": true}));
            }
            _ => {}
        }
        if !st.message.is_empty() {
            tags.push(str_tag("otel.status_description", &st.message));
        }
    }
    if !d.scope.name.is_empty() {
        tags.push(str_tag("otel.scope.name", &d.scope.name));
    }
    if !d.scope.version.is_empty() {
        tags.push(str_tag("otel.scope.version", &d.scope.version));
    }
    let logs: Vec<Value> = s
        .events
        .iter()
        .map(|e| {
            let mut fields = vec![str_tag("event", &e.name)];
            fields.extend(
                e.attributes
                    .iter()
                    .map(|kv| jaeger_tag(&kv.key, kv.value.as_ref())),
            );
            json!({"timestamp": micros(e.time_unix_nano), "fields": fields})
        })
        .collect();
    json!({
        "traceID": trace,
        "spanID": hex(&s.span_id),
        "flags": s.flags & 0xff,
        "operationName": s.name,
        "references": refs,
        "startTime": micros(s.start_time_unix_nano),
        "duration": micros(s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano)),
        "tags": tags,
        "logs": logs,
        "processID": pid,
        "warnings": null,
    })
}

/// A Go-style duration (`1h`, `30m`, `1.5s`, `250ms`, `100us`, `10µs`, `5ns`, combined like
/// `1h30m`) in nanoseconds; what Jaeger's `lookback`, `minDuration` and `maxDuration` take.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * unit;
    }
    (total.is_finite() && total < 9.0e18).then_some(total as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("1h"), Some(3_600_000_000_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("250ms"), Some(250_000_000));
        assert_eq!(parse_duration("100us"), Some(100_000));
        assert_eq!(parse_duration("2d"), Some(2 * DAY_NS));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn trace_ids_parse_and_print() {
        let id = parse_trace_id("0af7651916cd43dd8448eb211c80319c").unwrap();
        assert_eq!(hex(&id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            hex(&parse_trace_id("1c").unwrap()),
            format!("{:0>32}", "1c")
        );
        assert!(parse_trace_id("00000000000000000000000000000000").is_none());
        assert!(parse_trace_id("zz").is_none());
        assert!(parse_trace_id(&"a".repeat(33)).is_none());
    }
}
