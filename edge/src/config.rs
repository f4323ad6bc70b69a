//! The edge's TOML configuration: parsed, checked and resolved before anything serves.
//!
//! Every error names the offending key (as a dotted path) and its line, so an operator
//! can fix a file without guessing. This module only reads files; it never opens a
//! socket, and a config that fails here is never half-applied.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use meridian_proto::{Fleet, Jurisdiction};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A configuration that could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("{file}: line {line}: key `{key}`: {message}")]
    Invalid {
        /// The file (or `<inline>`).
        file: String,
        /// 1-based line of the offending key, 0 when unknown.
        line: usize,
        /// Dotted path of the key, e.g. `providers[1].endpoint.address`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A duration written as `250ms`, `10s`, `5m` or `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration; write e.g. `250ms`, `10s`, `5m`"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(format!("`{s}` has no unit; use ms, s, m or h")),
        };
        Ok(HumanDuration(d))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"10s\" or \"5m\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A CIDR block; a bare address means a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a CIDR block or address")))
    }
}

/// The file as written (after schema checks, before cross-field checks).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listeners: RawListeners,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    upstream: UpstreamConfig,
    #[serde(default)]
    forwarding: RawForwarding,
    #[serde(default)]
    shutdown: ShutdownConfig,
    #[serde(default)]
    runtime: RuntimeConfig,
    #[serde(default)]
    origin: OriginConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    http3: Http3Config,
    #[serde(default)]
    probes: ProbeConfig,
    #[serde(default)]
    hedging: HedgingConfig,
    #[serde(default)]
    control_plane: Option<ControlPlaneConfig>,
    #[serde(default)]
    fleet: Option<Fleet>,
}

/// How the edge reaches its control plane for the fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushTransport {
    /// QUIC, falling back to HTTP/2 when QUIC does not connect.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// HTTP/2 only (networks that block UDP).
    H2,
}

/// The control plane this edge subscribes to. With it, the fleet comes by push and
/// `[fleet]` in this file is only the fallback before the first snapshot.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// `host:port` of the control plane's push listener (UDP for QUIC, TCP for HTTP/2).
    pub address: String,
    /// TLS name to verify the control plane's certificate against; the host part of
    /// `address` by default.
    #[serde(default)]
    pub server_name: Option<String>,
    /// This edge's id; it must be a DNS name in `cert_file`.
    pub edge_id: String,
    /// PEM CA bundle that signed the control plane's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate (mutual TLS).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// Where the last acknowledged snapshot is kept, to start from when the control
    /// plane is unreachable.
    pub state_dir: PathBuf,
    /// `auto`, `quic` or `h2`.
    #[serde(default)]
    pub transport: PushTransport,
    /// How long a QUIC handshake may take before `auto` tries HTTP/2.
    #[serde(default = "default_quic_timeout")]
    pub quic_timeout: HumanDuration,
    /// First reconnect delay; it doubles (with jitter) up to `reconnect_max`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: HumanDuration,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: HumanDuration,
    /// How often the edge checks its view of the providers and reports a change.
    #[serde(default = "default_report_interval")]
    pub report_interval: HumanDuration,
}

fn default_quic_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}
fn default_reconnect_min() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
fn default_reconnect_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_report_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// Hedged GETs: when the first provider has not answered by a latency percentile,
/// the next-best allowed provider is asked too and the first answer wins. Off by
/// default: it costs provider egress.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgingConfig {
    /// Hedge at all.
    pub enabled: bool,
    /// Hedge after this quantile of recent times to first byte (0.5 to 0.999).
    pub percentile: f64,
    /// Never hedge sooner than this.
    pub min_delay: HumanDuration,
    /// Never wait longer than this before hedging.
    pub max_delay: HumanDuration,
}

impl Default for HedgingConfig {
    fn default() -> Self {
        HedgingConfig {
            enabled: false,
            percentile: 0.95,
            min_delay: HumanDuration(Duration::from_millis(5)),
            max_delay: HumanDuration(Duration::from_secs(1)),
        }
    }
}

