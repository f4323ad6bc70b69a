//! One worker's pool of HTTP/1.1 provider connections, driven inline by the
//! request that uses them (the Pingora model) through [`super::h1`], instead of by a
//! separately spawned task reached through a channel.
//!
//! While a request waits for its response head, its task reads the connection;
//! while the response body streams, the body reads it. When the body ends cleanly
//! the connection goes back to this worker's idle list; a body dropped early takes
//! its connection with it, since a half-read HTTP/1.1 connection can never be
//! reused. Idle connections are not polled, so each is checked (one read with a
//! no-op waker) before reuse; a request that a stale connection never sent is
//! retried once on a fresh one. This module must never retry a request that may
//! have been sent.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::h1::{self, Conn, H1Body, Release};
use super::{Connector, SendFailure, UpstreamBody, UpstreamError};
use crate::body::ProxyBody;
use crate::codec::RawFields;
use crate::headers::Passed;

/// A provider's HTTP/1.1 response body, read from its connection, which goes back
/// to the pool when the body ends cleanly.
#[derive(Debug)]
pub struct InlineBody(H1Body<Arc<InlinePool>>);

impl InlineBody {
    /// The response's fields as received, when its header map was left empty for
    /// them.
    pub fn take_raw(&mut self) -> Option<RawFields> {
        self.0.take_raw()
    }

    /// The same, left in place.
    pub fn raw(&self) -> Option<&RawFields> {
        self.0.raw()
    }
}

impl From<H1Body<Arc<InlinePool>>> for UpstreamBody {
    fn from(body: H1Body<Arc<InlinePool>>) -> Self {
        UpstreamBody::H1(InlineBody(body))
    }
}

impl Body for InlineBody {
    type Data = Bytes;
    type Error = h1::H1Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h1::H1Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One worker's HTTP/1.1 connections to one provider.
pub(crate) struct InlinePool {
    connector: Connector,
    idle: Mutex<Vec<Idle>>,
    /// Signalled when a connection is returned, for requests waiting for a slot.
    returned: Notify,
    max_idle: usize,
    idle_timeout: Duration,
}

impl std::fmt::Debug for InlinePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlinePool")
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl Release for Arc<InlinePool> {
    fn release(&self, conn: Conn) {
        self.checkin(conn);
    }
}

impl InlinePool {
    pub(crate) fn new(connector: Connector, max_idle: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(InlinePool {
            connector,
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            max_idle,
            idle_timeout,
        })
    }

    /// Sends `req` and returns the response once its head arrived, by `deadline`;
    /// the body reads the connection from then on. `now` is the caller's recent
    /// clock reading.
    // Not an `async fn`, so the request is not copied again when first polled (see
    // `Proxy::handle`).
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn send(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
        passed: Option<&Passed<'_>>,
        now: Instant,
        deadline: Instant,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendFailure>> {
        async move {
            let unsent = |error, req| SendFailure {
                error,
                unsent: Some(req),
            };
            let (conn, reused) = match self.acquire_by(now, deadline).await {
                Ok(x) => x,
                Err(UpstreamError::ResponseTimeout) => return Err(UpstreamError::ResponseTimeout.into()),
                Err(e) => return Err(unsent(e, req)),
            };
            let req = match h1::exchange(conn, req, passed, self.clone(), deadline).await {
                Ok(resp) => return Ok(resp),
                Err(h1::Failed {
                    error,
                    unsent: Some(req),
                }) if reused => {
                    tracing::debug!(error = %error, "pooled provider connection was stale; retrying on a new one");
                    req
                }
                Err(failed) => return Err(failure(failed)),
            };
            // The pooled connection had been closed by the provider: nothing was sent,
            // so one retry is safe for any method.
            let (conn, _) = match self.acquire_by(now, deadline).await {
                Ok(x) => x,
                Err(UpstreamError::ResponseTimeout) => return Err(UpstreamError::ResponseTimeout.into()),
                Err(e) => return Err(unsent(e, req)),
            };
            h1::exchange(conn, req, passed, self.clone(), deadline)
                .await
                .map_err(failure)
        }
    }

    /// [`Self::acquire`] within `deadline`; an idle connection is taken without
    /// touching the timer.
    async fn acquire_by(&self, now: Instant, deadline: Instant) -> Result<(Conn, bool), UpstreamError> {
        if let Some(conn) = self.checkout(now) {
            return Ok((conn, true));
        }
        match tokio::time::timeout_at(deadline, self.acquire(now)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::ResponseTimeout),
        }
    }

