//! The request path, top to bottom: refuse what must not be forwarded, resolve the
//! origin, route (policy, then selector), clean the head, forward (failing over or
//! hedging only inside the allowed set), stream the answer back.
//!
//! Protocol-agnostic: it takes any `http::Request` whose body streams `Bytes`, so
//! HTTP/1.1, HTTP/2 and HTTP/3 share it. HTTP/1.1 fields arrive as received and,
//! from an untrusted peer with nothing in them to read, drop or merge, pass to an
//! HTTP/1.1 provider that way (and a provider's back to an HTTP/1.x client); all
//! else goes through a header map. Per request it loads one config snapshot and
//! takes no lock. It must never buffer a body, forward a request the
//! HTTP/1.1 server refused for its framing, or send to a provider routing did not choose.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use http_body::Body;
use http_body_util::BodyExt;
use meridian_proto::Protocol;

use crate::body::{BoxError, CountedBody, ProxyBody, ResponseBody, TimedBody};
use crate::codec::{self, RawFields, parse_length};
use crate::config::{Forwarding, HedgingConfig, canonical_ip};
use crate::conn::ConnState;
use crate::headers::{self, Hop, Passed, Trail, ViaValues};
use crate::origin::{Origin, RequestFacts};
use crate::record;
use crate::respond::Refusal;
use crate::route::{RouteError, Routing, Target};
use crate::selector::{LatencyTracker, SizeTable};
use crate::upstream::{self, UpstreamBody, UpstreamError};

/// Everything a request needs from the configuration, swapped as one unit.
#[derive(Debug)]
pub struct Snapshot {
    /// Origin, policy and providers.
    pub routing: Routing,
    /// Whether to write an access-log line per request.
    pub access_log: bool,
    /// Hedged GETs.
    pub hedging: HedgingConfig,
    /// Trusted hops and `Via` name.
    pub forwarding: Forwarding,
    /// `Via` elements, built once.
    pub via: ViaValues,
    /// Longest request target accepted.
    pub max_uri_bytes: usize,
    /// Idle timeout for bodies in both directions.
    pub body_idle: Duration,
}

/// Marks a request read from TLS early data (0-RTT), before the handshake completed.
#[derive(Debug, Clone, Copy)]
pub struct EarlyData;

/// The connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// Shared connection bookkeeping.
    pub state: Arc<ConnState>,
    /// The forwarding elements for this client.
    pub trail: Trail,
}

impl ConnInfo {
    /// A connection from `peer` over `proto` (`http` or `https`).
    pub fn new(peer: SocketAddr, proto: &'static str, state: Arc<ConnState>) -> Self {
        ConnInfo {
            peer,
            proto,
            state,
            trail: Trail::new(canonical_ip(peer.ip()), proto),
        }
    }
}

/// The proxy: a current snapshot and the logic that applies it.
#[derive(Debug)]
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    /// What traffic taught this edge; kept across snapshots.
    learned: Learned,
}

/// Knowledge gathered from traffic rather than configured.
#[derive(Debug, Default)]
struct Learned {
    /// Response sizes per route.
    sizes: SizeTable,
    /// Times to first byte, for hedging.
    latency: LatencyTracker,
}