/// Active probes of every provider.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Probe at all.
    pub enabled: bool,
    /// Time between rounds, ±20 % jitter.
    pub interval: HumanDuration,
    /// Longest a probe may take (connect, TLS, `HEAD`); slower counts as a failure.
    pub timeout: HumanDuration,
    /// Path sent with `HEAD`.
    pub path: String,
    /// Object fetched by bandwidth probes; no bandwidth probes without it (traffic
    /// still measures bandwidth).
    pub bandwidth_path: Option<String>,
    /// Time between bandwidth probes of one provider.
    pub bandwidth_interval: HumanDuration,
    /// Most bytes one bandwidth probe reads.
    pub bandwidth_max_bytes: u64,
    /// Most bytes bandwidth probes may read from one provider per hour (egress costs
    /// money); a probe that would exceed it reads less or waits.
    pub bandwidth_budget_per_hour: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            enabled: true,
            interval: HumanDuration(Duration::from_secs(5)),
            timeout: HumanDuration(Duration::from_secs(2)),
            path: "/".into(),
            bandwidth_path: None,
            bandwidth_interval: HumanDuration(Duration::from_secs(300)),
            bandwidth_max_bytes: 1 << 20,
            bandwidth_budget_per_hour: 64 << 20,
        }
    }
}

/// HTTP/3 choices beyond the listener's address and the shared limits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http3Config {
    /// Accept 0-RTT early data. Early data can be replayed by an attacker, so even
    /// when on, only safe methods (GET, HEAD, OPTIONS) are served before the
    /// handshake completes; others get 425 Too Early (RFC 8470).
    pub zero_rtt: bool,
    /// `ma` of the `Alt-Svc` header HTTPS responses carry to advertise HTTP/3.
    pub alt_svc_max_age: HumanDuration,
}

impl Default for Http3Config {
    fn default() -> Self {
        Http3Config {
            zero_rtt: false,
            alt_svc_max_age: HumanDuration(Duration::from_secs(86_400)),
        }
    }
}

/// Logging choices that belong to the config rather than the command line.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// One line per request with the routing decision (target `meridian::access`).
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { access: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListeners {
    http: Option<SocketAddr>,
    https: Option<Spanned<SocketAddr>>,
    h3: Option<Spanned<SocketAddr>>,
    admin: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    default_certificate: Option<Spanned<String>>,
    #[serde(default)]
    certificates: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    name: Spanned<String>,
    server_names: Spanned<Vec<String>>,
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwarding {
    #[serde(default)]
    trusted_hops: Vec<Cidr>,
    #[serde(default)]
    via: Option<Spanned<String>>,
}

/// Where a request's origin may come from, in the order they are consulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginSource {
    /// The tenant binding of the request's host and path.
    Tenant,
    /// The residency header, honoured only from trusted hops.
    Header,
    /// GeoIP (a MaxMind `.mmdb` country database) of the client address.
    Geoip,
    /// The CIDR table, by client address.
    Cidr,
    /// The configured default.
    Default,
}

impl OriginSource {
    /// The name used in configs, logs and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            OriginSource::Tenant => "tenant",
            OriginSource::Header => "header",
            OriginSource::Geoip => "geoip",
            OriginSource::Cidr => "cidr",
            OriginSource::Default => "default",
        }
    }
}

/// One CIDR-table entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrEntry {
    /// Client addresses.
    pub cidr: Cidr,
    /// Their jurisdiction.
    pub jurisdiction: Jurisdiction,
}

/// How the edge decides which jurisdiction governs a request's data.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// Sources in the order they are consulted; the first that knows wins.
    pub order: Vec<OriginSource>,
    /// Residency header name; honoured only from `forwarding.trusted_hops` and always
    /// removed before forwarding.
    pub header: String,
    /// MaxMind GeoIP2/GeoLite2 Country (or City) database, for the `geoip` source.
    pub geoip_db: Option<PathBuf>,
    /// Client address ranges and their jurisdictions (most specific match wins).
    pub cidrs: Vec<CidrEntry>,
    /// Jurisdiction used when no other source knows; without it the origin is
    /// unknown and `fleet.policy.unknown_origin` decides.
    pub default: Option<Jurisdiction>,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            order: vec![
                OriginSource::Tenant,
                OriginSource::Header,
                OriginSource::Geoip,
                OriginSource::Cidr,
                OriginSource::Default,
            ],
            header: "x-meridian-residency".into(),
            geoip_db: None,
            cidrs: Vec::new(),
            default: None,
        }
    }
}

