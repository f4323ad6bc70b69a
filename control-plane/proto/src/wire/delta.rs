//! The change between two fleet versions, keyed by provider id, group name and
//! tenant id. A delta is only ever produced when applying it to the old fleet gives
//! exactly the new one (order included); otherwise the control plane sends a
//! snapshot.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{Fleet, Group, Policy, ProviderId, ProviderSpec, Tenant};

/// What changed from one fleet version to the next.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetDelta {
    /// Providers added or changed; an existing id is replaced in place, a new one
    /// appended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert_providers: Vec<ProviderSpec>,
    /// Providers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_providers: Vec<ProviderId>,
    /// Groups added or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert_groups: Vec<Group>,
    /// Groups removed, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_groups: Vec<String>,
    /// Tenants added or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert_tenants: Vec<Tenant>,
    /// Tenants removed, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_tenants: Vec<String>,
    /// The new policy, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
}

impl FleetDelta {
    /// The delta that turns `old` into `new`, or `None` when no delta reproduces
    /// `new` exactly (items reordered).
    pub fn between(old: &Fleet, new: &Fleet) -> Option<FleetDelta> {
        let (upsert_providers, remove_providers) = diff(&old.providers, &new.providers, |p| p.id.as_str());
        let (upsert_groups, remove_groups) = diff(&old.groups, &new.groups, |g| &g.name);
        let (upsert_tenants, remove_tenants) = diff(&old.tenants, &new.tenants, |t| &t.id);
        let delta = FleetDelta {
            upsert_providers,
            remove_providers: remove_providers.into_iter().map(ProviderId).collect(),
            upsert_groups,
            remove_groups,
            upsert_tenants,
            remove_tenants,
            policy: (old.policy != new.policy).then(|| new.policy.clone()),
        };
        (delta.apply(old) == *new).then_some(delta)
    }

    /// The fleet this delta makes of `base`.
    pub fn apply(&self, base: &Fleet) -> Fleet {
        let mut fleet = base.clone();
        let removed: Vec<&str> = self.remove_providers.iter().map(ProviderId::as_str).collect();
        patch(&mut fleet.providers, &self.upsert_providers, &removed, |p| {
            p.id.as_str()
        });
        let removed: Vec<&str> = self.remove_groups.iter().map(String::as_str).collect();
        patch(&mut fleet.groups, &self.upsert_groups, &removed, |g| &g.name);
        let removed: Vec<&str> = self.remove_tenants.iter().map(String::as_str).collect();
        patch(&mut fleet.tenants, &self.upsert_tenants, &removed, |t| &t.id);
        if let Some(policy) = &self.policy {
            fleet.policy = policy.clone();
        }
        fleet
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == FleetDelta::default()
    }
}

/// Items of `new` that are not in `old` as they are, and keys of `old` gone from `new`.
fn diff<T: Clone + PartialEq>(old: &[T], new: &[T], key: impl Fn(&T) -> &str) -> (Vec<T>, Vec<String>) {
    let before: HashMap<&str, &T> = old.iter().map(|o| (key(o), o)).collect();
    let after: HashSet<&str> = new.iter().map(&key).collect();
    let upsert = new.iter().filter(|n| before.get(key(n)) != Some(n)).cloned().collect();
    let remove = old
        .iter()
        .map(&key)
        .filter(|k| !after.contains(k))
        .map(str::to_owned)
        .collect();
    (upsert, remove)
}

fn patch<T: Clone>(items: &mut Vec<T>, upsert: &[T], remove: &[&str], key: impl Fn(&T) -> &str) {
    if !remove.is_empty() {
        items.retain(|i| !remove.contains(&key(i)));
    }
    for u in upsert {
        match items.iter_mut().find(|i| key(i) == key(u)) {
            Some(slot) => *slot = u.clone(),
            None => items.push(u.clone()),
        }
    }
}
