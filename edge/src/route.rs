//! Routing: origin → policy → selector. The only producer of [`Target`].
//!
//! The upstream layer accepts nothing but a `Target`, and only this module can make
//! one, from a provider that the residency policy allowed for the request's origin.
//! Retries and failover come back here with the failed provider excluded, so they
//! stay inside the allowed set too. Fail closed: an origin the policy refuses gets
//! [`RouteError::Denied`] (451), an allowed set with nothing usable in it
//! [`RouteError::NoCompliant`] (503). Never a provider outside the set.

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use meridian_proto::{CompiledPolicy, Jurisdiction, ProviderId, ProviderSet, ProviderSpec, ProviderState, Verdict};
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::origin::{Origin, OriginResolver, RequestFacts};
use crate::record::ProviderMetrics;
use crate::selector::{self, Candidate, InflightToken, ProviderStats, Reason};
use crate::upstream::ProviderPool;

/// Allowed sets up to this size are costed in full on every decision, on the stack.
const INLINE_CANDIDATES: usize = 64;
/// Larger sets are served from a shortlist: this many lowest-RTT providers plus this
/// many highest-bandwidth ones, so both small and large requests find their best.
const SHORTLIST_EACH: usize = 16;
/// How old a shortlist may get before a decision refreshes it.
const SHORTLIST_TTL: Duration = Duration::from_millis(250);
const NEVER: u64 = u64::MAX;

/// The shortlist of one rule's allowed set. Refreshed by whichever decision finds it
/// stale (one at a time); decisions in between only load it.
#[derive(Debug)]
struct Shortlist {
    refreshed_ms: AtomicU64,
    refreshing: AtomicBool,
    providers: ArcSwap<Vec<usize>>,
}

impl Default for Shortlist {
    fn default() -> Self {
        Shortlist {
            refreshed_ms: AtomicU64::new(NEVER),
            refreshing: AtomicBool::new(false),
            providers: ArcSwap::from_pointee(Vec::new()),
        }
    }
}

/// A provider of the snapshot, ready to receive requests.
#[derive(Debug)]
pub struct RoutedProvider {
    /// What the fleet says about it.
    pub spec: ProviderSpec,
    /// Connections to it.
    pub pool: Arc<ProviderPool>,
    /// What this edge has measured about it (kept across reloads).
    pub stats: Arc<ProviderStats>,
    /// Its metric handles (kept across reloads while its labels stay the same).
    pub metrics: Arc<ProviderMetrics>,
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
    /// The same choice again, with its own in-flight mark: lets a hedged request
    /// hand back its winner while the losing exchange still borrows the original.
    /// Not a new decision: the provider is one routing chose.
    pub(crate) fn clone_for_hedge(&self) -> Target {
        Target {
            index: self.index,
            provider: self.provider.clone(),
            decision: self.decision,
            _inflight: self.provider.stats.begin(),
        }
    }

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