/// Limits that protect the edge from its clients.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most client connections open at once; further ones wait in the kernel backlog.
    pub max_connections: u32,
    /// Largest request header block (request line included); larger gets 431.
    pub max_header_bytes: u32,
    /// Most header fields in one request; more gets 431.
    pub max_headers: u32,
    /// Longest request target; longer gets 414.
    pub max_uri_bytes: u32,
    /// Time a client has to send a whole request header block once it started one.
    pub header_read_timeout: HumanDuration,
    /// Time a TLS handshake may take.
    pub tls_handshake_timeout: HumanDuration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: HumanDuration,
    /// HTTP/2: most concurrent streams a client may open on one connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: most streams reset by the client but not yet accepted (rapid-reset defence).
    pub h2_max_pending_accept_reset_streams: u32,
    /// HTTP/2: most streams the edge may reset for protocol errors before it closes
    /// the connection (reset-flood defence).
    pub h2_max_local_error_reset_streams: u32,
    /// HTTP/3: most concurrent request streams a client may open on one connection.
    pub h3_max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 128,
            max_uri_bytes: 8 * 1024,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            tls_handshake_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            h2_max_concurrent_streams: 128,
            h2_max_pending_accept_reset_streams: 32,
            h2_max_local_error_reset_streams: 256,
            h3_max_concurrent_streams: 128,
        }
    }
}

/// How the edge talks to providers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// TCP connect plus TLS handshake; past it the client gets 504.
    pub connect_timeout: HumanDuration,
    /// From sending the request to the provider's response head; past it, 504.
    pub response_header_timeout: HumanDuration,
    /// Longest wait for the next body chunk in either direction once a body flows;
    /// past it the transfer is aborted (never cut short silently).
    pub body_idle_timeout: HumanDuration,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout: HumanDuration,
    /// Idle connections kept per provider.
    pub max_idle_per_provider: u32,
    /// PEM bundle of CAs trusted for TLS providers; system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Local address provider connections leave from (a multi-homed edge choosing
    /// its egress); the kernel's choice when absent.
    pub source_address: Option<IpAddr>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: HumanDuration(Duration::from_secs(3)),
            response_header_timeout: HumanDuration(Duration::from_secs(30)),
            body_idle_timeout: HumanDuration(Duration::from_secs(30)),
            pool_idle_timeout: HumanDuration(Duration::from_secs(90)),
            max_idle_per_provider: 64,
            ca_file: None,
            source_address: None,
        }
    }
}

/// Graceful shutdown.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM or SIGINT.
    pub drain_timeout: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// Worker threads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads, each with its own event loop, listeners and upstream pools;
    /// 0 (the default) means one per available core.
    pub workers: u32,
}

/// One certificate and the server names it answers for.
#[derive(Clone, Debug)]
pub struct CertificateConfig {
    /// Name used by `tls.default_certificate`.
    pub name: String,
    /// Exact names, or `*.suffix` wildcards matching one label.
    pub server_names: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// TLS for the HTTPS listener.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// Certificates chosen by SNI.
    pub certificates: Vec<CertificateConfig>,
    /// Index into `certificates` used when SNI is absent or unknown; without it such
    /// handshakes fail.
    pub default_certificate: Option<usize>,
}

/// Addresses the edge listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listeners {
    /// Plain HTTP/1.1.
    pub http: Option<SocketAddr>,
    /// HTTPS with ALPN h2 and http/1.1.
    pub https: Option<SocketAddr>,
    /// HTTP/3 over QUIC (UDP), with the same certificates as HTTPS.
    pub h3: Option<SocketAddr>,
    /// Health endpoints; keep it on loopback.
    pub admin: Option<SocketAddr>,
}

