//! `capstan-bench config-watch`: how long a config change takes to reach many watchers, and what
//! an idle watcher costs the server.
//!
//! Three runs (the first two twice: one HTTP/1.1 connection per watcher, then HTTP/2 with 200
//! watches per connection), each with N watchers and R sequential writes of
//! one key, each write measured from just before it is sent until every watcher has the new
//! revision:
//! 1. one `capstan serve`: watchers and writes on the same server;
//! 2. two `capstan serve` on one Postgres database: watchers on B, writes on A, so each change
//!    crosses the change feed;
//! 3. etcd, when an `etcd` binary is on `PATH`: the same through its JSON gateway.
//!
//! Memory per idle watcher is the server's RSS with N idle watchers minus its RSS before they
//! connected, over N. The CPU time the server and this process spend during the writes is
//! reported too: on one machine the two compete for the same cores.

mod etcd;
pub(crate) mod watch;

use std::path::PathBuf;

use serde_json::Value;
use tokio::process::Command;

use watch::{Outcome, Proto, Target};

/// Where the benchmark writes.
pub enum Writer {
    /// `PUT {base}/v1/config/bench/prod/k` with a bearer token.
    Capstan {
        http: reqwest::Client,
        base: String,
        token: String,
    },
    /// etcd's `POST /v3/kv/put` of key `k`.
    Etcd { http: reqwest::Client, addr: String },
}

const KEY_PATH: &str = "/v1/config/bench/prod";
/// Watch streams per HTTP/2 connection: the server's limit of concurrent streams.
const H2_STREAMS: usize = 200;

impl Writer {
    /// Writes `value`; the revision the write made.
    async fn put(&self, value: usize) -> Result<i64, String> {
        match self {
            Self::Capstan { http, base, token } => {
                let r = http
                    .put(format!("{base}{KEY_PATH}/k"))
                    .bearer_auth(token)
                    .json(&value)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status();
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                v["revision"]
                    .as_i64()
                    .ok_or_else(|| format!("PUT {KEY_PATH}/k answered {status}: {v}"))
            }
            Self::Etcd { http, addr } => etcd::put(http, addr, "k", &value.to_string()).await,
        }
    }
}

