//! Recording: the Prometheus metrics of each request, each probe and each provider.
//!
//! Per-request recording must stay cheap, so label sets are resolved once (per
//! provider when a snapshot is built, per worker thread for the request counter's
//! origin × method × status combinations) and then only atomics are touched. Labels
//! take only values from bounded sets the operator controls (provider ids,
//! jurisdiction codes, classes); never a path, a host or an address from a client.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Method, StatusCode};
use meridian_proto::{Jurisdiction, ProviderSpec, ProviderState};
use meridian_telemetry::{SecondsHistogram, seconds_histogram};
use metrics::{Counter, Gauge, Histogram, SharedString, counter, gauge, histogram};
use rustc_hash::FxHashMap;
use tokio::time::Instant;

use crate::origin::Origin;
use crate::route::{RouteError, RoutedProvider};

/// Requests answered, by provider, jurisdiction, origin, method class, status class.
pub const REQUESTS: &str = "meridian_edge_requests_total";
/// Whole request, from its head arriving to its response body's end.
pub const REQUEST_DURATION: &str = "meridian_edge_request_duration_seconds";
const REQUEST_DURATION_HELP: &str = "Whole requests, from the head's arrival to the end of the response body.";
/// From sending to a provider to its response head.
pub const UPSTREAM_TTFB: &str = "meridian_edge_upstream_ttfb_seconds";
const UPSTREAM_TTFB_HELP: &str = "From sending a request to a provider to its response head.";
/// Request body bytes forwarded to providers.
pub const RECEIVED_BYTES: &str = "meridian_edge_received_bytes_total";
/// Response body bytes sent to clients.
pub const SENT_BYTES: &str = "meridian_edge_sent_bytes_total";
/// Requests refused for residency, by origin and reason.
pub const FAIL_CLOSED: &str = "meridian_edge_fail_closed_total";
/// Round trips measured by RTT probes.
pub const PROBE_RTT: &str = "meridian_edge_probe_rtt_seconds";
/// Throughput measured by the last bandwidth probe.
pub const PROBE_BANDWIDTH: &str = "meridian_edge_probe_bandwidth_bytes_per_second";
/// Probes sent, by kind and result.
pub const PROBES: &str = "meridian_edge_probes_total";
/// Bytes downloaded by bandwidth probes (egress costs money).
pub const PROBE_BYTES: &str = "meridian_edge_probe_received_bytes_total";

/// Client connections accepted, by protocol (`http1`, `h2`, `h3`).
pub const CONNECTIONS: &str = "meridian_edge_connections_total";
/// Client connections open now, by protocol.
pub const OPEN_CONNECTIONS: &str = "meridian_edge_open_connections";

/// Counts a client connection and keeps it in the open gauge until dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

/// A client connection of `protocol` (`http1`, `h2`, `h3`) was accepted.
pub fn connection(protocol: &'static str) -> OpenConnection {
    counter!(CONNECTIONS, "protocol" => protocol).increment(1);
    let open = gauge!(OPEN_CONNECTIONS, "protocol" => protocol);
    open.increment(1.0);
    OpenConnection(open)
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// `read` (GET, HEAD), `write` (PUT, POST, PATCH, DELETE) or `other`.
pub fn method_class(m: &Method) -> &'static str {
    match *m {
        Method::GET | Method::HEAD => "read",
        Method::PUT | Method::POST | Method::PATCH | Method::DELETE => "write",
        _ => "other",
    }
}

/// Tells provider label sets apart in the per-worker cache; 0 is "no provider".
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// One provider's metric handles, registered when a snapshot brings the provider.
#[derive(Debug)]
pub struct ProviderMetrics {
    serial: u64,
    provider: SharedString,
    jurisdiction: SharedString,
    /// Time to first byte of its responses.
    pub ttfb: Arc<SecondsHistogram>,
    /// Whole requests it served.
    pub duration: Arc<SecondsHistogram>,
    /// Request body bytes sent to it.
    pub received: Counter,
    /// Response body bytes from it sent to clients.
    pub sent: Counter,
    /// RTT probe round trips.
    pub probe_rtt: Histogram,
    /// Bytes bandwidth probes downloaded.
    pub probe_bytes: Counter,
}