/// Which peers may set forwarding headers, and how the edge names itself.
#[derive(Clone, Debug)]
pub struct Forwarding {
    /// Peers whose `Forwarded` / `X-Forwarded-*` headers are kept and appended to.
    pub trusted_hops: Vec<IpNet>,
    /// Pseudonym in `Via`.
    pub via: String,
}

impl Forwarding {
    /// Whether `ip` is a trusted hop.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_hops.iter().any(|net| net.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A checked configuration, every path resolved against the file's directory.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Listening addresses.
    pub listeners: Listeners,
    /// Certificates, when HTTPS is on.
    pub tls: TlsConfig,
    /// Client-facing limits.
    pub limits: Limits,
    /// Provider-facing behaviour.
    pub upstream: UpstreamConfig,
    /// Forwarding headers.
    pub forwarding: Forwarding,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// Worker threads.
    pub runtime: RuntimeConfig,
    /// Origin resolution.
    pub origin: OriginConfig,
    /// Logging.
    pub log: LogConfig,
    /// HTTP/3 behaviour.
    pub http3: Http3Config,
    /// Active probes.
    pub probes: ProbeConfig,
    /// Hedged GETs.
    pub hedging: HedgingConfig,
    /// The control plane to subscribe to, if any.
    pub control_plane: Option<ControlPlaneConfig>,
    /// Providers, policy and tenants from this file: the whole truth without a
    /// control plane, the fallback before the first push with one.
    pub fleet: Option<Fleet>,
}

