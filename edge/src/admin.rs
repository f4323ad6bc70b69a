//! The admin listener: liveness, readiness, fleet status and Prometheus metrics for
//! orchestrators, load balancers, operators and scrapers.
//!
//! Keep it on loopback. It answers only fixed paths and only reads: whether the edge
//! is draining, where its fleet came from, what was recorded.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::Core;

/// Serves `/healthz` (alive), `/readyz` (serving: a fleet is loaded, every worker's
/// listeners are up and the edge is not draining), `/statusz` (JSON: fleet source and
/// version, control-plane subscription) and `/metrics` (Prometheus text).
pub async fn serve(socket: TcpListener, drain: watch::Receiver<bool>, core: Arc<Core>) {
    loop {
        let Ok((tcp, _)) = socket.accept().await else {
            continue;
        };
        let (drain, core) = (drain.clone(), core.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let draining = *drain.borrow();
                let core = core.clone();
                async move { Ok::<_, Infallible>(answer(req.method(), req.uri().path(), draining, &core)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

fn answer(method: &Method, path: &str, draining: bool, core: &Core) -> Response<Full<Bytes>> {
    let (status, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, Bytes::from_static(b"ok\n")),
        (&Method::GET | &Method::HEAD, "/readyz") if draining => {
            (StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"draining\n"))
        }
        (&Method::GET | &Method::HEAD, "/readyz") if !core.has_fleet() => {
            (StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"no fleet yet\n"))
        }
        (&Method::GET | &Method::HEAD, "/readyz") if !core.listening() => (
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"listeners starting\n"),
        ),
        (&Method::GET | &Method::HEAD, "/readyz") => (StatusCode::OK, Bytes::from_static(b"ready\n")),
        (&Method::GET | &Method::HEAD, "/statusz") => {
            let mut body = serde_json::to_vec(&core.status()).unwrap_or_default();
            body.push(b'\n');
            (StatusCode::OK, Bytes::from(body))
        }
        (&Method::GET | &Method::HEAD, "/metrics") => {
            core.refresh_metrics(draining);
            let mut resp = Response::new(Full::new(Bytes::from(meridian_telemetry::render())));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(meridian_telemetry::CONTENT_TYPE),
            );
            return resp;
        }
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp
}
