//! The edge's side of push: subscribe to the control plane, apply each version it
//! sends atomically (or refuse it and keep the previous one), answer every version
//! with an ACK or a NACK, keep the last acknowledged snapshot on disk, report what
//! this edge sees of the providers, and follow fleet health.
//!
//! It never half-applies: a version is validated, then handed whole to the
//! [`FleetSink`], whose apply is one snapshot swap. A lost control plane changes
//! nothing on the request path; the subscription comes back with jittered
//! exponential back-off.

pub mod persist;
pub mod transport;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian_proto::wire::{
    CpMessage, EdgeMessage, FrameError, Hello, Observation, Running, decode, encode, read_frame, write_frame,
};
use meridian_proto::{Fleet, ProviderId};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use persist::Persisted;
pub use transport::{ConnectError, Connector, Link};

/// How long the control plane has to welcome a subscription.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Observations are re-sent at least this often (RTT estimates drift).
const REPORT_REFRESH: u32 = 10;

/// What push changes in the edge.
pub trait FleetSink: Send + Sync + 'static {
    /// Makes `fleet` (version `running`) the running one in one swap, or says why
    /// not and changes nothing.
    fn apply(&self, running: Running, fleet: &Fleet) -> Result<(), String>;
    /// Providers the fleet considers down (replaces the previous list).
    fn fleet_health(&self, down: &[ProviderId]);
    /// This edge's view of every provider.
    fn observations(&self) -> Vec<Observation>;
}

/// How the subscription behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This edge's id.
    pub edge_id: String,
    /// Where to keep the last acknowledged snapshot; nowhere when `None`.
    pub state_dir: Option<PathBuf>,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// How often to check for changed observations.
    pub report_interval: Duration,
    /// Wire version to offer (this build's newest unless testing compatibility).
    pub wire: u16,
}

/// The subscription's state, for the admin listener.
#[derive(Debug, Default)]
pub struct PushStatus {
    inner: Mutex<StatusView>,
}

/// A copy of the subscription's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusView {
    /// Whether a subscription is open.
    pub connected: bool,
    /// `quic` or `h2` while connected.
    pub transport: Option<&'static str>,
    /// The version applied last.
    pub running: Option<Running>,
    /// Unix seconds of the last version applied or confirmed current.
    pub last_sync: Option<u64>,
    /// Why the last subscription attempt or session ended.
    pub last_error: Option<String>,
    /// Versions acknowledged since start.
    pub acks: u64,
    /// Versions refused since start.
    pub nacks: u64,
}

impl PushStatus {
    /// A copy of the current state.
    pub fn view(&self) -> StatusView {
        self.inner.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut StatusView)) {
        if let Ok(mut s) = self.inner.lock() {
            f(&mut s);
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The stream failed or carried garbage.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The control plane did not welcome the subscription in time.
    #[error("no welcome from the control plane within {WELCOME_TIMEOUT:?}")]
    NoWelcome,
    /// The control plane refused the subscription.
    #[error("refused by the control plane: {0}")]
    Refused(String),
    /// The control plane broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// The version the edge runs and the fleet behind it.
#[derive(Debug, Clone)]
pub struct Current {
    /// Store and version.
    pub running: Running,
    /// The fleet.
    pub fleet: Arc<Fleet>,
}

/// Subscribes until `stop` turns true, reconnecting with jittered exponential
/// back-off. `current` is what the edge runs at start (a persisted snapshot).
pub async fn run(
    connector: Arc<Connector>,
    settings: Settings,
    sink: Arc<dyn FleetSink>,
    status: Arc<PushStatus>,
    mut current: Option<Current>,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempt: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let outcome = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = connector.connect() => r,
        };
        let error = match outcome {
            Ok(link) => {
                let transport = link.transport;
                let mut welcomed = false;
                let r = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    r = session(link, &settings, &*sink, &status, &mut current, &mut welcomed) => r,
                };
                if welcomed {
                    attempt = 0;
                }
                let e = match r {
                    Ok(()) => "control plane closed the subscription".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(transport, error = %e, "control-plane subscription ended");
                e
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "cannot reach the control plane");
                e.to_string()
            }
        };
        status.update(|s| {
            s.connected = false;
            s.transport = None;
            s.last_error = Some(error);
        });
        let delay = backoff(
            attempt,
            settings.reconnect_min,
            settings.reconnect_max,
            crate::selector::random(),
        );
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Delay before reconnect `attempt` (0-based): exponential from `min`, capped at
/// `max`, then drawn uniformly from its upper half so edges cut off together do
/// not come back together.
fn backoff(attempt: u32, min: Duration, max: Duration, random: u64) -> Duration {
    let ceiling = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let unit = (random % 1_000_001) as f64 / 1_000_000.0;
    ceiling.mul_f64(0.5 + 0.5 * unit)
}

/// One subscription: hello, welcome, then versions and fleet health until the
/// stream ends.
async fn session(
    link: Link,
    settings: &Settings,
    sink: &dyn FleetSink,
    status: &PushStatus,
    current: &mut Option<Current>,
    welcomed: &mut bool,
) -> Result<(), SessionError> {
    let Link {
        mut rx,
        mut tx,
        transport,
        ..
    } = link;
    let hello = EdgeMessage::Hello(Hello {
        wire: settings.wire,
        edge_id: settings.edge_id.clone(),
        running: current.as_ref().map(|c| c.running),
    });
    write_frame(&mut tx, &encode(&hello)).await?;
    let first = match tokio::time::timeout(WELCOME_TIMEOUT, read_frame(&mut rx)).await {
        Err(_) | Ok(Ok(None)) => return Err(SessionError::NoWelcome),
        Ok(r) => r?.unwrap_or_default(),
    };
    let wire = match decode::<CpMessage>(&first)? {
        CpMessage::Welcome { wire, .. } if wire <= settings.wire => wire,
        CpMessage::Refused { reason, .. } => return Err(SessionError::Refused(reason)),
        other => return Err(SessionError::Protocol(format!("expected welcome, got {other:?}"))),
    };
    *welcomed = true;
    status.update(|s| {
        s.connected = true;
        s.transport = Some(transport);
        s.last_error = None;
    });
    tracing::info!(transport, wire, "subscribed to the control plane");

    let (messages_tx, mut messages) = mpsc::channel::<CpMessage>(4);
    let reader = async move {
        loop {
            let Some(frame) = read_frame(&mut rx).await? else {
                return Ok::<(), SessionError>(());
            };
            let message = decode::<CpMessage>(&frame)?;
            if message.since() > wire {
                return Err(SessionError::Protocol(format!(
                    "message needs wire {} but {wire} was agreed",
                    message.since()
                )));
            }
            if messages_tx.send(message).await.is_err() {
                return Ok(());
            }
        }
    };
    let main = async {
        let mut tick = tokio::time::interval(settings.report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported: Option<Vec<(ProviderId, bool)>> = None;
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                m = messages.recv() => {
                    let Some(m) = m else { return Ok(()) };
                    if let Some(answer) = handle(m, settings, sink, status, current) {
                        write_frame(&mut tx, &encode(&answer)).await?;
                    }
                }
                _ = tick.tick(), if wire >= 2 => {
                    let observations = sink.observations();
                    let ups: Vec<(ProviderId, bool)> =
                        observations.iter().map(|o| (o.provider.clone(), o.up)).collect();
                    ticks += 1;
                    if reported.as_ref() != Some(&ups) || ticks >= REPORT_REFRESH {
                        write_frame(&mut tx, &encode(&EdgeMessage::Health { observations })).await?;
                        reported = Some(ups);
                        ticks = 0;
                    }
                }
            }
        }
    };
    tokio::select! {
        r = reader => r,
        r = main => r,
    }
}

