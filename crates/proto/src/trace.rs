//! Wire types of the trace collector's query API, which is Jaeger's v1 query API (what the
//! Jaeger UI and Grafana's Jaeger data source call): `GET /api/services`,
//! `GET /api/services/{service}/operations`, `GET /api/traces?…` and `GET /api/traces/{id}`.
//!
//! Field names are Jaeger's exactly (`traceID`, `spanID`, `operationName`, `startTime`, …).
//! Times are microseconds: `startTime` since the Unix epoch, `duration` a length. Ids are
//! lowercase hex (32 digits for a trace, 16 for a span). Deserialization accepts `null` where
//! Jaeger writes a list or map it has nothing for.
//!
//! Spans arrive over OTLP (`POST /v1/traces`); `GET /v1/traces/{id}` answers OTLP's own JSON,
//! which is not modelled here.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The process tag (and OTLP resource attribute) naming the principal that sent the spans.
pub const PRINCIPAL_TAG: &str = "capstan.principal";

/// The envelope of every answer of the query API: `{"data": …, "total": N, "limit": 0,
/// "offset": 0, "errors": null}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct JaegerResponse<T> {
    /// The answer: service names, operation names or traces.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub data: Vec<T>,
    /// How many items `data` has.
    #[serde(default)]
    pub total: i64,
    /// Always 0 (Jaeger does not page).
    #[serde(default)]
    pub limit: i64,
    /// Always 0.
    #[serde(default)]
    pub offset: i64,
    /// What went wrong, or `null`.
    #[serde(default)]
    pub errors: Option<Vec<JaegerError>>,
}

impl<T> JaegerResponse<T> {
    /// A successful answer with `data`.
    pub fn ok(data: Vec<T>) -> JaegerResponse<T> {
        JaegerResponse {
            total: i64::try_from(data.len()).unwrap_or(i64::MAX),
            data,
            limit: 0,
            offset: 0,
            errors: None,
        }
    }
}

/// One error of a failed query, as Jaeger reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JaegerError {
    /// The HTTP status.
    pub code: i32,
    /// What is wrong.
    pub msg: String,
    /// The trace it concerns, if one.
    #[serde(rename = "traceID", default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// One trace: its spans, and the processes (services) that reported them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Trace {
    /// The trace id.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Its spans, in no particular order.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub spans: Vec<Span>,
    /// Process id (`p1`, `p2`, …, what [`Span::process_id`] names) → process.
    #[serde(default, deserialize_with = "null_as_empty_map")]
    pub processes: BTreeMap<String, Process>,
    /// Problems found assembling the trace, or `null`.
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
}

/// One span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Span {
    /// The trace id.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// The span id.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// Trace flags (bit 0: sampled).
    #[serde(default)]
    pub flags: u32,
    /// The span's name.
    #[serde(rename = "operationName")]
    pub operation_name: String,
    /// Its parent (`CHILD_OF`) and links (`FOLLOWS_FROM`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub references: Vec<Reference>,
    /// Start, microseconds since the Unix epoch.
    #[serde(rename = "startTime")]
    pub start_time: u64,
    /// Length in microseconds.
    pub duration: u64,
    /// Attributes, and what OTLP keeps beside them (`span.kind`, `otel.status_code`,
    /// `otel.status_description`, `error`, `otel.scope.name`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<KeyValue>,
    /// Events.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub logs: Vec<Log>,
    /// The key of its process in [`Trace::processes`].
    #[serde(rename = "processID")]
    pub process_id: String,
    /// Problems with this span, or `null`.
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
}

/// A reference from a span to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reference {
    /// How the spans relate.
    #[serde(rename = "refType")]
    pub ref_type: RefType,
    /// The other span's trace.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// The other span.
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// Kinds of [`Reference`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefType {
    /// The other span is the parent.
    ChildOf,
    /// A link (OTLP) or follows-from relation.
    FollowsFrom,
}

/// An event of a span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Log {
    /// When, microseconds since the Unix epoch.
    pub timestamp: u64,
    /// Its name (as the field `event`) and attributes.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub fields: Vec<KeyValue>,
}

/// A service instance: what OTLP calls a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Process {
    /// `service.name`.
    #[serde(rename = "serviceName")]
    pub service_name: String,
    /// The other resource attributes, and [`PRINCIPAL_TAG`].
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<KeyValue>,
}

/// A typed tag: `{"key": …, "type": "string" | "bool" | "int64" | "float64" | "binary",
/// "value": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireTag", into = "WireTag")]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: TagValue,
}

