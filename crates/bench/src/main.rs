//! `capstan-bench`: load generator and benchmarks.
//!
//! Starts the real `capstan serve` (built next to this binary) on a fresh Postgres database,
//! measures its idle RSS, the raw JWT signing rate of this machine, then drives the HTTP API with
//! a concurrent load generator on the same machine. Results go to stdout as a Markdown table for
//! `docs/BENCHMARKS.md`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_core::crypto::MasterKey;
use capstan_core::jwt::{generate_key, AccessClaims, Alg, Audience, SigningKey};
use capstan_core::rng::SystemRng;
use capstan_tests::db::{create_postgres_database, drop_postgres_database, unique_name};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

mod config;
mod feed;
mod otlp;
mod policy;
mod svid;
mod worst;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// Raw JWT signing rate (the physical limit), in-process.
    Sign,
    /// client_credentials over HTTP.
    Tokens,
    /// Token introspection over HTTP.
    Introspect,
    /// Everything above, plus idle RSS, in one run.
    All,
    /// Policy decisions: Capstan in-process vs flat casbin vs cedar, and /v1/authorize over HTTP.
    Policy,
    /// Only Capstan's in-process policy decisions (for profiling).
    PolicyEngine,
    /// Change-feed delay: a write on one replica until another replica's subscriber has it.
    Feed,
    /// The most expensive decision the policy limits allow (in-process).
    Worst,
    /// X.509-SVIDs/s over HTTP (distinct CSRs) and the raw in-process CSR-check-and-sign rate.
    Svid,
    /// Config push delay to many SSE watchers (one server, across replicas, etcd if installed)
    /// and memory per idle watcher.
    ConfigWatch,
    /// Trace ingest over OTLP/HTTP (spans/s committed) against the raw Postgres COPY rate of the
    /// same rows, the server's peak RSS, and Jaeger search latency over 10 million spans.
    Otlp,
}

/// Capstan benchmarks.
#[derive(Debug, Parser)]
#[command(name = "capstan-bench")]
struct Args {
    /// What to measure.
    #[arg(value_enum, default_value = "all")]
    which: Which,
    /// Seconds per HTTP measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections, one request in flight on each.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Load-generator worker threads.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Signing algorithm of the benchmark tenant.
    #[arg(long, default_value = "ES256")]
    alg: String,
    /// Postgres server to create the benchmark database on.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// The `capstan` binary [next to this one].
    #[arg(long)]
    capstan_bin: Option<PathBuf>,
    /// config-watch: concurrent watchers, one connection each.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// config-watch: sequential writes, each awaited by every watcher.
    #[arg(long, default_value_t = 20)]
    writes: usize,
    /// `otlp`: spans sent over OTLP/HTTP (in exports of 512).
    #[arg(long, default_value_t = 2_000_000)]
    spans: usize,
    /// `otlp`: spans stored before the search latency is measured (0: skip).
    #[arg(long, default_value_t = 10_000_000)]
    search_spans: u64,
    /// `otlp`: searches by service and operation to time (and a fifth as many by service only).
    #[arg(long, default_value_t = 1_000)]
    searches: usize,
}

