//! Connections to providers: one keep-alive pool per provider, HTTP/1.1 or HTTP/2,
//! cleartext or TLS, with a hard cap on connections and bounded waits.
//!
//! The pool sends only to a [`Target`] that routing produced; it has no way to name
//! a provider itself. It must never retry a request whose bytes may have reached the
//! provider, and never rewrite a body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme as UriScheme};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meridian_proto::{Protocol, ProviderSpec, Scheme};
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::body::{BoxError, ProxyBody};

mod h1;
mod inline;

use crate::codec::RawFields;
use crate::config::UpstreamConfig;
use crate::headers::Passed;
use crate::route::Target;
use crate::runtime::current_worker;
use crate::tls::{TlsError, client_config};
pub use inline::InlineBody;

use inline::InlinePool;

/// Why a request got no response head from its provider.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect or TLS handshake did not finish in time.
    #[error("connect to provider timed out")]
    ConnectTimeout,
    /// The provider refused or failed the connection.
    #[error("connect to provider failed: {0}")]
    Connect(String),
    /// No response head within the response-header timeout.
    #[error("provider sent no response head in time")]
    ResponseTimeout,
    /// The exchange failed after the connection was up.
    #[error("provider exchange failed: {0}")]
    Exchange(String),
}

/// A provider pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The provider's TLS settings are unusable.
    #[error("provider `{id}`: {source}")]
    Tls {
        /// The provider.
        id: String,
        /// Why.
        source: TlsError,
    },
    /// The provider's address or name is unusable.
    #[error("provider `{id}`: {message}")]
    Address {
        /// The provider.
        id: String,
        /// Why.
        message: String,
    },
}

/// Per-worker connection pools, by protocol.
enum Workers {
    /// HTTP/1.1: connections driven inline by the requests using them.
    H1(Box<[Arc<InlinePool>]>),
    /// HTTP/2: multiplexed connections in hyper-util's pool, driven by their own task.
    H2(Box<[Client<Connector, ProxyBody>]>),
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workers::H1(p) => write!(f, "H1({} workers)", p.len()),
            Workers::H2(c) => write!(f, "H2({} workers)", c.len()),
        }
    }
}

/// Everything needed to talk to one provider; shared by all requests to it.
#[derive(Debug)]
pub struct ProviderPool {
    spec: ProviderSpec,
    /// One pool per worker thread, each with its share of the connection cap.
    workers: Workers,
    /// Opens the active probes' own connections, outside the request pools.
    prober: Connector,
    scheme: UriScheme,
    authority: Authority,
    response_timeout: Duration,
}

