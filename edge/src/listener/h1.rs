//! HTTP/1.1 client connections served without hyper: one task per connection reads
//! a request head, judges its framing, hands the request to the proxy, and writes
//! the answer; the request body reads the socket itself when the proxy asks for it.
//!
//! Serving and judging in one parse is what makes this the edge's HTTP/1 front door:
//! a request whose body length is ambiguous (both `Content-Length` and
//! `Transfer-Encoding`, duplicate or malformed lengths, codings other than a final
//! `chunked`) is answered 400 and the connection closed before anything reaches a
//! provider, and nothing after it on the connection is read. Heads are bounded in
//! size and field count (431) and in time (`header_read_timeout`, from the first
//! byte; the first request from accept); idle keep-alive connections close after
//! `idle_timeout`; drain closes idle connections at once and busy ones after their
//! response. This module must never forward a request it could not frame, never
//! reuse a connection whose request body was not read to its end, and never end a
//! response early as if it were complete.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::body::ResponseBody;
use crate::codec::{
    DecodeError, Decoder, Framing, RawFields, Span, Step, has_token, poll_fill, poll_write_all, push_field,
    push_last_chunk, recycle, recycled_map,
};
use crate::config::Limits;
use crate::conn::{Check, DrainNotice, DrainWatch};
use crate::framing::{BodyLen, FramingError, judge};
use crate::proxy::{ConnInfo, Proxy};
use crate::record;
use crate::respond::Refusal;

/// Header slots on the stack; more (by configuration) go to the heap.
const STACK_HEADERS: usize = 128;
/// Field positions kept on the stack; heads with more fields use the heap.
const STACK_SPANS: usize = 32;
/// Data frames up to this size are copied next to their framing and written in one
/// go; larger ones are written straight from their buffer.
const COALESCE: usize = 16 * 1024;
/// Longest field name a header map takes.
const MAX_NAME: usize = u16::MAX as usize;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// The socket and what has been read ahead on it, shared by the connection task
/// (heads, responses) and the request body (its bytes, `100 Continue`). Both run in
/// the connection's task, so the lock is never contended; it exists because the
/// body must be `Send` and outlive a borrow.
struct Wire<S> {
    io: S,
    buf: BytesMut,
    /// Whether the current request's body has been read to its end.
    body_done: bool,
}

impl<S: AsyncRead + Unpin> Wire<S> {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.buf, READ_CHUNK, cx)
    }
}

type Shared<S> = Arc<Mutex<Wire<S>>>;

fn lock<S>(wire: &Shared<S>) -> io::Result<MutexGuard<'_, Wire<S>>> {
    wire.lock().map_err(|_| io::Error::other("connection state poisoned"))
}

/// What the connection needs besides the socket.
pub(super) struct Served<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) info: Arc<ConnInfo>,
    pub(super) limits: &'a Limits,
    pub(super) alt_svc: Option<HeaderValue>,
    pub(super) drain: &'a Arc<DrainNotice>,
}

/// Serves HTTP/1.1 on `io` until the client leaves, a request cannot be framed, a
/// timeout passes, or drain closes it.
pub(super) async fn serve<S>(io: S, cx: Served<'_>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wire: Shared<S> = Arc::new(Mutex::new(Wire {
        io,
        buf: BytesMut::with_capacity(READ_CHUNK),
        body_done: true,
    }));
    let mut watch = cx.drain.watch();
    let mut out = Vec::with_capacity(1024);
    let header_timeout = cx.limits.header_read_timeout.0;
    let idle_timeout = cx.limits.idle_timeout.0;
    let sleep = tokio::time::sleep_until(Instant::now() + header_timeout.min(idle_timeout));
    let mut sleep = pin!(sleep);
    loop {
        let head = match read_head(&wire, &cx, &mut watch, sleep.as_mut(), &mut out).await {
            Some(head) => head,
            None => return,
        };
        let facts = Facts {
            head_request: head.method == Method::HEAD,
            version: head.version,
            close: !head.keep_alive,
            te_trailers: head.te_trailers,
        };
        let resp = match head.framing {
            Ok(len) => {
                let framing = match len {
                    BodyLen::None | BodyLen::Length(0) => Framing::Empty,
                    BodyLen::Length(n) => Framing::Length(n),
                    BodyLen::Chunked => Framing::Chunked,
                };
                let body = RequestBody {
                    wire: wire.clone(),
                    decoder: Decoder::new(framing),
                    expect: if head.expect_continue && framing != Framing::Empty {
                        Expect::Pending(0)
                    } else {
                        Expect::None
                    },
                };
                if let Ok(mut w) = wire.lock() {
                    w.body_done = body.decoder.is_end();
                }
                let mut req = Request::new(body);
                *req.method_mut() = head.method;
                *req.uri_mut() = head.uri;
                *req.version_mut() = head.version;
                // Empty but for what routing sets (`Host`): the fields are raw.
                *req.headers_mut() = recycled_map(2);
                // Pinned where it is made: the proxy's future is kilobytes, and
                // handing it on by value would copy it on every request.
                let handled = pin!(cx.proxy.handle(req, Some(head.fields), &cx.info));
                match unless_client_leaves(&wire, handled, cx.limits.max_header_bytes as usize).await {
                    Some(Ok(resp)) => resp,
                    None => return,
                }
            }
            Err(e) => {
                // Refused before anything is forwarded, and the connection closes:
                // what follows on it can no longer be framed.
                tracing::debug!(peer = %cx.info.peer, reason = e.reason(), "refused ambiguous framing");
                let guard = cx.info.state.begin_request();
                let resp = Refusal::Framing(e).into_response(Some(guard));
                record::request(None, None, &head.method, resp.status());
                resp
            }
        };
        let body_done = wire.lock().map(|w| w.body_done).unwrap_or(false);
        let keep = write_response(&wire, resp, &facts, &cx, body_done, &mut out).await;
        // A body the proxy left unread (an early answer) cannot be skipped safely:
        // the response said `connection: close` and `keep` is false.
        if !keep {
            return;
        }
    }
}

