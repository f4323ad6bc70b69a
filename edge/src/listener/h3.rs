//! The HTTP/3 listener: QUIC (quinn) with the HTTPS listener's certificates and SNI
//! selection, each request served by the same [`Proxy`] as HTTP/1.1 and HTTP/2.
//!
//! Bodies stream both ways one frame at a time, with QUIC flow control as the only
//! buffer. This module must never serve more connections than the shared cap, never
//! hand the proxy a request read from 0-RTT early data without marking it
//! [`EarlyData`] (the proxy then refuses unsafe methods: replay risk), and never let a
//! connection outlive drain: drain sends GOAWAY, lets accepted streams finish, then
//! closes.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use futures_util::future::Shared;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::body::{BoxError, ResponseBody};
use crate::config::{Http3Config, Limits};
use crate::conn::ConnState;
use crate::headers;
use crate::proxy::{ConnInfo, EarlyData, Proxy};
use crate::record;
use crate::tls::{SniResolver, TlsError};

type RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type SendStream = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// The HTTP/3 application error code for a clean close (RFC 9114, section 8.1).
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);

/// How long a drained connection waits for its client to close before closing it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The QUIC server configuration: TLS 1.3 only (QUIC has no other), ALPN `h3`, the
/// HTTPS certificates, stream and idle limits, early data only when enabled.
pub fn server_config(
    resolver: Arc<SniResolver>,
    limits: &Limits,
    http3: &Http3Config,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(resolver.provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            context: "HTTP/3 TLS versions".into(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    tls.alpn_protocols = vec![b"h3".to_vec()];
    // QUIC requires exactly u32::MAX or 0 here (RFC 9001, section 4.6.1).
    tls.max_early_data_size = if http3.zero_rtt { u32::MAX } else { 0 };
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| TlsError::Quic {
        context: "HTTP/3 QUIC crypto".into(),
        message: e.to_string(),
    })?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.h3_max_concurrent_streams.into())
        // The client's control stream and two QPACK streams, with room to spare.
        .max_concurrent_uni_streams(8u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(limits.idle_timeout.0).unwrap_or_else(|_| quinn::VarInt::MAX.into()),
        ));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// What every HTTP/3 connection shares.
pub struct H3Listener {
    proxy: Arc<Proxy>,
    limits: Limits,
    zero_rtt: bool,
    permits: Arc<Semaphore>,
    drain: watch::Receiver<bool>,
}

impl H3Listener {
    /// A listener serving `proxy`; `permits` caps connections together with TCP.
    pub fn new(
        proxy: Arc<Proxy>,
        limits: Limits,
        http3: &Http3Config,
        permits: Arc<Semaphore>,
        drain: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(H3Listener {
            proxy,
            limits,
            zero_rtt: http3.zero_rtt,
            permits,
            drain,
        })
    }

    /// Accepts until drain begins, then waits for the connections to finish.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        let mut drain = self.drain.clone();
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
                _ = drained(&mut drain) => break,
            };
            // As for TCP: hold the handshake until a slot frees up.
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = drained(&mut drain) => {
                    incoming.refuse();
                    break;
                }
            };
            let this = self.clone();
            tokio::spawn(async move { this.connection(incoming, permit).await });
        }
        // New connection attempts are refused from here on.
        endpoint.set_server_config(None);
        endpoint.wait_idle().await;
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming, _permit: OwnedSemaphorePermit) {
        let peer = incoming.remote_address();
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "QUIC connection refused");
                return;
            }
        };
        // With 0-RTT on, requests may arrive before the handshake completes; until
        // it has, they are early data and only safe methods are served.
        let mut handshake = Handshake::Done;
        let conn = if self.zero_rtt {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    handshake = Handshake::Pending(accepted.shared());
                    conn
                }
                Err(connecting) => match self.handshake(connecting, peer).await {
                    Some(c) => c,
                    None => return,
                },
            }
        } else {
            match self.handshake(connecting, peer).await {
                Some(c) => c,
                None => return,
            }
        };
        let mut h3 = match h3::server::builder()
            .max_field_section_size(u64::from(self.limits.max_header_bytes))
            .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await
        {
            Ok(h3) => h3,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "HTTP/3 connection set-up failed");
                return;
            }
        };
        let _open = record::connection("h3");
        let info = Arc::new(ConnInfo::new(peer, "https", ConnState::new(Instant::now(), false)));
        let mut requests = JoinSet::new();
        let mut drain = self.drain.clone();
        let mut draining = *drain.borrow();
        if draining {
            let _ = h3.shutdown(0).await;
        }
        loop {
            tokio::select! {
                r = h3.accept(), if !draining => match r {
                    Ok(Some(resolver)) => {
                        let (proxy, info, done) = (self.proxy.clone(), info.clone(), handshake.clone());
                        let (conn, head_timeout) = (conn.clone(), self.limits.header_read_timeout.0);
                        requests.spawn(async move {
                            // A client that goes away mid-request ends it at once: an
                            // upstream exchange waiting on a slow provider is dropped,
                            // not left to time out.
                            tokio::select! {
                                () = request(resolver, proxy, info, done, head_timeout) => {}
                                _ = conn.closed() => {}
                            }
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if !e.is_h3_no_error() {
                            tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                        }
                        break;
                    }
                },
                Some(_) = requests.join_next(), if !requests.is_empty() => {}
                _ = drained(&mut drain), if !draining => {
                    draining = true;
                    // GOAWAY: requests already accepted finish, later ones are refused.
                    let _ = h3.shutdown(0).await;
                }
                () = std::future::ready(()), if draining && requests.is_empty() => break,
            }
        }
        while requests.join_next().await.is_some() {}
        if draining {
            // Let the client close once it has the last bytes; closing first could
            // discard data still in flight.
            let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
            conn.close(H3_NO_ERROR, b"");
        }
    }

    async fn handshake(&self, connecting: quinn::Connecting, peer: SocketAddr) -> Option<quinn::Connection> {
        match tokio::time::timeout(self.limits.tls_handshake_timeout.0, connecting).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "QUIC handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "QUIC handshake timed out");
                None
            }
        }
    }
}

