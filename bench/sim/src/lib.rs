//! Simulated storage providers for Meridian's tests, benchmarks and dev deployment.
//!
//! A [`store::SimProvider`] is a real HTTP server (HTTP/1.1 and HTTP/2, optional TLS)
//! that behaves like a small S3-style object store, plus a few diagnostic endpoints
//! under `/_sim/` that tests use to see what reached the provider. [`relay`] puts
//! network delay on the path to one; [`certs`] makes throw-away certificate
//! authorities. Nothing here is used by the edge at run time.

pub mod certs;
pub mod impair;
pub mod relay;
pub mod store;

pub use certs::TestCa;
pub use impair::Impairments;
pub use relay::DelayRelay;
pub use store::{Objects, SimConfig, SimProvider, Storage};