/// Runs the proxy's `handled` while watching the client: once its request has been
/// read whole, a closed connection (end of stream or an error) drops `handled`, so
/// no provider keeps working for a client that is gone. Bytes that arrive meanwhile
/// are a pipelined next request and stay buffered, up to one head's worth.
fn unless_client_leaves<S, F>(
    wire: &Shared<S>,
    mut handled: Pin<&mut F>,
    max_head: usize,
) -> impl Future<Output = Option<F::Output>>
where
    S: AsyncRead + Unpin,
    F: Future,
{
    poll_fn(move |task| {
        if let Poll::Ready(out) = handled.as_mut().poll(task) {
            return Poll::Ready(Some(out));
        }
        let Ok(mut w) = wire.lock() else {
            return Poll::Ready(None);
        };
        // Until then the body is the request's to read.
        while w.body_done && w.buf.len() < max_head {
            match w.poll_fill(task) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
}

/// A request head, parsed and judged.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    /// As received: the proxy builds a header map only when it must.
    fields: RawFields,
    framing: Result<BodyLen, FramingError>,
    keep_alive: bool,
    expect_continue: bool,
    te_trailers: bool,
}

/// Why a head was not accepted.
enum HeadError {
    /// Over the size or field-count limit: 431.
    TooLarge,
    /// Not HTTP/1.x: 400.
    Malformed,
}

/// Waits for the next request head. `None` when the connection should end (the
/// client left, a timeout, drain, or a head that got its error answer).
async fn read_head<S>(
    wire: &Shared<S>,
    cx: &Served<'_>,
    watch: &mut DrainWatch,
    mut sleep: Pin<&mut tokio::time::Sleep>,
    out: &mut Vec<u8>,
) -> Option<Head>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = cx.limits;
    let max_head = limits.max_header_bytes as usize;
    let max_headers = limits.max_headers as usize;
    let outcome = poll_fn(|task| {
        let Ok(mut w) = wire.lock() else {
            return Poll::Ready(Err(None));
        };
        loop {
            if !w.buf.is_empty() {
                match parse_head(&mut w.buf, max_head, max_headers) {
                    Ok(Some(head)) => {
                        cx.info.state.observe_head(false);
                        return Poll::Ready(Ok(head));
                    }
                    Ok(None) => cx.info.state.observe_head(true),
                    Err(e) => return Poll::Ready(Err(Some(e))),
                }
            } else if watch.poll_given(task).is_ready() {
                // Draining and between requests: nothing is lost by closing now.
                return Poll::Ready(Err(None));
            }
            match w.poll_fill(task) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(None)),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => break,
            }
        }
        drop(w);
        while sleep.as_mut().poll(task).is_ready() {
            match cx
                .info
                .state
                .check(Instant::now(), limits.header_read_timeout.0, limits.idle_timeout.0)
            {
                Check::Until(next) => sleep.as_mut().reset(next),
                Check::Idle => return Poll::Ready(Err(None)),
                Check::SlowHead => {
                    tracing::debug!(peer = %cx.info.peer, "request head too slow; closing");
                    return Poll::Ready(Err(None));
                }
            }
        }
        Poll::Pending
    })
    .await;
    match outcome {
        Ok(head) => Some(head),
        Err(None) => None,
        Err(Some(e)) => {
            let status = match e {
                HeadError::TooLarge => "431 Request Header Fields Too Large",
                HeadError::Malformed => "400 Bad Request",
            };
            out.clear();
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(status.as_bytes());
            out.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\ndate: ");
            push_date(out);
            out.extend_from_slice(b"\r\n\r\n");
            let _ = write_all(wire, out).await;
            None
        }
    }
}

