//! `traces`: the collector's Jaeger query API (`/api/…`) read with the wire types of
//! `capstan_proto::trace`, and one trace as OTLP JSON (`/v1/traces/{id}`). JSON and YAML output
//! print the answer as the server gave it; tables are for people.

use std::collections::{BTreeMap, HashMap, HashSet};

use capstan_proto::trace::{find_tag, JaegerResponse, Span, TagValue, Trace, PRINCIPAL_TAG};
use capstan_sdk::{segment, Error};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::{io_err, spin, Res, Run};
use crate::cli::{Format, TraceSearchArgs, TracesCommand};
use crate::output::{align, utc};
use crate::{exit, Failure};

impl Run<'_, '_> {
    pub(super) async fn traces(&mut self, c: TracesCommand) -> Res {
        match c {
            TracesCommand::Services => {
                let v = self.query("/api/services", &[]).await?;
                self.print_names(v, "service")
            }
            TracesCommand::Operations { service } => {
                let path = format!("/api/services/{}/operations", segment(&service));
                let v = self.query(&path, &[]).await?;
                self.print_names(v, "operation")
            }
            TracesCommand::Search(a) => self.search(a).await,
            TracesCommand::Get { trace_id } => {
                if self.format != Format::Table {
                    let path = format!("/v1/traces/{}", segment(&trace_id));
                    let v = self.query(&path, &[]).await?;
                    return self.print(&v, &[]);
                }
                let path = format!("/api/traces/{}", segment(&trace_id));
                let v = self.query(&path, &[]).await?;
                let r: JaegerResponse<Trace> = decode(v)?;
                let Some(trace) = r.data.into_iter().next() else {
                    return Err(Failure {
                        message: format!("not found: trace {trace_id}"),
                        hint: None,
                        code: exit::NOT_FOUND,
                    });
                };
                let text = tree(&trace);
                self.io.out.write_all(text.as_bytes()).map_err(io_err)?;
                Ok(exit::OK)
            }
        }
    }

    /// One GET with the saved login (a refused token is renewed once). Jaeger's error list
    /// (`errors: [{code, msg}]`) becomes the message.
    async fn query(&mut self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        let mut forced = false;
        loop {
            let api = self.client(forced).await?;
            let r = spin(
                self.io.interactive,
                api.call(Method::GET, path, query, None),
            )
            .await;
            match r {
                Err(Error::Api { status: 401, .. }) if !forced => forced = true,
                Err(e) => return Err(self.s.failure(jaeger_error(e))),
                Ok(v) => return Ok(v),
            }
        }
    }

    /// A list of names (`data` of the answer) as a one-column table, sorted.
    fn print_names(&mut self, v: Value, column: &str) -> Res {
        if self.format != Format::Table {
            return self.print(&v, &[]);
        }
        let mut names: Vec<String> = decode::<JaegerResponse<String>>(v)?.data;
        names.sort();
        let rows: Vec<Value> = names.iter().map(|n| json!({ column: n })).collect();
        self.print(&Value::Array(rows), &[column])
    }

    async fn search(&mut self, a: TraceSearchArgs) -> Res {
        let mut tags = BTreeMap::new();
        for t in &a.tags {
            let (k, v) = t
                .split_once('=')
                .ok_or_else(|| usage(format!("--tag {t:?} must be KEY=VALUE")))?;
            if tags.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(usage(format!("--tag {k} is given twice")));
            }
        }
        let mut q = vec![
            ("service", a.service.clone()),
            ("lookback", a.lookback.unwrap_or_else(|| "1h".into())),
            ("limit", a.limit.unwrap_or(20).to_string()),
        ];
        let optional = [
            ("operation", a.operation),
            ("minDuration", a.min_duration),
            ("maxDuration", a.max_duration),
        ];
        q.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
        if !tags.is_empty() {
            q.push(("tags", json!(tags).to_string()));
        }
        let v = self.query("/api/traces", &q).await?;
        if self.format != Format::Table {
            return self.print(&v, &[]);
        }
        let mut traces = decode::<JaegerResponse<Trace>>(v)?.data;
        traces.sort_by_key(|t| std::cmp::Reverse(t.bounds().map(|b| b.0)));
        if traces.is_empty() {
            let _ = writeln!(self.io.err, "no traces of {} found", a.service);
            return Ok(exit::OK);
        }
        let rows: Vec<Value> = traces.iter().map(summary).collect();
        self.print(
            &Value::Array(rows),
            &[
                "trace_id",
                "service",
                "operation",
                "spans",
                "duration",
                "start",
            ],
        )
    }
}

