//! Open-loop, fixed-rate HTTP/1.1 load with coordinated-omission correction: each
//! request has an intended start on a fixed schedule. A request that had to wait for
//! its connection's previous response is timed from its intended start, so a stalled
//! server is charged for the requests it delayed (as wrk2 does); one sent on time is
//! timed from when it was sent, so the timer's own lateness (tokio's timer has
//! millisecond granularity) is not charged to the server.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use tokio::time::Instant;

use crate::procs::h1_client;

/// One fixed-rate run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Where to send.
    pub target: SocketAddr,
    /// `Host` header.
    pub host: String,
    /// Request path.
    pub path: String,
    /// Requests per second, spread evenly.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// Keep-alive connections used in rotation.
    pub connections: usize,
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed or were not 2xx.
    pub errors: u64,
    /// Latency in microseconds from intended start to last body byte.
    pub latency_us: Histogram<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Response body bytes received.
    pub bytes: u64,
}

impl LoadResult {
    /// A latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `spec` to completion.
pub async fn fixed_rate(spec: &LoadSpec) -> anyhow::Result<LoadResult> {
    let total = (spec.rate * spec.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / spec.rate);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(spec.connections);
    for k in 0..spec.connections as u64 {
        let spec = spec.clone();
        tasks.push(tokio::spawn(
            async move { worker(spec, k, total, start, interval).await },
        ));
    }
    let mut result = LoadResult {
        ok: 0,
        errors: 0,
        latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        elapsed: Duration::ZERO,
        bytes: 0,
    };
    for t in tasks {
        let (ok, errors, bytes, hist) = t.await??;
        result.ok += ok;
        result.errors += errors;
        result.bytes += bytes;
        result.latency_us.add(hist)?;
    }
    result.elapsed = start.elapsed();
    Ok(result)
}

async fn worker(
    spec: LoadSpec,
    k: u64,
    total: u64,
    start: Instant,
    interval: Duration,
) -> anyhow::Result<(u64, u64, u64, Histogram<u64>)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let (mut ok, mut errors, mut bytes) = (0u64, 0u64, 0u64);
    let mut conn = None;
    let mut i = k;
    while i < total {
        let intended = start + interval.mul_f64(i as f64);
        let began = if Instant::now() < intended {
            tokio::time::sleep_until(intended).await;
            Instant::now()
        } else {
            intended
        };
        if conn.is_none() {
            conn = h1_client(spec.target).await.ok();
        }
        let outcome = match conn.as_mut() {
            Some(send) => request(send, &spec).await,
            None => Err(anyhow::anyhow!("connect failed")),
        };
        match outcome {
            Ok(n) => {
                ok += 1;
                bytes += n;
            }
            Err(_) => {
                errors += 1;
                conn = None;
            }
        }
        let us = began.elapsed().as_micros().max(1) as u64;
        hist.saturating_record(us);
        i += spec.connections as u64;
    }
    Ok((ok, errors, bytes, hist))
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn request(send: &mut Sender, spec: &LoadSpec) -> anyhow::Result<u64> {
    send.ready().await?;
    let req = http::Request::get(spec.path.as_str())
        .header("host", spec.host.as_str())
        .body(Empty::new())?;
    let resp = send.send_request(req).await?;
    let good = resp.status().is_success();
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame?.into_data() {
            n += d.len() as u64;
        }
    }
    if !good {
        anyhow::bail!("status not 2xx");
    }
    Ok(n)
}