impl EdgeConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<EdgeConfig, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&src, &path.display().to_string(), base)
    }

    /// Checks a config held in memory; relative paths resolve against `base`.
    pub fn parse(src: &str, file: &str, base: &Path) -> Result<EdgeConfig, ConfigError> {
        let at = |span: Option<Range<usize>>, key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            line: span.map(|s| line_of(src, s.start)).unwrap_or(0),
            key: key.to_owned(),
            message,
        };

        let de = toml::Deserializer::parse(src).map_err(|e| at(e.span(), "", e.message().into()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            at(inner.span(), &key, inner.message().to_owned())
        })?;

        let limits = raw.limits;
        check_limits(&limits).map_err(|(key, msg)| at(None, &format!("limits.{key}"), msg))?;

        if raw.fleet.is_none() && raw.control_plane.is_none() {
            return Err(at(None, "fleet", "required unless [control_plane] provides it".into()));
        }
        if let Some(Err(e)) = raw.fleet.as_ref().map(Fleet::validate) {
            let key = format!("fleet.{}", e.path);
            return Err(ConfigError::Invalid {
                file: file.to_owned(),
                line: line_of_path(src, &key).unwrap_or(0),
                key,
                message: e.message,
            });
        }
        if raw
            .probes
            .bandwidth_path
            .as_deref()
            .is_some_and(|p| !p.starts_with('/'))
        {
            return Err(at(None, "probes.bandwidth_path", "must start with `/`".into()).with_line(src));
        }
        if !(0.5..=0.999).contains(&raw.hedging.percentile) {
            return Err(at(None, "hedging.percentile", "must be between 0.5 and 0.999".into()).with_line(src));
        }
        if !raw.probes.path.starts_with('/') {
            return Err(at(None, "probes.path", "must start with `/`".into()).with_line(src));
        }
        if raw.probes.interval.0.is_zero() || raw.probes.timeout.0.is_zero() {
            return Err(at(
                None,
                "probes.interval",
                "interval and timeout must be greater than zero".into(),
            )
            .with_line(src));
        }
        let mut origin = raw.origin;
        origin.geoip_db = origin.geoip_db.map(|p| base.join(p));
        if let Some(db) = &origin.geoip_db {
            if !db.is_file() {
                return Err(
                    at(None, "origin.geoip_db", format!("file {} does not exist", db.display())).with_line(src),
                );
            }
        }
        if http::HeaderName::from_bytes(origin.header.as_bytes()).is_err() {
            return Err(at(
                None,
                "origin.header",
                format!("`{}` is not a valid header name", origin.header),
            )
            .with_line(src));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = origin.order.iter().find(|s| !seen.insert(**s)) {
            return Err(at(None, "origin.order", format!("`{}` is listed twice", dup.as_str())).with_line(src));
        }

        let mut tls = TlsConfig::default();
        if let Some(raw_tls) = raw.tls {
            for (i, c) in raw_tls.certificates.into_iter().enumerate() {
                let key = |k: &str| format!("tls.certificates[{i}].{k}");
                if tls.certificates.iter().any(|x| x.name == *c.name.get_ref()) {
                    return Err(at(
                        Some(c.name.span()),
                        &key("name"),
                        format!("duplicate certificate name `{}`", c.name.get_ref()),
                    ));
                }
                if c.server_names.get_ref().is_empty() {
                    return Err(at(
                        Some(c.server_names.span()),
                        &key("server_names"),
                        "must not be empty".into(),
                    ));
                }
                for name in c.server_names.get_ref() {
                    if name.is_empty() || name[name.starts_with("*.") as usize * 2..].contains('*') {
                        return Err(at(
                            Some(c.server_names.span()),
                            &key("server_names"),
                            format!("`{name}`: only exact names and a leading `*.` wildcard are allowed"),
                        ));
                    }
                }
                for (field, path) in [("cert", &c.cert), ("key", &c.key)] {
                    let resolved = base.join(path.get_ref());
                    if !resolved.is_file() {
                        return Err(at(
                            Some(path.span()),
                            &key(field),
                            format!("file {} does not exist", resolved.display()),
                        ));
                    }
                }
                tls.certificates.push(CertificateConfig {
                    name: c.name.into_inner(),
                    server_names: c
                        .server_names
                        .into_inner()
                        .iter()
                        .map(|n| n.to_ascii_lowercase())
                        .collect(),
                    cert: base.join(c.cert.into_inner()),
                    key: base.join(c.key.into_inner()),
                });
            }
            if let Some(name) = raw_tls.default_certificate {
                let idx = tls.certificates.iter().position(|c| c.name == *name.get_ref());
                match idx {
                    Some(i) => tls.default_certificate = Some(i),
                    None => {
                        return Err(at(
                            Some(name.span()),
                            "tls.default_certificate",
                            format!("no certificate named `{}`", name.get_ref()),
                        ));
                    }
                }
            }
        }
        if let Some(https) = &raw.listeners.https {
            if tls.certificates.is_empty() {
                return Err(at(
                    Some(https.span()),
                    "listeners.https",
                    "an HTTPS listener needs at least one [[tls.certificates]]".into(),
                ));
            }
        }
        if let Some(h3) = &raw.listeners.h3 {
            if tls.certificates.is_empty() {
                return Err(at(
                    Some(h3.span()),
                    "listeners.h3",
                    "an HTTP/3 listener needs at least one [[tls.certificates]]".into(),
                ));
            }
        }
        if raw.listeners.http.is_none() && raw.listeners.https.is_none() && raw.listeners.h3.is_none() {
            return Err(at(
                None,
                "listeners",
                "configure at least one of `http`, `https` or `h3`".into(),
            ));
        }

        let via = match raw.forwarding.via {
            Some(v) if v.get_ref().is_empty() || !v.get_ref().bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(at(
                    Some(v.span()),
                    "forwarding.via",
                    "must be a non-empty token without spaces".into(),
                ));
            }
            Some(v) => v.into_inner(),
            None => "meridian".to_owned(),
        };

        let mut upstream = raw.upstream;
        upstream.ca_file = upstream.ca_file.map(|p| base.join(p));

        let mut control_plane = raw.control_plane;
        if let Some(cp) = &mut control_plane {
            if rustls_pki_types::ServerName::try_from(cp.edge_id.as_str()).is_err()
                || cp.edge_id.parse::<IpAddr>().is_ok()
            {
                return Err(at(
                    None,
                    "control_plane.edge_id",
                    format!("`{}` is not a DNS name", cp.edge_id),
                )
                .with_line(src));
            }
            for (key, path) in [
                ("control_plane.ca_file", &mut cp.ca_file),
                ("control_plane.cert_file", &mut cp.cert_file),
                ("control_plane.key_file", &mut cp.key_file),
            ] {
                *path = base.join(&*path);
                if !path.is_file() {
                    return Err(at(None, key, format!("file {} does not exist", path.display())).with_line(src));
                }
            }
            cp.state_dir = base.join(&cp.state_dir);
            if cp.reconnect_min.0.is_zero() || cp.reconnect_max.0 < cp.reconnect_min.0 {
                return Err(at(
                    None,
                    "control_plane.reconnect_max",
                    "reconnect_min must be above zero and reconnect_max at least reconnect_min".into(),
                )
                .with_line(src));
            }
            if cp.report_interval.0.is_zero() || cp.quic_timeout.0.is_zero() {
                return Err(at(
                    None,
                    "control_plane.report_interval",
                    "report_interval and quic_timeout must be above zero".into(),
                )
                .with_line(src));
            }
        }

        Ok(EdgeConfig {
            listeners: Listeners {
                http: raw.listeners.http,
                https: raw.listeners.https.map(Spanned::into_inner),
                h3: raw.listeners.h3.map(Spanned::into_inner),
                admin: raw.listeners.admin,
            },
            tls,
            limits,
            upstream,
            forwarding: Forwarding {
                trusted_hops: raw.forwarding.trusted_hops.into_iter().map(|c| c.0).collect(),
                via,
            },
            shutdown: raw.shutdown,
            runtime: raw.runtime,
            origin,
            log: raw.log,
            http3: raw.http3,
            probes: raw.probes,
            hedging: raw.hedging,
            control_plane,
            fleet: raw.fleet,
        })
    }
}

