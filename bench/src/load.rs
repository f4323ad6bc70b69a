//! The load generator behind `meridian-bench load` and the comparisons.
//!
//! Two modes. **Open loop**: each request has an intended start on a fixed schedule
//! (`rate` per second, spread evenly). A request that had to wait for its connection's
//! previous response is timed from its intended start, so a stalled server is charged
//! for the requests it delayed (coordinated-omission correction, as wrk2 does); one
//! sent on time is timed from when it was sent, so the timer's own lateness is not
//! charged to the server. **Closed loop**: every connection sends its next request as
//! soon as the previous one finished, which measures capacity, not latency at a load.
//!
//! Requests follow a weighted mix of operations (GETs of objects of several sizes,
//! PUTs of several body sizes), chosen deterministically from the request's ordinal so
//! two runs send the same sequence. HTTP/1.1 uses one connection per worker; HTTP/2
//! multiplexes the workers over a few connections.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Open or closed loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// A fixed schedule of `rate` requests per second.
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// Back-to-back on every connection.
    Closed,
}

/// HTTP version spoken to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1, one request at a time per connection.
    H1,
    /// HTTP/2, streams multiplexed: prior knowledge in cleartext, or ALPN `h2`
    /// over TLS when the spec has `tls`.
    H2,
    /// HTTP/3 over QUIC (needs `tls`), streams multiplexed.
    H3,
}

/// One kind of request in the mix.
#[derive(Clone, Debug)]
pub struct Op {
    /// Label in the report, e.g. `GET 1MiB`.
    pub name: String,
    /// GET or PUT.
    pub method: Method,
    /// Request path.
    pub path: String,
    /// Request body (shared, not copied per request).
    pub body: Bytes,
    /// Relative share.
    pub weight: u32,
}

impl Op {
    /// A GET of `path`.
    pub fn get(path: &str, weight: u32) -> Op {
        Op {
            name: format!("GET {path}"),
            method: Method::GET,
            path: path.to_owned(),
            body: Bytes::new(),
            weight,
        }
    }

    /// A PUT of `size` bytes to a path of its own.
    pub fn put(size: u64, weight: u32) -> Op {
        Op {
            name: format!("PUT {}", human_bytes(size)),
            method: Method::PUT,
            path: format!("/bench/put-{size}"),
            body: Bytes::from(vec![b'p'; size as usize]),
            weight,
        }
    }
}

/// One run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Where to send.
    pub target: SocketAddr,
    /// `Host` header (`:authority` on HTTP/2).
    pub host: String,
    /// Open or closed loop.
    pub mode: Mode,
    /// HTTP version.
    pub proto: Proto,
    /// How long to send.
    pub duration: Duration,
    /// Concurrent workers (HTTP/1.1 connections; HTTP/2 streams in flight).
    pub connections: usize,
    /// The request mix; must not be empty.
    pub ops: Vec<Op>,
    /// Show a progress bar on stderr (only for runs of 3 s or more).
    pub progress: bool,
    /// Speak TLS, trusting these roots, with `host` as the server name.
    pub tls: Option<Arc<rustls::RootCertStore>>,
}

impl LoadSpec {
    /// A fixed-rate run of GETs of one path over HTTP/1.1.
    pub fn fixed_rate_get(target: SocketAddr, path: &str, rate: f64, duration: Duration, connections: usize) -> Self {
        LoadSpec {
            target,
            host: "localhost".into(),
            mode: Mode::Open { rate },
            proto: Proto::H1,
            duration,
            connections,
            ops: vec![Op::get(path, 1)],
            progress: false,
            tls: None,
        }
    }
}

/// What one operation of the mix measured.
#[derive(Debug)]
pub struct OpResult {
    /// Its label.
    pub name: String,
    /// 2xx answers.
    pub ok: u64,
    /// Failures and non-2xx answers.
    pub errors: u64,
    /// Latency in microseconds to the last body byte.
    pub latency_us: Histogram<u64>,
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed or were not 2xx.
    pub errors: u64,
    /// Latency in microseconds to the last body byte, all operations.
    pub latency_us: Histogram<u64>,
    /// Per operation of the mix.
    pub ops: Vec<OpResult>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Response body bytes received.
    pub bytes_in: u64,
    /// Request body bytes sent.
    pub bytes_out: u64,
    /// The spec's mode and protocol, for the report.
    pub mode: Mode,
    /// HTTP version used.
    pub proto: Proto,
}