struct Stats {
    ops: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    u64::from(sorted[i.min(sorted.len() - 1)])
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.which == Which::PolicyEngine {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let r = rt.block_on(policy::capstan_in_process(&policy::dataset(10_000)))?;
        println!(
            "first touch p50 {:.1} µs p99 {:.1} µs; engine p50 {:.1} µs p99 {:.1} µs; with log p50 {:.1} µs p99 {:.1} µs",
            r.cold.p50, r.cold.p99, r.engine.p50, r.engine.p99, r.logged.p50, r.logged.p99
        );
        return Ok(());
    }
    if args.which == Which::Worst {
        for spread in [true, false] {
            let (worst, statements) = worst::measure(20, spread)?;
            let shape = if spread {
                "16 wildcards per pattern"
            } else {
                "one wildcard, 1 KB literal"
            };
            println!("worst-case decision at the limits ({shape}): {worst:?} over 20 runs ({statements} statements)");
        }
        return Ok(());
    }
    if args.which == Which::Sign {
        let (rate, threads) = sign_rate(&args.alg, Duration::from_secs(args.duration.min(5)))?;
        println!(
            "raw {} signing: {rate:.0} tokens/s on {threads} threads",
            args.alg
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(args))
}

/// Signs RFC 9068 claims as fast as possible on every core, for `dur`.
fn sign_rate(alg: &str, dur: Duration) -> Result<(f64, usize), String> {
    let alg = Alg::parse(alg).map_err(|e| e.to_string())?;
    let generated = generate_key(alg, &SystemRng::new()).map_err(|e| e.to_string())?;
    let key = SigningKey::from_pkcs8(&generated.kid, alg, generated.private_pkcs8.expose())
        .map_err(|e| e.to_string())?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let claims = AccessClaims {
        iss: "http://127.0.0.1:8470/t/default".into(),
        sub: "svc_abcdefghijklmnopqrstuvwxyz".into(),
        aud: Audience::One("bench-api".into()),
        exp: 1_900_000_900,
        iat: 1_900_000_000,
        nbf: 1_900_000_000,
        jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        client_id: "svc_abcdefghijklmnopqrstuvwxyz".into(),
        scope: "bench".into(),
        tenant: "default".into(),
        cnf: None,
    };
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        for _ in 0..64 {
                            if key.sign(&claims).is_ok() {
                                n += 1;
                            }
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    Ok((total as f64 / start.elapsed().as_secs_f64(), threads))
}

struct Server {
    child: Child,
    base: String,
}

fn capstan_bin(args: &Args) -> Result<PathBuf, String> {
    if let Some(p) = &args.capstan_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = me.with_file_name("capstan");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release -p capstan-server` or pass --capstan-bin",
            p.display()
        ))
    }
}

async fn start_server(bin: &PathBuf, url: &str, key: &str) -> Result<Server, String> {
    start_server_with(bin, url, key, &[]).await
}

async fn start_server_with(
    bin: &PathBuf,
    url: &str,
    key: &str,
    extra: &[&str],
) -> Result<Server, String> {
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--database-url",
            url,
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .args(extra)
        .env("CAPSTAN_MASTER_KEY", key)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(Server {
                child,
                base: format!("http://{addr}"),
            });
        }
    }
    Err("capstan serve exited before listening".into())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn post_json(
    http: &reqwest::Client,
    url: &str,
    bearer: &str,
    body: Value,
) -> Result<Value, String> {
    let r = http
        .post(url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    r.json().await.map_err(|e| e.to_string())
}

async fn token(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
) -> Result<String, String> {
    let v: Value = http
        .post(format!("{base}/t/default/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    v["access_token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("no token: {v}"))
}

/// One keep-alive HTTP/1.1 connection sending `request` back to back until `stop`, like wrk:
/// the load generator must cost far less than the server, since both share the machine.
async fn connection_loop(
    addr: String,
    requests: Arc<Vec<Vec<u8>>>,
    first: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<u32>, u64) {
    let mut next = first;
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let Ok(mut stream) = TcpStream::connect(&addr).await else {
        return (lat, 1);
    };
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let request = &requests[next % requests.len()];
        next += 1;
        if stream.write_all(request).await.is_err() {
            return (lat, errors + 1);
        }
        let mut filled = 0;
        let ok = loop {
            match stream.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => return (lat, errors + 1),
                Ok(n) => filled += n,
            }
            if let Some((status, total)) = response_length(&buf[..filled]) {
                if filled >= total {
                    break (200..300).contains(&status);
                }
                if total > buf.len() {
                    buf.resize(total, 0);
                }
            }
        };
        if ok {
            lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        } else {
            errors += 1;
        }
    }
    (lat, errors)
}

/// Status and total length of a complete response head with `Content-Length`.
fn response_length(buf: &[u8]) -> Option<(u16, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    })?;
    Some((status, head_end + len))
}

/// A JSON POST with a bearer token, as raw bytes.
fn json_request(addr: &str, path: &str, bearer: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A form POST with Basic authentication, as raw bytes.
fn form_request(addr: &str, path: &str, id: &str, secret: &str, form: &str) -> Vec<u8> {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {basic}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .into_bytes()
}

/// Runs `concurrency` connections for `dur`; a request counts when it answers 200.
async fn load(addr: &str, concurrency: usize, dur: Duration, requests: Vec<Vec<u8>>) -> Stats {
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(requests);
    let start = Instant::now();
    // Each connection cycles through the requests from its own offset.
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let (addr, requests, stop) = (addr.to_owned(), requests.clone(), stop.clone());
            tokio::spawn(connection_loop(addr, requests, i * 7919, stop))
        })
        .collect();
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Stats {
        ops: all.len() as u64,
        secs,
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
        errors,
    }
}

async fn run(args: Args) -> Result<(), String> {
    let bin = capstan_bin(&args)?;
    let name = unique_name("capstan_bench");
    let url = create_postgres_database(&args.database_url, &name)
        .await
        .map_err(|e| format!("cannot create the benchmark database: {e}"))?;
    let result = bench(&args, &bin, &url).await;
    let _ = drop_postgres_database(&args.database_url, &name).await;
    result
}

async fn bench(args: &Args, bin: &PathBuf, url: &str) -> Result<(), String> {
    if args.which == Which::Feed {
        let d = feed::measure(url, 1_000).await?;
        let p = |v: &[u64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        println!(
            "change feed over {} writes: delivery p50 {} µs, p99 {} µs, max {} µs (the write itself: p50 {} µs, p99 {} µs)",
            d.sorted.len(),
            p(&d.sorted, 0.5),
            p(&d.sorted, 0.99),
            d.sorted.last().copied().unwrap_or(0),
            p(&d.writes, 0.5),
            p(&d.writes, 0.99),
        );
        return Ok(());
    }
    if args.which == Which::Policy {
        return bench_policy(args, bin, url).await;
    }
    if args.which == Which::Svid {
        return bench_svid(args, bin, url).await;
    }
    if args.which == Which::ConfigWatch {
        return config::bench(args, bin, url).await;
    }
    if args.which == Which::Otlp {
        return otlp::bench(args, bin, url).await;
    }
    let (key, admin) = bootstrap(bin, url).await?;
    let mut server = start_server(bin, url, &key).await?;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let admin_token = token(
        &http,
        &base,
        admin["client_id"].as_str().unwrap_or_default(),
        admin["client_secret"].as_str().unwrap_or_default(),
    )
    .await?;
    if args.alg != "ES256" {
        post_json(
            &http,
            &format!("{base}/v1/keys/rotate"),
            &admin_token,
            json!({"alg": args.alg, "publish_delay_seconds": 0}),
        )
        .await?;
    }
    // Idle RSS: after start-up and a few requests, with nothing in flight.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = server.child.id().unwrap_or(0);
    let idle_rss = rss_kib(pid);

    let c = post_json(
        &http,
        &format!("{base}/v1/clients"),
        &admin_token,
        json!({"name": "bench", "scopes": ["bench"], "audiences": ["bench-api"]}),
    )
    .await?;
    let id = c["client_id"].as_str().ok_or("no client id")?.to_owned();
    let secret = c["client_secret"]
        .as_str()
        .ok_or("no client secret")?
        .to_owned();
    let dur = Duration::from_secs(args.duration);
    let addr = base.trim_start_matches("http://");

    let (sign, threads) = sign_rate(&args.alg, Duration::from_secs(3))?;
    let mut rows = vec![format!(
        "| raw {} signing, in-process, {threads} threads | {sign:.0}/s | – | – | – |",
        args.alg
    )];
    if matches!(args.which, Which::Tokens | Which::All) {
        let req = form_request(
            addr,
            "/t/default/oauth2/token",
            &id,
            &secret,
            "grant_type=client_credentials",
        );
        let st = load(addr, args.concurrency, dur, vec![req]).await;
        rows.push(format!(
            "| client_credentials over HTTP, c={} | {:.0}/s ({:.0}% of raw signing) | {} µs | {} µs | {} |",
            args.concurrency, st.rate(), 100.0 * st.rate() / sign, st.p50_us, st.p99_us, st.errors
        ));
    }
    if matches!(args.which, Which::Introspect | Which::All) {
        let t = token(&http, &base, &id, &secret).await?;
        let req = form_request(
            addr,
            "/t/default/oauth2/introspect",
            &id,
            &secret,
            &format!("token={t}"),
        );
        let st = load(addr, args.concurrency, dur, vec![req]).await;
        rows.push(format!(
            "| introspection over HTTP, c={} | {:.0}/s | {} µs | {} µs | {} |",
            args.concurrency,
            st.rate(),
            st.p50_us,
            st.p99_us,
            st.errors
        ));
    }
    let busy_rss = rss_kib(pid);
    let _ = server.child.kill().await;
    println!("| benchmark | throughput | p50 | p99 | errors |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    let mib = |k: Option<u64>| {
        k.map_or("n/a".to_owned(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    println!(
        "| capstan serve RSS, idle after start | {} | | | |",
        mib(idle_rss)
    );
    println!(
        "| capstan serve RSS, after the load | {} | | | |",
        mib(busy_rss)
    );
    Ok(())
}

/// `capstan-bench svid`.
async fn bench_svid(args: &Args, bin: &PathBuf, url: &str) -> Result<(), String> {
    // Distinct CSRs, made before any timing: enough that no CSR repeats within a run.
    let n = 40_000;
    let made = Instant::now();
    let csrs = svid::csrs(n)?;
    println!(
        "prepared {n} distinct P-256 CSRs in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let (raw, threads) = svid::raw_rate(&csrs, Duration::from_secs(args.duration.min(5)))?;
    let (key, admin) = bootstrap(bin, url).await?;
    // One principal sends every request here: lift the per-principal issuance limit, which
    // this benchmark is not about.
    let config = std::env::temp_dir().join(unique_name("capstan_bench_svid"));
    std::fs::write(
        &config,
        "[service.identity]\nmax_svids_per_principal_per_minute = 1000000000\n",
    )
    .map_err(|e| e.to_string())?;
    let config_arg = format!("--config={}", config.display());
    let mut server = start_server_with(bin, url, &key, &[config_arg.as_str()]).await?;
    let _ = std::fs::remove_file(&config);
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let admin_token = token(
        &http,
        &base,
        admin["client_id"].as_str().unwrap_or_default(),
        admin["client_secret"].as_str().unwrap_or_default(),
    )
    .await?;
    let addr = base.trim_start_matches("http://").to_owned();
    let requests: Vec<Vec<u8>> = svid::bodies(&csrs)
        .iter()
        .map(|b| json_request(&addr, "/v1/identity/svids", &admin_token, b))
        .collect();
    // A short warm-up (connections, caches), then the measurement.
    let _ = load(
        &addr,
        args.concurrency,
        Duration::from_secs(1),
        requests[..1000].to_vec(),
    )
    .await;
    let st = load(
        &addr,
        args.concurrency,
        Duration::from_secs(args.duration),
        requests,
    )
    .await;
    let pid = server.child.id().unwrap_or(0);
    let rss = rss_kib(pid);
    let _ = server.child.kill().await;
    println!("| benchmark | throughput | p50 | p99 | errors |");
    println!("|---|---|---|---|---|");
    println!("| raw CSR check + X.509-SVID signing, in-process, {threads} threads | {raw:.0}/s | – | – | – |");
    println!(
        "| POST /v1/identity/svids over HTTP, c={}, each recorded in Postgres | {:.0}/s ({:.0}% of raw) | {} µs | {} µs | {} |",
        args.concurrency,
        st.rate(),
        100.0 * st.rate() / raw,
        st.p50_us,
        st.p99_us,
        st.errors
    );
    if let Some(k) = rss {
        println!(
            "| capstan serve RSS after the load | {:.1} MiB | | | |",
            k as f64 / 1024.0
        );
    }
    Ok(())
}

/// Runs `capstan bootstrap` on `url`; returns the master key and the admin credentials.
async fn bootstrap(bin: &PathBuf, url: &str) -> Result<(String, Value), String> {
    let key = MasterKey::generate(&SystemRng::new())
        .map_err(|e| e.to_string())?
        .to_base64();
    let boot = Command::new(bin)
        .args(["bootstrap", "--database-url", url])
        .env("CAPSTAN_MASTER_KEY", &key)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let admin: Value = serde_json::from_slice(&boot.stdout).map_err(|_| {
        format!(
            "bootstrap failed: {}",
            String::from_utf8_lossy(&boot.stderr)
        )
    })?;
    Ok((key, admin))
}

async fn bench_policy(args: &Args, bin: &PathBuf, url: &str) -> Result<(), String> {
    let d = policy::dataset(10_000);
    println!(
        "policy dataset: {} principals, {} groups, {} statements, {} requests",
        policy::PRINCIPALS,
        policy::GROUPS,
        policy::statements(&d),
        d.requests.len()
    );
    let stage = Instant::now();
    let r = policy::capstan_in_process(&d).await?;
    let (capstan, logged, compile) = (&r.engine, &r.logged, r.compile);
    eprintln!(
        "capstan in-process done in {:.1} s",
        stage.elapsed().as_secs_f64()
    );
    let stage = Instant::now();
    let (cedar, cedar_parse) = policy::cedar(&d, 200)?;
    eprintln!("cedar done in {:.1} s", stage.elapsed().as_secs_f64());
    let stage = Instant::now();
    let casbin = policy::casbin_flat(&d, 20).await?;
    eprintln!("casbin done in {:.1} s", stage.elapsed().as_secs_f64());

    // Over HTTP: the same tenant, stored before a real `capstan serve` starts on it.
    let (key, admin_creds) = bootstrap(bin, url).await?;
    let db = capstan_db::Db::connect(url, 4)
        .await
        .map_err(|e| e.to_string())?;
    policy::store_tenant(&db, &d).await?;
    let mut server = start_server(bin, url, &key).await?;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let admin = token(
        &http,
        &base,
        admin_creds["client_id"].as_str().unwrap_or_default(),
        admin_creds["client_secret"].as_str().unwrap_or_default(),
    )
    .await?;
    let addr = base.trim_start_matches("http://");
    let bodies: Vec<Vec<u8>> = d
        .requests
        .iter()
        .map(|r| {
            let body = json!({"principal": policy::principal_id(r.principal), "action": r.action, "resource": r.resource, "context": {"env": r.env}});
            json_request(addr, "/v1/authorize", &admin, &body.to_string())
        })
        .collect();
    // Warm the snapshot once, then measure.
    let _ = load(addr, 1, Duration::from_millis(200), bodies[..1].to_vec()).await;
    let st = load(
        addr,
        args.concurrency,
        Duration::from_secs(args.duration),
        bodies,
    )
    .await;
    let rss = rss_kib(server.child.id().unwrap_or(0));
    let _ = server.child.kill().await;

    let ratio = |l: &policy::Lat| l.mean / capstan.mean.max(0.001);
    println!("| engine | decisions | p50 | p99 | mean | allows | vs Capstan (mean) |");
    println!("|---|---|---|---|---|---|---|");
    println!("| Capstan in-process, first decision of each request (per-principal index builds included; snapshot compiled in {:.2} s) | {} | {:.1} µs | {:.1} µs | {:.1} µs | | |", compile.as_secs_f64(), r.cold.n, r.cold.p50, r.cold.p99, r.cold.mean);
    println!("| Capstan in-process, engine, steady state (decide_unlogged) | {} | {:.1} µs | {:.1} µs | {:.1} µs | {} | 1× |", capstan.n, capstan.p50, capstan.p99, capstan.mean, capstan.allows);
    println!("| Capstan in-process, with the decision log, steady state (decide) | {} | {:.1} µs | {:.1} µs | {:.1} µs | {} | |", logged.n, logged.p50, logged.p99, logged.mean, logged.allows);
    println!("| cedar-policy 4 in-process (policy set parsed in {:.2} s) | {} | {:.0} µs | {:.0} µs | {:.0} µs | {} | {:.0}× slower |", cedar_parse.as_secs_f64(), cedar.n, cedar.p50, cedar.p99, cedar.mean, cedar.allows, ratio(&cedar));
    println!("| casbin-rs 2 flat model in-process | {} | {:.0} µs | {:.0} µs | {:.0} µs | {} | {:.0}× slower |", casbin.n, casbin.p50, casbin.p99, casbin.mean, casbin.allows, ratio(&casbin));
    println!(
        "| `POST /v1/authorize` over HTTP, c={} | {:.0}/s | {} µs | {} µs | | errors {} | |",
        args.concurrency,
        st.rate(),
        st.p50_us,
        st.p99_us,
        st.errors
    );
    let mib = |k: Option<u64>| {
        k.map_or("n/a".to_owned(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    println!(
        "| capstan serve RSS with the tenant loaded, after the load | {} | | | | | |",
        mib(rss)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
