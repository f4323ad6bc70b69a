//! The telemetry listener: `/metrics` (Prometheus text), `/healthz` and `/readyz`
//! on plain HTTP, for scrapers and orchestrators; and the names of what the control
//! plane records.
//!
//! Keep it on loopback: it has no authentication. It only reads, and no label takes
//! a value an edge or an API caller chose (edge ids, paths); the fleet's edges are
//! counted, not named.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics::{counter, gauge};
use tokio::net::TcpListener;

use crate::push::Hub;

/// API requests, by route template, method and status class.
pub const API_REQUESTS: &str = "meridian_cp_api_requests_total";
/// API request handling time, by route template.
pub const API_DURATION: &str = "meridian_cp_api_request_duration_seconds";
/// Edges' answers to pushed versions, by result (`ack`, `nack`).
pub const EDGE_ANSWERS: &str = "meridian_cp_edge_answers_total";
/// From writing a version to an edge to its answer, by result and frame kind.
pub const PUSH_DURATION: &str = "meridian_cp_push_duration_seconds";
/// Versions an edge did not answer in time (the session is dropped).
pub const PUSH_TIMEOUTS: &str = "meridian_cp_push_timeouts_total";

/// The telemetry listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for telemetry on {addr}: {source}")]
pub struct TelemetryError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// A running telemetry listener; dropping it stops serving.
#[derive(Debug)]
pub struct TelemetryHandle {
    /// The bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TelemetryHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the recorder (if the binary has not) and serves it on `addr`.
pub async fn start(addr: SocketAddr, hub: Arc<Hub>) -> Result<TelemetryHandle, TelemetryError> {
    describe();
    gauge!("meridian_cp_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| TelemetryError { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let hub = hub.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let resp = answer(req.method(), req.uri().path(), &hub);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    Ok(TelemetryHandle { addr, task })
}

fn answer(method: &Method, path: &str, hub: &Hub) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, Bytes::from_static(b"ok\n"), "text/plain"),
        // Serving at all means the store opened and the API and push listen.
        (&Method::GET | &Method::HEAD, "/readyz") => (StatusCode::OK, Bytes::from_static(b"ready\n"), "text/plain"),
        (&Method::GET | &Method::HEAD, "/metrics") => {
            refresh(hub);
            (
                StatusCode::OK,
                Bytes::from(meridian_telemetry::render()),
                meridian_telemetry::CONTENT_TYPE,
            )
        }
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n"), "text/plain"),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}

fn describe() {
    use metrics::{describe_counter as c, describe_gauge as g, describe_histogram as h};
    meridian_telemetry::recorder();
    c!(
        API_REQUESTS,
        "Admin API requests, by route template, method and status class."
    );
    h!(
        API_DURATION,
        metrics::Unit::Seconds,
        "Admin API request handling time, by route template."
    );
    c!(EDGE_ANSWERS, "Edges' answers to pushed versions: ack or nack.");
    h!(
        PUSH_DURATION,
        metrics::Unit::Seconds,
        "From writing a version to an edge to its answer."
    );
    c!(PUSH_TIMEOUTS, "Pushed versions an edge did not answer in time.");
    g!(
        "meridian_cp_config_version",
        "Fleet version the control plane publishes."
    );
    g!("meridian_cp_edges_known", "Edges seen since start.");
    g!(
        "meridian_cp_edges_connected",
        "Edges with an open push session, by transport."
    );
    g!(
        "meridian_cp_edges_behind",
        "Connected edges not running the published version."
    );
    g!(
        "meridian_cp_edges_refusing",
        "Edges whose last answer refused a version newer than the one they run."
    );
    g!(
        "meridian_cp_fleet_down_providers",
        "Providers down for the fleet by edge quorum."
    );
    g!("meridian_cp_build_info", "Build identity; always 1.");
}

/// Sets the gauges that describe the fleet's state, just before a scrape.
fn refresh(hub: &Hub) {
    let published = hub.subscribe().borrow().version;
    let edges = hub.list();
    let connected = |t: &str| edges.iter().filter(|e| e.connected && e.transport == t).count();
    gauge!("meridian_cp_config_version").set(published as f64);
    gauge!("meridian_cp_edges_known").set(edges.len() as f64);
    gauge!("meridian_cp_edges_connected", "transport" => "quic").set(connected("quic") as f64);
    gauge!("meridian_cp_edges_connected", "transport" => "h2").set(connected("h2") as f64);
    let behind = edges
        .iter()
        .filter(|e| e.connected && published > 0 && e.version != Some(published))
        .count();
    gauge!("meridian_cp_edges_behind").set(behind as f64);
    gauge!("meridian_cp_edges_refusing").set(edges.iter().filter(|e| e.nack.is_some()).count() as f64);
    gauge!("meridian_cp_fleet_down_providers").set(hub.fleet_down().len() as f64);
}

/// The route template of an API path, so that ids never become label values.
pub fn route_template(method: &Method, path: &str) -> (&'static str, &'static str) {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let route = match segments.as_slice() {
        ["v1", "fleet"] => "/v1/fleet",
        ["v1", "providers"] => "/v1/providers",
        ["v1", "providers", _] => "/v1/providers/{id}",
        ["v1", "providers", _, "drain"] => "/v1/providers/{id}/drain",
        ["v1", "providers", _, "undrain"] => "/v1/providers/{id}/undrain",
        ["v1", "policy"] => "/v1/policy",
        ["v1", "groups"] => "/v1/groups",
        ["v1", "groups", _] => "/v1/groups/{name}",
        ["v1", "jurisdictions"] => "/v1/jurisdictions",
        ["v1", "tenants"] => "/v1/tenants",
        ["v1", "tenants", _] => "/v1/tenants/{id}",
        ["v1", "edges"] => "/v1/edges",
        ["v1", "edges", _] => "/v1/edges/{id}",
        ["v1", "openapi.json"] => "/v1/openapi.json",
        ["v1", "dry-run"] => "/v1/dry-run",
        _ => "other",
    };
    let method = match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    (route, method)
}

/// Counts one API request.
pub fn api_request(route: (&'static str, &'static str), status: StatusCode, seconds: f64) {
    let class = meridian_telemetry::status_class(status.as_u16());
    counter!(API_REQUESTS, "route" => route.0, "method" => route.1, "status" => class).increment(1);
    metrics::histogram!(API_DURATION, "route" => route.0).record(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_reach_labels() {
        assert_eq!(
            route_template(&Method::POST, "/v1/providers/eu-1/drain"),
            ("/v1/providers/{id}/drain", "POST")
        );
        assert_eq!(
            route_template(&Method::GET, "/v1/edges/edge-7.x/"),
            ("/v1/edges/{id}", "GET")
        );
        assert_eq!(route_template(&Method::PATCH, "/secret/token"), ("other", "other"));
    }
}