impl ProviderMetrics {
    /// Registers the handles of `spec`'s provider.
    pub fn new(spec: &ProviderSpec) -> Self {
        let provider = SharedString::from(spec.id.as_str().to_owned());
        let jurisdiction = SharedString::from(spec.jurisdiction.as_str().to_owned());
        let labels = [("provider", provider.clone()), ("jurisdiction", jurisdiction.clone())];
        let fast_labels = [
            ("provider", spec.id.as_str()),
            ("jurisdiction", spec.jurisdiction.as_str()),
        ];
        ProviderMetrics {
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            // Recorded per request: the lock-free histograms, not the exporter's.
            ttfb: seconds_histogram(UPSTREAM_TTFB, UPSTREAM_TTFB_HELP, &fast_labels),
            duration: seconds_histogram(REQUEST_DURATION, REQUEST_DURATION_HELP, &fast_labels),
            received: counter!(RECEIVED_BYTES, &labels),
            sent: counter!(SENT_BYTES, &labels),
            probe_rtt: histogram!(PROBE_RTT, &labels),
            probe_bytes: counter!(PROBE_BYTES, &labels),
            provider,
            jurisdiction,
        }
    }

    /// Counts one probe of `kind` (`rtt`, `bandwidth`) that succeeded or not.
    pub fn probe(&self, kind: &'static str, ok: bool) {
        counter!(
            PROBES,
            "provider" => self.provider.clone(),
            "jurisdiction" => self.jurisdiction.clone(),
            "kind" => kind,
            "result" => if ok { "ok" } else { "error" },
        )
        .increment(1);
    }

    /// Records a bandwidth probe's throughput (registered on first use, so a
    /// provider never probed shows no value rather than zero).
    pub fn probe_bandwidth(&self, bytes_per_second: f64) {
        gauge!(PROBE_BANDWIDTH, &self.labels()).set(bytes_per_second);
    }

    /// The provider's labels, for gauges set at scrape time.
    pub fn labels(&self) -> [(&'static str, SharedString); 2] {
        [
            ("provider", self.provider.clone()),
            ("jurisdiction", self.jurisdiction.clone()),
        ]
    }
}

#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct RequestKey {
    serial: u64,
    origin: Option<Jurisdiction>,
    method: &'static str,
    status: &'static str,
}

thread_local! {
    // Per worker: lookups take no lock and touch no shared line but the counter's.
    // The keys are the edge's own (a few small fields): no need for SipHash's
    // defence against chosen keys.
    static REQUEST_COUNTERS: RefCell<FxHashMap<RequestKey, Counter>> = RefCell::new(FxHashMap::default());
}

/// Counts one answered request; `provider` is `None` for answers the edge wrote.
pub fn request(provider: Option<&ProviderMetrics>, origin: Option<&Origin>, method: &Method, status: StatusCode) {
    let key = RequestKey {
        serial: provider.map_or(0, |p| p.serial),
        origin: origin.and_then(|o| o.jurisdiction),
        method: method_class(method),
        status: meridian_telemetry::status_class(status.as_u16()),
    };
    REQUEST_COUNTERS.with(|cache| {
        if let Some(c) = cache.borrow().get(&key) {
            c.increment(1);
            return;
        }
        let none = SharedString::const_str("none");
        let (p, j) = provider.map_or((none.clone(), none), |p| (p.provider.clone(), p.jurisdiction.clone()));
        let origin = SharedString::from(key.origin.map_or("unknown".to_owned(), |j| j.as_str().to_owned()));
        let c = counter!(
            REQUESTS,
            "provider" => p,
            "jurisdiction" => j,
            "origin" => origin,
            "method" => key.method,
            "status" => key.status,
        );
        c.increment(1);
        cache.borrow_mut().insert(key, c);
    });
}

