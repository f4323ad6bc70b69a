//! The HTTP/1.1 codec against a provider played byte by byte over a real socket:
//! what it sends, and what it makes of well-formed, odd and hostile responses.

use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::*;
use crate::upstream::Stream;
use http::header::HeaderValue;

/// The exchange with its body left as the exchange makes it.
fn exchange<P: Release>(
    conn: Conn,
    req: Request<ProxyBody>,
    passed: Option<&Passed<'_>>,
    pool: P,
    deadline: Instant,
) -> impl Future<Output = Result<Response<H1Body<P>>, Failed>> {
    super::exchange(conn, req, passed, pool, deadline)
}

/// Keeps what the body hands back.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Conn>>>);

impl Release for Sink {
    fn release(&self, conn: Conn) {
        self.0.lock().unwrap().push(conn);
    }
}

/// A response's fields, wherever the codec left them: raw, or in the header map.
fn fields_of<P: Release>(resp: &mut Response<H1Body<P>>) -> HeaderMap {
    match resp.body_mut().take_raw() {
        Some(raw) => {
            assert!(resp.headers().is_empty(), "raw fields and a map at once");
            raw.to_map(0).unwrap()
        }
        None => resp.headers().clone(),
    }
}

impl Sink {
    fn take(&self) -> Option<Conn> {
        self.0.lock().unwrap().pop()
    }
}

/// A deadline no test reaches.
fn far() -> Instant {
    Instant::now() + std::time::Duration::from_secs(60)
}

/// A connected pair: the edge's side as a `Conn`, the provider's as a raw socket.
async fn pair() -> (Conn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let io = UpstreamIo {
        io: TokioIo::new(Stream::Plain(client.unwrap())),
        h2: false,
        _permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
    };
    (Conn::new(io), server.unwrap().0)
}

fn get(path: &str) -> Request<ProxyBody> {
    let mut req = Request::new(empty());
    *req.uri_mut() = path.parse().unwrap();
    req.headers_mut().insert(header::HOST, HeaderValue::from_static("p"));
    req
}

/// Reads one request head (through the blank line) from the provider's socket.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "request head cut short");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads exactly `n` bytes.
async fn read_n(s: &mut TcpStream, n: usize) -> String {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.unwrap();
    String::from_utf8(buf).unwrap()
}

async fn respond(
    wire: &'static [u8],
    req: Request<ProxyBody>,
) -> (Result<Response<H1Body<Sink>>, Failed>, Sink, TcpStream) {
    let (conn, mut provider) = pair().await;
    let sink = Sink::default();
    let (resp, _) = tokio::join!(exchange(conn, req, None, sink.clone(), far()), async {
        read_head(&mut provider).await;
        provider.write_all(wire).await.unwrap();
    });
    (resp, sink, provider)
}

#[tokio::test]
async fn a_sized_response_is_read_and_its_connection_reused() {
    let (conn, mut provider) = pair().await;
    let sink = Sink::default();
    let (resp, head) = tokio::join!(exchange(conn, get("/a?b=1"), None, sink.clone(), far()), async {
        let head = read_head(&mut provider).await;
        provider
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Thing: one\r\nx-thing: two\r\n\r\nhello")
            .await
            .unwrap();
        head
    });
    assert_eq!(head, "GET /a?b=1 HTTP/1.1\r\nhost: p\r\n\r\n");
    let mut resp = resp.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(fields_of(&mut resp).get_all("x-thing").iter().count(), 2);
    assert_eq!(resp.body().size_hint().exact(), Some(5));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello");

    // Handed back at the message boundary, and good for another exchange.
    let conn = sink.take().expect("connection released");
    let (resp, _) = tokio::join!(exchange(conn, get("/again"), None, sink.clone(), far()), async {
        assert!(read_head(&mut provider).await.starts_with("GET /again "));
        provider.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
    });
    let resp = resp.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.body().is_end_stream());
    assert!(sink.take().is_some(), "a body-less response releases at once");
}

#[tokio::test]
async fn chunked_responses_are_decoded_with_extensions_and_trailers() {
    let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n";
    let (resp, sink, _p) = respond(wire, get("/")).await;
    let collected = resp.unwrap().into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "42");
    assert_eq!(collected.to_bytes(), "hello world");
    assert!(sink.take().is_some());
}

