//! Residency policy: ordered first-match rules from a request's origin to the
//! providers that may hold its data. Pure and allocation-free at evaluation time:
//! edge and control plane compile a [`Fleet`] once and evaluate per request.
//!
//! Fail-closed by construction: anything not allowed by the first matching rule is
//! not allowed, an origin no rule matches is denied, and an unknown origin is denied
//! unless the policy says which jurisdiction to treat it as.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fleet::Fleet;
use crate::jurisdiction::JURISDICTION_SLOTS;
use crate::{Jurisdiction, ProviderId, ProviderState};

/// Which origins a rule applies to: `"*"`, a country `"CN"`, or `"group:EU"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginMatch {
    /// Every known origin.
    Any,
    /// One jurisdiction.
    Country(Jurisdiction),
    /// Every member of a group.
    Group(String),
}

/// A set of providers named by a rule: `"*"`, a jurisdiction `"DE"`, `"group:EU"`,
/// or `"provider:ID"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// Every provider.
    Any,
    /// Providers in one jurisdiction.
    Country(Jurisdiction),
    /// Providers in any member of a group.
    Group(String),
    /// One provider.
    Provider(ProviderId),
}

/// A string that is not a valid origin or place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not `*`, a country code, `group:NAME` or `provider:ID`")]
pub struct BadPlace(pub String);

impl FromStr for Place {
    type Err = BadPlace;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            Ok(Place::Any)
        } else if let Some(g) = s.strip_prefix("group:").filter(|g| !g.is_empty()) {
            Ok(Place::Group(g.to_owned()))
        } else if let Some(p) = s.strip_prefix("provider:").filter(|p| !p.is_empty()) {
            Ok(Place::Provider(ProviderId(p.to_owned())))
        } else {
            s.parse().map(Place::Country).map_err(|_| BadPlace(s.to_owned()))
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Any => f.write_str("*"),
            Place::Country(j) => write!(f, "{j}"),
            Place::Group(g) => write!(f, "group:{g}"),
            Place::Provider(p) => write!(f, "provider:{p}"),
        }
    }
}

impl FromStr for OriginMatch {
    type Err = BadPlace;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<Place>()? {
            Place::Any => Ok(OriginMatch::Any),
            Place::Country(j) => Ok(OriginMatch::Country(j)),
            Place::Group(g) => Ok(OriginMatch::Group(g)),
            Place::Provider(_) => Err(BadPlace(s.to_owned())),
        }
    }
}

impl fmt::Display for OriginMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginMatch::Any => f.write_str("*"),
            OriginMatch::Country(j) => write!(f, "{j}"),
            OriginMatch::Group(g) => write!(f, "group:{g}"),
        }
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(Place);
string_serde!(OriginMatch);

/// What an origin that could not be determined gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownOrigin {
    /// Refused (451): without an origin no rule can be trusted to apply.
    #[default]
    Deny,
    /// Treated as this jurisdiction.
    As(Jurisdiction),
}

impl FromStr for UnknownOrigin {
    type Err = BadPlace;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "deny" {
            return Ok(UnknownOrigin::Deny);
        }
        s.parse().map(UnknownOrigin::As).map_err(|_| BadPlace(s.to_owned()))
    }
}

impl fmt::Display for UnknownOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownOrigin::Deny => f.write_str("deny"),
            UnknownOrigin::As(j) => write!(f, "{j}"),
        }
    }
}
string_serde!(UnknownOrigin);

/// One rule: for origins matching `origin`, providers in `allow` and not in `deny`
/// that carry every tag in `require_tags`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Name for logs and explanations.
    pub name: String,
    /// Which origins the rule governs.
    pub origin: OriginMatch,
    /// Where their data may go.
    pub allow: Vec<Place>,
    /// Exceptions to `allow`.
    #[serde(default)]
    pub deny: Vec<Place>,
    /// Tags every chosen provider must carry.
    #[serde(default)]
    pub require_tags: Vec<String>,
}

/// The residency policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
    /// What an unknown origin gets.
    #[serde(default)]
    pub unknown_origin: UnknownOrigin,
}

/// A set of providers, by their index in the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProviderSet {
    words: Vec<u64>,
}

impl ProviderSet {
    fn with_len(n: usize) -> Self {
        ProviderSet {
            words: vec![0; n.div_ceil(64)],
        }
    }

    fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    fn remove(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    /// Whether provider `i` is in the set.
    pub fn contains(&self, i: usize) -> bool {
        self.words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// How many providers are in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Provider indices in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + bit)
            })
        })
    }
}

