//! The admin listener: liveness and readiness for orchestrators and load balancers.
//!
//! Keep it on loopback. It answers only fixed paths and never touches the request
//! path's state beyond reading whether the edge is draining.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `/healthz` (alive) and `/readyz` (serving; 503 once draining).
pub async fn serve(socket: TcpListener, drain: watch::Receiver<bool>) {
    loop {
        let Ok((tcp, _)) = socket.accept().await else {
            continue;
        };
        let drain = drain.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let draining = *drain.borrow();
                async move { Ok::<_, Infallible>(answer(req.method(), req.uri().path(), draining)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

fn answer(method: &Method, path: &str, draining: bool) -> Response<Full<Bytes>> {
    let (status, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") if draining => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}
