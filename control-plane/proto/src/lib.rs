//! The contract shared by Meridian's edge and control plane.
//!
//! Both sides describe the fleet with these types and judge it with the same code:
//! [`Fleet::validate`] and [`policy::CompiledPolicy`]. An edge reading its own config
//! file and an edge fed by the control plane therefore agree by construction. This
//! crate holds data, pure functions and the push protocol's frame codec (which works
//! on a stream the caller hands it): it must never open a socket or a file, read a
//! clock, or depend on the edge or the control plane.

pub mod fleet;
pub mod jurisdiction;
pub mod policy;
pub mod provider;
pub mod validate;
pub mod wire;

pub use fleet::{Binding, Fleet, Group, Tenant};
pub use jurisdiction::Jurisdiction;
pub use policy::{CompiledPolicy, OriginMatch, Place, Policy, ProviderSet, Rule, UnknownOrigin, Verdict};
pub use provider::{Coordinates, Endpoint, Protocol, ProviderId, ProviderSpec, ProviderState, Scheme};
pub use validate::FleetError;