/// Parses one request head off the front of `buf`. `Ok(None)` when more bytes are
/// needed.
fn parse_head(buf: &mut BytesMut, max_head: usize, max_headers: usize) -> Result<Option<Head>, HeadError> {
    // Uninitialised slots: filling a hundred empty headers per request costs more
    // than the parse itself.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADERS {
        &mut stack[..max_headers]
    } else {
        heap.resize_with(max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    let framing = judge(&req);
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| HeadError::Malformed)?;
    let base = buf.as_ptr() as usize;
    let target = req.path.unwrap_or("");
    let target_at = target.as_ptr() as usize - base;
    let target_span = target_at..target_at + target.len();
    // Most heads have a dozen fields: a small array, zeroed per request, covers them.
    let mut spans_heap = Vec::new();
    let mut spans_stack = [Span::default(); STACK_SPANS];
    let spans: &mut [Span] = if req.headers.len() <= STACK_SPANS {
        &mut spans_stack[..req.headers.len()]
    } else {
        spans_heap.resize(req.headers.len(), Span::default());
        &mut spans_heap
    };
    let mut keep_alive = version == Version::HTTP_11;
    let (mut expect_continue, mut te_trailers) = (false, false);
    for (span, field) in spans.iter_mut().zip(req.headers.iter()) {
        *span = Span::of(buf, field);
        // httparse admits the bytes a header map does, bar names past its length.
        if field.name.len() > MAX_NAME {
            return Err(HeadError::Malformed);
        }
        if field.name.eq_ignore_ascii_case("connection") {
            if has_token(field.value, b"close") {
                keep_alive = false;
            } else if has_token(field.value, b"keep-alive") {
                keep_alive = true;
            }
        } else if field.name.eq_ignore_ascii_case("expect") {
            // An HTTP/1.0 client does not know `100 Continue` (RFC 9110 section 10.1.1).
            expect_continue =
                version == Version::HTTP_11 && field.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if field.name.eq_ignore_ascii_case("te") {
            te_trailers = has_token(field.value, b"trailers");
        }
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target_span)).map_err(|_| HeadError::Malformed)?;
    // Origin form (`/path`), absolute form (`http://host/path`), `*` for OPTIONS, or
    // authority form for CONNECT only (RFC 9112 section 3.2): a bare `host:port` on any
    // other method would let the target override `Host` without saying so.
    let form_ok = match (uri.scheme(), uri.authority()) {
        (Some(_), Some(_)) => true,
        (None, Some(_)) => method == Method::CONNECT,
        _ => uri.path().starts_with('/') || (uri.path() == "*" && method == Method::OPTIONS),
    };
    if !form_ok {
        return Err(HeadError::Malformed);
    }
    let fields = RawFields::new(head, spans);
    Ok(Some(Head {
        method,
        uri,
        version,
        fields,
        framing,
        keep_alive,
        expect_continue,
        te_trailers,
    }))
}

/// What the response writer needs to know of its request.
struct Facts {
    head_request: bool,
    version: Version,
    close: bool,
    te_trailers: bool,
}

