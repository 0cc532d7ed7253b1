//! The search half of `capstan-bench otlp`: fill `trace_spans` fast (binary `COPY` from a
//! generator thread), then time Jaeger searches over HTTP against the running server.

use std::time::Instant;

use capstan_db::Db;
use capstan_trace::model::{Window, DAY_NS};
use capstan_trace::store::SqlTraceStore;
use serde_json::Value;
use sqlx::PgPool;

use super::copy;
use super::gen::{self, Shape, SPANS_PER_REQUEST};

/// Spans per `COPY` while loading.
const LOAD_BATCH: usize = 16 * SPANS_PER_REQUEST;

/// Rows of `shape`'s spans `0 .. total` as binary `COPY` batches, made on a thread of its own.
pub fn generate(
    shape: Shape,
    total: u64,
    tenant: String,
    principal: String,
    window: Window,
) -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let mut first = 0u64;
        while first < total {
            let mut rows = Vec::with_capacity(LOAD_BATCH);
            while rows.len() < LOAD_BATCH && first < total {
                let n = (total - first).min(SPANS_PER_REQUEST as u64) as usize;
                rows.extend(copy::rows_of(
                    shape.export(first, n),
                    &tenant,
                    &principal,
                    &window,
                ));
                first += n as u64;
            }
            if tx.blocking_send(copy::encode(&rows)).is_err() {
                return;
            }
        }
    });
    rx
}

/// What to store before searching.
pub struct Fill<'a> {
    /// Spans, starting over the 24 h before `now_ns`.
    pub spans: u64,
    /// Their tenant.
    pub tenant: &'a str,
    /// Their ingesting principal.
    pub principal: &'a str,
    /// Now, Unix ns.
    pub now_ns: i64,
}

/// How the table was filled.
pub struct Filled {
    /// Rows copied.
    pub loaded: u64,
    /// Seconds the copy took.
    pub load_secs: f64,
    /// Seconds `ANALYZE` took.
    pub analyze_secs: f64,
}

/// Copies `f.spans` spans into the (empty) `trace_spans` with two connections, creating the
/// day partitions they need first, then `ANALYZE`s it.
pub async fn fill(db: &Db, f: &Fill<'_>) -> Result<Filled, String> {
    let Db::Postgres(pool) = db else {
        return Err("the benchmark needs Postgres".into());
    };
    let shape = Shape {
        seed: 0x5ea7c4,
        spans: f.spans,
        newest_ns: f.now_ns,
        spread_ns: DAY_NS - 60 * 1_000_000_000,
    };
    let store = SqlTraceStore::new(db.clone());
    for day in (f.now_ns - DAY_NS).div_euclid(DAY_NS)..=f.now_ns.div_euclid(DAY_NS) + 1 {
        store
            .ensure_partition(day)
            .await
            .map_err(|e| e.to_string())?;
    }
    let window = Window {
        now_ns: f.now_ns,
        oldest_ns: f.now_ns - 7 * DAY_NS,
        newest_ns: f.now_ns + DAY_NS,
    };
    eprintln!("loading {} spans for the searches", f.spans);
    let start = Instant::now();
    let rx = generate(shape, f.spans, f.tenant.into(), f.principal.into(), window);
    let loaded = copy::copy_stream(pool, rx, 2).await?;
    let load_secs = start.elapsed().as_secs_f64();
    let analyzed = Instant::now();
    analyze(pool).await?;
    Ok(Filled {
        loaded,
        load_secs,
        analyze_secs: analyzed.elapsed().as_secs_f64(),
    })
}

async fn analyze(pool: &PgPool) -> Result<(), String> {
    sqlx::query("ANALYZE trace_spans")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("ANALYZE: {e}"))
}

/// The latencies of a series of searches, and how many came back short of 20 traces.
#[derive(Debug, Default)]
pub struct Searches {
    /// µs, sorted.
    pub latencies: Vec<u32>,
    /// Traces returned, in all.
    pub traces: u64,
    /// Searches answering fewer than `limit` traces.
    pub short: u64,
    /// Answers other than 200.
    pub errors: u64,
    /// The first of those.
    pub first_error: Option<String>,
}

/// Runs `n` searches `GET /api/traces?service=S[&operation=O]&start=&end=&limit=20` over the
/// window `[from_ns, to_ns]`, one at a time, each for a pseudo-random (service, operation).
pub async fn run(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    n: usize,
    with_operation: bool,
    (from_ns, to_ns): (i64, i64),
) -> Searches {
    let mut out = Searches::default();
    let pick = Shape {
        seed: 0x5ea2c4,
        spans: 1,
        newest_ns: 0,
        spread_ns: DAY_NS,
    };
    for i in 0..n {
        let (service, op) = pick.service_and_operation(i as u64);
        let mut query: Vec<(&str, String)> = vec![
            ("service", gen::SERVICES[service].to_owned()),
            ("start", (from_ns / 1000).to_string()),
            ("end", (to_ns / 1000).to_string()),
            ("limit", "20".to_owned()),
        ];
        if with_operation {
            query.push(("operation", gen::operation_name(op)));
        }
        let t = Instant::now();
        let r = http
            .get(format!("{base}/api/traces"))
            .bearer_auth(token)
            .query(&query)
            .send()
            .await;
        let (status, body) = match r {
            Ok(r) => {
                let status = r.status();
                (status, r.bytes().await.map_err(|e| e.to_string()))
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e.to_string());
                continue;
            }
        };
        let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        let body = match body {
            Ok(b) if status.is_success() => b,
            Ok(b) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert(format!("{status}: {}", String::from_utf8_lossy(&b)));
                continue;
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
                continue;
            }
        };
        out.latencies.push(us);
        let traces = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["data"].as_array().map(Vec::len))
            .unwrap_or(0) as u64;
        out.traces += traces;
        if traces < 20 {
            out.short += 1;
        }
    }
    out.latencies.sort_unstable();
    out
}
