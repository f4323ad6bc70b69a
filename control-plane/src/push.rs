//! Push: edges subscribe over QUIC (or, where UDP is blocked, over one HTTP/2
//! exchange on TCP, same port), both with mutual TLS, and receive the fleet as a
//! snapshot then deltas, and fleet health as it changes; they answer every version
//! with an ACK or a NACK and report what they see of the providers.
//!
//! The transports only authenticate and carry bytes; the protocol is in
//! [`session`], the shared state in [`hub`]. Nothing here writes the store.

mod h2;
pub mod hub;
mod quic;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::PushConfig;
pub use hub::Hub;

/// Push could not start.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Certificates, key or client CA unusable.
    #[error("push TLS: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `quic` or `h2`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Running push listeners; dropping it stops them.
#[derive(Debug)]
pub struct PushHandle {
    /// Bound QUIC address.
    pub quic_addr: Option<SocketAddr>,
    /// Bound HTTP/2 address.
    pub h2_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: Option<quinn::Endpoint>,
}

impl Drop for PushHandle {
    fn drop(&mut self) {
        if let Some(e) = &self.endpoint {
            e.close(0u32.into(), b"control plane stopping");
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds the configured transports and serves subscriptions from `hub`. Both use
/// the same port number, so an edge needs one address for either.
pub async fn start(cfg: &PushConfig, hub: Arc<Hub>) -> Result<PushHandle, PushError> {
    // With port 0 (tests), QUIC picks a port and HTTP/2 must get the same number on
    // TCP, which something else may hold: pick again a few times.
    let attempts = if cfg.listen.port() == 0 && cfg.quic && cfg.h2 {
        20
    } else {
        1
    };
    let mut last = None;
    for _ in 0..attempts {
        match start_once(cfg, hub.clone()).await {
            Err(PushError::Bind {
                what: "h2",
                addr,
                source,
            }) if source.kind() == std::io::ErrorKind::AddrInUse => {
                last = Some(PushError::Bind {
                    what: "h2",
                    addr,
                    source,
                });
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| PushError::Tls("no attempt made".into())))
}

async fn start_once(cfg: &PushConfig, hub: Arc<Hub>) -> Result<PushHandle, PushError> {
    let mut handle = PushHandle {
        quic_addr: None,
        h2_addr: None,
        tasks: Vec::new(),
        endpoint: None,
    };
    if cfg.quic {
        let tls = server_tls(cfg, &[meridian_proto::wire::ALPN_QUIC])?;
        let (endpoint, task) = quic::start(cfg.listen, tls, hub.clone())?;
        handle.quic_addr = endpoint.local_addr().ok();
        handle.endpoint = Some(endpoint);
        handle.tasks.push(task);
    }
    if cfg.h2 {
        let tls = server_tls(cfg, &[b"h2"])?;
        let addr = match (cfg.listen.port(), handle.quic_addr) {
            (0, Some(q)) => q,
            _ => cfg.listen,
        };
        // On error `handle` drops, closing the QUIC endpoint too.
        let (bound, task) = h2::start(addr, tls, hub).await?;
        handle.h2_addr = Some(bound);
        handle.tasks.push(task);
    }
    Ok(handle)
}

/// TLS 1.3 with a required, verified client certificate.
fn server_tls(cfg: &PushConfig, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, PushError> {
    let tls = |what: &str, e: &dyn std::fmt::Display| PushError::Tls(format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(&cfg.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls(&cfg.cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| tls(&cfg.key.display().to_string(), &e))?;
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::pem_file_iter(&cfg.client_ca)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls(&cfg.client_ca.display().to_string(), &e))?;
    for c in ca {
        roots
            .add(c)
            .map_err(|e| tls(&cfg.client_ca.display().to_string(), &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls("client_ca", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls("protocol", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls("cert", &e))?;
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}
