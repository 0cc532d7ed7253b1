//! A config watch that is its HTTP/1.1 connection's first request is served outside hyper
//! (`capstan_server::direct`): checked here byte by byte on raw sockets, since the clients the
//! other tests use would forgive framing mistakes a stricter client would not.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use capstan_tests::{Ctx, TestServer};

capstan_tests::on_both_backends!(
    a_first_request_watch_is_exact_http11_and_frees_its_slot_on_hang_up,
    a_refused_first_request_watch_answers_whole_and_keeps_the_connection,
    other_first_requests_reach_hyper_with_nothing_lost,
    heartbeats_keep_coming_and_a_stopping_server_says_so,
);

/// A raw HTTP/1.1 connection with what has been read and not yet consumed.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(s: &TestServer) -> Raw {
        let addr = s.base.trim_start_matches("http://");
        Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn fill(&mut self) -> bool {
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut b))
            .await
            .expect("the server said nothing for 10 s")
            .unwrap();
        self.buf.extend_from_slice(&b[..n]);
        n > 0
    }

    /// The response head, lower-cased, without its final CRLF CRLF.
    async fn head(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return String::from_utf8(head[..i].to_vec())
                    .unwrap()
                    .to_lowercase();
            }
            assert!(self.fill().await, "the connection closed inside a head");
        }
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "the connection closed inside a body");
        }
        self.buf.drain(..n).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8(line[..i].to_vec()).unwrap();
            }
            assert!(self.fill().await, "the connection closed inside a chunk");
        }
    }

    /// The next chunk of a chunked body (empty: the last chunk).
    async fn chunk(&mut self) -> Vec<u8> {
        let size = usize::from_str_radix(self.line().await.trim(), 16).unwrap();
        let data = self.exact(size).await;
        assert_eq!(self.exact(2).await, b"\r\n", "a chunk not ended by CRLF");
        data
    }

    /// Reads chunks until an SSE event of `kind` arrives; its data.
    async fn event(&mut self, kind: &str) -> Value {
        let mut text = String::new();
        loop {
            let c = self.chunk().await;
            assert!(!c.is_empty(), "the stream ended waiting for {kind}");
            text.push_str(std::str::from_utf8(&c).unwrap());
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                if block.lines().any(|l| l == format!("event: {kind}")) {
                    let data = block
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .unwrap();
                    return serde_json::from_str(data).unwrap();
                }
            }
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

async fn admin_token(s: &TestServer) -> String {
    let admin = s.admin().await;
    s.token("default", &admin, &[]).await
}

/// The value of a metric without labels.
async fn metric(s: &TestServer, name: &str) -> f64 {
    let text = s.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

async fn a_first_request_watch_is_exact_http11_and_frees_its_slot_on_hang_up(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    let (status, _) = s
        .api(Method::PUT, "/v1/config/orders/prod/k", &t, Some(json!(1)))
        .await;
    assert_eq!(status, 200);
    let mut w = Raw::connect(&s).await;
    let req = format!(
        "GET /v1/config/orders/prod/watch HTTP/1.1\r\nHost: capstan\r\n\
         Authorization: Bearer {t}\r\nAccept: text/event-stream\r\n\r\n"
    );
    // The head arrives in two pieces, cut inside a header.
    w.s.write_all(&req.as_bytes()[..40]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.s.write_all(&req.as_bytes()[40..]).await.unwrap();
    let head = w.head().await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(
        header(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(header(&head, "cache-control"), Some("no-store"));
    assert!(
        header(&head, "date").is_some_and(|d| d.ends_with(" gmt")),
        "{head}"
    );
    assert!(header(&head, "x-request-id").is_some(), "{head}");
    assert!(header(&head, "content-length").is_none(), "{head}");
    let reset = w.event("reset").await;
    assert_eq!(reset["values"]["k"], 1, "{reset}");
    assert_eq!(metric(&s, "capstan_http_direct_streams").await, 1.0);
    assert_eq!(metric(&s, "capstan_config_watchers").await, 1.0);
    // A change arrives as the next event, in its own chunk framing.
    s.api(Method::PUT, "/v1/config/orders/prod/k", &t, Some(json!(2)))
        .await;
    let change = w.event("change").await;
    assert_eq!(change["changes"][0]["value"], 2, "{change}");
    // Hanging up ends the stream and frees the watcher without any write to notice it.
    drop(w);
    let mut freed = false;
    for _ in 0..50 {
        if metric(&s, "capstan_config_watchers").await == 0.0
            && metric(&s, "capstan_http_direct_streams").await == 0.0
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "a hung-up watcher kept its slot");
    s.shutdown().await;
}

async fn a_refused_first_request_watch_answers_whole_and_keeps_the_connection(ctx: &Ctx) {
    let s = ctx.server().await;
    let mut c = Raw::connect(&s).await;
    c.s.write_all(
        b"GET /v1/config/orders/prod/watch HTTP/1.1\r\nhost: capstan\r\n\
          accept: text/event-stream\r\n\r\n",
    )
    .await
    .unwrap();
    let head = c.head().await;
    assert!(head.starts_with("http/1.1 401 unauthorized\r\n"), "{head}");
    assert!(header(&head, "www-authenticate").is_some(), "{head}");
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    let body: Value = serde_json::from_slice(&c.exact(len).await).unwrap();
    assert!(body["error"].is_string(), "{body}");
    // The same connection goes on, now in hyper.
    c.s.write_all(b"GET /healthz HTTP/1.1\r\nhost: capstan\r\n\r\n")
        .await
        .unwrap();
    let head = c.head().await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    // A refused watch that asks to close is answered and closed.
    let mut c = Raw::connect(&s).await;
    c.s.write_all(
        b"GET /v1/config/orders/prod/watch HTTP/1.1\r\nhost: capstan\r\n\
          accept: text/event-stream\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let head = c.head().await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    c.exact(len).await;
    assert!(
        !c.fill().await,
        "the connection stayed open after connection: close"
    );
    s.shutdown().await;
}

async fn other_first_requests_reach_hyper_with_nothing_lost(ctx: &Ctx) {
    let s = ctx.server().await;
    let t = admin_token(&s).await;
    // A POST with a body, sent in pieces, pipelined with a GET: all of it reaches hyper.
    let body = json!({"name": "probe", "audiences": ["capstan"]}).to_string();
    let mut c = Raw::connect(&s).await;
    let req = format!(
        "POST /v1/clients HTTP/1.1\r\nhost: capstan\r\nauthorization: Bearer {t}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}\
         GET /healthz HTTP/1.1\r\nhost: capstan\r\n\r\n",
        body.len()
    );
    for piece in req.as_bytes().chunks(7) {
        c.s.write_all(piece).await.unwrap();
    }
    let head = c.head().await;
    assert!(
        head.starts_with("http/1.1 201") || head.starts_with("http/1.1 200"),
        "{head}"
    );
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    let created: Value = serde_json::from_slice(&c.exact(len).await).unwrap();
    assert_eq!(created["name"], "probe", "{created}");
    let head = c.head().await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    // An event-stream GET that carries a body is hyper's too (and is not a watch then).
    let mut c = Raw::connect(&s).await;
    let req = format!(
        "GET /v1/config/orders/prod/watch HTTP/1.1\r\nhost: capstan\r\nauthorization: Bearer {t}\r\n\
         accept: text/event-stream\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    c.s.write_all(req.as_bytes()).await.unwrap();
    let head = c.head().await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(metric(&s, "capstan_http_direct_streams").await, 0.0);
    assert_eq!(metric(&s, "capstan_config_watchers").await, 1.0);
    // A connection that sends nothing and closes costs nothing.
    drop(Raw::connect(&s).await);
    s.shutdown().await;
}

/// Heartbeats arrive on their interval whether or not events flow; a server that stops ends
/// the stream with a `dropped` event saying so, then the last chunk.
async fn heartbeats_keep_coming_and_a_stopping_server_says_so(ctx: &Ctx) {
    let mut settings = ctx.settings();
    settings
        .service_config
        .insert("config".into(), json!({ "heartbeat_seconds": 1 }));
    let s = ctx.server_with(settings).await;
    let t = admin_token(&s).await;
    s.api(Method::PUT, "/v1/config/orders/prod/k", &t, Some(json!(0)))
        .await;
    let mut w = Raw::connect(&s).await;
    let req = format!(
        "GET /v1/config/orders/prod/watch HTTP/1.1\r\nHost: capstan\r\n\
         Authorization: Bearer {t}\r\nAccept: text/event-stream\r\n\r\n"
    );
    w.s.write_all(req.as_bytes()).await.unwrap();
    assert!(w.head().await.starts_with("http/1.1 200 ok"));
    w.event("reset").await;
    // Changes every 200 ms for 2.5 s: heartbeats still come about once a second.
    let writer = {
        let (base, t) = (s.base.clone(), t.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 1..=12 {
                http.put(format!("{base}/v1/config/orders/prod/k"))
                    .bearer_auth(&t)
                    .json(&json!(i))
                    .send()
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let (mut beats, mut changes, mut last, mut text) = (0, 0, 0i64, String::new());
    while changes < 12 {
        let c = w.chunk().await;
        assert!(!c.is_empty(), "the stream ended");
        text.push_str(std::str::from_utf8(&c).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if block == ": heartbeat\n\n" {
                beats += 1;
            } else if block.starts_with("event: change\n") {
                changes += 1;
                last = block
                    .lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .unwrap()
                    .parse()
                    .unwrap();
            }
        }
    }
    writer.await.unwrap();
    assert!(beats >= 1, "no heartbeat in 2.4 s of changes");
    // The server stops: the watcher is told, and the stream ends cleanly.
    let stop = tokio::spawn(s.shutdown());
    let ev = w.event("dropped").await;
    assert!(ev["reason"].as_str().unwrap().contains("stopping"), "{ev}");
    assert_eq!(ev["revision"], last, "{ev}");
    loop {
        if w.chunk().await.is_empty() {
            break;
        }
    }
    stop.await.unwrap();
}