#[tokio::test]
async fn length_and_chunked_together_are_decoded_as_chunked_and_never_reused() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let (resp, sink, _p) = respond(wire, get("/")).await;
    let mut resp = resp.unwrap();
    assert!(fields_of(&mut resp).get(header::CONTENT_LENGTH).is_none());
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert!(
        sink.take().is_none(),
        "a smuggling-shaped response must close its connection"
    );
}

#[tokio::test]
async fn bad_lengths_are_refused() {
    for wire in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
    ] {
        let (resp, _, _provider) = respond(wire, get("/")).await;
        let err = resp.unwrap_err();
        assert!(matches!(err.error, H1Error::Invalid(_)), "{}", err.error);
        assert!(err.unsent.is_none(), "the request was sent: never retry it");
    }
}

#[tokio::test]
async fn a_body_without_framing_runs_to_close_and_is_not_reused() {
    let (resp, sink, mut provider) = respond(b"HTTP/1.1 200 OK\r\n\r\nuntil ", get("/")).await;
    let body = resp.unwrap().into_body();
    provider.write_all(b"the end").await.unwrap();
    drop(provider);
    assert_eq!(body.collect().await.unwrap().to_bytes(), "until the end");
    assert!(sink.take().is_none());
}

#[tokio::test]
async fn informational_responses_are_skipped_and_head_has_no_body() {
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    let mut req = get("/");
    *req.method_mut() = Method::HEAD;
    let (resp, sink, _p) = respond(wire, req).await;
    let mut resp = resp.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(fields_of(&mut resp)[header::CONTENT_LENGTH], "1000");
    assert!(resp.body().is_end_stream());
    assert!(sink.take().is_some());
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_an_end() {
    let (resp, sink, provider) = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", get("/")).await;
    drop(provider);
    let err = resp.unwrap().into_body().collect().await.unwrap_err();
    assert!(matches!(err, H1Error::Closed(_)), "{err}");
    assert!(sink.take().is_none());

    // The same for a chunked body that stops between chunks.
    let (resp, sink, provider) = respond(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
        get("/"),
    )
    .await;
    drop(provider);
    let err = resp.unwrap().into_body().collect().await.unwrap_err();
    assert!(matches!(err, H1Error::Closed(_)), "{err}");
    assert!(sink.take().is_none());
}

#[tokio::test]
async fn hostile_heads_and_chunks_are_refused() {
    let (conn, mut provider) = pair().await;
    let (resp, _) = tokio::join!(exchange(conn, get("/"), None, Sink::default(), far()), async {
        read_head(&mut provider).await;
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() <= MAX_HEAD {
            head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        // The edge stops reading once the limit is passed; the rest may not fit.
        let _ = provider.write_all(&head).await;
        provider
    });
    assert!(matches!(resp.unwrap_err().error, H1Error::Invalid(_)));

    for wire in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 2000 Nope\r\n\r\n",
    ] {
        let (resp, _, _p) = respond(wire, get("/")).await;
        let err = match resp {
            Err(f) => f.error,
            Ok(r) => r.into_body().collect().await.unwrap_err(),
        };
        assert!(matches!(err, H1Error::Invalid(_) | H1Error::Body(_)), "{err}");
    }
}

#[tokio::test]
async fn bytes_beyond_the_response_forbid_reuse() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (resp, sink, _p) = respond(wire, get("/")).await;
    assert_eq!(resp.unwrap().into_body().collect().await.unwrap().to_bytes(), "ok");
    assert!(sink.take().is_none());

    let (resp, sink, _p) = respond(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        get("/"),
    )
    .await;
    assert_eq!(resp.unwrap().into_body().collect().await.unwrap().to_bytes(), "ok");
    assert!(sink.take().is_none(), "Connection: close");

    let (resp, sink, _p) = respond(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", get("/")).await;
    assert_eq!(resp.unwrap().into_body().collect().await.unwrap().to_bytes(), "ok");
    assert!(sink.take().is_none(), "HTTP/1.0 without keep-alive");
}

fn upload(frames: Vec<Result<Frame<Bytes>, BoxError>>, length: Option<&'static str>) -> Request<ProxyBody> {
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let mut req = Request::new(body);
    *req.method_mut() = Method::PUT;
    *req.uri_mut() = "/up".parse().unwrap();
    if let Some(n) = length {
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static(n));
    }
    req
}

