//! Meridian's edge proxy.
//!
//! A request's path reads top to bottom through these modules:
//! [`listener`] (accept, TLS; HTTP/1.1 served by the edge's own codec, HTTP/2 and
//! HTTP/3 by hyper and h3) → [`framing`] (refuse ambiguous HTTP/1 framing) →
//! [`proxy`] (the request path) → [`route`] (the only producer of a
//! [`route::Target`]) → [`upstream`] (pooled connections to providers). [`codec`]
//! holds the HTTP/1.1 wire pieces the listener and the upstream share, [`headers`]
//! cleans heads between hops, [`body`] streams bodies with idle timeouts,
//! [`respond`] is the one place that turns failures into answers, and [`record`]
//! keeps the metrics of each request.
//!
//! [`runtime`] runs one event loop per core; a connection and the upstream
//! connections it uses stay on one worker thread.
//!
//! The library never reads process-wide state (environment, signals); the binary does.

pub mod admin;
pub mod body;
pub mod codec;
pub mod config;
pub mod conn;
pub mod framing;
pub mod headers;
pub mod listener;
pub mod origin;
pub mod probe;
pub mod proxy;
pub mod push;
pub mod record;
pub mod respond;
pub mod route;
pub mod runtime;
pub mod selector;
pub mod server;
pub mod tls;
pub mod upstream;

pub use config::EdgeConfig;
pub use server::Edge;
