//! Assembles a running edge from a checked config: binds listeners, builds the
//! snapshot, starts one worker thread per core, and owns reload and graceful
//! shutdown.
//!
//! Reload is all-or-nothing: a config or certificate that fails to load leaves the
//! running one untouched. Shutdown stops accepting at once and gives in-flight
//! requests until the drain deadline; it never cuts a request that finishes in time.

use std::net::SocketAddr;
use std::sync::Arc;

use meridian_proto::{CompiledPolicy, ProviderState};
use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::config::EdgeConfig;
use crate::headers::ViaValues;
use crate::listener::Listener;
use crate::origin::{GeoipError, OriginResolver, open_geoip};
use crate::proxy::{Proxy, Snapshot};
use crate::route::{RoutedProvider, Routing};
use crate::runtime::{bind_reuseport, set_current_worker, worker_count};
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
    /// The GeoIP database is unusable.
    #[error(transparent)]
    Geoip(#[from] GeoipError),
    /// A worker thread could not be started.
    #[error("cannot start a worker thread: {source}")]
    Worker {
        /// Why.
        source: std::io::Error,
    },
}

/// A running edge: worker threads serving the listeners, and the handles to reload
/// and drain them. Dropping it starts a drain.
pub struct Edge {
    proxy: Arc<Proxy>,
    resolver: Option<Arc<SniResolver>>,
    crypto: Arc<CryptoProvider>,
    drain: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    max_connections: u32,
    workers: usize,
    config: EdgeConfig,
    /// Bound plain HTTP address.
    pub http_addr: Option<SocketAddr>,
    /// Bound HTTPS address.
    pub https_addr: Option<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: Option<SocketAddr>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.drain.send(true);
    }
}

/// The sockets and shared state one worker thread serves.
struct WorkerParts {
    index: usize,
    http: Option<std::net::TcpListener>,
    https: Option<std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
}

impl Edge {
    /// Binds every listener (one socket per worker with `SO_REUSEPORT`) and starts
    /// the worker threads.
    pub async fn start(config: EdgeConfig) -> Result<Edge, StartError> {
        let crypto = tls::crypto_provider();
        let workers = worker_count(config.runtime.workers);
        let snapshot = build_snapshot(&config, &crypto, None, workers)?;
        let proxy = Proxy::new(snapshot);
        let (drain, drain_rx) = watch::channel(false);
        let max_connections = config.limits.max_connections;
        let permits = Arc::new(Semaphore::new(max_connections as usize));

        let resolver = match config.listeners.https {
            Some(_) => Some(SniResolver::new(&config.tls, crypto.clone())?),
            None => None,
        };
        let acceptor = match &resolver {
            Some(r) => Some(TlsAcceptor::from(tls::server_config(r.clone())?)),
            None => None,
        };

        let mut http = bind_all("http", config.listeners.http, workers)?;
        let mut https = bind_all("https", config.listeners.https, workers)?;
        let mut admin = match config.listeners.admin {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| StartError::Bind {
                        what: "admin",
                        addr,
                        source,
                    })?;
                Some(l)
            }
            None => None,
        };
        let local = |v: &[std::net::TcpListener]| v.first().and_then(|l| l.local_addr().ok());
        let edge = Edge {
            proxy: proxy.clone(),
            resolver,
            crypto,
            drain,
            permits: permits.clone(),
            max_connections,
            workers,
            config: config.clone(),
            http_addr: local(&http),
            https_addr: local(&https),
            admin_addr: admin.as_ref().and_then(|l| l.local_addr().ok()),
        };

        if config.probes.enabled {
            tokio::spawn(crate::probe::run(
                proxy.clone(),
                config.probes.clone(),
                drain_rx.clone(),
            ));
        }
        for index in 0..workers {
            let parts = WorkerParts {
                index,
                http: http.pop(),
                https: https.pop(),
                admin: if index == 0 { admin.take() } else { None },
            };
            let proxy = proxy.clone();
            let acceptor = acceptor.clone();
            let limits = config.limits.clone();
            let permits = permits.clone();
            let drain = drain_rx.clone();
            std::thread::Builder::new()
                .name(format!("meridian-w{index}"))
                .spawn(move || run_worker(parts, proxy, acceptor, limits, permits, drain, max_connections))
                .map_err(|source| StartError::Worker { source })?;
        }
        Ok(edge)
    }

    /// Applies a new config: certificates, providers and routing. Listener
    /// addresses and limits need a restart; a change to them is reported and ignored.
    /// On any error nothing changes.
    pub fn reload(&mut self, config: EdgeConfig) -> Result<(), StartError> {
        let snapshot = build_snapshot(&config, &self.crypto, Some(&self.proxy), self.workers)?;
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

    /// Worker threads serving the listeners.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The config in force.
    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }
}

