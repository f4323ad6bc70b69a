//! An S3-style object store over HTTP: `PUT`, `GET` (with single `Range`), `HEAD`,
//! `DELETE` on any path, objects kept in memory or on disk. Uploads stream to their
//! destination and are committed only when the whole body arrived; a broken upload
//! leaves no object behind.
//!
//! Diagnostic endpoints under `/_sim/` exist for tests: `echo` (what reached the
//! provider), `delay?ms=N` (slow response head), `stall?bytes=N` (a body that stops),
//! `trailers` (a chunked body with trailers), `impair` (`GET` the provider's
//! [`Impairments`], `PUT` new ones as JSON, effective at once), and `stats`
//! (requests, and requests and body bytes under `/_probe`, where edges' probes go). Every response
//! carries `x-sim-provider` and `x-sim-conn` (the connection's ordinal).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::certs::Leaf;
use crate::impair::{Impairer, Impairments, impair_body};

type SimBody = UnsyncBoxBody<Bytes, io::Error>;

/// Where objects live.
#[derive(Clone, Debug)]
pub enum Storage {
    /// In process memory.
    Memory,
    /// As files in this directory.
    Disk(PathBuf),
}

/// How to run a simulated provider.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Reported in `x-sim-provider`.
    pub name: String,
    /// Where to listen (port 0 for any).
    pub addr: SocketAddr,
    /// Object storage.
    pub storage: Storage,
    /// Serve TLS (ALPN h2 and http/1.1) with this certificate.
    pub tls: Option<Leaf>,
    /// Objects shared with other providers (replicas of one another); a fresh set
    /// when `None`.
    pub objects: Option<Arc<Objects>>,
}

impl SimConfig {
    /// A provider named `name` on a free loopback port, objects in memory, no TLS.
    pub fn memory(name: &str) -> SimConfig {
        SimConfig {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            storage: Storage::Memory,
            tls: None,
            objects: None,
        }
    }
}

/// The objects a simulated provider holds. Providers given the same `Objects` act as
/// replicas: what one stores, all serve.
#[derive(Debug, Default)]
pub struct Objects {
    meta: DashMap<String, Meta>,
    memory: DashMap<String, Bytes>,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    len: u64,
    crc: u32,
}

struct State {
    name: HeaderValue,
    storage: Storage,
    objects: Arc<Objects>,
    gets: DashMap<String, u64>,
    /// What the provider does to itself (latency, bandwidth, errors, stalls).
    impair: Arc<Impairer>,
    accepted: AtomicU64,
    open: AtomicU64,
    peak: AtomicU64,
    requests: AtomicU64,
    /// Requests under `/_probe` (an edge's probes, by convention) and the body bytes
    /// answered to them.
    probe_requests: AtomicU64,
    probe_bytes: AtomicU64,
}

