//! The admin API: authenticated HTTPS/JSON under `/v1/`.
//!
//! Every request needs `Authorization: Bearer TOKEN` whose SHA-256 is configured;
//! tokens are compared by hash in constant time and never stored in clear. Every
//! mutation is read-modify-write of the whole fleet under one lock, checked by the
//! shared validation, and committed as the next version; a refused change writes
//! nothing and the answer names the offending field.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /v1/fleet` | the current fleet and its version |
//! | `PUT /v1/fleet` | replace the fleet |
//! | `GET /v1/providers`, `GET /v1/providers/{id}` | read providers |
//! | `PUT /v1/providers/{id}`, `DELETE /v1/providers/{id}` | write one |
//! | `POST /v1/providers/{id}/drain`, `/undrain` | stop / resume new requests to it |
//! | `GET`/`PUT /v1/policy` | the residency policy |
//! | `GET /v1/groups`, `GET`/`PUT`/`DELETE /v1/groups/{name}` | jurisdiction groups |
//! | `GET /v1/jurisdictions` | jurisdictions in use, with their groups, providers, tenants |
//! | `GET /v1/tenants`, `GET`/`PUT`/`DELETE /v1/tenants/{id}` | tenants |
//! | `POST /v1/dry-run` `{"origin":"CN","edge":"e1"}` | which providers the policy allows, and which that edge would choose |
//! | `GET /v1/edges`, `GET /v1/edges/{id}` | edges, the version each runs, ACK/NACK, fleet health |
//! | `GET /v1/openapi.json` | the OpenAPI 3 description |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_proto::{
    CompiledPolicy, Fleet, Group, Jurisdiction, Policy, ProviderId, ProviderSpec, ProviderState, Tenant, Verdict,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_rustls::TlsAcceptor;

use crate::config::{CpConfig, hash_token};
use crate::push::Hub;
use crate::store::{Store, StoreError};

/// Largest request body accepted (a whole fleet document).
const MAX_BODY: usize = 8 << 20;

/// The API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Certificate or key unusable.
    #[error("admin TLS: {0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The API's state.
struct Api {
    store: Arc<Store>,
    hub: Arc<Hub>,
    tokens: Vec<[u8; 32]>,
    /// Serialises read-modify-write of the fleet.
    writes: Mutex<()>,
}