impl LoadResult {
    /// A latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Answered requests per second.
    pub fn rps(&self) -> f64 {
        (self.ok + self.errors) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        let mode = match self.mode {
            Mode::Open { rate } => format!("open loop at {rate}/s (coordinated-omission corrected)"),
            Mode::Closed => "closed loop".to_owned(),
        };
        let mut s = format!(
            "{mode}, {:?}, {:.1} s: {} ok, {} errors, {:.0} req/s, in {} out {}\n\
             latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.proto,
            self.elapsed.as_secs_f64(),
            self.ok,
            self.errors,
            self.rps(),
            human_bytes(self.bytes_in),
            human_bytes(self.bytes_out),
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.latency_us.max() as f64 / 1000.0,
        );
        if self.ops.len() > 1 {
            for o in &self.ops {
                let q = |q: f64| o.latency_us.value_at_quantile(q) as f64 / 1000.0;
                s.push_str(&format!(
                    "  {:<24} {:>8} ok {:>6} err  p50 {:.3}  p99 {:.3}\n",
                    o.name,
                    o.ok,
                    o.errors,
                    q(0.5),
                    q(0.99)
                ));
            }
        }
        s
    }

    /// The result as JSON, quantiles in milliseconds.
    pub fn to_json(&self) -> Value {
        let quantiles = |h: &Histogram<u64>| {
            json!({
                "p50": h.value_at_quantile(0.5) as f64 / 1000.0,
                "p90": h.value_at_quantile(0.9) as f64 / 1000.0,
                "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
                "p999": h.value_at_quantile(0.999) as f64 / 1000.0,
                "max": h.max() as f64 / 1000.0,
            })
        };
        json!({
            "mode": match self.mode { Mode::Open { .. } => "open", Mode::Closed => "closed" },
            "rate": match self.mode { Mode::Open { rate } => Some(rate), Mode::Closed => None },
            "proto": format!("{:?}", self.proto),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "ok": self.ok,
            "errors": self.errors,
            "rps": self.rps(),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "latency_ms": quantiles(&self.latency_us),
            "ops": self.ops.iter().map(|o| json!({
                "name": o.name, "ok": o.ok, "errors": o.errors, "latency_ms": quantiles(&o.latency_us),
            })).collect::<Vec<_>>(),
        })
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 300_000_000, 3)?)
}

/// One empty result per operation of the mix.
fn empty_results(ops: &[Op]) -> anyhow::Result<Vec<OpResult>> {
    ops.iter()
        .map(|o| {
            Ok(OpResult {
                name: o.name.clone(),
                ok: 0,
                errors: 0,
                latency_us: histogram()?,
            })
        })
        .collect()
}

/// Which operation request `i` performs: a deterministic weighted pick.
fn pick(ops: &[Op], total_weight: u64, i: u64) -> usize {
    pick_weighted(ops.iter().map(|o| o.weight), total_weight, i)
}

/// Index drawn for ordinal `i` from `weights` (summing to `total_weight`): the same
/// sequence in every run, without clustering.
pub fn pick_weighted(weights: impl Iterator<Item = u32>, total_weight: u64, i: u64) -> usize {
    // SplitMix64 of the ordinal.
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let mut r = (z ^ (z >> 31)) % total_weight.max(1);
    for (k, w) in weights.enumerate() {
        let w = u64::from(w);
        if r < w {
            return k;
        }
        r -= w;
    }
    0
}

/// Live counters for the progress bar.
#[derive(Default)]
struct Counters {
    done: AtomicU64,
    errors: AtomicU64,
}

