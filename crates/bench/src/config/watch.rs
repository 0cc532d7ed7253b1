//! The client side of the watch benchmark, kept cheap because it shares the cores with the
//! server: one tokio task per watcher on a raw `TcpStream`, a minimal HTTP/1.1 response reader
//! (head, then the body as lines, chunked or not), and one coordinator that does the writes one
//! at a time and waits until every watcher has reported the new revision.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Semaphore;

use super::etcd;
use super::Writer;

/// How a watcher's stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Capstan: Server-Sent Events; ready once the 200 head arrives.
    Sse,
    /// etcd's JSON gateway: one JSON object per line; ready once `"created":true` arrives.
    EtcdJson,
}

/// Where and how every watcher connects.
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// The whole request, sent once.
    pub request: Vec<u8>,
    /// The stream's framing.
    pub proto: Proto,
    /// Instead of one HTTP/1.1 connection per watcher: HTTP/2 (prior knowledge), this many
    /// watch streams per connection, each a `GET` of `path` with `Authorization: auth`.
    pub h2: Option<H2>,
}

/// The HTTP/2 form of a watch request.
pub struct H2 {
    /// Streams per connection (the server allows 200 at once).
    pub per_connection: usize,
    /// The path and query.
    pub path: String,
    /// The `Authorization` header.
    pub auth: String,
}

/// What one run measured. Delays are in µs, sorted.
pub struct Outcome {
    pub connected: usize,
    pub refused: usize,
    pub first_refusal: Option<String>,
    pub connect_secs: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_idle_kib: Option<u64>,
    /// Every watcher's delay for every write: from just before the write was sent until the
    /// watcher had the event.
    pub delays: Vec<u32>,
    /// Per write, the delay of its last watcher.
    pub last: Vec<u32>,
    /// The writes themselves (until the writer had the answer).
    pub writes: Vec<u32>,
    /// Deliveries that never came within the per-write timeout.
    pub missing: u64,
    /// Watchers the server dropped (`event: dropped`, or an etcd cancel).
    pub dropped: u64,
    /// Watchers whose stream ended without being dropped.
    pub closed: u64,
    /// `event: reset` seen (the server could not resume from `since`).
    pub resets: u64,
    /// CPU time (user + system, ms) the server and this process spent during the writes.
    pub server_cpu_ms: Option<u64>,
    pub client_cpu_ms: Option<u64>,
    /// Wall time of the writes phase.
    pub write_phase_ms: u64,
}

impl Outcome {
    /// RSS growth per connected idle watcher, in bytes.
    pub fn bytes_per_watcher(&self) -> Option<f64> {
        let (b, a) = (self.rss_before_kib?, self.rss_idle_kib?);
        (self.connected > 0).then(|| (a as f64 - b as f64) * 1024.0 / self.connected as f64)
    }
}

enum Msg {
    Ready,
    Refused(String),
    Change(i64, Instant),
    Reset,
    Dropped,
    Closed,
}