fn bind_all(
    what: &'static str,
    addr: Option<SocketAddr>,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    match addr {
        None => Ok(Vec::new()),
        Some(addr) => bind_reuseport(addr, workers).map_err(|source| StartError::Bind { what, addr, source }),
    }
}

/// One worker thread: a single-threaded runtime serving this worker's sockets until
/// drain, then until every connection has closed.
fn run_worker(
    parts: WorkerParts,
    proxy: Arc<Proxy>,
    acceptor: Option<TlsAcceptor>,
    limits: crate::config::Limits,
    permits: Arc<Semaphore>,
    mut drain: watch::Receiver<bool>,
    max_connections: u32,
) {
    set_current_worker(parts.index);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = parts.index, error = %e, "cannot start worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let serve = |socket: std::net::TcpListener, tls: Option<TlsAcceptor>| match TcpListener::from_std(socket) {
            Ok(socket) => {
                let l = Listener::new(proxy.clone(), tls, limits.clone(), permits.clone(), drain.clone());
                tokio::spawn(l.serve(socket));
            }
            Err(e) => {
                tracing::error!(worker = parts.index, error = %e, "cannot register listener")
            }
        };
        if let Some(s) = parts.http {
            serve(s, None);
        }
        if let (Some(s), Some(a)) = (parts.https, acceptor.clone()) {
            serve(s, Some(a));
        }
        if let Some(s) = parts.admin {
            match TcpListener::from_std(s) {
                Ok(s) => {
                    tokio::spawn(admin::serve(s, drain.clone()));
                }
                Err(e) => tracing::error!(error = %e, "cannot register admin listener"),
            }
        }
        let _ = drain.wait_for(|d| *d).await;
        // Connections on this worker finish on this worker's event loop.
        let _ = permits.acquire_many(max_connections).await;
    });
}

/// Builds the request-path snapshot. Pools whose provider spec did not change are
/// carried over from `previous`, so a reload keeps warm connections.
fn build_snapshot(
    config: &EdgeConfig,
    crypto: &Arc<CryptoProvider>,
    previous: Option<&Proxy>,
    workers: usize,
) -> Result<Snapshot, StartError> {
    let roots = tls::upstream_roots(config.upstream.ca_file.as_deref())?;
    let old = previous.map(|p| p.snapshot());
    let previous_provider = |id: &meridian_proto::ProviderId| {
        old.as_ref().and_then(|s| {
            s.routing
                .providers()
                .iter()
                .flatten()
                .find(|p| p.spec.id == *id)
                .cloned()
        })
    };
    let mut providers = Vec::with_capacity(config.fleet.providers.len());
    for spec in &config.fleet.providers {
        if spec.state == ProviderState::Disabled {
            providers.push(None);
            continue;
        }
        let before = previous_provider(&spec.id);
        // Connections survive a reload when nothing about reaching the provider
        // changed; measurements survive whatever changed.
        let pool = match &before {
            Some(p)
                if p.spec.endpoint == spec.endpoint
                    && p.spec.protocol == spec.protocol
                    && p.spec.max_connections == spec.max_connections
                    && config.upstream.ca_file.is_none() =>
            {
                p.pool.clone()
            }
            _ => Arc::new(ProviderPool::new(spec, &config.upstream, &roots, crypto, workers)?),
        };
        let stats = before.map(|p| p.stats.clone()).unwrap_or_default();
        providers.push(Some(Arc::new(RoutedProvider {
            spec: spec.clone(),
            pool,
            stats,
        })));
    }
    let geoip = match &config.origin.geoip_db {
        Some(path) => Some(open_geoip(path)?),
        None => None,
    };
    let origin = OriginResolver::new(&config.origin, &config.fleet, &config.forwarding, geoip);
    let routing = Routing::new(origin, CompiledPolicy::compile(&config.fleet), providers);
    let via = ViaValues::new(&config.forwarding.via);
    Ok(Snapshot {
        routing,
        access_log: config.log.access,
        hedging: config.hedging.clone(),
        forwarding: config.forwarding.clone(),
        via,
        max_uri_bytes: config.limits.max_uri_bytes as usize,
        body_idle: config.upstream.body_idle_timeout.0,
    })
}