/// The value of a [`KeyValue`].
#[derive(Debug, Clone, PartialEq)]
pub enum TagValue {
    /// `string`.
    String(String),
    /// `bool`.
    Bool(bool),
    /// `int64`.
    Int64(i64),
    /// `float64`.
    Float64(f64),
    /// `binary`: the bytes in standard base64, as on the wire.
    Binary(String),
}

impl KeyValue {
    /// A tag.
    pub fn new(key: impl Into<String>, value: TagValue) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
        }
    }
}

impl std::fmt::Display for TagValue {
    /// The value as text (binary as its base64).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TagValue::String(s) | TagValue::Binary(s) => f.write_str(s),
            TagValue::Bool(b) => write!(f, "{b}"),
            TagValue::Int64(i) => write!(f, "{i}"),
            TagValue::Float64(x) => write!(f, "{x}"),
        }
    }
}

/// The tag `key` of `tags`, if there is one.
pub fn find_tag<'a>(tags: &'a [KeyValue], key: &str) -> Option<&'a TagValue> {
    tags.iter().find(|t| t.key == key).map(|t| &t.value)
}

impl Span {
    /// The parent's span id: the first `CHILD_OF` reference within the same trace.
    pub fn parent_span_id(&self) -> Option<&str> {
        self.references
            .iter()
            .find(|r| r.ref_type == RefType::ChildOf && r.trace_id == self.trace_id)
            .map(|r| r.span_id.as_str())
    }

    /// When it ended, microseconds since the Unix epoch.
    pub fn end_time(&self) -> u64 {
        self.start_time.saturating_add(self.duration)
    }
}

impl Trace {
    /// The spans whose parent is not in the trace (the root, or the tops of the parts that
    /// arrived), earliest first.
    pub fn roots(&self) -> Vec<&Span> {
        let ids: std::collections::HashSet<&str> =
            self.spans.iter().map(|s| s.span_id.as_str()).collect();
        let mut roots: Vec<&Span> = self
            .spans
            .iter()
            .filter(|s| s.parent_span_id().is_none_or(|p| !ids.contains(p)))
            .collect();
        roots.sort_by_key(|s| s.start_time);
        roots
    }

    /// The earliest start and the latest end of its spans (microseconds), if it has any.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let start = self.spans.iter().map(|s| s.start_time).min()?;
        let end = self.spans.iter().map(Span::end_time).max()?;
        Some((start, end))
    }

    /// The process of `span`.
    pub fn process(&self, span: &Span) -> Option<&Process> {
        self.processes.get(&span.process_id)
    }
}

/// The wire form of a [`KeyValue`].
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = KeyValue)]
struct WireTag {
    /// The key.
    key: String,
    /// `string`, `bool`, `int64`, `float64` or `binary` (standard base64).
    #[serde(rename = "type")]
    kind: String,
    /// The value, of that type.
    #[schema(value_type = Object)]
    value: Value,
}

impl TryFrom<WireTag> for KeyValue {
    type Error = String;