/// Counts a fail-closed answer: the policy allows nowhere (`denied`) or nothing it
/// allows is available (`no_compliant`).
pub fn fail_closed(error: &RouteError) {
    let (origin, reason) = match error {
        RouteError::Denied { origin } => (origin, "denied"),
        RouteError::NoCompliant { origin, .. } => (origin, "no_compliant"),
    };
    counter!(FAIL_CLOSED, "origin" => origin.label().to_owned(), "reason" => reason).increment(1);
}

/// What the edge as a whole reports at each scrape.
#[derive(Debug, Clone, Copy)]
pub struct EdgeState {
    /// Serving: a fleet loaded, listeners up, not draining.
    pub ready: bool,
    /// The control plane's version running, when the fleet came from one.
    pub version: Option<u64>,
    /// The subscription, when a control plane is configured.
    pub control_plane: Option<Subscription>,
}

/// The control-plane subscription's state at a scrape.
#[derive(Debug, Clone, Copy)]
pub struct Subscription {
    /// Whether a session is open.
    pub connected: bool,
    /// Unix seconds of the last version applied or confirmed current.
    pub last_sync: Option<u64>,
    /// Versions acknowledged since start.
    pub acks: u64,
    /// Versions refused since start.
    pub nacks: u64,
}

/// Sets the gauges that describe state rather than events, just before a scrape is
/// rendered: providers' health and estimates, config version, subscription.
pub fn refresh(providers: &[Option<Arc<RoutedProvider>>], edge: EdgeState, now: Instant, unix_now: u64) {
    for p in providers.iter().flatten() {
        let labels = p.metrics.labels();
        let ejected = p.stats.is_ejected(now);
        let fleet_down = p.stats.fleet_down();
        let drained = p.spec.state != ProviderState::Active;
        let up = !(ejected || fleet_down || drained);
        gauge!("meridian_edge_provider_up", &labels).set(f64::from(u8::from(up)));
        gauge!("meridian_edge_provider_ejected", &labels).set(f64::from(u8::from(ejected)));
        gauge!("meridian_edge_provider_fleet_down", &labels).set(f64::from(u8::from(fleet_down)));
        gauge!("meridian_edge_provider_drained", &labels).set(f64::from(u8::from(drained)));
        gauge!("meridian_edge_provider_in_flight_requests", &labels).set(f64::from(p.stats.inflight()));
        counter!("meridian_edge_provider_ejections_total", &labels).absolute(p.stats.ejections());
        let (rtt, bandwidth) = p.stats.estimates();
        if let Some(rtt) = rtt {
            gauge!("meridian_edge_provider_rtt_seconds", &labels).set(rtt);
        }
        if let Some(bw) = bandwidth {
            gauge!("meridian_edge_provider_bandwidth_bytes_per_second", &labels).set(bw);
        }
    }
    gauge!("meridian_edge_ready").set(f64::from(u8::from(edge.ready)));
    if let Some(v) = edge.version {
        gauge!("meridian_edge_config_version").set(v as f64);
    }
    if let Some(s) = edge.control_plane {
        gauge!("meridian_edge_control_plane_connected").set(f64::from(u8::from(s.connected)));
        counter!("meridian_edge_config_versions_total", "result" => "ack").absolute(s.acks);
        counter!("meridian_edge_config_versions_total", "result" => "nack").absolute(s.nacks);
        if let Some(t) = s.last_sync {
            gauge!("meridian_edge_config_last_sync_timestamp_seconds").set(t as f64);
        }
        // While a session is open the edge hears of every version as it is made, so
        // it is current; cut off, its knowledge ages from the last sync (or start).
        let age = match (s.connected, s.last_sync) {
            (true, Some(_)) => 0,
            (_, Some(t)) => unix_now.saturating_sub(t),
            (_, None) => unix_now.saturating_sub(started_unix()),
        };
        gauge!("meridian_edge_config_sync_age_seconds").set(age as f64);
    }
}

