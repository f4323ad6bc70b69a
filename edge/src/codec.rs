//! HTTP/1.1 wire pieces shared by the edge's server ([`crate::listener`]) and its
//! client to providers ([`crate::upstream`]): message-body decoding (RFC 9112
//! sections 6 and 7), header blocks built without copying field values or kept as
//! received ([`RawFields`]), field and last-chunk encoding, and the two socket
//! loops both sides need (fill a read buffer, write a buffer whole).
//!
//! No sockets of its own and no clock. Everything here reads untrusted bytes, so
//! every length is bounded and every malformed input is an error, never a guess; a
//! decoder must never report the end of a body it has not seen end.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

/// Longest chunk-size line (size, extensions, CRLF).
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section.
const MAX_TRAILERS: usize = 64 * 1024;
/// Most fields in a trailer section.
const MAX_TRAILER_FIELDS: usize = 100;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data remain.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Expecting the trailer section (possibly empty).
    Trailers,
}

/// What one decoding step produced.
#[derive(Debug)]
pub enum Step {
    /// A frame of the body; the body may have ended with it (see [`Decoder::is_end`]).
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    /// The body is complete.
    End,
}

/// A body's framing went wrong; the reason is for logs and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub &'static str);

/// Decodes one message body from a connection's read buffer.
#[derive(Debug)]
pub struct Decoder {
    framing: Framing,
    chunk: Chunk,
    done: bool,
}

impl Decoder {
    /// A decoder for a body framed as `framing`.
    pub fn new(framing: Framing) -> Self {
        Decoder {
            framing,
            chunk: Chunk::Size,
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    /// Whether the whole body has been decoded.
    pub fn is_end(&self) -> bool {
        self.done
    }

    /// Whether the body ends only when the connection does.
    pub fn ends_at_close(&self) -> bool {
        self.framing == Framing::Close
    }

    /// What is left, when known.
    pub fn size_hint(&self) -> SizeHint {
        match (self.done, self.framing) {
            (true, _) => SizeHint::with_exact(0),
            (false, Framing::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// Takes the next frame out of `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, DecodeError> {
        if self.done {
            return Ok(Step::End);
        }
        match self.framing {
            Framing::Empty => {
                self.done = true;
                Ok(Step::End)
            }
            Framing::Length(rem) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = buf.len().min(usize::try_from(rem).unwrap_or(usize::MAX));
                let left = rem - take as u64;
                self.framing = Framing::Length(left);
                self.done = left == 0;
                Ok(Step::Frame(Frame::data(buf.split_to(take).freeze())))
            }
            Framing::Close => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                Ok(Step::Frame(Frame::data(buf.split().freeze())))
            }
            Framing::Chunked => self.step_chunked(buf),
        }
    }

    /// The sender closed the connection: the end for a close-delimited body, an
    /// error for any other.
    pub fn eof(&mut self) -> Result<(), DecodeError> {
        if self.framing == Framing::Close || self.done {
            self.done = true;
            Ok(())
        } else {
            Err(DecodeError("connection closed in the middle of the body"))
        }
    }

    fn step_chunked(&mut self, buf: &mut BytesMut) -> Result<Step, DecodeError> {
        loop {
            match self.chunk {
                Chunk::Size => match chunk_size(buf)? {
                    Some(0) => self.chunk = Chunk::Trailers,
                    Some(n) => self.chunk = Chunk::Data(n),
                    None => return Ok(Step::More),
                },
                Chunk::Data(rem) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = buf.len().min(usize::try_from(rem).unwrap_or(usize::MAX));
                    let left = rem - take as u64;
                    self.chunk = if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) };
                    return Ok(Step::Frame(Frame::data(buf.split_to(take).freeze())));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(DecodeError("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.chunk = Chunk::Size;
                }
                Chunk::Trailers => {
                    return match trailer_section(buf)? {
                        Some(trailers) => {
                            self.done = true;
                            Ok(if trailers.is_empty() {
                                Step::End
                            } else {
                                Step::Frame(Frame::trailers(trailers))
                            })
                        }
                        None => Ok(Step::More),
                    };
                }
            }
        }
    }
}

/// Parses a chunk-size line (`1a2b;ext=1\r\n`) from the front of `buf`.
fn chunk_size(buf: &mut BytesMut) -> Result<Option<u64>, DecodeError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= MAX_CHUNK_LINE {
            return Err(DecodeError("chunk-size line too long"));
        }
        return Ok(None);
    };
    let line = &buf[..end];
    let digits = line.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(DecodeError("invalid chunk size"));
    }
    let mut n: u64 = 0;
    for &b in digits {
        let d = (b as char).to_digit(16).ok_or(DecodeError("invalid chunk size"))?;
        n = n * 16 + u64::from(d);
    }
    buf.advance(end + 2);
    Ok(Some(n))
}