    fn try_from(w: WireTag) -> Result<KeyValue, String> {
        let bad = || format!("tag {:?}: {} is not of type {}", w.key, w.value, w.kind);
        // Numbers and booleans are also accepted as strings (some writers quote them).
        let text = w.value.as_str();
        let value = match w.kind.as_str() {
            "string" => TagValue::String(match &w.value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            "bool" => TagValue::Bool(
                w.value
                    .as_bool()
                    .or_else(|| text.and_then(|t| t.parse().ok()))
                    .ok_or_else(bad)?,
            ),
            "int64" => TagValue::Int64(
                w.value
                    .as_i64()
                    .or_else(|| text.and_then(|t| t.parse().ok()))
                    .ok_or_else(bad)?,
            ),
            "float64" => TagValue::Float64(
                w.value
                    .as_f64()
                    .or_else(|| text.and_then(|t| t.parse().ok()))
                    .ok_or_else(bad)?,
            ),
            "binary" => TagValue::Binary(text.ok_or_else(bad)?.to_owned()),
            other => return Err(format!("tag {:?}: unknown type {other:?}", w.key)),
        };
        Ok(KeyValue { key: w.key, value })
    }
}

impl From<KeyValue> for WireTag {
    fn from(kv: KeyValue) -> WireTag {
        let (kind, value) = match kv.value {
            TagValue::String(s) => ("string", Value::String(s)),
            TagValue::Bool(b) => ("bool", Value::Bool(b)),
            TagValue::Int64(i) => ("int64", Value::from(i)),
            // JSON has no NaN or infinity: those go out as text.
            TagValue::Float64(x) => (
                "float64",
                serde_json::Number::from_f64(x)
                    .map(Value::Number)
                    .unwrap_or_else(|| Value::String(x.to_string())),
            ),
            TagValue::Binary(b) => ("binary", Value::String(b)),
        };
        WireTag {
            key: kv.key,
            kind: kind.to_owned(),
            value,
        }
    }
}

impl utoipa::PartialSchema for KeyValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <WireTag as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for KeyValue {}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn null_as_empty_map<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    Ok(Option::<BTreeMap<String, V>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    /// A trace as Jaeger's query service writes it.
    fn jaeger_trace() -> Value {
        json!({
            "traceID": "0af7651916cd43dd8448eb211c80319c",
            "spans": [
                {
                    "traceID": "0af7651916cd43dd8448eb211c80319c",
                    "spanID": "00f067aa0ba902b7",
                    "flags": 1,
                    "operationName": "db.query",
                    "references": [{"refType": "CHILD_OF", "traceID": "0af7651916cd43dd8448eb211c80319c", "spanID": "b7ad6b7169203331"}],
                    "startTime": 1_700_000_000_200_000u64,
                    "duration": 1500,
                    "tags": [
                        {"key": "db.system", "type": "string", "value": "postgresql"},
                        {"key": "rows", "type": "int64", "value": 3},
                        {"key": "ratio", "type": "float64", "value": 0.5},
                        {"key": "error", "type": "bool", "value": true},
                        {"key": "blob", "type": "binary", "value": "AAE="}
                    ],
                    "logs": [{"timestamp": 1_700_000_000_200_100u64, "fields": [{"key": "event", "type": "string", "value": "retry"}]}],
                    "processID": "p1",
                    "warnings": null
                },
                {
                    "traceID": "0af7651916cd43dd8448eb211c80319c",
                    "spanID": "b7ad6b7169203331",
                    "flags": 1,
                    "operationName": "GET /orders/{id}",
                    "references": [],
                    "startTime": 1_700_000_000_000_000u64,
                    "duration": 250_000,
                    "tags": [],
                    "logs": [],
                    "processID": "p1",
                    "warnings": null
                }
            ],
            "processes": {"p1": {"serviceName": "orders", "tags": [{"key": "capstan.principal", "type": "string", "value": "svc_abc"}]}},
            "warnings": null
        })
    }

    #[test]
    fn jaeger_json_round_trips_exactly() {
        let v = jaeger_trace();
        let t: Trace = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&t).unwrap(), v);
        let child = &t.spans[0];
        assert_eq!(child.tags[1].value, TagValue::Int64(3));
        assert_eq!(child.tags[4].value, TagValue::Binary("AAE=".into()));
        assert_eq!(child.parent_span_id(), Some("b7ad6b7169203331"));
        assert_eq!(t.roots().len(), 1);
        assert_eq!(t.roots()[0].operation_name, "GET /orders/{id}");
        assert_eq!(
            t.bounds(),
            Some((1_700_000_000_000_000, 1_700_000_000_250_000))
        );
        let p = t.process(child).unwrap();
        assert_eq!(
            find_tag(&p.tags, PRINCIPAL_TAG),
            Some(&TagValue::String("svc_abc".into()))
        );
    }

    #[test]
    fn the_envelope_is_jaegers() {
        let r = JaegerResponse::ok(vec!["orders".to_owned()]);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"data": ["orders"], "total": 1, "limit": 0, "offset": 0, "errors": null})
        );
        let failed: JaegerResponse<Trace> = serde_json::from_value(json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": 404, "msg": "trace not found"}]
        }))
        .unwrap();
        assert!(failed.data.is_empty());
        assert_eq!(failed.errors.unwrap()[0].msg, "trace not found");
    }

    #[test]
    fn tags_are_checked_against_their_type() {
        let tag = |v: Value| serde_json::from_value::<KeyValue>(v);
        assert_eq!(
            tag(json!({"key": "n", "type": "int64", "value": "42"}))
                .unwrap()
                .value,
            TagValue::Int64(42),
            "a quoted number is accepted"
        );
        let e = tag(json!({"key": "n", "type": "int64", "value": "x"})).unwrap_err();
        assert!(e.to_string().contains("is not of type int64"), "{e}");
        let e = tag(json!({"key": "n", "type": "uuid", "value": "x"})).unwrap_err();
        assert!(e.to_string().contains("unknown type"), "{e}");
        // JSON has no NaN.
        let nan = serde_json::to_value(KeyValue::new("x", TagValue::Float64(f64::NAN))).unwrap();
        assert_eq!(nan["value"], "NaN");
    }

    #[test]
    fn a_span_whose_parent_is_missing_is_a_root() {
        let mut v = jaeger_trace();
        v["spans"].as_array_mut().unwrap().remove(1);
        let t: Trace = serde_json::from_value(v).unwrap();
        assert_eq!(t.roots()[0].operation_name, "db.query");
    }
}
