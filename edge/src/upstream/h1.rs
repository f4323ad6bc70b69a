//! HTTP/1.1 to providers without a dispatcher: the request's own task writes the
//! request head (and streams its body), parses the response head, and then the
//! response body reads its frames straight from the socket.
//!
//! hyper's client runs a connection state machine behind channels: the response
//! head and every body chunk cross a channel, and each crossing wakes the request's
//! task once more. Here nothing crosses a channel, so a small exchange costs the two
//! wake-ups the network imposes and no more (the Pingora model).
//!
//! A provider's response is untrusted input: its head is bounded, its framing is
//! checked (RFC 9112 section 6.3) and a connection whose framing was in any way
//! doubtful is never reused. This module must never send a request twice, never
//! reuse a connection whose last exchange did not end exactly at a message boundary,
//! and never end a body early as if it were complete.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::UpstreamIo;
use crate::body::{BoxError, ProxyBody};
use crate::codec::{
    DecodeError, Decoder, Framing, RawFields, Span, Step, has_token, header_map, parse_length, poll_fill,
    poll_write_all, push_field, push_last_chunk, recycle, recycled_map,
};
use crate::headers::{self, Passed};

/// Longest response head accepted from a provider.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// Fields parsed without touching the heap.
const FEW_HEADERS: usize = 32;
/// Bytes asked of the socket per read while a body streams.
const READ_CHUNK: usize = 64 * 1024;
/// Informational (1xx) responses skipped before the final one.
const MAX_INFORMATIONAL: usize = 8;

/// Why an exchange with a provider failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The provider closed the connection before its message was complete.
    #[error("provider closed the connection {0}")]
    Closed(&'static str),
    /// The provider broke HTTP/1.1.
    #[error("invalid response from provider: {0}")]
    Invalid(&'static str),
    /// The response body's framing broke.
    #[error("invalid response body from provider: {0}")]
    Body(#[from] DecodeError),
    /// The request body failed (the client went away or stalled).
    #[error("request body failed: {0}")]
    RequestBody(BoxError),
    /// The request body did not match its `Content-Length`.
    #[error("request body does not match its Content-Length")]
    RequestLength,
    /// No response head by the deadline.
    #[error("provider sent no response head in time")]
    Timeout,
}

/// An open connection to a provider with what has been read ahead on it. Boxed once,
/// when it is opened: every request hands it along by value (from the pool to the
/// exchange, to the response body, back to the pool), and a pointer is cheaper to
/// move through those futures and bodies than its 120 bytes.
#[derive(Debug)]
pub(super) struct Conn(Box<Link>);

/// What a [`Conn`] points to.
#[derive(Debug)]
pub(super) struct Link {
    io: UpstreamIo,
    buf: BytesMut,
    /// Head bytes to write, reused between requests.
    head: Vec<u8>,
    /// The response-head deadline, kept with the connection: moving a registered
    /// timer later is an atomic store, where a fresh timer per request takes the
    /// timer wheel's lock twice.
    timer: Option<Pin<Box<Sleep>>>,
}

impl std::ops::Deref for Conn {
    type Target = Link;
    fn deref(&self) -> &Link {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Link {
        &mut self.0
    }
}

impl Conn {
    /// A fresh connection.
    pub(super) fn new(io: UpstreamIo) -> Self {
        Conn(Box::new(Link {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            head: Vec::with_capacity(1024),
            timer: None,
        }))
    }
}

impl Link {
    /// Whether an idle connection still looks usable: not closed by the provider
    /// and with nothing unasked-for to read. Polled with a no-op waker, never waits.
    pub(super) fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut rb = tokio::io::ReadBuf::new(&mut probe);
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut rb), Poll::Pending)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.buf, want, cx)
    }
}

/// A failed exchange; `unsent` holds the request when none of it was written, so it
/// may be tried elsewhere.
#[derive(Debug)]
pub(super) struct Failed {
    /// What went wrong.
    pub(super) error: H1Error,
    /// The untouched request, when nothing of it reached the provider.
    pub(super) unsent: Option<Request<ProxyBody>>,
}

/// What the response body hands back when it is done: the connection, if it may
/// carry another exchange.
pub(super) trait Release: Send + Unpin + 'static {
    /// Takes the connection back (it ended cleanly at a message boundary).
    fn release(&self, conn: Conn);
}

