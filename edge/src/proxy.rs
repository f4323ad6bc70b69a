//! The request path, top to bottom: refuse what must not be forwarded, route, clean
//! the head, forward, stream the answer back.
//!
//! Protocol-agnostic: it takes any `http::Request` whose body streams `Bytes`, so
//! HTTP/1.1, HTTP/2 and (later) HTTP/3 share it. Per request it loads one config
//! snapshot and takes no lock. It must never buffer a body, forward a request the
//! framing guard refused, or send to a provider routing did not choose.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use http_body::Body;
use http_body_util::BodyExt;
use meridian_proto::Protocol;

use crate::body::{BoxError, ProxyBody, ResponseBody, TimedBody};
use crate::config::{Forwarding, canonical_ip};
use crate::conn::ConnState;
use crate::headers::{self, Hop, ViaValues};
use crate::respond::Refusal;
use crate::route::Router;
use crate::upstream;

/// Everything a request needs from the configuration, swapped as one unit.
#[derive(Debug)]
pub struct Snapshot {
    /// Host to provider.
    pub router: Router,
    /// Trusted hops and `Via` name.
    pub forwarding: Forwarding,
    /// `Via` elements, built once.
    pub via: ViaValues,
    /// Longest request target accepted.
    pub max_uri_bytes: usize,
    /// Idle timeout for bodies in both directions.
    pub body_idle: Duration,
}

/// The connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// Shared connection bookkeeping.
    pub state: Arc<ConnState>,
    /// Whether the framing guard watches this connection (HTTP/1.x).
    pub guarded: bool,
}

/// The proxy: a current snapshot and the logic that applies it.
#[derive(Debug)]
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
}

impl Proxy {
    /// A proxy serving `snapshot`.
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Arc::new(Proxy {
            snapshot: ArcSwap::from_pointee(snapshot),
        })
    }

    /// Replaces the snapshot; requests already routed finish on the old one.
    pub fn swap(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Handles one request. Never fails: every failure becomes an answer.
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        conn: &ConnInfo,
    ) -> Result<Response<ResponseBody>, Infallible>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let guard = conn.state.begin_request();
        // A refused request must not be forwarded, so check framing before anything.
        if conn.guarded && matches!(req.version(), Version::HTTP_10 | Version::HTTP_11) {
            if let Err(e) = conn.state.ledger.next() {
                tracing::debug!(peer = %conn.peer, reason = e.reason(), "refused ambiguous framing");
                return Ok(Refusal::Framing(e).into_response(Some(guard)));
            }
        }
        // One snapshot per request, held as an Arc: the request may wait on a
        // provider for a while, longer than an arc-swap guard should be held.
        let snap = self.snapshot.load_full();
        match forward(&snap, req, conn).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let body = ResponseBody::Upstream {
                    body,
                    guard: Some(guard),
                };
                Ok(Response::from_parts(parts, body))
            }
            Err(refusal) => {
                tracing::debug!(peer = %conn.peer, error = %refusal, "answered locally");
                Ok(refusal.into_response(Some(guard)))
            }
        }
    }
}

type Forwarded = Response<TimedBody<crate::upstream::UpstreamBody>>;

async fn forward<B>(snap: &Snapshot, req: Request<B>, conn: &ConnInfo) -> Result<Forwarded, Refusal>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let target_len = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    if target_len > snap.max_uri_bytes {
        return Err(Refusal::UriTooLong);
    }
    if req.method() == Method::CONNECT {
        return Err(Refusal::MethodNotAllowed);
    }

    let (mut parts, body) = req.into_parts();
    let client_version = parts.version;
    // HTTP/2 and HTTP/3 carry the host in the URI; HTTP/1.1 in the Host header.
    let client_host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let host_name = client_host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(host_without_port);
    let target = snap
        .router
        .route(host_name.as_deref())
        .map_err(Refusal::NoRoute)?;
    let pool = target.pool();
    let endpoint = &pool.spec().endpoint;

    let wants_trailers = headers::strip_hop_by_hop(&mut parts.headers);
    // The edge runs the 100-continue exchange with the client itself: it asks for
    // the body only once it is sending to a provider.
    parts.headers.remove(header::EXPECT);
    let peer = canonical_ip(conn.peer.ip());
    let hop = Hop {
        peer,
        trusted: snap.forwarding.is_trusted(peer),
        proto: conn.proto,
    };
    headers::set_forwarding(&mut parts.headers, hop);
    headers::add_via(&mut parts.headers, client_version, &snap.via);
    if wants_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }

    let presented = match &endpoint.host {
        Some(h) => HeaderValue::from_str(h).ok(),
        None => client_host,
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match pool.spec().protocol {
        Protocol::Http1 => {
            // Origin-form request target, the host in `Host` (RFC 9112 section 3.2).
            parts.version = Version::HTTP_11;
            let host = presented.unwrap_or_else(|| header_value(pool.authority()));
            parts.headers.insert(header::HOST, host);
            parts.uri = Uri::from(path);
        }
        Protocol::Http2 => {
            // The host travels as `:authority`, taken from the URI.
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
            let authority = presented
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| pool.authority().clone());
            parts.uri = Uri::builder()
                .scheme(pool.scheme().clone())
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|e| Refusal::Upstream(upstream::UpstreamError::Exchange(e.to_string())))?;
        }
    }

    let body: ProxyBody = TimedBody::new(body, snap.body_idle)
        .map_err(|e| -> BoxError { Box::new(e) })
        .boxed_unsync();
    let resp = upstream::send(&target, Request::from_parts(parts, body))
        .await
        .map_err(Refusal::Upstream)?;

    let (mut parts, body) = resp.into_parts();
    let upstream_version = parts.version;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_via(&mut parts.headers, upstream_version, &snap.via);
    parts.version = client_version;
    Ok(Response::from_parts(
        parts,
        TimedBody::new(body, snap.body_idle),
    ))
}

/// The host part of a `Host` value, lower-cased; borrowed when it already is.
fn host_without_port(h: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        h.rsplit_once(':').map_or(h, |(host, _)| host)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn header_value(a: &Authority) -> HeaderValue {
    HeaderValue::from_str(a.as_str()).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn host_is_lowercased_without_port() {
        assert_eq!(host_without_port("Eu.Demo.Local:8443"), "eu.demo.local");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port("plain"), "plain");
    }
}
