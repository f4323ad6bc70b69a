//! The hub every subscription hangs off: the version being pushed (encoded once,
//! shared by every session), the fleet-health verdict, and the registry of edges
//! with what each runs and what it last answered.
//!
//! It never blocks on an edge: sessions read from it and report into it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use meridian_proto::wire::{CpMessage, FleetDelta, Observation, encode};
use meridian_proto::{Fleet, ProviderId};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::FleetHealthConfig;

/// One fleet version, ready to send.
#[derive(Debug)]
pub struct Published {
    /// The version; 0 before anything was stored.
    pub version: u64,
    /// The fleet.
    pub fleet: Option<Arc<Fleet>>,
    /// The encoded snapshot frame.
    pub snapshot: Bytes,
    /// The encoded delta from the previous published version, when one exists.
    pub delta: Option<(u64, Bytes)>,
}

/// The fleet-health verdict, ready to send.
#[derive(Debug, Default)]
pub struct FleetHealth {
    /// Providers down for the fleet.
    pub down: Vec<ProviderId>,
    /// The encoded frame.
    pub frame: Bytes,
}

/// The last refusal of an edge.
#[derive(Debug, Clone, Serialize)]
pub struct NackRecord {
    /// The refused version.
    pub version: u64,
    /// The edge's reason.
    pub reason: String,
}

/// What the control plane knows of one edge.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeRecord {
    /// Its id (a DNS name in its certificate).
    pub edge_id: String,
    /// Whether a subscription is open now.
    pub connected: bool,
    /// `quic` or `h2`.
    pub transport: &'static str,
    /// Wire version in use.
    pub wire: u16,
    /// Peer address of the last subscription.
    pub addr: SocketAddr,
    /// The version it runs (its last ACK, or what it said at subscribing).
    pub version: Option<u64>,
    /// Its last ACKed version.
    pub acked: Option<u64>,
    /// Its last refusal, if the version it refused is newer than what it runs.
    pub nack: Option<NackRecord>,
    /// Unix seconds of its last message.
    pub last_seen: u64,
    /// Its latest view of the providers.
    pub observations: Vec<Observation>,
    #[serde(skip)]
    session: u64,
}

/// The shared state of push.
#[derive(Debug)]
pub struct Hub {
    epoch: u64,
    published: watch::Sender<Arc<Published>>,
    health: watch::Sender<Arc<FleetHealth>>,
    edges: Mutex<BTreeMap<String, EdgeRecord>>,
    sessions: std::sync::atomic::AtomicU64,
    quorum: FleetHealthConfig,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Hub {
    /// A hub for the store `epoch`, publishing `current` if there is one.
    pub fn new(epoch: u64, current: Option<(u64, Fleet)>, quorum: FleetHealthConfig) -> Hub {
        let empty = Arc::new(Published {
            version: 0,
            fleet: None,
            snapshot: Bytes::new(),
            delta: None,
        });
        let hub = Hub {
            epoch,
            published: watch::Sender::new(empty),
            health: watch::Sender::new(Arc::new(FleetHealth {
                down: Vec::new(),
                frame: Bytes::from(encode(&CpMessage::FleetHealth { down: Vec::new() })),
            })),
            edges: Mutex::new(BTreeMap::new()),
            sessions: std::sync::atomic::AtomicU64::new(0),
            quorum,
        };
        if let Some((version, fleet)) = current {
            hub.publish(version, fleet);
        }
        hub
    }

    /// The store's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Makes `fleet` at `version` the one every edge converges to. The snapshot and
    /// the delta from the previous version are encoded here, once for all edges.
    pub fn publish(&self, version: u64, fleet: Fleet) {
        let previous = self.published.borrow().clone();
        let delta = previous.fleet.as_deref().and_then(|old| {
            let d = FleetDelta::between(old, &fleet)?;
            let frame = encode(&CpMessage::Delta {
                epoch: self.epoch,
                version,
                base: previous.version,
                delta: d,
            });
            Some((previous.version, Bytes::from(frame)))
        });
        let fleet = Arc::new(fleet);
        let snapshot = Bytes::from(encode(&CpMessage::Snapshot {
            epoch: self.epoch,
            version,
            fleet: (*fleet).clone(),
        }));
        // A smaller snapshot beats a delta.
        let delta = delta.filter(|(_, d)| d.len() < snapshot.len());
        self.published.send_replace(Arc::new(Published {
            version,
            fleet: Some(fleet),
            snapshot,
            delta,
        }));
    }

    /// Follows the published version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.published.subscribe()
    }

