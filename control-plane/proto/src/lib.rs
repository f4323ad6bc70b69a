//! The contract shared by Meridian's edge and control plane.
//!
//! Both sides describe the fleet with these types, so an edge reading its own config
//! file and an edge fed by the control plane see exactly the same model. This crate
//! holds data and pure checks only: it must never do I/O, read a clock, or depend on
//! the edge or the control plane.

pub mod provider;

pub use provider::{Endpoint, Protocol, ProviderId, ProviderSpec, ProviderState, Scheme};