impl ProviderPool {
    /// Builds the pool for `spec` with one client per worker; no connection is
    /// opened until the first request.
    pub fn new(
        spec: &ProviderSpec,
        cfg: &UpstreamConfig,
        roots: &Arc<RootCertStore>,
        crypto: &Arc<CryptoProvider>,
        workers: usize,
    ) -> Result<Self, PoolError> {
        let id = spec.id.to_string();
        let h2 = spec.protocol == Protocol::Http2;
        let tls = match spec.endpoint.scheme {
            Scheme::Http => None,
            Scheme::Https => {
                let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
                let config = client_config(roots.clone(), crypto.clone(), alpn)
                    .map_err(|source| PoolError::Tls { id: id.clone(), source })?;
                let name =
                    ServerName::try_from(spec.endpoint.server_name().to_owned()).map_err(|e| PoolError::Address {
                        id: id.clone(),
                        message: format!("bad TLS server name: {e}"),
                    })?;
                Some((config, name))
            }
        };
        let authority: Authority = spec.endpoint.address.parse().map_err(|e| PoolError::Address {
            id: id.clone(),
            message: format!("bad address `{}`: {e}", spec.endpoint.address),
        })?;
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout.0)
            .pool_max_idle_per_host(cfg.max_idle_per_provider as usize)
            .http2_only(h2)
            .set_host(false);
        // Each worker owns a share of the provider's connection cap: idle connections
        // pooled on one worker could otherwise starve another of slots.
        let workers = workers.max(1);
        let connector_with = |slots: usize| {
            Connector(Arc::new(ConnectorInner {
                address: spec.endpoint.address.clone(),
                source: cfg.source_address,
                tls: tls.clone(),
                h2,
                timeout: cfg.connect_timeout.0,
                permits: Arc::new(Semaphore::new(slots)),
            }))
        };
        let connector = |w: usize| connector_with(worker_share(spec.max_connections as usize, workers, w));
        // Probes use their own single slot: they must not wait behind busy pools,
        // nor take a slot from requests.
        let prober = connector_with(1);
        let workers = if h2 {
            Workers::H2((0..workers).map(|w| builder.build(connector(w))).collect())
        } else {
            let (max_idle, idle) = (cfg.max_idle_per_provider as usize, cfg.pool_idle_timeout.0);
            Workers::H1(
                (0..workers)
                    .map(|w| InlinePool::new(connector(w), max_idle, idle))
                    .collect(),
            )
        };
        Ok(ProviderPool {
            spec: spec.clone(),
            workers,
            prober,
            scheme: match spec.endpoint.scheme {
                Scheme::Http => UriScheme::HTTP,
                Scheme::Https => UriScheme::HTTPS,
            },
            authority,
            response_timeout: cfg.response_header_timeout.0,
        })
    }

    /// The provider this pool reaches.
    pub fn spec(&self) -> &ProviderSpec {
        &self.spec
    }

    /// URI scheme for requests to this provider.
    pub fn scheme(&self) -> &UriScheme {
        &self.scheme
    }

    /// One active RTT probe: a fresh connection (TCP, TLS when configured), then a
    /// `HEAD` of `path`. Returns the round trip of the `HEAD` alone, comparable with
    /// the time to first byte of requests on pooled connections.
    pub async fn probe(&self, path: &str, timeout: Duration) -> Result<Duration, UpstreamError> {
        self.probe_request(Method::HEAD, path, 0, timeout).await.map(|r| r.rtt)
    }

    /// One bandwidth probe: a `GET` of `path`, reading at most `max_bytes` of the
    /// body. Returns the bytes read and the time they took after the first byte.
    pub async fn probe_bandwidth(
        &self,
        path: &str,
        max_bytes: u64,
        timeout: Duration,
    ) -> Result<(u64, Duration), UpstreamError> {
        self.probe_request(Method::GET, path, max_bytes, timeout)
            .await
            .map(|r| (r.bytes, r.transfer))
    }

    async fn probe_request(
        &self,
        method: Method,
        path: &str,
        max_bytes: u64,
        timeout: Duration,
    ) -> Result<ProbeResult, UpstreamError> {
        let probe = async {
            let permit = self
                .prober
                .permits()
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| UpstreamError::Connect("probe slot closed".into()))?;
            let io = self.prober.open(permit).await.map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => UpstreamError::ConnectTimeout,
                _ => UpstreamError::Connect(e.to_string()),
            })?;
            let host = self
                .spec
                .endpoint
                .host
                .clone()
                .unwrap_or_else(|| self.authority.to_string());
            let exchange = |e: hyper::Error| UpstreamError::Exchange(error_chain(&e));
            let bad = |e: http::Error| UpstreamError::Exchange(e.to_string());
            let started = tokio::time::Instant::now();
            let resp = if self.spec.protocol == Protocol::Http2 {
                let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(exchange)?;
                tokio::spawn(conn);
                let uri = format!("{}://{host}{path}", self.scheme);
                let req = Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(probe_body())
                    .map_err(bad)?;
                send.send_request(req).await.map_err(exchange)?
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(exchange)?;
                tokio::spawn(conn);
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(http::header::HOST, host)
                    .body(probe_body())
                    .map_err(bad)?;
                send.send_request(req).await.map_err(exchange)?
            };
            let rtt = started.elapsed();
            if resp.status().is_server_error() {
                return Err(UpstreamError::Exchange(format!("probe answered {}", resp.status())));
            }
            let head = tokio::time::Instant::now();
            let mut body = resp.into_body();
            let mut bytes = 0u64;
            while bytes < max_bytes {
                let Some(frame) = http_body_util::BodyExt::frame(&mut body).await else {
                    break;
                };
                if let Ok(data) = frame.map_err(exchange)?.into_data() {
                    bytes += data.len() as u64;
                }
            }
            // Stopping early drops the connection: the byte budget is a hard limit.
            Ok(ProbeResult {
                rtt,
                bytes,
                transfer: head.elapsed(),
            })
        };
        match tokio::time::timeout(timeout, probe).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::ResponseTimeout),
        }
    }

    /// The provider's address as a URI authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