impl Proxy {
    /// A proxy serving `snapshot`.
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Arc::new(Proxy {
            snapshot: ArcSwap::from_pointee(snapshot),
            learned: Learned::default(),
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
    /// `raw` holds an HTTP/1.1 request's fields as received (its header map is
    /// then empty); other protocols give `None`.
    // Not an `async fn`: one copies its by-value arguments (the request is about
    // 300 bytes) into locals of its future when first polled, on top of the move
    // into the future; an `async move` block uses them where they are. Measured on
    // this request path with `-Zprint-type-sizes` and callgrind (see
    // bench/results/profile-1k-2026-11-29.md); the same holds for `forward`,
    // `upstream::send`, `InlinePool::send` and `h1::exchange`.
    #[allow(clippy::manual_async_fn)]
    pub fn handle<B>(
        &self,
        req: Request<B>,
        raw: Option<RawFields>,
        conn: &ConnInfo,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        async move {
            let started = Instant::now();
            let guard = conn.state.begin_request();
            // One snapshot per request, held as an Arc: the request may wait on a
            // provider for a while, longer than an arc-swap guard should be held.
            let snap = self.snapshot.load_full();
            let method = req.method().clone();
            let version = req.version();
            match forward(&snap, &self.learned, req, raw, conn, started).await {
                Ok(Forwarded {
                    response,
                    target,
                    explain,
                    head_at,
                    received,
                }) => {
                    let (mut parts, body) = response.into_parts();
                    if explain {
                        if let Some(v) = route_header(&target) {
                            parts.headers.insert(ROUTE.clone(), v);
                        }
                    }
                    if snap.access_log {
                        let d = target.decision();
                        tracing::info!(
                            target: "meridian::access",
                            method = %method,
                            protocol = protocol_label(version),
                            status = parts.status.as_u16(),
                            origin = d.origin.label(),
                            origin_source = d.origin.source_label(),
                            candidates = d.candidates,
                            provider = %target.id(),
                            jurisdiction = %target.jurisdiction(),
                            reason = d.reason.as_str(),
                        );
                    }
                    record::request(
                        Some(target.metrics()),
                        Some(&target.decision().origin),
                        &method,
                        parts.status,
                    );
                    let body = ResponseBody::upstream(body, guard, target, (started, head_at), received);
                    Ok(Response::from_parts(parts, body))
                }
                Err(Refused { refusal, origin }) => {
                    tracing::debug!(peer = %conn.peer, error = %refusal, "answered locally");
                    if let Refusal::NoRoute(e) = &refusal {
                        record::fail_closed(e);
                    }
                    let resp = refusal.into_response(Some(guard));
                    record::request(None, origin.as_ref(), &method, resp.status());
                    if snap.access_log {
                        tracing::info!(
                            target: "meridian::access",
                            method = %method,
                            protocol = protocol_label(version),
                            status = resp.status().as_u16(),
                            origin = origin.as_ref().map_or("unknown", |o| o.label()),
                            origin_source = origin.as_ref().map_or("none", |o| o.source_label()),
                            provider = "none",
                            reason = %resp.status().canonical_reason().unwrap_or(""),
                        );
                    }
                    Ok(resp)
                }
            }
        }
    }
}

/// Request header asking for the routing decision in the response (trusted peers).
static EXPLAIN: HeaderName = HeaderName::from_static("x-meridian-explain");
/// Response header carrying the routing decision.
static ROUTE: HeaderName = HeaderName::from_static("x-meridian-route");
/// Request header giving the expected response size, for selection.
static SIZE_HINT: HeaderName = HeaderName::from_static("x-meridian-size-hint");

/// A forwarded response, with the target that served it.
pub(crate) struct Forwarded {
    pub(crate) response: Response<TimedBody<UpstreamBody>>,
    pub(crate) target: Target,
    pub(crate) explain: bool,
    /// When the response head arrived.
    pub(crate) head_at: Instant,
    /// The request body's bytes forwarded so far, when it has a body.
    pub(crate) received: Option<Arc<AtomicU64>>,
}

/// A refusal, with the origin when it was known by then.
pub(crate) struct Refused {
    pub(crate) refusal: Refusal,
    pub(crate) origin: Option<Origin>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        let origin = match &refusal {
            Refusal::NoRoute(RouteError::Denied { origin } | RouteError::NoCompliant { origin, .. }) => Some(*origin),
            _ => None,
        };
        Refused { refusal, origin }
    }
}

// Not an `async fn`, so the request is not copied again when first polled (see
// `Proxy::handle`).
#[allow(clippy::manual_async_fn)]
fn forward<B>(
    snap: &Snapshot,
    learned: &Learned,
    req: Request<B>,
    raw: Option<RawFields>,
    conn: &ConnInfo,
    started: Instant,
) -> impl Future<Output = Result<Forwarded, Refused>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async move {
        let target_len = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
        if target_len > snap.max_uri_bytes {
            return Err(Refusal::UriTooLong.into());
        }
        if req.method() == Method::CONNECT {
            return Err(Refusal::MethodNotAllowed.into());
        }
        // Early data can be replayed by an attacker: only safe methods are served from it.
        if req.extensions().get::<EarlyData>().is_some()
            && !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        {
            return Err(Refusal::TooEarly.into());
        }

        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        let peer = conn.trail.peer;
        let trusted = snap.forwarding.is_trusted(peer);
        let claim = snap.routing.origin().header();
        // HTTP/1.1 fields come as received: they pass so when nothing in them is for
        // this edge to read, drop or merge, and a trusted peer's never do (its claims
        // and trail are read); otherwise they go into the map like any other request's.
        let (seen, passing) = match raw {
            Some(fields) => {
                let seen = Seen::of(fields.iter().map(|(name, _)| name), claim);
                if trusted || seen.edge_only || seen.hop_by_hop || seen.trail {
                    let map = fields.to_map(6).map_err(|e| Refusal::BadRequest(e.0))?;
                    codec::recycle(std::mem::replace(&mut parts.headers, map));
                    (seen, None)
                } else {
                    (seen, Some(fields))
                }
            }
            None => (
                Seen::of(parts.headers.keys().map(|k| k.as_str().as_bytes()), claim),
                None,
            ),
        };
        // HTTP/2 and HTTP/3 carry the host in the URI; HTTP/1.1 in the Host header.
        let client_host = match (parts.uri.authority(), &passing) {
            (Some(a), _) => HeaderValue::from_str(a.as_str()).ok(),
            (None, Some(fields)) => fields.value("host"),
            (None, None) => parts.headers.get(header::HOST).cloned(),
        };
        let host_name = client_host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(host_without_port);
        // Passing fields are from an untrusted peer, whose headers the resolver never
        // reads: the (then empty) map is all it needs.
        let origin = snap.routing.resolve(RequestFacts {
            host: host_name.as_deref(),
            path: parts.uri.path(),
            headers: &parts.headers,
            peer,
            trusted,
        });
        let explain = trusted && seen.edge_only && parts.headers.get(&EXPLAIN).is_some_and(|v| v.as_bytes() == b"1");
        // GETs rarely announce their size: learn it per route (host and first segment).
        let size_key =
            (parts.method == Method::GET).then(|| SizeTable::key(host_name.as_deref().unwrap_or(""), parts.uri.path()));
        let announced = match (&passing, seen.size) {
            (_, false) => 0,
            (Some(fields), true) => fields.get("content-length").and_then(parse_length).unwrap_or(0),
            (None, true) => expected_bytes(&parts.headers),
        };
        let bytes = match announced {
            0 => size_key.map_or(0, |k| learned.sizes.expected_at(k)),
            announced => announced,
        };
        let passed = match passing {
            Some(fields) => Some(Passed {
                fields,
                trail: &conn.trail,
                via: snap.via.for_version(client_version),
            }),
            None => {
                if seen.edge_only {
                    // Residency claims, explain requests and size hints are for this
                    // edge only, trusted or not. The edge runs the 100-continue exchange
                    // with the client itself: it asks for the body only once it is
                    // sending to a provider.
                    for name in [claim, &EXPLAIN, &SIZE_HINT, &header::EXPECT] {
                        parts.headers.remove(name);
                    }
                }
                let wants_trailers = seen.hop_by_hop && headers::strip_hop_by_hop(&mut parts.headers);
                headers::set_forwarding(
                    &mut parts.headers,
                    Hop {
                        trail: &conn.trail,
                        trusted,
                    },
                );
                headers::add_via(&mut parts.headers, client_version, &snap.via);
                if wants_trailers {
                    parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
                }
                None
            }
        };

        let received = (!body.is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
        let body = TimedBody::new(body, snap.body_idle).map_err(|e| -> BoxError { Box::new(e) });
        let body: ProxyBody = match &received {
            Some(count) => CountedBody::new(body, count.clone()).boxed_unsync(),
            None => body.boxed_unsync(),
        };
        let mut req = Request::from_parts(parts, body);
        let mut exclude = None;
        let mut first_failure = None;
        loop {
            // One clock read serves the decision and the send time; the first decision
            // uses the request's arrival, microseconds earlier.
            let decided = if exclude.is_none() { started } else { Instant::now() };
            let target = match snap.routing.route(origin, bytes, exclude, decided) {
                Ok(t) => t,
                // With no other allowed provider to fail over to, report the failure.
                Err(e) => {
                    let refusal = match first_failure.take() {
                        Some(failure) => Refusal::Upstream(failure),
                        None => Refusal::NoRoute(e),
                    };
                    return Err(refusal.into());
                }
            };
            aim(&mut req, &target, client_host.clone())?;
            let hedge =
                snap.hedging.enabled && exclude.is_none() && req.method() == Method::GET && req.body().is_end_stream();
            let (target, sent, result) = if hedge {
                let after = hedge_delay(&snap.hedging, &learned.latency);
                // Boxed: two sends in flight make a large future that unhedged requests
                // should not carry.
                Box::pin(send_hedged(
                    snap,
                    origin,
                    bytes,
                    target,
                    (req, passed.as_ref()),
                    after,
                    client_host.clone(),
                ))
                .await
            } else {
                let result = upstream::send(&target, req, passed.as_ref(), decided).await;
                (target, decided, result)
            };
            match result {
                Ok(resp) => {
                    let now = Instant::now();
                    let ttfb = now.saturating_duration_since(sent);
                    target
                        .stats()
                        .observe_answer(ttfb, resp.status().is_server_error(), now);
                    target.metrics().ttfb.record(ttfb);
                    if snap.hedging.enabled {
                        learned.latency.record(ttfb);
                    }
                    let (mut parts, mut body) = resp.into_parts();
                    // An HTTP/1.1 provider's fields may have been left as received (none
                    // of them hop-by-hop, no `Via`): an HTTP/1.x client gets them so,
                    // any other needs them in the map.
                    let raw = if matches!(client_version, Version::HTTP_10 | Version::HTTP_11) {
                        body.raw().is_some()
                    } else {
                        if let Some(fields) = body.take_raw() {
                            let map = fields.to_map(2).map_err(|e| {
                                Refusal::Upstream(UpstreamError::Exchange(format!("invalid response field: {}", e.0)))
                            })?;
                            codec::recycle(std::mem::replace(&mut parts.headers, map));
                        }
                        false
                    };
                    // The body's framing knows its length when the response announced one.
                    if let (Some(key), true) = (size_key, parts.status.is_success()) {
                        if let Some(n) = body.size_hint().exact() {
                            learned.sizes.learn_at(key, n);
                        }
                    }
                    let upstream_version = parts.version;
                    if !raw {
                        headers::strip_hop_by_hop(&mut parts.headers);
                    }
                    // Into the (then empty) map when the fields stay raw: they carry
                    // no `Via` to merge with.
                    headers::add_via(&mut parts.headers, upstream_version, &snap.via);
                    parts.version = client_version;
                    let response = Response::from_parts(parts, TimedBody::new(body, snap.body_idle));
                    return Ok(Forwarded {
                        response,
                        target,
                        explain,
                        head_at: now,
                        received,
                    });
                }
                Err(failure) => {
                    target.stats().observe_failure(Instant::now());
                    // Nothing reached the provider: safe to try the next-best allowed one,
                    // once, for any method. `route` keeps the retry inside the allowed set.
                    match failure.unsent {
                        Some(back) if exclude.is_none() => {
                            exclude = Some(target.index());
                            first_failure = Some(failure.error);
                            req = back;
                        }
                        _ => return Err(Refusal::Upstream(failure.error).into()),
                    }
                }
            }
        }
    }
}

/// What a request carries of the fields this edge reads or takes out, found in one
/// pass over the names: most requests carry none of them, and the pass costs less
/// than the lookups (nearly all of them misses) it spares.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// The residency claim, `x-meridian-explain`, `x-meridian-size-hint` or `Expect`.
    edge_only: bool,
    /// `Content-Length` or the size hint.
    size: bool,
    /// A hop-by-hop field.
    hop_by_hop: bool,
    /// `Via` or a forwarding field, which this edge merges with or replaces.
    trail: bool,
}