/// A running admin API.
#[derive(Debug)]
pub struct ApiHandle {
    /// The bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the listener and serves until dropped. Every committed version is
/// published to `hub`.
pub async fn start(cfg: &CpConfig, store: Arc<Store>, hub: Arc<Hub>) -> Result<ApiHandle, ApiError> {
    let tls = acceptor(cfg)?;
    let tokens = cfg
        .admin
        .tokens
        .iter()
        .filter_map(|t| {
            let bytes: Vec<u8> = (0..32)
                .filter_map(|i| u8::from_str_radix(t.sha256.get(i * 2..i * 2 + 2)?, 16).ok())
                .collect();
            bytes.try_into().ok()
        })
        .collect();
    let api = Arc::new(Api {
        store,
        hub,
        tokens,
        writes: Mutex::new(()),
    });
    let listener = TcpListener::bind(cfg.admin.listen)
        .await
        .map_err(|source| ApiError::Bind {
            addr: cfg.admin.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ApiError::Bind {
        addr: cfg.admin.listen,
        source,
    })?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (api, tls) = (api.clone(), tls.clone());
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(tcp).await else { return };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let api = api.clone();
                    async move {
                        let route = crate::telemetry::route_template(req.method(), req.uri().path());
                        let started = std::time::Instant::now();
                        let resp = api.handle(req).await;
                        crate::telemetry::api_request(route, resp.status(), started.elapsed().as_secs_f64());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(ApiHandle { addr, task })
}

fn acceptor(cfg: &CpConfig) -> Result<TlsAcceptor, ApiError> {
    let tls = |e: &dyn std::fmt::Display| ApiError::Tls(e.to_string());
    let certs = CertificateDer::pem_file_iter(&cfg.admin.cert)
        .map_err(|e| tls(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.admin.key).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": code, "message": message.into() }))
}

fn store_error(e: StoreError) -> Response<Full<Bytes>> {
    match e {
        StoreError::Invalid(f) => reply(
            StatusCode::BAD_REQUEST,
            json!({ "error": "invalid_fleet", "path": f.path, "message": f.message }),
        ),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, "store_failed", other.to_string()),
    }
}

/// Jurisdictions are the assigned ISO 3166-1 codes, not records of their own: the
/// ones the fleet uses, each with its groups, providers and tenants. Groups are
/// where operators name sets of them.
fn jurisdictions(f: &Fleet) -> Value {
    let mut used: Vec<Jurisdiction> = f
        .providers
        .iter()
        .map(|p| p.jurisdiction)
        .chain(f.tenants.iter().map(|t| t.home))
        .chain(f.groups.iter().flat_map(|g| g.members.iter().copied()))
        .collect();
    used.sort();
    used.dedup();
    Value::Array(
        used.into_iter()
            .map(|j| {
                json!({
                    "code": j.as_str(),
                    "groups": f.groups.iter().filter(|g| g.members.contains(&j)).map(|g| g.name.as_str()).collect::<Vec<_>>(),
                    "providers": f.providers.iter().filter(|p| p.jurisdiction == j).map(|p| p.id.as_str()).collect::<Vec<_>>(),
                    "tenants": f.tenants.iter().filter(|t| t.home == j).map(|t| t.id.as_str()).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn upsert<T>(items: &mut Vec<T>, item: T, same: impl Fn(&T, &T) -> bool) {
    match items.iter_mut().find(|x| same(x, &item)) {
        Some(x) => *x = item,
        None => items.push(item),
    }
}

/// The OpenAPI 3 description of this API.
fn openapi() -> Value {
    let op = |summary: &str| {
        json!({ "summary": summary, "security": [{ "bearer": [] }],
        "responses": { "200": { "description": "OK" }, "400": { "description": "invalid; `path` names the field" },
                       "401": { "description": "no valid bearer token" }, "404": { "description": "not found" } } })
    };
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Meridian control plane admin API", "version": "1" },
        "components": { "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } } },
        "paths": {
            "/v1/fleet": { "get": op("The current fleet and its version"), "put": op("Replace the fleet") },
            "/v1/policy": { "get": op("The residency policy"), "put": op("Replace the residency policy") },
            "/v1/providers": { "get": op("All providers") },
            "/v1/providers/{id}": { "get": op("One provider"), "put": op("Create or replace a provider"), "delete": op("Remove a provider") },
            "/v1/providers/{id}/drain": { "post": op("Stop sending new requests to a provider") },
            "/v1/providers/{id}/undrain": { "post": op("Resume a drained provider") },
            "/v1/groups": { "get": op("Jurisdiction groups") },
            "/v1/groups/{name}": { "get": op("One group"), "put": op("Create or replace a group"), "delete": op("Remove a group") },
            "/v1/jurisdictions": { "get": op("Jurisdictions the fleet uses (ISO 3166-1), with their groups, providers and tenants") },
            "/v1/tenants": { "get": op("Tenants") },
            "/v1/tenants/{id}": { "get": op("One tenant"), "put": op("Create or replace a tenant"), "delete": op("Remove a tenant") },
            "/v1/dry-run": { "post": op("Which providers the policy allows for {\"origin\": \"CN\", \"edge\": \"edge-1\"}, and which that edge would choose") },
            "/v1/edges": { "get": op("Edges: the version each runs, its last ACK or NACK, connection state, and the providers down for the fleet") },
            "/v1/edges/{id}": { "get": op("One edge, with its view of the providers") },
            "/v1/openapi.json": { "get": op("This document") }
        }
    })
}

#[derive(Deserialize)]
struct DryRun {
    origin: Option<String>,
    /// The edge whose view decides the choice.
    #[serde(default)]
    edge: Option<String>,
}

impl Api {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let digest = hash_token(token.trim());
        let mut given = [0u8; 32];
        for (i, b) in given.iter_mut().enumerate() {
            *b = digest
                .get(i * 2..i * 2 + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
        }
        // Every configured hash is compared, in constant time, whatever matches.
        self.tokens.iter().fold(false, |ok, t| {
            (t.iter().zip(&given).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0) | ok
        })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if !self.authorized(&req) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            return r;
        }
        let method = req.method().clone();
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body too large",
                );
            }
        };
        match (&method, segments.as_slice()) {
            (&Method::GET, ["v1", "fleet"]) => match self.store.current() {
                Ok(Some((version, fleet))) => reply(StatusCode::OK, json!({ "version": version, "fleet": fleet })),
                Ok(None) => reply(StatusCode::OK, json!({ "version": 0, "fleet": null })),
                Err(e) => store_error(e),
            },
            (&Method::PUT, ["v1", "fleet"]) => match serde_json::from_slice::<Fleet>(&body) {
                Ok(fleet) => {
                    let _w = self.writes.lock().await;
                    self.commit(&fleet)
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "bad_json", e.to_string()),
            },
            (&Method::GET, ["v1", "providers"]) => self.read(|f| json!(f.providers)),
            (&Method::GET, ["v1", "providers", id]) => {
                self.read(|f| match f.providers.iter().find(|p| p.id.as_str() == *id) {
                    Some(p) => json!(p),
                    None => Value::Null,
                })
            }
            (&Method::PUT, ["v1", "providers", id]) => match serde_json::from_slice::<ProviderSpec>(&body) {
                Ok(spec) if spec.id.as_str() != *id => error(
                    StatusCode::BAD_REQUEST,
                    "id_mismatch",
                    format!("body id `{}` differs from path id `{id}`", spec.id),
                ),
                Ok(spec) => {
                    self.modify(|f| match f.providers.iter_mut().find(|p| p.id == spec.id) {
                        Some(p) => *p = spec,
                        None => f.providers.push(spec),
                    })
                    .await
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "bad_json", e.to_string()),
            },
            (&Method::DELETE, ["v1", "providers", id]) => {
                let id = ProviderId((*id).to_owned());
                self.modify(move |f| f.providers.retain(|p| p.id != id)).await
            }
            (&Method::POST, ["v1", "providers", id, action @ ("drain" | "undrain")]) => {
                let (id, state) = (
                    ProviderId((*id).to_owned()),
                    if *action == "drain" {
                        ProviderState::Draining
                    } else {
                        ProviderState::Active
                    },
                );
                let known = self
                    .store
                    .current()
                    .ok()
                    .flatten()
                    .is_some_and(|(_, f)| f.providers.iter().any(|p| p.id == id));
                if !known {
                    return error(StatusCode::NOT_FOUND, "unknown_provider", format!("no provider `{id}`"));
                }
                self.modify(move |f| {
                    if let Some(p) = f.providers.iter_mut().find(|p| p.id == id) {
                        p.state = state;
                    }
                })
                .await
            }
            (&Method::GET, ["v1", "policy"]) => self.read(|f| json!(f.policy)),
            (&Method::PUT, ["v1", "policy"]) => match serde_json::from_slice::<Policy>(&body) {
                Ok(policy) => self.modify(move |f| f.policy = policy).await,
                Err(e) => error(StatusCode::BAD_REQUEST, "bad_json", e.to_string()),
            },
            (&Method::GET, ["v1", "groups"]) => self.read(|f| json!(f.groups)),
            (&Method::GET, ["v1", "groups", name]) => self.read(|f| match f.groups.iter().find(|g| g.name == *name) {
                Some(g) => json!(g),
                None => Value::Null,
            }),
            (&Method::GET, ["v1", "jurisdictions"]) => self.read(jurisdictions),
            (&Method::PUT, ["v1", "groups", name]) => match serde_json::from_slice::<Group>(&body) {
                Ok(g) if g.name != *name => {
                    error(StatusCode::BAD_REQUEST, "name_mismatch", "body name differs from path")
                }
                Ok(g) => {
                    self.modify(move |f| upsert(&mut f.groups, g, |a, b| a.name == b.name))
                        .await
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "bad_json", e.to_string()),
            },
            (&Method::DELETE, ["v1", "groups", name]) => {
                let name = (*name).to_owned();
                self.modify(move |f| f.groups.retain(|g| g.name != name)).await
            }
            (&Method::GET, ["v1", "tenants"]) => self.read(|f| json!(f.tenants)),
            (&Method::GET, ["v1", "tenants", id]) => self.read(|f| match f.tenants.iter().find(|t| t.id == *id) {
                Some(t) => json!(t),
                None => Value::Null,
            }),
            (&Method::PUT, ["v1", "tenants", id]) => match serde_json::from_slice::<Tenant>(&body) {
                Ok(t) if t.id != *id => error(StatusCode::BAD_REQUEST, "id_mismatch", "body id differs from path"),
                Ok(t) => {
                    self.modify(move |f| upsert(&mut f.tenants, t, |a, b| a.id == b.id))
                        .await
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "bad_json", e.to_string()),
            },
            (&Method::DELETE, ["v1", "tenants", id]) => {
                let id = (*id).to_owned();
                self.modify(move |f| f.tenants.retain(|t| t.id != id)).await
            }
            (&Method::GET, ["v1", "edges"]) => {
                let current = self.hub.subscribe().borrow().version;
                reply(
                    StatusCode::OK,
                    json!({ "version": current, "fleet_down": self.hub.fleet_down(), "edges": self.hub.list() }),
                )
            }
            (&Method::GET, ["v1", "edges", id]) => match self.hub.edge(id) {
                Some(e) => reply(StatusCode::OK, json!(e)),
                None => error(
                    StatusCode::NOT_FOUND,
                    "unknown_edge",
                    format!("no edge `{id}` has subscribed"),
                ),
            },
            (&Method::GET, ["v1", "openapi.json"]) => reply(StatusCode::OK, openapi()),
            (&Method::POST, ["v1", "dry-run"]) => match serde_json::from_slice::<DryRun>(&body) {
                Ok(q) => self.dry_run(q),
                Err(e) => error(StatusCode::BAD_REQUEST, "bad_json", e.to_string()),
            },
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route for {method} {path}"),
            ),
        }
    }

    fn read(&self, pick: impl FnOnce(&Fleet) -> Value) -> Response<Full<Bytes>> {
        match self.store.current() {
            Ok(Some((version, fleet))) => match pick(&fleet) {
                Value::Null => error(StatusCode::NOT_FOUND, "not_found", "no such resource"),
                v => reply(StatusCode::OK, json!({ "version": version, "data": v })),
            },
            Ok(None) => error(StatusCode::NOT_FOUND, "no_fleet", "no fleet has been stored yet"),
            Err(e) => store_error(e),
        }
    }

    async fn modify(&self, change: impl FnOnce(&mut Fleet)) -> Response<Full<Bytes>> {
        let _w = self.writes.lock().await;
        let mut fleet = match self.store.current() {
            Ok(Some((_, f))) => f,
            Ok(None) => {
                return error(
                    StatusCode::CONFLICT,
                    "no_fleet",
                    "PUT /v1/fleet first: it needs a policy",
                );
            }
            Err(e) => return store_error(e),
        };
        change(&mut fleet);
        self.commit(&fleet)
    }

    /// Commits and publishes; callers hold `writes`, so versions reach the hub in
    /// order.
    fn commit(&self, fleet: &Fleet) -> Response<Full<Bytes>> {
        match self.store.commit(fleet) {
            Ok(version) => {
                self.hub.publish(version, fleet.clone());
                reply(StatusCode::OK, json!({ "version": version }))
            }
            Err(e) => store_error(e),
        }
    }

    fn dry_run(&self, q: DryRun) -> Response<Full<Bytes>> {
        let origin = match q.origin.as_deref().map(str::parse::<Jurisdiction>).transpose() {
            Ok(o) => o,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_origin", e.to_string()),
        };
        let edge = match q.edge.as_deref().map(|id| (id, self.hub.edge(id))) {
            None => None,
            Some((_, Some(record))) => Some(record),
            Some((id, None)) => {
                return error(
                    StatusCode::NOT_FOUND,
                    "unknown_edge",
                    format!("no edge `{id}` has subscribed"),
                );
            }
        };
        let (version, fleet) = match self.store.current() {
            Ok(Some(x)) => x,
            Ok(None) => return error(StatusCode::NOT_FOUND, "no_fleet", "no fleet has been stored yet"),
            Err(e) => return store_error(e),
        };
        let policy = CompiledPolicy::compile(&fleet);
        let answer = match policy.evaluate(origin) {
            Verdict::Denied => {
                json!({ "version": version, "denied": true, "allowed": [], "eligible": [], "chosen": null })
            }
            Verdict::Allowed { rule, providers } => {
                let allowed: Vec<&ProviderSpec> = providers.iter().map(|i| &fleet.providers[i]).collect();
                let fleet_down = self.hub.fleet_down();
                // Those that take new requests at all: active and not down for the fleet.
                let eligible: Vec<&ProviderSpec> = allowed
                    .iter()
                    .copied()
                    .filter(|p| p.state == ProviderState::Active && !fleet_down.contains(&p.id))
                    .collect();
                // At an edge, its own evidence of failure excludes a provider too, and
                // the lowest reported round-trip time wins (before live load, which
                // only the edge knows).
                let chosen = edge.as_ref().and_then(|e| {
                    let seen = |p: &ProviderSpec| e.observations.iter().find(|o| o.provider == p.id);
                    eligible
                        .iter()
                        .filter(|p| seen(p).is_none_or(|o| o.up))
                        .min_by(|a, b| {
                            let rtt = |p: &ProviderSpec| seen(p).and_then(|o| o.rtt_ms).unwrap_or(f64::INFINITY);
                            rtt(a).total_cmp(&rtt(b))
                        })
                        .map(|p| p.id.as_str())
                });
                json!({
                    "version": version,
                    "denied": allowed.is_empty(),
                    "rule": policy.rule_name(rule),
                    "allowed": allowed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
                    "eligible": eligible.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
                    "edge": edge.as_ref().map(|e| e.edge_id.as_str()),
                    "chosen": chosen,
                })
            }
        };
        reply(StatusCode::OK, answer)
    }
}
