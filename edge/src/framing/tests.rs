use super::*;

fn scan(chunks: &[&[u8]]) -> (Vec<Result<(), FramingError>>, Scanner) {
    let ledger = Ledger::default();
    let mut s = Scanner::new(64 * 1024, 128);
    for c in chunks {
        s.feed(c, &ledger);
    }
    let mut out = Vec::new();
    while ledger.pending() {
        out.push(ledger.next());
    }
    (out, s)
}

#[test]
fn plain_requests_pass_and_pipelining_is_followed() {
    let (v, s) = scan(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /y HTTP/1.1\r\nHost: a\r\n\r\n"]);
    assert_eq!(v, [Ok(()), Ok(()), Ok(())]);
    assert!(s.watching());
}

#[test]
fn chunked_bodies_with_extensions_and_trailers_are_followed() {
    let msg = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    // Byte by byte, to exercise every split point.
    let chunks: Vec<&[u8]> = msg.chunks(1).collect();
    let (v, s) = scan(&chunks);
    assert_eq!(v, [Ok(()), Ok(())]);
    assert!(s.watching() && !s.mid_head());
}

#[test]
fn ambiguous_framing_is_refused() {
    let cases: [(&[u8], FramingError); 7] = [
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            FramingError::LengthAndChunked,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            FramingError::LengthAndChunked,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            FramingError::DuplicateLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            FramingError::DuplicateLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            FramingError::InvalidLength,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            FramingError::UnsupportedTransferCoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            FramingError::UnsupportedTransferCoding,
        ),
    ];
    for (raw, want) in cases {
        let (v, s) = scan(&[raw]);
        assert_eq!(v, [Err(want)], "{}", String::from_utf8_lossy(raw));
        assert!(!s.watching(), "the guard stops after a refusal");
    }
}

#[test]
fn a_request_without_verdict_is_refused() {
    let ledger = Ledger::default();
    assert_eq!(ledger.next(), Err(FramingError::Unverified));
}

#[test]
fn partial_heads_are_reported_and_oversized_ones_abandoned() {
    let ledger = Ledger::default();
    let mut s = Scanner::new(1024, 128);
    assert_eq!(s.feed(b"GET / HTTP/1.1\r\nHost:", &ledger), 0);
    assert!(s.mid_head());
    assert_eq!(s.feed(b" a\r\n\r\n", &ledger), 1);
    assert!(!s.mid_head());
    let big = vec![b'a'; 2048];
    s.feed(b"GET /", &ledger);
    s.feed(&big, &ledger);
    assert!(!s.watching());
}
