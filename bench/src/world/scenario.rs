//! A world scenario: edges, providers and users with coordinates, the residency
//! policy, and timed events. One-way delay between two parties is their great-circle
//! distance at the speed of light in fibre (about 200 km per millisecond) plus a
//! fixed overhead; nothing else about the network is invented.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use meridian_proto::{Group, Jurisdiction, Policy, Tenant};
use serde::Deserialize;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Title of the report.
    pub name: String,
    /// How long users send requests, e.g. `"40s"`.
    pub duration: Secs,
    /// Added to every one-way path, milliseconds (switching, last mile).
    #[serde(default = "default_overhead")]
    pub overhead_ms: f64,
    /// Light in fibre, km per millisecond.
    #[serde(default = "default_km_per_ms")]
    pub km_per_ms: f64,
    /// Where the control plane is.
    pub control_plane: Place,
    /// Edges.
    pub edges: Vec<EdgeSpec>,
    /// Storage providers.
    pub providers: Vec<ProviderSpec>,
    /// Groups of users.
    pub users: Vec<UserSpec>,
    /// Groups, the residency policy and tenants (providers come from `providers`).
    pub fleet: FleetSpec,
    /// Timed events.
    #[serde(default)]
    pub events: Vec<Event>,
}

fn default_overhead() -> f64 {
    1.0
}
fn default_km_per_ms() -> f64 {
    200.0
}

/// A duration in seconds written as `"40s"` or a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Secs(pub Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        let secs = match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::S(s) => s
                .trim()
                .trim_end_matches('s')
                .parse::<f64>()
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a duration such as \"30s\"")))?,
        };
        if !(0.0..=86_400.0).contains(&secs) {
            return Err(serde::de::Error::custom("a duration between 0 and 86400 s"));
        }
        Ok(Secs(Duration::from_secs_f64(secs)))
    }
}

/// Latitude and longitude in degrees.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    /// `[latitude, longitude]`.
    pub at: [f64; 2],
}

/// An edge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// Its name.
    pub name: String,
    /// `[latitude, longitude]`.
    pub at: [f64; 2],
}

/// A simulated provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Its id in the fleet.
    pub id: String,
    /// Where its data centre is, legally.
    pub jurisdiction: Jurisdiction,
    /// `[latitude, longitude]`.
    pub at: [f64; 2],
    /// Uplink cap for `tc tbf`, e.g. `"100mbit"`; none when absent.
    #[serde(default)]
    pub bandwidth: Option<String>,
    /// Percentage of its packets lost on the way out (nftables), 0 to 100.
    #[serde(default)]
    pub loss_percent: u32,
}

/// Users near one edge, all of one origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// Label.
    pub name: String,
    /// The jurisdiction whose law governs their data.
    pub origin: Jurisdiction,
    /// The edge they use.
    pub edge: String,
    /// `[latitude, longitude]`.
    pub at: [f64; 2],
    /// Requests per second (open loop).
    pub rate: f64,
    /// Object sizes they GET, `SIZE[:WEIGHT]`.
    pub objects: Vec<String>,
}

/// The fleet minus its providers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Jurisdiction groups.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// The residency policy.
    pub policy: Policy,
    /// Tenants.
    #[serde(default)]
    pub tenants: Vec<Tenant>,
}

/// Something that happens at a time. (Its kind is told apart by its fields, so
/// unknown fields cannot be refused here.)
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    /// When, from the start of the users' load.
    pub at: Secs,
    /// What.
    #[serde(flatten)]
    pub what: EventKind,
}

/// What happens.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EventKind {
    /// A provider's own behaviour changes (slows, errs, recovers with zeros).
    Impair {
        /// The provider.
        provider: String,
        /// Its new impairments.
        impair: meridian_sim::Impairments,
    },
    /// A provider dies (`"kill"`) or comes back (`"start"`).
    Provider {
        /// The provider.
        provider: String,
        /// `kill` or `start`.
        action: Action,
    },
    /// The control plane stops or starts.
    ControlPlane {
        /// `kill` or `start`.
        control_plane: Action,
    },
    /// The residency policy changes (through the control plane's API).
    Policy {
        /// The new policy.
        policy: Policy,
    },
}

