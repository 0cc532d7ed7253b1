//! HTTP/1.1 event streams written straight to the socket, outside hyper.
//!
//! A config watcher holds its connection for hours and sends nothing after its request. hyper
//! keeps a read buffer (8–16 KiB) and an 8 KiB write buffer for every HTTP/1 connection for the
//! connection's whole life, which is three times what the rest of a watcher costs (about 4 KiB:
//! the task, the socket, the event stream and its subscription). So the *first* request of an
//! HTTP/1.1 connection that asks for `text/event-stream` is read here, with httparse (the parser
//! hyper uses), answered by the same router with the same layers, and when the answer is a
//! stream its head and chunks are written here, one `writev` per event, with no buffer kept
//! between events.
//!
//! Everything else goes to hyper with the bytes already read put back in front ([`Rewind`]):
//! other requests, HTTP/2, HTTP/1.0, a request with a body, an upgrade or `Expect`, a head that
//! does not parse or is larger than [`MAX_HEAD`]. A first request answered here with something
//! other than a stream (a 401, a 404) gets its whole answer with a `content-length`, and the
//! connection goes on in hyper unless the client asked to close it.

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use capstan_http::PeerCertificate;
use http_body_util::BodyExt;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tower::ServiceExt;

/// The largest request head read here; a larger one goes to hyper, which has its own limit.
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers a request read here may have.
const MAX_HEADERS: usize = 64;
/// A client that cannot take one event (or a final answer) in this long is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the server begins to stop, a stream gets this long to end by itself (the config hub
/// ends its watches with a last event) before its connection is cut.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Bytes a client may send after a stream's request (a pipelined request that will never be
/// answered, since the stream does not end) before its connection is closed.
const MAX_AFTER_STREAM: usize = 8 * 1024;
/// The largest non-stream answer collected to be sent with a `content-length` (error bodies are
/// a few hundred bytes).
const MAX_ANSWER: usize = 1 << 20;

/// What [`first_request`] did with a connection.
pub enum First<IO> {
    /// Not a request for this module, or answered and kept alive: hyper serves the rest.
    Hyper(Rewind<IO>),
    /// Served here to the end (a stream), or closed (the client left, timed out, or asked to).
    Done,
}

/// The connection-level facts a request carries in its extensions.
#[derive(Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The client certificate the TLS handshake verified.
    pub cert: Option<PeerCertificate>,
}

/// Reads the first request head of an HTTP/1 connection; serves it here if it asks for an
/// event stream (see the module doc), otherwise hands the connection to hyper.
pub async fn first_request<IO>(
    mut io: IO,
    router: &Router,
    peer: &Peer,
    header_read_timeout: Duration,
    streams: &AtomicUsize,
    mut stop: watch::Receiver<bool>,
) -> First<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + header_read_timeout;
    let head = loop {
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)) => r,
            // Stopping: a connection that has not sent its request yet is idle.
            _ = stop.wait_for(|s| *s) => return First::Done,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            // The client left, or is too slow with its head (hyper closes such a connection
            // too, and must not give it a second header timeout).
            _ => return First::Done,
        }
        let n = buf.len().min(4);
        if buf[..n] != b"GET "[..n] {
            return First::Hyper(Rewind::new(buf, io));
        }
        match parse(&buf) {
            Parsed::Partial if buf.len() < MAX_HEAD => {
                if buf.capacity() == buf.len() {
                    buf.reserve(1024);
                }
            }
            Parsed::Stream(req, len) => break (req, len),
            Parsed::Partial | Parsed::NotHere => return First::Hyper(Rewind::new(buf, io)),
        }
    };
    let (req, len) = head;
    let mut req = *req;
    let rest = buf.split_off(len);
    drop(buf);
    let close = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v, "close"));
    req.extensions_mut().insert(ConnectInfo(peer.addr));
    if let Some(c) = &peer.cert {
        req.extensions_mut().insert(c.clone());
    }
    // Boxed, so the router's future (large, and done once the head is answered) does not
    // size the task for the stream's whole life.
    let res = match Box::pin(router.clone().oneshot(req)).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    if is_stream(&res) {
        streams.fetch_add(1, Ordering::Relaxed);
        stream(io, res, stop).await;
        streams.fetch_sub(1, Ordering::Relaxed);
        return First::Done;
    }
    match answer(&mut io, res, close).await {
        Ok(()) if !close => First::Hyper(Rewind::new(rest, io)),
        _ => First::Done,
    }
}