/// Sends `req` on `conn` and returns the response once its head arrived. The body
/// streams from the connection and hands it to `pool` when it ends cleanly; it is
/// made the caller's body type `B` here, so the response is built once rather than
/// re-wrapped (moved) at each layer above.
// Not an `async fn`, so the request is not copied again when first polled (see
// `Proxy::handle`).
#[allow(clippy::manual_async_fn)]
pub(super) fn exchange<P: Release, B: From<H1Body<P>>>(
    mut conn: Conn,
    req: Request<ProxyBody>,
    passed: Option<&Passed<'_>>,
    pool: P,
    deadline: Instant,
) -> impl Future<Output = Result<Response<B>, Failed>> {
    async move {
        let mut timer = match conn.timer.take() {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let head_request = req.method() == Method::HEAD;
        let upload = match encode_head(&req, passed, &mut conn.head) {
            Framing::Empty => None,
            framing => Some(framing),
        };
        let mut written = 0;
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        // Write the head first: if none of it reaches the socket, the request is intact
        // and may go elsewhere.
        let head_result = poll_fn(|cx| {
            let link = &mut *conn;
            let wrote = poll_write_all(&mut link.io, &link.head, &mut written, cx);
            timed(wrote.map_err(H1Error::from), &mut timer, cx)
        })
        .await;
        if let Err(e) = head_result {
            // A timeout ends the request's time, wherever it is: never tried elsewhere.
            let intact = written == 0 && !matches!(e, H1Error::Timeout);
            let unsent = intact.then(|| Request::from_parts(parts, body.take().unwrap_or_else(empty)));
            return Err(Failed { error: e, unsent });
        }
        // Written: the head's fields are done with.
        recycle(parts.headers);
        let fail = |error| Failed { error, unsent: None };

        let mut upload = upload.zip(body.take()).map(|(framing, body)| Upload {
            body,
            framing,
            out: Vec::new(),
            done: false,
        });
        let mut informational = 0;
        let head = poll_fn(|cx| {
            let got = read_head(&mut conn, upload.as_mut(), &mut informational, head_request, cx);
            timed(got, &mut timer, cx)
        })
        .await
        .map_err(fail)?;
        conn.timer = Some(timer);
        // A response that came before the whole request went out ends the exchange
        // early: the connection cannot carry another one.
        let request_done = upload.as_ref().is_none_or(|u| u.done);
        let reusable = head.keep_alive && request_done && head.framing != Framing::Close;
        let mut body = H1Body {
            conn: Some(conn),
            decoder: Decoder::new(head.framing),
            reusable,
            pool: Some(pool),
            raw: head.raw,
        };
        if body.decoder.is_end() {
            body.finish();
        }
        let mut resp = Response::new(B::from(body));
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }
}

/// Drives the upload (if any) and reads until a final response head is parsed.
fn read_head(
    conn: &mut Link,
    upload: Option<&mut Upload>,
    informational: &mut usize,
    head_request: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, H1Error>> {
    if let Some(up) = upload {
        if let Poll::Ready(Err(e)) = up.poll_send(&mut conn.io, cx) {
            return Poll::Ready(Err(e));
        }
    }
    loop {
        match parse_response(&mut conn.buf, head_request) {
            Ok(Some(Parsed::Informational)) => {
                *informational += 1;
                if *informational > MAX_INFORMATIONAL {
                    return Poll::Ready(Err(H1Error::Invalid("too many informational responses")));
                }
                continue;
            }
            Ok(Some(Parsed::Final(head))) => return Poll::Ready(Ok(head)),
            Ok(None) => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
        if conn.buf.len() >= MAX_HEAD {
            return Poll::Ready(Err(H1Error::Invalid("response head too large")));
        }
        match ready!(conn.poll_fill(cx, 8 * 1024)) {
            Ok(0) => return Poll::Ready(Err(H1Error::Closed("before the response head"))),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
}

/// `poll`, unless it is still pending when `timer` has fired.
fn timed<T>(
    poll: Poll<Result<T, H1Error>>,
    timer: &mut Pin<Box<Sleep>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, H1Error>> {
    match poll {
        Poll::Pending if timer.as_mut().poll(cx).is_ready() => Poll::Ready(Err(H1Error::Timeout)),
        other => other,
    }
}

fn empty() -> ProxyBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Writes the request line and fields (the map's, then `passed`) into `out` and
/// returns the body's framing: the client's `Content-Length` when it gave one, the
/// body's exact size when known, chunked otherwise.
fn encode_head(req: &Request<ProxyBody>, passed: Option<&Passed<'_>>, out: &mut Vec<u8>) -> Framing {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri().path_and_query().map_or("/", |pq| pq.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let declared = match passed {
        Some(passed) => {
            passed.write(out);
            passed.fields.get("content-length")
        }
        None => req.headers().get(header::CONTENT_LENGTH).map(|v| v.as_bytes()),
    };
    let body = req.body();
    let declared = declared.and_then(parse_length);
    let framing = match declared {
        // The HTTP/1.1 server's framing rules and the HTTP/2 and HTTP/3 codecs hold the body
        // to its declared length.
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if body.is_end_stream() => {
            if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::Empty
        }
        None => match body.size_hint().exact() {
            Some(n) => {
                use std::io::Write as _;
                let _ = write!(out, "content-length: {n}\r\n");
                if n == 0 { Framing::Empty } else { Framing::Length(n) }
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// A request body on its way out.
struct Upload {
    body: ProxyBody,
    framing: Framing,
    /// Bytes waiting for the socket, in order.
    out: Vec<Bytes>,
    done: bool,
}

impl Upload {
    /// Moves the body to the socket until either has to wait. Ready(Ok) once all of
    /// it is written.
    fn poll_send(&mut self, io: &mut UpstreamIo, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        loop {
            while !self.out.is_empty() {
                let n = {
                    let mut slices = [IoSlice::new(&[]); 4];
                    for (slice, b) in slices.iter_mut().zip(&self.out) {
                        *slice = IoSlice::new(b);
                    }
                    let used = self.out.len().min(slices.len());
                    match ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..used])) {
                        Ok(0) => return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into())),
                        Ok(n) => n,
                        Err(e) => return Poll::Ready(Err(e.into())),
                    }
                };
                consume(&mut self.out, n);
                if self.out.is_empty() {
                    if let Err(e) = ready!(Pin::new(&mut *io).poll_flush(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                }
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.queue_data(data)?,
                    Err(frame) => {
                        if let (Framing::Chunked, Ok(trailers)) = (self.framing, frame.into_trailers()) {
                            let mut last = Vec::new();
                            push_last_chunk(&mut last, &trailers);
                            self.out.push(Bytes::from(last));
                            self.done = true;
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(H1Error::RequestBody(e))),
                None => {
                    match self.framing {
                        Framing::Length(0) => {}
                        Framing::Length(_) => return Poll::Ready(Err(H1Error::RequestLength)),
                        _ => self.out.push(Bytes::from_static(b"0\r\n\r\n")),
                    }
                    self.done = true;
                }
            }
        }
    }

    fn queue_data(&mut self, data: Bytes) -> Result<(), H1Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(rem) => {
                let n = data.len() as u64;
                if n > *rem {
                    return Err(H1Error::RequestLength);
                }
                *rem -= n;
                self.out.push(data);
            }
            _ => {
                self.out.push(Bytes::from(format!("{:x}\r\n", data.len())));
                self.out.push(data);
                self.out.push(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }
}

/// Drops `n` written bytes from the front of `out`.
fn consume(out: &mut Vec<Bytes>, mut n: usize) {
    let mut whole = 0;
    for b in out.iter_mut() {
        if n >= b.len() {
            n -= b.len();
            whole += 1;
        } else {
            b.advance(n);
            break;
        }
    }
    out.drain(..whole);
}

/// A parsed final response head.
struct Head {
    status: StatusCode,
    version: Version,
    /// Empty when the fields stay `raw`.
    headers: HeaderMap,
    /// The fields as received, when no hop-by-hop field or `Via` needs them
    /// rewritten: they go to an HTTP/1.1 client as they are.
    raw: Option<RawFields>,
    framing: Framing,
    keep_alive: bool,
}

enum Parsed {
    /// A 1xx response was consumed; the final one follows.
    Informational,
    Final(Head),
}

/// Parses one response head from the front of `buf`, consuming it. `Ok(None)` when
/// more bytes are needed.
fn parse_response(buf: &mut BytesMut, head_request: bool) -> Result<Option<Parsed>, H1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Most responses have a dozen fields: parse with a small table first (it is
    // initialised per response) and only a head with more pays for the full one.
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    let mut many = Vec::new();
    let mut resp = httparse::Response::new(&mut few);
    let len = match resp.parse(buf) {
        Err(httparse::Error::TooManyHeaders) => {
            many.resize(MAX_HEADERS, httparse::EMPTY_HEADER);
            resp = httparse::Response::new(&mut many);
            resp.parse(buf)
        }
        other => other,
    };
    let len = match len {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Invalid("too many header fields")),
        Err(_) => return Err(H1Error::Invalid("malformed response head")),
    };
    if len > MAX_HEAD {
        return Err(H1Error::Invalid("response head too large"));
    }
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("invalid status code"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::Invalid("unrequested protocol switch"));
        }
        buf.advance(len);
        return Ok(Some(Parsed::Informational));
    }
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let count = resp.headers.len();
    let mut spans_heap = Vec::new();
    let mut spans_stack = [Span::default(); FEW_HEADERS];
    let spans: &mut [Span] = if count <= FEW_HEADERS {
        &mut spans_stack[..count]
    } else {
        spans_heap.resize(count, Span::default());
        &mut spans_heap
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut close = version == Version::HTTP_10;
    let mut doubtful = false;
    let mut plain = true;
    for (span, field) in spans.iter_mut().zip(resp.headers.iter()) {
        *span = Span::of(buf, field);
        // A hop-by-hop field is dropped, `Via` merged with: both need the map.
        plain &= !(headers::is_hop_by_hop_name(field.name.as_bytes()) || field.name.eq_ignore_ascii_case("via"));
        let raw = field.value;
        if field.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(raw).ok_or(H1Error::Invalid("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Invalid("conflicting Content-Length"));
            }
            doubtful |= length.is_some();
            length = Some(n);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            // Only the last coding decides whether the body is chunked.
            chunked = raw
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .rfind(|t| !t.is_empty())
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if field.name.eq_ignore_ascii_case("connection") {
            if has_token(raw, b"close") {
                close = true;
            } else if version == Version::HTTP_10 && has_token(raw, b"keep-alive") {
                close = false;
            }
        }
    }
    // Field values become slices of the head (no copies).
    let head = buf.split_to(len).freeze();
    // httparse admits exactly the name and value bytes a header map does, so the
    // raw fields are as checked as the map would be.
    let (mut headers, raw) = if plain {
        // The map holds what this edge adds (`Via`, perhaps an explanation).
        (recycled_map(2), Some(RawFields::new(head, spans)))
    } else {
        (header_map(&head, spans, 4).map_err(|e| H1Error::Invalid(e.0))?, None)
    };
    let no_body = head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else if coded {
        // Both framings at once is how responses get smuggled: honour chunked as
        // RFC 9112 says, and never reuse the connection.
        doubtful |= length.is_some();
        headers.remove(header::CONTENT_LENGTH);
        if chunked { Framing::Chunked } else { Framing::Close }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(Some(Parsed::Final(Head {
        status,
        version,
        headers,
        raw,
        framing,
        keep_alive: !close && !doubtful,
    })))
}

/// A provider's response body, read straight from its connection. When it ends
/// cleanly at a message boundary the connection goes back to the pool; dropped
/// early, it closes the connection.
pub(super) struct H1Body<P: Release> {
    conn: Option<Conn>,
    decoder: Decoder,
    reusable: bool,
    pool: Option<P>,
    /// The response's fields, when they were left as received.
    raw: Option<RawFields>,
}

impl<P: Release> std::fmt::Debug for H1Body<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl<P: Release> H1Body<P> {
    /// The response's fields as received, when the head's header map was left
    /// empty for them.
    pub(super) fn take_raw(&mut self) -> Option<RawFields> {
        self.raw.take()
    }

    pub(super) fn raw(&self) -> Option<&RawFields> {
        self.raw.as_ref()
    }

    /// The message is complete: hand the connection back if it may be reused.
    fn finish(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            // Bytes beyond the message were never asked for: the provider is confused.
            if self.reusable && conn.buf.is_empty() {
                pool.release(conn);
            }
        }
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl<P: Release> Body for H1Body<P> {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.step(&mut conn.buf) {
                Ok(Step::Frame(frame)) => {
                    // hyper stops polling a body of known length once it has all of
                    // it: release the connection with the last frame, not after.
                    if this.decoder.is_end() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return this.fail(e.into()),
            }
            match ready!(conn.poll_fill(cx, READ_CHUNK)) {
                Ok(0) => {
                    return match this.decoder.eof() {
                        Ok(()) => {
                            this.conn = None;
                            Poll::Ready(None)
                        }
                        Err(_) => this.fail(H1Error::Closed("in the middle of the response body")),
                    };
                }
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}

#[cfg(test)]
mod tests;