/// The SSE watch request for one watcher on `addr`, resuming after `since`; with `h2`, over
/// HTTP/2 with that many watches per connection.
fn capstan_target(addr: &str, since: i64, token: &str, h2: Option<usize>) -> Target {
    let request = format!(
        "GET {KEY_PATH}/watch?since={since} HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    Target {
        addr: addr.to_owned(),
        request: request.into_bytes(),
        proto: Proto::Sse,
        h2: h2.map(|per_connection| watch::H2 {
            per_connection,
            path: format!("http://{addr}{KEY_PATH}/watch?since={since}"),
            auth: format!("Bearer {token}"),
        }),
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to the hard limit (the `capstan serve` children
/// inherit it) with util-linux's `prlimit`, since the workspace forbids the `unsafe` a direct
/// `setrlimit` needs. Returns the soft limit in force afterwards.
async fn raise_nofile() -> Option<u64> {
    let read = || -> Option<(String, String)> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let mut f = line.split_whitespace().skip(3);
        Some((f.next()?.to_owned(), f.next()?.to_owned()))
    };
    let (soft, hard) = read()?;
    if soft != hard {
        let pid = std::process::id().to_string();
        let _ = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
            .status()
            .await;
    }
    let (soft, _) = read()?;
    Some(soft.parse().unwrap_or(u64::MAX))
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `capstan serve` flags: one public URL, and the connection and watcher limits lifted above
/// `n` (this benchmark is not about them); the file holds the `[service.config]` section.
fn server_flags(n: usize) -> Result<(Vec<String>, TempFile), String> {
    let file =
        TempFile(std::env::temp_dir().join(capstan_tests::db::unique_name("capstan_bench_config")));
    let limit = n + 256;
    std::fs::write(
        &file.0,
        format!("[service.config]\nmax_watchers = {limit}\nmax_watchers_per_principal = {limit}\n"),
    )
    .map_err(|e| e.to_string())?;
    let flags = vec![
        // One issuer for every server, as replicas behind one address have: the token the
        // first server issues is good on all.
        "--public-url=http://capstan.bench".to_owned(),
        format!("--max-connections={limit}"),
        format!("--config={}", file.0.display()),
    ];
    Ok((flags, file))
}

/// `capstan-bench config-watch`.
pub async fn bench(args: &crate::Args, bin: &PathBuf, url: &str) -> Result<(), String> {
    let n = args.watchers;
    let writes = args.writes.max(1);
    let nofile = raise_nofile().await;
    if nofile.is_some_and(|l| l < n as u64 + 512) {
        return Err(format!(
            "{n} watchers need more than {} open files: raise the limit (`ulimit -n {}`) or pass fewer --watchers",
            nofile.unwrap_or(0),
            n + 1024
        ));
    }
    let (key, admin) = crate::bootstrap(bin, url).await?;
    let (flags, _config_file) = server_flags(n)?;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let http = reqwest::Client::new();
    let mut rows = Vec::new();

    // The token is the admin's, from any server (they share the issuer).
    let mut first = crate::start_server_with(bin, url, &key, &flags).await?;
    let token = crate::token(
        &http,
        &first.base,
        admin["client_id"].as_str().unwrap_or_default(),
        admin["client_secret"].as_str().unwrap_or_default(),
    )
    .await?;
    let _ = first.child.kill().await;
    // Each case twice: one HTTP/1.1 connection per watcher (what an SDK process with one
    // watcher opens), then HTTP/2 with up to 200 watches per connection.
    for h2 in [None, Some(H2_STREAMS)] {
        let proto = match h2 {
            None => "HTTP/1.1, one connection per watcher".to_owned(),
            Some(k) => format!("HTTP/2, {k} watchers per connection"),
        };
        // 1. One server.
        let mut one = crate::start_server_with(bin, url, &key, &flags).await?;
        let writer = Writer::Capstan {
            http: http.clone(),
            base: one.base.clone(),
            token: token.clone(),
        };
        let since = writer.put(0).await?;
        let addr = one.base.trim_start_matches("http://").to_owned();
        let pid = one.child.id().unwrap_or(0);
        eprintln!("one server, {proto}: {n} watchers, {writes} writes");
        let o = watch::measure(
            capstan_target(&addr, since, &token, h2),
            n,
            writes,
            &writer,
            pid,
        )
        .await?;
        let _ = one.child.kill().await;
        rows.push((format!("Capstan, one server, {proto}"), Some(o)));

        // 2. Two replicas: writes on A, watchers on B.
        let mut a = crate::start_server_with(bin, url, &key, &flags).await?;
        let mut b = crate::start_server_with(bin, url, &key, &flags).await?;
        let writer = Writer::Capstan {
            http: http.clone(),
            base: a.base.clone(),
            token: token.clone(),
        };
        let since = writer.put(0).await?;
        let addr = b.base.trim_start_matches("http://").to_owned();
        let pid = b.child.id().unwrap_or(0);
        eprintln!("two replicas, {proto}: {n} watchers on B, {writes} writes on A");
        let o = watch::measure(
            capstan_target(&addr, since, &token, h2),
            n,
            writes,
            &writer,
            pid,
        )
        .await?;
        let _ = a.child.kill().await;
        let _ = b.child.kill().await;
        rows.push((
            format!("Capstan, two replicas (write on A, watch on B), {proto}"),
            Some(o),
        ));
    }

    // 3. etcd, if installed.
    let with_etcd = match etcd::binary() {
        None => {
            eprintln!("etcd not installed: skipped");
            rows.push(("etcd not installed: skipped".to_owned(), None));
            false
        }
        Some(etcd_bin) => {
            rows.push(etcd_run(&etcd_bin, &http, n, writes).await?);
            true
        }
    };
    print_table(n, writes, &rows, with_etcd);
    Ok(())
}

/// The same measurement against a throwaway etcd.
async fn etcd_run(
    bin: &std::path::Path,
    http: &reqwest::Client,
    n: usize,
    writes: usize,
) -> Result<(String, Option<Outcome>), String> {
    let version = etcd::version(bin).await;
    let e = etcd::start(bin, http).await?;
    let writer = Writer::Etcd {
        http: http.clone(),
        addr: e.addr.clone(),
    };
    if let Err(err) = writer.put(0).await {
        e.stop().await;
        return Err(err);
    }
    let target = Target {
        addr: e.addr.clone(),
        request: etcd::watch_request(&e.addr, "k"),
        proto: Proto::EtcdJson,
        h2: None,
    };
    eprintln!("etcd: {n} watchers, {writes} writes");
    let o = watch::measure(target, n, writes, &writer, e.pid()).await;
    e.stop().await;
    let label = format!("{version}, JSON gateway, one connection per watch");
    Ok((label, Some(o?)))
}

fn ms(us: u32) -> String {
    format!("{:.1} ms", f64::from(us) / 1000.0)
}

fn kib(bytes: Option<f64>) -> String {
    bytes.map_or("n/a".into(), |b| format!("{:.1} KiB", b / 1024.0))
}

fn print_table(n: usize, writes: usize, rows: &[(String, Option<Outcome>)], with_etcd: bool) {
    let p = |v: &[u32], q: f64| crate::percentile(v, q) as u32;
    println!("{n} watchers, {writes} sequential writes; delay = from just before the write is sent until the watcher has the event");
    println!();
    println!("| system | watchers connected | delay p50 | p99 | max | last watcher of a write, p50 / max | the write itself, p50 | RSS per idle watcher (before → with watchers) | lost |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, o) in rows {
        let Some(o) = o else {
            println!("| {label} | | | | | | | | |");
            continue;
        };
        let mib = |k: Option<u64>| k.map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let mut lost = format!(
            "{} missing, {} dropped, {} closed",
            o.missing, o.dropped, o.closed
        );
        if o.resets > 0 {
            lost.push_str(&format!(", {} resets", o.resets));
        }
        if let Some(e) = &o.first_refusal {
            lost.push_str(&format!(", {} refused (first: {e})", o.refused));
        }
        println!(
            "| {label} | {} in {:.1} s | {} | {} | {} | {} / {} | {} | {} ({} → {} MiB) | {lost} |",
            o.connected,
            o.connect_secs,
            ms(p(&o.delays, 0.5)),
            ms(p(&o.delays, 0.99)),
            ms(o.delays.last().copied().unwrap_or(0)),
            ms(p(&o.last, 0.5)),
            ms(o.last.last().copied().unwrap_or(0)),
            ms(p(&o.writes, 0.5)),
            kib(o.bytes_per_watcher()),
            mib(o.rss_before_kib),
            mib(o.rss_idle_kib),
        );
    }
    println!();
    println!("| system | CPU per write: the server | this load generator | wall time per write |");
    println!("|---|---|---|---|");
    for (label, o) in rows {
        let Some(o) = o else { continue };
        let per = |ms: Option<u64>| {
            ms.map_or("n/a".into(), |ms| {
                format!("{:.0} ms", ms as f64 / writes as f64)
            })
        };
        println!(
            "| {label} | {} | {} | {:.0} ms |",
            per(o.server_cpu_ms),
            per(o.client_cpu_ms),
            o.write_phase_ms as f64 / writes as f64
        );
    }
    if with_etcd {
        println!();
        println!("etcd's watchers each hold one HTTP/1.1 connection to its JSON gateway (a gRPC stream each inside etcd), as Capstan's do; a Go gRPC client would multiplex many watches on one stream, so etcd's memory per watcher here is its per-connection cost, not its cheapest mode.");
    }
    let find = |prefix: &str| {
        rows.iter()
            .find(|(l, _)| l.starts_with(prefix))
            .and_then(|(_, o)| o.as_ref())
    };
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    println!();
    println!("| target | result | |");
    println!("|---|---|---|");
    // A latency over fewer watchers than asked for, or with deliveries missing, meets nothing.
    let latency = |o: &Outcome, limit_us: u32| {
        let p99 = p(&o.delays, 0.99);
        let mut result = ms(p99);
        if o.connected < n {
            result.push_str(&format!(
                " (only {} of {n} watchers connected)",
                o.connected
            ));
        }
        if o.missing > 0 {
            result.push_str(&format!(" ({} deliveries missing)", o.missing));
        }
        let ok = p99 <= limit_us && o.connected == n && o.missing == 0;
        (result, verdict(ok))
    };
    if let Some(o) = find("Capstan, one server") {
        let (r, v) = latency(o, 100_000);
        println!("| p99 ≤ 100 ms, one server, {n} watchers | {r} | {v} |");
    }
    if let Some(o) = find("Capstan, two replicas") {
        let (r, v) = latency(o, 250_000);
        println!("| p99 ≤ 250 ms across replicas, {n} watchers | {r} | {v} |");
    }
    for (label, prefix) in [
        ("one server", "Capstan, one server"),
        ("replica B", "Capstan, two replicas"),
    ] {
        if let Some(o) = find(prefix) {
            let b = o.bytes_per_watcher();
            let ok = b.is_some_and(|b| b <= 10.0 * 1024.0);
            println!(
                "| ≤ 10 KiB per idle watcher ({label}) | {} | {} |",
                kib(b),
                verdict(ok)
            );
        }
    }
}