fn usage(message: String) -> Failure {
    Failure {
        message,
        hint: None,
        code: exit::USAGE,
    }
}

/// An answer as a wire type; a mismatch is the server's fault, said so.
fn decode<T: DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v)
        .map_err(|e| Failure::new(format!("unexpected answer from Capstan: {e}")))
}

/// Jaeger's `errors[].msg` as the message of an API error (Capstan's own bodies have a
/// `message` already).
fn jaeger_error(e: Error) -> Error {
    match e {
        Error::Api {
            status,
            code,
            message,
            mut body,
        } => {
            let msgs: Vec<String> = body
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("msg").and_then(Value::as_str).map(str::to_owned))
                .collect();
            if msgs.is_empty() || body.get("message").is_some() {
                return Error::Api {
                    status,
                    code,
                    message,
                    body,
                };
            }
            if let Some(o) = body.as_object_mut() {
                o.remove("errors");
            }
            Error::Api {
                status,
                code,
                message: msgs.join("; "),
                body,
            }
        }
        other => other,
    }
}

/// One row of `traces search`.
fn summary(t: &Trace) -> Value {
    let root = t.roots().into_iter().next();
    let (start, end) = t.bounds().unwrap_or((0, 0));
    json!({
        "trace_id": t.trace_id,
        "service": root.and_then(|s| t.process(s)).map(|p| p.service_name.as_str()),
        "operation": root.map(|s| s.operation_name.as_str()),
        "spans": t.spans.len(),
        "duration": duration(end - start),
        "start": timestamp(start),
    })
}

/// A trace as an indented tree, children under their parent in start order.
fn tree(t: &Trace) -> String {
    let mut children: HashMap<&str, Vec<&Span>> = HashMap::new();
    for s in &t.spans {
        if let Some(p) = s.parent_span_id() {
            children.entry(p).or_default().push(s);
        }
    }
    for c in children.values_mut() {
        c.sort_by_key(|s| s.start_time);
    }
    let mut grid = vec![vec![
        "SERVICE (PRINCIPAL)".to_owned(),
        "OPERATION".into(),
        "DURATION".into(),
        "STATUS".into(),
    ]];
    let mut seen = HashSet::new();
    let mut stack: Vec<(&Span, usize)> = t.roots().into_iter().rev().map(|s| (s, 0)).collect();
    // Spans on a reference cycle have no root above them: shown at the top, after the rest.
    let mut rest: Vec<&Span> = t.spans.iter().collect();
    rest.sort_by_key(|s| s.start_time);
    while let Some((s, depth)) = stack.pop().or_else(|| {
        let next = rest.iter().find(|s| !seen.contains(s.span_id.as_str()))?;
        Some((*next, 0))
    }) {
        if !seen.insert(s.span_id.as_str()) {
            continue;
        }
        grid.push(vec![
            format!("{}{}", "  ".repeat(depth), who(t, s)),
            s.operation_name.clone(),
            duration(s.duration),
            status(s),
        ]);
        for c in children.get(s.span_id.as_str()).into_iter().flatten().rev() {
            stack.push((c, depth + 1));
        }
    }
    let (start, end) = t.bounds().unwrap_or((0, 0));
    format!(
        "trace {}: {} span{}, {}, started {}\n{}",
        t.trace_id,
        t.spans.len(),
        if t.spans.len() == 1 { "" } else { "s" },
        duration(end - start),
        timestamp(start),
        align(&grid)
    )
}

/// `service (principal)` of a span.
fn who(t: &Trace, s: &Span) -> String {
    let Some(p) = t.process(s) else {
        return format!("? ({})", s.process_id);
    };
    match find_tag(&p.tags, PRINCIPAL_TAG) {
        Some(principal) => format!("{} ({principal})", p.service_name),
        None => p.service_name.clone(),
    }
}

/// `OK`, `ERROR` (with the description), or `-` when unset.
fn status(s: &Span) -> String {
    let code = match find_tag(&s.tags, "otel.status_code") {
        Some(TagValue::String(c)) => c.to_uppercase(),
        _ if find_tag(&s.tags, "error") == Some(&TagValue::Bool(true)) => "ERROR".into(),
        _ => return "-".into(),
    };
    match find_tag(&s.tags, "otel.status_description") {
        Some(d) if code == "ERROR" => format!("ERROR: {d}"),
        _ => code,
    }
}