/// Stop or start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// SIGKILL.
    Kill,
    /// Start again.
    Start,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let src = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let s: Scenario = toml::from_str(&src).with_context(|| format!("{}", path.display()))?;
        s.check().with_context(|| format!("{}", path.display()))?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.edges.is_empty(), "edges: at least one");
        anyhow::ensure!(!self.providers.is_empty(), "providers: at least one");
        for (i, u) in self.users.iter().enumerate() {
            anyhow::ensure!(
                self.edges.iter().any(|e| e.name == u.edge),
                "users[{i}].edge: no edge named `{}`",
                u.edge
            );
            anyhow::ensure!(u.rate > 0.0, "users[{i}].rate: must be above zero");
            anyhow::ensure!(!u.objects.is_empty(), "users[{i}].objects: at least one size");
        }
        for (i, p) in self.providers.iter().enumerate() {
            anyhow::ensure!(p.loss_percent <= 100, "providers[{i}].loss_percent: 0 to 100");
        }
        for (i, e) in self.events.iter().enumerate() {
            let provider = match &e.what {
                EventKind::Impair { provider, impair } => {
                    impair.check().map_err(|m| anyhow::anyhow!("events[{i}].impair: {m}"))?;
                    Some(provider)
                }
                EventKind::Provider { provider, .. } => Some(provider),
                _ => None,
            };
            if let Some(p) = provider {
                anyhow::ensure!(
                    self.providers.iter().any(|x| x.id == *p),
                    "events[{i}].provider: no provider `{p}`"
                );
            }
            anyhow::ensure!(e.at.0 <= self.duration.0, "events[{i}].at: after the end");
        }
        self.fleet()
            .validate()
            .map_err(|e| anyhow::anyhow!("fleet.{}: {}", e.path, e.message))?;
        Ok(())
    }

    /// The fleet document, endpoints filled in by `address` per provider.
    pub fn fleet_with(&self, address: impl Fn(&ProviderSpec) -> String) -> meridian_proto::Fleet {
        let providers = self
            .providers
            .iter()
            .map(|p| {
                serde_json::from_value(serde_json::json!({
                    "id": p.id,
                    "jurisdiction": p.jurisdiction,
                    "endpoint": { "address": address(p) },
                }))
                .unwrap_or_else(|e| unreachable!("a provider spec always decodes: {e}"))
            })
            .collect();
        meridian_proto::Fleet {
            groups: self.fleet.groups.clone(),
            providers,
            policy: self.fleet.policy.clone(),
            tenants: self.fleet.tenants.clone(),
        }
    }

    fn fleet(&self) -> meridian_proto::Fleet {
        self.fleet_with(|_| "127.0.0.1:1".into())
    }

    /// One-way delay between two places.
    pub fn one_way(&self, a: [f64; 2], b: [f64; 2]) -> Duration {
        Duration::from_secs_f64((great_circle_km(a, b) / self.km_per_ms + self.overhead_ms) / 1e3)
    }
}

/// Great-circle distance in km (haversine, mean Earth radius).
pub fn great_circle_km(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a[0].to_radians(),
        a[1].to_radians(),
        b[0].to_radians(),
        b[1].to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2) + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_delays_are_physical() {
        // Frankfurt - New York is about 6,200 km: ~31 ms one way in fibre.
        let fra = [50.11, 8.68];
        let nyc = [40.71, -74.0];
        let km = great_circle_km(fra, nyc);
        assert!((6150.0..6250.0).contains(&km), "{km}");
        assert!(great_circle_km(fra, fra) < 1e-9);
    }

    #[test]
    fn the_committed_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap();
                n += 1;
            }
        }
        assert!(n >= 3, "at least three scenarios in {}", dir.display());
    }
}