/// Connects `n` watchers to `target`, measures the server's RSS (`pid`) before and with them
/// idle, then makes `writes` writes through `writer`, each only after every watcher has seen
/// the one before.
pub async fn measure(
    target: Target,
    n: usize,
    writes: usize,
    writer: &Writer,
    pid: u32,
) -> Result<Outcome, String> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = crate::rss_kib(pid);
    let (tx, mut rx) = unbounded_channel();
    // Connect in waves: a burst of 10,000 SYNs would overflow the listen backlog and turn
    // into one-second retransmits that say nothing about the server.
    let slots = Arc::new(Semaphore::new(256));
    let target = Arc::new(target);
    let started = Instant::now();
    let tasks: Vec<_> = match &target.h2 {
        None => (0..n)
            .map(|_| tokio::spawn(watcher(target.clone(), slots.clone(), tx.clone())))
            .collect(),
        Some(h2) => {
            let per = h2.per_connection.max(1);
            let mut tasks = Vec::with_capacity(n + n / per + 1);
            let mut left = n;
            while left > 0 {
                let streams = left.min(per);
                left -= streams;
                let sender = match h2_connect(&target.addr).await {
                    Ok((sender, conn)) => {
                        tasks.push(conn);
                        sender
                    }
                    Err(e) => {
                        for _ in 0..streams {
                            let _ = tx.send(Msg::Refused(e.clone()));
                        }
                        continue;
                    }
                };
                for _ in 0..streams {
                    tasks.push(tokio::spawn(h2_watcher(
                        target.clone(),
                        sender.clone(),
                        tx.clone(),
                    )));
                }
            }
            tasks
        }
    };
    drop(tx);
    let (mut connected, mut refused, mut closed) = (0usize, 0usize, 0u64);
    let mut first_refusal = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while connected + refused < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Msg::Ready)) => connected += 1,
            Ok(Some(Msg::Refused(e))) => {
                refused += 1;
                first_refusal.get_or_insert(e);
            }
            Ok(Some(Msg::Closed | Msg::Dropped)) => closed += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!("{connected} watchers connected in {connect_secs:.1} s ({refused} refused)");
    // Let the server settle (allocations freed, registrations done) before reading its RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_kib = crate::rss_kib(pid);

    let mut alive = connected as u64 - closed;
    let mut out = Outcome {
        connected,
        refused,
        first_refusal,
        connect_secs,
        rss_before_kib,
        rss_idle_kib,
        delays: Vec::with_capacity(n * writes),
        last: Vec::with_capacity(writes),
        writes: Vec::with_capacity(writes),
        missing: 0,
        dropped: 0,
        closed,
        resets: 0,
        server_cpu_ms: None,
        client_cpu_ms: None,
        write_phase_ms: 0,
    };
    let me = std::process::id();
    let cpu_before = (cpu_ms(pid), cpu_ms(me));
    let phase = Instant::now();
    let us = |d: Duration| d.as_micros().min(u128::from(u32::MAX)) as u32;
    for i in 1..=writes {
        let start = Instant::now();
        let rev = writer.put(i).await?;
        out.writes.push(us(start.elapsed()));
        let deadline = tokio::time::Instant::from_std(start) + Duration::from_secs(30);
        let (mut got, mut last) = (0u64, 0u32);
        while got < alive {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::Change(r, at))) if r == rev => {
                    let d = us(at.saturating_duration_since(start));
                    out.delays.push(d);
                    last = last.max(d);
                    got += 1;
                }
                Ok(Some(Msg::Change(r, _))) if r > rev => {
                    return Err(format!(
                        "a watcher saw revision {r} after a write made {rev}"
                    ))
                }
                Ok(Some(Msg::Reset)) => out.resets += 1,
                Ok(Some(Msg::Dropped)) => {
                    out.dropped += 1;
                    alive -= 1;
                }
                Ok(Some(Msg::Closed)) => {
                    out.closed += 1;
                    alive -= 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    out.missing += alive - got;
                    break;
                }
            }
        }
        out.last.push(last);
    }
    out.write_phase_ms = phase.elapsed().as_millis() as u64;
    out.server_cpu_ms = cpu_ms(pid)
        .zip(cpu_before.0)
        .map(|(a, b)| a.saturating_sub(b));
    out.client_cpu_ms = cpu_ms(me)
        .zip(cpu_before.1)
        .map(|(a, b)| a.saturating_sub(b));
    for t in tasks {
        t.abort();
    }
    out.delays.sort_unstable();
    out.last.sort_unstable();
    out.writes.sort_unstable();
    Ok(out)
}

/// User plus system CPU time of process `pid` so far, in ms (`/proc/<pid>/stat` counts in
/// USER_HZ ticks, 100 per second on Linux).
pub(crate) fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it start with the state.
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let (user, system): (u64, u64) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
    Some((user + system) * 10)
}

/// One watcher: connect, send the request, report readiness, then report every event.
async fn watcher(target: Arc<Target>, slots: Arc<Semaphore>, tx: UnboundedSender<Msg>) {
    let mut permit = slots.acquire_owned().await.ok();
    let mut s = match LineStream::open(&target.addr, &target.request).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Msg::Refused(e));
            return;
        }
    };
    let mut ready = target.proto == Proto::Sse;
    if ready {
        permit = None;
        let _ = tx.send(Msg::Ready);
    }
    let mut sse = Sse::default();
    loop {
        match s.next_line().await {
            Ok(true) => {}
            Ok(false) | Err(_) if !ready => {
                let _ = tx.send(Msg::Refused(
                    "the stream ended before it was created".into(),
                ));
                return;
            }
            Ok(false) | Err(_) => {
                let _ = tx.send(Msg::Closed);
                return;
            }
        }
        let event = match target.proto {
            Proto::Sse => sse.line(s.line()),
            Proto::EtcdJson => etcd::watch_line(s.line()),
        };
        let msg = match event {
            Event::None => continue,
            Event::Created => {
                ready = true;
                drop(permit.take());
                Msg::Ready
            }
            Event::Change(rev) => Msg::Change(rev, Instant::now()),
            Event::Reset => Msg::Reset,
            Event::Dropped => {
                let _ = tx.send(Msg::Dropped);
                return;
            }
        };
        let _ = tx.send(msg);
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<hyper::body::Bytes>>;

/// One HTTP/2 connection (prior knowledge, as `capstan serve` accepts on its plain port), and
/// the task driving it.
async fn h2_connect(addr: &str) -> Result<(H2Sender, tokio::task::JoinHandle<()>), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, task))
}

