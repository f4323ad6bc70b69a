//! Selection: among the providers the policy allows, the one that should finish this
//! request soonest, estimated as `rtt + expected_bytes / bandwidth`, penalised by
//! load and recent failures; power-of-two choices among the near-best so that edges
//! acting on the same estimates do not all herd onto one provider.
//!
//! Plain code over per-provider estimates: every entry point takes `now`, so it is
//! tested without sockets or sleeps. It only ever chooses from the candidates it is
//! given, and answers `None` (fail closed) when none is usable.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

mod estimator;

pub use estimator::{Ewma, PeakEwma};

/// Consecutive failures that eject a provider.
const EJECT_AFTER: u32 = 5;
/// First ejection; doubles with each further one.
const EJECT_BASE: Duration = Duration::from_secs(10);
/// Longest ejection.
const EJECT_MAX: Duration = Duration::from_secs(300);
/// After an ejection a provider's cost starts high and falls to normal over this.
const SLOW_START: Duration = Duration::from_secs(30);
/// Candidates within this factor of the best cost are "near-best".
const NEAR_BEST: f64 = 1.25;
/// Bandwidth assumed before the first measurement, bytes/s.
const DEFAULT_BANDWIDTH: f64 = 100e6;

#[derive(Debug)]
struct Health {
    rtt: PeakEwma,
    bandwidth: Ewma,
    failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    returned_at: Option<Instant>,
}

/// What one edge knows about one provider right now. Shared by all workers and kept
/// across config reloads.
#[derive(Debug)]
pub struct ProviderStats {
    inflight: AtomicU32,
    /// Down by a quorum of the fleet's edges, as the control plane last said.
    fleet_down: AtomicBool,
    // One short critical section per sample or per cost; never held across await.
    health: Mutex<Health>,
}

impl Default for ProviderStats {
    fn default() -> Self {
        ProviderStats {
            inflight: AtomicU32::new(0),
            fleet_down: AtomicBool::new(false),
            health: Mutex::new(Health {
                rtt: PeakEwma::new(Duration::from_secs(10)),
                bandwidth: Ewma::new(Duration::from_secs(60)),
                failures: 0,
                ejections: 0,
                ejected_until: None,
                returned_at: None,
            }),
        }
    }
}

impl ProviderStats {
    /// A request started; the guard ends it.
    pub fn begin(self: &std::sync::Arc<Self>) -> InflightToken {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightToken(self.clone())
    }

    /// Requests in flight.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// A round-trip sample (probe or time to first byte).
    pub fn observe_rtt(&self, rtt: Duration, now: Instant) {
        if let Ok(mut h) = self.health.lock() {
            h.rtt.observe(rtt.as_secs_f64(), now);
        }
    }

    /// A throughput sample: `bytes` moved in `elapsed`.
    pub fn observe_transfer(&self, bytes: u64, elapsed: Duration, now: Instant) {
        if elapsed.is_zero() {
            return;
        }
        if let Ok(mut h) = self.health.lock() {
            h.bandwidth.observe(bytes as f64 / elapsed.as_secs_f64(), now);
        }
    }

    /// The provider answered (a response head arrived and was not a 5xx).
    pub fn observe_success(&self) {
        if let Ok(mut h) = self.health.lock() {
            h.failures = 0;
        }
    }

    /// A response head after `rtt`: a round-trip sample, and a success unless the
    /// provider failed (5xx). One critical section for both.
    pub fn observe_answer(&self, rtt: Duration, failed: bool, now: Instant) {
        if let Ok(mut h) = self.health.lock() {
            h.rtt.observe(rtt.as_secs_f64(), now);
            if failed {
                Self::fail(&mut h, now);
            } else {
                h.failures = 0;
            }
        }
    }

    /// The provider failed a request (connect failure, timeout, 5xx). Enough in a row
    /// eject it, for longer each time.
    pub fn observe_failure(&self, now: Instant) {
        if let Ok(mut h) = self.health.lock() {
            Self::fail(&mut h, now);
        }
    }

    fn fail(h: &mut Health, now: Instant) {
        h.failures += 1;
        if h.failures >= EJECT_AFTER {
            let factor = 1u32 << h.ejections.min(16);
            let length = EJECT_BASE.saturating_mul(factor).min(EJECT_MAX);
            h.ejected_until = Some(now + length);
            h.returned_at = Some(now + length);
            h.ejections += 1;
            h.failures = 0;
        }
    }

    /// Records the fleet's verdict. Down for the fleet excludes the provider; up for
    /// the fleet changes nothing, so this edge's own evidence of failure still wins.
    pub fn set_fleet_down(&self, down: bool) {
        self.fleet_down.store(down, Ordering::Relaxed);
    }