/// Microseconds for people: `850µs`, `12.35ms`, `1.50s`, `2m05s`.
fn duration(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        1_000_000..=59_999_999 => format!("{:.2}s", us as f64 / 1e6),
        _ => format!("{}m{:02}s", us / 60_000_000, us / 1_000_000 % 60),
    }
}

/// Microseconds since the epoch as UTC with milliseconds.
fn timestamp(us: u64) -> String {
    let secs = i64::try_from(us / 1_000_000).unwrap_or(i64::MAX);
    format!(
        "{}.{:03}Z",
        utc(secs).trim_end_matches('Z'),
        us / 1_000 % 1_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        id: &str,
        parent: Option<&str>,
        name: &str,
        start: u64,
        dur: u64,
        tags: Value,
    ) -> Value {
        let refs = match parent {
            Some(p) => json!([{"refType": "CHILD_OF", "traceID": "t1", "spanID": p}]),
            None => json!([]),
        };
        json!({"traceID": "t1", "spanID": id, "operationName": name, "references": refs,
               "startTime": start, "duration": dur, "tags": tags, "logs": [], "processID": "p1"})
    }

    fn trace(spans: Vec<Value>) -> Trace {
        serde_json::from_value(json!({
            "traceID": "t1",
            "spans": spans,
            "processes": {"p1": {"serviceName": "orders", "tags": [
                {"key": "capstan.principal", "type": "string", "value": "svc_abc"}]}},
            "warnings": null
        }))
        .unwrap()
    }

    #[test]
    fn a_trace_is_an_indented_tree_in_start_order() {
        let t = trace(vec![
            span(
                "c2",
                Some("r"),
                "db.write",
                1_700_000_000_300_000,
                2_000,
                json!([]),
            ),
            span(
                "r",
                None,
                "GET /orders/{id}",
                1_700_000_000_000_000,
                450_000,
                json!([{"key": "otel.status_code", "type": "string", "value": "OK"}]),
            ),
            span(
                "g",
                Some("c1"),
                "cache.get",
                1_700_000_000_150_000,
                800,
                json!([]),
            ),
            span(
                "c1",
                Some("r"),
                "db.query",
                1_700_000_000_100_000,
                120_500,
                json!([
                {"key": "otel.status_code", "type": "string", "value": "ERROR"},
                {"key": "otel.status_description", "type": "string", "value": "timeout"},
                {"key": "error", "type": "bool", "value": true}]),
            ),
        ]);
        assert_eq!(
            tree(&t),
            "trace t1: 4 spans, 450.00ms, started 2023-11-14T22:13:20.000Z\n\
             SERVICE (PRINCIPAL)   OPERATION         DURATION  STATUS\n\
             orders (svc_abc)      GET /orders/{id}  450.00ms  OK\n  \
             orders (svc_abc)    db.query          120.50ms  ERROR: timeout\n    \
             orders (svc_abc)  cache.get         800µs     -\n  \
             orders (svc_abc)    db.write          2.00ms    -\n"
        );
        let row = summary(&t);
        assert_eq!(row["operation"], "GET /orders/{id}");
        assert_eq!(row["service"], "orders");
        assert_eq!(row["spans"], 4);
    }

    #[test]
    fn spans_on_a_cycle_are_still_shown() {
        let t = trace(vec![
            span("a", Some("b"), "x", 2, 1, json!([])),
            span("b", Some("a"), "y", 1, 1, json!([])),
        ]);
        let text = tree(&t);
        assert!(text.contains(" y "), "{text}");
        assert!(text.contains(" x "), "{text}");
    }

    #[test]
    fn durations_and_times_read_well() {
        assert_eq!(duration(850), "850µs");
        assert_eq!(duration(12_345), "12.35ms");
        assert_eq!(duration(1_500_000), "1.50s");
        assert_eq!(duration(125_000_000), "2m05s");
        assert_eq!(timestamp(1_700_000_000_123_456), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn jaeger_errors_become_the_message() {
        let e = jaeger_error(Error::Api {
            status: 400,
            code: "bad_request".into(),
            message: "HTTP 400 Bad Request".into(),
            body: json!({"data": null, "errors": [{"code": 400, "msg": "unparseable lookback"}]}),
        });
        match e {
            Error::Api { message, body, .. } => {
                assert_eq!(message, "unparseable lookback");
                assert!(body.get("errors").is_none());
            }
            other => panic!("{other:?}"),
        }
    }
}
