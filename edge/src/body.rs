//! Bodies on the data path: streamed frame by frame with an idle timeout, never
//! collected.
//!
//! A body that stalls longer than its idle timeout ends in an error, so the server
//! carrying it aborts the transfer (connection closed or stream reset) and the
//! receiver can tell it is
//! incomplete; a body must never end early as if it were complete. This module must
//! never buffer more than the frame in hand.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use http_body_util::combinators::UnsyncBoxBody;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::codec::RawFields;
use crate::conn::InflightGuard;
use crate::route::Target;
use crate::upstream::UpstreamBody;

/// Boxed error carried by bodies.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A request body on its way to a provider, whatever protocol it arrived on.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why a streamed body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// No data for longer than the idle timeout.
    #[error("body idle for more than {0:?}")]
    Idle(Duration),
    /// The other side failed or went away.
    #[error("body stream failed: {0}")]
    Stream(#[source] BoxError),
}

pin_project! {
    /// Passes frames through, failing if the next one takes longer than `idle`.
    ///
    /// The timer is armed only once the inner body first has to wait: most small
    /// bodies are complete by the time they are polled and never touch the timer
    /// wheel or the clock.
    #[derive(Debug)]
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        idle: Duration,
        // With the deadline: moved forward per frame while armed; the timer is
        // re-armed only when it fires early, which keeps timer-wheel work off the
        // per-frame path. Unarmed bodies never read the clock.
        sleep: Option<(Pin<Box<Sleep>>, Instant)>,
    }
}

impl<B> TimedBody<B> {
    /// Wraps `inner` with an idle timeout.
    pub fn new(inner: B, idle: Duration) -> Self {
        TimedBody {
            inner,
            idle,
            sleep: None,
        }
    }

    /// The wrapped body.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some((_, deadline)) = this.sleep {
                    *deadline = Instant::now() + *this.idle;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Stream(e.into())))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let (sleep, deadline) = match this.sleep {
                    Some(armed) => armed,
                    None => {
                        let deadline = Instant::now() + *this.idle;
                        this.sleep
                            .insert((Box::pin(tokio::time::sleep_until(deadline)), deadline))
                    }
                };
                loop {
                    ready!(sleep.as_mut().poll(cx));
                    if Instant::now() >= *deadline {
                        return Poll::Ready(Some(Err(BodyError::Idle(*this.idle))));
                    }
                    sleep.as_mut().reset(*deadline);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// Passes frames through, adding their data's length to a shared count (read
    /// when the exchange's metrics are recorded).
    #[derive(Debug)]
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        count: Arc<AtomicU64>,
    }
}

impl<B> CountedBody<B> {
    /// Wraps `inner`, counting into `count`.
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        CountedBody { inner, count }
    }
}

impl<B: Body<Data = Bytes>> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(d) = f.data_ref() {
                this.count.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
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

pin_project! {
    /// What the edge sends back to a client: a provider's streamed response, or a
    /// small answer the edge wrote itself. Either way it holds the connection's
    /// in-flight mark until it is finished or dropped.
    /// Fields: `body` is the data, `guard` the in-flight mark.
    #[project = ResponseBodyProj]
    #[derive(Debug)]
    #[allow(missing_docs)]
    pub enum ResponseBody {
        /// Streamed from a provider.
        Upstream {
            #[pin]
            body: TimedBody<UpstreamBody>,
            guard: Option<InflightGuard>,
            meter: Meter,
        },
        /// Written by the edge.
        Local {
            #[pin]
            body: Full<Bytes>,
            guard: Option<InflightGuard>,
        },
    }
}

/// Measures a provider's response body for the selector and the metrics, and holds
/// the provider's in-flight mark until the body is done.
#[derive(Debug)]
pub struct Meter {
    target: Target,
    /// When the request's head arrived.
    request_started: Instant,
    /// When the response head arrived.
    started: Instant,
    bytes: u64,
    /// Request body bytes, counted as they are forwarded; `None` without a body.
    received: Option<Arc<AtomicU64>>,
}

/// Responses smaller than this say more about latency than about bandwidth.
const MIN_THROUGHPUT_SAMPLE: u64 = 256 * 1024;

impl Meter {
    fn data(&mut self, n: usize) {
        self.bytes += n as u64;
    }
}

impl Drop for Meter {
    // When the body is done or abandoned: a server may stop polling a body of known
    // length once it has all of it (hyper's HTTP/2 does), so the end is not always
    // announced by a final poll.
    fn drop(&mut self) {
        let now = Instant::now();
        if self.bytes >= MIN_THROUGHPUT_SAMPLE {
            self.target
                .stats()
                .observe_transfer(self.bytes, now.saturating_duration_since(self.started), now);
        }
        let metrics = self.target.metrics();
        metrics
            .duration
            .record(now.saturating_duration_since(self.request_started));
        metrics.sent.increment(self.bytes);
        if let Some(received) = &self.received {
            metrics.received.increment(received.load(Ordering::Relaxed));
        }
    }
}

impl ResponseBody {
    /// A provider's body, measured, holding the connection's and the provider's
    /// in-flight marks. `times` are when the request's head and the response's head
    /// arrived; `received` counts the request body's bytes, if it has one.
    pub fn upstream(
        body: TimedBody<UpstreamBody>,
        guard: InflightGuard,
        target: Target,
        times: (Instant, Instant),
        received: Option<Arc<AtomicU64>>,
    ) -> Self {
        ResponseBody::Upstream {
            body,
            guard: Some(guard),
            meter: Meter {
                target,
                request_started: times.0,
                started: times.1,
                bytes: 0,
                received,
            },
        }
    }

    /// The provider's response fields as received, when they were left out of the
    /// header map (see [`crate::codec::RawFields`]): they are the response's first
    /// fields, the map's follow them.
    pub fn take_raw(&mut self) -> Option<RawFields> {
        match self {
            ResponseBody::Upstream { body, .. } => body.inner_mut().take_raw(),
            ResponseBody::Local { .. } => None,
        }
    }

    /// A body the edge writes itself.
    pub fn local(bytes: impl Into<Bytes>, guard: Option<InflightGuard>) -> Self {
        ResponseBody::Local {
            body: Full::new(bytes.into()),
            guard,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            ResponseBodyProj::Upstream { body, meter, .. } => {
                let frame = body.poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &frame {
                    if let Some(d) = f.data_ref() {
                        meter.data(d.len());
                    }
                }
                frame
            }
            ResponseBodyProj::Local { body, .. } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Local { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Local { body, .. } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn stalled_body_fails_instead_of_ending() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        let mut body = std::pin::pin!(TimedBody::new(StreamBody::new(stream), Duration::from_secs(5)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc")))).await.unwrap();
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "abc");
        // Nothing more arrives, and the sender stays open: the body must error.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, BodyError::Idle(_)), "{err}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn steady_frames_keep_the_body_alive() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        let mut body = std::pin::pin!(TimedBody::new(StreamBody::new(stream), Duration::from_secs(5)));
        let sender = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
            }
        });
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            frame.unwrap();
            n += 1;
        }
        assert_eq!(n, 10);
        sender.await.unwrap();
    }
}