static STARTED_UNIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Unix seconds when recording started (the process, near enough).
fn started_unix() -> u64 {
    *STARTED_UNIX.get_or_init(crate::push::unix_now)
}

/// Starts the process-wide recorder, describes every metric and registers the
/// build's identity.
pub fn install() {
    use metrics::{describe_counter as c, describe_gauge as g, describe_histogram as h};
    meridian_telemetry::recorder();
    started_unix();
    c!(CONNECTIONS, "Client connections accepted, by protocol (http1, h2, h3).");
    g!(OPEN_CONNECTIONS, "Client connections open now, by protocol.");
    c!(
        REQUESTS,
        "Requests answered, by provider (none: answered by the edge), provider jurisdiction, origin, method class and status class."
    );
    c!(
        RECEIVED_BYTES,
        metrics::Unit::Bytes,
        "Request body bytes forwarded to providers."
    );
    c!(SENT_BYTES, metrics::Unit::Bytes, "Response body bytes sent to clients.");
    c!(
        FAIL_CLOSED,
        "Requests refused for residency: denied (the policy allows nowhere) or no_compliant (nothing allowed is available)."
    );
    h!(PROBE_RTT, metrics::Unit::Seconds, "Round trips measured by RTT probes.");
    g!(
        PROBE_BANDWIDTH,
        "Throughput of the last bandwidth probe, bytes per second."
    );
    c!(PROBES, "Probes sent, by kind (rtt, bandwidth) and result.");
    c!(
        PROBE_BYTES,
        metrics::Unit::Bytes,
        "Bytes downloaded by bandwidth probes."
    );
    g!(
        "meridian_edge_provider_up",
        "1 when the provider can take new requests: not ejected, not down for the fleet, not drained."
    );
    g!(
        "meridian_edge_provider_ejected",
        "1 while this edge has ejected the provider after consecutive failures."
    );
    g!(
        "meridian_edge_provider_fleet_down",
        "1 while a quorum of the fleet's edges reports the provider down."
    );
    g!(
        "meridian_edge_provider_drained",
        "1 while the operator drains or disables the provider."
    );
    g!(
        "meridian_edge_provider_in_flight_requests",
        "Requests in flight to the provider."
    );
    c!(
        "meridian_edge_provider_ejections_total",
        "Times this edge ejected the provider."
    );
    g!(
        "meridian_edge_provider_rtt_seconds",
        "Smoothed round-trip estimate the selector uses (probes and traffic)."
    );
    g!(
        "meridian_edge_provider_bandwidth_bytes_per_second",
        "Smoothed throughput estimate the selector uses."
    );
    g!("meridian_edge_ready", "1 while /readyz answers ready.");
    g!("meridian_edge_config_version", "Control-plane fleet version running.");
    g!(
        "meridian_edge_control_plane_connected",
        "1 while a push session with the control plane is open."
    );
    c!(
        "meridian_edge_config_versions_total",
        "Fleet versions acknowledged (ack) or refused (nack) since start."
    );
    g!(
        "meridian_edge_config_last_sync_timestamp_seconds",
        "Unix time of the last version applied or confirmed current."
    );
    g!(
        "meridian_edge_config_sync_age_seconds",
        "0 while connected; else seconds since the last sync (or since start)."
    );
    g!("meridian_edge_build_info", "Build identity; always 1.");
    gauge!("meridian_edge_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_bounded() {
        assert_eq!(method_class(&Method::HEAD), "read");
        assert_eq!(method_class(&Method::DELETE), "write");
        assert_eq!(method_class(&Method::from_bytes(b"PURGE").unwrap()), "other");
        assert_eq!(meridian_telemetry::status_class(StatusCode::NOT_FOUND.as_u16()), "4xx");
        assert_eq!(meridian_telemetry::status_class(599), "5xx");
    }
}
