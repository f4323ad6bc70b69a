//! A delaying TCP relay on loopback: network latency (and optionally a bandwidth
//! cap) on the path between an edge and a simulated provider, changeable while
//! running.
//!
//! This kernel has no netem, so delay is added in userspace. Every chunk is delivered
//! `delay` after it arrived, in both directions; chunks in flight overlap, as on a
//! real link, so latency does not throttle throughput. Because the kernel completes
//! the TCP handshake with the relay itself, a bare `connect()` sees no delay: time an
//! application round trip instead (the edge's probes do).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A running relay; stops accepting when dropped.
pub struct DelayRelay {
    /// Where to connect to reach the target through the delay.
    pub addr: SocketAddr,
    delay_us: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayRelay {
    /// A relay on a free loopback port to `target`, adding `delay` each way.
    pub async fn start(target: SocketAddr, delay: Duration) -> io::Result<DelayRelay> {
        Self::with_rate(target, delay, None).await
    }

    /// As [`start`](Self::start), also capping each direction at `bytes_per_sec`.
    pub async fn with_rate(target: SocketAddr, delay: Duration, bytes_per_sec: Option<u64>) -> io::Result<DelayRelay> {
        Self::bind(
            "127.0.0.1:0".parse().map_err(io::Error::other)?,
            target,
            delay,
            bytes_per_sec,
        )
        .await
    }

    /// A relay listening on `listen`.
    pub async fn bind(
        listen: SocketAddr,
        target: SocketAddr,
        delay: Duration,
        bytes_per_sec: Option<u64>,
    ) -> io::Result<DelayRelay> {
        let delay_us = Arc::new(AtomicU64::new(delay.as_micros() as u64));
        let d = delay_us.clone();
        Self::serve(listen, target, None, bytes_per_sec, delay_us, move |_| d.clone()).await
    }

    /// A relay whose delay depends on who connects: `delays` by the client's
    /// address (fixed per connection, at accept), `default` for others. It connects
    /// to `target` from `source` when given, so the target can tell relayed clients
    /// apart.
    pub async fn bind_per_peer(
        listen: SocketAddr,
        target: SocketAddr,
        delays: Arc<Mutex<HashMap<IpAddr, Duration>>>,
        default: Duration,
        source: Option<IpAddr>,
    ) -> io::Result<DelayRelay> {
        let delay_us = Arc::new(AtomicU64::new(default.as_micros() as u64));
        Self::serve(listen, target, source, None, delay_us, move |peer| {
            let d = delays
                .lock()
                .ok()
                .and_then(|m| m.get(&peer).copied())
                .unwrap_or(default);
            Arc::new(AtomicU64::new(d.as_micros() as u64))
        })
        .await
    }

    async fn serve(
        listen: SocketAddr,
        target: SocketAddr,
        source: Option<IpAddr>,
        bytes_per_sec: Option<u64>,
        delay_us: Arc<AtomicU64>,
        delay_for: impl Fn(IpAddr) -> Arc<AtomicU64> + Send + Sync + 'static,
    ) -> io::Result<DelayRelay> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let delay_for = Arc::new(delay_for);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, peer)) = listener.accept().await else {
                    continue;
                };
                let d = delay_for(peer.ip());
                tokio::spawn(async move {
                    let Ok(server) = connect_from(source, target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, d.clone(), bytes_per_sec), pump(sr, cw, d, bytes_per_sec));
                });
            }
        });
        Ok(DelayRelay { addr, delay_us, task })
    }

    /// Changes the one-way delay for chunks arriving from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(delay.as_micros() as u64, Ordering::Relaxed);
    }
}

async fn connect_from(source: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(target).await;
    };
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay_us: Arc<AtomicU64>, rate: Option<u64>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + Duration::from_micros(delay_us.load(Ordering::Relaxed));
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, data)) = rx.recv().await {
            // The simulated link: delivery `delay` after sending, at `rate`.
            tokio::time::sleep_until(due).await;
            if to.write_all(&data).await.is_err() {
                break;
            }
            if let Some(rate) = rate {
                tokio::time::sleep(Duration::from_secs_f64(data.len() as f64 / rate.max(1) as f64)).await;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_round_trip_through_the_relay_takes_twice_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let relay = DelayRelay::start(target, Duration::from_millis(30)).await.unwrap();
        let mut c = TcpStream::connect(relay.addr).await.unwrap();
        let start = Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        assert!(start.elapsed() >= Duration::from_millis(60), "{:?}", start.elapsed());
    }
}