/// A request that got no response head, and the request itself when none of it was
/// sent (so it may be tried elsewhere).
#[derive(Debug)]
pub struct SendFailure {
    /// What went wrong.
    pub error: UpstreamError,
    /// The untouched request, when nothing of it reached the provider.
    pub unsent: Option<Request<ProxyBody>>,
}

impl From<UpstreamError> for SendFailure {
    fn from(error: UpstreamError) -> Self {
        SendFailure { error, unsent: None }
    }
}

/// Sends `req` to the provider routing chose and waits for the response head, at
/// most the provider's response timeout from `now` (the caller's clock reading,
/// microseconds old).
///
/// `passed` are fields that follow the request's map on the wire (see
/// [`Passed`]); HTTP/2 takes them into the map.
// Not an `async fn`, so the request is not copied again when first polled (see
// `Proxy::handle`).
#[allow(clippy::manual_async_fn)]
pub fn send(
    target: &Target,
    mut req: Request<ProxyBody>,
    passed: Option<&Passed<'_>>,
    now: tokio::time::Instant,
) -> impl Future<Output = Result<Response<UpstreamBody>, SendFailure>> {
    async move {
        let pool = target.pool();
        let deadline = now + pool.response_timeout;
        // The calling worker's own pool: its connections live on this thread.
        let w = current_worker();
        match &pool.workers {
            // HTTP/1.1 keeps its deadline timer with the connection (see `h1`).
            Workers::H1(pools) => pools[w % pools.len()].send(req, passed, now, deadline).await,
            Workers::H2(clients) => {
                if let Some(passed) = passed {
                    passed
                        .merge_into(req.headers_mut())
                        .map_err(|e| UpstreamError::Exchange(format!("invalid request field: {}", e.0)))?;
                }
                // Boxed so HTTP/1.1 requests do not carry the HTTP/2 client's future.
                let exchange = Box::pin(clients[w % clients.len()].request(req));
                match tokio::time::timeout_at(deadline, exchange).await {
                    Err(_) => Err(UpstreamError::ResponseTimeout.into()),
                    Ok(Ok(resp)) => Ok(resp.map(UpstreamBody::H2)),
                    Ok(Err(e)) if e.is_connect() => {
                        let timed_out = std::error::Error::source(&e)
                            .and_then(|s| s.downcast_ref::<io::Error>())
                            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut);
                        if timed_out {
                            Err(UpstreamError::ConnectTimeout.into())
                        } else {
                            Err(UpstreamError::Connect(error_chain(&e)).into())
                        }
                    }
                    Ok(Err(e)) => Err(UpstreamError::Exchange(error_chain(&e)).into()),
                }
            }
        }
    }
}

/// A provider's response body, whichever protocol carried it.
#[derive(Debug)]
pub enum UpstreamBody {
    /// HTTP/1.1, driving its connection.
    H1(InlineBody),
    /// HTTP/2.
    H2(Incoming),
}

