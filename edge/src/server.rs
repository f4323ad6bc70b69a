//! Assembles a running edge from a checked config: binds listeners, builds the
//! snapshot, starts one worker thread per core, and owns reload and graceful
//! shutdown.
//!
//! Reload is all-or-nothing: a config, certificate or pushed fleet that fails to
//! load leaves the running one untouched. The fleet comes from the config file, or,
//! with a control plane, from push (starting from the last acknowledged snapshot on
//! disk); a file reload never replaces a pushed fleet. Shutdown stops accepting at
//! once and gives in-flight requests until the drain deadline; it never cuts a
//! request that finishes in time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

use meridian_proto::wire::{Observation, Running};
use meridian_proto::{CompiledPolicy, Fleet, Policy, ProviderId, ProviderState, UnknownOrigin};
use rustls::crypto::CryptoProvider;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::config::EdgeConfig;
use crate::headers::ViaValues;
use crate::listener::{Listener, h3};
use crate::origin::{GeoipError, OriginResolver, open_geoip};
use crate::proxy::{Proxy, Snapshot};
use crate::push::{self, ConnectError, Connector, FleetSink, PushStatus, persist};
use crate::record::{self, ProviderMetrics};
use crate::route::{RoutedProvider, Routing};
use crate::runtime::{bind_reuseport, bind_udp, set_current_worker, worker_count};
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
    /// The control-plane client could not be set up.
    #[error(transparent)]
    ControlPlane(#[from] ConnectError),
    /// A worker thread could not be started.
    #[error("cannot start a worker thread: {source}")]
    Worker {
        /// Why.
        source: std::io::Error,
    },
}

/// Where the running fleet came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetSource {
    /// None yet: every request gets 503 and readiness fails.
    None,
    /// `[fleet]` in the config file.
    File,
    /// The last acknowledged snapshot on disk.
    Persisted,
    /// The control plane, in this run.
    Push,
}

/// What reloads and pushes change, shared by the edge, its push client and its
/// admin listener.
pub struct Core {
    proxy: Arc<Proxy>,
    resolver: Option<Arc<SniResolver>>,
    crypto: Arc<CryptoProvider>,
    workers: usize,
    state: Mutex<CoreState>,
    push: Option<Arc<PushStatus>>,
    /// Workers whose client listeners are registered with their event loop.
    serving: AtomicUsize,
}

struct CoreState {
    config: EdgeConfig,
    /// The fleet in force, and where it came from.
    fleet: Option<Arc<Fleet>>,
    source: FleetSource,
    running: Option<Running>,
    /// The fleet's verdict, re-applied to providers a new fleet brings.
    fleet_down: Vec<ProviderId>,
}

/// A running edge: worker threads serving the listeners, and the handles to reload
/// and drain them. Dropping it starts a drain.
pub struct Edge {
    core: Arc<Core>,
    drain: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    max_connections: u32,
    drain_timeout: std::time::Duration,
    /// Bound plain HTTP address.
    pub http_addr: Option<SocketAddr>,
    /// Bound HTTPS address.
    pub https_addr: Option<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: Option<SocketAddr>,
    /// Bound HTTP/3 (UDP) address.
    pub h3_addr: Option<SocketAddr>,
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
    h3: Option<(std::net::UdpSocket, quinn::ServerConfig)>,
    alt_svc: Option<http::HeaderValue>,
    http3: crate::config::Http3Config,
    admin: Option<std::net::TcpListener>,
}

