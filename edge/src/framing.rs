//! HTTP/1.x request framing rules: which requests have a body length the edge
//! refuses to guess.
//!
//! A lenient server resolves `Content-Length` + `Transfer-Encoding` by preferring
//! chunked and merges duplicate equal `Content-Length` lines. A proxy that forwards
//! such a request invites request smuggling: the next hop may frame it differently.
//! The edge's HTTP/1.1 server ([`crate::listener`]) judges every head with
//! [`judge`] before the proxy sees it and answers a refusal with 400 and a closed
//! connection. Pure: no I/O.

use crate::codec::parse_length;

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
}

impl FramingError {
    /// A short reason for the client and the logs.
    pub fn reason(self) -> &'static str {
        match self {
            FramingError::LengthAndChunked => "both Content-Length and Transfer-Encoding",
            FramingError::DuplicateLength => "more than one Content-Length",
            FramingError::InvalidLength => "invalid Content-Length",
            FramingError::UnsupportedTransferCoding => "Transfer-Encoding other than chunked",
        }
    }
}

/// How a request's body is delimited, once its framing is judged unambiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLen {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
}

/// Judges a parsed request head's framing: one plain `Content-Length`, or exactly
/// one final `chunked` coding, or neither; anything else is refused.
pub fn judge(req: &httparse::Request<'_, '_>) -> Result<BodyLen, FramingError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(FramingError::DuplicateLength);
            }
            match parse_length(h.value) {
                Some(n) => length = Some(n),
                None if h.value.contains(&b',') => return Err(FramingError::DuplicateLength),
                None => return Err(FramingError::InvalidLength),
            }
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

#[cfg(test)]
mod tests;