/// Whether a connection's handshake has completed, so that a request is known not
/// to be early data.
#[derive(Clone)]
enum Handshake {
    Done,
    /// Accepted with 0-RTT: done once this resolves. quinn resolves it before it
    /// delivers anything received after the handshake, so a request read after
    /// completion always sees it resolved.
    Pending(Shared<quinn::ZeroRttAccepted>),
}

impl Handshake {
    fn done(&self) -> bool {
        match self {
            Handshake::Done => true,
            Handshake::Pending(accepted) => accepted.clone().now_or_never().is_some(),
        }
    }
}

/// One request stream: read the head, route and forward it through the proxy,
/// stream the answer back.
///
/// The head, and the first body frame of a request without a length, must arrive
/// within `head_timeout` (`limits.header_read_timeout`), so that a slow client cannot
/// hold stream slots before routing; the stream is reset otherwise.
async fn request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
    handshake: Handshake,
    head_timeout: Duration,
) {
    let (req, stream) = match tokio::time::timeout(head_timeout, resolver.resolve_request()).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::debug!(peer = %info.peer, error = %e, "bad HTTP/3 request");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %info.peer, "HTTP/3 request head too slow");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let body = match tokio::time::timeout(head_timeout, RequestBody::open(recv, req.headers())).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 request body failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %info.peer, "HTTP/3 request without a length sent no data in time");
            send.stop_stream(h3::error::Code::H3_REQUEST_INCOMPLETE);
            return;
        }
    };
    let (mut parts, ()) = req.into_parts();
    if !handshake.done() {
        // The proxy serves only safe methods from early data.
        parts.extensions.insert(EarlyData);
    }
    let response = match proxy.handle(Request::from_parts(parts, body), None, &info).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if let Err(e) = respond(&mut send, response).await {
        tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 response aborted");
        send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
    }
}

/// Sends the head, then the body frame by frame, then finishes the stream.
async fn respond(send: &mut SendStream, response: Response<ResponseBody>) -> Result<(), BoxError> {
    let (mut parts, body) = response.into_parts();
    // Connection-specific fields are malformed in HTTP/3 (RFC 9114, section 4.2).
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = http::Version::HTTP_3;
    send.send_response(Response::from_parts(parts, ())).await?;
    let mut body = pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    send.send_data(data).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

/// A request body read from an HTTP/3 stream. Its length is known from
/// `Content-Length`; without one, the first data frame is awaited before routing so
/// that a request with no body is forwarded as having none.
pub struct RequestBody {
    recv: RecvStream,
    first: Option<Bytes>,
    data_done: bool,
    done: bool,
    length: Option<u64>,
}

impl RequestBody {
    async fn open(recv: RecvStream, headers: &http::HeaderMap) -> Result<RequestBody, BoxError> {
        let length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = RequestBody {
            recv,
            first: None,
            data_done: false,
            done: false,
            length,
        };
        if length.is_none() {
            match body.recv.recv_data().await? {
                Some(mut buf) => body.first = Some(buf.copy_to_bytes(buf.remaining())),
                None => body.data_done = true,
            }
            if body.data_done {
                body.length = Some(0);
            }
        }
        if body.length == Some(0) {
            body.data_done = true;
            body.done = true;
        }
        Ok(body)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_recv_data(cx)) {
                Ok(Some(mut buf)) => {
                    let data = buf.copy_to_bytes(buf.remaining());
                    if let Some(n) = &mut this.length {
                        *n = n.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) => this.data_done = true,
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
        if this.done {
            return Poll::Ready(None);
        }
        let trailers = ready!(this.recv.poll_recv_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match (self.length, &self.first) {
            (Some(n), None) => SizeHint::with_exact(n),
            (_, first) => {
                let mut hint = SizeHint::default();
                hint.set_lower(first.as_ref().map_or(0, |b| b.len() as u64));
                hint
            }
        }
    }
}

/// Resolves once drain has begun.
async fn drained(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}