impl Edge {
    /// Binds every listener (one socket per worker with `SO_REUSEPORT`) and starts
    /// the worker threads.
    pub async fn start(config: EdgeConfig) -> Result<Edge, StartError> {
        let crypto = tls::crypto_provider();
        let workers = worker_count(config.runtime.workers);
        let connector = match &config.control_plane {
            Some(cp) => Some(Arc::new(Connector::new(cp, crypto.clone())?)),
            None => None,
        };
        // With a control plane, the last acknowledged snapshot beats the file.
        let persisted = config
            .control_plane
            .as_ref()
            .and_then(|cp| match persist::load(&cp.state_dir) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "ignoring the persisted fleet snapshot");
                    None
                }
            });
        let (fleet, source, running) = match (&persisted, &config.fleet) {
            (Some(p), _) => (Some(Arc::new(p.fleet.clone())), FleetSource::Persisted, Some(p.running)),
            (None, Some(f)) => (Some(Arc::new(f.clone())), FleetSource::File, None),
            (None, None) => (None, FleetSource::None, None),
        };
        let snapshot = build_snapshot(&config, fleet.as_deref(), &crypto, None, workers, false)?;
        let proxy = Proxy::new(snapshot);
        let (drain, drain_rx) = watch::channel(false);
        let max_connections = config.limits.max_connections;
        let permits = Arc::new(Semaphore::new(max_connections as usize));

        let resolver = match (config.listeners.https, config.listeners.h3) {
            (None, None) => None,
            _ => Some(SniResolver::new(&config.tls, crypto.clone())?),
        };
        let acceptor = match (&resolver, config.listeners.https) {
            (Some(r), Some(_)) => Some(TlsAcceptor::from(tls::server_config(r.clone())?)),
            _ => None,
        };
        let mut h3 = match (&resolver, config.listeners.h3) {
            (Some(r), Some(addr)) => {
                let server = h3::server_config(r.clone(), &config.limits, &config.http3)?;
                let socket = bind_udp(addr).map_err(|source| StartError::Bind {
                    what: "h3",
                    addr,
                    source,
                })?;
                Some((socket, server))
            }
            _ => None,
        };
        let h3_addr = h3.as_ref().and_then(|(s, _)| s.local_addr().ok());
        // Advertised on HTTPS responses: same host, the HTTP/3 port.
        let alt_svc = h3_addr.and_then(|a| {
            http::HeaderValue::from_str(&format!(
                "h3=\":{}\"; ma={}",
                a.port(),
                config.http3.alt_svc_max_age.0.as_secs()
            ))
            .ok()
        });

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
        let push_status = connector.as_ref().map(|_| Arc::new(PushStatus::default()));
        let core = Arc::new(Core {
            proxy: proxy.clone(),
            resolver,
            crypto,
            workers,
            state: Mutex::new(CoreState {
                config: config.clone(),
                fleet: fleet.clone(),
                source,
                running,
                fleet_down: Vec::new(),
            }),
            push: push_status.clone(),
            serving: AtomicUsize::new(0),
        });
        tracing::info!(source = ?source, version = ?running.map(|r| r.version), "fleet loaded");
        let edge = Edge {
            core: core.clone(),
            drain,
            permits: permits.clone(),
            max_connections,
            drain_timeout: config.shutdown.drain_timeout.0,
            http_addr: local(&http),
            https_addr: local(&https),
            admin_addr: admin.as_ref().and_then(|l| l.local_addr().ok()),
            h3_addr,
        };

        if config.probes.enabled {
            tokio::spawn(crate::probe::run(
                proxy.clone(),
                config.probes.clone(),
                drain_rx.clone(),
            ));
        }
        if let (Some(cp), Some(connector), Some(status)) = (&config.control_plane, connector, push_status) {
            let settings = push::Settings {
                edge_id: cp.edge_id.clone(),
                state_dir: Some(cp.state_dir.clone()),
                reconnect_min: cp.reconnect_min.0,
                reconnect_max: cp.reconnect_max.0,
                report_interval: cp.report_interval.0,
                wire: meridian_proto::wire::WIRE_VERSION,
            };
            let current = persisted.map(|p| push::Current {
                running: p.running,
                fleet: Arc::new(p.fleet),
            });
            let sink: Arc<dyn FleetSink> = core.clone();
            tokio::spawn(push::run(connector, settings, sink, status, current, drain_rx.clone()));
        }
        for index in 0..workers {
            let parts = WorkerParts {
                index,
                http: http.pop(),
                https: https.pop(),
                admin: if index == 0 { admin.take() } else { None },
                // One QUIC endpoint, on the first worker: a UDP socket shared by
                // several would split a connection's datagrams across endpoints.
                h3: if index == 0 { h3.take() } else { None },
                alt_svc: alt_svc.clone(),
                http3: config.http3.clone(),
            };
            let core = core.clone();
            let acceptor = acceptor.clone();
            let limits = config.limits.clone();
            let permits = permits.clone();
            let drain = drain_rx.clone();
            std::thread::Builder::new()
                .name(format!("meridian-w{index}"))
                .spawn(move || run_worker(parts, core, acceptor, limits, permits, drain, max_connections))
                .map_err(|source| StartError::Worker { source })?;
        }
        Ok(edge)
    }

    /// Applies a new config: certificates, and providers and routing unless the
    /// fleet comes by push. Listener addresses and limits need a restart; a change to
    /// them is reported and ignored. On any error nothing changes.
    pub fn reload(&mut self, config: EdgeConfig) -> Result<(), StartError> {
        self.core.reload(config)
    }

    /// Stops accepting, lets in-flight requests finish until the configured drain
    /// deadline, and returns whether every connection finished in time.
    pub async fn shutdown(self) -> bool {
        let _ = self.drain.send(true);
        // All permits back means every connection has closed.
        let all = self.permits.acquire_many(self.max_connections);
        matches!(tokio::time::timeout(self.drain_timeout, all).await, Ok(Ok(_)))
    }

    /// Worker threads serving the listeners.
    pub fn workers(&self) -> usize {
        self.core.workers
    }

    /// The config in force.
    pub fn config(&self) -> EdgeConfig {
        self.core.state().config.clone()
    }

    /// The shared state reloads and pushes change.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }
}