impl UpstreamBody {
    /// The response's fields as received, when its header map was left empty for
    /// them (HTTP/1.1 responses with no field to rewrite).
    pub fn take_raw(&mut self) -> Option<RawFields> {
        match self {
            UpstreamBody::H1(b) => b.take_raw(),
            UpstreamBody::H2(_) => None,
        }
    }

    /// The same, left in place.
    pub fn raw(&self) -> Option<&RawFields> {
        match self {
            UpstreamBody::H1(b) => b.raw(),
            UpstreamBody::H2(_) => None,
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

struct ProbeResult {
    rtt: Duration,
    bytes: u64,
    transfer: Duration,
}

fn probe_body() -> ProxyBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Worker `w`'s share of `total` slots: an even split, the remainder to the first
/// workers, and never less than one.
fn worker_share(total: usize, workers: usize, w: usize) -> usize {
    (total / workers + usize::from(w < total % workers)).max(1)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[derive(Debug)]
struct ConnectorInner {
    address: String,
    source: Option<std::net::IpAddr>,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    h2: bool,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

/// Opens connections to one provider, never more than its `max_connections`.
#[derive(Clone, Debug)]
pub struct Connector(Arc<ConnectorInner>);

impl tower_service::Service<http::Uri> for Connector {
    type Response = UpstreamIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            // Waiting for a free slot is not connecting; the response-header timeout
            // bounds the whole wait.
            let permit = inner
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| io::Error::other("provider pool closed"))?;
            Connector(inner).open(permit).await
        })
    }
}

impl Connector {
    /// This worker's connection slots for the provider.
    fn permits(&self) -> &Arc<Semaphore> {
        &self.0.permits
    }

    /// Opens a connection in the slot `permit` holds (TCP, then TLS when configured),
    /// within the connect timeout.
    async fn open(&self, permit: OwnedSemaphorePermit) -> io::Result<UpstreamIo> {
        let inner = &self.0;
        let stream = tokio::time::timeout(inner.timeout, connect(inner))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        Ok(UpstreamIo {
            io: TokioIo::new(stream),
            h2: inner.h2,
            _permit: permit,
        })
    }
}

async fn connect(inner: &ConnectorInner) -> io::Result<Stream> {
    let tcp = match inner.source {
        None => TcpStream::connect(inner.address.as_str()).await?,
        Some(source) => connect_from(source, &inner.address).await?,
    };
    tcp.set_nodelay(true)?;
    match &inner.tls {
        None => Ok(Stream::Plain(tcp)),
        Some((config, name)) => {
            let tls = TlsConnector::from(config.clone()).connect(name.clone(), tcp).await?;
            if inner.h2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(io::Error::other("provider did not negotiate h2 over ALPN"));
            }
            Ok(Stream::Tls(Box::new(tls)))
        }
    }
}

/// Connects to `address` from the local address `source`, trying each resolved
/// address of the same family.
async fn connect_from(source: std::net::IpAddr, address: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(address).await? {
        if addr.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{address} has no address of the family of upstream.source_address {source}"),
        )
    }))
}

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection to a provider; holds one of the provider's connection slots until
/// it closes.
#[derive(Debug)]
pub struct UpstreamIo {
    io: TokioIo<Stream>,
    h2: bool,
    _permit: OwnedSemaphorePermit,
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

// The HTTP/1.1 codec (`h1`) reads and writes through tokio's traits; hyper's HTTP/2
// client through hyper's.
impl AsyncRead for UpstreamIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io.inner_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.io.inner_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io.inner_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.inner().is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io.inner_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io.inner_mut()).poll_shutdown(cx)
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::worker_share;

    #[test]
    fn connection_cap_is_split_across_workers() {
        assert_eq!((0..2).map(|w| worker_share(256, 2, w)).sum::<usize>(), 256);
        assert_eq!((0..4).map(|w| worker_share(6, 4, w)).collect::<Vec<_>>(), [2, 2, 1, 1]);
        assert_eq!((0..4).map(|w| worker_share(2, 4, w)).collect::<Vec<_>>(), [1, 1, 1, 1]);
    }
}