    /// Whether the fleet considers it down.
    pub fn fleet_down(&self) -> bool {
        self.fleet_down.load(Ordering::Relaxed)
    }

    /// Whether the provider is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.health
            .lock()
            .map(|h| h.ejected_until.is_some_and(|t| now < t))
            .unwrap_or(false)
    }

    /// Estimated seconds to complete a request moving `bytes`, with load and
    /// slow-start penalties; `None` while ejected.
    pub fn cost(&self, bytes: u64, now: Instant) -> Option<f64> {
        if self.fleet_down() {
            return None;
        }
        let h = self.health.lock().ok()?;
        if h.ejected_until.is_some_and(|t| now < t) {
            return None;
        }
        let rtt = h.rtt.get().unwrap_or(0.0);
        let bandwidth = h.bandwidth.get().unwrap_or(DEFAULT_BANDWIDTH).max(1.0);
        let mut cost = rtt + bytes as f64 / bandwidth;
        cost *= 1.0 + f64::from(self.inflight());
        if let Some(back) = h.returned_at {
            let since = now.saturating_duration_since(back);
            if since < SLOW_START {
                cost *= 1.0 + 4.0 * (1.0 - since.as_secs_f64() / SLOW_START.as_secs_f64());
            }
        }
        // Zero-cost (never measured) providers still need an order among themselves.
        Some(cost.max(1e-9))
    }

    /// How many times it was ejected since this edge started.
    pub fn ejections(&self) -> u64 {
        self.health.lock().map_or(0, |h| u64::from(h.ejections))
    }

    /// The current RTT and bandwidth estimates, for explanations and metrics.
    pub fn estimates(&self) -> (Option<f64>, Option<f64>) {
        self.health
            .lock()
            .map(|h| (h.rtt.get(), h.bandwidth.get()))
            .unwrap_or((None, None))
    }
}

/// Marks one request in flight to a provider until dropped.
#[derive(Debug)]
pub struct InflightToken(std::sync::Arc<ProviderStats>);

impl Drop for InflightToken {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Response sizes learned per object (host and path) and per route (host and first
/// path segment, e.g. a bucket), so a `GET` that announces no size still finds the
/// provider that finishes it soonest: an object seen before is expected at its own
/// size, a new one at its route's moving average. Fixed tables of atomics: untrusted
/// paths can collide, which only blurs an estimate, and can never grow memory.
#[derive(Debug)]
pub struct SizeTable {
    routes: Box<[std::sync::atomic::AtomicU64]>,
    /// Per object: a 24-bit tag of its path hash, then its size + 1 in 40 bits.
    objects: Box<[std::sync::atomic::AtomicU64]>,
}

const SIZE_SLOTS: usize = 4096;
const OBJECT_SLOTS: usize = 1 << 16;
const OBJECT_SIZE_BITS: u32 = 40;
const OBJECT_SIZE_MASK: u64 = (1 << OBJECT_SIZE_BITS) - 1;

impl Default for SizeTable {
    fn default() -> Self {
        let table = |n: usize| (0..n).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        SizeTable {
            routes: table(SIZE_SLOTS),
            objects: table(OBJECT_SLOTS),
        }
    }
}

/// Where one request's object and route sizes live in a [`SizeTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteKey {
    route: usize,
    object: usize,
    tag: u64,
}

impl SizeTable {
    /// The key of a request to `host` for `path`: one pass of FNV-1a over host and
    /// path (allocation-free and fast; not for anything adversarially hard), the
    /// route's hash taken where the first path segment ends.
    pub fn key(host: &str, path: &str) -> RouteKey {
        let step = |h: u64, b: &u8| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        let mut h = host.as_bytes().iter().fold(0xcbf2_9ce4_8422_2325, step);
        let p = path.as_bytes();
        let lead = usize::from(p.first() == Some(&b'/'));
        let segment_end = p[lead..].iter().position(|&b| b == b'/').map_or(p.len(), |i| i + lead);
        h = p[..segment_end].iter().fold(h, step);
        let route = h;
        let object = p[segment_end..].iter().fold(h, step);
        RouteKey {
            route: (route % SIZE_SLOTS as u64) as usize,
            object: (object % OBJECT_SLOTS as u64) as usize,
            tag: object >> OBJECT_SIZE_BITS,
        }
    }

    /// The learned response size at `key`: the object's own when it was seen, else
    /// its route's average; 0 when unknown.
    pub fn expected_at(&self, key: RouteKey) -> u64 {
        let v = self.objects[key.object].load(Ordering::Relaxed);
        if v != 0 && v >> OBJECT_SIZE_BITS == key.tag {
            return (v & OBJECT_SIZE_MASK) - 1;
        }
        self.routes[key.route].load(Ordering::Relaxed)
    }