/// What the admin listener reports at `/statusz`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Where the running fleet came from.
    pub fleet_source: FleetSource,
    /// Its version, when it came from a control plane.
    pub fleet_version: Option<u64>,
    /// The control plane's store it came from.
    pub fleet_epoch: Option<u64>,
    /// Providers the fleet considers down.
    pub fleet_down: Vec<ProviderId>,
    /// The subscription, when a control plane is configured.
    pub control_plane: Option<push::StatusView>,
}

impl Core {
    fn state(&self) -> MutexGuard<'_, CoreState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a fleet is loaded.
    pub fn has_fleet(&self) -> bool {
        self.state().fleet.is_some()
    }

    /// Whether every worker serves its client listeners.
    pub fn listening(&self) -> bool {
        self.serving.load(Ordering::Acquire) >= self.workers
    }

    /// Sets the state gauges for a scrape about to be rendered.
    pub fn refresh_metrics(&self, draining: bool) {
        let (version, has_fleet) = {
            let s = self.state();
            (s.running.map(|r| r.version), s.fleet.is_some())
        };
        let control_plane = self.push.as_ref().map(|p| {
            let v = p.view();
            record::Subscription {
                connected: v.connected,
                last_sync: v.last_sync,
                acks: v.acks,
                nacks: v.nacks,
            }
        });
        let edge = record::EdgeState {
            ready: has_fleet && !draining && self.listening(),
            version,
            control_plane,
        };
        record::refresh(
            self.proxy.snapshot().routing.providers(),
            edge,
            Instant::now(),
            push::unix_now(),
        );
    }

    /// The state for `/statusz`.
    pub fn status(&self) -> Status {
        let s = self.state();
        Status {
            fleet_source: s.source,
            fleet_version: s.running.map(|r| r.version),
            fleet_epoch: s.running.map(|r| r.epoch),
            fleet_down: s.fleet_down.clone(),
            control_plane: self.push.as_ref().map(|p| p.view()),
        }
    }

    fn reload(&self, config: EdgeConfig) -> Result<(), StartError> {
        let mut state = self.state();
        // A pushed (or persisted) fleet stays; the file's fleet is only a fallback.
        let fleet = match (state.source, &config.fleet) {
            (FleetSource::Push | FleetSource::Persisted, _) if config.control_plane.is_some() => state.fleet.clone(),
            (_, Some(f)) => Some(Arc::new(f.clone())),
            (_, None) => state.fleet.clone(),
        };
        let snapshot = build_snapshot(
            &config,
            fleet.as_deref(),
            &self.crypto,
            Some(&self.proxy),
            self.workers,
            false,
        )?;
        if let Some(resolver) = &self.resolver {
            resolver.reload(&config.tls)?;
        }
        self.proxy.swap(snapshot);
        mark_fleet_down(&self.proxy, &state.fleet_down);
        let old = &state.config;
        if config.listeners != old.listeners {
            tracing::warn!("listener addresses changed in the config; they take effect on restart");
        }
        if config.control_plane.is_some() != old.control_plane.is_some() {
            tracing::warn!("[control_plane] added or removed; it takes effect on restart");
        }
        if state.source == FleetSource::File || state.source == FleetSource::None {
            state.source = if fleet.is_some() {
                FleetSource::File
            } else {
                FleetSource::None
            };
        }
        state.fleet = fleet;
        state.config = config;
        Ok(())
    }
}

impl FleetSink for Core {
    fn apply(&self, running: Running, fleet: &Fleet) -> Result<(), String> {
        let mut state = self.state();
        let snapshot = build_snapshot(
            &state.config,
            Some(fleet),
            &self.crypto,
            Some(&self.proxy),
            self.workers,
            true,
        )
        .map_err(|e| e.to_string())?;
        self.proxy.swap(snapshot);
        mark_fleet_down(&self.proxy, &state.fleet_down);
        state.fleet = Some(Arc::new(fleet.clone()));
        state.source = FleetSource::Push;
        state.running = Some(running);
        Ok(())
    }