impl Seen {
    /// Judges field names in any case: as received, or a map's.
    fn of<'a>(names: impl Iterator<Item = &'a [u8]>, claim: &HeaderName) -> Self {
        let is = |name: &[u8], known: &HeaderName| known.as_str().as_bytes().eq_ignore_ascii_case(name);
        let mut seen = Seen::default();
        for name in names {
            if is(name, &header::CONTENT_LENGTH) {
                seen.size = true;
            } else if is(name, &SIZE_HINT) {
                seen.size = true;
                seen.edge_only = true;
            } else if is(name, claim) || is(name, &EXPLAIN) || is(name, &header::EXPECT) {
                seen.edge_only = true;
            } else if headers::is_hop_by_hop_name(name) {
                seen.hop_by_hop = true;
            } else if headers::is_trail(name) {
                seen.trail = true;
            }
        }
        seen
    }
}

/// How long to wait for the first provider before hedging: the configured quantile
/// of recent times to first byte, within the configured bounds.
fn hedge_delay(cfg: &HedgingConfig, latency: &LatencyTracker) -> Duration {
    latency
        .quantile(cfg.percentile, 100)
        .unwrap_or(cfg.max_delay.0)
        .clamp(cfg.min_delay.0, cfg.max_delay.0.max(cfg.min_delay.0))
}

