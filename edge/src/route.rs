//! Routing: which provider a request goes to. The only producer of [`Target`].
//!
//! Until the residency policy engine lands this is a static table (request host to
//! provider, else a default), but the shape is final: the upstream layer accepts only
//! a `Target`, and only this module can make one, so no other code path can pick a
//! provider. It must never consult anything but the snapshot and the request head.

use std::collections::HashMap;
use std::sync::Arc;

use meridian_proto::{ProviderId, ProviderState};

use crate::upstream::ProviderPool;

/// A provider chosen by routing for one request. Cannot be built outside this module.
#[derive(Debug, Clone)]
pub struct Target {
    pool: Arc<ProviderPool>,
}

impl Target {
    /// The pool that reaches the chosen provider.
    pub fn pool(&self) -> &ProviderPool {
        &self.pool
    }
}

/// Why no provider was chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// The provider for this host takes no new requests.
    #[error("provider `{0}` is not accepting requests")]
    Unavailable(ProviderId),
}

/// The routing table of one config snapshot.
#[derive(Debug)]
pub struct Router {
    pools: HashMap<ProviderId, Arc<ProviderPool>>,
    hosts: HashMap<String, ProviderId>,
    default: ProviderId,
}

impl Router {
    /// A table over `pools`; every id named must have a pool (the config check
    /// guarantees it).
    pub fn new(
        pools: HashMap<ProviderId, Arc<ProviderPool>>,
        hosts: impl IntoIterator<Item = (String, ProviderId)>,
        default: ProviderId,
    ) -> Self {
        Router {
            pools,
            hosts: hosts.into_iter().collect(),
            default,
        }
    }

    /// The pools of this snapshot, by provider.
    pub fn pools(&self) -> &HashMap<ProviderId, Arc<ProviderPool>> {
        &self.pools
    }

    /// Chooses the provider for a request to `host` (lower-case, without port).
    pub fn route(&self, host: Option<&str>) -> Result<Target, RouteError> {
        let id = host
            .and_then(|h| self.hosts.get(h))
            .unwrap_or(&self.default);
        match self.pools.get(id) {
            Some(pool) if pool.spec().state == ProviderState::Active => {
                Ok(Target { pool: pool.clone() })
            }
            _ => Err(RouteError::Unavailable(id.clone())),
        }
    }
}
