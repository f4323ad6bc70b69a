//! Assembles a running edge from a checked config: binds listeners, builds the
//! snapshot, and owns reload and graceful shutdown.
//!
//! Reload is all-or-nothing: a config or certificate that fails to load leaves the
//! running one untouched. Shutdown stops accepting at once and gives in-flight
//! requests until the drain deadline; it never cuts a request that finishes in time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use meridian_proto::ProviderState;
use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::config::EdgeConfig;
use crate::listener::Listener;
use crate::proxy::{Proxy, Snapshot};
use crate::route::Router;
use crate::tls::{self, SniResolver, TlsError};
use crate::upstream::{PoolError, ProviderPool};

/// The edge could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Certificates or CA bundle unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A provider pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// A running edge.
pub struct Edge {
    proxy: Arc<Proxy>,
    resolver: Option<Arc<SniResolver>>,
    crypto: Arc<CryptoProvider>,
    drain: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    max_connections: u32,
    config: EdgeConfig,
    /// Bound plain HTTP address.
    pub http_addr: Option<SocketAddr>,
    /// Bound HTTPS address.
    pub https_addr: Option<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: Option<SocketAddr>,
}

impl Edge {
    /// Binds every listener and starts serving.
    pub async fn start(config: EdgeConfig) -> Result<Edge, StartError> {
        let crypto = tls::crypto_provider();
        let snapshot = build_snapshot(&config, &crypto, None)?;
        let proxy = Proxy::new(snapshot);
        let (drain, drain_rx) = watch::channel(false);
        let max_connections = config.limits.max_connections;
        let permits = Arc::new(Semaphore::new(max_connections as usize));

        let resolver = match config.listeners.https {
            Some(_) => Some(SniResolver::new(&config.tls, crypto.clone())?),
            None => None,
        };

        let mut edge = Edge {
            proxy: proxy.clone(),
            resolver: resolver.clone(),
            crypto,
            drain,
            permits: permits.clone(),
            max_connections,
            config: config.clone(),
            http_addr: None,
            https_addr: None,
            admin_addr: None,
        };

        if let Some(addr) = config.listeners.http {
            let socket = bind("http", addr).await?;
            edge.http_addr = socket.local_addr().ok();
            let l = Listener::new(
                proxy.clone(),
                None,
                config.limits.clone(),
                permits.clone(),
                drain_rx.clone(),
            );
            tokio::spawn(l.serve(socket));
        }
        if let (Some(addr), Some(resolver)) = (config.listeners.https, resolver) {
            let socket = bind("https", addr).await?;
            edge.https_addr = socket.local_addr().ok();
            let acceptor = TlsAcceptor::from(tls::server_config(resolver)?);
            let l = Listener::new(
                proxy.clone(),
                Some(acceptor),
                config.limits.clone(),
                permits.clone(),
                drain_rx.clone(),
            );
            tokio::spawn(l.serve(socket));
        }
        if let Some(addr) = config.listeners.admin {
            let socket = bind("admin", addr).await?;
            edge.admin_addr = socket.local_addr().ok();
            tokio::spawn(admin::serve(socket, drain_rx));
        }
        Ok(edge)
    }

    /// Applies a new config: certificates, providers and routing. Listener
    /// addresses and limits need a restart; a change to them is reported and ignored.
    /// On any error nothing changes.
    pub fn reload(&mut self, config: EdgeConfig) -> Result<(), StartError> {
        let snapshot = build_snapshot(&config, &self.crypto, Some(&self.proxy))?;
        if let Some(resolver) = &self.resolver {
            resolver.reload(&config.tls)?;
        }
        self.proxy.swap(snapshot);
        if config.listeners.http != self.config.listeners.http
            || config.listeners.https != self.config.listeners.https
            || config.listeners.admin != self.config.listeners.admin
        {
            tracing::warn!("listener addresses changed in the config; they take effect on restart");
        }
        self.config = config;
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish until the configured drain
    /// deadline, and returns whether every connection finished in time.
    pub async fn shutdown(self) -> bool {
        let _ = self.drain.send(true);
        let deadline = self.config.shutdown.drain_timeout.0;
        // All permits back means every connection has closed.
        let all = self.permits.acquire_many(self.max_connections);
        matches!(tokio::time::timeout(deadline, all).await, Ok(Ok(_)))
    }

    /// The config in force.
    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Builds the request-path snapshot. Pools whose provider spec did not change are
/// carried over from `previous`, so a reload keeps warm connections.
fn build_snapshot(
    config: &EdgeConfig,
    crypto: &Arc<CryptoProvider>,
    previous: Option<&Proxy>,
) -> Result<Snapshot, StartError> {
    let roots = tls::upstream_roots(config.upstream.ca_file.as_deref())?;
    let old = previous.map(|p| p.snapshot());
    let mut pools = HashMap::new();
    for spec in config
        .providers
        .iter()
        .filter(|p| p.state != ProviderState::Disabled)
    {
        let reused = old
            .as_ref()
            .and_then(|s| s.router.pools().get(&spec.id))
            .filter(|p| p.spec() == spec && config.upstream.ca_file.is_none())
            .cloned();
        let pool = match reused {
            Some(p) => p,
            None => Arc::new(ProviderPool::new(spec, &config.upstream, &roots, crypto)?),
        };
        pools.insert(spec.id.clone(), pool);
    }
    let router = Router::new(
        pools,
        config.routing.hosts.iter().cloned(),
        config.routing.default_provider.clone(),
    );
    let via = HeaderValue::from_str(&config.forwarding.via)
        .unwrap_or_else(|_| HeaderValue::from_static("meridian"));
    Ok(Snapshot {
        router,
        forwarding: config.forwarding.clone(),
        via,
        max_uri_bytes: config.limits.max_uri_bytes as usize,
        body_idle: config.upstream.body_idle_timeout.0,
    })
}