/// A running simulated provider; stops when dropped.
pub struct SimProvider {
    /// The bound address.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for SimProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimProvider {
    /// Binds and starts serving.
    pub async fn start(cfg: SimConfig) -> io::Result<SimProvider> {
        let socket = TcpListener::bind(cfg.addr).await?;
        let addr = socket.local_addr()?;
        if let Storage::Disk(dir) = &cfg.storage {
            tokio::fs::create_dir_all(dir).await?;
        }
        let tls = match &cfg.tls {
            None => None,
            Some(leaf) => Some(acceptor(leaf)?),
        };
        let state = Arc::new(State {
            name: HeaderValue::from_str(&cfg.name).map_err(io::Error::other)?,
            storage: cfg.storage,
            objects: cfg.objects.unwrap_or_default(),
            gets: DashMap::new(),
            impair: Arc::new(Impairer::default()),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            probe_requests: AtomicU64::new(0),
            probe_bytes: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(socket, tls, state.clone()));
        Ok(SimProvider { addr, state, task })
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Most connections open at the same time so far.
    pub fn peak_connections(&self) -> u64 {
        self.state.peak.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.state.open.load(Ordering::Relaxed)
    }

    /// Requests received so far (all paths).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Delays every response head from now on by `delay` (the provider itself is
    /// slow, as opposed to the network to it).
    pub fn set_head_delay(&self, delay: Duration) {
        let mut i = self.state.impair.get();
        i.latency_ms = delay.as_millis() as u64;
        self.state.impair.set(i);
    }

    /// Replaces what the provider does to itself, effective for new requests (and,
    /// for the bandwidth cap, for bodies already flowing).
    pub fn set_impairments(&self, i: Impairments) {
        self.state.impair.set(i);
    }

    /// What the provider does to itself now.
    pub fn impairments(&self) -> Impairments {
        self.state.impair.get()
    }

    /// How many `GET`s of the object at `path` were answered.
    pub fn gets(&self, path: &str) -> u64 {
        self.state.gets.get(path).map_or(0, |n| *n)
    }

    /// Whether an object is stored under `path`.
    pub fn has_object(&self, path: &str) -> bool {
        self.state.objects.meta.contains_key(path)
    }
}

fn acceptor(leaf: &Leaf) -> io::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).map_err(io::Error::other)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(io::Error::other)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

async fn accept_loop(socket: TcpListener, tls: Option<TlsAcceptor>, state: Arc<State>) {
    loop {
        let Ok((tcp, _)) = socket.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn_id = state.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        let open = state.open.fetch_add(1, Ordering::Relaxed) + 1;
        state.peak.fetch_max(open, Ordering::Relaxed);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = {
                let state = state.clone();
                service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(req, &state, conn_id).await) }
                })
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            }
            state.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn handle(req: Request<Incoming>, state: &State, conn_id: u64) -> Response<SimBody> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let impair = state.impair.get();
    let control = path == "/_sim/impair" || path == "/_sim/stats";
    let head = req.method() == Method::HEAD;
    if impair.latency_ms > 0 && !control {
        tokio::time::sleep(Duration::from_millis(impair.latency_ms)).await;
    }
    if !control && impair.error_rate > 0.0 && state.impair.draw() < impair.error_rate {
        let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "simulated failure\n");
        r.headers_mut().insert("x-sim-provider", state.name.clone());
        return r;
    }
    let mut resp = if let Some(diag) = path.strip_prefix("/_sim/") {
        let diag = diag.to_owned();
        diagnostics(&diag, req, state).await
    } else {
        match *req.method() {
            Method::PUT => put(&path, req.into_body(), state).await,
            Method::GET | Method::HEAD => {
                if req.method() == Method::GET {
                    *state.gets.entry(path.clone()).or_insert(0) += 1;
                }
                get(&path, &req, state).await
            }
            Method::DELETE => delete(&path, state).await,
            _ => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        }
    };
    if path.starts_with("/_probe") {
        state.probe_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            if !head {
                state.probe_bytes.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
    if !control && (impair.bandwidth_bps > 0 || impair.stall_rate > 0.0) {
        let stall = impair.stall_rate > 0.0 && state.impair.draw() < impair.stall_rate;
        let len = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let (parts, body) = resp.into_parts();
        resp = Response::from_parts(parts, impair_body(body, len, stall, state.impair.clone()));
    }
    resp.headers_mut().insert("x-sim-provider", state.name.clone());
    resp.headers_mut().insert("x-sim-conn", HeaderValue::from(conn_id));
    resp
}

fn json_response<T: serde::Serialize>(v: &T) -> Response<SimBody> {
    let mut r = Response::new(full(Bytes::from(serde_json::to_vec(v).unwrap_or_default())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<SimBody> {
    let mut r = Response::new(full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

fn full(b: Bytes) -> SimBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

fn empty() -> SimBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn file_name(state: &State, key: &str) -> Option<PathBuf> {
    let Storage::Disk(dir) = &state.storage else {
        return None;
    };
    // Hex keeps any object path inside the directory.
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    Some(dir.join(hex))
}

async fn put(key: &str, mut body: Incoming, state: &State) -> Response<SimBody> {
    let mut hasher = crc32fast::Hasher::new();
    let mut len = 0u64;
    let result: io::Result<Option<Bytes>> = async {
        match file_name(state, key) {
            Some(path) => {
                let tmp = path.with_extension(format!("part{}", std::process::id()));
                let mut file = tokio::fs::File::create(&tmp).await?;
                let streamed = async {
                    while let Some(frame) = body.frame().await {
                        let frame = frame.map_err(io::Error::other)?;
                        if let Ok(data) = frame.into_data() {
                            hasher.update(&data);
                            len += data.len() as u64;
                            file.write_all(&data).await?;
                        }
                    }
                    file.flush().await
                }
                .await;
                match streamed {
                    Ok(()) => {
                        tokio::fs::rename(&tmp, &path).await?;
                        Ok(None)
                    }
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        Err(e)
                    }
                }
            }
            None => {
                let mut buf = Vec::new();
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(io::Error::other)?;
                    if let Ok(data) = frame.into_data() {
                        hasher.update(&data);
                        len += data.len() as u64;
                        buf.extend_from_slice(&data);
                    }
                }
                Ok(Some(Bytes::from(buf)))
            }
        }
    }
    .await;
    match result {
        Ok(mem) => {
            let crc = hasher.finalize();
            if let Some(bytes) = mem {
                state.objects.memory.insert(key.to_owned(), bytes);
            }
            state.objects.meta.insert(key.to_owned(), Meta { len, crc });
            let mut r = plain(StatusCode::OK, "stored\n");
            r.headers_mut().insert(header::ETAG, etag(crc));
            r
        }
        Err(e) => {
            tracing::debug!(error = %e, key, "upload failed; nothing stored");
            plain(StatusCode::BAD_REQUEST, "upload incomplete; nothing stored\n")
        }
    }
}

fn etag(crc: u32) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{crc:08x}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// Parses a single `bytes=` range against `len`: `Ok(None)` for no range header,
/// `Err(())` for an unsatisfiable or multi-range request.
#[allow(clippy::result_unit_err)]
pub fn parse_range(value: Option<&HeaderValue>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = value else { return Ok(None) };
    let v = v.to_str().map_err(|_| ())?;
    let spec = v.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.checked_sub(1).ok_or(())?),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| ())?;
            let e: u64 = e.parse().map_err(|_| ())?;
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn get(key: &str, req: &Request<Incoming>, state: &State) -> Response<SimBody> {
    let Some(meta) = state.objects.meta.get(key).map(|m| *m) else {
        return plain(StatusCode::NOT_FOUND, "no such object\n");
    };
    let range = match parse_range(req.headers().get(header::RANGE), meta.len) {
        Ok(r) => r,
        Err(()) => {
            let mut r = plain(StatusCode::RANGE_NOT_SATISFIABLE, "bad range\n");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", meta.len)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let (start, end) = range.unwrap_or((0, meta.len.saturating_sub(1)));
    let count = if meta.len == 0 { 0 } else { end - start + 1 };
    let body = if req.method() == Method::HEAD || count == 0 {
        empty()
    } else {
        match file_name(state, key) {
            None => match state.objects.memory.get(key) {
                Some(b) => full(b.slice(start as usize..=end as usize)),
                None => return plain(StatusCode::NOT_FOUND, "no such object\n"),
            },
            Some(path) => match file_stream(path, start, count).await {
                Ok(b) => b,
                Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "read failed\n"),
            },
        }
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ETAG, etag(meta.crc));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{}", meta.len)) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

async fn file_stream(path: PathBuf, start: u64, count: u64) -> io::Result<SimBody> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(io::SeekFrom::Start(start)).await?;
    let stream = futures_util::stream::unfold((file, count), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; left.min(64 * 1024) as usize];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "object shrank")),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    Ok(StreamBody::new(stream).boxed_unsync())
}

async fn delete(key: &str, state: &State) -> Response<SimBody> {
    if state.objects.meta.remove(key).is_none() {
        return plain(StatusCode::NOT_FOUND, "no such object\n");
    }
    state.objects.memory.remove(key);
    if let Some(path) = file_name(state, key) {
        let _ = tokio::fs::remove_file(path).await;
    }
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn diagnostics(what: &str, req: Request<Incoming>, state: &State) -> Response<SimBody> {
    let q = query(&req);
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    match what {
        "echo" => {
            let (parts, mut body) = req.into_parts();
            let mut hasher = crc32fast::Hasher::new();
            let mut len = 0u64;
            let mut trailers = HeaderMap::new();
            let mut complete = true;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => {
                            hasher.update(&d);
                            len += d.len() as u64;
                        }
                        Err(f) => {
                            if let Ok(t) = f.into_trailers() {
                                trailers.extend(t);
                            }
                        }
                    },
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
            }
            let doc = serde_json::json!({
                "provider": state.name.to_str().unwrap_or(""),
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "version": format!("{:?}", parts.version),
                "headers": pairs(&parts.headers),
                "body_bytes": len,
                "body_crc32": hasher.finalize(),
                "body_complete": complete,
                "trailers": pairs(&trailers),
            });
            let mut r = Response::new(full(Bytes::from(doc.to_string())));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        "delay" => {
            tokio::time::sleep(Duration::from_millis(num("ms"))).await;
            plain(StatusCode::OK, "late\n")
        }
        "stall" => {
            let n = num("bytes") as usize;
            let first = Bytes::from(vec![b'x'; n]);
            let stream = futures_util::stream::iter([Ok::<_, io::Error>(Frame::data(first))])
                .chain(futures_util::stream::pending());
            let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
            if q.contains_key("length") {
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n * 2));
            }
            r
        }
        "impair" if req.method() == Method::PUT => {
            let body = match Limited::new(req.into_body(), 64 << 10).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return plain(StatusCode::BAD_REQUEST, "body too large\n"),
            };
            match serde_json::from_slice::<Impairments>(&body)
                .map_err(|e| e.to_string())
                .and_then(|i| i.check().map(|()| i))
            {
                Ok(i) => {
                    state.impair.set(i);
                    json_response(&i)
                }
                Err(e) => {
                    let mut r = Response::new(full(Bytes::from(format!("{e}\n"))));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r
                }
            }
        }
        "impair" => json_response(&state.impair.get()),
        "stats" => json_response(&serde_json::json!({
            "requests": state.requests.load(Ordering::Relaxed),
            "probe_requests": state.probe_requests.load(Ordering::Relaxed),
            "probe_bytes": state.probe_bytes.load(Ordering::Relaxed),
        })),
        "trailers" => {
            let data = Bytes::from_static(b"hello, trailers");
            let mut t = HeaderMap::new();
            t.insert("x-checksum", HeaderValue::from(crc32fast::hash(&data)));
            let frames = [Ok::<_, io::Error>(Frame::data(data)), Ok(Frame::trailers(t))];
            let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
            r.headers_mut()
                .insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
            r
        }
        _ => plain(StatusCode::NOT_FOUND, "unknown diagnostic\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;
    use http::HeaderValue;

    fn r(v: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
        parse_range(Some(&HeaderValue::from_str(v).unwrap()), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(r("bytes=0-3", 10), Ok(Some((0, 3))));
        assert_eq!(r("bytes=5-", 10), Ok(Some((5, 9))));
        assert_eq!(r("bytes=-4", 10), Ok(Some((6, 9))));
        assert_eq!(r("bytes=8-100", 10), Ok(Some((8, 9))));
        assert_eq!(r("bytes=10-", 10), Err(()));
        assert_eq!(r("bytes=0-1,3-4", 10), Err(()));
        assert_eq!(r("items=0-1", 10), Err(()));
    }
}