    /// Its metric handles.
    pub fn metrics(&self) -> &ProviderMetrics {
        &self.provider.metrics
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

impl Routing {
    /// The shortlist for `rule`, refreshed first when it is stale and no other
    /// decision is refreshing it.
    fn shortlist(&self, rule: usize, allowed: &ProviderSet, now: Instant) -> Option<arc_swap::Guard<Arc<Vec<usize>>>> {
        let s = self.shortlists.get(rule)?;
        let now_ms = now.saturating_duration_since(self.base).as_millis() as u64;
        let last = s.refreshed_ms.load(Ordering::Acquire);
        let stale = last == NEVER || now_ms.saturating_sub(last) >= SHORTLIST_TTL.as_millis() as u64;
        if stale && !s.refreshing.swap(true, Ordering::AcqRel) {
            s.providers.store(Arc::new(self.rank(allowed)));
            s.refreshed_ms.store(now_ms, Ordering::Release);
            s.refreshing.store(false, Ordering::Release);
        }
        Some(s.providers.load())
    }

    /// The lowest-RTT and the highest-bandwidth usable providers of `allowed`.
    fn rank(&self, allowed: &ProviderSet) -> Vec<usize> {
        let mut all: Vec<(usize, f64, f64)> = allowed
            .iter()
            .filter_map(|i| {
                let p = self.providers.get(i)?.as_ref()?;
                let (rtt, bw) = p.stats.estimates();
                // Unmeasured providers rank first, so they get measured.
                Some((i, rtt.unwrap_or(0.0), bw.unwrap_or(f64::INFINITY)))
            })
            .collect();
        let mut list = Vec::with_capacity(2 * SHORTLIST_EACH);
        all.sort_by(|a, b| a.1.total_cmp(&b.1));
        list.extend(all.iter().take(SHORTLIST_EACH).map(|c| c.0));
        all.sort_by(|a, b| b.2.total_cmp(&a.2));
        let by_rtt = list.len();
        for c in &all {
            if list.len() == by_rtt + SHORTLIST_EACH {
                break;
            }
            if !list[..by_rtt].contains(&c.0) {
                list.push(c.0);
            }
        }
        list
    }
}

/// The routing state of one config snapshot.
#[derive(Debug)]
pub struct Routing {
    origin: OriginResolver,
    policy: CompiledPolicy,
    /// By fleet index; `None` for disabled providers.
    providers: Vec<Option<Arc<RoutedProvider>>>,
    /// One per policy rule, for allowed sets larger than `INLINE_CANDIDATES`.
    shortlists: Vec<Shortlist>,
    base: Instant,
    /// False before the first fleet arrives (an edge fed by push, started with no
    /// snapshot): every request is refused as retryable.
    has_fleet: bool,
}

impl Routing {
    /// Routing over `providers` (indexed as in the fleet the policy was compiled from).
    pub fn new(origin: OriginResolver, policy: CompiledPolicy, providers: Vec<Option<Arc<RoutedProvider>>>) -> Self {
        let shortlists = (0..policy.rule_count()).map(|_| Shortlist::default()).collect();
        Routing {
            origin,
            policy,
            providers,
            shortlists,
            base: Instant::now(),
            has_fleet: true,
        }
    }

    /// Routing before any fleet is known: nothing is allowed, and the refusal says
    /// "try again" (503), not "forbidden" (451).
    pub fn without_fleet(mut self) -> Self {
        self.has_fleet = false;
        self
    }

    /// Whether a fleet is loaded.
    pub fn has_fleet(&self) -> bool {
        self.has_fleet
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
        if !self.has_fleet {
            return Err(RouteError::NoCompliant { origin, candidates: 0 });
        }
        let (rule, providers) = match self.policy.evaluate(origin.jurisdiction) {
            Verdict::Denied => return Err(RouteError::Denied { origin }),
            Verdict::Allowed { providers, .. } if providers.is_empty() => return Err(RouteError::Denied { origin }),
            Verdict::Allowed { rule, providers } => (rule, providers),
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
        // On the stack and written only as far as it is filled: a zeroed array of
        // them would be 1.5 KiB of fresh writes per request.
        let mut buf = SmallVec::<[Candidate; INLINE_CANDIDATES]>::new();
        let mut choice = None;
        if candidates <= INLINE_CANDIDATES {
            buf.extend(providers.iter().map(cost));
            choice = selector::choose(&buf, selector::random);
        } else if let Some(list) = self.shortlist(rule, providers, now) {
            buf.extend(list.iter().take(INLINE_CANDIDATES).map(|&i| cost(i)));
            choice = selector::choose(&buf, selector::random);
        }
        if choice.is_none() && candidates > INLINE_CANDIDATES {
            // Nothing usable on the shortlist (a burst of ejections): look at all of
            // them before failing closed.
            let all: Vec<Candidate> = providers.iter().map(cost).collect();
            choice = selector::choose(&all, selector::random);
        }
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

#[cfg(test)]
mod tests;
