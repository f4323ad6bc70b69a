//! Reaching the control plane: QUIC first, HTTP/2 over TCP when QUIC does not
//! connect in time (UDP blocked), both with mutual TLS. A [`Link`] is one
//! subscription's byte stream either way; the protocol above does not know which.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http::{Request, StatusCode};
use http_body_util::{BodyDataStream, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meridian_proto::wire::{ALPN_QUIC, H2_PATH};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::config::{ControlPlaneConfig, PushTransport};

/// Bytes buffered between the session and the HTTP/2 request body.
const PIPE: usize = 64 << 10;
/// Keep-alive period on either transport.
const KEEPALIVE: Duration = Duration::from_secs(2);
/// A control plane silent this long is gone (killed, or the path broke).
const IDLE: Duration = Duration::from_secs(6);

/// The control plane could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Certificates or keys unusable.
    #[error("control-plane TLS: {0}")]
    Tls(String),
    /// The address did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// Connecting failed.
    #[error("{transport}: {message}")]
    Failed {
        /// Which transport.
        transport: &'static str,
        /// Why.
        message: String,
    },
}

/// One subscription's byte stream.
pub struct Link {
    /// From the control plane.
    pub rx: Pin<Box<dyn AsyncRead + Send>>,
    /// To the control plane.
    pub tx: Pin<Box<dyn AsyncWrite + Send>>,
    /// `quic` or `h2`.
    pub transport: &'static str,
    /// Keeps the connection alive as long as the link.
    _keep: Keep,
}

enum Keep {
    Quic(quinn::Connection),
    H2(tokio::task::JoinHandle<()>),
}

impl Drop for Keep {
    fn drop(&mut self) {
        match self {
            Keep::Quic(c) => c.close(0u32.into(), b""),
            Keep::H2(t) => t.abort(),
        }
    }
}