    /// Learns a response of `bytes` at `key`: the object's size, and the route's
    /// moving average (a quarter per sample).
    pub fn learn_at(&self, key: RouteKey, bytes: u64) {
        let size = bytes.min(OBJECT_SIZE_MASK - 1) + 1;
        self.objects[key.object].store(key.tag << OBJECT_SIZE_BITS | size, Ordering::Relaxed);
        let slot = &self.routes[key.route];
        let old = slot.load(Ordering::Relaxed);
        let new = if old == 0 { bytes } else { old - old / 4 + bytes / 4 };
        slot.store(new.max(1), Ordering::Relaxed);
    }

    /// The learned response size for a request to `host` for `path`, 0 when unknown.
    pub fn expected(&self, host: &str, path: &str) -> u64 {
        self.expected_at(Self::key(host, path))
    }

    /// Learns from a response of `bytes`.
    pub fn learn(&self, host: &str, path: &str, bytes: u64) {
        self.learn_at(Self::key(host, path), bytes);
    }
}

/// Time-to-first-byte distribution of this edge's requests, for hedging after a
/// percentile: log-scale buckets of atomic counts, halved as they fill so the
/// distribution follows the present. One atomic add per sample.
#[derive(Debug)]
pub struct LatencyTracker {
    buckets: [std::sync::atomic::AtomicU64; LATENCY_BUCKETS],
}

/// Bucket `i` holds samples below `2^(i/2)` microseconds (about 41 % apart), up to
/// about 70 minutes.
const LATENCY_BUCKETS: usize = 64;
const HALVE_AT: u64 = 20_000;

impl Default for LatencyTracker {
    fn default() -> Self {
        LatencyTracker {
            buckets: std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0)),
        }
    }
}

impl LatencyTracker {
    fn bucket(d: Duration) -> usize {
        let us = d.as_micros().max(1) as f64;
        ((us.log2() * 2.0).ceil() as usize).min(LATENCY_BUCKETS - 1)
    }

    fn upper(i: usize) -> Duration {
        Duration::from_micros(2f64.powf(i as f64 / 2.0) as u64)
    }

    /// Adds a sample.
    pub fn record(&self, d: Duration) {
        let n = self.buckets[Self::bucket(d)].fetch_add(1, Ordering::Relaxed) + 1;
        if n % 1024 == 0 {
            let total: u64 = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
            if total >= HALVE_AT {
                for b in &self.buckets {
                    b.store(b.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
                }
            }
        }
    }

    /// The `q` quantile (0..1), or `None` before `min_samples` samples.
    pub fn quantile(&self, q: f64, min_samples: u64) -> Option<Duration> {
        let counts: [u64; LATENCY_BUCKETS] = std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        let total: u64 = counts.iter().sum();
        if total < min_samples.max(1) {
            return None;
        }
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(Self::upper(i));
            }
        }
        Some(Self::upper(LATENCY_BUCKETS - 1))
    }
}

/// A candidate: its index in the fleet and its cost now (`None`: not usable).
pub type Candidate = (usize, Option<f64>);

/// Why a provider was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The only usable candidate.
    Only,
    /// Clearly the lowest estimated completion time.
    Best,
    /// The lower-cost of two random near-best candidates.
    PowerOfTwo,
}

impl Reason {
    /// Short text for explanations and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Only => "only usable candidate",
            Reason::Best => "lowest estimated completion time",
            Reason::PowerOfTwo => "lower cost of two near-best",
        }
    }
}

/// Chooses among candidates: the lower cost of two random picks among those within
/// `NEAR_BEST` of the best. Allocation-free; `random` yields uniform `u64`s.
pub fn choose(candidates: &[Candidate], mut random: impl FnMut() -> u64) -> Option<(usize, Reason)> {
    let best = candidates.iter().filter_map(|c| c.1).fold(f64::INFINITY, f64::min);
    if !best.is_finite() {
        return None;
    }
    let near = |c: &&Candidate| c.1.is_some_and(|cost| cost <= best * NEAR_BEST);
    let k = candidates.iter().filter(near).count();
    if k == 1 {
        let usable = candidates.iter().filter(|c| c.1.is_some()).count();
        let reason = if usable == 1 { Reason::Only } else { Reason::Best };
        return candidates.iter().find(near).map(|c| (c.0, reason));
    }
    let a = (random() % k as u64) as usize;
    let mut b = (random() % (k as u64 - 1)) as usize;
    if b >= a {
        b += 1;
    }
    let pick = |n: usize| candidates.iter().filter(near).nth(n);
    let (x, y) = (pick(a)?, pick(b)?);
    let winner = if x.1 <= y.1 { x } else { y };
    Some((winner.0, Reason::PowerOfTwo))
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    (t ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

/// A fast per-thread random number (xorshift64*): good enough to spread load, not
/// for anything secret.
pub fn random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests;
