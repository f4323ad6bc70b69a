//! The users of one edge: open-loop GETs of a mix of object sizes from inside their
//! own namespace, every request recorded (when it started, how long it took, what it
//! got, which provider served it).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::time::Instant;

use crate::load::pick_weighted;

/// One request as the user saw it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Index of the user group.
    pub group: usize,
    /// Start, from the scenario's start.
    pub start: Duration,
    /// Time to the last body byte (from the intended start when the connection was
    /// busy: coordinated omission corrected).
    pub took: Duration,
    /// HTTP status; 0 when the exchange failed.
    pub status: u16,
    /// `x-sim-provider` of the answer.
    pub provider: Option<String>,
    /// Object size asked for.
    pub size: u64,
}

/// What one group sends.
#[derive(Debug, Clone)]
pub struct Load {
    /// Index of the group.
    pub group: usize,
    /// Its edge's HTTP address.
    pub edge: SocketAddr,
    /// Requests per second.
    pub rate: f64,
    /// `(size, weight)`.
    pub sizes: Vec<(u64, u32)>,
    /// How long.
    pub duration: Duration,
    /// Concurrent connections.
    pub connections: usize,
}

/// Sends `load` from the calling thread's namespace, starting at `t0`; returns every
/// request's record. Blocks the thread (its own runtime).
pub fn run(load: Load, t0: std::time::Instant) -> anyhow::Result<Vec<Record>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let start = Instant::from_std(t0);
        let interval = Duration::from_secs_f64(1.0 / load.rate);
        let total = (load.rate * load.duration.as_secs_f64()).round() as u64;
        let weights: u64 = load.sizes.iter().map(|s| u64::from(s.1)).sum();
        let mut tasks = Vec::new();
        for k in 0..load.connections as u64 {
            let load = load.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
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
                    let (size, _) = load.sizes[pick_weighted(load.sizes.iter().map(|s| s.1), weights, i)];
                    let (status, provider) = match get(&mut conn, load.edge, size).await {
                        Ok(r) => r,
                        Err(_) => {
                            conn = None;
                            (0, None)
                        }
                    };
                    out.push(Record {
                        group: load.group,
                        start: began.saturating_duration_since(start),
                        took: began.elapsed(),
                        status,
                        provider,
                        size,
                    });
                    i += load.connections as u64;
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await?);
        }
        Ok(all)
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn get(conn: &mut Option<Sender>, edge: SocketAddr, size: u64) -> anyhow::Result<(u16, Option<String>)> {
    if conn.is_none() {
        *conn = Some(crate::procs::h1_client(edge).await?);
    }
    let Some(send) = conn.as_mut() else {
        anyhow::bail!("no connection")
    };
    send.ready().await?;
    let req = http::Request::get(format!("/world/obj-{size}"))
        .header("host", "world.test")
        .body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req)).await??;
    let status = resp.status().as_u16();
    let provider = resp
        .headers()
        .get("x-sim-provider")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect()).await??;
    Ok((status, provider))
}