/// One watch stream on a shared HTTP/2 connection: the same events as [`watcher`].
async fn h2_watcher(target: Arc<Target>, mut sender: H2Sender, tx: UnboundedSender<Msg>) {
    use http_body_util::BodyExt;
    let Some(h2) = &target.h2 else { return };
    let req = http::Request::get(h2.path.as_str())
        .header(http::header::AUTHORIZATION, h2.auth.as_str())
        .header(http::header::ACCEPT, "text/event-stream")
        .body(http_body_util::Empty::new());
    let resp = match req {
        Ok(req) => match sender.ready().await {
            Ok(()) => sender.send_request(req).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    let mut body = match resp {
        Ok(r) if r.status() == http::StatusCode::OK => r.into_body(),
        Ok(r) => {
            let _ = tx.send(Msg::Refused(format!("HTTP {}", r.status())));
            return;
        }
        Err(e) => {
            let _ = tx.send(Msg::Refused(e));
            return;
        }
    };
    let _ = tx.send(Msg::Ready);
    let mut sse = Sse::default();
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let data = match body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            _ => {
                let _ = tx.send(Msg::Closed);
                return;
            }
        };
        partial.extend_from_slice(&data);
        while let Some(i) = partial.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = partial.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let msg = match sse.line(&line) {
                Event::None | Event::Created => continue,
                Event::Change(rev) => Msg::Change(rev, Instant::now()),
                Event::Reset => Msg::Reset,
                Event::Dropped => {
                    let _ = tx.send(Msg::Dropped);
                    return;
                }
            };
            let _ = tx.send(msg);
        }
    }
}

/// What a stream line (or, for SSE, a finished event) means to the benchmark.
pub enum Event {
    None,
    Created,
    Change(i64),
    Reset,
    Dropped,
}

/// A Server-Sent Events parser reduced to what the benchmark needs: the event type and id.
#[derive(Default)]
struct Sse {
    event: Vec<u8>,
    id: Option<i64>,
}

impl Sse {
    fn line(&mut self, line: &[u8]) -> Event {
        if line.is_empty() {
            let ev = match (self.event.as_slice(), self.id) {
                (b"change", Some(id)) => Event::Change(id),
                (b"reset", _) => Event::Reset,
                (b"dropped", _) => Event::Dropped,
                _ => Event::None,
            };
            self.event.clear();
            self.id = None;
            return ev;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return Event::None, // a comment: `: heartbeat`
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"id" => self.id = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
            _ => {}
        }
        Event::None
    }
}

#[derive(Clone, Copy)]
enum Body {
    /// Not chunked: everything after the head is the body.
    Plain,
    /// Chunked, expecting a chunk-size line.
    Size,
    /// Chunked, inside a chunk with this many bytes left.
    Data(usize),
    /// Chunked, expecting the CRLF after a chunk's data.
    DataEnd,
    /// The last chunk was read.
    Done,
}

/// An HTTP/1.1 response read as lines of its (de-chunked) body.
struct LineStream {
    stream: TcpStream,
    raw: Vec<u8>,
    pos: usize,
    end: usize,
    body: Body,
    line: Vec<u8>,
    line_done: bool,
}

