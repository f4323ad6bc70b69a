//! HTTP/1.x request framing guard: finds requests whose body length is ambiguous.
//!
//! hyper resolves `Content-Length` + `Transfer-Encoding` by preferring chunked and
//! silently merges duplicate equal `Content-Length` lines. That is correct for a
//! server, but a proxy that forwards such a request invites request smuggling: the
//! next hop may frame it differently. This guard watches the plaintext byte stream
//! beneath hyper, parses each request head itself (with the same `httparse`), follows
//! body framing to find the next head, and records a verdict per request that the
//! proxy checks before forwarding anything. It never changes a byte, never buffers a
//! body, and stops watching (passes through) once a request is rejected, since the
//! connection is closed after that answer.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::ConnState;

/// Why a request's framing was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// More than one `Content-Length` line, or a list in one.
    DuplicateLength,
    /// A `Content-Length` that is not a plain decimal number.
    InvalidLength,
    /// A transfer coding other than exactly one final `chunked`.
    UnsupportedTransferCoding,
    /// The guard had stopped watching, so the request's framing is unknown.
    Unverified,
}

impl FramingError {
    /// A short reason for the client and the logs.
    pub fn reason(self) -> &'static str {
        match self {
            FramingError::LengthAndChunked => "both Content-Length and Transfer-Encoding",
            FramingError::DuplicateLength => "more than one Content-Length",
            FramingError::InvalidLength => "invalid Content-Length",
            FramingError::UnsupportedTransferCoding => "Transfer-Encoding other than chunked",
            FramingError::Unverified => "request framing could not be verified",
        }
    }
}

/// Verdicts for the requests of one connection, in arrival order, without a lock:
/// heads are judged in order and the guard stops after the first refusal, so the
/// ledger is a count of accepted heads plus at most one refusal at the end.
#[derive(Debug)]
pub struct Ledger {
    /// Heads judged acceptable so far.
    accepted: AtomicU64,
    /// Requests the service has asked about so far.
    asked: AtomicU64,
    /// The refusal that ended the ledger, encoded by `encode`; 0 for none.
    refused: AtomicU8,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            accepted: AtomicU64::new(0),
            asked: AtomicU64::new(0),
            refused: AtomicU8::new(0),
        }
    }
}

impl Ledger {
    fn push(&self, v: Result<(), FramingError>) {
        match v {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Release);
            }
            Err(e) => self.refused.store(encode(e), Ordering::Release),
        }
    }

    /// The verdict for the next request hyper hands to the service. A request with no
    /// recorded verdict (the guard stopped watching) is refused: fail closed.
    pub fn next(&self) -> Result<(), FramingError> {
        let n = self.asked.fetch_add(1, Ordering::AcqRel);
        if n < self.accepted.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(decode(self.refused.load(Ordering::Acquire)).unwrap_or(FramingError::Unverified))
    }

    #[cfg(test)]
    fn pending(&self) -> bool {
        let asked = self.asked.load(Ordering::Acquire);
        asked < self.accepted.load(Ordering::Acquire)
            || (asked == self.accepted.load(Ordering::Acquire) && self.refused.load(Ordering::Acquire) != 0)
    }
}

fn encode(e: FramingError) -> u8 {
    match e {
        FramingError::LengthAndChunked => 1,
        FramingError::DuplicateLength => 2,
        FramingError::InvalidLength => 3,
        FramingError::UnsupportedTransferCoding => 4,
        FramingError::Unverified => 5,
    }
}

