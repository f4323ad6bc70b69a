use super::*;

fn verdict(raw: &[u8]) -> Result<BodyLen, FramingError> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut fields);
    assert!(matches!(req.parse(raw), Ok(httparse::Status::Complete(_))), "{raw:?}");
    judge(&req)
}

#[test]
fn plain_lengths_and_a_single_chunked_coding_pass() {
    assert_eq!(verdict(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(BodyLen::None));
    assert_eq!(
        verdict(b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
        Ok(BodyLen::Length(5))
    );
    assert_eq!(
        verdict(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n"),
        Ok(BodyLen::Chunked)
    );
}

#[test]
fn ambiguous_framing_is_refused() {
    let cases: [(&[u8], FramingError); 8] = [
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
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
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
        assert_eq!(verdict(raw), Err(want), "{}", String::from_utf8_lossy(raw));
    }
}