impl LineStream {
    /// Connects, sends `request` and reads the response head; a status other than 200 is an
    /// error.
    async fn open(addr: &str, request: &[u8]) -> Result<Self, String> {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut s = Self {
            stream,
            raw: vec![0; 1024],
            pos: 0,
            end: 0,
            body: Body::Plain,
            line: Vec::with_capacity(128),
            line_done: false,
        };
        let head_end = loop {
            if let Some(i) = find(&s.raw[..s.end], b"\r\n\r\n") {
                break i + 4;
            }
            if !s.fill().await.map_err(|e| format!("read: {e}"))? {
                return Err("connection closed before the response head".into());
            }
        };
        let head = String::from_utf8_lossy(&s.raw[..head_end]).into_owned();
        let status = head.get(9..12).unwrap_or("???");
        if status != "200" {
            let body = String::from_utf8_lossy(&s.raw[head_end..s.end]).into_owned();
            return Err(format!("HTTP {status}: {}", body.trim()));
        }
        let chunked = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("transfer-encoding")
                    && v.trim().eq_ignore_ascii_case("chunked")
            })
        });
        s.pos = head_end;
        s.body = if chunked { Body::Size } else { Body::Plain };
        Ok(s)
    }

    /// The line [`Self::next_line`] found, without its line ending.
    fn line(&self) -> &[u8] {
        &self.line
    }

    /// Reads until the next complete body line; `false` at the end of the stream.
    async fn next_line(&mut self) -> std::io::Result<bool> {
        if self.line_done {
            self.line.clear();
            self.line_done = false;
        }
        loop {
            if self.take_line()? {
                return Ok(true);
            }
            if matches!(self.body, Body::Done) || !self.fill().await? {
                return Ok(false);
            }
        }
    }

    /// Reads more bytes into `raw`; `false` at EOF.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.pos == self.end {
            (self.pos, self.end) = (0, 0);
        } else if self.end == self.raw.len() {
            self.raw.copy_within(self.pos..self.end, 0);
            (self.pos, self.end) = (0, self.end - self.pos);
            if self.end == self.raw.len() {
                self.raw.resize(self.raw.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.raw[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// Decodes buffered bytes into `line` until a line is complete (`true`) or the buffer is
    /// used up (`false`).
    fn take_line(&mut self) -> std::io::Result<bool> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        loop {
            let avail = &self.raw[self.pos..self.end];
            match self.body {
                Body::Done => return Ok(false),
                Body::Plain => {
                    if avail.is_empty() {
                        return Ok(false);
                    }
                    return Ok(self.take_data(avail.len()));
                }
                Body::Size => {
                    let Some(i) = avail.iter().position(|&b| b == b'\n') else {
                        return Ok(false);
                    };
                    let text = String::from_utf8_lossy(&avail[..i]);
                    let hex = text.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(hex, 16).map_err(|_| bad("chunk size"))?;
                    self.pos += i + 1;
                    self.body = if size == 0 {
                        Body::Done
                    } else {
                        Body::Data(size)
                    };
                }
                Body::Data(left) => {
                    if avail.is_empty() {
                        return Ok(false);
                    }
                    let take = left.min(avail.len());
                    let before = self.pos;
                    let done = self.take_data(take);
                    let used = self.pos - before;
                    self.body = if used == left {
                        Body::DataEnd
                    } else {
                        Body::Data(left - used)
                    };
                    if done {
                        return Ok(true);
                    }
                }
                Body::DataEnd => {
                    if avail.len() < 2 {
                        return Ok(false);
                    }
                    if &avail[..2] != b"\r\n" {
                        return Err(bad("chunk end"));
                    }
                    self.pos += 2;
                    self.body = Body::Size;
                }
            }
        }
    }

    /// Moves up to `max` body bytes into `line`, stopping after a newline; `true` if a line
    /// is now complete.
    fn take_data(&mut self, max: usize) -> bool {
        let data = &self.raw[self.pos..self.pos + max];
        match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.line.extend_from_slice(&data[..i]);
                self.pos += i + 1;
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
                self.line_done = true;
                true
            }
            None => {
                self.line.extend_from_slice(data);
                self.pos += max;
                false
            }
        }
    }
}

/// The first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events() {
        let mut sse = Sse::default();
        let mut changes = Vec::new();
        for l in [
            ": heartbeat",
            "",
            "event: change",
            "id: 7",
            "data: {\"revision\":7,\"changes\":[]}",
            "",
            "event: dropped",
            "",
        ] {
            match sse.line(l.as_bytes()) {
                Event::Change(r) => changes.push(r),
                Event::Dropped => changes.push(-1),
                _ => {}
            }
        }
        assert_eq!(changes, [7, -1]);
    }

    /// Chunk boundaries fall inside lines and inside chunk framing: the lines come out whole.
    #[tokio::test]
    async fn chunked_lines() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 64];
            let _ = s.read(&mut req).await.unwrap();
            let parts: [&[u8]; 6] = [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nid: ",
                b"7\n\r",
                b"\n",
                b"e\r\nevent: change\n\r\n",
                b"1\r\n\n\r\n0\r\n",
                b"\r\n",
            ];
            for p in parts {
                s.write_all(p).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut s = LineStream::open(&addr, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut lines = Vec::new();
        while s.next_line().await.unwrap() {
            lines.push(String::from_utf8(s.line().to_vec()).unwrap());
        }
        assert_eq!(lines, ["id: 7", "event: change", ""]);
    }
}
