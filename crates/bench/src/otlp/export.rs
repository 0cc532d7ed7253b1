//! The OTLP/HTTP exporters of `capstan-bench otlp`: keep-alive HTTP/1.1 connections, one request
//! in flight on each, sending pre-built `POST /v1/traces` requests until none is left. A 429 or
//! 503 is retried on the same connection after its `Retry-After`, as the OTLP exporters do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the exporters saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latency of each 200 (the attempt that got it), µs, sorted.
    pub latencies: Vec<u32>,
    /// 429 and 503 answers (each retried).
    pub refused: u64,
    /// Other answers and broken connections.
    pub errors: u64,
    /// The first unexpected answer.
    pub first_error: Option<String>,
    /// From the first request to the last answer.
    pub secs: f64,
}

/// The head of an HTTP/1.1 response.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    /// Head plus body.
    total: usize,
    retry_after: Option<u64>,
}

fn parse_head(buf: &[u8]) -> Option<Head> {
    let head_end = crate::config::watch::find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let mut len = None;
    let mut retry_after = None;
    for l in head.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("retry-after") {
            retry_after = v.trim().parse().ok();
        }
    }
    Some(Head {
        status,
        total: head_end + len?,
        retry_after,
    })
}

/// Sends one request and reads its answer.
async fn round_trip(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<(Head, Vec<u8>)> {
    stream.write_all(request).await?;
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some(h) = parse_head(&buf[..filled]) {
            if h.total > buf.len() {
                buf.resize(h.total, 0);
            }
            if filled >= h.total {
                let body = buf[..h.total].to_vec();
                return Ok((h, body));
            }
        }
    }
}

async fn exporter(addr: String, requests: Arc<Vec<Vec<u8>>>, next: Arc<AtomicUsize>) -> Outcome {
    let mut out = Outcome::default();
    let mut buf = vec![0u8; 4096];
    let mut stream: Option<TcpStream> = None;
    let mut i = next.fetch_add(1, Ordering::Relaxed);
    while i < requests.len() {
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(&addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream.insert(s)
                }
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(format!("connect: {e}"));
                    return out;
                }
            },
        };
        let t = Instant::now();
        match round_trip(s, &requests[i], &mut buf).await {
            Ok((h, _)) if h.status == 200 => {
                out.latencies
                    .push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                i = next.fetch_add(1, Ordering::Relaxed);
            }
            Ok((h, _)) if h.status == 429 || h.status == 503 => {
                out.refused += 1;
                let wait = h.retry_after.unwrap_or(1).clamp(1, 30);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Ok((h, body)) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!(
                    "HTTP {}: {}",
                    h.status,
                    String::from_utf8_lossy(&body)
                ));
                i = next.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Retried on a new connection.
                out.errors += 1;
                out.first_error.get_or_insert(format!("I/O: {e}"));
                stream = None;
            }
        }
    }
    out
}

/// Sends every request once (retrying refusals) over `connections` connections.
pub async fn send_all(addr: &str, connections: usize, requests: Vec<Vec<u8>>) -> Outcome {
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (addr, requests, next) = (addr.to_owned(), requests.clone(), next.clone());
            tokio::spawn(exporter(addr, requests, next))
        })
        .collect();
    let mut all = Outcome::default();
    for t in tasks {
        let Ok(o) = t.await else { continue };
        all.latencies.extend(o.latencies);
        all.refused += o.refused;
        all.errors += o.errors;
        if all.first_error.is_none() {
            all.first_error = o.first_error;
        }
    }
    all.secs = start.elapsed().as_secs_f64();
    all.latencies.sort_unstable();
    all
}

/// `POST /v1/traces` with a protobuf body and a bearer token, as raw bytes.
pub fn request(addr: &str, bearer: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut r = Vec::with_capacity(head.len() + body.len());
    r.extend_from_slice(head.as_bytes());
    r.extend_from_slice(body);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let r = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 3\r\nretry-after: 1\r\n\r\nabc";
        assert_eq!(
            parse_head(r),
            Some(Head {
                status: 429,
                total: r.len(),
                retry_after: Some(1)
            })
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"),
            None
        );
    }
}
