//! HTTP/1.1 provider connections driven inline, in the task of the request that
//! uses them (the Pingora model), instead of in a separately spawned task reached
//! through a channel.
//!
//! While a request waits for its response head, its task polls the connection; while
//! the response body streams, the body polls it. When the body ends cleanly the
//! connection goes back to this worker's idle list; a body dropped early takes its
//! connection with it, since a half-read HTTP/1.1 connection can never be reused.
//! Idle connections are not polled, so each is probed (one poll with a no-op waker)
//! before reuse; a request that a stale connection never sent is retried once on a
//! fresh one. This module must never retry a request that may have been sent.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::{Connector, SendFailure, UpstreamError, UpstreamIo, error_chain};
use crate::body::ProxyBody;

type Conn = Pin<Box<http1::Connection<UpstreamIo, ProxyBody>>>;

/// A live connection: the handle to send on and the state machine to drive.
struct Live {
    send: http1::SendRequest<ProxyBody>,
    conn: Conn,
}

struct Idle {
    live: Live,
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

enum Attempt {
    Done(Result<Response<Incoming>, UpstreamError>),
    /// The connection was closed before the request was written; it is handed back.
    NotSent(Request<ProxyBody>),
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

    /// Sends `req` and returns the response once its head arrived; the body drives
    /// the connection from then on.
    pub(crate) async fn send(self: &Arc<Self>, req: Request<ProxyBody>) -> Result<Response<InlineBody>, SendFailure> {
        let unsent = |error, req| SendFailure {
            error,
            unsent: Some(req),
        };
        let (mut live, reused) = match self.acquire().await {
            Ok(x) => x,
            Err(e) => return Err(unsent(e, req)),
        };
        let req = match drive(&mut live, req).await {
            Attempt::Done(r) => return r.map(|resp| self.wrap(resp, live)).map_err(SendFailure::from),
            Attempt::NotSent(req) if reused => req,
            Attempt::NotSent(req) => return Err(unsent(closed(), req)),
        };
        // The pooled connection had been closed by the provider: nothing was sent,
        // so one retry is safe for any method.
        let (mut live, _) = match self.acquire().await {
            Ok(x) => x,
            Err(e) => return Err(unsent(e, req)),
        };
        match drive(&mut live, req).await {
            Attempt::Done(r) => r.map(|resp| self.wrap(resp, live)).map_err(SendFailure::from),
            Attempt::NotSent(req) => Err(unsent(closed(), req)),
        }
    }

    fn wrap(self: &Arc<Self>, resp: Response<Incoming>, live: Live) -> Response<InlineBody> {
        resp.map(|inner| InlineBody {
            inner,
            live: Some(live),
            pool: self.clone(),
        })
    }

    /// An idle connection, or a new one once a slot is free, whichever comes first
    /// (a slot may be held by a connection that is about to be returned). The flag
    /// says whether the connection was reused.
    async fn acquire(&self) -> Result<(Live, bool), UpstreamError> {
        loop {
            if let Some(live) = self.checkout() {
                return Ok((live, true));
            }
            let permits = self.connector.permits().clone();
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => tokio::select! {
                    p = permits.acquire_owned() => p.map_err(|_| UpstreamError::Connect("provider pool closed".into()))?,
                    _ = self.returned.notified() => continue,
                },
            };
            return self.connect(permit).await.map(|live| (live, false));
        }
    }

    fn checkout(&self) -> Option<Live> {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut idle = self.idle.lock().ok()?.pop()?;
            if idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            // Not polled while idle: let it notice a close (EOF) now.
            if idle.live.conn.as_mut().poll(&mut cx).is_ready() {
                continue;
            }
            if let Poll::Ready(Ok(())) = idle.live.send.poll_ready(&mut cx) {
                return Some(idle.live);
            }
        }
    }

    fn checkin(&self, live: Live) {
        if let Ok(mut idle) = self.idle.lock() {
            // Oldest first: drop what has expired, keep the list bounded.
            let now = Instant::now();
            idle.retain(|i| now.saturating_duration_since(i.since) < self.idle_timeout);
            if idle.len() < self.max_idle {
                idle.push(Idle { live, since: now });
            }
        }
        self.returned.notify_one();
    }

    async fn connect(&self, permit: OwnedSemaphorePermit) -> Result<Live, UpstreamError> {
        let io = self.connector.open(permit).await.map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                UpstreamError::ConnectTimeout
            } else {
                UpstreamError::Connect(e.to_string())
            }
        })?;
        let (send, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        Ok(Live {
            send,
            conn: Box::pin(conn),
        })
    }
}

fn closed() -> UpstreamError {
    UpstreamError::Exchange("connection closed before the request was sent".into())
}

/// Polls the connection alongside the response future until the head arrives.
async fn drive(live: &mut Live, req: Request<ProxyBody>) -> Attempt {
    let mut resp = std::pin::pin!(live.send.try_send_request(req));
    let conn = &mut live.conn;
    let mut conn_done = false;
    poll_fn(|cx| {
        if let Poll::Ready(r) = resp.as_mut().poll(cx) {
            return Poll::Ready(match r {
                Ok(resp) => Attempt::Done(Ok(resp)),
                Err(mut e) => match e.take_message() {
                    Some(req) => Attempt::NotSent(req),
                    None => Attempt::Done(Err(UpstreamError::Exchange(error_chain(e.error())))),
                },
            });
        }
        if !conn_done && conn.as_mut().poll(cx).is_ready() {
            // The connection ended; its dispatcher has answered the response future
            // (with the response or an error), so poll that once more.
            conn_done = true;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

/// A provider's response body that also drives its connection, and returns the
/// connection to the pool when the body ends cleanly.
pub struct InlineBody {
    inner: Incoming,
    live: Option<Live>,
    pool: Arc<InlinePool>,
}

impl std::fmt::Debug for InlineBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl InlineBody {
    fn release(&mut self) {
        if let Some(mut live) = self.live.take() {
            let mut cx = Context::from_waker(Waker::noop());
            // Let the connection finish the message before it is reused.
            if live.conn.as_mut().poll(&mut cx).is_pending() {
                self.pool.checkin(live);
            }
        }
    }
}

impl Body for InlineBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(live) = this.live.as_mut() {
            if live.conn.as_mut().poll(cx).is_ready() {
                // Closed (e.g. `Connection: close`): what it read is already queued
                // in the body; it cannot be reused.
                this.live = None;
            }
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for InlineBody {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304, empty) is never polled.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
