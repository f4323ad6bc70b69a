//! Routing: origin → policy → selector. The only producer of [`Target`].
//!
//! The upstream layer accepts nothing but a `Target`, and only this module can make
//! one, from a provider that the residency policy allowed for the request's origin.
//! Retries and failover come back here with the failed provider excluded, so they
//! stay inside the allowed set too. Fail closed: an origin the policy refuses gets
//! [`RouteError::Denied`] (451), an allowed set with nothing usable in it
//! [`RouteError::NoCompliant`] (503). Never a provider outside the set.

use std::sync::Arc;

use meridian_proto::{CompiledPolicy, Jurisdiction, ProviderId, ProviderSpec, ProviderState, Verdict};
use tokio::time::Instant;

use crate::origin::{Origin, OriginResolver, RequestFacts};
use crate::selector::{self, Candidate, InflightToken, ProviderStats, Reason};
use crate::upstream::ProviderPool;

/// Most providers considered per decision without allocating; larger allowed sets
/// are still handled, on the heap.
const INLINE_CANDIDATES: usize = 64;

/// A provider of the snapshot, ready to receive requests.
#[derive(Debug)]
pub struct RoutedProvider {
    /// What the fleet says about it.
    pub spec: ProviderSpec,
    /// Connections to it.
    pub pool: Arc<ProviderPool>,
    /// What this edge has measured about it (kept across reloads).
    pub stats: Arc<ProviderStats>,
}

/// The routing decision for one request, for explanations and the access log.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    /// The request's origin and its source.
    pub origin: Origin,
    /// Providers the policy allowed.
    pub candidates: usize,
    /// Why this provider.
    pub reason: Reason,
}

/// A provider chosen by routing for one request. Cannot be built outside this module.
#[derive(Debug)]
pub struct Target {
    index: usize,
    provider: Arc<RoutedProvider>,
    decision: Decision,
    _inflight: InflightToken,
}

impl Target {
    /// The pool that reaches the chosen provider.
    pub fn pool(&self) -> &ProviderPool {
        &self.provider.pool
    }

    /// The chosen provider's id.
    pub fn id(&self) -> &ProviderId {
        &self.provider.spec.id
    }

    /// The chosen provider's jurisdiction.
    pub fn jurisdiction(&self) -> Jurisdiction {
        self.provider.spec.jurisdiction
    }

    /// Where its measurements go.
    pub fn stats(&self) -> &Arc<ProviderStats> {
        &self.provider.stats
    }

    /// How it was chosen.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The chosen provider's index in the fleet, to exclude it on a retry.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// Why no provider was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The policy allows this origin's data nowhere (451).
    #[error("residency policy allows no provider for origin {}", .origin.label())]
    Denied {
        /// The origin.
        origin: Origin,
    },
    /// Providers are allowed, but none can take the request now (503).
    #[error("none of the {candidates} allowed providers for origin {} is available", .origin.label())]
    NoCompliant {
        /// The origin.
        origin: Origin,
        /// How many providers the policy allowed.
        candidates: usize,
    },
}

/// The routing state of one config snapshot.
#[derive(Debug)]
pub struct Routing {
    origin: OriginResolver,
    policy: CompiledPolicy,
    /// By fleet index; `None` for disabled providers.
    providers: Vec<Option<Arc<RoutedProvider>>>,
}

impl Routing {
    /// Routing over `providers` (indexed as in the fleet the policy was compiled from).
    pub fn new(origin: OriginResolver, policy: CompiledPolicy, providers: Vec<Option<Arc<RoutedProvider>>>) -> Self {
        Routing {
            origin,
            policy,
            providers,
        }
    }

    /// The origin chain.
    pub fn origin(&self) -> &OriginResolver {
        &self.origin
    }

    /// The providers, by fleet index.
    pub fn providers(&self) -> &[Option<Arc<RoutedProvider>>] {
        &self.providers
    }

    /// Resolves the origin of a request.
    pub fn resolve(&self, facts: RequestFacts<'_>) -> Origin {
        self.origin.resolve(facts)
    }

    /// Chooses a provider for a request from `origin` expected to move `bytes`,
    /// never `exclude` (a provider that just failed this request).
    pub fn route(
        &self,
        origin: Origin,
        bytes: u64,
        exclude: Option<usize>,
        now: Instant,
    ) -> Result<Target, RouteError> {
        let providers = match self.policy.evaluate(origin.jurisdiction) {
            Verdict::Denied => return Err(RouteError::Denied { origin }),
            Verdict::Allowed { providers, .. } if providers.is_empty() => return Err(RouteError::Denied { origin }),
            Verdict::Allowed { providers, .. } => providers,
        };
        let candidates = providers.len();
        let cost = |i: usize| -> Candidate {
            let usable = Some(i) != exclude;
            let cost = match self.providers.get(i).and_then(Option::as_ref) {
                Some(p) if usable && p.spec.state == ProviderState::Active => p.stats.cost(bytes, now),
                _ => None,
            };
            (i, cost)
        };
        let choice = if candidates <= INLINE_CANDIDATES {
            let mut buf = [(0usize, None); INLINE_CANDIDATES];
            let mut n = 0;
            for i in providers.iter() {
                buf[n] = cost(i);
                n += 1;
            }
            selector::choose(&buf[..n], selector::random)
        } else {
            let all: Vec<Candidate> = providers.iter().map(cost).collect();
            selector::choose(&all, selector::random)
        };
        let Some((index, reason)) = choice else {
            return Err(RouteError::NoCompliant { origin, candidates });
        };
        let Some(provider) = self.providers.get(index).and_then(Option::clone) else {
            return Err(RouteError::NoCompliant { origin, candidates });
        };
        let inflight = provider.stats.begin();
        Ok(Target {
            index,
            provider,
            decision: Decision {
                origin,
                candidates,
                reason,
            },
            _inflight: inflight,
        })
    }
}