/// Runs `spec` to completion.
pub async fn run(spec: &LoadSpec) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!spec.ops.is_empty(), "the request mix is empty");
    anyhow::ensure!(spec.connections > 0, "at least one connection");
    if let Mode::Open { rate } = spec.mode {
        anyhow::ensure!(rate > 0.0, "the rate must be above zero");
    }
    let conns = Connections::open(spec).await?;
    let counters = Arc::new(Counters::default());
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(spec.connections);
    for k in 0..spec.connections {
        let (spec, counters, conns) = (spec.clone(), counters.clone(), conns.clone());
        tasks.push(tokio::spawn(
            async move { worker(spec, k, start, conns, counters).await },
        ));
    }
    let progress = (spec.progress && spec.duration >= Duration::from_secs(3))
        .then(|| tokio::spawn(progress_bar(start, spec.duration, counters.clone())));
    let mut result = LoadResult {
        ok: 0,
        errors: 0,
        latency_us: histogram()?,
        ops: empty_results(&spec.ops)?,
        elapsed: Duration::ZERO,
        bytes_in: 0,
        bytes_out: 0,
        mode: spec.mode,
        proto: spec.proto,
    };
    for t in tasks {
        let w = t.await??;
        result.bytes_in += w.bytes_in;
        result.bytes_out += w.bytes_out;
        for (total, part) in result.ops.iter_mut().zip(w.ops) {
            total.ok += part.ok;
            total.errors += part.errors;
            total.latency_us.add(&part.latency_us)?;
            result.latency_us.add(&part.latency_us)?;
        }
    }
    result.ok = result.ops.iter().map(|o| o.ok).sum();
    result.errors = result.ops.iter().map(|o| o.errors).sum();
    result.elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    Ok(result)
}

/// A fixed-rate run (kept for callers that only need that).
pub async fn fixed_rate(spec: &LoadSpec) -> anyhow::Result<LoadResult> {
    run(spec).await
}

async fn progress_bar(start: Instant, duration: Duration, counters: Arc<Counters>) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(if tty { 1 } else { 5 }));
    // The first tick is immediate: nothing to show yet.
    tick.tick().await;
    loop {
        tick.tick().await;
        let elapsed = Instant::now().saturating_duration_since(start).min(duration);
        let frac = elapsed.as_secs_f64() / duration.as_secs_f64();
        let filled = (frac * 30.0).round() as usize;
        let line = format!(
            "[{}{}] {:>5.1}/{:.0} s  {} requests  {} errors",
            "#".repeat(filled),
            ".".repeat(30 - filled.min(30)),
            elapsed.as_secs_f64(),
            duration.as_secs_f64(),
            counters.done.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed),
        );
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

type H3 = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// The multiplexed connections workers share (HTTP/1.1 workers open their own).
#[derive(Clone)]
struct Connections {
    h2: Arc<Vec<H2>>,
    h3: Arc<Vec<H3>>,
    /// Keeps the QUIC endpoint alive for the run.
    _endpoint: Option<quinn::Endpoint>,
}

impl Connections {
    async fn open(spec: &LoadSpec) -> anyhow::Result<Connections> {
        // Enough connections that one transport stream is not the bottleneck, few
        // enough that streams really multiplex.
        let count = spec.connections.div_ceil(16).min(8);
        let (mut h2, mut h3) = (Vec::new(), Vec::new());
        let mut endpoint = None;
        match spec.proto {
            Proto::H1 => {}
            Proto::H2 => {
                for _ in 0..count {
                    h2.push(h2_client(spec).await?);
                }
            }
            Proto::H3 => {
                let Some(roots) = &spec.tls else {
                    anyhow::bail!("HTTP/3 needs TLS: give the target's CA");
                };
                let tls = client_tls(roots, b"h3");
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
                let mut ep = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
                ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
                for _ in 0..count {
                    let conn = ep.connect(spec.target, &spec.host)?.await?;
                    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
                    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
                    h3.push(send);
                }
                endpoint = Some(ep);
            }
        }
        Ok(Connections {
            h2: Arc::new(h2),
            h3: Arc::new(h3),
            _endpoint: endpoint,
        })
    }
}

/// The certificates of a PEM file, as roots to trust.
pub fn roots_from_pem(path: &std::path::Path) -> anyhow::Result<Arc<rustls::RootCertStore>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)? {
        roots.add(cert?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "{}: no certificate", path.display());
    Ok(Arc::new(roots))
}