/// Parses the trailer section after the last chunk (empty when the next bytes are
/// CRLF).
fn trailer_section(buf: &mut BytesMut) -> Result<Option<HeaderMap>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if &buf[..2] == b"\r\n" {
        buf.advance(2);
        return Ok(Some(HeaderMap::new()));
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let (len, parsed) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(x)) => x,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_TRAILERS => return Err(DecodeError("trailers too large")),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(DecodeError("malformed trailer section")),
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for field in parsed.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| DecodeError("invalid trailer name"))?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| DecodeError("invalid trailer value"))?;
        trailers.append(name, value);
    }
    buf.advance(len);
    Ok(Some(trailers))
}

/// Where one field lies in a head: name and value as (start, length).
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    /// The span of `field`, parsed out of `head`.
    pub fn of(head: &[u8], field: &httparse::Header<'_>) -> Self {
        let base = head.as_ptr() as usize;
        let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
        Span {
            name: at(field.name.as_bytes()),
            value: at(field.value),
        }
    }
}

/// Builds the header map of a head split off a connection's buffer, the values
/// slices of it (no copies), with room for `extra` more fields.
pub fn header_map(head: &Bytes, spans: &[Span], extra: usize) -> Result<HeaderMap, DecodeError> {
    let mut headers = recycled_map(spans.len() + extra);
    for span in spans {
        let (ns, nl) = (span.name.0 as usize, span.name.1 as usize);
        let (vs, vl) = (span.value.0 as usize, span.value.1 as usize);
        let name = field_name(&head[ns..ns + nl])?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(vs..vs + vl)).map_err(|_| DecodeError("invalid field value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A head's fields as they arrived: the head's bytes and where each field lies in
/// them. HTTP/1.1 passes a provider's fields to an HTTP/1.1 client this way, as
/// bytes, without building a header map only to write it out again; anything that
/// needs to look up or change fields builds the map with [`RawFields::to_map`].
pub struct RawFields {
    head: Bytes,
    /// From, and back to, this worker's [`SPANS`] when not too large.
    spans: Vec<Span>,
}

impl RawFields {
    /// The fields at `spans` of `head` (as [`Span::of`] found them).
    pub fn new(head: Bytes, spans: &[Span]) -> Self {
        let mut kept = SPANS.with_borrow_mut(Vec::pop).unwrap_or_default();
        kept.extend_from_slice(spans);
        RawFields { head, spans: kept }
    }

    /// Names and values, in order, as received (names in the sender's case).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|s| {
            let (ns, nl) = (s.name.0 as usize, s.name.1 as usize);
            let (vs, vl) = (s.value.0 as usize, s.value.1 as usize);
            (&self.head[ns..ns + nl], &self.head[vs..vs + vl])
        })
    }

    /// The first value of `name` (lower case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of `name` (lower case) as a header value sharing the head's
    /// bytes; `None` when absent or not a valid value.
    pub fn value(&self, name: &str) -> Option<HeaderValue> {
        let v = self.get(name)?;
        HeaderValue::from_maybe_shared(self.head.slice_ref(v)).ok()
    }

    /// The fields as a header map, with room for `extra` more.
    pub fn to_map(&self, extra: usize) -> Result<HeaderMap, DecodeError> {
        header_map(&self.head, &self.spans, extra)
    }
}

impl Drop for RawFields {
    fn drop(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        if spans.capacity() > 128 {
            return;
        }
        spans.clear();
        keep(&SPANS, spans);
    }
}

/// Puts `item` on this thread's free list `list`, unless the list is full.
fn keep<T: 'static>(list: &'static std::thread::LocalKey<RefCell<Vec<T>>>, item: T) {
    list.with_borrow_mut(|kept| {
        if kept.len() < RECYCLED_MAPS {
            kept.push(item);
        }
    });
}

impl std::fmt::Debug for RawFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, _)| String::from_utf8_lossy(n)))
            .finish()
    }
}

/// Header maps kept per worker thread between messages, and the most of them.
const RECYCLED_MAPS: usize = 64;
/// Non-standard field names remembered per worker thread, and the most of them.
const KNOWN_NAMES: usize = 64;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static NAMES: RefCell<Vec<HeaderName>> = const { RefCell::new(Vec::new()) };
    /// Field position lists of [`RawFields`], kept like the maps.
    static SPANS: RefCell<Vec<Vec<Span>>> = const { RefCell::new(Vec::new()) };
}

