//! The push protocol between the control plane and its edges: messages, the delta
//! between two fleet versions, and the frame codec.
//!
//! One subscription is one bidirectional byte stream (a QUIC stream, or the request
//! and response bodies of one HTTP/2 exchange) carrying frames: a 4-byte big-endian
//! length, then that many bytes of JSON holding one message. The edge speaks first
//! with [`Hello`], naming the newest wire version it speaks; the control plane answers
//! [`CpMessage::Welcome`] with the version both will use, or [`CpMessage::Refused`].
//!
//! Compatibility window: a control plane serves every wire version from
//! [`OLDEST_WIRE_VERSION`] to [`WIRE_VERSION`], so an edge one release behind keeps
//! receiving configuration while the fleet is upgraded. Fields may be added to a
//! message without a version bump (readers ignore fields they do not know); a new
//! message type, or a change to the fleet model's encoding, needs one.
//!
//! | wire | messages |
//! |---|---|
//! | 1 | `hello`, `welcome`, `refused`, `snapshot`, `ack`, `nack` |
//! | 2 | adds `delta`, `health` (edge → control plane), `fleet_health` |
//!
//! This module is data and codec only: it never opens a socket or a file; the
//! caller hands it the stream.

use serde::{Deserialize, Serialize};

use crate::{Fleet, ProviderId};

mod codec;
mod delta;

pub use codec::{FrameError, read_frame, write_frame};
pub use delta::FleetDelta;

/// The newest wire version this build speaks.
pub const WIRE_VERSION: u16 = 2;
/// The oldest wire version a control plane of this build still serves.
pub const OLDEST_WIRE_VERSION: u16 = 1;
/// ALPN protocol of the QUIC transport.
pub const ALPN_QUIC: &[u8] = b"meridian-push";
/// Path of the HTTP/2 transport (`POST`, bodies carry the frames both ways).
pub const H2_PATH: &str = "/v1/push";
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 32 << 20;

/// What an edge says when it subscribes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The newest wire version the edge speaks.
    pub wire: u16,
    /// The edge's name; it must be a DNS name in the edge's client certificate.
    pub edge_id: String,
    /// What the edge runs now, so the control plane can send a delta or nothing.
    #[serde(default)]
    pub running: Option<Running>,
}

/// A fleet version as an edge holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The store the version came from; versions of different stores are unrelated.
    pub epoch: u64,
    /// The version.
    pub version: u64,
}

/// One provider as one edge sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The provider.
    pub provider: ProviderId,
    /// Whether the edge would send it requests (not ejected after failures).
    pub up: bool,
    /// The edge's smoothed round-trip time to it, when measured.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
}

/// Edge → control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EdgeMessage {
    /// First message of a subscription.
    Hello(Hello),
    /// The version is applied (one snapshot swap) and persisted.
    Ack {
        /// The version.
        version: u64,
    },
    /// The version was refused; the edge keeps what it ran before.
    Nack {
        /// The version.
        version: u64,
        /// Why, for operators.
        reason: String,
    },
    /// The edge's view of every provider (wire 2).
    Health {
        /// One per provider the edge knows.
        observations: Vec<Observation>,
    },
}

/// Control plane → edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CpMessage {
    /// The subscription is accepted.
    Welcome {
        /// The wire version both sides use from now on.
        wire: u16,
        /// The control plane's store.
        epoch: u64,
    },
    /// The subscription is refused; the connection closes.
    Refused {
        /// Why.
        reason: String,
        /// Oldest wire version served.
        oldest: u16,
        /// Newest wire version served.
        newest: u16,
    },
    /// A whole fleet version.
    Snapshot {
        /// The store it came from.
        epoch: u64,
        /// Its version.
        version: u64,
        /// The fleet.
        fleet: Fleet,
    },
    /// The change from `base`, which the edge runs, to `version` (wire 2).
    Delta {
        /// The store it came from.
        epoch: u64,
        /// The version it produces.
        version: u64,
        /// The version it applies to.
        base: u64,
        /// The change.
        delta: FleetDelta,
    },
    /// Providers the fleet as a whole considers down (wire 2). Replaces the previous
    /// list.
    FleetHealth {
        /// Down by quorum of edges.
        down: Vec<ProviderId>,
    },
}

impl CpMessage {
    /// The oldest wire version that carries this message.
    pub fn since(&self) -> u16 {
        match self {
            CpMessage::Delta { .. } | CpMessage::FleetHealth { .. } => 2,
            _ => 1,
        }
    }
}

impl EdgeMessage {
    /// The oldest wire version that carries this message.
    pub fn since(&self) -> u16 {
        match self {
            EdgeMessage::Health { .. } => 2,
            _ => 1,
        }
    }
}

/// The wire version a control plane speaking `oldest..=newest` uses with an edge
/// whose newest is `edge`, or `None` when the edge is too old.
pub fn negotiate(edge: u16, oldest: u16, newest: u16) -> Option<u16> {
    (edge >= oldest).then(|| edge.min(newest))
}

/// Encodes a message as one frame (length prefix included).
pub fn encode<M: Serialize>(message: &M) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // Serialising these types cannot fail: no maps with non-string keys, no custom
    // serialisers that error.
    let _ = serde_json::to_writer(&mut out, message);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Decodes the payload of one frame.
pub fn decode<'a, M: Deserialize<'a>>(payload: &'a [u8]) -> Result<M, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests;