#[derive(Clone, Debug)]
enum CompiledOrigin {
    Any,
    Country(Jurisdiction),
    Group(Box<[bool; JURISDICTION_SLOTS]>),
}

#[derive(Clone, Debug)]
struct CompiledRule {
    name: String,
    origin: CompiledOrigin,
    allowed: ProviderSet,
}

/// The outcome of evaluating the policy for one origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// These providers may hold the data.
    Allowed {
        /// Index of the rule that decided.
        rule: usize,
        /// The allowed providers; may be empty when the rule excludes every
        /// current provider, which is a refusal too.
        providers: &'a ProviderSet,
    },
    /// No provider may hold it: no rule matched, or the origin is unknown and the
    /// policy denies unknown origins.
    Denied,
}

/// A policy resolved against a fleet's providers, ready to evaluate.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    rules: Vec<CompiledRule>,
    unknown: UnknownOrigin,
}

impl CompiledPolicy {
    /// Resolves `fleet.policy` against `fleet.providers`. The fleet must have passed
    /// [`Fleet::validate`]; unknown names here simply match nothing. Disabled
    /// providers are in no allowed set.
    pub fn compile(fleet: &Fleet) -> Self {
        let n = fleet.providers.len();
        let group_members = |name: &str| -> Vec<Jurisdiction> {
            fleet
                .groups
                .iter()
                .find(|g| g.name == name)
                .map(|g| g.members.clone())
                .unwrap_or_default()
        };
        let place_has = |place: &Place, i: usize| -> bool {
            let p = &fleet.providers[i];
            match place {
                Place::Any => true,
                Place::Country(j) => p.jurisdiction == *j,
                Place::Group(g) => group_members(g).contains(&p.jurisdiction),
                Place::Provider(id) => p.id == *id,
            }
        };
        let rules = fleet
            .policy
            .rules
            .iter()
            .map(|r| {
                let mut allowed = ProviderSet::with_len(n);
                for (i, p) in fleet.providers.iter().enumerate() {
                    let allow = r.allow.iter().any(|pl| place_has(pl, i));
                    let deny = r.deny.iter().any(|pl| place_has(pl, i));
                    let tags = r.require_tags.iter().all(|t| p.tags.contains(t));
                    if allow && !deny && tags && p.state != ProviderState::Disabled {
                        allowed.insert(i);
                    } else {
                        allowed.remove(i);
                    }
                }
                let origin = match &r.origin {
                    OriginMatch::Any => CompiledOrigin::Any,
                    OriginMatch::Country(j) => CompiledOrigin::Country(*j),
                    OriginMatch::Group(g) => {
                        let mut set = Box::new([false; JURISDICTION_SLOTS]);
                        for j in group_members(g) {
                            set[j.index()] = true;
                        }
                        CompiledOrigin::Group(set)
                    }
                };
                CompiledRule {
                    name: r.name.clone(),
                    origin,
                    allowed,
                }
            })
            .collect();
        CompiledPolicy {
            rules,
            unknown: fleet.policy.unknown_origin,
        }
    }

    /// The jurisdiction an origin is judged as: itself, or the policy's stand-in for
    /// an unknown origin.
    pub fn effective_origin(&self, origin: Option<Jurisdiction>) -> Option<Jurisdiction> {
        match (origin, self.unknown) {
            (Some(j), _) => Some(j),
            (None, UnknownOrigin::As(j)) => Some(j),
            (None, UnknownOrigin::Deny) => None,
        }
    }

    /// Which providers may hold data of `origin` (None: unknown). First match wins.
    pub fn evaluate(&self, origin: Option<Jurisdiction>) -> Verdict<'_> {
        let Some(j) = self.effective_origin(origin) else {
            return Verdict::Denied;
        };
        for (i, r) in self.rules.iter().enumerate() {
            let hit = match &r.origin {
                CompiledOrigin::Any => true,
                CompiledOrigin::Country(c) => *c == j,
                CompiledOrigin::Group(set) => set[j.index()],
            };
            if hit {
                return Verdict::Allowed {
                    rule: i,
                    providers: &r.allowed,
                };
            }
        }
        Verdict::Denied
    }

    /// How many rules the policy has.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The name of rule `i`.
    pub fn rule_name(&self, i: usize) -> &str {
        self.rules.get(i).map_or("", |r| r.name.as_str())
    }
}

#[cfg(test)]
pub(crate) mod tests;
