//! The HTTP/2 fallback for networks that block UDP: the edge `POST`s to
//! [`H2_PATH`](meridian_proto::wire::H2_PATH) and the two bodies carry the same
//! frames as the QUIC stream. HTTP/2 pings detect a dead peer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyDataStream, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meridian_proto::wire::H2_PATH;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::io::{ReaderStream, StreamReader};

use super::PushError;
use super::hub::Hub;
use super::session::{self, Peer};

/// Bytes buffered between a session and its response body.
const PIPE: usize = 64 << 10;

type Body = BoxBody<Bytes, std::io::Error>;

pub(super) async fn start(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    hub: Arc<Hub>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), PushError> {
    let bind = |source| PushError::Bind {
        what: "h2",
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer_addr)) = listener.accept().await else {
                continue;
            };
            let (hub, acceptor) = (hub.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let Some(cert) = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned())
                else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (hub, cert) = (hub.clone(), cert.clone());
                    async move { Ok::<_, Infallible>(subscribe(req, hub, peer_addr, cert)) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Some(Duration::from_secs(2)))
                    .keep_alive_timeout(Duration::from_secs(4))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((bound, task))
}

fn subscribe(req: Request<Incoming>, hub: Arc<Hub>, addr: SocketAddr, cert: CertificateDer<'static>) -> Response<Body> {
    if req.method() != Method::POST || req.uri().path() != H2_PATH {
        let mut r = Response::new(
            Full::new(Bytes::from_static(b"not found\n"))
                .map_err(|e| match e {})
                .boxed(),
        );
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let incoming = StreamReader::new(BodyDataStream::new(req.into_body()).map(|r| r.map_err(std::io::Error::other)));
    let (to_edge, body) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        let peer = Peer {
            addr,
            transport: "h2",
            cert,
        };
        if let Err(e) = session::serve(hub, incoming, to_edge, peer).await {
            tracing::debug!(%addr, error = %e, "subscription ended");
        }
    });
    let frames = ReaderStream::new(body).map(|r| r.map(Frame::data));
    Response::new(BodyExt::boxed(StreamBody::new(frames)))
}
