//! Shared test fixtures: real providers (the simulated object store), real edges
//! (in-process or as the real binary), real clients over TCP and TLS.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod h3;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_edge::{Edge, EdgeConfig};
use meridian_sim::certs::Leaf;
use meridian_sim::{SimConfig, SimProvider, Storage, TestCa};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub type Body = Full<Bytes>;

/// A simulated provider on a free loopback port, objects in memory.
pub async fn provider(name: &str) -> SimProvider {
    SimProvider::start(SimConfig {
        name: name.into(),
        addr: "127.0.0.1:0".parse().unwrap(),
        storage: Storage::Memory,
        tls: None,
        objects: None,
    })
    .await
    .unwrap()
}

/// A temp dir holding a CA and certificates for the edge's listener.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
}

impl Certs {
    pub fn new() -> Certs {
        Certs {
            dir: tempfile::tempdir().unwrap(),
            ca: TestCa::new("meridian test CA").unwrap(),
        }
    }

    /// Issues a certificate for `names` and writes `<file>.crt` and `<file>.key`.
    pub fn write(&self, file: &str, names: &[&str]) -> Leaf {
        let leaf = self.ca.issue(names).unwrap();
        std::fs::write(self.dir.path().join(format!("{file}.crt")), &leaf.cert_pem).unwrap();
        std::fs::write(self.dir.path().join(format!("{file}.key")), &leaf.key_pem).unwrap();
        leaf
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A minimal edge config: plain HTTP (and HTTPS when `tls` holds certificate
/// tables) on free ports, one default provider, plus `extra` TOML appended.
pub fn config_toml(provider: SocketAddr, https: bool, extra: &str) -> String {
    // Probes would add requests that tests count; the probe tests turn them on.
    let mut s =
        String::from("[probes]\nenabled = false\n[listeners]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n");
    if https {
        s.push_str("https = \"127.0.0.1:0\"\n");
    }
    s.push_str(&format!(
        "\n[[fleet.providers]]\nid = \"p1\"\njurisdiction = \"DE\"\n[fleet.providers.endpoint]\naddress = \"{provider}\"\n\n[fleet.policy]\nunknown_origin = \"DE\"\nrules = [{{ name = \"any\", origin = \"*\", allow = [\"*\"] }}]\n\n"
    ));
    s.push_str(extra);
    s
}

/// Starts an edge in this process.
pub async fn edge(toml: &str, base: &Path) -> Edge {
    let cfg = EdgeConfig::parse(toml, "test.toml", base).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    Edge::start(cfg).await.unwrap()
}

/// Opens an HTTP/1.1 connection.
pub async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    h1_on(TcpStream::connect(addr).await.unwrap()).await
}

/// Speaks HTTP/1.1 over an established stream (TCP or TLS).
pub async fn h1_on<I>(io: I) -> hyper::client::conn::http1::SendRequest<Body>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// GET `path` with `Host: host` on an open connection.
pub async fn get_on(
    send: &mut hyper::client::conn::http1::SendRequest<Body>,
    host: &str,
    path: &str,
) -> Response<Incoming> {
    send.send_request(Request::get(path).header("host", host).body(Body::default()).unwrap())
        .await
        .unwrap()
}

/// The status of `GET path` on the admin listener, if it answers at all.
pub async fn admin_status(admin: SocketAddr, path: &str) -> Option<u16> {
    let tcp = TcpStream::connect(admin).await.ok()?;
    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(c);
    let r = s
        .send_request(Request::get(path).body(Body::default()).unwrap())
        .await
        .ok()?;
    Some(r.status().as_u16())
}

/// GET `path` with `Host: host` over a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Response<Incoming> {
    let mut s = h1(addr).await;
    get_on(&mut s, host, path).await
}

/// Collects a body (small test bodies only).
pub async fn text(resp: Response<Incoming>) -> String {
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// The `/_sim/echo` document for a response.
pub async fn echo_json(resp: Response<Incoming>) -> serde_json::Value {
    serde_json::from_str(&text(resp).await).unwrap()
}

/// Values of header `name` as the provider saw them in an echo document.
pub fn echoed(doc: &serde_json::Value, name: &str) -> Vec<String> {
    doc["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0].as_str() == Some(name))
        .map(|p| p[1].as_str().unwrap().to_owned())
        .collect()
}

/// Writes raw bytes and reads until the peer closes or `limit` passes; returns what
/// was read and whether the peer closed.
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (String, bool) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    read_until_close(&mut tcp, limit).await
}

/// Reads until `needle` appears (or the limit passes); returns what was read.
pub async fn read_until(tcp: &mut TcpStream, needle: &str, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while !String::from_utf8_lossy(&out).contains(needle) {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn read_until_close(tcp: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// Client TLS trusting `ca_pem`, offering `alpn`, limited to `versions`.
pub fn client_tls(
    ca_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS connection to `addr` presenting `sni`.
pub async fn tls(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await
}

/// An HTTP/2 connection over TLS.
pub async fn h2_tls(addr: SocketAddr, sni: &str, ca_pem: &str) -> hyper::client::conn::http2::SendRequest<Body> {
    let cfg = client_tls(ca_pem, &[b"h2"], rustls::ALL_VERSIONS);
    let stream = tls(addr, sni, cfg).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Polls `f` until it returns `Some`, at most `limit`.
pub async fn poll_until<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real `meridian-edge` binary running a config file.
pub struct EdgeProcess {
    pub child: Child,
    pub config: PathBuf,
}

impl EdgeProcess {
    /// Starts the binary and waits until its admin `/readyz` answers 200.
    pub async fn start(config: PathBuf, admin: SocketAddr) -> EdgeProcess {
        Self::spawn(config, admin, Stdio::inherit()).await
    }

    /// As [`start`](Self::start), with the edge's log written to `log`.
    pub async fn start_logged(config: PathBuf, admin: SocketAddr, log: &Path) -> EdgeProcess {
        let file = std::fs::File::create(log).unwrap();
        Self::spawn_with(config, admin, Stdio::from(file), Stdio::inherit()).await
    }

    /// As [`start`](Self::start), with the access log (stdout) written to `access`.
    pub async fn start_with_access_log(config: PathBuf, admin: SocketAddr, access: &Path) -> EdgeProcess {
        let file = std::fs::File::create(access).unwrap();
        Self::spawn_with(config, admin, Stdio::inherit(), Stdio::from(file)).await
    }

    /// As [`start`](Self::start), with the access log appended to the file `access`
    /// (`--access-log`).
    pub async fn start_with_access_file(config: PathBuf, admin: SocketAddr, access: &Path) -> EdgeProcess {
        let args = ["--access-log".into(), access.as_os_str().to_owned()];
        Self::spawn_args(config, admin, Stdio::inherit(), Stdio::inherit(), &args).await
    }

    async fn spawn(config: PathBuf, admin: SocketAddr, stderr: Stdio) -> EdgeProcess {
        Self::spawn_with(config, admin, stderr, Stdio::inherit()).await
    }

    async fn spawn_with(config: PathBuf, admin: SocketAddr, stderr: Stdio, stdout: Stdio) -> EdgeProcess {
        Self::spawn_args(config, admin, stderr, stdout, &[]).await
    }

    async fn spawn_args(
        config: PathBuf,
        admin: SocketAddr,
        stderr: Stdio,
        stdout: Stdio,
        args: &[std::ffi::OsString],
    ) -> EdgeProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_meridian-edge"))
            .arg("run")
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("MERIDIAN_LOG", "info")
            .stdin(Stdio::null())
            .stderr(stderr)
            .stdout(stdout)
            .spawn()
            .unwrap();
        let p = EdgeProcess { child, config };
        poll_until(Duration::from_secs(20), || async {
            (admin_status(admin, "/readyz").await == Some(200)).then_some(())
        })
        .await;
        p
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Waits for exit (bounded) and returns the exit status.
    pub async fn wait(mut self, limit: Duration) -> std::process::ExitStatus {
        poll_until(limit, || {
            let r = self.child.try_wait().unwrap();
            async move { r }
        })
        .await
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Picks a free loopback port (bound then released; fine for tests on loopback).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A client verifier that accepts any certificate and remembers which one it saw, so
/// tests can check exactly which certificate the edge chose.
#[derive(Debug)]
pub struct SeenCert {
    pub seen: std::sync::Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl SeenCert {
    pub fn new() -> Arc<SeenCert> {
        Arc::new(SeenCert {
            seen: Default::default(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    pub fn config(self: &Arc<Self>) -> Arc<rustls::ClientConfig> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

impl rustls::client::danger::ServerCertVerifier for SeenCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// DER of the first certificate in a PEM string.
pub fn der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Which certificate the edge serves for `sni` (None when the handshake fails).
pub async fn served_cert(addr: SocketAddr, sni: &str) -> Option<Vec<u8>> {
    let seen = SeenCert::new();
    match tls(addr, sni, seen.config()).await {
        Ok(_) => seen.seen.lock().unwrap().clone(),
        Err(_) => None,
    }
}

/// `[tls]` tables for certificates written by [`Certs::write`].
pub fn tls_tables(certs: &[(&str, &[&str])], default: Option<&str>) -> String {
    let mut s = String::from("[tls]\n");
    if let Some(d) = default {
        s.push_str(&format!("default_certificate = \"{d}\"\n"));
    }
    for (name, names) in certs {
        let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        s.push_str(&format!(
            "[[tls.certificates]]\nname = \"{name}\"\nserver_names = [{}]\ncert = \"{name}.crt\"\nkey = \"{name}.key\"\n",
            list.join(", ")
        ));
    }
    s
}