    /// Follows the fleet-health verdict.
    pub fn health(&self) -> watch::Receiver<Arc<FleetHealth>> {
        self.health.subscribe()
    }

    /// Providers down for the fleet now.
    pub fn fleet_down(&self) -> Vec<ProviderId> {
        self.health.borrow().down.clone()
    }

    fn edges(&self) -> MutexGuard<'_, BTreeMap<String, EdgeRecord>> {
        self.edges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new subscription; returns its session number.
    pub fn connect(
        &self,
        edge_id: &str,
        addr: SocketAddr,
        transport: &'static str,
        wire: u16,
        version: Option<u64>,
    ) -> u64 {
        let session = self.sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut edges = self.edges();
        // What an earlier subscription learned (last ACK, NACK, observations) stays
        // until this one says otherwise.
        let (acked, nack, observations) = edges
            .remove(edge_id)
            .map_or((None, None, Vec::new()), |e| (e.acked, e.nack, e.observations));
        edges.insert(
            edge_id.to_owned(),
            EdgeRecord {
                edge_id: edge_id.to_owned(),
                connected: true,
                transport,
                wire,
                addr,
                version,
                acked,
                nack,
                last_seen: now(),
                observations,
                session,
            },
        );
        session
    }

    /// Records an answer from the edge of `session`.
    pub fn answered(&self, edge_id: &str, session: u64, version: u64, nack: Option<String>) {
        let mut edges = self.edges();
        if let Some(r) = edges.get_mut(edge_id).filter(|r| r.session == session) {
            r.last_seen = now();
            match nack {
                None => {
                    r.version = Some(version);
                    r.acked = Some(version);
                    if r.nack.as_ref().is_some_and(|n| n.version <= version) {
                        r.nack = None;
                    }
                }
                Some(reason) => r.nack = Some(NackRecord { version, reason }),
            }
        }
    }

    /// Records an edge's view of the providers and re-judges fleet health when the
    /// edge's up/down view changed (most reports only refresh round-trip times).
    pub fn observed(&self, edge_id: &str, session: u64, observations: Vec<Observation>) {
        let changed = {
            let mut edges = self.edges();
            match edges.get_mut(edge_id).filter(|r| r.session == session) {
                Some(r) => {
                    r.last_seen = now();
                    let same = r.observations.len() == observations.len()
                        && r.observations
                            .iter()
                            .zip(&observations)
                            .all(|(a, b)| a.provider == b.provider && a.up == b.up);
                    r.observations = observations;
                    !same
                }
                None => false,
            }
        };
        if changed {
            self.judge();
        }
    }

    /// Records the end of a subscription (unless a newer one replaced it).
    pub fn disconnected(&self, edge_id: &str, session: u64) {
        {
            let mut edges = self.edges();
            if let Some(r) = edges.get_mut(edge_id).filter(|r| r.session == session) {
                r.connected = false;
            }
        }
        self.judge();
    }

    /// Every edge ever seen since start, by id.
    pub fn list(&self) -> Vec<EdgeRecord> {
        self.edges().values().cloned().collect()
    }

    /// One edge.
    pub fn edge(&self, edge_id: &str) -> Option<EdgeRecord> {
        self.edges().get(edge_id).cloned()
    }

