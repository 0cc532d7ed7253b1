//! `capstan-bench otlp`: how many spans/s the trace collector acknowledges (each 200 means
//! committed in Postgres), against the raw `COPY` rate of the same rows into the same table;
//! and how fast a Jaeger search answers over 10 million stored spans.
//!
//! One run, one fresh Postgres database, one release `capstan serve`:
//! 1. **ingest**: `--spans` spans (512 per request, 10 attributes each, 20 services × 20
//!    operations, traces of 10 spans, distinct ids) are encoded as OTLP/HTTP protobuf requests
//!    before any timing, then sent by `--concurrency` keep-alive connections with one request in
//!    flight each; 429s are retried after `Retry-After` and counted. The server's CPU, this
//!    process's, Postgres's and the machine's are read from `/proc` around the run, and its
//!    peak RSS (`VmHWM`) after it.
//! 2. **raw COPY**: the table is truncated and the same rows (`capstan_trace::model::check` of
//!    the same requests, as the server stores them) are copied in binary `COPY` batches the size
//!    of the server's mean batch, two connections like the server's two writers.
//! 3. **search**: the table is truncated and `--search-spans` spans starting over the last 24 h
//!    are copied in, then `ANALYZE`; `--searches` searches for (service, operation) over the
//!    last hour, and a fifth as many for a service alone, go one at a time over HTTP.

mod copy;
mod export;
mod gen;
mod search;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_core::clock::{Clock, SystemClock};
use capstan_db::Db;
use capstan_trace::model::{Window, DAY_NS};
use prost::Message;
use sqlx::PgPool;

use crate::config::watch::cpu_ms;
use gen::{Shape, SPANS_PER_REQUEST};

/// CPU time so far: this machine's busy time (all cores), `capstan serve`'s, this process's and
/// every `postgres` process's, ms.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    machine: u64,
    server: u64,
    bench: u64,
    postgres: u64,
}

impl Cpu {
    fn read(server_pid: u32) -> Cpu {
        Cpu {
            machine: machine_busy_ms().unwrap_or(0),
            server: cpu_ms(server_pid).unwrap_or(0),
            bench: cpu_ms(std::process::id()).unwrap_or(0),
            postgres: postgres_cpu_ms(),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            machine: self.machine.saturating_sub(before.machine),
            server: self.server.saturating_sub(before.server),
            bench: self.bench.saturating_sub(before.bench),
            postgres: self.postgres.saturating_sub(before.postgres),
        }
    }
}

/// Busy (not idle, not iowait) CPU time of the machine, ms (`/proc/stat` counts USER_HZ ticks).
fn machine_busy_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((ticks.iter().sum::<u64>() - idle) * 10)
}

/// CPU time of every process named `postgres` (the server and its backends), ms.
fn postgres_cpu_ms() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(cpu_ms)
        .sum()
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `VmRSS` of `pid` every 200 ms until `stop`: (seconds since the start, KiB).
async fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> Vec<(f64, u64)> {
    let start = Instant::now();
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(k) = status_kib(pid, "VmRSS:") {
            out.push((start.elapsed().as_secs_f64(), k));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out
}

/// A counter of the server's `/metrics`.
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Result<u64, String> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|v| v as u64)
        .ok_or_else(|| format!("{name} is not in /metrics"))
}

async fn scalar_i64(pool: &PgPool, sql: &str) -> Result<i64, String> {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .map_err(|e| format!("{sql}: {e}"))
}

async fn execute(pool: &PgPool, sql: &str) -> Result<(), String> {
    sqlx::query(sql)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("{sql}: {e}"))
}