#[tokio::test]
async fn uploads_are_framed_by_length_or_chunked_with_trailers() {
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"abc"))),
        Ok(Frame::data(Bytes::from_static(b"defg"))),
    ];
    let (status, head, body) = send_upload(upload(frames, Some("7")), 7).await;
    assert_eq!(status, 201);
    assert_eq!(head, "PUT /up HTTP/1.1\r\ncontent-length: 7\r\n\r\n");
    assert_eq!(body, "abcdefg");

    let mut trailers = HeaderMap::new();
    trailers.insert("x-crc", HeaderValue::from_static("9"));
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"0123456789abcdef0"))),
        Ok(Frame::trailers(trailers)),
    ];
    let wire_body = "11\r\n0123456789abcdef0\r\n0\r\nx-crc: 9\r\n\r\n";
    let (status, head, body) = send_upload(upload(frames, None), wire_body.len()).await;
    assert_eq!(status, 201);
    assert_eq!(head, "PUT /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!(body, wire_body);
}

/// Sends `req`; the provider reads its head and `body_len` body bytes, then answers
/// 201. Returns the status and what the provider read.
async fn send_upload(req: Request<ProxyBody>, body_len: usize) -> (StatusCode, String, String) {
    let (conn, mut provider) = pair().await;
    let (resp, (head, body)) = tokio::join!(exchange(conn, req, None, Sink::default(), far()), async {
        let head = read_head(&mut provider).await;
        let body = read_n(&mut provider, body_len).await;
        provider
            .write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        (head, body)
    });
    (resp.unwrap().status(), head, body)
}

#[tokio::test]
async fn an_upload_that_breaks_its_length_or_fails_is_cut_off() {
    for (frames, length) in [
        (vec![Ok(Frame::data(Bytes::from_static(b"abc")))], Some("7")),
        (vec![Ok(Frame::data(Bytes::from_static(b"too long")))], Some("3")),
        (
            vec![
                Ok(Frame::data(Bytes::from_static(b"abc"))),
                Err::<_, BoxError>("client went away".into()),
            ],
            None,
        ),
    ] {
        let (conn, mut provider) = pair().await;
        let (resp, _) = tokio::join!(
            exchange(conn, upload(frames, length), None, Sink::default(), far()),
            async {
                read_head(&mut provider).await;
            }
        );
        let err = resp.unwrap_err();
        assert!(
            matches!(err.error, H1Error::RequestLength | H1Error::RequestBody(_)),
            "{}",
            err.error
        );
        // The provider never sees the message end: the connection just closes.
        let mut rest = Vec::new();
        provider.read_to_end(&mut rest).await.unwrap();
        assert!(!rest.ends_with(b"0\r\n\r\n"), "{rest:?}");
    }
}

#[tokio::test]
async fn an_early_response_ends_the_upload_and_the_connection() {
    // The provider refuses before the body is complete; the body never ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let mut req = Request::new(StreamBody::new(stream).boxed_unsync());
    *req.method_mut() = Method::PUT;
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("100"));
    let (conn, mut provider) = pair().await;
    let sink = Sink::default();
    tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.unwrap();
    let (resp, _) = tokio::join!(exchange(conn, req, None, sink.clone(), far()), async {
        read_head(&mut provider).await;
        provider
            .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
    });
    assert_eq!(resp.unwrap().status(), 413);
    assert!(
        sink.take().is_none(),
        "a half-sent request leaves the connection unusable"
    );
    drop(tx);
}