/// Sends a body-less GET to `first`; if no response head arrived `after` it, sends a
/// copy to the next-best provider the policy allows (never another) and takes the
/// first success. Returns the winner, when its request was sent, and the result.
async fn send_hedged(
    snap: &Snapshot,
    origin: Origin,
    bytes: u64,
    first: Target,
    (req, passed): (Request<ProxyBody>, Option<&Passed<'_>>),
    after: Duration,
    client_host: Option<HeaderValue>,
) -> (Target, Instant, Result<Response<UpstreamBody>, upstream::SendFailure>) {
    let mut copy = Request::new(empty_body());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    let first_sent = Instant::now();
    let primary = upstream::send(&first, req, passed, first_sent);
    tokio::pin!(primary);
    tokio::select! {
        r = &mut primary => return (first.clone_for_hedge(), first_sent, r),
        _ = tokio::time::sleep(after) => {}
    }
    // The first provider is slower than usual: that is a sample too.
    first.stats().observe_rtt(after, Instant::now());
    let second = match snap.routing.route(origin, bytes, Some(first.index()), Instant::now()) {
        Ok(t) if aim(&mut copy, &t, client_host).is_ok() => t,
        _ => {
            let r = primary.await;
            return (first.clone_for_hedge(), first_sent, r);
        }
    };
    let second_sent = Instant::now();
    let backup = upstream::send(&second, copy, passed, second_sent);
    tokio::pin!(backup);
    let (first_won, r) = tokio::select! {
        r = &mut primary => (true, r),
        r = &mut backup => (false, r),
    };
    let (first_won, r) = match (first_won, r) {
        (won, Ok(resp)) => (won, Ok(resp)),
        // One failed: the other may still answer.
        (true, Err(_)) => (false, backup.await),
        (false, Err(_)) => (true, primary.await),
    };
    if first_won {
        (first.clone_for_hedge(), first_sent, r)
    } else {
        (second.clone_for_hedge(), second_sent, r)
    }
}

fn empty_body() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Points a prepared request at `target`: request target form, `Host` or
/// `:authority`, HTTP version. Idempotent, so a retry can re-aim the same request.
fn aim(req: &mut Request<ProxyBody>, target: &Target, client_host: Option<HeaderValue>) -> Result<(), Refusal> {
    let pool = target.pool();
    let presented = match &pool.spec().endpoint.host {
        Some(h) => HeaderValue::from_str(h).ok(),
        None => client_host,
    };
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match pool.spec().protocol {
        Protocol::Http1 => {
            // Origin-form request target, the host in `Host` (RFC 9112 section 3.2).
            *req.version_mut() = Version::HTTP_11;
            let host = presented.unwrap_or_else(|| header_value(pool.authority()));
            req.headers_mut().insert(header::HOST, host);
            *req.uri_mut() = Uri::from(path);
        }
        Protocol::Http2 => {
            // The host travels as `:authority`, taken from the URI.
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(header::HOST);
            let authority = presented
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| pool.authority().clone());
            *req.uri_mut() = Uri::builder()
                .scheme(pool.scheme().clone())
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|e| Refusal::Upstream(UpstreamError::Exchange(e.to_string())))?;
        }
    }
    Ok(())
}

/// Bytes the request is expected to move: the upload's `Content-Length`, else the
/// client's size hint, else 0 (small: latency decides).
fn expected_bytes(h: &http::HeaderMap) -> u64 {
    let num = |n: &HeaderName| h.get(n).and_then(|v| parse_length(v.as_bytes()));
    num(&header::CONTENT_LENGTH).or_else(|| num(&SIZE_HINT)).unwrap_or(0)
}

/// `origin=CN; source=tenant; provider=cn-1; jurisdiction=CN; candidates=2; reason=...`
fn route_header(target: &Target) -> Option<HeaderValue> {
    let d = target.decision();
    let v = format!(
        "origin={}; source={}; provider={}; jurisdiction={}; candidates={}; reason={}",
        d.origin.label(),
        d.origin.source_label(),
        target.id(),
        target.jurisdiction(),
        d.candidates,
        d.reason.as_str()
    );
    HeaderValue::from_str(&v).ok()
}

/// `HTTP/1.1`, `HTTP/2`, `HTTP/3` (`Version`'s `Debug` says `HTTP/2.0`).
fn protocol_label(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
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