fn check_limits(l: &Limits) -> Result<(), (&'static str, String)> {
    if l.max_connections == 0 {
        return Err(("max_connections", "must be at least 1".into()));
    }
    if l.max_header_bytes < 1024 {
        return Err(("max_header_bytes", "must be at least 1024".into()));
    }
    if l.max_headers == 0 {
        return Err(("max_headers", "must be at least 1".into()));
    }
    if l.max_uri_bytes < 16 {
        return Err(("max_uri_bytes", "must be at least 16".into()));
    }
    if l.h2_max_concurrent_streams == 0 {
        return Err(("h2_max_concurrent_streams", "must be at least 1".into()));
    }
    if l.h3_max_concurrent_streams == 0 {
        return Err(("h3_max_concurrent_streams", "must be at least 1".into()));
    }
    for (k, d) in [
        ("header_read_timeout", l.header_read_timeout),
        ("tls_handshake_timeout", l.tls_handshake_timeout),
        ("idle_timeout", l.idle_timeout),
    ] {
        if d.0.is_zero() {
            return Err((k, "must be greater than zero".into()));
        }
    }
    Ok(())
}

impl ConfigError {
    /// Fills in the line of the key from the source when it is not known yet.
    fn with_line(mut self, src: &str) -> Self {
        if let ConfigError::Invalid { line, key, .. } = &mut self {
            if *line == 0 {
                *line = line_of_path(src, key).unwrap_or(0);
            }
        }
        self
    }
}

/// The line of a dotted key path such as `fleet.policy.rules[2].allow[0]`, found by
/// walking the document's spans.
fn line_of_path(src: &str, path: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(src).ok()?;
    let mut span = doc.span();
    let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
    let mut value: Option<&toml::Spanned<DeValue<'_>>>;
    for seg in path.split('.') {
        let (name, indices) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        let v = table?.get(name)?;
        span = v.span();
        value = Some(v);
        for idx in indices.split(['[', ']']).filter(|x| !x.is_empty()) {
            let i: usize = idx.parse().ok()?;
            let DeValue::Array(items) = value?.get_ref() else {
                return None;
            };
            let item = items.get(i)?;
            span = item.span();
            value = Some(item);
        }
        table = match value?.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    Some(line_of(src, span.start))
}

fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests;
