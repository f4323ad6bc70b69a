//! Client-facing listeners: accept, TLS, HTTP/1.1 (the edge's own server, `h1`) or
//! HTTP/2 (hyper), connection limits, timeouts and graceful drain.
//!
//! Everything below this module sees plain `http::Request`s; the protocol that
//! carried them stops here. A listener must never serve more connections than the
//! limit (each worker may hold one accepted connection waiting for a slot), and
//! must never let a connection outlive the drain deadline's process exit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::body::ResponseBody;
use crate::config::Limits;
use crate::conn::{Check, ConnState, DrainNotice};
use crate::proxy::{ConnInfo, Proxy};
use crate::record;

mod h1;
pub mod h3;

/// What every connection of a listener shares.
pub struct Listener {
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    h2: http2::Builder<TokioExecutor>,
    permits: Arc<Semaphore>,
    drain: watch::Receiver<bool>,
    /// Passed on to this listener's connections when drain begins.
    conns: Arc<DrainNotice>,
    /// `Alt-Svc` added to every response, advertising HTTP/3.
    alt_svc: Option<HeaderValue>,
}

impl Listener {
    /// A listener serving `proxy`, with TLS when `tls` is given. `permits` caps open
    /// connections (shared across listeners); `drain` turns true at shutdown;
    /// `alt_svc`, when given, is added to every response.
    pub fn new(
        proxy: Arc<Proxy>,
        tls: Option<TlsAcceptor>,
        limits: Limits,
        permits: Arc<Semaphore>,
        drain: watch::Receiver<bool>,
        alt_svc: Option<HeaderValue>,
    ) -> Arc<Self> {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams as usize)
            .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams as usize)
            .max_header_list_size(limits.max_header_bytes)
            .initial_stream_window_size(256 * 1024)
            .initial_connection_window_size(1024 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Arc::new(Listener {
            proxy,
            tls,
            limits,
            h2,
            permits,
            drain,
            conns: DrainNotice::new(),
            alt_svc,
        })
    }

    /// Accepts until drain begins. Each connection runs in its own task and holds a
    /// permit until it closes.
    pub async fn serve(self: Arc<Self>, socket: TcpListener) {
        let mut drain = self.drain.clone();
        let proto = if self.tls.is_some() { "https" } else { "http" };
        loop {
            let (tcp, peer) = tokio::select! {
                r = socket.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, listener = proto, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = drained(&mut drain) => return self.conns.give(),
            };
            // The connection cap is shared by all workers, but each worker accepts
            // from its own socket: accept first, then wait for a slot, and accept
            // nothing more meanwhile. So at most one connection per worker waits
            // beyond the cap, and it is served as soon as any slot frees up.
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = drained(&mut drain) => return self.conns.give(),
            };
            let _ = tcp.set_nodelay(true);
            let this = self.clone();
            // Boxed: the connection's future is large (its request path inlined),
            // and spawning moves a task's future several times; a box is moved as
            // a pointer.
            tokio::spawn(Box::pin(this.connection(tcp, peer, proto, permit)));
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        proto: &'static str,
        _permit: OwnedSemaphorePermit,
    ) {
        let Some(acceptor) = &self.tls else {
            return self.serve_h1(tcp, peer, proto).await;
        };
        let tls = match tokio::time::timeout(self.limits.tls_handshake_timeout.0, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_h2(tls, peer, proto).await
        } else {
            self.serve_h1(tls, peer, proto).await
        }
    }

    async fn serve_h1<S>(&self, io: S, peer: SocketAddr, proto: &'static str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _open = record::connection("http1");
        // The first head is timed from accept.
        let state = ConnState::new(Instant::now(), true);
        let served = h1::Served {
            proxy: &self.proxy,
            info: Arc::new(ConnInfo::new(peer, proto, state)),
            limits: &self.limits,
            alt_svc: self.alt_svc.clone(),
            drain: &self.conns,
        };
        h1::serve(io, served).await;
    }

    async fn serve_h2<S>(&self, io: S, peer: SocketAddr, proto: &'static str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _open = record::connection("h2");
        let state = ConnState::new(Instant::now(), false);
        let info = Arc::new(ConnInfo::new(peer, proto, state.clone()));
        let svc = self.service(info);
        let conn = self.h2.serve_connection(TokioIo::new(io), svc);
        self.drive(conn, &state, peer).await;
    }

    /// The per-connection service: the proxy, plus `Alt-Svc` when HTTP/3 is served.
    fn service(
        &self,
        info: Arc<ConnInfo>,
    ) -> impl Service<Request<Incoming>, Response = Response<ResponseBody>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static {
        let proxy = self.proxy.clone();
        let alt_svc = self.alt_svc.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let info = info.clone();
            let alt_svc = alt_svc.clone();
            // Boxed: hyper moves the service's future into its connection state, and
            // a request's future is kilobytes; a pointer is cheaper to move.
            Box::pin(async move {
                let mut resp = proxy.handle(req, None, &info).await?;
                if let Some(v) = alt_svc {
                    resp.headers_mut().insert(http::header::ALT_SVC, v);
                }
                Ok::<_, Infallible>(resp)
            })
        })
    }

    /// Runs a connection to completion while enforcing idle and header timeouts and
    /// reacting to drain.
    async fn drive<C>(&self, conn: C, state: &ConnState, peer: SocketAddr)
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let mut conn = pin!(conn);
        let mut drain = self.conns.watch();
        let mut draining = self.conns.given();
        if draining {
            conn.as_mut().graceful_shutdown();
        }
        let header_timeout = self.limits.header_read_timeout.0;
        let idle_timeout = self.limits.idle_timeout.0;
        let mut closing = false;
        let mut wake = Instant::now() + header_timeout.min(idle_timeout);
        loop {
            tokio::select! {
                biased;
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = std::future::poll_fn(|cx| drain.poll_given(cx)), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep_until(wake), if !closing => {
                    match state.check(Instant::now(), header_timeout, idle_timeout) {
                        Check::Until(next) => wake = next,
                        Check::Idle => {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        Check::SlowHead => {
                            tracing::debug!(%peer, "request head too slow; closing");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Resolves once drain has begun.
async fn drained(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}