/// An empty header map with room for `capacity` fields, reusing one a finished
/// message gave back on this thread when there is one (a map is two allocations).
pub fn recycled_map(capacity: usize) -> HeaderMap {
    let reused = MAPS.with_borrow_mut(Vec::pop);
    match reused {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Gives a finished message's header map back for reuse on this thread.
pub fn recycle(mut map: HeaderMap) {
    // A map grown by a huge head keeps its size: let it go instead.
    if map.capacity() > 128 {
        return;
    }
    map.clear();
    keep(&MAPS, map);
}

/// A field name. Standard names cost nothing; others are copied into a new buffer
/// unless this thread has seen them before (providers repeat theirs on every
/// response). The set is bounded and only ever filled, so hostile names cost
/// memory once and never evict the useful ones.
fn field_name(raw: &[u8]) -> Result<HeaderName, DecodeError> {
    let parse = |raw: &[u8]| HeaderName::from_bytes(raw).map_err(|_| DecodeError("invalid field name"));
    // Extension fields are the ones worth remembering (`x-request-id` and kin);
    // standard names are recognised without allocating anyway.
    if raw.len() < 3 || !raw[..2].eq_ignore_ascii_case(b"x-") {
        return parse(raw);
    }
    let known = NAMES.with_borrow(|names| {
        names
            .iter()
            .find(|n| n.as_str().len() == raw.len() && n.as_str().as_bytes().eq_ignore_ascii_case(raw))
            .cloned()
    });
    if let Some(name) = known {
        return Ok(name);
    }
    let name = parse(raw)?;
    NAMES.with_borrow_mut(|names| {
        if names.len() < KNOWN_NAMES {
            names.push(name.clone());
        }
    });
    Ok(name)
}

/// A length field's value (`Content-Length` and kin): decimal digits only (no sign,
/// no list), with spaces or tabs around them; at most 19 digits, so it always fits.
/// `None` for anything else: a length is never guessed.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Appends `name: value` and its line end.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk of a chunked body with its trailer section.
pub fn push_last_chunk(out: &mut Vec<u8>, trailers: &HeaderMap) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads what `io` has into `buf`, making room for about `want` bytes first.
pub fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < want / 4 {
        buf.reserve(want);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Writes `data` from offset `*written` to its end, then flushes (TLS holds its
/// last record until then). `*written` counts progress across polls.
pub fn poll_write_all<W: AsyncWrite + Unpin>(
    io: &mut W,
    data: &[u8],
    written: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while *written < data.len() {
        match ready!(Pin::new(&mut *io).poll_write(cx, &data[*written..])) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => *written += n,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Pin::new(io).poll_flush(cx)
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_digits_and_nothing_else() {
        for (v, want) in [
            ("0", Some(0)),
            (" 42\t", Some(42)),
            ("9999999999999999999", Some(9_999_999_999_999_999_999)),
        ] {
            assert_eq!(parse_length(v.as_bytes()), want, "{v:?}");
        }
        for v in [
            "",
            " ",
            "+3",
            "-3",
            "3, 3",
            "0x10",
            "1e3",
            "3 3",
            "18446744073709551615",
        ] {
            assert_eq!(parse_length(v.as_bytes()), None, "{v:?}");
        }
    }

    fn decode_all(framing: Framing, wire: &[u8], split: usize) -> Result<(Vec<u8>, Option<HeaderMap>), DecodeError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut chunks = wire.chunks(split.max(1));
        loop {
            match d.step(&mut buf)? {
                Step::Frame(f) => match f.into_data() {
                    Ok(b) => data.extend_from_slice(&b),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Step::End => return Ok((data, trailers)),
                Step::More => match chunks.next() {
                    Some(c) => buf.extend_from_slice(c),
                    None => {
                        d.eof()?;
                        return Ok((data, trailers));
                    }
                },
            }
            if d.is_end() && !matches!(framing, Framing::Chunked) {
                return Ok((data, trailers));
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_at_every_split_point() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n";
        for split in 1..wire.len() {
            let (data, trailers) = decode_all(Framing::Chunked, wire, split).unwrap();
            assert_eq!(data, b"hello world", "split {split}");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
        }
    }

    #[test]
    fn malformed_or_truncated_bodies_are_errors() {
        for wire in [&b"zz\r\n"[..], b"1111111111111111\r\n", b"2\r\nokXX", b"2\r\nok\r\n"] {
            assert!(decode_all(Framing::Chunked, wire, 64).is_err(), "{wire:?}");
        }
        assert!(decode_all(Framing::Length(10), b"short", 64).is_err());
        assert_eq!(decode_all(Framing::Close, b"to the end", 3).unwrap().0, b"to the end");
        let long_line = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode_all(Framing::Chunked, &long_line, 64).is_err());
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut d = Decoder::new(Framing::Length(3));
        let mut buf = BytesMut::from(&b"abcGET /next"[..]);
        assert!(matches!(d.step(&mut buf), Ok(Step::Frame(_))));
        assert!(d.is_end());
        assert_eq!(&buf[..], b"GET /next");
    }

    #[test]
    fn header_maps_keep_every_field_and_reuse_is_clean() {
        let head = Bytes::from_static(b"X-Request-Id: 1\r\nContent-Type: a\r\nx-request-id: 2\r\n\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let (_, parsed) = match httparse::parse_headers(&head, &mut fields) {
            Ok(httparse::Status::Complete(x)) => x,
            other => panic!("{other:?}"),
        };
        let spans: Vec<Span> = parsed.iter().map(|f| Span::of(&head, f)).collect();
        for _ in 0..3 {
            let map = header_map(&head, &spans, 2).unwrap();
            let ids: Vec<_> = map.get_all("x-request-id").iter().collect();
            assert_eq!(ids, ["1", "2"]);
            assert_eq!(map.len(), 3);
            recycle(map);
        }
        assert!(NAMES.with_borrow(|n| n.iter().any(|n| n == "x-request-id")));
    }

    #[test]
    fn tokens_are_found_in_lists() {
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }
}