enum Parsed {
    Partial,
    /// A complete head for this module, and its length.
    Stream(Box<Request<Body>>, usize),
    NotHere,
}

/// Parses a request head; only a bodiless HTTP/1.1 `GET` asking for an event stream, whose
/// every part is valid for `http`'s types, is for this module.
fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotHere,
    };
    if r.method != Some("GET") || r.version != Some(1) {
        return Parsed::NotHere;
    }
    let Some(Ok(uri)) = r.path.map(Uri::try_from) else {
        return Parsed::NotHere;
    };
    if uri.scheme().is_some() || !uri.path().starts_with('/') {
        return Parsed::NotHere;
    }
    let mut map = HeaderMap::with_capacity(r.headers.len());
    let mut wants_stream = false;
    for h in r.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::NotHere;
        };
        match name {
            header::CONTENT_LENGTH if value.as_bytes() == b"0" => {}
            header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::UPGRADE
            | header::EXPECT => {
                return Parsed::NotHere;
            }
            header::ACCEPT => wants_stream |= has_token(&value, "text/event-stream"),
            _ => {}
        }
        map.append(name, value);
    }
    if !wants_stream {
        return Parsed::NotHere;
    }
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = map;
    Parsed::Stream(Box::new(req), len)
}

/// Whether a comma-separated header value lists `token` (case-insensitive, parameters ignored).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|v| {
        v.split(',').any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

fn is_stream(res: &Response) -> bool {
    use axum::body::HttpBody as _;
    res.status() == StatusCode::OK
        && res.body().size_hint().exact().is_none()
        && res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// The status line and the response's own headers, less the ones about the connection and the
/// body's framing (written by the caller), plus `date` as hyper sends it.
fn head(res: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let status = res.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in res.headers() {
        if matches!(
            *name,
            header::CONNECTION | header::TRANSFER_ENCODING | header::CONTENT_LENGTH
        ) || name.as_str() == "keep-alive"
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !res.headers().contains_key(header::DATE) {
        // The HTTP Date header is the wall clock by definition (RFC 9110 §6.6.1), as in hyper.
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now();
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Writes a whole non-stream answer with its length.
async fn answer<IO>(io: &mut IO, res: Response, close: bool) -> std::io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    let mut out = head(&res);
    let bodiless = matches!(
        res.status(),
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) || res.status().is_informational();
    let body = match http_body_util::Limited::new(res.into_body(), MAX_ANSWER)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "a direct answer's body failed");
            return Err(std::io::Error::other("body"));
        }
    };
    if !bodiless {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(&body);
    }
    timed(async {
        io.write_all(&out).await?;
        io.flush().await
    })
    .await
}

/// Writes a stream's head, then each data frame as one chunk, until the body ends (then the
/// last chunk), the client leaves, a write stalls, or the server has been stopping for
/// [`STOP_GRACE`]. The connection closes after.
async fn stream<IO>(mut io: IO, res: Response, mut stop: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = head(&res);
    out.extend_from_slice(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    let mut body = res.into_body();
    if timed(async {
        io.write_all(&out).await?;
        io.flush().await
    })
    .await
    .is_err()
    {
        return;
    }
    drop(out);
    let cut = async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::pin!(cut);
    let mut scratch = [0u8; 64];
    let mut after = 0usize;
    loop {
        tokio::select! {
            biased;
            frame = body.frame() => match frame {
                Some(Ok(f)) => {
                    let Ok(data) = f.into_data() else { continue };
                    if !data.is_empty() && timed(chunk(&mut io, &data)).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = timed(async {
                        io.write_all(b"0\r\n\r\n").await?;
                        io.flush().await
                    })
                    .await;
                    break;
                }
                // Cut without the last chunk, so the client sees the stream broke.
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "an event stream failed");
                    return;
                }
            },
            r = io.read(&mut scratch) => match r {
                Ok(n) if n > 0 && after + n <= MAX_AFTER_STREAM => after += n,
                _ => return,
            },
            _ = &mut cut => return,
        }
    }
    let _ = timed(io.shutdown()).await;
}