    /// An idle connection, or a new one once a slot is free, whichever comes first
    /// (a slot may be held by a connection that is about to be returned). The flag
    /// says whether the connection was reused.
    async fn acquire(&self, now: Instant) -> Result<(Conn, bool), UpstreamError> {
        loop {
            if let Some(conn) = self.checkout(now) {
                return Ok((conn, true));
            }
            let permits = self.connector.permits().clone();
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => tokio::select! {
                    p = permits.acquire_owned() => p.map_err(|_| UpstreamError::Connect("provider pool closed".into()))?,
                    _ = self.returned.notified() => continue,
                },
            };
            // Boxed: connecting (TCP, TLS, handshake) is rare and its future large;
            // inline it would be carried, and moved, by every request's future.
            return Box::pin(self.connect(permit)).await.map(|conn| (conn, false));
        }
    }

    fn checkout(&self, now: Instant) -> Option<Conn> {
        loop {
            let mut idle = self.idle.lock().ok()?.pop()?;
            if now.saturating_duration_since(idle.since) >= self.idle_timeout {
                continue;
            }
            // Not read while idle: let it notice a close (EOF) now.
            if idle.conn.is_reusable() {
                return Some(idle.conn);
            }
        }
    }

    fn checkin(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            // Oldest first (check-ins push, checkouts pop the newest), so what has
            // expired is a prefix: usually empty, which the oldest entry tells.
            let now = Instant::now();
            let expired = |i: &Idle| now.saturating_duration_since(i.since) >= self.idle_timeout;
            if idle.first().is_some_and(expired) {
                let n = idle.partition_point(expired);
                idle.drain(..n);
            }
            if idle.len() < self.max_idle {
                idle.push(Idle { conn, since: now });
            }
        }
        self.returned.notify_one();
    }

    async fn connect(&self, permit: OwnedSemaphorePermit) -> Result<Conn, UpstreamError> {
        let io = self.connector.open(permit).await.map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                UpstreamError::ConnectTimeout
            } else {
                UpstreamError::Connect(e.to_string())
            }
        })?;
        Ok(Conn::new(io))
    }
}

fn failure(failed: h1::Failed) -> SendFailure {
    let error = match failed.error {
        h1::H1Error::Timeout => UpstreamError::ResponseTimeout,
        e => UpstreamError::Exchange(e.to_string()),
    };
    SendFailure {
        error,
        unsent: failed.unsent,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::upstream::{ConnectorInner, Stream, UpstreamIo};

    /// A connection to a listener that accepts and holds it.
    async fn conn(listener: &TcpListener, addr: SocketAddr, permits: &Arc<Semaphore>) -> (Conn, TcpStream) {
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let io = UpstreamIo {
            io: TokioIo::new(Stream::Plain(client.unwrap())),
            h2: false,
            _permit: permits.clone().try_acquire_owned().unwrap(),
        };
        (Conn::new(io), server.unwrap().0)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_past_their_timeout_are_let_go_at_the_next_check_in() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let permits = Arc::new(Semaphore::new(8));
        let connector = Connector(Arc::new(ConnectorInner {
            address: addr.to_string(),
            source: None,
            tls: None,
            h2: false,
            timeout: Duration::from_secs(1),
            permits: permits.clone(),
        }));
        let pool = InlinePool::new(connector, 8, Duration::from_secs(10));
        let idle = |pool: &InlinePool| pool.idle.lock().unwrap().len();
        let mut held = Vec::new();
        for _ in 0..2 {
            let (c, s) = conn(&listener, addr, &permits).await;
            held.push(s);
            pool.checkin(c);
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        let (c, s) = conn(&listener, addr, &permits).await;
        held.push(s);
        pool.checkin(c);
        assert_eq!(idle(&pool), 3, "none had been idle for 10 s yet");
        // The first two are now 11 s old, the third 5 s.
        tokio::time::advance(Duration::from_secs(5)).await;
        let (c, s) = conn(&listener, addr, &permits).await;
        held.push(s);
        pool.checkin(c);
        assert_eq!(idle(&pool), 2, "the two oldest expired");
        // Checkout takes the newest, and never an expired one.
        assert!(pool.checkout(Instant::now()).is_some());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            pool.checkout(Instant::now()).is_none(),
            "the last one had been idle 11 s"
        );
    }
}
