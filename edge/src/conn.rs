//! Per-connection bookkeeping: requests in flight, idle time, slow request heads,
//! and the notice that the listener is draining.
//!
//! The listener's connection task consults this state to close idle keep-alive
//! connections and connections that dribble a request head (slowloris). The decision
//! is a pure function of the state and `now`, so it is tested without sockets or
//! sleeps. Nothing here ever blocks or allocates per request.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

const NONE: u64 = u64::MAX;

/// Shared by the connection task and the requests it serves.
#[derive(Debug)]
pub struct ConnState {
    base: Instant,
    inflight: AtomicU32,
    /// Millis since `base` when the connection last became idle.
    idle_since: AtomicU64,
    /// Millis since `base` when the current request head began, or `NONE`.
    head_started: AtomicU64,
}

/// What the connection task should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing yet; look again at this instant.
    Until(Instant),
    /// No request for `idle_timeout`: close gracefully.
    Idle,
    /// A request head took longer than `header_read_timeout`: drop the connection.
    SlowHead,
}

impl ConnState {
    /// State for a connection accepted at `now`. `awaiting_head` starts the header
    /// clock at once (HTTP/1.x: the first request must arrive in time).
    pub fn new(now: Instant, awaiting_head: bool) -> Arc<Self> {
        Arc::new(ConnState {
            base: now,
            inflight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(if awaiting_head { 0 } else { NONE }),
        })
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Called by the HTTP/1.1 server after each read while it waits for a head:
    /// `mid_head` says whether part of one is buffered (the header clock runs).
    pub fn observe_head(&self, mid_head: bool) {
        if !mid_head {
            self.head_started.store(NONE, Ordering::Relaxed);
        } else if self.head_started.load(Ordering::Relaxed) == NONE {
            // The clock is read once per split head, never for a head in one read.
            self.head_started.store(self.millis(Instant::now()), Ordering::Relaxed);
        }
    }

    /// Marks a request in flight until the guard is dropped (when its response body
    /// ends or is abandoned).
    pub fn begin_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }

    /// Decides, at `now`, whether the connection has overstayed.
    pub fn check(&self, now: Instant, header_timeout: Duration, idle_timeout: Duration) -> Check {
        let at = |ms: u64| self.base + Duration::from_millis(ms);
        let head = self.head_started.load(Ordering::Relaxed);
        if head != NONE {
            let deadline = at(head) + header_timeout;
            return if now >= deadline {
                Check::SlowHead
            } else {
                Check::Until(deadline)
            };
        }
        if self.inflight.load(Ordering::Relaxed) > 0 {
            return Check::Until(now + idle_timeout);
        }
        let deadline = at(self.idle_since.load(Ordering::Relaxed)) + idle_timeout;
        if now >= deadline {
            Check::Idle
        } else {
            Check::Until(deadline)
        }
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InflightGuard(Arc<ConnState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let state = &self.0;
        if state.inflight.fetch_sub(1, Ordering::Relaxed) == 1 {
            state.idle_since.store(state.millis(Instant::now()), Ordering::Relaxed);
        }
    }
}

/// Tells a listener's connections that drain has begun.
///
/// A connection task wakes a few times per request and must check for drain each
/// time; here that check is one atomic load, and the task's waker is registered
/// once per connection rather than on every wake-up (as a `watch` or `Notify`
/// future would, under a lock).
#[derive(Debug, Default)]
pub struct DrainNotice {
    draining: AtomicBool,
    waiters: Mutex<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl DrainNotice {
    /// A notice not yet given.
    pub fn new() -> Arc<Self> {
        Arc::new(DrainNotice::default())
    }

    /// Gives the notice: every watching connection is woken.
    pub fn give(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = match self.waiters.lock() {
            Ok(mut w) => w.slots.iter_mut().filter_map(Option::take).collect(),
            Err(_) => return,
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Whether the notice has been given.
    pub fn given(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A watch for one connection.
    pub fn watch(self: &Arc<Self>) -> DrainWatch {
        DrainWatch {
            notice: self.clone(),
            slot: None,
        }
    }
}

/// One connection's view of a [`DrainNotice`]. It must be polled from a single task
/// (the connection's own), whose waker it keeps after the first poll.
#[derive(Debug)]
pub struct DrainWatch {
    notice: Arc<DrainNotice>,
    slot: Option<usize>,
}

impl DrainWatch {
    /// Ready once the notice is given.
    pub fn poll_given(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.notice.given() {
            return Poll::Ready(());
        }
        if self.slot.is_none() {
            if let Ok(mut w) = self.notice.waiters.lock() {
                let waker = Some(cx.waker().clone());
                let slot = match w.free.pop() {
                    Some(i) => {
                        w.slots[i] = waker;
                        i
                    }
                    None => {
                        w.slots.push(waker);
                        w.slots.len() - 1
                    }
                };
                self.slot = Some(slot);
            }
            // Given between the check and the registration: seen now.
            if self.notice.given() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWatch {
    fn drop(&mut self) {
        if let (Some(i), Ok(mut w)) = (self.slot, self.notice.waiters.lock()) {
            w.slots[i] = None;
            w.free.push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn first_head_is_timed_from_accept() {
        let t0 = Instant::now();
        let s = ConnState::new(t0, true);
        assert_eq!(s.check(t0, HEAD, IDLE), Check::Until(t0 + HEAD));
        assert_eq!(s.check(t0 + HEAD, HEAD, IDLE), Check::SlowHead);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_only_without_requests_in_flight() {
        let t0 = Instant::now();
        let s = ConnState::new(t0, false);
        let g = s.begin_request();
        assert!(matches!(s.check(t0 + IDLE * 2, HEAD, IDLE), Check::Until(_)));
        tokio::time::advance(IDLE * 2).await;
        drop(g);
        let t1 = Instant::now();
        assert_eq!(s.check(t1, HEAD, IDLE), Check::Until(t1 + IDLE));
        assert_eq!(s.check(t1 + IDLE, HEAD, IDLE), Check::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_head_after_idle_starts_the_header_clock() {
        let t0 = Instant::now();
        let s = ConnState::new(t0, false);
        tokio::time::advance(Duration::from_secs(5)).await;
        s.observe_head(true);
        let t1 = Instant::now();
        assert_eq!(s.check(t1, HEAD, IDLE), Check::Until(t1 + HEAD));
        tokio::time::advance(Duration::from_secs(3)).await;
        // More bytes of the same head do not restart the clock.
        s.observe_head(true);
        assert_eq!(s.check(t1 + HEAD, HEAD, IDLE), Check::SlowHead);
        s.observe_head(false);
        assert!(matches!(s.check(t1 + HEAD, HEAD, IDLE), Check::Until(_)));
    }

    #[tokio::test]
    async fn drain_notice_wakes_every_watching_connection_once_given() {
        let notice = DrainNotice::new();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let mut w = notice.watch();
            tasks.push(tokio::spawn(async move {
                std::future::poll_fn(|cx| w.poll_given(cx)).await
            }));
        }
        // Each task registers on its first poll.
        tokio::task::yield_now().await;
        // A watch dropped before the notice frees its slot for the next one.
        let mut gone = notice.watch();
        let polled = std::future::poll_fn(|cx| Poll::Ready(gone.poll_given(cx))).await;
        assert!(polled.is_pending());
        drop(gone);
        let mut reused = notice.watch();
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(reused.poll_given(cx)))
                .await
                .is_pending()
        );
        assert_eq!(notice.waiters.lock().unwrap().slots.len(), 4);
        notice.give();
        for t in tasks {
            t.await.unwrap();
        }
        // A watch made after the notice sees it at once.
        let mut late = notice.watch();
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(late.poll_given(cx)))
                .await
                .is_ready()
        );
    }
}