/// A client QUIC endpoint bound to `local`, with socket buffers large enough for
/// many connections to share it without the kernel dropping bursts.
pub fn client_endpoint(local: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        crate::runtime::bind_udp(local)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Connects to one control plane.
pub struct Connector {
    address: String,
    server_name: ServerName<'static>,
    transport: PushTransport,
    quic_timeout: Duration,
    quic: quinn::ClientConfig,
    h2: Arc<rustls::ClientConfig>,
    endpoint: Mutex<Option<quinn::Endpoint>>,
}

impl Connector {
    /// Loads the CA, the client certificate and its key.
    pub fn new(cfg: &ControlPlaneConfig, crypto: Arc<CryptoProvider>) -> Result<Connector, ConnectError> {
        let tls = |path: &Path, e: &dyn std::fmt::Display| ConnectError::Tls(format!("{}: {e}", path.display()));
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&cfg.ca_file).map_err(|e| tls(&cfg.ca_file, &e))? {
            roots
                .add(c.map_err(|e| tls(&cfg.ca_file, &e))?)
                .map_err(|e| tls(&cfg.ca_file, &e))?;
        }
        let certs = CertificateDer::pem_file_iter(&cfg.cert_file)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls(&cfg.cert_file, &e))?;
        let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| tls(&cfg.key_file, &e))?;
        let base = rustls::ClientConfig::builder_with_provider(crypto)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConnectError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| tls(&cfg.cert_file, &e))?;
        let mut quic_tls = base.clone();
        quic_tls.alpn_protocols = vec![ALPN_QUIC.to_vec()];
        let mut h2 = base;
        h2.alpn_protocols = vec![b"h2".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(quic_tls)
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(KEEPALIVE))
            .max_idle_timeout(IDLE.try_into().ok())
            .max_concurrent_bidi_streams(0u32.into())
            .max_concurrent_uni_streams(0u32.into());
        quic.transport_config(Arc::new(transport));
        let host = match cfg.address.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => cfg.address.as_str(),
        };
        let name = cfg.server_name.clone().unwrap_or_else(|| host.to_owned());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| ConnectError::Tls(format!("control_plane.server_name `{name}`: {e}")))?;
        Ok(Connector {
            address: cfg.address.clone(),
            server_name,
            transport: cfg.transport,
            quic_timeout: cfg.quic_timeout.0,
            quic,
            h2: Arc::new(h2),
            endpoint: Mutex::new(None),
        })
    }

    /// Uses `endpoint` for QUIC instead of binding one (many clients in a process
    /// share one UDP socket).
    pub fn with_endpoint(self, endpoint: quinn::Endpoint) -> Connector {
        if let Ok(mut e) = self.endpoint.lock() {
            *e = Some(endpoint);
        }
        self
    }

    /// Opens a subscription stream by the configured transport.
    pub async fn connect(&self) -> Result<Link, ConnectError> {
        let addr = tokio::net::lookup_host(&self.address)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ConnectError::Resolve(self.address.clone()))?;
        match self.transport {
            PushTransport::Quic => self.quic(addr).await,
            PushTransport::H2 => self.h2(addr).await,
            PushTransport::Auto => match tokio::time::timeout(self.quic_timeout, self.quic(addr)).await {
                Ok(Ok(link)) => Ok(link),
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "QUIC to the control plane failed; trying HTTP/2");
                    self.h2(addr).await
                }
                Err(_) => {
                    tracing::info!(timeout = ?self.quic_timeout, "QUIC to the control plane timed out; trying HTTP/2");
                    self.h2(addr).await
                }
            },
        }
    }

    fn endpoint(&self, target: IpAddr) -> Result<quinn::Endpoint, ConnectError> {
        let fail = |e: &dyn std::fmt::Display| ConnectError::Failed {
            transport: "quic",
            message: e.to_string(),
        };
        let mut slot = self.endpoint.lock().map_err(|e| fail(&e))?;
        if let Some(e) = &*slot {
            return Ok(e.clone());
        }
        let local = match target {
            IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let endpoint = client_endpoint(SocketAddr::new(local, 0)).map_err(|e| fail(&e))?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    async fn quic(&self, addr: SocketAddr) -> Result<Link, ConnectError> {
        let fail = |e: &dyn std::fmt::Display| ConnectError::Failed {
            transport: "quic",
            message: e.to_string(),
        };
        let endpoint = self.endpoint(addr.ip())?;
        let name = self.server_name.to_str();
        let conn = endpoint
            .connect_with(self.quic.clone(), addr, &name)
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        let (send, recv) = conn.open_bi().await.map_err(|e| fail(&e))?;
        Ok(Link {
            rx: Box::pin(recv),
            tx: Box::pin(send),
            transport: "quic",
            _keep: Keep::Quic(conn),
        })
    }

    async fn h2(&self, addr: SocketAddr) -> Result<Link, ConnectError> {
        let fail = |e: &dyn std::fmt::Display| ConnectError::Failed {
            transport: "h2",
            message: e.to_string(),
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| fail(&e))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(self.h2.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| fail(&e))?;
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(IDLE - KEEPALIVE)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(&e))?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let keep = Keep::H2(task);
        let (tx, body) = tokio::io::duplex(PIPE);
        let body = StreamBody::new(ReaderStream::new(body).map(|r| r.map(Frame::data)));
        let uri = format!("https://{}{H2_PATH}", self.server_name.to_str());
        let req = Request::post(uri).body(body).map_err(|e| fail(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| fail(&e))?;
        if resp.status() != StatusCode::OK {
            return Err(fail(&format!("control plane answered {}", resp.status())));
        }
        let rx = StreamReader::new(BodyDataStream::new(resp.into_body()).map(|r| r.map_err(std::io::Error::other)));
        Ok(Link {
            rx: Box::pin(rx),
            tx: Box::pin(tx),
            transport: "h2",
            _keep: keep,
        })
    }
}