#[tokio::test]
async fn an_idle_connection_the_provider_closed_is_not_reusable() {
    let (mut conn, provider) = pair().await;
    assert!(conn.is_reusable());
    drop(provider);
    // The close travels through the kernel: poll until the edge's side sees it.
    let mut tries = 0;
    while conn.is_reusable() {
        tries += 1;
        assert!(tries < 1000, "close never seen");
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn heads_with_many_fields_parse_up_to_the_limit() {
    for (fields, ok) in [(40, true), (MAX_HEADERS + 1, false)] {
        let mut wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
        for i in 1..fields {
            wire.extend_from_slice(format!("X-F{i}: v{i}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\nok");
        let wire: &'static [u8] = Box::leak(wire.into_boxed_slice());
        let (resp, _, _p) = respond(wire, get("/")).await;
        match resp {
            Ok(mut r) => {
                assert!(ok, "{fields} fields accepted");
                let map = fields_of(&mut r);
                assert_eq!(map.len(), fields);
                assert_eq!(map["x-f39"], "v39");
            }
            Err(f) => assert!(!ok && matches!(f.error, H1Error::Invalid(_)), "{fields}: {}", f.error),
        }
    }
}

#[tokio::test]
async fn no_head_by_the_deadline_is_a_timeout_and_the_timer_is_kept_for_reuse() {
    let (conn, mut provider) = pair().await;
    let deadline = Instant::now() + std::time::Duration::from_millis(50);
    let (resp, _) = tokio::join!(exchange(conn, get("/slow"), None, Sink::default(), deadline), async {
        read_head(&mut provider).await;
    });
    let err = resp.unwrap_err();
    assert!(matches!(err.error, H1Error::Timeout), "{}", err.error);
    assert!(err.unsent.is_none(), "a timed-out request is never tried elsewhere");

    // A connection that served one exchange moves its timer to the next deadline.
    let (conn, mut provider) = pair().await;
    let sink = Sink::default();
    let (resp, _) = tokio::join!(exchange(conn, get("/1"), None, sink.clone(), far()), async {
        read_head(&mut provider).await;
        provider.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
    });
    assert_eq!(resp.unwrap().status(), 204);
    let conn = sink.take().unwrap();
    assert!(conn.timer.is_some());
    let deadline = Instant::now() + std::time::Duration::from_millis(50);
    let (resp, _) = tokio::join!(exchange(conn, get("/2"), None, sink.clone(), deadline), async {
        read_head(&mut provider).await;
    });
    assert!(matches!(resp.unwrap_err().error, H1Error::Timeout));
}

#[tokio::test]
async fn plain_fields_stay_as_received_and_rewritable_ones_go_to_the_map() {
    // Nothing hop-by-hop and no `Via`: the fields stay bytes, in the sender's case.
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Thing: One\r\n\r\nok";
    let (resp, _, _p) = respond(wire, get("/")).await;
    let mut resp = resp.unwrap();
    assert!(resp.headers().is_empty());
    let raw = resp.body_mut().take_raw().expect("raw fields");
    let fields: Vec<(&[u8], &[u8])> = raw.iter().collect();
    assert_eq!(
        fields,
        [(&b"Content-Length"[..], &b"2"[..]), (&b"X-Thing"[..], &b"One"[..])]
    );
    assert_eq!(raw.get("x-thing"), Some(&b"One"[..]));
    // Any field this edge must rewrite puts the head in the map, as before.
    for field in [
        "Connection: keep-alive",
        "Via: 1.1 cache",
        "Keep-Alive: timeout=5",
        "Upgrade: h2c",
    ] {
        let wire = format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{field}\r\n\r\nok");
        let wire: &'static [u8] = Box::leak(wire.into_bytes().into_boxed_slice());
        let (resp, _, _p) = respond(wire, get("/")).await;
        let mut resp = resp.unwrap();
        assert!(resp.body_mut().take_raw().is_none(), "{field}");
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "2", "{field}");
    }
}

#[test]
fn passed_fields_follow_the_map_without_the_clients_host() {
    let wire = b"GET / HTTP/1.1\r\nHost: client\r\nX-Thing: One\r\nContent-Length: 3\r\n\r\n";
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(wire).unwrap();
    let spans: Vec<Span> = parsed.headers.iter().map(|f| Span::of(wire, f)).collect();
    let trail = crate::headers::Trail::new("10.0.0.1".parse().unwrap(), "http");
    let via = HeaderValue::from_static("1.1 meridian");
    let passed = Passed {
        fields: RawFields::new(Bytes::from_static(wire), &spans),
        trail: &trail,
        via: &via,
    };
    let mut req = Request::new(empty());
    *req.method_mut() = Method::PUT;
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("provider"));
    let mut out = Vec::new();
    let framing = encode_head(&req, Some(&passed), &mut out);
    assert_eq!(
        framing,
        Framing::Length(3),
        "the client's Content-Length frames the body"
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "PUT / HTTP/1.1\r\nhost: provider\r\nX-Thing: One\r\nContent-Length: 3\r\n\
         x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nforwarded: for=10.0.0.1;proto=http\r\n\
         via: 1.1 meridian\r\n\r\n"
    );
}
