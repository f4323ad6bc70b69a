//! Meridian's bench toolkit: the local dev deployment, a fixed-rate load generator,
//! and side-by-side comparisons with other proxies on the same machine.
//!
//! Bench depends on the edge and the simulated providers; nothing in the edge or
//! control plane may depend on bench.

pub mod compare;
pub mod dev;
pub mod load;
pub mod procs;
pub mod protocols;
pub mod push_scale;
pub mod train;
pub mod world;