/// Handles one message; returns the answer to send, if any.
fn handle(
    message: CpMessage,
    settings: &Settings,
    sink: &dyn FleetSink,
    status: &PushStatus,
    current: &mut Option<Current>,
) -> Option<EdgeMessage> {
    let (running, fleet) = match message {
        CpMessage::FleetHealth { down } => {
            sink.fleet_health(&down);
            return None;
        }
        CpMessage::Welcome { .. } | CpMessage::Refused { .. } => return None,
        CpMessage::Snapshot { epoch, version, fleet } => (Running { epoch, version }, fleet),
        CpMessage::Delta {
            epoch,
            version,
            base,
            delta,
        } => match current.as_ref() {
            Some(c) if c.running == (Running { epoch, version: base }) => {
                (Running { epoch, version }, delta.apply(&c.fleet))
            }
            other => {
                let reason = format!(
                    "delta from version {base} does not apply: this edge runs {:?}",
                    other.map(|c| c.running)
                );
                return Some(nack(status, version, reason));
            }
        },
    };
    let version = running.version;
    if current.as_ref().is_some_and(|c| c.running == running) {
        status.update(|s| s.last_sync = Some(unix_now()));
        return Some(EdgeMessage::Ack { version });
    }
    if let Err(e) = fleet.validate() {
        return Some(nack(
            status,
            version,
            format!("invalid fleet: fleet.{}: {}", e.path, e.message),
        ));
    }
    if let Err(reason) = sink.apply(running, &fleet) {
        return Some(nack(status, version, reason));
    }
    let fleet = Arc::new(fleet);
    if let Some(dir) = &settings.state_dir {
        let snapshot = Persisted {
            running,
            fleet: (*fleet).clone(),
        };
        if let Err(e) = persist::save(dir, &snapshot) {
            // The version runs; only a restart without the control plane would come
            // back on an older one.
            tracing::error!(dir = %dir.display(), error = %e, "cannot persist the fleet snapshot");
        }
    }
    tracing::info!(
        version,
        epoch = running.epoch,
        "applied fleet version from the control plane"
    );
    *current = Some(Current { running, fleet });
    status.update(|s| {
        s.running = Some(running);
        s.last_sync = Some(unix_now());
        s.acks += 1;
    });
    Some(EdgeMessage::Ack { version })
}

fn nack(status: &PushStatus, version: u64, reason: String) -> EdgeMessage {
    tracing::warn!(version, reason = %reason, "refused fleet version from the control plane");
    status.update(|s| s.nacks += 1);
    EdgeMessage::Nack { version, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_stays_in_its_upper_half() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
        for attempt in 0..40 {
            let ceiling = min.saturating_mul(1 << attempt.min(20)).min(max);
            for r in [0, 500_000, 1_000_000, u64::MAX] {
                let d = backoff(attempt, min, max, r);
                assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
            }
        }
        assert_eq!(backoff(30, min, max, 1_000_000), max);
    }
}
