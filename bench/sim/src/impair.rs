//! Impairments a simulated provider applies to itself, changeable while it runs:
//! latency before every response head (a slow provider, as opposed to a slow
//! network), a bandwidth cap on response bodies shared by all of its responses (its
//! uplink), an error rate (503 before doing anything), and a stall rate (a body that
//! stops halfway and never finishes).
//!
//! Network delay between parties is not here: it belongs on the wire (the relay, or
//! the world simulator's packet delay).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// What a provider does to itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Impairments {
    /// Added before every response head, milliseconds.
    pub latency_ms: u64,
    /// Response-body bytes per second over all responses; 0 is unlimited.
    pub bandwidth_bps: u64,
    /// Fraction of requests answered 503 at once.
    pub error_rate: f64,
    /// Fraction of response bodies that stop halfway, forever.
    pub stall_rate: f64,
}

impl Impairments {
    /// Checks the fractions.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [("error_rate", self.error_rate), ("stall_rate", self.stall_rate)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be between 0 and 1, not {v}"));
            }
        }
        Ok(())
    }
}

/// Bodies are paced in pieces of this size.
const PIECE: usize = 16 << 10;

/// The live impairments of one provider and its shared uplink.
#[derive(Debug)]
pub(crate) struct Impairer {
    current: Mutex<Impairments>,
    /// When the uplink is free again.
    busy_until: Mutex<Option<Instant>>,
    seed: AtomicU64,
}

impl Default for Impairer {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
        Impairer {
            current: Mutex::new(Impairments::default()),
            busy_until: Mutex::new(None),
            seed: AtomicU64::new(seed),
        }
    }
}

impl Impairer {
    pub(crate) fn get(&self) -> Impairments {
        self.current.lock().map(|c| *c).unwrap_or_default()
    }

    pub(crate) fn set(&self, i: Impairments) {
        if let Ok(mut c) = self.current.lock() {
            *c = i;
        }
    }

    /// A uniform draw in [0, 1) (xorshift; quality is irrelevant here).
    pub(crate) fn draw(&self) -> f64 {
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Waits until `n` more bytes fit through the uplink.
    async fn pace(&self, n: usize) {
        let bps = self.get().bandwidth_bps;
        if bps == 0 {
            return;
        }
        let done = {
            let Ok(mut busy) = self.busy_until.lock() else { return };
            let now = Instant::now();
            let start = busy.filter(|b| *b > now).unwrap_or(now);
            let done = start + Duration::from_secs_f64(n as f64 / bps as f64);
            *busy = Some(done);
            done
        };
        tokio::time::sleep_until(done).await;
    }
}

/// `body` paced by the uplink, and stopped halfway (after `len / 2` bytes) when
/// `stall` is set.
pub(crate) fn impair_body<B>(
    body: B,
    len: Option<u64>,
    stall: bool,
    impairer: std::sync::Arc<Impairer>,
) -> http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>
where
    B: http_body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static,
{
    let stop_after = if stall { len.map(|l| l / 2) } else { None };
    let frames = BodyStream::new(body);
    let stream = futures_util::stream::unfold(
        (Box::pin(frames), impairer, 0u64, Vec::<Bytes>::new(), false),
        move |(mut frames, impairer, mut sent, mut pending, stalled)| async move {
            if stalled {
                return futures_util::future::pending().await;
            }
            loop {
                if let Some(piece) = pending.pop() {
                    if stop_after.is_some_and(|s| sent + piece.len() as u64 > s) {
                        return futures_util::future::pending().await;
                    }
                    impairer.pace(piece.len()).await;
                    sent += piece.len() as u64;
                    return Some((Ok(Frame::data(piece)), (frames, impairer, sent, pending, false)));
                }
                match frames.next().await? {
                    Ok(frame) => match frame.into_data() {
                        Ok(mut data) => {
                            let mut pieces = Vec::new();
                            while data.len() > PIECE {
                                pieces.push(data.split_to(PIECE));
                            }
                            pieces.push(data);
                            pieces.reverse();
                            pending = pieces;
                        }
                        Err(other) => return Some((Ok(other), (frames, impairer, sent, pending, false))),
                    },
                    Err(e) => return Some((Err(e), (frames, impairer, sent, pending, true))),
                }
            }
        },
    );
    StreamBody::new(stream).boxed_unsync()
}