/// A TLS client trusting `roots`, offering `alpn` (TLS 1.3 only for HTTP/3).
fn client_tls(roots: &Arc<rustls::RootCertStore>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if alpn == b"h3" {
        &[&rustls::version::TLS13]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"))
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

/// A TCP connection to the target, with TLS offering `alpn` when the spec has `tls`.
async fn connect(spec: &LoadSpec, alpn: &[u8]) -> anyhow::Result<TokioIo<Transport>> {
    let tcp = tokio::net::TcpStream::connect(spec.target).await?;
    tcp.set_nodelay(true)?;
    let Some(roots) = &spec.tls else {
        return Ok(TokioIo::new(Transport::Left(tcp)));
    };
    let name = rustls_pki_types::ServerName::try_from(spec.host.clone())?;
    let tls = tokio_rustls::TlsConnector::from(client_tls(roots, alpn))
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(Transport::Right(tls)))
}

/// Cleartext or TLS.
type Transport =
    tokio_util::either::Either<tokio::net::TcpStream, tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// An HTTP/1.1 connection: in clear, or over TLS (ALPN `http/1.1`) with `tls`.
async fn h1_client(spec: &LoadSpec) -> anyhow::Result<H1> {
    let (send, conn) = hyper::client::conn::http1::handshake(connect(spec, b"http/1.1").await?).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn h2_client(spec: &LoadSpec) -> anyhow::Result<H2> {
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(connect(spec, b"h2").await?)
        .await?;
    tokio::spawn(conn);
    Ok(send)
}

enum Client {
    H1(Option<H1>),
    H2(H2),
    H3(H3),
}

impl Client {
    async fn send(&mut self, spec: &LoadSpec, op: &Op) -> anyhow::Result<(u64, bool)> {
        if let Client::H3(send) = self {
            return h3_exchange(send, spec, op).await;
        }
        let scheme = if spec.tls.is_some() { "https" } else { "http" };
        let req = http::Request::builder()
            .method(op.method.clone())
            .uri(match self {
                Client::H1(_) => op.path.clone(),
                _ => format!("{scheme}://{}{}", spec.host, op.path),
            })
            .header("host", spec.host.as_str())
            .body(Full::new(op.body.clone()))?;
        let resp = match self {
            Client::H1(conn) => {
                if conn.is_none() {
                    *conn = Some(h1_client(spec).await?);
                }
                let Some(send) = conn.as_mut() else {
                    anyhow::bail!("no connection");
                };
                send.ready().await?;
                send.send_request(req).await?
            }
            Client::H2(send) => {
                send.ready().await?;
                send.send_request(req).await?
            }
            Client::H3(_) => anyhow::bail!("HTTP/3 is sent by h3_exchange"),
        };
        let good = resp.status().is_success();
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame?.into_data() {
                n += d.len() as u64;
            }
        }
        Ok((n, good))
    }

    fn reset(&mut self) {
        if let Client::H1(c) = self {
            *c = None;
        }
    }
}

/// One exchange over HTTP/3: returns the response body's length and whether it
/// succeeded.
async fn h3_exchange(send: &mut H3, spec: &LoadSpec, op: &Op) -> anyhow::Result<(u64, bool)> {
    use bytes::Buf;
    let req = http::Request::builder()
        .method(op.method.clone())
        .uri(format!("https://{}{}", spec.host, op.path))
        .header("content-length", op.body.len())
        .body(())?;
    let mut stream = send.send_request(req).await?;
    if !op.body.is_empty() {
        stream.send_data(op.body.clone()).await?;
    }
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    let mut n = 0u64;
    while let Some(chunk) = stream.recv_data().await? {
        n += chunk.remaining() as u64;
    }
    Ok((n, resp.status().is_success()))
}

struct WorkerResult {
    ops: Vec<OpResult>,
    bytes_in: u64,
    bytes_out: u64,
}

async fn worker(
    spec: LoadSpec,
    k: usize,
    start: Instant,
    conns: Connections,
    counters: Arc<Counters>,
) -> anyhow::Result<WorkerResult> {
    let mut out = WorkerResult {
        ops: empty_results(&spec.ops)?,
        bytes_in: 0,
        bytes_out: 0,
    };
    let mut client = match spec.proto {
        Proto::H1 => Client::H1(None),
        Proto::H2 => Client::H2(conns.h2[k % conns.h2.len()].clone()),
        Proto::H3 => Client::H3(conns.h3[k % conns.h3.len()].clone()),
    };
    let total_weight: u64 = spec.ops.iter().map(|o| u64::from(o.weight)).sum();
    let end = start + spec.duration;
    let (total, interval) = match spec.mode {
        Mode::Open { rate } => (
            (rate * spec.duration.as_secs_f64()).round() as u64,
            Duration::from_secs_f64(1.0 / rate),
        ),
        Mode::Closed => (u64::MAX, Duration::ZERO),
    };
    let mut i = k as u64;
    tokio::time::sleep_until(start).await;
    while i < total {
        let began = match spec.mode {
            Mode::Open { .. } => {
                let intended = start + interval.mul_f64(i as f64);
                if Instant::now() < intended {
                    tokio::time::sleep_until(intended).await;
                    Instant::now()
                } else {
                    intended
                }
            }
            Mode::Closed => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        let which = pick(&spec.ops, total_weight, i);
        let op = &spec.ops[which];
        let result = &mut out.ops[which];
        match client.send(&spec, op).await {
            Ok((n, true)) => {
                result.ok += 1;
                out.bytes_in += n;
                out.bytes_out += op.body.len() as u64;
            }
            Ok((_, false)) => result.errors += 1,
            Err(_) => {
                result.errors += 1;
                client.reset();
            }
        }
        result
            .latency_us
            .saturating_record(began.elapsed().as_micros().max(1) as u64);
        counters.done.fetch_add(1, Ordering::Relaxed);
        if result.errors > 0 {
            counters
                .errors
                .store(out.ops.iter().map(|o| o.errors).sum::<u64>(), Ordering::Relaxed);
        }
        i += spec.connections as u64;
    }
    Ok(out)
}

/// Stores an object of `size` bytes at `path` through `target` (HTTP/1.1 PUT).
pub async fn store_object(target: SocketAddr, host: &str, path: &str, size: u64) -> anyhow::Result<()> {
    let mut send: H1 = crate::procs::h1_client(target).await?;
    let req = http::Request::put(path)
        .header("host", host)
        .body(Full::new(Bytes::from(vec![b'o'; size as usize])))?;
    let resp = send.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "storing {path}: {}", resp.status());
    Ok(())
}

/// `1536` → `1.5KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// `64KiB`, `1MiB`, `512`, `1.5GiB` → bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size such as 64KiB"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (B, KiB, MiB, GiB)")),
    };
    Ok((n * mult as f64) as u64)
}