/// Bytes of every `trace_spans` partition, indexes and TOAST included.
const TABLE_BYTES: &str = "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::int8 \
     FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
     JOIN pg_class t ON t.oid = i.inhparent WHERE t.relname = 'trace_spans'";

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `capstan-bench otlp`.
pub async fn bench(args: &crate::Args, bin: &PathBuf, url: &str) -> Result<(), String> {
    let clock = SystemClock;
    let (key, admin) = crate::bootstrap(bin, url).await?;
    let mut server = crate::start_server(bin, url, &key).await?;
    let pid = server.child.id().unwrap_or(0);
    let base = server.base.clone();
    let addr = base.trim_start_matches("http://").to_owned();
    let http = reqwest::Client::new();
    let (id, secret) = (
        admin["client_id"].as_str().unwrap_or_default().to_owned(),
        admin["client_secret"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let db = Db::connect(url, 4).await.map_err(|e| e.to_string())?;
    let Db::Postgres(pool) = &db else {
        return Err("the benchmark needs Postgres".into());
    };

    // 1. Ingest over OTLP/HTTP.
    let total = args.spans.max(SPANS_PER_REQUEST);
    let requests_n = total.div_ceil(SPANS_PER_REQUEST);
    let now_ns = clock.now().saturating_mul(1_000_000_000);
    let ingest_shape = Shape {
        seed: 0x0171_6e57,
        spans: total as u64,
        newest_ns: now_ns,
        spread_ns: 600 * 1_000_000_000,
    };
    let token = crate::token(&http, &base, &id, &secret).await?;
    let made = Instant::now();
    let requests: Vec<Vec<u8>> = (0..requests_n)
        .map(|r| {
            let first = (r * SPANS_PER_REQUEST) as u64;
            let n = SPANS_PER_REQUEST.min(total - r * SPANS_PER_REQUEST);
            export::request(
                &addr,
                &token,
                &ingest_shape.export(first, n).encode_to_vec(),
            )
        })
        .collect();
    let bytes: usize = requests.iter().map(Vec::len).sum();
    eprintln!(
        "prepared {requests_n} export requests ({total} spans, {:.0} MiB, {:.0} bytes per span) in {:.1} s",
        bytes as f64 / 1048576.0,
        bytes as f64 / total as f64,
        made.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = status_kib(pid, "VmRSS:");
    let cpu0 = Cpu::read(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = tokio::spawn(sample_rss(pid, stop.clone()));
    let ingest = export::send_all(&addr, args.concurrency, requests).await;
    stop.store(true, Ordering::Relaxed);
    let cpu = Cpu::read(pid).since(cpu0);
    let samples = sampling.await.unwrap_or_default();
    // The most RSS in each half of the ingest: equal halves mean memory stopped growing.
    let half = |first: bool| {
        samples
            .iter()
            .filter(|(t, _)| (*t < ingest.secs / 2.0) == first)
            .map(|(_, k)| *k)
            .max()
    };
    let (rss_first, rss_second) = (half(true), half(false));
    let peak_rss = status_kib(pid, "VmHWM:");
    let after_rss = status_kib(pid, "VmRSS:");
    let acked = ingest.latencies.len() as u64;
    let acked_spans = (acked as usize * SPANS_PER_REQUEST).min(total) as f64;
    let rate = acked_spans / ingest.secs;
    eprintln!(
        "ingest: {acked} requests acknowledged in {:.1} s, {} refused (429/503), {} errors{}",
        ingest.secs,
        ingest.refused,
        ingest.errors,
        ingest
            .first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    let written = metric(&http, &base, "capstan_trace_spans_written_total").await?;
    let batches = metric(&http, &base, "capstan_trace_batches_total").await?;
    let stored = scalar_i64(pool, "SELECT count(*) FROM trace_spans").await?;
    let mean_batch = (written / batches.max(1)).max(1) as usize;

    // 2. The raw COPY of the same rows into the emptied table.
    let (tenant, principal): (String, String) =
        sqlx::query_as("SELECT tenant, principal FROM trace_spans LIMIT 1")
            .fetch_one(pool)
            .await
            .map_err(|e| format!("no span was stored: {e}"))?;
    execute(pool, "TRUNCATE trace_spans").await?;
    execute(pool, "CHECKPOINT").await?;
    let window = Window {
        now_ns,
        oldest_ns: now_ns - 7 * DAY_NS,
        newest_ns: now_ns + DAY_NS,
    };
    let made = Instant::now();
    let mut batches_copy = Vec::new();
    let mut rows = Vec::with_capacity(mean_batch + SPANS_PER_REQUEST);
    for r in 0..requests_n {
        let first = (r * SPANS_PER_REQUEST) as u64;
        let n = SPANS_PER_REQUEST.min(total - r * SPANS_PER_REQUEST);
        rows.extend(copy::rows_of(
            ingest_shape.export(first, n),
            &tenant,
            &principal,
            &window,
        ));
        if rows.len() >= mean_batch || r + 1 == requests_n {
            batches_copy.push(copy::encode(&rows));
            rows.clear();
        }
    }
    let copy_bytes: usize = batches_copy.iter().map(Vec::len).sum();
    let copy_batches = batches_copy.len();
    eprintln!(
        "prepared {copy_batches} binary COPY batches of ~{mean_batch} rows ({:.0} MiB) in {:.1} s",
        copy_bytes as f64 / 1048576.0,
        made.elapsed().as_secs_f64()
    );
    let cpu_copy0 = Cpu::read(pid);
    let (copied, copy_secs) = copy::copy_all(pool, Arc::new(batches_copy), 2).await?;
    let cpu_copy = Cpu::read(pid).since(cpu_copy0);
    let raw = copied as f64 / copy_secs;
    eprintln!("raw COPY: {copied} rows in {copy_secs:.1} s");

    // 3. Search over a full table.
    let found = if args.search_spans > 0 {
        execute(pool, "TRUNCATE trace_spans").await?;
        let fill = search::Fill {
            spans: args.search_spans,
            tenant: &tenant,
            principal: &principal,
            now_ns: clock.now().saturating_mul(1_000_000_000),
        };
        let r = search::fill(&db, &fill).await?;
        let table_bytes = scalar_i64(pool, TABLE_BYTES).await?;
        eprintln!(
            "loaded {} spans in {:.0} s ({:.1} GiB with indexes), ANALYZE {:.1} s",
            r.loaded,
            r.load_secs,
            table_bytes as f64 / (1u64 << 30) as f64,
            r.analyze_secs
        );
        // A token of its own: the first may have expired during the load.
        let token = crate::token(&http, &base, &id, &secret).await?;
        let hour = (fill.now_ns - 3_600_000_000_000, fill.now_ns);
        let _ = search::run(&http, &base, &token, 20, true, hour).await;
        let by_op = search::run(&http, &base, &token, args.searches, true, hour).await;
        let by_service = search::run(&http, &base, &token, args.searches / 5, false, hour).await;
        Some((r, table_bytes, by_op, by_service))
    } else {
        None
    };
    let _ = server.child.kill().await;

    // Results.
    let p = |v: &[u32], q: f64| crate::percentile(v, q);
    let cores = |ms: u64, secs: f64| ms as f64 / 1000.0 / secs;
    println!("| benchmark | result | p50 | p99 | notes |");
    println!("|---|---|---|---|---|");
    println!(
        "| `POST /v1/traces` (OTLP/HTTP protobuf), {SPANS_PER_REQUEST} spans × 10 attributes per request, {} connections; 200 = committed | **{} spans/s** ({acked} requests, {} spans in {:.1} s) | {} | {} | {} × 429 (retried), {} errors; {} rows in `trace_spans` afterwards; {} batches, mean {mean_batch} spans |",
        args.concurrency,
        thousands(rate),
        thousands(acked_spans),
        ingest.secs,
        ms(p(&ingest.latencies, 0.5)),
        ms(p(&ingest.latencies, 0.99)),
        ingest.refused,
        ingest.errors,
        thousands(stored as f64),
        thousands(batches as f64),
    );
    println!(
        "| raw binary `COPY` of the same rows into the emptied `trace_spans`, 2 connections, {copy_batches} batches of ~{mean_batch} rows | **{} rows/s** ({} rows in {copy_secs:.1} s) | | | server = **{:.0}%** of raw |",
        thousands(raw),
        thousands(copied as f64),
        100.0 * rate / raw
    );
    println!(
        "| `capstan serve` RSS | idle {} → peak (VmHWM) {} | | | most in the first / second half of the ingest {} / {}; {} after it; queue bound `queue_bytes` 64 MiB |",
        mib(idle_rss),
        mib(peak_rss),
        mib(rss_first),
        mib(rss_second),
        mib(after_rss),
    );
    if let Some((r, table_bytes, by_op, by_service)) = &found {
        println!(
            "| load {} spans over 24 h by `COPY` (2 connections) | {} rows/s | | | {:.1} GiB with indexes; ANALYZE {:.1} s |",
            thousands(r.loaded as f64),
            thousands(r.loaded as f64 / r.load_secs),
            *table_bytes as f64 / (1u64 << 30) as f64,
            r.analyze_secs
        );
        for (label, s) in [("service + operation", by_op), ("service only", by_service)] {
            println!(
                "| `GET /api/traces` {label}, last 1 h, limit 20, {} searches one at a time | max {} | {} | {} | {:.1} traces per answer; {} short of 20; {} errors{} |",
                s.latencies.len(),
                ms(s.latencies.last().copied().map_or(0, u64::from)),
                ms(p(&s.latencies, 0.5)),
                ms(p(&s.latencies, 0.99)),
                s.traces as f64 / s.latencies.len().max(1) as f64,
                s.short,
                s.errors,
                s.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
        }
    }
    println!();
    println!("| CPU, in cores (of {}) | machine busy | `capstan serve` | Postgres | this load generator |", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("|---|---|---|---|---|");
    for (label, c, secs) in [
        ("during the ingest", cpu, ingest.secs),
        ("during the raw COPY", cpu_copy, copy_secs),
    ] {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.2} |",
            cores(c.machine, secs),
            cores(c.server, secs),
            cores(c.postgres, secs),
            cores(c.bench, secs)
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    println!();
    println!("| target | result | |");
    println!("|---|---|---|");
    println!(
        "| ≥ 100,000 spans/s acknowledged and committed | {} spans/s | {} |",
        thousands(rate),
        verdict(rate >= 100_000.0 && ingest.errors == 0)
    );
    println!(
        "| ≥ 30% of the raw COPY rate | {:.0}% | {} |",
        100.0 * rate / raw,
        verdict(rate >= 0.3 * raw)
    );
    if let Some((r, _, by_op, _)) = &found {
        let p99 = p(&by_op.latencies, 0.99);
        println!(
            "| search p99 ≤ 200 ms over {} spans | {} | {} |",
            thousands(r.loaded as f64),
            ms(p99),
            verdict(p99 <= 200_000 && by_op.errors == 0 && !by_op.latencies.is_empty())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(10_000_000.0), "10,000,000");
    }
}