    fn fleet_health(&self, down: &[ProviderId]) {
        let mut state = self.state();
        state.fleet_down = down.to_vec();
        mark_fleet_down(&self.proxy, down);
    }

    fn observations(&self) -> Vec<Observation> {
        let now = Instant::now();
        let snapshot = self.proxy.snapshot();
        snapshot
            .routing
            .providers()
            .iter()
            .flatten()
            .map(|p| Observation {
                provider: p.spec.id.clone(),
                up: !p.stats.is_ejected(now),
                rtt_ms: p.stats.estimates().0.map(|s| s * 1e3),
            })
            .collect()
    }
}

/// Records the fleet's verdict on the running snapshot's providers.
fn mark_fleet_down(proxy: &Proxy, down: &[ProviderId]) {
    for p in proxy.snapshot().routing.providers().iter().flatten() {
        p.stats.set_fleet_down(down.contains(&p.spec.id));
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
    core: Arc<Core>,
    acceptor: Option<TlsAcceptor>,
    limits: crate::config::Limits,
    permits: Arc<Semaphore>,
    mut drain: watch::Receiver<bool>,
    max_connections: u32,
) {
    set_current_worker(parts.index);
    // Sockets and timers only: signals belong to the main runtime, and the signal
    // and process drivers would otherwise run on every park of every worker.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = parts.index, error = %e, "cannot start worker runtime");
            return;
        }
    };
    let proxy = core.proxy.clone();
    rt.block_on(async move {
        let serve = |socket: std::net::TcpListener, tls: Option<TlsAcceptor>| match TcpListener::from_std(socket) {
            Ok(socket) => {
                // HTTPS responses advertise HTTP/3 when it is served.
                let alt_svc = tls.as_ref().and(parts.alt_svc.clone());
                let l = Listener::new(
                    proxy.clone(),
                    tls,
                    limits.clone(),
                    permits.clone(),
                    drain.clone(),
                    alt_svc,
                );
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
        if let Some((socket, server)) = parts.h3 {
            match quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server),
                socket,
                Arc::new(quinn::TokioRuntime),
            ) {
                Ok(endpoint) => {
                    let l = h3::H3Listener::new(
                        proxy.clone(),
                        limits.clone(),
                        &parts.http3,
                        permits.clone(),
                        drain.clone(),
                    );
                    tokio::spawn(l.serve(endpoint));
                }
                Err(e) => tracing::error!(error = %e, "cannot register the HTTP/3 listener"),
            }
        }
        core.serving.fetch_add(1, Ordering::Release);
        if let Some(s) = parts.admin {
            match TcpListener::from_std(s) {
                Ok(s) => {
                    tokio::spawn(admin::serve(s, drain.clone(), core.clone()));
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
    fleet: Option<&Fleet>,
    crypto: &Arc<CryptoProvider>,
    previous: Option<&Proxy>,
    workers: usize,
    reuse_geoip: bool,
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
    let has_fleet = fleet.is_some();
    let empty;
    let fleet = match fleet {
        Some(f) => f,
        None => {
            empty = Fleet {
                groups: Vec::new(),
                providers: Vec::new(),
                policy: Policy {
                    rules: Vec::new(),
                    unknown_origin: UnknownOrigin::default(),
                },
                tenants: Vec::new(),
            };
            &empty
        }
    };
    let mut providers = Vec::with_capacity(fleet.providers.len());
    for spec in &fleet.providers {
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
        let metrics = match &before {
            Some(p) if p.spec.jurisdiction == spec.jurisdiction => p.metrics.clone(),
            _ => Arc::new(ProviderMetrics::new(spec)),
        };
        let stats = before.map(|p| p.stats.clone()).unwrap_or_default();
        providers.push(Some(Arc::new(RoutedProvider {
            spec: spec.clone(),
            pool,
            stats,
            metrics,
        })));
    }
    let geoip = match (&config.origin.geoip_db, &old) {
        // A pushed fleet changes nothing about the database: keep the one open.
        (Some(_), Some(old)) if reuse_geoip => old.routing.origin().geoip(),
        (Some(path), _) => Some(open_geoip(path)?),
        (None, _) => None,
    };
    let origin = OriginResolver::new(&config.origin, fleet, &config.forwarding, geoip);
    let mut routing = Routing::new(origin, CompiledPolicy::compile(fleet), providers);
    if !has_fleet {
        routing = routing.without_fleet();
    }
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