/// One chunk: its size line, the data and the CRLF in one vectored write when the socket takes
/// it all, which it does unless its send buffer is full.
async fn chunk<IO>(io: &mut IO, data: &[u8]) -> std::io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    let mut size = [0u8; 18];
    let n = {
        use std::io::Write as _;
        let mut w = &mut size[..];
        let _ = write!(w, "{:x}\r\n", data.len());
        18 - w.len()
    };
    let mut parts = [
        IoSlice::new(&size[..n]),
        IoSlice::new(data),
        IoSlice::new(b"\r\n"),
    ];
    let mut slices = &mut parts[..];
    while !slices.is_empty() {
        let written = io.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    io.flush().await
}

/// `f`, failed with `TimedOut` after [`WRITE_TIMEOUT`]. The timer is armed only if `f` does not
/// finish on its first poll: almost every write does (the socket has room), and a timer made
/// and cancelled for each of 10,000 watchers' writes per change is CPU the fan-out needs.
async fn timed(f: impl Future<Output = std::io::Result<()>>) -> std::io::Result<()> {
    let mut f = std::pin::pin!(f);
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await {
        return r;
    }
    match tokio::time::timeout(WRITE_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// A connection with bytes already read from it put back in front of what comes next.
pub struct Rewind<IO> {
    pre: Vec<u8>,
    at: usize,
    io: IO,
}

impl<IO> Rewind<IO> {
    /// `io`, with `pre` read first.
    pub fn new(pre: Vec<u8>, io: IO) -> Self {
        Rewind { pre, at: 0, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.pre.len() {
            let n = (this.pre.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.pre[this.at..this.at + n]);
            this.at += n;
            if this.at == this.pre.len() {
                // Given back: a long-lived connection should not keep the first read's buffer.
                this.pre = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bodiless_http11_get_for_an_event_stream_is_served_here() {
        let ok =
            b"GET /v1/config/a/b/watch HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n";
        assert!(matches!(parse(ok), Parsed::Stream(_, n) if n == ok.len()));
        assert!(matches!(parse(&ok[..30]), Parsed::Partial));
        for no in [
            &b"GET / HTTP/1.1\r\naccept: application/json\r\n\r\n"[..],
            b"POST /w HTTP/1.1\r\naccept: text/event-stream\r\n\r\n",
            b"GET /w HTTP/1.0\r\naccept: text/event-stream\r\n\r\n",
            b"GET /w HTTP/1.1\r\naccept: text/event-stream\r\ncontent-length: 5\r\n\r\n",
            b"GET /w HTTP/1.1\r\naccept: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET /w HTTP/1.1\r\naccept: text/event-stream\r\nupgrade: websocket\r\n\r\n",
            b"GET http://x/w HTTP/1.1\r\naccept: text/event-stream\r\n\r\n",
            b"GET /w HTTP/1.1\r\naccept: text/event-stream\r\nx: a\x01b\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(parse(no), Parsed::NotHere),
                "{}",
                String::from_utf8_lossy(no)
            );
        }
        let cl0 = b"GET /w HTTP/1.1\r\naccept: text/html, text/event-stream;q=1\r\ncontent-length: 0\r\n\r\n";
        assert!(matches!(parse(cl0), Parsed::Stream(..)));
    }

    #[test]
    fn a_direct_stream_task_stays_small() {
        // What a watcher's task holds for hours (the router's future is boxed and gone).
        let (io, _peer) = tokio::io::duplex(64);
        let router = Router::new();
        let peer = Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            cert: None,
        };
        let streams = AtomicUsize::new(0);
        let (_tx, stop) = watch::channel(false);
        let f = first_request(io, &router, &peer, Duration::from_secs(1), &streams, stop);
        let size = std::mem::size_of_val(&f);
        println!("first_request future: {size} bytes");
        assert!(size < 2048, "{size} bytes");
    }

    #[tokio::test]
    async fn rewind_gives_back_what_was_read_first() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind::new(b"hello ".to_vec(), a);
        b.write_all(b"world").await.unwrap();
        drop(b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
        assert!(r.pre.capacity() == 0);
    }
}