    /// Recomputes which providers are down for the fleet and publishes a change.
    fn judge(&self) {
        let down = {
            let edges = self.edges();
            let mut tally: BTreeMap<&ProviderId, (u32, u32)> = BTreeMap::new();
            for r in edges.values().filter(|r| r.connected) {
                for o in &r.observations {
                    let t = tally.entry(&o.provider).or_default();
                    t.0 += 1;
                    t.1 += u32::from(!o.up);
                }
            }
            tally
                .into_iter()
                .filter(|(_, (reporting, down))| {
                    *down >= self.quorum.min_edges && f64::from(*down) >= self.quorum.fraction * f64::from(*reporting)
                })
                .map(|(p, _)| p.clone())
                .collect::<Vec<_>>()
        };
        self.health.send_if_modified(|current| {
            if current.down == down {
                return false;
            }
            if !down.is_empty() || !current.down.is_empty() {
                tracing::info!(down = ?down, "fleet health changed");
            }
            *current = Arc::new(FleetHealth {
                frame: Bytes::from(encode(&CpMessage::FleetHealth { down: down.clone() })),
                down,
            });
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(p: &str, up: bool) -> Observation {
        Observation {
            provider: ProviderId(p.into()),
            up,
            rtt_ms: None,
        }
    }

    #[test]
    fn a_provider_is_down_for_the_fleet_only_with_a_quorum_of_connected_edges() {
        let hub = Hub::new(1, None, FleetHealthConfig::default());
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let s: Vec<u64> = (0..3)
            .map(|i| hub.connect(&format!("e{i}"), addr, "quic", 2, None))
            .collect();
        hub.observed("e0", s[0], vec![obs("a", false), obs("b", true)]);
        assert!(hub.fleet_down().is_empty(), "one edge is not a quorum");
        hub.observed("e1", s[1], vec![obs("a", false), obs("b", true)]);
        assert_eq!(hub.fleet_down(), vec![ProviderId("a".into())]);
        hub.observed("e2", s[2], vec![obs("a", true), obs("b", true)]);
        assert_eq!(
            hub.fleet_down(),
            vec![ProviderId("a".into())],
            "2 of 3 is at least half"
        );
        hub.disconnected("e1", s[1]);
        assert!(hub.fleet_down().is_empty(), "a disconnected edge no longer counts");
        // A stale session's report is ignored once the edge subscribed again.
        let again = hub.connect("e0", addr, "h2", 2, None);
        hub.observed("e0", s[0], vec![obs("b", false)]);
        assert_eq!(hub.edge("e0").unwrap().observations.len(), 2);
        hub.disconnected("e0", s[0]);
        assert!(hub.edge("e0").unwrap().connected);
        hub.disconnected("e0", again);
        assert!(!hub.edge("e0").unwrap().connected);
    }

    #[test]
    fn publishing_encodes_a_delta_only_when_it_is_smaller_than_the_snapshot() {
        let fleet: Fleet =
            serde_json::from_str(r#"{"policy":{"rules":[{"name":"any","origin":"*","allow":["*"]}]}}"#).unwrap();
        let hub = Hub::new(7, Some((1, fleet.clone())), FleetHealthConfig::default());
        assert!(hub.subscribe().borrow().delta.is_none());
        let mut bigger = fleet.clone();
        for i in 0..50 {
            bigger.tenants.push(meridian_proto::Tenant {
                id: format!("t{i}"),
                home: "DE".parse().unwrap(),
                bindings: vec![],
            });
        }
        hub.publish(2, bigger.clone());
        let mut one_more = bigger.clone();
        one_more.tenants[3].home = "FR".parse().unwrap();
        hub.publish(3, one_more);
        let p = hub.subscribe().borrow().clone();
        assert_eq!(p.delta.as_ref().map(|d| d.0), Some(2));
        assert!(p.delta.as_ref().unwrap().1.len() < p.snapshot.len() / 4);
    }
}