fn decode(v: u8) -> Option<FramingError> {
    Some(match v {
        1 => FramingError::LengthAndChunked,
        2 => FramingError::DuplicateLength,
        3 => FramingError::InvalidLength,
        4 => FramingError::UnsupportedTransferCoding,
        5 => FramingError::Unverified,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { n: u64, digits: u8 },
    Ext { n: u64 },
    SizeLf { n: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
    Invalid,
}

#[derive(Debug)]
enum State {
    /// Waiting for (the rest of) a request head; `buf` holds a partial one.
    Head,
    /// Skipping a body of known length.
    Length(u64),
    /// Following chunked framing.
    Chunked(Chunk),
    /// No longer watching.
    Passthrough,
}

/// The framing state machine over one connection's inbound bytes. Pure: no I/O, no
/// clock; the caller times heads through `mid_head` and the count `feed` returns.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    buf: Vec<u8>,
    max_head: usize,
    max_headers: usize,
}

const STACK_HEADERS: usize = 128;

impl Scanner {
    /// A scanner that gives up (passes through) on heads over `max_head` bytes or
    /// `max_headers` fields; hyper refuses those itself.
    pub fn new(max_head: usize, max_headers: usize) -> Self {
        Scanner {
            state: State::Head,
            buf: Vec::new(),
            max_head,
            max_headers,
        }
    }

    /// Whether the scanner still follows the stream.
    pub fn watching(&self) -> bool {
        !matches!(self.state, State::Passthrough)
    }

    /// Whether part of a request head is buffered, waiting for the rest.
    pub fn mid_head(&self) -> bool {
        matches!(self.state, State::Head) && !self.buf.is_empty()
    }

    /// Consumes the next bytes of the stream, recording a verdict per completed head;
    /// returns how many heads completed.
    pub fn feed(&mut self, mut data: &[u8], ledger: &Ledger) -> usize {
        let mut completed = 0;
        while !data.is_empty() {
            match &mut self.state {
                State::Passthrough => break,
                State::Head if self.buf.is_empty() => {
                    // Fast path: the whole head is in this read; parse it in place.
                    match self.parse_head(data, ledger) {
                        Some(used) => {
                            completed += 1;
                            data = &data[used..];
                        }
                        None => {
                            if self.watching() {
                                self.keep_partial(data.to_vec());
                            }
                            break;
                        }
                    }
                }
                State::Head => {
                    let old = self.buf.len();
                    let mut buf = std::mem::take(&mut self.buf);
                    buf.extend_from_slice(data);
                    match self.parse_head(&buf, ledger) {
                        Some(used) => {
                            completed += 1;
                            data = &data[used - old..];
                        }
                        None => {
                            if self.watching() {
                                self.keep_partial(buf);
                            }
                            break;
                        }
                    }
                }
                State::Length(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::Head;
                    }
                }
                State::Chunked(c) => {
                    let used = step_chunked(c, data);
                    data = &data[used..];
                    match *c {
                        Chunk::Done => self.state = State::Head,
                        Chunk::Invalid => self.state = State::Passthrough,
                        _ => {}
                    }
                }
            }
        }
        completed
    }

    fn keep_partial(&mut self, buf: Vec<u8>) {
        if buf.len() > self.max_head {
            self.state = State::Passthrough;
        } else {
            self.buf = buf;
        }
    }

    /// Parses a head at the start of `data`. `Some(len)` when complete (verdict
    /// recorded, state advanced); `None` when partial or when the scanner gave up.
    fn parse_head(&mut self, data: &[u8], ledger: &Ledger) -> Option<usize> {
        // Uninitialised slots: filling a hundred empty headers per request costs
        // more than the parse itself.
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap = Vec::new();
        let headers: &mut [MaybeUninit<httparse::Header<'_>>] = if self.max_headers <= STACK_HEADERS {
            &mut stack[..self.max_headers]
        } else {
            heap.resize_with(self.max_headers, MaybeUninit::uninit);
            &mut heap
        };
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(data, headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => {
                // hyper answers 400 itself and closes.
                self.state = State::Passthrough;
                return None;
            }
        };
        if len > self.max_head {
            self.state = State::Passthrough;
            return None;
        }
        let verdict = judge(&req);
        ledger.push(verdict.map(|_| ()));
        self.state = match verdict {
            Err(_) => State::Passthrough,
            Ok(_) if req.method == Some("CONNECT") => State::Passthrough,
            Ok(BodyLen::None) | Ok(BodyLen::Length(0)) => State::Head,
            Ok(BodyLen::Length(n)) => State::Length(n),
            Ok(BodyLen::Chunked) => State::Chunked(Chunk::Size { n: 0, digits: 0 }),
        };
        Some(len)
    }
}

#[derive(Clone, Copy)]
enum BodyLen {
    None,
    Length(u64),
    Chunked,
}

fn judge(req: &httparse::Request<'_, '_>) -> Result<BodyLen, FramingError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(FramingError::DuplicateLength);
            }
            let v = trim(h.value);
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(if v.contains(&b',') {
                    FramingError::DuplicateLength
                } else {
                    FramingError::InvalidLength
                });
            }
            length = Some(v.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')));
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::UnsupportedTransferCoding);
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err(FramingError::LengthAndChunked),
        (Some(n), false) => Ok(BodyLen::Length(n)),
        (None, true) => Ok(BodyLen::Chunked),
        (None, false) => Ok(BodyLen::None),
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Advances chunked framing (RFC 9112 section 7.1) over `data`; returns the bytes
/// consumed. Stops at the end of the message (`Done`) or on malformed input
/// (`Invalid`: hyper rejects it too and closes the connection).
fn step_chunked(c: &mut Chunk, data: &[u8]) -> usize {
    let mut i = 0;
    while i < data.len() {
        if let Chunk::Data(n) = *c {
            let take = n.min((data.len() - i) as u64);
            i += take as usize;
            *c = if n == take {
                Chunk::DataCr
            } else {
                Chunk::Data(n - take)
            };
            continue;
        }
        let b = data[i];
        i += 1;
        *c = match (*c, b) {
            (Chunk::Size { n, digits }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') if digits < 15 => {
                let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                Chunk::Size {
                    n: n * 16 + d,
                    digits: digits + 1,
                }
            }
            (Chunk::Size { n, digits }, b';' | b' ' | b'\t') if digits > 0 => Chunk::Ext { n },
            (Chunk::Size { n, digits }, b'\r') if digits > 0 => Chunk::SizeLf { n },
            (Chunk::Ext { n }, b'\r') => Chunk::SizeLf { n },
            (Chunk::Ext { n }, _) => Chunk::Ext { n },
            (Chunk::SizeLf { n: 0 }, b'\n') => Chunk::TrailerStart,
            (Chunk::SizeLf { n }, b'\n') => Chunk::Data(n),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size { n: 0, digits: 0 },
            (Chunk::TrailerStart, b'\r') => Chunk::FinalLf,
            (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf,
            (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
            (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
            (Chunk::FinalLf, b'\n') => Chunk::Done,
            _ => Chunk::Invalid,
        };
        if matches!(*c, Chunk::Done | Chunk::Invalid) {
            return i;
        }
    }
    i
}

/// A client stream seen through the framing guard. Reads pass through unchanged;
/// the guard records verdicts and head timing in the connection's state.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    scanner: Scanner,
    conn: Arc<ConnState>,
}

impl<S> Guarded<S> {
    /// Watches `inner` on behalf of the connection `conn`.
    pub fn new(inner: S, scanner: Scanner, conn: Arc<ConnState>) -> Self {
        Guarded { inner, scanner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if this.scanner.watching() {
                let completed = this.scanner.feed(&buf.filled()[before..], &this.conn.ledger);
                this.conn.observe_head(completed > 0, this.scanner.mid_head());
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
