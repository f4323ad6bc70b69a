//! The one validation of a [`Fleet`], run by the control plane before it accepts a
//! change and by an edge before it applies one. Errors name the offending field by
//! its path (`policy.rules[2].allow[0]`) so an operator can find it.

use std::collections::HashSet;

use crate::Scheme;
use crate::fleet::Fleet;
use crate::policy::{OriginMatch, Place};

/// A fleet that must not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FleetError {
    /// Path of the offending field, e.g. `providers[1].endpoint.address`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> Result<(), FleetError> {
    Err(FleetError {
        path: path.into(),
        message: message.into(),
    })
}

impl Fleet {
    /// Checks references, names and shapes; returns the first problem found.
    pub fn validate(&self) -> Result<(), FleetError> {
        let mut groups = HashSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            if g.name.is_empty() || g.name.contains([':', ' ']) {
                return err(
                    format!("groups[{i}].name"),
                    "must be a non-empty name without `:` or spaces",
                );
            }
            if !groups.insert(g.name.as_str()) {
                return err(format!("groups[{i}].name"), format!("duplicate group `{}`", g.name));
            }
            if g.members.is_empty() {
                return err(
                    format!("groups[{i}].members"),
                    "a group needs at least one jurisdiction",
                );
            }
        }

        let mut ids = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = |f: &str| format!("providers[{i}].{f}");
            if p.id.as_str().is_empty() || p.id.as_str().contains([' ', ';', ',', '=']) {
                return err(at("id"), "must be non-empty, without spaces or `;,=`");
            }
            if !ids.insert(p.id.as_str()) {
                return err(at("id"), format!("duplicate provider id `{}`", p.id));
            }
            let addr = &p.endpoint.address;
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return err(at("endpoint.address"), format!("`{addr}` is not host:port"));
            }
            if p.endpoint.scheme == Scheme::Http && p.endpoint.sni.is_some() {
                return err(at("endpoint.sni"), "only meaningful with scheme = \"https\"");
            }
            if p.max_connections == 0 {
                return err(at("max_connections"), "must be at least 1");
            }
            if p.weight == 0 {
                return err(at("weight"), "must be at least 1");
            }
            if let Some(c) = p.coordinates {
                if !(-90.0..=90.0).contains(&c.lat) || !(-180.0..=180.0).contains(&c.lon) {
                    return err(
                        at("coordinates"),
                        "latitude must be within ±90 and longitude within ±180",
                    );
                }
            }
            if let Some(t) = p.tags.iter().position(|t| t.is_empty()) {
                return err(format!("providers[{i}].tags[{t}]"), "must not be empty");
            }
        }

        if self.policy.rules.is_empty() {
            return err(
                "policy.rules",
                "a policy needs at least one rule; without one every request is refused",
            );
        }
        let mut names = HashSet::new();
        for (i, r) in self.policy.rules.iter().enumerate() {
            let at = |f: &str| format!("policy.rules[{i}].{f}");
            if r.name.is_empty() {
                return err(at("name"), "must not be empty");
            }
            if !names.insert(r.name.as_str()) {
                return err(at("name"), format!("duplicate rule name `{}`", r.name));
            }
            if let OriginMatch::Group(g) = &r.origin {
                if !groups.contains(g.as_str()) {
                    return err(at("origin"), format!("unknown group `{g}`"));
                }
            }
            if r.allow.is_empty() {
                return err(
                    at("allow"),
                    "must name at least one place; an empty allow set refuses everything",
                );
            }
            for (field, places) in [("allow", &r.allow), ("deny", &r.deny)] {
                for (k, place) in places.iter().enumerate() {
                    let bad = match place {
                        Place::Group(g) if !groups.contains(g.as_str()) => Some(format!("unknown group `{g}`")),
                        Place::Provider(id) if !ids.contains(id.as_str()) => Some(format!("unknown provider `{id}`")),
                        _ => None,
                    };
                    if let Some(message) = bad {
                        return err(format!("policy.rules[{i}].{field}[{k}]"), message);
                    }
                }
            }
            if let Some(t) = r.require_tags.iter().position(|t| t.is_empty()) {
                return err(format!("policy.rules[{i}].require_tags[{t}]"), "must not be empty");
            }
        }

        let mut tenants = HashSet::new();
        // Overlaps within one tenant are harmless (same home); across tenants a
        // request's origin would depend on binding order.
        let mut bindings: Vec<(usize, String, &crate::fleet::Binding)> = Vec::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.id.is_empty() {
                return err(format!("tenants[{i}].id"), "must not be empty");
            }
            if !tenants.insert(t.id.as_str()) {
                return err(format!("tenants[{i}].id"), format!("duplicate tenant `{}`", t.id));
            }
            if t.bindings.is_empty() {
                return err(format!("tenants[{i}].bindings"), "a tenant needs at least one binding");
            }
            for (k, b) in t.bindings.iter().enumerate() {
                let at = format!("tenants[{i}].bindings[{k}]");
                if b.host.is_none() && b.path_prefix.is_none() {
                    return err(at, "a binding needs a host, a path_prefix, or both");
                }
                if let Some(h) = &b.host {
                    if h.is_empty() || h.contains([':', '/', ' ']) || h.bytes().any(|c| c.is_ascii_uppercase()) {
                        return err(format!("{at}.host"), "must be a lower-case host name without port");
                    }
                }
                if let Some(p) = &b.path_prefix {
                    if !p.starts_with('/') {
                        return err(format!("{at}.path_prefix"), "must start with `/`");
                    }
                }
                if let Some((_, other, _)) = bindings.iter().find(|(owner, _, o)| *owner != i && o.overlaps(b)) {
                    return err(at, format!("overlaps {other}: a request could belong to both tenants"));
                }
                bindings.push((i, format!("tenants[{i}].bindings[{k}] ({})", t.id), b));
            }
        }
        Ok(())
    }
}
