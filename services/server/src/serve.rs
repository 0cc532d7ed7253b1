//! The HTTP accept loop: hyper with a header read timeout (a client sending partial headers
//! cannot hold a connection open), a connection limit (backpressure through the listen
//! backlog beyond it), and graceful shutdown (in-flight requests finish, idle keep-alive
//! connections close).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use capstan_http::PeerCertificate;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;

use crate::direct::{First, Peer, Rewind};

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open connections finish.
/// With `tls`, every connection is a TLS handshake first (bounded by the header read timeout);
/// a client certificate it verified is given to each request as a [`PeerCertificate`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    streams: Arc<AtomicUsize>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // Streams served outside hyper (crate::direct) learn of the stop from this.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Every answer and every event is written whole, so Nagle's algorithm would only hold
        // a stream's next event (or a head's body) until the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            router: router.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            limits,
            stop: stop.clone(),
            streams: streams.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    conn.serve(
                        stream,
                        Peer {
                            addr: peer,
                            cert: None,
                        },
                        true,
                    )
                    .await
                }
                // Boxed: a TLS stream is kilobytes of rustls state, and inline it would size
                // every plain connection's task too.
                Some(acceptor) => Box::pin(conn.serve_tls(acceptor, stream, peer)).await,
            }
            drop(permit);
        });
    }
    drop(listener);
    stopping.send_replace(true);
    // Waits for every connection task, direct streams included: each holds a watcher.
    graceful.shutdown().await;
    Ok(())
}

/// What a connection's task needs from the accept loop.
struct Conn {
    router: Router,
    builder: Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    limits: ConnLimits,
    stop: tokio::sync::watch::Receiver<bool>,
    streams: Arc<AtomicUsize>,
}

impl Conn {
    /// A TLS handshake (bounded by the header read timeout), then [`Conn::serve`] with the
    /// client certificate it verified.
    async fn serve_tls(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
    ) {
        let timeout = self.limits.header_read_timeout;
        let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let cert = crate::tls::peer_certificate(stream.get_ref().1);
        let h1 = stream.get_ref().1.alpn_protocol() != Some(b"h2");
        self.serve(stream, Peer { addr: peer, cert }, h1).await;
    }

    /// Serves one connection: its first request may be an event stream served directly
    /// (`may_be_h1`: not a TLS connection that chose h2), the rest is hyper's.
    async fn serve<IO>(self, io: IO, peer: Peer, may_be_h1: bool)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = if may_be_h1 {
            match crate::direct::first_request(
                io,
                &self.router,
                &peer,
                self.limits.header_read_timeout,
                &self.streams,
                self.stop,
            )
            .await
            {
                First::Hyper(io) => io,
                First::Done => return,
            }
        } else {
            Rewind::new(Vec::new(), io)
        };
        // Boxed: hyper's connection state is kilobytes, and inline it would size every
        // connection's task, direct streams included, which never get here.
        Box::pin(async move {
            let service = service(self.router, peer.addr, peer.cert);
            let conn = self
                .builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            if let Err(e) = self.watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        })
        .await;
    }
}

/// The per-connection service: the router, with the peer's address (and verified client
/// certificate) in every request's extensions.
fn service(
    router: Router,
    peer: SocketAddr,
    cert: Option<PeerCertificate>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<axum::response::Response, Infallible>>
                 + Send
                 + 'static,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(c) = &cert {
            req.extensions_mut().insert(c.clone());
        }
        let mut router = router.clone();
        async move { Ok::<_, Infallible>(router.call(req).await.unwrap_or_else(|e| match e {})) }
    })
}