/// `SPEC[:WEIGHT]` (weight 1 by default).
pub fn parse_weighted(s: &str) -> Result<(String, u32), String> {
    match s.rsplit_once(':') {
        Some((v, w)) if !v.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) && !w.is_empty() => {
            let w: u32 = w.parse().map_err(|_| format!("`{s}`: bad weight"))?;
            if w == 0 {
                return Err(format!("`{s}`: a weight must be above zero"));
            }
            Ok((v.to_owned(), w))
        }
        _ => Ok((s.to_owned(), 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_the_weights() {
        let ops = vec![Op::get("/a", 7), Op::get("/b", 2), Op::put(10, 1)];
        let mut counts = [0u32; 3];
        for i in 0..100_000 {
            counts[pick(&ops, 10, i)] += 1;
        }
        for (c, want) in counts.iter().zip([70_000.0, 20_000.0, 10_000.0]) {
            assert!((f64::from(*c) - want).abs() < want * 0.03, "{counts:?}");
        }
        assert_eq!(pick(&ops, 10, 42), pick(&ops, 10, 42), "deterministic");
    }

    #[test]
    fn sizes_and_weights_parse() {
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert!(parse_bytes("12 parsecs").is_err());
        assert_eq!(parse_weighted("1MiB:20"), Ok(("1MiB".into(), 20)));
        assert_eq!(parse_weighted("/a/b"), Ok(("/a/b".into(), 1)));
        assert!(parse_weighted("x:0").is_err());
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(1 << 20), "1MiB");
    }
}
