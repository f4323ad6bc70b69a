//! Estimators over samples that arrive at irregular times. Pure: they take `now`.

use std::time::Duration;

use tokio::time::Instant;

/// Peak-sensitive moving average (as in linkerd and Finagle): a sample above the
/// estimate replaces it at once, so a latency spike is seen immediately; lower
/// samples pull it down with a time constant, so it recovers slowly.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    value: Option<f64>,
    stamp: Option<Instant>,
    tau: Duration,
}

impl PeakEwma {
    /// An empty estimator decaying with time constant `tau`.
    pub fn new(tau: Duration) -> Self {
        PeakEwma {
            value: None,
            stamp: None,
            tau,
        }
    }

    /// Adds a sample taken at `now`.
    pub fn observe(&mut self, sample: f64, now: Instant) {
        self.value = Some(match (self.value, self.stamp) {
            (Some(v), Some(t)) if sample < v => {
                let w = decay(now.saturating_duration_since(t), self.tau);
                v * w + sample * (1.0 - w)
            }
            _ => sample,
        });
        self.stamp = Some(now);
    }

    /// The estimate, if any sample arrived.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// Time-weighted moving average: a sample's weight grows with the time since the
/// previous one, so bursts of samples do not swamp the history.
#[derive(Debug, Clone)]
pub struct Ewma {
    value: Option<f64>,
    stamp: Option<Instant>,
    tau: Duration,
}

impl Ewma {
    /// An empty estimator with time constant `tau`.
    pub fn new(tau: Duration) -> Self {
        Ewma {
            value: None,
            stamp: None,
            tau,
        }
    }

    /// Adds a sample taken at `now`.
    pub fn observe(&mut self, sample: f64, now: Instant) {
        self.value = Some(match (self.value, self.stamp) {
            (Some(v), Some(t)) => {
                // At least a small weight, so a new sample always counts.
                let w = decay(now.saturating_duration_since(t), self.tau).min(0.9);
                v * w + sample * (1.0 - w)
            }
            _ => sample,
        });
        self.stamp = Some(now);
    }

    /// The estimate, if any sample arrived.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// `exp(-elapsed / tau)`: the weight history keeps after `elapsed`.
fn decay(elapsed: Duration, tau: Duration) -> f64 {
    (-elapsed.as_secs_f64() / tau.as_secs_f64().max(1e-9)).exp()
}
