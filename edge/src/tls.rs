//! TLS for both sides of the edge: the listener's certificates chosen by SNI, and the
//! client configuration used to reach TLS providers.
//!
//! An unknown or absent SNI gets the configured default certificate or a failed
//! handshake, never some other tenant's certificate. Reloads swap the whole certificate
//! set at once; a handshake sees either the old set or the new one. This module must
//! never log private key material.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// A certificate or key that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the material or the settings.
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: String,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// quinn refused the TLS settings for QUIC.
    #[error("{context}: {message}")]
    Quic {
        /// What was being built.
        context: String,
        /// quinn's reason.
        message: String,
    },
}

/// The crypto provider the whole process uses (ring: one provider, no aws-lc build).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates indexed by server name: exact names first, then `*.suffix` wildcards.
#[derive(Debug, Default)]
struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertSet {
    fn load(cfg: &TlsConfig, provider: &CryptoProvider) -> Result<CertSet, TlsError> {
        let mut set = CertSet::default();
        for (i, c) in cfg.certificates.iter().enumerate() {
            let chain = read_certs(&c.cert)?;
            let key = PrivateKeyDer::from_pem_file(&c.key).map_err(|e| TlsError::Pem {
                path: c.key.display().to_string(),
                message: format!("no usable private key: {e}"),
            })?;
            let ck = CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Rustls {
                context: format!("certificate `{}` ({})", c.name, c.cert.display()),
                source,
            })?;
            let ck = Arc::new(ck);
            for name in &c.server_names {
                match name.strip_prefix("*.") {
                    Some(suffix) => set.wildcard.insert(suffix.to_owned(), ck.clone()),
                    None => set.exact.insert(name.clone(), ck.clone()),
                };
            }
            if cfg.default_certificate == Some(i) {
                set.default = Some(ck);
            }
        }
        Ok(set)
    }

    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        // rustls hands us the SNI already lower-cased and validated as a DNS name.
        if let Some(ck) = self.exact.get(name) {
            return Some(ck.clone());
        }
        // A wildcard covers exactly one label (RFC 6125 6.4.3).
        if let Some((_, suffix)) = name.split_once('.') {
            if let Some(ck) = self.wildcard.get(suffix) {
                return Some(ck.clone());
            }
        }
        self.default.clone()
    }
}

/// Picks the listener's certificate by SNI from a set that can be replaced while
/// serving.
#[derive(Debug)]
pub struct SniResolver {
    set: ArcSwap<CertSet>,
    provider: Arc<CryptoProvider>,
}

impl SniResolver {
    /// Loads every configured certificate; fails on the first one that is unusable.
    pub fn new(cfg: &TlsConfig, provider: Arc<CryptoProvider>) -> Result<Arc<Self>, TlsError> {
        let set = CertSet::load(cfg, &provider)?;
        Ok(Arc::new(SniResolver {
            set: ArcSwap::from_pointee(set),
            provider,
        }))
    }

    /// Re-reads the certificates from disk. On error the current set stays in use.
    /// Connections already established keep the certificate they were served.
    pub fn reload(&self, cfg: &TlsConfig) -> Result<(), TlsError> {
        let set = CertSet::load(cfg, &self.provider)?;
        self.set.store(Arc::new(set));
        Ok(())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.set.load().find(hello.server_name())
    }
}

impl SniResolver {
    /// The crypto provider its keys were loaded with.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }
}

/// The listener's TLS configuration: TLS 1.2 and 1.3 only, ALPN h2 then http/1.1.
pub fn server_config(resolver: Arc<SniResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = resolver.provider.clone();
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            context: "server TLS versions".into(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Root certificates for verifying providers: the configured CA bundle, or the
/// system's store.
pub fn upstream_roots(ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|source| TlsError::Rustls {
                    context: format!("CA certificate in {}", path.display()),
                    source,
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for err in &found.errors {
                tracing::warn!(error = %err, "skipping unreadable system root certificate");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "loaded system root certificates");
        }
    }
    Ok(Arc::new(roots))
}

/// Client TLS configuration for one provider: TLS 1.2 and 1.3, the given ALPN.
pub fn client_config(
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            context: "client TLS versions".into(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |message: String| TlsError::Pem {
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no certificates found".into()));
    }
    Ok(certs)
}