/// How the response body is being framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Writes `resp` and returns whether the connection may carry another request.
async fn write_response<S>(
    wire: &Shared<S>,
    resp: Response<ResponseBody>,
    facts: &Facts,
    cx: &Served<'_>,
    body_done: bool,
    out: &mut Vec<u8>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (parts, mut body) = resp.into_parts();
    let raw = body.take_raw();
    let status = parts.status;
    let no_body = facts.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // An answer the edge wrote may ask to close (`connection: close`); that is read
    // in the one pass over the fields below.
    let mut closing = facts.close || !body_done || cx.drain.given();
    let framing = if no_body {
        Out::None
    } else if let Some(n) = body.size_hint().exact() {
        Out::Length(n)
    } else if facts.version == Version::HTTP_11 {
        Out::Chunked
    } else {
        closing = true;
        Out::Close
    };

    out.clear();
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut dated = false;
    // A provider's fields as received come first (nothing hop-by-hop is among
    // them, or they would be in the map), then the map's.
    let received = raw.iter().flat_map(RawFields::iter).map(|(n, v)| (n, v, false));
    let mapped = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes(), true));
    for (name, value, in_map) in received.chain(mapped) {
        // Framing and connection management are this hop's own; a HEAD response
        // keeps the length the GET would have had. Only an answer the edge wrote
        // carries a `Connection` of its own (`close`).
        if name.eq_ignore_ascii_case(b"connection") {
            closing |= in_map && has_token(value, b"close");
            continue;
        }
        dated |= name.eq_ignore_ascii_case(b"date");
        let ours = name.eq_ignore_ascii_case(b"transfer-encoding")
            || (name.eq_ignore_ascii_case(b"content-length")
                && !(facts.head_request || status == StatusCode::NOT_MODIFIED))
            || (cx.alt_svc.is_some() && name.eq_ignore_ascii_case(b"alt-svc"));
        if !ours {
            push_field(out, name, value);
        }
    }
    match framing {
        Out::Length(n) => {
            let mut digits = [0u8; 20];
            push_field(out, b"content-length", decimal(n, &mut digits));
        }
        Out::Chunked => push_field(out, b"transfer-encoding", b"chunked"),
        Out::None | Out::Close => {}
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(v) = &cx.alt_svc {
        push_field(out, b"alt-svc", v.as_bytes());
    }
    if closing {
        push_field(out, b"connection", b"close");
    } else if facts.version == Version::HTTP_10 {
        push_field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    recycle(parts.headers);
    // The provider's head shares its connection's read buffer: let the buffer be
    // reused in place while the body streams through it.
    drop(raw);

    let mut body = pin!(body);
    if framing == Out::None {
        return write_all(wire, out).await.is_ok() && !closing;
    }
    let mut sent: u64 = 0;
    loop {
        // Take what the body already has without waiting; before waiting, send what
        // is buffered so the client is not kept waiting behind a slow provider.
        let next = match poll_fn(|task| Poll::Ready(body.as_mut().poll_frame(task))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if write_all(wire, out).await.is_err() {
                    return false;
                }
                out.clear();
                poll_fn(|task| body.as_mut().poll_frame(task)).await
            }
        };
        match next {
            None => break,
            Some(Err(e)) => {
                // Cut the response off: the client must see it incomplete.
                tracing::debug!(peer = %cx.info.peer, error = %e, "response body failed");
                let _ = write_all(wire, out).await;
                return false;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    sent += data.len() as u64;
                    if let Out::Length(n) = framing {
                        if sent > n {
                            return false;
                        }
                    }
                    if framing == Out::Chunked {
                        use std::io::Write as _;
                        let _ = write!(out, "{:x}\r\n", data.len());
                    }
                    if data.len() <= COALESCE {
                        out.extend_from_slice(&data);
                    } else {
                        if write_all(wire, out).await.is_err() || write_all(wire, &data).await.is_err() {
                            return false;
                        }
                        out.clear();
                    }
                    if framing == Out::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                Err(frame) => {
                    if let (Out::Chunked, true, Ok(trailers)) = (framing, facts.te_trailers, frame.into_trailers()) {
                        push_last_chunk(out, &trailers);
                        let done = write_all(wire, out).await.is_ok();
                        return done && !closing;
                    }
                }
            },
        }
    }
    match framing {
        Out::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        // Fewer bytes than announced: the client must not take it as complete.
        Out::Length(n) if sent != n => {
            let _ = write_all(wire, out).await;
            return false;
        }
        _ => {}
    }
    write_all(wire, out).await.is_ok() && !closing
}

fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[i..];
        }
    }
}

thread_local! {
    /// The `Date` value, formatted once per second per worker.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Writes all of `data`, then flushes.
async fn write_all<S: AsyncWrite + Unpin>(wire: &Shared<S>, data: &[u8]) -> io::Result<()> {
    let mut written = 0;
    poll_fn(|task| poll_write_all(&mut lock(wire)?.io, data, &mut written, task)).await
}

/// `100 Continue` owed to a client that asked before sending its body.
#[derive(Debug, Clone, Copy)]
enum Expect {
    None,
    /// Not fully written yet; this many bytes are out.
    Pending(usize),
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A request body, read from the client's connection as the proxy forwards it.
struct RequestBody<S> {
    wire: Shared<S>,
    decoder: Decoder,
    expect: Expect,
}

impl<S> std::fmt::Debug for RequestBody<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum RequestBodyError {
    /// The client's socket failed or closed early.
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    /// The client broke the body's framing.
    #[error("request body: {0}")]
    Framing(#[from] DecodeError),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Body for RequestBody<S> {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        if this.decoder.is_end() {
            return Poll::Ready(None);
        }
        let mut w = match lock(&this.wire) {
            Ok(w) => w,
            Err(e) => return Poll::Ready(Some(Err(e.into()))),
        };
        // The client waits for this before sending; the proxy asks for the body
        // only once it is sending to a provider.
        if let Expect::Pending(done) = &mut this.expect {
            if let Err(e) = ready!(poll_write_all(&mut w.io, CONTINUE, done, task)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            this.expect = Expect::None;
        }
        loop {
            match this.decoder.step(&mut w.buf) {
                Ok(Step::Frame(frame)) => {
                    w.body_done = this.decoder.is_end();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    w.body_done = true;
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            match ready!(w.poll_fill(task)) {
                Ok(0) => {
                    let e = this.decoder.eof().err().unwrap_or(DecodeError("connection closed"));
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
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
